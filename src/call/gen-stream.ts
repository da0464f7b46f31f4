// The reader's side of a generator call (`handle.remoteGen(...)`, README "API"): an async
// iterator over the items the generator yields, fed by a transport (embedded.ts, remote.ts).
// Backpressure is by credit: the producer may send GEN_WINDOW items before the reader takes any,
// and one more for each item the reader takes, so a slow reader pauses the generator and
// holds at most GEN_WINDOW items here.
import { GEN_WINDOW } from '../run/pool.ts'
import { InvalidError } from '../shared/errors.ts'

export { GEN_WINDOW }

/** Where a generator call's items go, in order; then `end` or `fail`, once. */
export interface ItemSink {
  item(value: unknown): void
  end(): void
  fail(error: unknown): void
}

/** The producer a stream reads from: what `Transport.remoteGen` returns. */
export interface GenSource {
  /** The reader took `n` items: the producer may send that many more. */
  more(n: number): void
  /** The reader stopped before the end: the input is cancelled (its signal aborts, the generator's return() runs). */
  close(): void
}

/** A generator handle's `.remote()` and co: the message names the call that works. */
export function generatorCallError(label: string, what: string): InvalidError {
  return new InvalidError(
    `${label} is a generator (async function*): ${what}() would have no single result. ` +
      `Call ${label}.remoteGen(...args) and read the items with for await`,
  )
}

/** `.remoteGen()` on a function that is no generator. */
export function notGeneratorError(label: string): InvalidError {
  return new InvalidError(
    `${label} is not a generator: call it with ${label}.remote(...args). remoteGen() is for async function* functions and async * methods`,
  )
}

export class GenStream implements AsyncIterableIterator<unknown>, ItemSink {
  private readonly items: unknown[] = []
  private head = 0
  private source: GenSource | undefined
  private started = false
  /** The producer said it is done (end or fail). */
  private ended = false
  private failed = false
  private error: unknown
  /** The reader is done: nothing more is read or delivered. */
  private closed = false
  private waiter: { resolve: (r: IteratorResult<unknown>) => void; reject: (e: unknown) => void } | undefined

  /** `open` starts the call on the first `next()`: a stream nobody reads runs nothing. */
  constructor(private readonly open: (sink: ItemSink) => GenSource) {}

  [Symbol.asyncIterator](): this {
    return this
  }

  next(): Promise<IteratorResult<unknown>> {
    if (!this.started) {
      this.started = true
      try {
        this.source = this.open(this)
      } catch (e) {
        this.closed = true
        return Promise.reject(e)
      }
    }
    if (this.closed) return Promise.resolve({ value: undefined, done: true })
    if (this.head < this.items.length) {
      const value = this.items[this.head]
      this.items[this.head++] = undefined
      if (this.head === this.items.length) {
        this.items.length = 0
        this.head = 0
      }
      this.source?.more(1)
      return Promise.resolve({ value, done: false })
    }
    if (this.ended) {
      this.closed = true
      return this.failed ? Promise.reject(this.error) : Promise.resolve({ value: undefined, done: true })
    }
    return new Promise((resolve, reject) => (this.waiter = { resolve, reject }))
  }

  /** The reader left early (`break`, a throw in its loop): the call is cancelled. */
  return(): Promise<IteratorResult<unknown>> {
    if (!this.closed) {
      this.closed = true
      this.items.length = 0
      this.head = 0
      if (this.started && !this.ended) this.source?.close()
    }
    return Promise.resolve({ value: undefined, done: true })
  }

  item(value: unknown): void {
    if (this.closed || this.ended) return
    const w = this.waiter
    if (w === undefined) {
      this.items.push(value)
      return
    }
    this.waiter = undefined
    this.source?.more(1)
    w.resolve({ value, done: false })
  }

  end(): void {
    if (this.ended) return
    this.ended = true
    const w = this.waiter
    if (w === undefined) return
    this.waiter = undefined
    this.closed = true
    w.resolve({ value: undefined, done: true })
  }

  fail(error: unknown): void {
    if (this.ended) return
    this.ended = true
    this.failed = true
    this.error = error
    const w = this.waiter
    if (w === undefined) return
    this.waiter = undefined
    this.closed = true
    w.reject(error)
  }
}
