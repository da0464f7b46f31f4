// A web endpoint's request and response in a container, and the web apps a container runs
// (README "API", web endpoints and web apps). The control plane sends what a `Request` needs
// only to members that take one (building one costs microseconds), and answers the HTTP request
// with a returned `Response` as it streams: its head, then its body's chunks as they come
// (crates/berth-server/src/web.rs); a `.remote()` caller gets it whole. A web app with a server
// of its own (`@webServer`, `@nodeApp`) reports the server's port, and the control plane sends
// its requests there itself (crates/berth-server/src/proxy.rs): only a `@fetchApp` answers
// requests here. When that server is a Node HTTP server of this process, it also gets the
// connections of an abstract Unix socket (`sideDoor`), which the control plane uses instead of
// the port: a request through it costs the kernel less than one over TCP on loopback.
import { randomBytes } from 'node:crypto'
import { createServer, type RequestListener, Server } from 'node:http'
import { connect, createServer as createNetServer, Server as NetServer, type Socket } from 'node:net'

import { WireResponse } from '../shared/cbor.ts'
import { InvalidError } from '../shared/errors.ts'
import { cheapRequest, type RequestMeta, type SignalSource } from './light-request.ts'
import { lightParts, nodeResponse } from './light-response.ts'
import type { PoolDef, WebSpec } from './pool.ts'

function isMeta(meta: unknown): meta is RequestMeta {
  return typeof meta === 'object' && meta !== null && 'url' in meta
}

/** The Request of a request's `meta`; its signal is `signal`'s, read only if something reads it. */
export function toRequest(meta: unknown, signal: SignalSource): unknown {
  if (!isMeta(meta)) return meta
  return cheapRequest(meta, signal)
}

export async function toWire(res: Response): Promise<WireResponse> {
  return whole(res) ?? new WireResponse(res.status, [...res.headers], new Uint8Array(await res.arrayBuffer()))
}

/**
 * The HTTP answer of a Response: whole (a WireResponse with its body: the input's result, one
 * write) when its body is known whole, as most JSON and text answers are (`whole`); else its
 * head and then its body's chunks as they come (`streamed`).
 */
export function answer(res: Response, signal: SignalSource): WireResponse | AsyncGenerator<unknown> {
  return whole(res) ?? streamed(res, signal.signal)
}

/** A Response as one WireResponse, if its body is whole and unread: a light Response's, or none, or the string or bytes a Response was made with. */
function whole(res: Response): WireResponse | undefined {
  const light = lightParts(res)
  if (light !== undefined) {
    const b = light.body
    return new WireResponse(
      light.status,
      [...light.headers],
      b === null ? new Uint8Array(0) : typeof b === 'string' ? encoder.encode(b) : b,
    )
  }
  const body = res.body === null ? new Uint8Array(0) : wholeBody(res)
  return body === undefined ? undefined : new WireResponse(res.status, [...res.headers], body)
}

// Node's Response keeps the body it was made with (undici: a state slot whose body has the
// stream and its `source`, the string or bytes given): reading that skips the stream, which
// costs more than the rest of a small answer. Found and checked on first use (not at load: the
// first Response loads undici); without it, bodies stream.
let STATE: symbol | undefined | null = null
function stateSlot(): symbol | undefined {
  if (STATE !== null) return STATE
  try {
    const probe = new (nodeResponse())('ok')
    const slot = Object.getOwnPropertySymbols(probe).find((k) => k.description === 'state')
    const body = slot === undefined ? undefined : (probe as any)[slot]?.body
    STATE = body?.source === 'ok' && body.stream === probe.body ? slot : undefined
  } catch {
    STATE = undefined
  }
  return STATE
}
const encoder = new TextEncoder()

/** The body a Response was made with, if it was whole (a string, bytes) and is unread; else undefined. */
function wholeBody(res: Response): Uint8Array | undefined {
  const slot = stateSlot()
  if (slot === undefined || res.bodyUsed) return undefined
  const body = (res as any)[slot]?.body
  if (body == null || body.stream?.locked !== false) return undefined
  const source: unknown = body.source
  if (typeof source === 'string') return encoder.encode(source)
  if (source instanceof Uint8Array && source.byteLength === body.length) return source
  return undefined
}

/**
 * A web app a container runs, and how it stops: a `@fetchApp` answers each request here
 * (`respond`); a server (a `@webServer`'s, or the one made for a `@nodeApp`) listens on
 * 127.0.0.1:`port`, where the control plane sends its requests.
 */
