// Web apps (README "API", web apps) against `npx berth serve`, through fetch: a Hono app behind
// @fetchApp (routes, path params, an SSE route read event by event), a fastify server behind
// @webServer and an Express app behind @nodeApp (both proxied), each after @enter and before
// @exit; a request body streaming to a @webServer; a fetch handler that throws; a @webServer
// that never listens.
import { readFileSync } from 'node:fs'
import { request, type IncomingMessage } from 'node:http'
import test from 'ava'

import { serve, stopsCleanly, type Served } from './_served.ts'
import { until, within } from './_util.ts'

async function served(t: any): Promise<Served> {
  const s = await serve([], {}, 'web-apps.ts')
  t.teardown(() => s.child.kill('SIGKILL'))
  return s
}

const marks = (s: Served) => {
  try {
    return readFileSync(s.marker, 'utf8')
  } catch {
    return ''
  }
}

/** Reads SSE events off a response body as they come. */
async function* events(res: Response): AsyncGenerator<{ event: string; data: string }> {
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader()
  let buf = ''
  for (;;) {
    const { done, value } = await reader.read()
    if (done) return
    buf += value
    for (let i = buf.indexOf('\n\n'); i !== -1; i = buf.indexOf('\n\n')) {
      const block = buf.slice(0, i)
      buf = buf.slice(i + 2)
      const ev = { event: 'message', data: '' }
      for (const line of block.split('\n')) {
        if (line.startsWith('event: ')) ev.event = line.slice(7)
        else if (line.startsWith('data: ')) ev.data += line.slice(6)
      }
      yield ev
    }
  }
}

test.serial('@fetchApp serves a Hono app: routes, path params, query, status and headers, the prefix; SSE event by event; a handler that throws is 500 and the container keeps serving', async (t) => {
  const s = await served(t)
  const base = `http://${s.http}/webapps`
  await until(() => s.stdout().includes('Api.serve'), 10_000, 'the banner')
  t.regex(s.stdout(), new RegExp(`ANY ${base.replace(/[.]/g, '\\.')}/api/\\.\\.\\.`))

  const hello = await fetch(`${base}/api/hello/ada?q=x%20y`)
  t.is(hello.status, 200)
  const body = (await hello.json()) as any
  t.like(body, { text: 'hello ada', q: 'x y' })
  t.regex(marks(s), /api enter \d+\napi fetchApp\n/, '@enter ran, then the member, once')

  const echo = await fetch(`${base}/api/echo`, { method: 'POST', body: '{"n":1}', headers: { 'content-type': 'application/json' } })
  t.is(echo.status, 201)
  t.is(echo.headers.get('x-echo'), 'yes')
  t.deepEqual(await echo.json(), { got: { n: 1 }, prefix: '/webapps/api' })
  // A path the Hono app does not have is its own 404, not berth's.
  t.is((await fetch(`${base}/api/nope`)).status, 404)

  // SSE: the first event arrives while the handler still waits (for POST /release, sent only
  // after the client read it), then the rest.
  const sse = await fetch(`${base}/api/sse`, { headers: { accept: 'text/event-stream' } })
  t.is(sse.status, 200)
  t.regex(sse.headers.get('content-type') ?? '', /^text\/event-stream/)
  const it = events(sse)
  t.deepEqual((await it.next()).value, { event: 'token', data: 'first' })
  t.notRegex(marks(s), /sse finished/, 'the handler has not finished when the first event arrives')
  t.is(await (await fetch(`${base}/api/release`, { method: 'POST' })).text(), 'released')
  t.deepEqual((await it.next()).value, { event: 'token', data: 'second' })
  t.deepEqual((await it.next()).value, { event: 'done', data: 'end' })
  t.true((await it.next()).done)
  t.regex(marks(s), /sse finished/)

  // An async * @webEndpoint streams its items: NDJSON, or SSE.
  const tokens = await fetch(`${base}/tokens`, { method: 'POST', body: '{"text":"a b"}', headers: { 'content-type': 'application/json' } })
  t.regex(tokens.headers.get('content-type') ?? '', /^application\/x-ndjson/)
  t.is(await tokens.text(), '{"token":"a/hello"}\n{"token":"b/hello"}\n')
  const tokenEvents = await fetch(`${base}/tokens`, { method: 'POST', body: '{"text":"c"}', headers: { accept: 'text/event-stream' } })
  t.is(await tokenEvents.text(), 'data: {"token":"c/hello"}\n\n')

  // A @webEndpoint's returned Response streams too: its first event arrives while its body waits.
  const ticks = await fetch(`${base}/ticks`)
  t.is(ticks.status, 202)
  t.is(ticks.headers.get('x-ticks'), '2')
  const ti = events(ticks)
  t.deepEqual((await ti.next()).value, { event: 'message', data: 'tick 0' })
  t.notRegex(marks(s), /ticks finished/)
  await fetch(`${base}/api/release`, { method: 'POST' })
  t.deepEqual((await ti.next()).value, { event: 'message', data: 'tick 1' })
  t.true((await ti.next()).done)

  // A client that goes away ends an endless stream: its ReadableStream is cancelled.
  const forever = new AbortController()
  const f = await fetch(`${base}/api/forever`, { signal: forever.signal })
  const fi = events(f)
  t.is((await fi.next()).value?.data, '0')
  forever.abort()
  await until(() => marks(s).includes('forever aborted'), 10_000, 'the stream cancelled after the client left')

  // A hand-written fetch handler that throws: 500 with the error as JSON; the container serves on.
  const ok1 = await (await fetch(`${base}/raw/a/b?c=1`)).text()
  t.regex(ok1, /^pid \d+ GET \/a\/b\?c=1$/)
  const thrown = await fetch(`${base}/raw/throw`, { method: 'DELETE' })
  t.is(thrown.status, 500)
  t.like(((await thrown.json()) as any).error, { name: 'RangeError', message: 'the handler broke on DELETE /throw' })
  const ok2 = await (await fetch(`${base}/raw/again`, { method: 'PUT', body: 'x' })).text()
  t.is(ok2.split(' ')[1], ok1.split(' ')[1], 'the same container serves on')

  // A web app member is no call: callers are told where it answers.
  const rpc = await fetch(`${base}/Api/serve`, { method: 'POST', body: '[]', headers: { 'content-type': 'application/json' } })
  t.regex(((await rpc.json()) as any).error.message, /Api\.serve is a @fetchApp\(\): it answers the HTTP requests under \/webapps\/api/)

  await stopsCleanly(t, s)
  t.regex(marks(s), /api exit/)
})

