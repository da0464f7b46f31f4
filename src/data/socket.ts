// The data socket's client (README "Dict", "Queue"; crates/berth-server/src/datasock.rs says the
// wire): a container process's dict and queue operations go from its event loop straight to
// its control plane over the abstract Unix socket named in BERTH_DATA_SOCKET, as a Redis client
// talks to Redis: one write and one read per operation, requests pipelined on one connection,
// answers matched by id. Requests are proto/berth/v1/data.proto's DictRequest and QueueRequest
// (encoded here); answers are the CBOR values the binding's gRPC client gives (the same
// decoding, the same statuses as errors).
//
// A queue get takes its items on a lease, acked as its answer is read: on the next queue
// request, or alone at the end of the event loop's turn. Should the socket not connect at all,
// what was asked goes over gRPC instead (nothing was sent), and so does all that follows.
import { type Socket, connect } from 'node:net'
import { type DataClient, type DictCall, type QueueCall, statusError } from '../call/remote.ts'
import { decodeValue } from '../shared/cbor.ts'

const HEAD = 9
const KIND_HELLO = 0
const KIND_DICT = 1
const KIND_QUEUE = 2
const ANSWER_OK = 0
/** proto/berth/v1/data.proto `QueueOp`. */
const QUEUE_GET = 2
const QUEUE_ACK = 6

const utf8 = new TextEncoder()
const text = new TextDecoder()

/** Names and partitions, encoded once: the same few come again and again. */
const names = new Map<string, Uint8Array>()
function encoded(s: string): Uint8Array {
  let b = names.get(s)
  if (b === undefined) {
    b = utf8.encode(s)
    if (names.size < 1024) names.set(s, b)
  }
  return b
}

/** A protobuf message, written into a buffer sized for it. */
class Proto {
  private parts: (number | Uint8Array)[] = []
  /** Bytes so far. */
  size = 0

  private varint(n: number): void {
    this.parts.push(n)
    this.size += varintSize(n)
  }
  uint(field: number, n: number | undefined): this {
    if (n) {
      this.varint(field << 3)
      this.varint(n)
    }
    return this
  }
  bool(field: number, b: boolean | undefined): this {
    return this.uint(field, b ? 1 : 0)
  }
  /** `b` unless empty; `always`: even so (an item of a repeated field). */
  bytes(field: number, b: Uint8Array | undefined, always = false): this {
    if (b !== undefined && (always || b.length > 0)) {
      this.varint((field << 3) | 2)
      this.varint(b.length)
      this.parts.push(b)
      this.size += b.length
    }
    return this
  }
  string(field: number, s: string | undefined): this {
    return s ? this.bytes(field, encoded(s)) : this
  }
  message(field: number, m: Proto): this {
    this.varint((field << 3) | 2)
    this.varint(m.size)
    this.parts.push(...m.parts)
    this.size += m.size
    return this
  }
  double(field: number, x: number | undefined): this {
    if (x) {
      this.varint((field << 3) | 1)
      const b = new Uint8Array(8)
      new DataView(b.buffer).setFloat64(0, x, true)
      this.parts.push(b)
      this.size += 8
    }
    return this
  }
  packed(field: number, ns: number[]): this {
    if (ns.length === 0) return this
    const m = new Proto()
    for (const n of ns) m.varint(n)
    return this.message(field, m)
  }
  /** The frame of request `id` of `kind` carrying this message. */
  frame(id: number, kind: number): Buffer {
    const out = frameOf(id, kind, this.size)
    let at = HEAD
    for (const p of this.parts) {
      if (typeof p === 'number') at = writeVarint(out, at, p)
      else {
        out.set(p, at)
        at += p.length
      }
    }
    return out
  }
}

/** A frame of request `id` of `kind` with room for a body of `size` bytes after its head. */
function frameOf(id: number, kind: number, size: number): Buffer {
  const out = Buffer.allocUnsafe(HEAD + size)
  out.writeUInt32LE(size, 0)
  out.writeUInt32LE(id, 4)
  out[8] = kind
  return out
}

