// The `Request` a web endpoint or web app gets (README "API", web endpoints and web apps), made
// cheaply: Node's own Request costs tens of microseconds for a body (a web stream) and a signal
// (one it follows), more than the rest of a no-op request. This one answers `method`, `url`,
// `headers`, `signal` and the body readers (`text()`, `json()`, `arrayBuffer()`, `bytes()`) from
// what the control plane sent, and builds the real Request only when something else needs it:
// every internal slot of Node's Request reads the real one's, so `new Request(req)`,
// `fetch(req)`, `req.body`, `req.clone()` and every other member see the whole request. Where
// Node's Request keeps its state otherwise (checked once, below), requests are built whole.

/** What crates/berth-server/src/web.rs `request_meta` sends. */
export interface RequestMeta {
  method: string
  url: string
  headers: [string, string][]
  body: Uint8Array | null
}

const META = Symbol('berth.meta')
const REAL = Symbol('berth.request')
const SIGNAL = Symbol('berth.signal')
const HEADERS = Symbol('berth.headers')
const USED = Symbol('berth.bodyUsed')

interface Light {
  [META]: RequestMeta
  [REAL]: Request | undefined
  /** The input's signal, or its input whose signal it is (made only when read). */
  [SIGNAL]: AbortSignal | SignalSource | undefined
  [HEADERS]: Headers | undefined
  [USED]: boolean
}

/** What has an input's signal, made when it is first read (an input's context). */
export interface SignalSource {
  readonly signal: AbortSignal
}

/** The Request itself, with its body and signal. */
export function fullRequest(meta: RequestMeta, from?: AbortSignal | SignalSource, headers?: Headers): Request {
  const signal = from === undefined || from instanceof AbortSignal ? from : from.signal
  const body = meta.method === 'GET' || meta.method === 'HEAD' || meta.body === null || meta.body.length === 0 ? undefined : meta.body
  return new Request(meta.url, { method: meta.method, headers: headers ?? meta.headers, body, signal })
}

function real(self: Light): Request {
  let r = self[REAL]
  if (r === undefined) {
    r = fullRequest(self[META], self[SIGNAL], self[HEADERS])
    // A body read here is read there too (bodyUsed, a second read fails as it would).
    if (self[USED]) void r.arrayBuffer().catch(() => {})
    self[REAL] = r
  }
  return r
}

const decoder = new TextDecoder()

/** A body reader: from the bytes sent, once, unless the real Request exists. */
function reader<T>(name: 'text' | 'json' | 'arrayBuffer' | 'bytes', from: (b: Uint8Array) => T) {
  return function (this: Light): Promise<unknown> {
    const r = this[REAL]
    if (r !== undefined) return (r as any)[name]()
    if (this[USED]) return Promise.reject(new TypeError('Body is unusable: Body has already been read'))
    this[USED] = true
    const body = this[META].body
    try {
      return Promise.resolve(from(body === null || this[META].method === 'GET' || this[META].method === 'HEAD' ? new Uint8Array(0) : body))
    } catch (e) {
      return Promise.reject(e)
    }
  }
}

/**
 * The light Request's prototype, made on first use (not at load: the first Request loads
 * undici, tens of milliseconds every process importing berth would pay), and whether this
 * Node's Request reads its state as the light one expects (checked then, once).
 */
let proto: object | undefined
let works = false
function prepare(): object {
  if (proto !== undefined) return proto
  const p: object = Object.create(Request.prototype, {
    method: {
      get(this: Light) {
        return this[META].method
      },
    },
    url: {
      get(this: Light) {
        return this[META].url
      },
    },
    headers: {
      get(this: Light) {
        if (this[HEADERS] === undefined) this[HEADERS] = this[REAL]?.headers ?? new Headers(this[META].headers)
        return this[HEADERS]
      },
    },
    signal: {
      get(this: Light) {
        if (this[REAL] !== undefined) return this[REAL].signal
        const s = this[SIGNAL]
        if (s === undefined) return real(this).signal
        return s instanceof AbortSignal ? s : (this[SIGNAL] = s.signal)
      },
    },
    bodyUsed: {
      get(this: Light) {
        return this[REAL]?.bodyUsed ?? this[USED]
      },
    },
    text: { value: reader('text', (b) => decoder.decode(b)) },
    json: { value: reader('json', (b) => JSON.parse(decoder.decode(b))) },
    arrayBuffer: { value: reader('arrayBuffer', (b) => b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength)) },
    bytes: { value: reader('bytes', (b) => new Uint8Array(b)) },
    [Symbol.for('nodejs.util.inspect.custom')]: {
      value(this: Light, _depth: number, options: object, inspect: (v: unknown, o: object) => string) {
        return inspect(real(this), options)
      },
    },
  })
  // Node's Request reads its state from symbol-keyed slots (undici): each reads the real one's.
  for (const slot of Object.getOwnPropertySymbols(new Request('http://berth.invalid/'))) {
    Object.defineProperty(p, slot, {
      get(this: Light) {
        return (real(this) as any)[slot]
      },
    })
  }
  proto = p
  try {
    const meta: RequestMeta = {
      method: 'POST',
      url: 'http://berth.invalid/a?b=1',
      headers: [['x-a', '1']],
      body: new Uint8Array([104, 105]),
    }
    const l = light(meta, undefined)
    const forwarded = new Request(l)
    works =
      l instanceof Request &&
      forwarded.method === 'POST' &&
      forwarded.url === meta.url &&
      forwarded.headers.get('x-a') === '1' &&
      forwarded.body !== null
  } catch {
    works = false
  }
  return p
}

/** Methods and URLs a Request keeps as they are; others are built whole (normalised, refused). */
const PLAIN_METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS'])
const PLAIN_URL = /^http:\/\/[a-z0-9.-]+(?::\d{1,5})?\/[!#$&-;=?-[\]_a-z~]*$/
const DOT_SEGMENT = /\/\.\.?(?:[/?#]|$)/

function light(meta: RequestMeta, signal: AbortSignal | SignalSource | undefined): Request {
  const self = Object.create(prepare()) as Light
  self[META] = meta
  self[REAL] = undefined
  self[SIGNAL] = signal
  self[HEADERS] = undefined
  self[USED] = false
  return self as unknown as Request
}

export function cheapRequest(meta: RequestMeta, signal?: AbortSignal | SignalSource): Request {
  prepare()
  if (works && PLAIN_METHODS.has(meta.method) && PLAIN_URL.test(meta.url) && !DOT_SEGMENT.test(meta.url)) return light(meta, signal)
  return fullRequest(meta, signal)
}
