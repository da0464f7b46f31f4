// FunctionCall: a spawned call, read with get() and stopped with cancel() through the
// transport that made it (transport.ts CallSource).
import { FunctionTimeoutError, InvalidError } from '../shared/errors.ts'
import { runsAnApp } from './app-target.ts'
import { serverCallSource } from './remote.ts'
import type { CallSource } from './transport.ts'
import type { FunctionCall as FunctionCallType } from './types.ts'

/** Spawned calls whose result nobody took yet; past this many, the oldest finished ones go. */
const MAX_KEPT_CALLS = 100_000

export class FunctionCall<R> implements FunctionCallType<R> {
  private static readonly calls = new Map<string, FunctionCall<unknown>>()
  /** @internal `source`: where the call's outcome comes from, and how to cancel it. */
  constructor(
    readonly objectId: string,
    private readonly source: CallSource,
  ) {
    const calls = FunctionCall.calls
    calls.set(objectId, this as FunctionCall<unknown>)
    if (calls.size > MAX_KEPT_CALLS) {
      for (const [id, fc] of calls) {
        if (calls.size <= MAX_KEPT_CALLS) break
        if (fc.source.settled) calls.delete(id)
      }
    }
  }

  /**
   * A spawned call by its `objectId`, from any process. A call spawned in this process is found
   * here until get() has returned its result. Otherwise the call is asked of the server that
   * ran it (`berth serve`): `opts.server`, else BERTH_SERVER, else http://127.0.0.1:7450; a
   * process that runs an app of its own asks a server only when `opts.server` names it. The
   * server delivers a result once, and keeps it for its --result-ttl after the call finished.
   * In broker mode any front of the app finds it (README "More than one machine").
   */
  static fromId<R = unknown>(id: string, opts?: { server?: string; token?: string }): FunctionCall<R> {
    if (typeof id !== 'string' || id.length === 0) {
      throw new InvalidError(`FunctionCall.fromId(id): pass a call's objectId, e.g. 'fc-12' (what spawn() returned)`)
    }
    const fc = FunctionCall.calls.get(id)
    if (fc && opts?.server === undefined) return fc as FunctionCall<R>
    if (opts?.server === undefined && runsAnApp()) {
      throw new InvalidError(
        `FunctionCall.fromId('${id}'): no such call in this process. Calls are kept until get() returns their result; keep the ` +
          `FunctionCall object to read it again. For a call spawned on a served app, name its server: ` +
          `FunctionCall.fromId('${id}', { server: 'http://127.0.0.1:7450' })`,
      )
    }
    return new FunctionCall<R>(id, serverCallSource(id, opts))
  }

  /** Waits for the result; with `timeout` (seconds) fails with FunctionTimeoutError if not ready. */
  async get(opts: { timeout?: number } = {}): Promise<R> {
    const s = await this.source.outcome(opts.timeout)
    if (s === undefined)
      throw new FunctionTimeoutError(`${this.objectId}: no result within ${opts.timeout}s; call get() again to keep waiting`)
    FunctionCall.calls.delete(this.objectId)
    if (s.ok) return s.value as R
    throw s.error
  }

  /** Cancels the call (its input stops; get() fails with InputCancelledError); nothing once it has a result. */
  async cancel(): Promise<void> {
    if (this.source.settled) return
    await this.source.cancel()
  }
}
