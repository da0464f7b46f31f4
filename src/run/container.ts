// The loop a container process runs (`berth serve` and `app.run({ containers: 'process' })`
// start it): attached to the control plane, it runs the inputs it is sent and sends back their
// outputs. Reached through the package entry, so that the user's module and this code share one
// instance of berth (context, registries).
import { binding, type BindingContainer } from '../native.ts'
import { batchArityError } from '../shared/arity.ts'
import { decodeValue, encodeValue, WireResponse } from '../shared/cbor.ts'
import { ContainerEvent, OutputKind, PhaseCode } from '../shared/codes.ts'
import { errorFromData, InvalidError, SerializationError, wireError } from '../shared/errors.ts'
import { mountVolumes, syncMounts } from '../data/volume.ts'
import { InputAbort, markContainerProcess, runInContext, type InputContext } from './context.ts'
import { hexOf, spanHex, type Trace } from './trace.ts'
import {
  applyParams,
  batchResultError,
  describe,
  GEN_WINDOW,
  type GenCredit,
  runBuildHooks,
  runExitHooks,
  type PoolDef,
  wakeGen,
} from './pool.ts'
import { installLightResponse } from './light-response.ts'
import { installLogTags } from './log-tags.ts'
import { answer, respond, startWebApps, stopWebApps, toRequest, toWire } from './web.ts'

/** What a container process needs of an app its file defines: the pool it is to serve. */
export interface ContainerApp {
  readonly name: string
  /** The pool definition of function or class `name`, with the class's parameters. */
  containerDef(name: string, params: Record<string, unknown> | undefined): PoolDef
}

// The packed buffers' numbers (crates/berth-node/src/codes.rs), as module constants.
const { Hook: EV_HOOK, Execute: EV_EXECUTE, Abort: EV_ABORT, Stop: EV_STOP, Closed: EV_CLOSED, Credit: EV_CREDIT } = ContainerEvent
const { Value: OUT_VALUE, Error: OUT_ERROR } = OutputKind
const { Build: PHASE_BUILD, SnapEnter: PHASE_SNAP_ENTER, Enter: PHASE_ENTER, Exit: PHASE_EXIT } = PhaseCode

interface ExecInput {
  id: number
  attempt: number
  args: unknown[]
  fc: string
  /** Its trace: trace-id and flags, 17 bytes of `traceBytes` from `traceAt` (crates/berth-node/src/container.rs). */
  traceBytes: Uint8Array
  traceAt: number
}

/** How an execution reports its outcome. */
type Done = (retryable: boolean, values: { ok: boolean; value: unknown }[]) => void

/** How many microtask steps a flush of web answers waits behind inputs still running (`flushSoon`). */
const FLUSH_HOPS = 32

/** How often a container tells the control plane its event loop runs (crates/berth-server/src/plane.rs: HUNG_AFTER). */
const HEARTBEAT_MS = 1000

/** An `@exit` hook running longer than this is logged, where output is relayed (README "Observability"). */
const SLOW_EXIT_HOOK_MS = 1000

class ContainerCtx extends InputAbort implements InputContext {
  constructor(
    readonly inputId: string,
    readonly functionCallId: string,
    /** The function, or `Class.method`, as messages name it. */
    readonly label: string,
    /** The bytes its trace context is in (the batch it came in), and where: formatted when asked for. */
    private readonly traceBytes: Uint8Array,
    private readonly traceAt: number,
  ) {
    super()
  }
  private formatted: string | undefined
  /** The trace its call continues (the control plane's word), with a span id of its own from its input id (README "Tracing"). */
  get traceparent(): string {
    if (this.formatted === undefined) {
      const b = this.traceBytes
      const at = this.traceAt
      this.formatted = `00-${hexOf(b, at, 16)}-${spanHex(Number(this.inputId.slice(3)))}-${hexOf(b, at + 16, 1)}`
    }
    return this.formatted
  }
  callTrace(): Trace {
    const t = this.traceparent
    return { id: t.slice(3, 35), flags: t.slice(53, 55) }
  }
  abort(reason: unknown): void {
    if (this.abortWith(reason)) wakeGen(this.gen)
  }
  /** Set for a generator input: its credit, and the pull loop waiting for more. */
  gen: GenCredit | undefined
}