function varintSize(n: number): number {
  let size = 1
  while (n >= 0x80) {
    n = Math.floor(n / 128)
    size++
  }
  return size
}

function writeVarint(out: Buffer, at: number, n: number): number {
  while (n >= 0x80) {
    out[at++] = (n % 128) | 0x80
    n = Math.floor(n / 128)
  }
  out[at++] = n
  return at
}

function dictRequest(c: DictCall): Proto {
  const m = new Proto().string(1, c.name).bool(2, c.create).uint(3, c.op).bytes(4, c.key).bytes(5, c.value)
  const e = c.entries ?? []
  for (let i = 0; i + 1 < e.length; i += 2) m.message(6, new Proto().bytes(1, e[i]).bytes(2, e[i + 1]))
  return m.bool(7, c.skipIfExists)
}

function queueRequest(c: QueueCall, acks: number[]): Proto {
  const m = new Proto().string(1, c.name).bool(2, c.create).uint(3, c.op).string(4, c.partition)
  for (const v of c.values ?? []) m.bytes(5, v, true)
  return m
    .uint(6, c.max ?? 1)
    .bool(7, c.block)
    .double(8, c.timeout)
    .bool(9, c.allPartitions)
    .bool(10, c.op === QUEUE_GET)
    .packed(11, acks)
}

interface Waiting {
  resolve: (v: unknown) => void
  reject: (e: unknown) => void
  /** What to ask over gRPC instead, should the socket not connect. */
  retry: (via: DataClient) => Promise<unknown>
  /** A queue get: its answer's lease is acked. */
  get: boolean
}

class DataSocket implements DataClient {
  private socket: Socket | undefined
  private connected = false
  /** The socket did not connect: everything goes over gRPC. */
  private broken = false
  private readonly waiting = new Map<number, Waiting>()
  private next = 0
  private out: Buffer[] = []
  private acks: number[] = []
  private ackScheduled = false
  private rest: Buffer | undefined

  constructor(
    private readonly name: string,
    private readonly container: number,
    private readonly token: string,
    /** The control plane's URL, for errors. */
    private readonly server: string,
    private readonly fallback: DataClient,
  ) {}

  dict(c: DictCall): Promise<unknown> {
    if (this.broken) return this.fallback.dict(c)
    return this.ask(KIND_DICT, dictRequest(c), (via) => via.dict(c), false)
  }

  queue(c: QueueCall): Promise<unknown> {
    if (this.broken) return this.fallback.queue(c)
    const acks = this.acks
    this.acks = []
    return this.ask(KIND_QUEUE, queueRequest(c, acks), (via) => via.queue(c), c.op === QUEUE_GET)
  }

