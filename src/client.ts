// Handles on an app served elsewhere (`berth serve`): Function.fromName, Cls.fromName,
// App.lookup. Calls go through the native gRPC client; values cross as CBOR.
import { createRequire } from 'node:module'

import { FunctionCall, isSyncIterable, splitOptions, toAsync, zipInputs } from './app.ts'
import { decodeValue, encodeValue } from './cbor.ts'
import { BerthError, InvalidError, errorFromData } from './errors.ts'
import { checkAndCopyArgs } from './serialize.ts'
import type { ClsHandle, MapOptions, RemoteFunctionHandle } from './types.ts'

interface BindingClient {
  invoke(id: number, app: string, fn: string, method: string, params: Buffer, args: Buffer): void
  spawn(id: number, app: string, fn: string, method: string, params: Buffer, args: Buffer): void
  getResult(id: number, call: string, timeout: number): void
  cancel(id: number, call: string): void
  mapOpen(id: number, app: string, fn: string, method: string, params: Buffer): void
  mapPush(id: number, meta: Float64Array, bytes: Buffer): void
  mapClose(id: number): void
  mapFinish(id: number, cancel: boolean): void
  drain(): { events: Float64Array; bytes: Buffer } | null
}

interface MapHandler {
  item(index: number, ok: boolean, value: unknown): void
  end(): void
  fail(error: unknown): void
}

const K_VALUE = 0
const K_ERROR = 1
const K_STATUS = 2
const K_TEXT = 3
const K_PENDING = 4
const K_MAP_END = 6
const PENDING = Symbol('pending')
const EMPTY = Buffer.alloc(0)
const utf8 = new TextDecoder()

/**
 * Where callers find `berth serve` when neither App.lookup nor BERTH_SERVER names a server:
 * its default --host and --grpc-port (README "CLI").
 */
export const DEFAULT_SERVER = 'http://127.0.0.1:7450'

/** Errors made of a gRPC status (not a user error carried back as data). */
const statusErrors = new WeakSet<Error>()

/** gRPC status codes a caller can act on, with what to do. */
function statusError(server: string, code: number, message: string): Error {
  const where = server === DEFAULT_SERVER ? `${server} (the default when BERTH_SERVER is unset)` : server
  const hint: Record<number, string> = {
    3: '', // INVALID_ARGUMENT: the server's message says what
    5: '', // NOT_FOUND: the server's message names what exists
    8: ' (the request is over the server\'s message size cap)',
    14: ` (no berth server answers at ${where}: start one with \`npx berth serve app.ts\`, or point ` +
      `BERTH_SERVER=http://host:port, or App.lookup(app, { server }), at the one you mean)`,
    16: ' (pass the server\'s token: App.lookup(name, { server, token }) or BERTH_TOKEN)',
  }
  const e = code in hint ? new InvalidError(`${message}${hint[code]}`) : new BerthError(`berth server ${server}: gRPC status ${code}: ${message}`)
  statusErrors.add(e)
  return e
}

