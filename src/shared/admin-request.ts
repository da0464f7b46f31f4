// A running server's admin routes (`/_berth/...`, crates/berth-server/src/http/admin.rs): JSON
// over HTTP/2 on its gRPC port, where callers find it. Used by the CLI (src/cli/admin.ts: `berth
// app|container|logs|deploy`) and by `app.deploy()` (src/define/app.ts).
import { connect, type ClientHttp2Session } from 'node:http2'

/**
 * Where callers find `berth serve` unless told: src/call/remote.ts's DEFAULT_SERVER, written
 * again here because the CLI bundle must not carry a copy of the call layer (src/cli/main.ts).
 */
export const DEFAULT_SERVER = 'http://127.0.0.1:7450'

/** What went wrong, in words for the user (`berth: ...`). */
export class AdminError extends Error {}

/** A request to the server's admin routes; `onLine`, when given, gets each line of the body as it comes. */
export function request(
  server: string,
  token: string | undefined,
  method: 'GET' | 'POST',
  path: string,
  onLine?: (line: string) => void,
): Promise<{ status: number; body: string }> {
  const where = server === DEFAULT_SERVER ? `${server} (the default when BERTH_SERVER is unset)` : server
  return new Promise((resolve, reject) => {
    let session: ClientHttp2Session
    try {
      session = connect(server)
    } catch (e) {
      reject(new AdminError(`berth: ${server} is not a server URL (${(e as Error).message}): use http://host:port`))
      return
    }
    const unreachable = (e: NodeJS.ErrnoException) =>
      reject(
        new AdminError(
          `berth: no berth server answers at ${where} (${e.code ?? e.message}): start one with \`npx berth serve app.ts\`, ` +
            'or point BERTH_SERVER=http://host:port (or --server) at the one you mean',
        ),
      )
    session.on('error', unreachable)
    const headers: Record<string, string> = { ':method': method, ':path': path }
    if (token) headers.authorization = `Bearer ${token}`
    const req = session.request(headers)
    let status = 0
    let body = ''
    let partial = ''
    req.setEncoding('utf8')
    req.on('response', (h) => {
      status = Number(h[':status'])
    })
    req.on('data', (d: string) => {
      if (onLine && status === 200) {
        partial += d
        let nl = partial.indexOf('\n')
        while (nl !== -1) {
          onLine(partial.slice(0, nl))
          partial = partial.slice(nl + 1)
          nl = partial.indexOf('\n')
        }
      } else body += d
    })
    req.on('end', () => {
      session.close()
      resolve({ status, body })
    })
    req.on('error', (e: NodeJS.ErrnoException) => {
      // No answer at all: nothing listens there (the session's error says why).
      if (status === 0) unreachable((e.cause as NodeJS.ErrnoException | undefined) ?? e)
      else reject(new AdminError(`berth: ${where}: ${e.message}`))
    })
    req.end()
  })
}

/** The server's answer as JSON, or an AdminError in its words (with the fix for a missing token). */
export function answerOf(status: number, body: string): any {
  let parsed: any
  try {
    parsed = JSON.parse(body)
  } catch {
    throw new AdminError(`berth: the server answered ${status} with something other than JSON: is it a berth server?`)
  }
  if (status === 200) return parsed
  const message = parsed?.error?.message ?? body
  const hint = status === 401 ? " (pass the server's token: --token T or BERTH_TOKEN)" : ''
  throw new AdminError(`berth: ${message}${hint}`)
}

export async function ask(server: string, token: string | undefined, method: 'GET' | 'POST', path: string): Promise<any> {
  const { status, body } = await request(server, token, method, path)
  return answerOf(status, body)
}
