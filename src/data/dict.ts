// Dict (README "Dict"): a named key-value map shared by every container and caller of a server,
// as Modal's `Dict` is. Under `berth serve` and with process containers the control plane holds
// it (crates/berth-server/src/dicts.rs, proto/berth/v1/data.proto); while an app runs embedded
// in this process, this process does (the same operations on the same encoded bytes). Keys are
// strings, numbers, booleans or bigints; values anything a function's argument may be (the
// same checks and SerializationError), stored encoded: what `get` returns is a copy.
// `Dict.ephemeral(fn)` (README "Dict"): a dict with a name of its own, deleted when `fn` is done.
import { randomUUID } from 'node:crypto'
import { localApps } from '../call/app-target.ts'
import { type DataClient, type DictCall, dataClient } from '../call/remote.ts'
import { inContainerProcess } from '../run/context.ts'
import { dataSocket } from './socket.ts'
import { decodeValue, encodeValue } from '../shared/cbor.ts'
import { InvalidError, KeyError, NotFoundError } from '../shared/errors.ts'

/** proto/berth/v1/data.proto `DictOp`. */
const OP = { get: 1, put: 2, contains: 3, len: 4, update: 5, pop: 6, items: 7, clear: 8, delete: 9, ensure: 10 } as const

export type DictKey = string | number | boolean | bigint

/** What an operation answers: `[found, len, value, entries]`. */
type Answer = [boolean, number, unknown, [unknown, unknown][]]

/** Where a dict's operations go. */
interface Backend {
  op(c: DictCall): Promise<Answer>
}

const NAME = /^[A-Za-z0-9._-]{1,128}$/

/** @internal A dict's or queue's name, as `Dict.fromName` and `Queue.fromName` take it (proto/berth/v1/data.proto). */
export function checkDataName(kind: 'Dict' | 'Queue', name: unknown): void {
  if (typeof name !== 'string' || !NAME.test(name)) {
    throw new InvalidError(
      `${kind}.fromName(${JSON.stringify(name)}): a ${kind.toLowerCase()} name is 1 to 128 letters, digits, '-', '_' or '.'`,
    )
  }
}

/** @internal Using a dict or queue that does not exist, without `createIfMissing`. */
export function notFound(kind: 'Dict' | 'Queue', name: string): NotFoundError {
  const what = kind.toLowerCase()
  return new NotFoundError(`no ${what} named '${name}': create it with ${kind}.fromName('${name}', { createIfMissing: true })`)
}

/** @internal `call` to a server, whose NOT_FOUND for an absent dict or queue reads as the embedded one's. */
export function onServer<T>(kind: 'Dict' | 'Queue', name: string, call: () => Promise<unknown>): Promise<T> {
  // A catch on the promise, not an async function around it: one promise less an operation.
  return (call() as Promise<T>).catch((e) => {
    if (e instanceof Error && e.message.startsWith(`no ${kind.toLowerCase()} named`)) throw notFound(kind, name)
    throw e
  })
}

function encodeKey(key: unknown, where: string): Uint8Array {
  const t = typeof key
  if (!(t === 'string' || t === 'boolean' || t === 'bigint' || (t === 'number' && Number.isFinite(key)))) {
    throw new InvalidError(`${where}: a dict key is a string, a finite number, a boolean or a bigint; got ${key === null ? 'null' : t}`)
  }
  return encodeValue(key, `${where}: the key`)
}

/** The dicts of this process, while an app runs embedded here: what the control plane does (dicts.rs). */
class LocalDicts implements Backend {
  private readonly dicts = new Map<string, Map<string, [Uint8Array, Uint8Array]>>()
  async op({ name, create, op, key, value, entries, skipIfExists }: DictCall): Promise<Answer> {
    if (op === OP.delete) return [this.dicts.delete(name), 0, null, []]
    let d = this.dicts.get(name)
    if (d === undefined) {
      if (!create) throw notFound('Dict', name)
      d = new Map()
      this.dicts.set(name, d)
    }
    const id = key === undefined ? '' : Buffer.from(key).toString('latin1')
    let found = false
    let out: unknown = null
    let items: [unknown, unknown][] = []
    switch (op) {
      case OP.get: {
        const e = d.get(id)
        if (e) [found, out] = [true, decodeValue(e[1])]
        break
      }
      case OP.put:
        if (skipIfExists && d.has(id)) found = true
        else d.set(id, [key!, value!])
        break
      case OP.contains:
        found = d.has(id)
        break
      case OP.update:
        for (let i = 0; i + 1 < (entries?.length ?? 0); i += 2)
          d.set(Buffer.from(entries![i]).toString('latin1'), [entries![i], entries![i + 1]])
        break
      case OP.pop: {
        const e = d.get(id)
        if (e) {
          d.delete(id)
          ;[found, out] = [true, decodeValue(e[1])]
        }
        break
      }
      case OP.items:
        items = [...d.values()].map(([k, v]) => [decodeValue(k), decodeValue(v)])
        break
      case OP.clear:
        d.clear()
        break
    }
    return [found, d.size, out, items]
  }
}