class Client {
  private readonly native: BindingClient
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: unknown) => void }>()
  private readonly maps = new Map<number, MapHandler>()
  private next = 0
  private keepAlive: ReturnType<typeof setInterval> | undefined

  constructor(readonly server: string, token: string | undefined) {
    const { BindingClient } = createRequire(__filename)('../binding.cjs') as {
      BindingClient: new (server: string, token: string | undefined, doorbell: () => void) => BindingClient
    }
    this.native = servedHere.get(server)?.client(() => this.pump()) ?? new BindingClient(server, token, () => this.pump())
  }

  /** Opens a Map stream; push inputs (CBOR args, batched per microtask), then close. */
  openMap(
    app: string,
    fn: string,
    method: string,
    params: Buffer,
    handler: MapHandler,
  ): { push(index: number, args: unknown[]): void; close(): void; finish(cancel: boolean): void } {
    const id = ++this.next
    this.maps.set(id, handler)
    this.keepAlive ??= setInterval(() => {}, 1 << 30)
    this.native.mapOpen(id, app, fn, method, params)
    let meta: number[] = []
    let chunks: Uint8Array[] = []
    let size = 0
    let scheduled = false
    const flush = () => {
      scheduled = false
      if (meta.length === 0) return
      this.native.mapPush(id, new Float64Array(meta), Buffer.concat(chunks, size))
      meta = []
      chunks = []
      size = 0
    }
    return {
      push: (index, args) => {
        const bytes = encodeValue(args)
        meta.push(index, size, bytes.length)
        chunks.push(bytes)
        size += bytes.length
        if (!scheduled) {
          scheduled = true
          queueMicrotask(flush)
        }
      },
      close: () => {
        flush()
        this.native.mapClose(id)
      },
      finish: (cancel) => this.native.mapFinish(id, cancel),
    }
  }

  request(send: (id: number) => void): Promise<unknown> {
    const id = ++this.next
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject })
      this.keepAlive ??= setInterval(() => {}, 1 << 30)
      try {
        send(id)
      } catch (e) {
        this.settle(id)?.reject(e)
      }
    })
  }

  invoke(app: string, fn: string, method: string, params: Buffer, args: unknown[]): Promise<unknown> {
    const bytes = Buffer.from(encodeValue(args))
    return this.request((id) => this.native.invoke(id, app, fn, method, params, bytes))
  }

  spawn(app: string, fn: string, method: string, params: Buffer, args: unknown[]): Promise<string> {
    const bytes = Buffer.from(encodeValue(args))
    return this.request((id) => this.native.spawn(id, app, fn, method, params, bytes)) as Promise<string>
  }

  getResult(call: string, timeout: number): Promise<unknown> {
    return this.request((id) => this.native.getResult(id, call, timeout))
  }

  cancel(call: string): Promise<unknown> {
    return this.request((id) => this.native.cancel(id, call))
  }

  private settle(id: number) {
    const p = this.pending.get(id)
    this.pending.delete(id)
    this.idle()
    return p
  }

  private idle(): void {
    if (this.pending.size === 0 && this.maps.size === 0 && this.keepAlive !== undefined) {
      clearInterval(this.keepAlive)
      this.keepAlive = undefined
    }
  }

  private decodeError(kind: number, data: Uint8Array): Error {
    const text = utf8.decode(data)
    if (kind === K_ERROR) {
      const [name, message, stack] = text.split('\0')
      return errorFromData({ name, message, stack: stack || undefined })
    }
    const cut = text.indexOf('\0')
    return statusError(this.server, Number(text.slice(0, cut)), text.slice(cut + 1))
  }

  private mapEvent(id: number, h: MapHandler, kind: number, data: Uint8Array, index: number): void {
    if (kind === K_VALUE) h.item(index, true, decodeValue(data))
    else if (kind === K_ERROR) h.item(index, false, this.decodeError(kind, data))
    else {
      this.maps.delete(id)
      this.idle()
      if (kind === K_MAP_END) h.end()
      else h.fail(this.decodeError(kind, data))
    }
  }

  private pump(): void {
    const got = this.native.drain()
    if (got === null) return
    const { events, bytes } = got
    for (let i = 0; i < events.length; i += 5) {
      const id = events[i]
      const data = bytes.subarray(events[i + 2], events[i + 2] + events[i + 3])
      const kind = events[i + 1]
      const map = this.maps.get(id)
      if (map) {
        try {
          this.mapEvent(id, map, kind, data, events[i + 4])
        } catch (e) {
          map.fail(e)
        }
        continue
      }
      const p = this.settle(id)
      if (!p) continue
      try {
        if (kind === K_VALUE) p.resolve(decodeValue(data))
        else if (kind === K_ERROR || kind === K_STATUS) p.reject(this.decodeError(kind, data))
        else if (kind === K_TEXT) p.resolve(utf8.decode(data))
        else if (kind === K_PENDING) p.resolve(PENDING)
        else p.resolve(undefined)
      } catch (e) {
        p.reject(e)
      }
    }
  }
}

const clients = new Map<string, Client>()
/** Control planes this process runs (process containers), by address: called directly, not over gRPC. */
const servedHere = new Map<string, { client(doorbell: () => void): BindingClient | null }>()
const lookedUp = new Map<string, { server: string; token?: string }>()

