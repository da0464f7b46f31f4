// The control plane client: calls to an app served elsewhere (`berth serve`), or to this
// process's own control plane when its app runs with process containers. Calls go through the
// native gRPC client (crates/berth-node/src/client.rs); values cross as CBOR.
import { binding, type BindingClient } from '../native.ts'
import { decodeValue, encodeValue } from '../shared/cbor.ts'
import { ClientEvent } from '../shared/codes.ts'
import { BerthError, InvalidError, QueueFullError, errorFromData } from '../shared/errors.ts'
import { checkAndCopyArgs } from '../shared/serialize.ts'
import { callerInput } from '../run/context.ts'
import { GEN_WINDOW, type GenSource, type ItemSink } from './gen-stream.ts'
import { MAP_WINDOW } from './map.ts'
import { HeldOutcome, type CallSource, type MapSink, type MapStream, type Settled, type Spawned, type Transport } from './transport.ts'

// The kinds of the client's events (crates/berth-node/src/codes.rs), as module constants.
const {
  Value: K_VALUE,
  Error: K_ERROR,
  Status: K_STATUS,
  Text: K_TEXT,
  Pending: K_PENDING,
  MapEnd: K_MAP_END,
  StreamEnd: K_STREAM_END,
} = ClientEvent
const PENDING = Symbol('pending')
const utf8 = new TextDecoder()

/**
 * Where callers find `berth serve` when neither App.lookup nor BERTH_SERVER names a server:
 * its default --host and --grpc-port (README "CLI").
 */
export const DEFAULT_SERVER = 'http://127.0.0.1:7450'

/** Errors made of a gRPC status (not a user error carried back as data). */
const statusErrors = new WeakSet<Error>()

/** @internal gRPC status codes a caller can act on, with what to do (also the data socket's, src/data/socket.ts). */
export function statusError(server: string, code: number, message: string): Error {
  const where = server === DEFAULT_SERVER ? `${server} (the default when BERTH_SERVER is unset)` : server
  const hint: Record<number, string> = {
    3: '', // INVALID_ARGUMENT: the server's message says what
    5: '', // NOT_FOUND: the server's message names what exists
    8: " (the request is over the server's message size cap)",
    14:
      ` (no berth server answers at ${where}: start one with \`npx berth serve app.ts\`, or point ` +
      `BERTH_SERVER=http://host:port, or App.lookup(app, { server }), at the one you mean)`,
    16: " (pass the server's token: App.lookup(name, { server, token }) or BERTH_TOKEN)",
  }
  // RESOURCE_EXHAUSTED for a full queue (crates/berth-core/src/failure.rs, `queue_full`, which
  // names maxPendingInputs; the message size cap never does).
  const e =
    code === 8 && message.includes('maxPendingInputs')
      ? new QueueFullError(message)
      : code in hint
        ? new InvalidError(`${message}${hint[code]}`)
        : new BerthError(`berth server ${server}: gRPC status ${code}: ${message}`)
  statusErrors.add(e)
  return e
}

