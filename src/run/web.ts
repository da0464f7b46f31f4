// A web endpoint's request and response in a container (README "API", web endpoints). The
// control plane sends what a `Request` needs only to endpoints that declare a second parameter
// (building one costs microseconds), and answers the HTTP request with a returned `Response`,
// read here to its end (streaming bodies are buffered for now).
import { WireResponse } from '../shared/cbor.ts'

/** The second argument the control plane sends: crates/berth-server/src/web.rs `request_meta`. */
interface RequestMeta {
  method: string
  url: string
  headers: [string, string][]
  body: Uint8Array | null
}

export function toRequest(meta: unknown): unknown {
  if (typeof meta !== 'object' || meta === null || !('url' in meta)) return meta
  const m = meta as RequestMeta
  const body = m.method === 'GET' || m.method === 'HEAD' || m.body === null || m.body.length === 0 ? undefined : m.body
  return new Request(m.url, { method: m.method, headers: m.headers, body })
}

export async function toWire(res: Response): Promise<WireResponse> {
  const body = new Uint8Array(await res.arrayBuffer())
  return new WireResponse(res.status, [...res.headers], body)
}