test.serial('@webServer proxies a fastify server on the port berth gives it; @nodeApp serves an Express app; both after @enter, with @exit at stop', async (t) => {
  const s = await served(t)
  const base = `http://${s.http}/webapps`
  const item = await fetch(`${base}/fast/items/7`)
  t.is(item.status, 200)
  const got = (await item.json()) as any
  t.is(got.id, 'item-7', '@enter ran before the server started')
  t.is(String(got.port), got.env, 'the port is passed and in process.env.PORT')
  // On Linux the control plane reaches the server through an abstract Unix socket of the
  // container's (README "API", web apps); the app still sees a loopback caller.
  t.is(got.unix, process.platform === 'linux')
  t.is(got.ip, '127.0.0.1')
  const created = await fetch(`${base}/fast/items`, { method: 'POST', body: '{"a":[1,2]}', headers: { 'content-type': 'application/json' } })
  t.is(created.status, 201)
  t.is(created.headers.get('x-made-by'), 'fastify')
  t.deepEqual(await created.json(), { created: { a: [1, 2] } })

  const user = await fetch(`${base}/Ex/listener/users/2`)
  t.is(user.status, 200)
  t.deepEqual(await user.json(), { name: 'grace', path: '/users/2' })
  const missing = await fetch(`${base}/Ex/listener/users/9`)
  t.is(missing.status, 404)
  t.deepEqual(await missing.json(), { missing: '9' })
  const added = await fetch(`${base}/Ex/listener/users`, { method: 'POST', body: '{"name":"alan"}', headers: { 'content-type': 'application/json' } })
  t.is(added.status, 201)
  t.is(added.headers.get('x-made-by'), 'express')
  t.deepEqual(await added.json(), { added: { name: 'alan' } })

  // A proxied body that streams: the client leaves after the first chunk; the app's response
  // closes, and the same container serves on.
  const pid = (await (await fetch(`${base}/Ex/listener/pid`)).json()) as any
  t.is(pid.unix, process.platform === 'linux')
  t.is(pid.ip, '127.0.0.1')
  const before = pid.pid
  const leave = new AbortController()
  const drip = await fetch(`${base}/Ex/listener/drip`, { signal: leave.signal })
  const reader = drip.body!.getReader()
  t.is(new TextDecoder().decode((await reader.read()).value).split('\n')[0], 'drop')
  leave.abort()
  await until(() => marks(s).includes('drip closed'), 10_000, 'the proxied response closed after the client left')
  t.is(((await (await fetch(`${base}/Ex/listener/pid`)).json()) as any).pid, before)

  await stopsCleanly(t, s)
  t.regex(marks(s), /fast exit/)
  t.regex(marks(s), /ex exit/)
})