const local = new LocalDicts()

/**
 * @internal Where this process's dicts and queues are: the control plane it runs in (a
 * container process: through its data socket, src/data/socket.ts), its app's control plane
 * (process containers), this process (an app embedded here: undefined), or BERTH_SERVER's.
 */
export function dataClientFor(opts: { server?: string; token?: string }): DataClient | undefined {
  if (opts.server !== undefined) return dataClient({ server: opts.server, token: opts.token })
  if (inContainerProcess() && process.env.BERTH_ENDPOINT) {
    const grpc = dataClient({ server: process.env.BERTH_ENDPOINT, token: process.env.BERTH_TOKEN })
    return dataSocket(grpc) ?? grpc
  }
  const apps = localApps()
  const processApp = apps.find((a) => a.processServer !== undefined)
  if (processApp !== undefined) return dataClient({ app: processApp.name })
  if (apps.some((a) => a.runtimeIfRunning() !== undefined)) return undefined
  return dataClient({})
}

function backendFor(opts: { server?: string; token?: string }): Backend {
  const client = dataClientFor(opts)
  if (client === undefined) return local
  return { op: (c) => onServer<Answer>('Dict', c.name, () => client.dict(c)) }
}

/** The options of `Dict.fromName` and `Queue.fromName`. */
export interface DataOptions {
  /** Make it if it does not exist; without it, using one that does not exist is a NotFoundError. */
  createIfMissing?: boolean
  /** The server that holds it (else the control plane this code runs under, or BERTH_SERVER). */
  server?: string
  token?: string
}

export type DictOptions = DataOptions

/** The options of `Dict.ephemeral` and `Queue.ephemeral`: where it is held (it is always created). */
export type EphemeralOptions = Omit<DataOptions, 'createIfMissing'>

/**
 * @internal `Dict.ephemeral` / `Queue.ephemeral`: `([opts,] fn)` checked, and a fresh name.
 * Misuse is an InvalidError that shows the call as it should be (README "Dict").
 */
export function ephemeralArgs<F>(kind: 'Dict' | 'Queue', args: unknown[]): { opts: EphemeralOptions; fn: F; name: string } {
  const [opts = {}, fn] = args.length >= 2 ? args : [{}, args[0]]
  const usage = `${kind}.ephemeral(async (${kind === 'Dict' ? 'd' : 'q'}) => { ... }), or ${kind}.ephemeral({ server }, async (...) => { ... })`
  if (args.length > 2 || typeof fn !== 'function')
    throw new InvalidError(`${kind}.ephemeral: pass the function that uses the ${kind.toLowerCase()}: ${usage}`)
  if (opts === null || typeof opts !== 'object' || Array.isArray(opts))
    throw new InvalidError(`${kind}.ephemeral: the options come first, as an object: ${usage}`)
  const { createIfMissing: _, ...where } = opts as DataOptions
  return { opts: where, fn: fn as F, name: `ephemeral-${randomUUID()}` }
}

/**
 * @internal Runs `fn`, then `remove` whether it returned or threw. When `fn` threw, its error
 * is what the caller gets, even if the removal fails too.
 */
export async function thenRemove<R>(fn: () => R | Promise<R>, remove: () => Promise<unknown>): Promise<R> {
  let result: R
  try {
    result = await fn()
  } catch (e) {
    await remove().catch(() => {})
    throw e
  }
  await remove()
  return result
}

/** A named dict; made with `Dict.fromName`. Every method returns a promise. */
export class Dict<V = unknown> {
  private backend: Backend | undefined
  private constructor(
    readonly name: string,
    private readonly opts: DictOptions,
  ) {}

  /** The dict named `name`; with `createIfMissing`, made at its first use if absent. */
  static fromName<V = unknown>(name: string, opts: DictOptions = {}): Dict<V> {
    checkDataName('Dict', name)
    return new Dict<V>(name, opts ?? {})
  }

