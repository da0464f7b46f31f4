// The `Response` a container process with web members makes (README "API", web endpoints and
// web apps), made cheaply: Node 20's Response builds a web stream for every body, even a short
// string, and that costs more than the rest of a small JSON answer. A container that serves web
// members installs this one as the global `Response` (as @hono/node-server does in its own
// server): a Response made from a string, bytes or nothing keeps them, and src/run/web.ts
// `answer` sends them as they are. Anything else about it (its body as a stream, `text()`,
// `clone()`, `statusText`, `type`, every internal slot of Node's Response) is the real Response,
// built from the same arguments the first time it is asked for. A Response whose arguments are
// not that plain (another body, a status that must be checked) is built real at once, so it
// throws where Node's would. `instanceof Response` holds for both kinds. Nothing here touches
// Node's Response before installLightResponse (the first use of the global loads undici, tens of
// milliseconds every process importing berth would pay).

/** Node's Response, as it was when the light one was installed. */
let Real: typeof Response

const BODY = Symbol('berth.body')
const STATUS = Symbol('berth.status')
const HEADERS = Symbol('berth.headers')
const REAL = Symbol('berth.response')

interface Light {
  /** The body as given: a string, a copy of the bytes, or null. */
  [BODY]: string | Uint8Array | null
  [STATUS]: number
  /** Its headers, the content type Node would add included. */
  [HEADERS]: Headers
  [REAL]: Response | undefined
}

/** A light Response's parts, unless its real Response exists (then read that one). */
export function lightParts(res: Response): { status: number; headers: Headers; body: string | Uint8Array | null } | undefined {
  const l = res as unknown as Light
  if (l[REAL] !== undefined || !(BODY in l)) return undefined
  return { status: l[STATUS], headers: l[HEADERS], body: l[BODY] }
}

function real(self: Light): Response {
  let r = self[REAL]
  if (r === undefined) {
    r = new Real(self[BODY], { status: self[STATUS], headers: self[HEADERS] })
    self[REAL] = r
  }
  return r
}

/** Statuses a Response takes with a string or bytes body and no statusText, as Node checks them. */
const plainStatus = (s: number) => Number.isInteger(s) && s >= 200 && s <= 599 && s !== 204 && s !== 205 && s !== 304

function plainInit(init: ResponseInit | undefined): boolean {
  if (init === undefined) return true
  if (typeof init !== 'object' || init === null) return false
  for (const k in init) if (k !== 'status' && k !== 'headers') return false
  return init.status === undefined || plainStatus(init.status)
}

class LightResponse {
  constructor(body?: ConstructorParameters<typeof Response>[0], init?: ResponseInit) {
    const self = this as unknown as Light
    const plainBody = body === undefined || body === null || typeof body === 'string' || body instanceof Uint8Array
    if (!plainBody || !plainInit(init)) {
      self[REAL] = new Real(body, init)
      return
    }
    const headers = new Headers(init?.headers)
    if (typeof body === 'string' && !headers.has('content-type')) headers.set('content-type', 'text/plain;charset=UTF-8')
    self[BODY] = body instanceof Uint8Array ? body.slice() : (body ?? null)
    self[STATUS] = init?.status ?? 200
    self[HEADERS] = headers
    self[REAL] = undefined
  }

  static [Symbol.hasInstance](v: unknown): boolean {
    return v instanceof Real
  }

  get status(): number {
    const self = this as unknown as Light
    return self[REAL]?.status ?? self[STATUS]
  }
  get ok(): boolean {
    const s = this.status
    return s >= 200 && s <= 299
  }
  get headers(): Headers {
    const self = this as unknown as Light
    return self[REAL]?.headers ?? self[HEADERS]
  }
}

let prepared: boolean | undefined

/** Gives the light Response Node's members and slots, once; whether it then works as expected. */
function prepare(): boolean {
  if (prepared !== undefined) return prepared
  const proto = LightResponse.prototype as any
  for (const name of ['body', 'bodyUsed', 'statusText', 'type', 'url', 'redirected']) {
    Object.defineProperty(proto, name, {
      get(this: Light) {
        return (real(this) as any)[name]
      },
    })
  }
  for (const name of ['arrayBuffer', 'blob', 'bytes', 'clone', 'formData', 'json', 'text']) {
    if (!(name in Real.prototype)) continue
    Object.defineProperty(proto, name, {
      value(this: Light, ...args: unknown[]) {
        return (real(this) as any)[name](...args)
      },
      writable: true,
      configurable: true,
    })
  }
  // Node's Response reads its state from symbol-keyed slots (undici): each reads the real one's.
  for (const slot of Object.getOwnPropertySymbols(new Real())) {
    Object.defineProperty(proto, slot, {
      get(this: Light) {
        return (real(this) as any)[slot]
      },
    })
  }
  Object.defineProperty(proto, Symbol.for('nodejs.util.inspect.custom'), {
    value(this: Light, _depth: number, options: object, inspect: (v: unknown, o: object) => string) {
      return inspect(real(this), options)
    },
  })
  Object.setPrototypeOf(LightResponse, Real)
  Object.setPrototypeOf(proto, Real.prototype)

  // Whether the light Response behaves as expected on this Node.
  try {
    const l = new LightResponse('{"a":1}', { status: 201, headers: { 'x-a': '1' } }) as unknown as Response
    prepared =
      lightParts(l) !== undefined &&
      l instanceof Real &&
      new Real('') instanceof LightResponse &&
      l.status === 201 &&
      l.headers.get('content-type') === 'text/plain;charset=UTF-8' &&
      l.clone().headers.get('x-a') === '1'
  } catch {
    prepared = false
  }
  return prepared
}

/** Node's own Response, whether or not the light one is installed. */
export function nodeResponse(): typeof Response {
  return globalThis.Response === (LightResponse as unknown) ? Real : globalThis.Response
}

/**
 * Makes `Response` the light one in this process (a container with web members). Code that
 * took `Response` before keeps Node's, which answers as it always did.
 */
export function installLightResponse(): void {
  if (globalThis.Response === (LightResponse as unknown)) return
  Real = globalThis.Response
  if (prepare()) globalThis.Response = LightResponse as unknown as typeof Response
}