function clientFor(app: string): Client {
  const where = lookedUp.get(app)
  return clientAt(where?.server, where?.token)
}

/** The client for `server` (else BERTH_SERVER, else DEFAULT_SERVER) with `token` (else BERTH_TOKEN). */
function clientAt(server: string | undefined, token: string | undefined): Client {
  server ??= process.env.BERTH_SERVER || DEFAULT_SERVER
  token ??= process.env.BERTH_TOKEN
  const key = `${server} ${token ?? ''}`
  let c = clients.get(key)
  if (!c) {
    c = new Client(server, token)
    clients.set(key, c)
  }
  return c
}

/** @internal `server` is a control plane of this process (app.run with process containers). */
export function serveHere(server: string, plane: { client(doorbell: () => void): BindingClient | null }): void {
  servedHere.set(server, plane)
  for (const [key, c] of clients) if (c.server === server) clients.delete(key)
}

/** Where `Function.fromName` / `Cls.fromName` find the app named `name`. */
export function lookupApp(name: string, opts: { server: string; token?: string }): { name: string; server: string } {
  if (typeof opts?.server !== 'string') throw new InvalidError(`App.lookup('${name}', { server }): pass the server's URL, e.g. http://127.0.0.1:7450`)
  lookedUp.set(name, { server: opts.server, token: opts.token })
  return { name, server: opts.server }
}

/** The six calls, over the network. Connects at the first call. */
export class RemoteInvocable {
  constructor(
    private readonly app: string,
    private readonly fn: string,
    private readonly method: string,
    private readonly params: Buffer,
    private readonly label: string,
  ) {}

  private client(): Client {
    return clientFor(this.app)
  }

  async remote(...args: unknown[]): Promise<unknown> {
    checkAndCopyArgs(args, `${this.label}.remote`)
    return this.client().invoke(this.app, this.fn, this.method, this.params, args)
  }

  async local(): Promise<never> {
    throw new InvalidError(`${this.label}.local(): a handle from fromName runs on the server; call .remote()`)
  }

  async spawn(...args: unknown[]): Promise<FunctionCall<unknown>> {
    checkAndCopyArgs(args, `${this.label}.spawn`)
    const client = this.client()
    const id = await client.spawn(this.app, this.fn, this.method, this.params, args)
    return new FunctionCall(id, waitResult(client, id), () => client.cancel(id))
  }

  map(...inputs: unknown[]): AsyncIterable<unknown> {
    const { iterables, opts } = splitOptions(inputs, 'map')
    return this.run(zipInputs(iterables), opts)
  }

  starmap(argTuples: Iterable<unknown[]> | AsyncIterable<unknown[]>, opts: MapOptions = {}): AsyncIterable<unknown> {
    return this.run(isSyncIterable(argTuples) ? argTuples : toAsync(argTuples), opts)
  }

  async forEach(...inputs: unknown[]): Promise<void> {
    const { iterables, opts } = splitOptions(inputs, 'forEach')
    for await (const _ of this.run(zipInputs(iterables), { ...opts, orderOutputs: false })) {
      // results dropped; a failure throws
    }
  }