type WebApp =
  | { respond(meta: RequestMeta, signal: SignalSource): Promise<WireResponse | AsyncGenerator<unknown>>; close(): Promise<void> }
  | { port: number; socket?: string; close(): Promise<void> }

/**
 * A web app member whose server listens on 127.0.0.1:`port` (`method`: its index in the method
 * table), and on the abstract Unix socket `socket` (its name without the leading NUL) if any.
 */
export interface AppServer {
  method: number
  port: number
  socket?: string
}

const running = new WeakMap<object, Map<string, WebApp>>()

/**
 * Starts the web apps of a container's instance, after its @enter hooks (`@fetchApp`,
 * `@webServer`, `@nodeApp` members): each runs once per container. A @webServer that does not
 * accept connections within its startupTimeout fails the container's start, as an @enter that
 * throws does. Returns the servers started, for the control plane to send their requests to.
 */
export async function startWebApps(def: PoolDef, inst: any): Promise<AppServer[]> {
  const servers: AppServer[] = []
  for (const [method, m] of def.methods.entries()) {
    const web = m.web
    if (web?.app === undefined) continue
    const where = `@${web.app}() ${def.name}.${m.name}`
    let app: WebApp
    if (web.app === 'fetchApp') app = await fetchApp(where, await inst[m.name]())
    else if (web.app === 'nodeApp') app = await nodeApp(where, await inst[m.name]())
    else app = await webServer(where, web, (port) => inst[m.name](port))
    let apps = running.get(inst)
    if (apps === undefined) running.set(inst, (apps = new Map()))
    apps.set(m.name, app)
    if ('port' in app) servers.push({ method, port: app.port, socket: app.socket })
  }
  return servers
}

/** Stops what startWebApps started (the servers berth made; a @webServer's own is the user's). */
export async function stopWebApps(inst: any): Promise<void> {
  const apps = running.get(inst)
  running.delete(inst)
  for (const app of apps?.values() ?? []) await app.close()
}

/** One request to web app member `name` of `inst`: its answer, whole or streamed (`answer`). */
export function respond(inst: any, name: string, meta: unknown, signal: SignalSource): Promise<WireResponse | AsyncGenerator<unknown>> {
  const app = running.get(inst)?.get(name)
  if (app === undefined) throw new InvalidError(`the web app ${name} is not running in this container`)
  if (!('respond' in app)) {
    throw new InvalidError(`${name} is a server: the control plane sends its requests to its port, not as inputs`)
  }
  if (!isMeta(meta)) throw new InvalidError(`${name} is a web app: it answers HTTP requests, not calls`)
  return app.respond(meta, signal)
}

function fetchApp(where: string, app: unknown): WebApp {
  const f = (app as { fetch?: unknown } | null)?.fetch
  if (typeof f !== 'function') {
    throw new InvalidError(
      `${where} returned ${describeValue(app)}: return an object with fetch(request) => Response, e.g. a Hono app (new Hono()).`,
    )
  }
  const fetch = f.bind(app) as (r: Request) => Response | Promise<Response>
  return {
    async respond(meta, signal) {
      const res = await fetch(cheapRequest(meta, signal))
      if (!(res instanceof Response)) {
        throw new InvalidError(`${where}: its fetch(request) returned ${describeValue(res)}, not a Response`)
      }
      return answer(res, signal)
    },
    async close() {},
  }
}

/**
 * A Response as the items of its HTTP answer (crates/berth-server/src/web.rs `web_answer`):
 * its head (a null body), then each chunk of its body as it comes.
 */
export async function* streamed(res: Response, signal: AbortSignal): AsyncGenerator<unknown> {
  yield new WireResponse(res.status, [...res.headers], null)
  if (res.body === null) return
  const reader = res.body.getReader()
  // A client that goes away aborts the input: cancelling the body ends a stream that waits for
  // its next chunk (an SSE route between events) at once, not when that chunk comes.
  const cancel = () => void reader.cancel(signal.reason).catch(() => {})
  signal.addEventListener('abort', cancel, { once: true })
  try {
    for (;;) {
      const { done, value } = await reader.read()
      if (done) return
      yield value
    }
  } finally {
    signal.removeEventListener('abort', cancel)
    cancel()
  }
}