  private ask(kind: number, m: Proto, retry: Waiting['retry'], get: boolean): Promise<unknown> {
    const socket = this.open()
    const id = this.nextId()
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject, retry, get })
      if (this.waiting.size === 1) socket.ref()
      this.write(socket, m.frame(id, kind))
    })
  }

  /** A request's id: 1 up, never 0 (the hello's). */
  private nextId(): number {
    this.next = (this.next % 0xffff_fffe) + 1
    return this.next
  }

  /** Requests asked in one run of code go out in one write, once it is done. */
  private write(socket: Socket, frame: Buffer): void {
    if (this.out.length === 0) {
      queueMicrotask(() => {
        const out = this.out
        this.out = []
        socket.write(out.length === 1 ? out[0] : Buffer.concat(out))
      })
    }
    this.out.push(frame)
  }

  private open(): Socket {
    if (this.socket !== undefined) return this.socket
    // Bound by the whole of sun_path, the name padded with NULs (datasock.rs `listen`).
    const socket = connect({ path: `\0${this.name}` })
    this.socket = socket
    this.connected = false
    socket.on('connect', () => {
      this.connected = true
    })
    socket.on('data', (chunk: Buffer) => this.read(chunk))
    socket.on('error', (e) => this.lost(socket, e))
    socket.on('close', () => this.lost(socket, undefined))
    const hello = frameOf(0, KIND_HELLO, 4 + Buffer.byteLength(this.token))
    hello.writeUInt32LE(this.container, HEAD)
    hello.write(this.token, HEAD + 4)
    this.write(socket, hello)
    socket.unref()
    return socket
  }

  private read(chunk: Buffer): void {
    const buf = this.rest === undefined ? chunk : Buffer.concat([this.rest, chunk])
    this.rest = undefined
    let at = 0
    while (buf.length - at >= HEAD) {
      const len = buf.readUInt32LE(at)
      if (buf.length - at < HEAD + len) break
      const id = buf.readUInt32LE(at + 4)
      const kind = buf[at + 8]
      const body = buf.subarray(at + HEAD, at + HEAD + len)
      at += HEAD + len
      this.answer(id, kind, body)
    }
    if (at < buf.length) this.rest = buf.subarray(at)
  }

  private answer(id: number, kind: number, body: Buffer): void {
    if (id === 0) {
      // The hello's: only a refusal says anything, and the connection then closes.
      if (kind !== ANSWER_OK) this.fail(this.error(body))
      return
    }
    const w = this.waiting.get(id)
    if (w === undefined) return
    this.waiting.delete(id)
    if (this.waiting.size === 0) this.socket?.unref()
    if (kind !== ANSWER_OK) {
      w.reject(this.error(body))
      return
    }
    let value: unknown
    try {
      value = decodeValue(body)
    } catch (e) {
      w.reject(e)
      return
    }
    if (w.get) {
      const lease = (value as unknown[])[3]
      if (typeof lease === 'number' && lease !== 0) this.ack(lease)
    }
    w.resolve(value)
  }

  /** Acks `lease`: on the next queue request, else alone once this turn's code has run. */
  private ack(lease: number): void {
    this.acks.push(lease)
    if (this.ackScheduled) return
    this.ackScheduled = true
    setImmediate(() => {
      this.ackScheduled = false
      if (this.acks.length === 0 || this.socket === undefined) return
      const acks = this.acks
      this.acks = []
      const m = new Proto().uint(3, QUEUE_ACK).packed(11, acks)
      // Answered like any request; nothing waits for it.
      this.write(this.socket, m.frame(this.nextId(), KIND_QUEUE))
    })
  }

  private error(body: Buffer): Error {
    return statusError(this.server, body[0], text.decode(body.subarray(1)))
  }

  private lost(socket: Socket, e: Error | undefined): void {
    if (this.socket !== socket) return
    this.socket = undefined
    this.rest = undefined
    if (!this.connected) {
      // Nothing reached the control plane: ask it all over gRPC, from now on too.
      this.broken = true
      for (const w of this.takeWaiting()) w.retry(this.fallback).then(w.resolve, w.reject)
      return
    }
    this.fail(statusError(this.server, 14, `the data socket closed${e ? `: ${e.message}` : ''}`))
  }

  private fail(e: Error): void {
    for (const w of this.takeWaiting()) w.reject(e)
    this.socket?.destroy()
  }

  /** Every request still waiting, no longer waited for here. */
  private takeWaiting(): Waiting[] {
    const waiting = [...this.waiting.values()]
    this.waiting.clear()
    return waiting
  }
}

let here: DataSocket | undefined

/**
 * @internal The data socket of this container process's control plane (BERTH_DATA_SOCKET),
 * with `fallback` for when it cannot be reached; undefined where there is none.
 */
export function dataSocket(fallback: DataClient): DataClient | undefined {
  const { BERTH_DATA_SOCKET: name, BERTH_CONTAINER_ID: id, BERTH_CONTAINER_TOKEN: token, BERTH_ENDPOINT: server } = process.env
  if (!name || !id || token === undefined || !server) return undefined
  here ??= new DataSocket(name, Number(id), token, server, fallback)
  return here
}
