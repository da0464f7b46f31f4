// The transport of a handle whose app runs in this process: calls go straight to the embedded
// runtime (run/runtime.ts), values never leave the JavaScript heap.
import type { EmbeddedRuntime, Pool } from '../run/runtime.ts'
import { callerInput } from '../run/context.ts'
import { newFunctionCallId } from '../run/runtime.ts'
import { newTrace } from '../run/trace.ts'
import type { PoolDef } from '../run/pool.ts'
import { checkArity, type Arity } from '../shared/arity.ts'
import { checkAndCopyArgs, checkAndCopyArgsInPlace } from '../shared/serialize.ts'
import { GEN_WINDOW, type GenSource, type ItemSink } from './gen-stream.ts'
import { MAP_WINDOW } from './map.ts'
import { HeldOutcome, type MapSink, type MapStream, type Spawned, type Transport } from './transport.ts'

/** What a handle needs of its app's embedded run (define/app.ts App). */
export interface EmbeddedApp {
  /** The runtime while the app runs in this process. */
  runtimeIfRunning(): EmbeddedRuntime | undefined
  /** The same, or the error that says how to start the app; `what` names the call. */
  requireRuntime(what: string): EmbeddedRuntime
}

/** One callable: a function, or one method of a class with one parameter set. */
export interface EmbeddedTarget {
  app: EmbeddedApp
  def: PoolDef
  /** For classes: the method index in `def.methods`. */
  method: number
  label: string
  /** How many arguments a call may pass. */
  arity: Arity
}

export class EmbeddedTransport implements Transport {
  readonly syncInputs = false
  // Submitting is cheap here: refill as soon as there is room.
  readonly mapLowWater = MAP_WINDOW - 1
  /** The pool of the target in the runtime it was made in: looked up once per run, not per call. */
  private pool: Pool | undefined
  private poolRuntime: EmbeddedRuntime | undefined
  private readonly remoteWhat: string

  constructor(private readonly target: EmbeddedTarget) {
    this.remoteWhat = `${target.label}.remote`
  }

  remote(args: unknown[]): Promise<unknown> {
    const t = this.target
    const rt = t.app.runtimeIfRunning()
    try {
      if (rt === undefined) t.app.requireRuntime(this.remoteWhat)
      let pool = this.pool
      if (this.poolRuntime !== rt) {
        pool = this.pool = rt!.pool(t.def)
        this.poolRuntime = rt
      }
      checkAndCopyArgsInPlace(args, this.remoteWhat)
      return rt!.call(pool!, t.method, args, newFunctionCallId(), callerInput()?.callTrace())
    } catch (e) {
      return Promise.reject(e)
    }
  }

  spawn(args: unknown[]): Spawned {
    const { rt, pool } = this.prepare('spawn')
    const t = this.target
    const checked = checkAndCopyArgsInPlace(args, `${t.label}.spawn`)
    const fc = newFunctionCallId()
    let input = 0
    const result = new Promise((resolve, reject) => {
      input = rt.submit(pool, t.method, checked, fc, resolve, reject, false, callerInput()?.callTrace())
    })
    return { id: `fc-${fc}`, source: new HeldOutcome(result, () => rt.cancel([input])) }
  }

  remoteGen(args: unknown[], sink: ItemSink): GenSource {
    const { rt, pool } = this.prepare('remoteGen')
    const t = this.target
    checkAndCopyArgsInPlace(args, `${t.label}.remoteGen`)
    return rt.submitGen(pool, t.method, args, newFunctionCallId(), sink, GEN_WINDOW, callerInput()?.callTrace())
  }

  openMap(what: string, sink: MapSink): MapStream {
    const { rt, pool } = this.prepare(what)
    const t = this.target
    const fc = newFunctionCallId()
    // One trace for the whole map (README "Tracing"): the calling input's, or a new one.
    const trace = callerInput()?.callTrace() ?? newTrace()
    /** Input ids by index, until each settles. */
    const live = new Map<number, number>()
    return {
      push: (i, tuple) => {
        checkArity(t.arity, tuple.length, `${t.label} (input ${i} of ${what})`)
        const args = checkAndCopyArgs(tuple, `${t.label}.${what} (input ${i})`)
        const id = rt.submit(
          pool,
          t.method,
          args,
          fc,
          (value) => {
            live.delete(i)
            sink.item(i, true, value)
          },
          (error) => {
            live.delete(i)
            sink.item(i, false, error)
          },
          // A map's inputs wait for room under maxPendingInputs (README "API").
          true,
          trace,
        )
        live.set(i, id)
      },
      close: () => {},
      finish: () => {
        if (live.size > 0) rt.cancel([...live.values()])
      },
    }
  }

  private prepare(what: string): { rt: EmbeddedRuntime; pool: Pool } {
    const t = this.target
    const rt = t.app.requireRuntime(`${t.label}.${what}`)
    return { rt, pool: rt.pool(t.def) }
  }
}