test.serial('a request body streams to a @webServer as it comes: the app echoes part 1 before the client sends part 2', async (t) => {
  const s = await served(t)
  const [host, port] = s.http.split(':')
  const req = request({ host, port: Number(port), method: 'POST', path: '/webapps/echo/stream', headers: { 'content-type': 'application/octet-stream' } })
  const res = await within(
    10_000,
    new Promise<IncomingMessage>((resolve, reject) => {
      req.once('response', resolve)
      req.once('error', reject)
      req.write('part 1;')
    }),
    'the head of the answer while the body is still coming',
  )
  t.is(res.statusCode, 200)
  const chunks = res[Symbol.asyncIterator]()
  let got = ''
  while (!got.includes('part 1;')) {
    const next = await within(5000, chunks.next(), 'the echo of part 1')
    if (next.done) break
    got += String(next.value)
  }
  t.is(got, 'part 1;', 'part 1 came back before part 2 was sent')
  req.end('part 2;')
  for (let next = await chunks.next(); !next.done; next = await chunks.next()) got += String(next.value)
  t.is(got, 'part 1;part 2;end')
  t.truthy(res.headers['x-berth-function-call-id'])
  await stopsCleanly(t, s)
})

test.serial("a @webServer's answers come through whole however they are framed (chunks, a length, HEAD, 204, 304, a closed connection), request bodies by a length or chunked, and kept connections the app closed are not used", async (t) => {
  const s = await served(t)
  const base = `http://${s.http}/webapps/wire`
  const chunks = await fetch(`${base}/chunks`)
  t.is(chunks.status, 200)
  t.is(await chunks.text(), 'one,two')
  const sized = await fetch(`${base}/sized`)
  t.is(sized.headers.get('content-length'), String(1 << 20))
  const bytes = Buffer.from(await sized.arrayBuffer())
  t.true(bytes.equals(Buffer.alloc(1 << 20, 'abcdefgh')), 'the 1 MiB body, byte for byte')
  const head = await fetch(`${base}/sized`, { method: 'HEAD' })
  t.is(head.status, 200)
  t.is(head.headers.get('content-length'), String(1 << 20), "a HEAD's answer keeps its length")
  t.is((await head.arrayBuffer()).byteLength, 0)
  const nothing = await fetch(`${base}/nothing`)
  t.is(nothing.status, 204)
  t.is(nothing.headers.get('x-none'), 'yes')
  const same = await fetch(`${base}/same`)
  t.is(same.status, 304)
  t.is(same.headers.get('etag'), '"v1"')
  // The app closes its connection after answering: the next requests go on new ones.
  for (let i = 0; i < 3; i++) t.is(await (await fetch(`${base}/close`)).text(), 'bye')
  // A request body by its length, and one that streams (chunked), reach the app whole.
  const body = Buffer.alloc(3 << 20, 'xyz')
  let sum = 0
  for (const b of body) sum = (sum + b) % 65521
  const byLength = await fetch(`${base}/digest`, { method: 'POST', body })
  t.deepEqual(await byLength.json(), { length: body.length, sum, chunked: null })
  const stream = new ReadableStream<Uint8Array>({
    start(c) {
      c.enqueue(body.subarray(0, 1000))
      c.enqueue(body.subarray(1000))
      c.close()
    },
  })
  const byChunks = await fetch(`${base}/digest`, { method: 'POST', body: stream, duplex: 'half' } as RequestInit)
  t.deepEqual(await byChunks.json(), { length: body.length, sum, chunked: 'chunked' })
  // The app closes connections idle 300 ms: after a pause, requests go on new ones, none lost.
  await new Promise((r) => setTimeout(r, 800))
  const after = await Promise.all([1, 2, 3, 4].map(() => fetch(`${base}/chunks`).then((r) => r.text())))
  t.deepEqual(after, ['one,two', 'one,two', 'one,two', 'one,two'])
  await stopsCleanly(t, s)
})

test.serial('a @webServer that never listens: its container fails to start with a clear log line, and callers get 503', async (t) => {
  const s = await served(t)
  const res = await fetch(`http://${s.http}/webapps/never/anything`)
  t.is(res.status, 503)
  const error = ((await res.json()) as any).error
  t.is(error.name, 'InitError')
  t.regex(error.message, /nothing accepted connections on 127\.0\.0\.1:\d+ within startupTimeout \(0\.5 s\)/)
  // The container's own line is relayed by a thread of its own (README "Logs"): it may come after the answer.
  await until(() => /berth: @webServer\(\) Never\.start: nothing accepted connections/.test(s.stdout()), 10_000, `the container's line\n${s.stdout()}`)
  // The server keeps serving the other apps.
  t.is((await fetch(`http://${s.http}/webapps/raw/x`)).status, 200)
  await stopsCleanly(t, s)
})