class Client {
  private readonly native: BindingClient
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: unknown) => void }>()
  private readonly maps = new Map<number, MapSink>()
  private readonly streams = new Map<number, ItemSink>()
  private next = 0
  private keepAlive: ReturnType<typeof setInterval> | undefined

  constructor(
    readonly server: string,
    token: string | undefined,
  ) {
    this.native = servedHere.get(server)?.client(() => this.pump()) ?? new (binding().BindingClient)(server, token, () => this.pump())
  }

  /** Opens a Map stream; push inputs (CBOR args, batched per microtask), then close. */
  openMap(app: string, fn: string, method: string, params: Buffer, handler: MapSink): MapStream {
    const id = ++this.next
    this.maps.set(id, handler)
    this.keepAlive ??= setInterval(() => {}, 1 << 30)
    // Made in an input, the call continues its trace (README "Tracing").
    this.native.mapOpen(id, app, fn, method, params, callerInput()?.traceparent)
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

  /**
   * Calls a generator: its items go to `sink` as the reader makes room. Credit goes back in
   * batches of half the window (one native call per few items, not per item).
   */
  openStream(app: string, fn: string, method: string, params: Buffer, args: unknown[], sink: ItemSink): GenSource {
    const bytes = Buffer.from(encodeValue(args))
    const id = ++this.next
    this.streams.set(id, sink)
    this.keepAlive ??= setInterval(() => {}, 1 << 30)
    this.native.streamOpen(id, app, fn, method, params, bytes, GEN_WINDOW, callerInput()?.traceparent)
    let owed = 0
    return {
      more: (n) => {
        owed += n
        if (owed < GEN_WINDOW / 2 || !this.streams.has(id)) return
        this.native.streamMore(id, owed)
        owed = 0
      },
      close: () => {
        if (!this.streams.delete(id)) return
        this.native.streamClose(id, true)
        this.idle()
      },
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

  /** Calls the function (its result) or, with `spawn`, spawns it (its function call id). */
  call(spawn: boolean, app: string, fn: string, method: string, params: Buffer, args: unknown[]): Promise<unknown> {
    const bytes = Buffer.from(encodeValue(args))
    const traceparent = callerInput()?.traceparent
    return this.request((id) => this.native.call(id, spawn, app, fn, method, params, bytes, traceparent))
  }

  getResult(call: string, timeout: number): Promise<unknown> {
    return this.request((id) => this.native.getResult(id, call, timeout))
  }

  cancel(call: string): Promise<unknown> {
    return this.request((id) => this.native.cancel(id, call))
  }

  /** One operation on a named dict (proto/berth/v1/data.proto): `[found, len, value, entries]`. */
  dict(c: DictCall): Promise<unknown> {
    const buf = (b: Uint8Array | undefined) => (b === undefined ? undefined : Buffer.from(b.buffer, b.byteOffset, b.byteLength))
    return this.request((id) =>
      this.native.dict(
        id,
        c.name,
        c.create,
        c.op,
        buf(c.key),
        buf(c.value),
        c.entries?.map((e) => buf(e)!),
        c.skipIfExists === true,
      ),
    )
  }

  /** One operation on a named queue (proto/berth/v1/data.proto): `[items, len, found]`. */
  queue(c: QueueCall): Promise<unknown> {
    const values = (c.values ?? []).map((b) => Buffer.from(b.buffer, b.byteOffset, b.byteLength))
    return this.request((id) =>
      this.native.queue(
        id,
        c.name,
        c.create,
        c.op,
        c.partition ?? '',
        values,
        c.max ?? 1,
        c.block === true,
        c.timeout ?? 0,
        c.allPartitions === true,
      ),
    )
  }

  private settle(id: number) {
    const p = this.pending.get(id)
    this.pending.delete(id)
    this.idle()
    return p
  }

  private idle(): void {
    if (this.pending.size === 0 && this.maps.size === 0 && this.streams.size === 0 && this.keepAlive !== undefined) {
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

  private mapEvent(id: number, h: MapSink, kind: number, data: Uint8Array, index: number): void {
    if (kind === K_VALUE) h.item(index, true, decodeValue(data))
    else if (kind === K_ERROR) h.item(index, false, this.decodeError(kind, data))
    else {
      this.maps.delete(id)
      this.idle()
      if (kind === K_MAP_END) h.end()
      else h.fail(this.decodeError(kind, data))
    }
  }

  private streamEvent(id: number, sink: ItemSink, kind: number, data: Uint8Array): void {
    if (kind === K_VALUE) {
      sink.item(decodeValue(data))
      return
    }
    this.streams.delete(id)
    this.native.streamClose(id, false)
    this.idle()
    if (kind === K_STREAM_END) sink.end()
    else sink.fail(this.decodeError(kind, data))
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
      const stream = this.streams.get(id)
      if (stream) {
        try {
          this.streamEvent(id, stream, kind, data)
        } catch (e) {
          this.streams.delete(id)
          this.native.streamClose(id, true)
          this.idle()
          stream.fail(e)
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

/** @internal One operation on a named dict (proto/berth/v1/data.proto `DictRequest`): keys and values encoded. */
export interface DictCall {
  name: string
  create: boolean
  op: number
  key?: Uint8Array
  value?: Uint8Array
  /** Keys and values, alternating (`update`). */
  entries?: Uint8Array[]
  skipIfExists?: boolean
}

/** @internal One operation on a named queue (proto/berth/v1/data.proto `QueueRequest`): items encoded. */
export interface QueueCall {
  name: string
  create: boolean
  op: number
  partition?: string
  values?: Uint8Array[]
  max?: number
  block?: boolean
  /** Seconds; 0 with `block`: no limit. */
  timeout?: number
  allPartitions?: boolean
}

/** @internal What src/data/dict.ts and src/data/queue.ts call. */
export interface DataClient {
  dict(c: DictCall): Promise<unknown>
  queue(c: QueueCall): Promise<unknown>
}

/**
 * @internal The client a named dict's operations go through: `where`'s server, else the
 * control plane of this process's app `app` (process containers), else BERTH_SERVER's.
 */
export function dataClient(where: { server?: string; token?: string; app?: string }): DataClient {
  return where.app !== undefined ? clientFor(where.app) : clientAt(where.server, where.token)
}

/** @internal `server` is a control plane of this process (app.run with process containers). */
export function serveHere(server: string, plane: { client(doorbell: () => void): BindingClient | null }): void {
  servedHere.set(server, plane)
  for (const [key, c] of clients) if (c.server === server) clients.delete(key)
}

/** Where `Function.fromName` / `Cls.fromName` find the app named `name`. */
export function lookupApp(name: string, opts: { server: string; token?: string }): { name: string; server: string } {
  if (typeof opts?.server !== 'string')
    throw new InvalidError(`App.lookup('${name}', { server }): pass the server's URL, e.g. http://127.0.0.1:7450`)
  lookedUp.set(name, { server: opts.server, token: opts.token })
  return { name, server: opts.server }
}

/** The calls of one function or method, over the network. Connects at the first call. */
export class RemoteTransport implements Transport {
  readonly syncInputs = true
  // Refill only once half the window is consumed: inputs then go out thousands per push, not
  // one per result taken (each push is a native call and a wake of the sender).
  readonly mapLowWater = MAP_WINDOW / 2

  constructor(
    private readonly app: string,
    private readonly fn: string,
    private readonly method: string,
    private readonly params: Buffer,
    private readonly label: string,
    /** The server to call; else the app's App.lookup, BERTH_SERVER or the default. */
    private readonly where?: { server: string; token?: string },
  ) {}

  private client(): Client {
    return this.where === undefined ? clientFor(this.app) : clientAt(this.where.server, this.where.token)
  }

  async remote(args: unknown[]): Promise<unknown> {
    checkAndCopyArgs(args, `${this.label}.remote`)
    return this.client().call(false, this.app, this.fn, this.method, this.params, args)
  }

  async spawn(args: unknown[]): Promise<Spawned> {
    checkAndCopyArgs(args, `${this.label}.spawn`)
    const client = this.client()
    const id = (await client.call(true, this.app, this.fn, this.method, this.params, args)) as string
    return { id, source: new HeldOutcome(waitResult(client, id), () => client.cancel(id)) }
  }

  remoteGen(args: unknown[], sink: ItemSink): GenSource {
    checkAndCopyArgs(args, `${this.label}.remoteGen`)
    return this.client().openStream(this.app, this.fn, this.method, this.params, args, sink)
  }

  /** One Map stream: inputs in order, results as they come. */
  openMap(_what: string, sink: MapSink): MapStream {
    const stream = this.client().openMap(this.app, this.fn, this.method, this.params, sink)
    return {
      push: (i, tuple) => stream.push(i, checkAndCopyArgs(tuple, `${this.label}.map (input ${i})`)),
      close: stream.close,
      finish: stream.finish,
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
export function serverCallSource(id: string, opts: { server?: string; token?: string } = {}): CallSource {
  const client = clientAt(opts.server, opts.token)
  const named = (e: unknown) => {
    if (!(e instanceof Error && statusErrors.has(e))) return e
    const message = `FunctionCall.fromId('${id}'): not a call of this process, and the server at ${client.server} says: ${e.message}`
    return e instanceof InvalidError ? new InvalidError(message) : new BerthError(message)
  }
  const fetch = async (timeout: number | undefined): Promise<Settled | undefined> => {
    try {
      const r = timeout === undefined ? await waitResult(client, id) : await client.getResult(id, Math.max(0, timeout))
      return r === PENDING ? undefined : { ok: true, value: r }
    } catch (e) {
      if (e instanceof Error && statusErrors.has(e)) throw named(e)
      return { ok: false, error: e }
    }
  }
  let fetched: Settled | undefined
  return {
    get settled() {
      return fetched !== undefined
    },
    // Asked again at each get() until the server has the result; kept once it has.
    outcome: async (timeout) => (fetched ??= await fetch(timeout)),
    cancel: () => client.cancel(id).catch((e) => Promise.reject(named(e))),
  }
}