  /** One Map stream; up to WINDOW inputs ahead of the consumer; input order unless told. */
  private async *run(tuples: Iterable<unknown[]> | AsyncIterable<unknown[]>, opts: MapOptions): AsyncGenerator<unknown> {
    const WINDOW = 10_000
    const ordered = opts.orderOutputs ?? true
    const results = new Map<number, { ok: boolean; v: unknown }>()
    const arrivals: number[] = []
    let wake: (() => void) | undefined
    let failure: { e: unknown } | undefined
    const poke = () => {
      wake?.()
      wake = undefined
    }
    const stream = this.client().openMap(this.app, this.fn, this.method, this.params, {
      item: (index, ok, v) => {
        results.set(index, { ok, v })
        arrivals.push(index)
        poke()
      },
      end: poke,
      fail: (e) => {
        failure = { e }
        poke()
      },
    })
    let submitted = 0
    let taken = 0
    let exhausted = false
    // Plain iterables are read without an await per input, so one microtask's flush carries
    // up to WINDOW inputs in one push.
    const syncIt = Symbol.iterator in tuples ? (tuples as Iterable<unknown[]>)[Symbol.iterator]() : undefined
    const asyncIt = syncIt ? undefined : (tuples as AsyncIterable<unknown[]>)[Symbol.asyncIterator]()
    try {
      for (;;) {
        // Refill only once half the window is consumed: inputs then go out thousands per push,
        // not one per result taken (each push is a native call and a wake of the sender).
        if (!exhausted && submitted - taken <= WINDOW / 2) while (!exhausted && submitted - taken < WINDOW) {
          const r = syncIt ? syncIt.next() : await asyncIt!.next()
          if (r.done) {
            exhausted = true
            stream.close()
            break
          }
          stream.push(submitted++, checkAndCopyArgs(r.value, `${this.label}.map (input ${submitted - 1})`))
        }
        if (exhausted && taken === submitted) return
        const next = ordered ? (results.has(taken) ? taken : undefined) : arrivals.shift()
        if (next === undefined) {
          if (failure) throw failure.e
          await new Promise<void>((r) => (wake = r))
          continue
        }
        const s = results.get(next)!
        results.delete(next)
        taken++
        if (s.ok) yield s.v
        else if (opts.returnExceptions) yield s.v
        else throw s.v
      }
    } finally {
      if (!exhausted) stream.close()
      // Left before the last result (a break, a failure): the inputs still running or queued
      // are cancelled on the server rather than run for nobody.
      stream.finish(!(exhausted && taken === submitted))
    }
  }
}

/** A spawned call's result, however long it takes (GetResult waits up to 60 s per request). */
async function waitResult(client: Client, id: string): Promise<unknown> {
  for (;;) {
    const r = await client.getResult(id, 60)
    if (r !== PENDING) return r
  }
}

/**
 * `FunctionCall.fromId(id)` for a call this process does not hold: the call on the server
 * (`opts.server`, else BERTH_SERVER, else DEFAULT_SERVER). Asks only when get() or cancel() is
 * called, so a handle nobody reads holds nothing open; a get() that gives up (`timeout`) stops
 * asking.
 */
export function remoteFunctionCall(id: string, opts: { server?: string; token?: string } = {}): FunctionCall<unknown> {
  const client = clientAt(opts.server, opts.token)
  const named = (e: unknown) => {
    if (!(e instanceof Error && statusErrors.has(e))) return e
    const message = `FunctionCall.fromId('${id}'): not a call of this process, and the server at ${client.server} says: ${e.message}`
    return e instanceof InvalidError ? new InvalidError(message) : new BerthError(message)
  }
  const fetch = async (timeout: number | undefined): Promise<{ ok: true; value: unknown } | { ok: false; error: unknown } | undefined> => {
    try {
      const r = timeout === undefined ? await waitResult(client, id) : await client.getResult(id, Math.max(0, timeout))
      return r === PENDING ? undefined : { ok: true, value: r }
    } catch (e) {
      if (e instanceof Error && statusErrors.has(e)) throw named(e)
      return { ok: false, error: e }
    }
  }
  return new FunctionCall(id, fetch, () => client.cancel(id).catch((e) => Promise.reject(named(e))))
}

export const Function = {
  /** A handle on a function of a served app; connects at the first call. */
  fromName<T = (...args: any[]) => any>(app: string, name: string): RemoteFunctionHandle<T> {
    return new RemoteInvocable(app, name, '', EMPTY, `${app}/${name}`) as unknown as RemoteFunctionHandle<T>
  },
}

/** A handle on a class of a served app: each property is that method's handle. */
export function clsFromName<T>(app: string, name: string, params?: Record<string, unknown>): ClsHandle<T> {
  const encoded = params === undefined ? EMPTY : Buffer.from(encodeValue(params))
  const handles = new Map<string, RemoteInvocable>()
  return new Proxy({} as ClsHandle<T>, {
    get(_, prop) {
      if (typeof prop !== 'string' || prop === 'then') return undefined
      let h = handles.get(prop)
      if (!h) {
        h = new RemoteInvocable(app, name, prop, encoded, `${app}/${name}.${prop}`)
        handles.set(prop, h)
      }
      return h
    },
  })
}