const utf8 = new TextDecoder()

// Failures berth reports itself, worded once for both container modes (crates/berth-core/src/failure.rs).
const { describeAbort } = binding()

/**
 * The control plane sent a method index this container's class does not have: its registry was
 * made from another version of the file than the one this container loaded.
 */
function noSuchMethod(def: PoolDef, index: number): string {
  return (
    `${def.name}: the control plane asked for method ${index + 1} of ${def.name}, which has ${def.methods.length} here ` +
    `(${def.methods.map((m) => m.name).join(', ')}): the file changed since the server started; restart it`
  )
}

/**
 * Runs this process as the container the environment names, until the control plane stops it.
 * Resolves with the exit status.
 */
export function containerMain(apps: readonly ContainerApp[]): Promise<number> {
  const env = process.env
  const need = (k: string) => {
    const v = env[k]
    if (v === undefined) throw new InvalidError(`berth container: ${k} is not set; containers are started by \`berth serve\``)
    return v
  }
  const appName = need('BERTH_APP')
  const app = apps.find((a) => a.name === appName)
  if (!app) throw new InvalidError(`berth container: the file defines no app '${appName}'`)
  markContainerProcess()
  // Relayed by `berth serve` / `berth worker`: lines say their level and input (src/run/log-tags.ts).
  const relayed = env.BERTH_LOG_TAGS === '1'
  if (relayed) installLogTags()
  const paramsHex = env.BERTH_PARAMS ?? ''
  const params = paramsHex ? (decodeValue(Buffer.from(paramsHex, 'hex')) as Record<string, unknown>) : undefined
  const def: PoolDef = app.containerDef(need('BERTH_FUNCTION'), params)
  // A container whose code answers HTTP requests (web endpoints, a @fetchApp; not a server of
  // its own, which the control plane reaches directly) makes its Responses light
  // (src/run/light-response.ts).
  if (def.methods.some((m) => m.web !== undefined && m.web.app !== 'webServer' && m.web.app !== 'nodeApp')) installLightResponse()
  // The server's message cap: a larger result fails its input here instead of the stream.
  const maxResultBytes = Number(env.BERTH_MAX_MESSAGE_BYTES ?? 16 * 1024 * 1024)

  let instance: any = null
  const getInstance = () => {
    if (instance === null && def.cls) {
      instance = new def.cls()
      if (def.params) applyParams(instance, def.params)
    }
    return instance
  }
  const running = new Map<number, ContainerCtx>()
  let meta: number[] = []
  let chunks: Buffer[] = []
  let size = 0
  // Generator items waiting to be sent: `[inputId, attempt, offset, len]` over itemChunks.
  let itemMeta: number[] = []
  let itemChunks: Buffer[] = []
  let itemSize = 0
  let flushing = false
  const keepAlive = setInterval(() => {}, 1 << 30)

  return new Promise<number>((resolveExit) => {
    const link: BindingContainer = new (binding().BindingContainer)(
      need('BERTH_ENDPOINT'),
      Number(need('BERTH_CONTAINER_ID')),
      need('BERTH_CONTAINER_TOKEN'),
      def.maxInputs,
      maxResultBytes,
      () => pump(),
    )
    // Sent from this event loop, so a loop blocked by synchronous code (or a stopped process)
    // goes quiet and the control plane can tell.
    const beat = setInterval(() => link.heartbeat(), HEARTBEAT_MS)
    beat.unref()
    // SIGTERM: the control plane stops sending inputs, lets in-flight ones finish, runs the exit
    // hooks here within exitGracePeriod, then says Stop. SIGINT: the same, but first the inputs
    // running here are aborted (Abort "rescheduled") and run again on another container without
    // spending retries, as in Modal. Either one during startup stops the container at once, with
    // no exit hooks; its inputs wait for the next container. Further signals change nothing:
    // exit hooks are not cut short (exitGracePeriod bounds them). Containers run in a process
    // group of their own, so a Ctrl-C in the terminal reaches only the serving process, which
    // stops them in order.
    let drained = false
    let interrupted = false
    process.on('SIGTERM', () => {
      if (drained) return
      drained = true
      link.leave(false)
    })
    process.on('SIGINT', () => {
      if (interrupted) return
      drained = interrupted = true
      link.leave(true)
    })

    const flush = () => {
      flushing = false
      // Items first: a generator's Output follows its last items.
      if (itemMeta.length > 0) {
        const m = new Float64Array(itemMeta)
        const b = Buffer.concat(itemChunks, itemSize)
        itemMeta = []
        itemChunks = []
        itemSize = 0
        link.items(m, b)
      }
      if (meta.length === 0) return
      const m = new Float64Array(meta)
      const b = Buffer.concat(chunks, size)
      meta = []
      chunks = []
      size = 0
      link.outputs(m, b)
    }
    const add = (bytes: Uint8Array, kind: number) => {
      meta.push(kind, size, bytes.length)
      chunks.push(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length))
      size += bytes.length
    }
    const addError = (err: unknown) => {
      const d = wireError(err)
      add(Buffer.from(`${d.name}\0${d.message}\0${d.stack ?? ''}`), OUT_ERROR)
    }
    // A value as the CBOR sent to the control plane (a result, a generator's item), failing as
    // encodeValue says (src/shared/cbor.ts). Past the message limit: `tooLarge`.
    const encodeOut = (value: unknown, what: string, tooLarge: (bytes: number) => string): Uint8Array => {
      const bytes = encodeValue(value, what)
      if (bytes.length > maxResultBytes) throw new SerializationError(tooLarge(bytes.length))
      return bytes
    }

    // `label` names the function or method in messages, as an embedded container names it.
    const outputRaw = (exec: number, retryable: boolean, values: { ok: boolean; value: unknown }[], label = def.name, web = false) => {
      const resultTooLarge = (n: number) =>
        `the result of ${label} is ${n} bytes of CBOR, over the server's message limit of ${maxResultBytes} bytes: ` +
        'return less (e.g. write large outputs to a file or Volume and return where), or start `berth serve` with a larger --max-message-bytes'
      meta.push(exec, retryable ? 1 : 0, values.length)
      for (let j = 0; j < values.length; j++) {
        const v = values[j]
        if (!v.ok) {
          addError(v.value)
          continue
        }
        try {
          const what = values.length === 1 ? `the result of ${label}` : `result ${j} of ${label}`
          add(encodeOut(v.value, what, resultTooLarge), OUT_VALUE)
        } catch (e) {
          addError(e)
        }
      }
      if (!flushing) {
        flushing = true
        hops = web ? 0 : FLUSH_HOPS
        queueMicrotask(flushSoon)
      }
    }
    // The answers to web requests that finish in the same turn of the event loop leave in one
    // message: while other inputs are running, the flush steps behind the microtasks queued so
    // far, a bounded number of times, so that requests advancing through their awaits (a web
    // app's handler) finish first; one waiting for I/O does not hold it back beyond those
    // steps. Other outputs leave at once: callers that pipeline many inputs (.map(), many
    // .remote() in flight) refill a container's slots sooner with them (bench/run.ts measured
    // 10-30% fewer inputs/s when they waited too).
    let hops = 0
    const flushSoon = () => {
      if (running.size > 0 && hops < FLUSH_HOPS) {
        hops++
        queueMicrotask(flushSoon)
        return
      }
      flush()
    }
    let finished = false
    const finish = (code: number) => {
      if (finished) return
      finished = true
      flush()
      clearInterval(keepAlive)
      clearInterval(beat)
      // Let the last output reach the stream before the process goes.
      setTimeout(() => resolveExit(code), 50)
    }

    const runHook = async (phase: number) => {
      try {
        // Before anything of the user's runs (README "Volume"): a function has this phase only for it.
        if (phase !== PHASE_EXIT) {
          mountVolumes(def.name, def.options.volumes)
          await syncMounts(def.options.volumes, false)
        }
        const inst = getInstance()
        const m = def.meta
        if (m) {
          if (phase === PHASE_BUILD) await runBuildHooks(def.cls!, m, inst)
          else if (phase === PHASE_SNAP_ENTER) for (const n of m.snapEnter) await inst[n]()
          else if (phase === PHASE_ENTER) {
            for (const n of m.enter) await inst[n]()
            // Before the hook's HookDone: the control plane knows where a server listens
            // before it sends the container any request.
            for (const s of await startWebApps(def, inst)) link.appServer(s.method, s.port, s.socket)
          } else if (phase === PHASE_EXIT) {
            const slow = relayed ? { slowMs: SLOW_EXIT_HOOK_MS, graceMs: def.options.exitGracePeriodMs } : undefined
            await runExitHooks(def.name, m.exit, (n) => inst[n](), slow)
            await stopWebApps(inst)
          }
        }
        if (phase === PHASE_EXIT) await syncMounts(def.options.volumes, true)
        link.hookDone(phase, true)
      } catch (e) {
        const d = wireError(e)
        link.hookDone(phase, false, d.name, d.message, d.stack)
      }
    }

    // An input whose arguments cannot be decoded fails alone (the control plane checks them
    // against the same contract, so this is a last line of defence); the rest of its batch runs.
    const execute = (exec: number, method: number, all: ExecInput[], bad: Map<number, unknown> | undefined) => {
      if (bad === undefined) {
        run(exec, method, all)
        return
      }
      const good = all.filter((_, j) => !bad.has(j))
      const merge = (values: { ok: boolean; value: unknown }[]) => {
        let k = 0
        return all.map((_, j) => (bad.has(j) ? { ok: false, value: bad.get(j) } : values[k++]))
      }
      if (good.length === 0) outputRaw(exec, false, merge([]))
      else run(exec, method, good, merge)
    }

    const run = (
      exec: number,
      method: number,
      inputs: ExecInput[],
      merge?: (values: { ok: boolean; value: unknown }[]) => { ok: boolean; value: unknown }[],
    ) => {
      const m = def.methods[method]
      const label = m === undefined || def.fn ? def.name : `${def.name}.${m.name}`
      const output = (exec: number, retryable: boolean, values: { ok: boolean; value: unknown }[]) =>
        outputRaw(exec, retryable, merge === undefined ? values : merge(values), label, m?.web !== undefined)
      if (!m) {
        output(
          exec,
          false,
          inputs.map(() => ({ ok: false, value: new InvalidError(noSuchMethod(def, method)) })),
        )
        return
      }
      let inst: any
      try {
        inst = getInstance()
      } catch (e) {
        output(
          exec,
          true,
          inputs.map(() => ({ ok: false, value: e })),
        )
        return
      }
      if (m.batched) {
        const mixed = batchArityError(
          label,
          inputs.map((i) => i.args.length),
        )
        if (mixed !== undefined) {
          output(
            exec,
            false,
            inputs.map(() => ({ ok: false, value: mixed })),
          )
          return
        }
      }
      const target: (...a: unknown[]) => unknown = def.fn ?? inst[m.name]
      const ctx = new ContainerCtx(`in-${inputs[0].id}`, inputs[0].fc, label, inputs[0].traceBytes, inputs[0].traceAt)
      for (const i of inputs) running.set(i.id, ctx)
      const done = (retryable: boolean, values: { ok: boolean; value: unknown }[]) => {
        for (const i of inputs) running.delete(i.id)
        output(exec, retryable, values)
      }
      if (m.web?.app !== undefined) {
        // A web app's request (src/run/web.ts).
        const reply = async () => {
          try {
            sendAnswer(await respond(inst, m.name, inputs[0].args[1], ctx), inputs[0], ctx, done)
          } catch (e) {
            done(true, [{ ok: false, value: e }])
          }
        }
        void runInContext(ctx, reply)
        return
      }
      if (m.gen) {
        const args = inputs[0].args
        // A generator endpoint's second argument: its Request.
        const start = () => {
          if (m.web?.takesRequest && args.length === 2) args[1] = toRequest(args[1], ctx)
          return target.apply(inst, args) as AsyncIterator<unknown>
        }
        void runInContext(ctx, () => runGen(inputs[0], ctx, start, done, false))
        return
      }
      const call = async (): Promise<void> => {
        try {
          if (m.web !== undefined) {
            // A request from the HTTP ingress has a second argument: what a Request is built
            // from, for endpoints that take one, else null (crates/berth-server/src/web.rs).
            // Callers pass one value, and get a returned Response whole.
            const args = inputs[0].args
            const fromHttp = args.length === 2
            if (fromHttp) {
              if (m.web.takesRequest) args[1] = toRequest(args[1], ctx)
              else args.length = 1
            }
            const value = await target.apply(inst, args)
            if (!(value instanceof Response)) done(false, [{ ok: true, value }])
            else if (!fromHttp) done(false, [{ ok: true, value: await toWire(value) }])
            else sendAnswer(answer(value, ctx), inputs[0], ctx, done)
            return
          }
          if (!m.batched) {
            done(false, [{ ok: true, value: await target.apply(inst, inputs[0].args) }])
            return
          }
          const columns = Array.from({ length: inputs[0].args.length }, (_, a) => inputs.map((i) => i.args[a]))
          const out = await target.apply(inst, columns)
          if (!Array.isArray(out) || out.length !== inputs.length) {
            const err = batchResultError(label, inputs.length, out)
            done(
              true,
              inputs.map(() => ({ ok: false, value: err })),
            )
            return
          }
          done(
            false,
            out.map((value) => ({ ok: true, value })),
          )
        } catch (e) {
          done(
            true,
            inputs.map(() => ({ ok: false, value: e })),
          )
        }
      }
      void runInContext(ctx, call)
    }

    // A generator input: items are pulled while the caller has credit (a slow caller pauses it
    // at its `yield`), each sent as it comes; an abort stops the pulling and calls return().
    // As in the embedded runtime (src/run/runtime.ts runGen), a failure before the first item
    // may be retried, one after is final.
    // An HTTP answer (src/run/web.ts `answer`): whole as the input's result, or as a stream of
    // items (a head, then the body's chunks).
    const sendAnswer = (a: WireResponse | AsyncGenerator<unknown>, input: ExecInput, ctx: ContainerCtx, done: Done) => {
      if (a instanceof WireResponse) done(false, [{ ok: true, value: a }])
      else void runGen(input, ctx, () => a, done, true)
    }

    const runGen = async (
      input: ExecInput,
      ctx: ContainerCtx,
      start: () => AsyncIterator<unknown>,
      done: Done,
      /** A web Response's head and body chunks (src/run/web.ts `streamed`), not a generator's items. */
      response: boolean,
    ) => {
      const st: GenCredit = { credit: GEN_WINDOW, wake: undefined }
      ctx.gen = st
      let it: AsyncIterator<unknown> | undefined
      let open = false
      let sent = 0
      const itemTooLarge = (n: number) =>
        `item ${sent} of ${ctx.label} is ${n} bytes of CBOR, over the server's message limit of ${maxResultBytes} bytes: yield less`
      let result: { retryable: boolean; ok: boolean; value: unknown } = { retryable: false, ok: true, value: null }
      try {
        it = start()
        open = true
        for (;;) {
          while (st.credit <= 0 && !ctx.aborted) await new Promise<void>((r) => (st.wake = r))
          if (ctx.aborted) break
          const r = await it.next()
          if (r.done) {
            open = false
            break
          }
          if (ctx.aborted) break
          const what = `item ${sent} of ${ctx.label}`
          const bytes = encodeOut(r.value, what, itemTooLarge)
          st.credit--
          sent++
          itemMeta.push(input.id, input.attempt, itemSize, bytes.length)
          itemChunks.push(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length))
          itemSize += bytes.length
          // A web Response's items (a web app's, a streamed endpoint's) are sent once this turn
          // of the event loop is done: its head, its body's chunks and its end, made in one
          // turn, leave in one message instead of one each.
          if (!flushing) {
            flushing = true
            if (response) setImmediate(flush)
            else queueMicrotask(flush)
          }
        }
      } catch (e) {
        // From it.next(), the generator has ended; from encoding, it waits at its yield.
        if (!(e instanceof SerializationError)) open = false
        result = { retryable: sent === 0 && !(e instanceof SerializationError), ok: false, value: e }
      }
      if (open) {
        try {
          await it!.return?.(undefined)
        } catch (e) {
          console.error(`berth: ${ctx.label}: the generator's return() threw: ${describe(e)}`)
        }
      }
      ctx.gen = undefined
      done(result.retryable, [{ ok: result.ok, value: result.value }])
    }

    // What a drain returned and how far it is handled: at most CHUNK inputs start per macrotask,
    // so the outputs of the first ones flow back (and the control plane refills the slots)
    // while the rest still run, instead of the two sides taking turns being idle.
    const CHUNK = 256
    let cur: { ev: Float64Array; bytes: Buffer; i: number } | null = null
    // The call of the last input read: the next input of the same call comes with `fcLen` -1
    // (crates/berth-node/src/container.rs `EV_EXECUTE`), and its id and trace are these.
    let lastFc = ''
    let lastTraceBytes: Uint8Array = Buffer.alloc(17)
    let lastTraceAt = 0
    let resumeScheduled = false
    const resume = () => {
      resumeScheduled = false
      pump()
    }
    const pump = () => {
      if (cur === null) {
        const got = link.drain()
        if (got === null) return
        cur = { ev: got.events, bytes: got.bytes, i: 0 }
      }
      const { ev, bytes } = cur
      let i = cur.i
      let started = 0
      for (;;) {
        if (i >= ev.length) {
          cur = null
          // More may have arrived meanwhile; the doorbell rang for it only once.
          const got = link.drain()
          if (got === null) return
          cur = { ev: got.events, bytes: got.bytes, i: 0 }
          if (!resumeScheduled) {
            resumeScheduled = true
            setImmediate(resume)
          }
          return
        }
        if (started >= CHUNK) {
          cur.i = i
          if (!resumeScheduled) {
            resumeScheduled = true
            setImmediate(resume)
          }
          return
        }
        const tag = ev[i]
        if (tag === EV_HOOK) {
          void runHook(ev[i + 1])
          i += 2
        } else if (tag === EV_EXECUTE) {
          const [exec, method, n] = [ev[i + 1], ev[i + 2], ev[i + 3]]
          i += 4
          const inputs: ExecInput[] = []
          let bad: Map<number, unknown> | undefined
          for (let j = 0; j < n; j++, i += 6) {
            if (ev[i + 5] >= 0) {
              lastFc = utf8.decode(bytes.subarray(ev[i + 4], ev[i + 4] + ev[i + 5]))
              lastTraceBytes = bytes
              lastTraceAt = ev[i + 4] + ev[i + 5]
            }
            let args: unknown
            try {
              args = decodeValue(bytes.subarray(ev[i + 2], ev[i + 2] + ev[i + 3]))
              if (!Array.isArray(args)) throw new Error('the arguments are not an array')
            } catch (e) {
              ;(bad ??= new Map()).set(
                j,
                new SerializationError(
                  `input in-${ev[i]} of ${def.name}: its arguments could not be decoded (${(e as Error)?.message ?? e})`,
                ),
              )
            }
            inputs.push({
              id: ev[i],
              attempt: ev[i + 1],
              args: args as unknown[],
              fc: lastFc,
              traceBytes: lastTraceBytes,
              traceAt: lastTraceAt,
            })
          }
          started += n
          execute(exec, method, inputs, bad)
        } else if (tag === EV_ABORT) {
          const ctx = running.get(ev[i + 1])
          if (ctx !== undefined) ctx.abort(errorFromData(describeAbort(ctx.label, ev[i + 3], ev[i + 2], def.options.timeoutMs)))
          i += 4
        } else if (tag === EV_CREDIT) {
          const st = running.get(ev[i + 1])?.gen
          if (st !== undefined) {
            st.credit += ev[i + 2]
            wakeGen(st)
          }
          i += 3
        } else if (tag === EV_STOP) {
          finish(0)
          return
        } else if (tag === EV_CLOSED) {
          // After a stop the stream closes as expected; before one, the control plane is gone.
          if (!finished) console.error(`berth container: the control plane went away; exiting`)
          finish(1)
          return
        } else {
          console.error(`berth container: unknown event ${tag}`)
          cur = null
          return
        }
      }
    }
  })
}