  /** Removes the dict named `name` and what it holds; false if there was none. */
  static async delete(name: string, opts: DictOptions = {}): Promise<boolean> {
    const [found] = await backendFor(opts).op({ name, create: false, op: OP.delete })
    return found
  }

  /**
   * Calls `fn` with a new dict that exists only until `fn` is done, as Modal's
   * `Dict.ephemeral()`: it gets a name of its own (`ephemeral-<uuid>`, its `name`; containers
   * open it with `Dict.fromName(name)`), and is deleted when `fn` returns or throws. Resolves to
   * what `fn` resolves to; `opts` says where it is held, as for `fromName`.
   */
  static ephemeral<V = unknown, R = unknown>(fn: (dict: Dict<V>) => R | Promise<R>): Promise<R>
  static ephemeral<V = unknown, R = unknown>(opts: EphemeralOptions, fn: (dict: Dict<V>) => R | Promise<R>): Promise<R>
  static async ephemeral<V, R>(...args: unknown[]): Promise<R> {
    const { opts, fn, name } = ephemeralArgs<(dict: Dict<V>) => R | Promise<R>>('Dict', args)
    const d = new Dict<V>(name, { ...opts, createIfMissing: true })
    await d.call(OP.ensure) // made now, so that Dict.fromName(name) finds it from the start
    return thenRemove(
      () => fn(d),
      () => Dict.delete(name, opts),
    )
  }

  private call(op: number, more: Omit<DictCall, 'name' | 'create' | 'op'> = {}): Promise<Answer> {
    this.backend ??= backendFor(this.opts)
    return this.backend.op({ name: this.name, create: this.opts.createIfMissing === true, op, ...more })
  }

  private where(method: string): string {
    return `Dict('${this.name}').${method}`
  }

  /** The value at `key`, or `fallback` (undefined) when there is none. */
  async get(key: DictKey, fallback?: V): Promise<V | undefined> {
    const [found, , value] = await this.call(OP.get, { key: encodeKey(key, this.where('get')) })
    return found ? (value as V) : fallback
  }

  /** Sets `key` to `value`; with `skipIfExists`, only if `key` is absent (then true when it was put). */
  async put(key: DictKey, value: V, opts: { skipIfExists?: boolean } = {}): Promise<boolean> {
    const k = encodeKey(key, this.where('put'))
    const skipIfExists = opts?.skipIfExists === true
    const [found] = await this.call(OP.put, { key: k, value: encodeValue(value, `${this.where('put')}: the value`), skipIfExists })
    return !found || !skipIfExists
  }

  async contains(key: DictKey): Promise<boolean> {
    return (await this.call(OP.contains, { key: encodeKey(key, this.where('contains')) }))[0]
  }

  /** How many entries it holds. */
  async len(): Promise<number> {
    return (await this.call(OP.len))[1]
  }

  /** Sets every entry of `entries` (an object, a Map or [key, value] pairs) at once. */
  async update(entries: Record<string, V> | Map<DictKey, V> | Iterable<[DictKey, V]>): Promise<void> {
    const pairs: [unknown, unknown][] =
      entries instanceof Map || Symbol.iterator in Object(entries)
        ? [...(entries as Iterable<[unknown, unknown]>)]
        : Object.entries(entries)
    const flat: Uint8Array[] = []
    for (const [k, v] of pairs)
      flat.push(encodeKey(k, this.where('update')), encodeValue(v, `${this.where('update')}: the value of ${String(k)}`))
    await this.call(OP.update, { entries: flat })
  }

  /** Removes `key` and gives its value; without `fallback`, an absent key is a KeyError. */
  async pop(key: DictKey, ...fallback: [V?]): Promise<V | undefined> {
    const [found, , value] = await this.call(OP.pop, { key: encodeKey(key, this.where('pop')) })
    if (found) return value as V
    if (fallback.length > 0) return fallback[0]
    throw new KeyError(`${this.where('pop')}: no key ${typeof key === 'string' ? `'${key}'` : String(key)}`)
  }

  async keys(): Promise<DictKey[]> {
    return (await this.call(OP.items))[3].map(([k]) => k as DictKey)
  }

  async values(): Promise<V[]> {
    return (await this.call(OP.items))[3].map(([, v]) => v as V)
  }

  async items(): Promise<[DictKey, V][]> {
    return (await this.call(OP.items))[3] as [DictKey, V][]
  }

  /** Removes every entry. */
  async clear(): Promise<void> {
    await this.call(OP.clear)
  }
}
