// Queue (README "Queue"): a named FIFO queue, per partition, shared by every container and caller
// of a server, as Modal's `Queue` is. Held where dicts are (src/data/dict.ts `dataClientFor`):
// the control plane (crates/berth-server/src/queues.rs) or, while an app runs embedded, this
// process. Items are anything a function's argument may be, stored encoded. `Queue.ephemeral(fn)`
// (README "Queue"): a queue with a name of its own, deleted when `fn` is done.
import {
  checkDataName,
  type DataOptions,
  dataClientFor,
  type EphemeralOptions,
  ephemeralArgs,
  notFound,
  onServer,
  thenRemove,
} from './dict.ts'
import type { DataClient, QueueCall } from '../call/remote.ts'
import { decodeValue, encodeValue } from '../shared/cbor.ts'
import { InvalidError, QueueEmptyError } from '../shared/errors.ts'

/** proto/berth/v1/data.proto `QueueOp`. */
const OP = { put: 1, get: 2, len: 3, clear: 4, delete: 5 } as const

/** What an operation answers: `[items, len, found]`. */
type Answer = [unknown[], number, boolean]

/**
 * A partition's items, oldest first. Taken from the front without moving the rest (as
 * queues.rs's VecDeque): a get stays as cheap with 100,000 items behind it as with none.
 */
class Fifo {
  private items: Uint8Array[] = []
  private head = 0
  get length(): number {
    return this.items.length - this.head
  }
  push(values: Uint8Array[]): void {
    for (const v of values) this.items.push(v)
  }
  take(n: number): Uint8Array[] {
    const out = this.items.slice(this.head, this.head + n)
    this.head += out.length
    // The taken ones are let go of once they are half of what the array holds.
    if (this.head === this.items.length) [this.items, this.head] = [[], 0]
    else if (this.head > 1024 && this.head * 2 > this.items.length) [this.items, this.head] = [this.items.slice(this.head), 0]
    return out
  }
}

/** The queues of this process, while an app runs embedded here: what the control plane does (queues.rs). */
class LocalQueues {
  private readonly queues = new Map<string, { parts: Map<string, Fifo>; waiters: Set<() => void> }>()
  async op(c: QueueCall): Promise<Answer> {
    if (c.op === OP.delete) return [[], 0, this.queues.delete(c.name)]
    const deadline = c.block && c.timeout ? Date.now() + c.timeout * 1000 : c.block ? Number.POSITIVE_INFINITY : 0
    for (;;) {
      let q = this.queues.get(c.name)
      if (q === undefined) {
        if (!c.create) throw notFound('Queue', c.name)
        q = { parts: new Map(), waiters: new Set() }
        this.queues.set(c.name, q)
      }
      const key = c.partition ?? ''
      if (c.op === OP.put) {
        let part = q.parts.get(key)
        if (part === undefined) q.parts.set(key, (part = new Fifo()))
        part.push(c.values ?? [])
        for (const wake of q.waiters) wake()
        return [[], part.length, false]
      }
      if (c.op === OP.len || c.op === OP.clear) {
        if (c.op === OP.clear) {
          if (c.allPartitions) q.parts.clear()
          else q.parts.delete(key)
        }
        const len = c.allPartitions ? [...q.parts.values()].reduce((n, p) => n + p.length, 0) : (q.parts.get(key)?.length ?? 0)
        return [[], len, false]
      }
      const part = q.parts.get(key)
      const taken = part?.take(Math.max(1, c.max ?? 1)) ?? []
      if (taken.length > 0 || Date.now() >= deadline) return [taken.map((b) => decodeValue(b)), part?.length ?? 0, false]
      const waiters = q.waiters
      await new Promise<void>((resolve) => {
        const wake = () => {
          waiters.delete(wake)
          clearTimeout(timer)
          resolve()
        }
        const timer = deadline === Number.POSITIVE_INFINITY ? undefined : setTimeout(wake, Math.max(0, deadline - Date.now()))
        waiters.add(wake)
      })
    }
  }
}

const local = new LocalQueues()

export type QueueOptions = DataOptions

export interface GetOptions {
  /** Wait for an item (default true); false: undefined (get) or [] (getMany) when there is none. */
  block?: boolean
  /** Seconds to wait at most (default: no limit); past it a blocking get throws QueueEmptyError. */
  timeout?: number
  partition?: string
}

/** A named queue; made with `Queue.fromName`. Every method returns a promise. */
export class Queue<T = unknown> {
  private client: DataClient | undefined | null = null
  private constructor(
    readonly name: string,
    private readonly opts: QueueOptions,
  ) {}

  /** The queue named `name`; with `createIfMissing`, made at its first use if absent. */
  static fromName<T = unknown>(name: string, opts: QueueOptions = {}): Queue<T> {
    checkDataName('Queue', name)
    return new Queue<T>(name, opts ?? {})
  }

  /** Removes the queue named `name` and its items; false if there was none. */
  static async delete(name: string, opts: QueueOptions = {}): Promise<boolean> {
    return (await new Queue(name, opts).call({ op: OP.delete }))[2]
  }

