// How a handle's calls travel: in this process to the embedded runtime (embedded.ts), or over
// the network to a control plane (remote.ts). Each handle's target (app-target.ts,
// from-name.ts) picks the transport; the calls themselves (handle.ts) and the map loop
// (map.ts) are written once, over this interface.
import type { Arity } from '../shared/arity.ts'
import type { GenSource, ItemSink } from './gen-stream.ts'

/** A call's outcome: its value, or what it threw. */
export type Settled = { ok: true; value: unknown } | { ok: false; error: unknown }

/** Where a spawned call's outcome comes from: what `FunctionCall.get()` and `cancel()` use. */
export interface CallSource {
  /** Whether the outcome is known already (a cancel then does nothing). */
  readonly settled: boolean
  /** The outcome; undefined when it did not come within `timeout` seconds. */
  outcome(timeout: number | undefined): Promise<Settled | undefined>
  cancel(): unknown
}

/** A spawned call: its id (`FunctionCall.objectId`) and where its outcome comes from. */
export interface Spawned {
  id: string
  source: CallSource
}

/** Where a map stream's results go, each with its input's index. */
export interface MapSink {
  item(index: number, ok: boolean, value: unknown): void
  /** The stream delivered its last result. */
  end(): void
  /** The stream broke: no more results will come. */
  fail(error: unknown): void
}

/** One map call's inputs, as the transport takes them. */
export interface MapStream {
  /** Checks and sends input `index` (its argument tuple); throws what the caller must see. */
  push(index: number, tuple: unknown[]): void
  /** No more inputs. */
  close(): void
  /** The caller is done; with `cancel`, it left before the last result and the rest stop. */
  finish(cancel: boolean): void
}

export interface Transport {
  /** One call; its arity is checked by the handle. Fails as a rejected promise. */
  remote(args: unknown[]): Promise<unknown>
  /** One call whose outcome is read later; it is under way when this returns. */
  spawn(args: unknown[]): Spawned | Promise<Spawned>
  /**
   * Starts one generator call: its items go to `sink` in order, no more than the credit the
   * reader gave (`GenSource.more`, GEN_WINDOW at the start) ahead of it. Throws what the caller
   * must see before anything runs.
   */
  remoteGen(args: unknown[], sink: ItemSink): GenSource
  /** Opens a map stream; `what` names the call in messages (map, starmap, forEach). */
  openMap(what: string, sink: MapSink): MapStream
  /** Plain (sync) iterables are read without an await per input. */
  readonly syncInputs: boolean
  /** The map loop refills once no more than this many inputs are ahead of the consumer. */
  readonly mapLowWater: number
}

/** What a handle calls. */
export interface HandleTarget {
  /** For messages: `square`, `Embedder.embed`, `app/square`. */
  readonly label: string
  /** How many arguments a call may pass; undefined where the server checks. */
  readonly arity: Arity | undefined
  /** Whether it is a generator (remoteGen only); undefined where the server knows. */
  readonly gen: boolean | undefined
  /** The transport of the next call. */
  transport(): Transport
  /** Runs the call here, as `.local()`. */
  local(args: unknown[]): Promise<unknown>
}

/** The outcome of a call as it comes, held here: a promise that settles once. */
export class HeldOutcome implements CallSource {
  settled = false
  private readonly result: Promise<Settled>
  constructor(
    result: Promise<unknown>,
    readonly cancel: () => unknown,
  ) {
    this.result = result.then(
      (value) => ({ ok: true as const, value }),
      (error) => ({ ok: false as const, error }),
    )
    void this.result.then(() => (this.settled = true))
  }

  async outcome(timeout: number | undefined): Promise<Settled | undefined> {
    if (timeout === undefined) return this.result
    let timer: ReturnType<typeof setTimeout> | undefined
    const late = new Promise<undefined>((r) => (timer = setTimeout(r, timeout * 1000, undefined)))
    const first = await Promise.race([this.result, late])
    clearTimeout(timer)
    return first
  }
}