async function nodeApp(where: string, listener: unknown): Promise<WebApp> {
  if (typeof listener !== 'function') {
    throw new InvalidError(
      `${where} returned ${describeValue(listener)}: return a (req, res) request listener, e.g. an Express app (express()) or Koa's app.callback().`,
    )
  }
  const server = createServer(listener as RequestListener)
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => resolve())
  })
  const port = (server.address() as { port: number }).port
  const side = await sideDoor(server)
  return {
    port,
    socket: side?.name,
    close: async () => {
      await side?.close()
      await closeServer(server)
    },
  }
}

/**
 * An abstract Unix socket (Linux) whose connections go to `server` as its own do: Node's HTTP
 * server takes any socket it is given (`'connection'`). Its sockets say they come from
 * 127.0.0.1, as the control plane's TCP connections did, for code that reads the address.
 * None elsewhere, or when it cannot listen: the control plane then uses the port.
 */
async function sideDoor(server: Server): Promise<{ name: string; close(): Promise<void> } | undefined> {
  if (process.platform !== 'linux') return undefined
  const name = `berth-${process.pid}-${randomBytes(6).toString('hex')}`
  const side = createNetServer((socket: Socket) => {
    Object.defineProperties(socket, {
      remoteAddress: { value: '127.0.0.1' },
      remoteFamily: { value: 'IPv4' },
      remotePort: { value: 0 },
    })
    server.emit('connection', socket)
  })
  const listening = await new Promise<boolean>((resolve) => {
    side.once('error', () => resolve(false))
    side.listen(`\0${name}`, () => resolve(true))
  })
  if (!listening) return undefined
  // Not what keeps the container's process alive: its server and its link do.
  side.unref()
  return { name, close: () => new Promise<void>((resolve) => side.close(() => resolve())) }
}

/** How long a @webServer has to accept connections, unless it says (Modal's default). */
export const WEB_SERVER_STARTUP_MS = 5000

async function webServer(where: string, web: WebSpec, start: (port: number) => unknown): Promise<WebApp> {
  const port = web.port ?? (await freePort())
  process.env.PORT = String(port)
  // The servers this process starts listening meanwhile: if one is a Node HTTP server on
  // `port`, it gets a side door.
  const listening = new Set<NetServer>()
  const listen = NetServer.prototype.listen
  NetServer.prototype.listen = function (this: NetServer, ...args: unknown[]) {
    listening.add(this)
    return (listen as (...a: unknown[]) => NetServer).apply(this, args)
  } as typeof listen
  try {
    await start(port)
    const timeoutMs = web.startupTimeoutMs ?? WEB_SERVER_STARTUP_MS
    const deadline = Date.now() + timeoutMs
    while (!(await accepts(port))) {
      if (Date.now() >= deadline) {
        const message =
          `${where}: nothing accepted connections on 127.0.0.1:${port} within startupTimeout (${timeoutMs / 1000} s). ` +
          `Start the server on the port berth passes (the member's argument, also process.env.PORT), e.g. app.listen({ port, host: '127.0.0.1' }), ` +
          `or raise @webServer({ startupTimeout }) if it takes longer to start.`
        console.error(`berth: ${message}`)
        throw new InvalidError(message)
      }
      await new Promise((r) => setTimeout(r, 20))
    }
  } finally {
    NetServer.prototype.listen = listen
  }
  // Plain HTTP only (https.Server and http2's are not http.Server): the control plane speaks
  // HTTP/1.1 on the side door.
  const server = [...listening].find((s) => s instanceof Server && s.listening && (s.address() as { port?: number } | null)?.port === port)
  const side = server === undefined ? undefined : await sideDoor(server as Server)
  return { port, socket: side?.name, close: async () => side?.close() }
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ port, host: '127.0.0.1' })
    s.once('connect', () => {
      s.destroy()
      resolve(true)
    })
    s.once('error', () => resolve(false))
  })
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer()
    s.once('error', reject)
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port
      s.close(() => resolve(port))
    })
  })
}

function closeServer(server: Server): Promise<void> {
  server.closeAllConnections()
  return new Promise((resolve) => server.close(() => resolve()))
}

function describeValue(v: unknown): string {
  if (v === null) return 'null'
  if (v === undefined) return 'undefined'
  if (typeof v === 'object') return `an object without fetch (${Object.keys(v).slice(0, 5).join(', ') || 'no keys'})`
  return typeof v
}