  /**
   * Calls `fn` with a new queue that exists only until `fn` is done, as Modal's
   * `Queue.ephemeral()`: it gets a name of its own (`ephemeral-<uuid>`, its `name`; containers
   * open it with `Queue.fromName(name)`), and is deleted when `fn` returns or throws. Resolves to
   * what `fn` resolves to; `opts` says where it is held, as for `fromName`.
   */
  static ephemeral<T = unknown, R = unknown>(fn: (queue: Queue<T>) => R | Promise<R>): Promise<R>
  static ephemeral<T = unknown, R = unknown>(opts: EphemeralOptions, fn: (queue: Queue<T>) => R | Promise<R>): Promise<R>
  static async ephemeral<T, R>(...args: unknown[]): Promise<R> {
    const { opts, fn, name } = ephemeralArgs<(queue: Queue<T>) => R | Promise<R>>('Queue', args)
    const q = new Queue<T>(name, { ...opts, createIfMissing: true })
    await q.call({ op: OP.len }) // made now, so that Queue.fromName(name) finds it from the start
    return thenRemove(
      () => fn(q),
      () => Queue.delete(name, opts),
    )
  }

  private async call(c: Omit<QueueCall, 'name' | 'create'>): Promise<Answer> {
    if (this.client === null) this.client = dataClientFor(this.opts)
    const full: QueueCall = { name: this.name, create: this.opts.createIfMissing === true, ...c }
    const client = this.client
    if (client === undefined) return local.op(full)
    return onServer<Answer>('Queue', this.name, () => client.queue(full))
  }

  private partition(where: string, p: unknown): string {
    if (p === undefined) return ''
    if (typeof p !== 'string' || p.length === 0 || p.length > 64) {
      throw new InvalidError(`Queue('${this.name}').${where}: a partition is a name of 1 to 64 characters`)
    }
    return p
  }

  /** Appends `value` (to `partition`). */
  put(value: T, opts: { partition?: string } = {}): Promise<void> {
    return this.append('put', [value], opts)
  }

  /** Appends each of `values`, in order (to `partition`). */
  putMany(values: T[], opts: { partition?: string } = {}): Promise<void> {
    return this.append('putMany', values, opts)
  }

  /** `put` and `putMany`: one async step between the caller and the request, not two. */
  private async append(where: string, values: T[], opts: { partition?: string }): Promise<void> {
    const partition = this.partition(where, opts?.partition)
    const encoded = values.map((v, i) => encodeValue(v, `Queue('${this.name}').put: item ${i}`))
    await this.call({ op: OP.put, partition, values: encoded })
  }

  private checkGet(where: string, opts: GetOptions): { partition: string; block: boolean; timeout: number } {
    const timeout = opts?.timeout
    if (timeout !== undefined && (typeof timeout !== 'number' || !Number.isFinite(timeout) || timeout < 0)) {
      throw new InvalidError(`Queue('${this.name}').${where}: timeout is seconds from 0 up, got ${String(timeout)}`)
    }
    return { partition: this.partition(where, opts?.partition), block: opts?.block !== false, timeout: timeout ?? 0 }
  }

  /** The item at the front: waits for one unless `block` is false (then undefined when empty); QueueEmptyError past `timeout`. */
  async get(opts: GetOptions = {}): Promise<T | undefined> {
    const items = await this.getMany(1, opts)
    return items[0]
  }

  /** Up to `n` items from the front, once there is at least one (or none, with `block: false`). */
  async getMany(n: number, opts: GetOptions = {}): Promise<T[]> {
    if (!Number.isInteger(n) || n < 1) throw new InvalidError(`Queue('${this.name}').getMany(${String(n)}): take a whole number from 1 up`)
    const { partition, block, timeout } = this.checkGet('get', opts)
    // An explicit timeout of 0: nothing is waited for (0 on the wire is no limit).
    const wait = block && opts?.timeout !== 0
    const [items] = await this.call({ op: OP.get, partition, max: n, block: wait, timeout })
    if (items.length === 0 && block) {
      throw new QueueEmptyError(`Queue('${this.name}').get: ${wait ? `nothing came within ${timeout} s` : 'empty'}`)
    }
    return items as T[]
  }

  /** How many items `partition` holds, or every partition with `total`. */
  async len(opts: { partition?: string; total?: boolean } = {}): Promise<number> {
    return (await this.call({ op: OP.len, partition: this.partition('len', opts?.partition), allPartitions: opts?.total === true }))[1]
  }

  /** Removes the items of `partition`, or of every partition with `all`. */
  async clear(opts: { partition?: string; all?: boolean } = {}): Promise<void> {
    await this.call({ op: OP.clear, partition: this.partition('clear', opts?.partition), allPartitions: opts?.all === true })
  }

  /** Its items as they come, until none comes within `itemPollTimeout` seconds (default 0: what is there now). */
  async *iterate(opts: { partition?: string; itemPollTimeout?: number } = {}): AsyncGenerator<T> {
    const wait = opts?.itemPollTimeout ?? 0
    for (;;) {
      const items = await this.call({
        op: OP.get,
        partition: this.partition('iterate', opts?.partition),
        max: 100,
        block: wait > 0,
        timeout: wait,
      })
      if (items[0].length === 0) return
      for (const x of items[0]) yield x as T
    }
  }
}
