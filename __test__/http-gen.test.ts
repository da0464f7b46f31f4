// Generators over HTTP (README "API", Generators): `POST /{app}/{function}` on an async function*
// answers its items as NDJSON, one JSON value per line as each is yielded, or as SSE events when
// `Accept: text/event-stream`; a throw ends the body with the error; a client that disconnects
// cancels the call. Read with undici fetch, chunk by chunk, against `berth serve`.
import test from 'ava'
import { existsSync, readFileSync, writeFileSync } from 'node:fs'

import { serve, stopsCleanly, type Served } from './_served.ts'

let s: Served
test.before(async () => {
  s = await serve([], {}, 'http-gen.ts')
})
test.after.always(async () => {
  if (s && s.child.exitCode === null) s.child.kill('SIGKILL')
})

const post = (path: string, body: unknown, headers: Record<string, string> = {}) =>
  fetch(`http://${s.http}/httpgen/${path}`, { method: 'POST', body: JSON.stringify(body), headers })

/** Reads a body chunk by chunk, handing out whole lines (or SSE events) as they arrive. */
function reader(res: Response, separator = '\n') {
  const r = res.body!.getReader()
  const decoder = new TextDecoder()
  let buffered = ''
  return {
    async next(): Promise<string | undefined> {
      for (;;) {
        const at = buffered.indexOf(separator)
        if (at >= 0) {
          const line = buffered.slice(0, at)
          buffered = buffered.slice(at + separator.length)
          return line
        }
        const { done, value } = await r.read()
        if (done) {
          if (buffered !== '') throw new Error(`the body ended inside a line: ${JSON.stringify(buffered)}`)
          return undefined
        }
        buffered += decoder.decode(value, { stream: true })
      }
    },
    async rest(): Promise<string[]> {
      const out: string[] = []
      for (let l = await this.next(); l !== undefined; l = await this.next()) out.push(l)
      return out
    },
    cancel: () => r.cancel(),
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

test.serial('NDJSON: each item is written as it is yielded, in order', async (t) => {
  const res = await post('gated', ['web'])
  t.is(res.status, 200)
  t.is(res.headers.get('content-type'), 'application/x-ndjson')
  t.regex(res.headers.get('x-berth-function-call-id') ?? '', /^fc-\d+$/)
  const lines = reader(res)
  // The generator waits for the go file after its first item: this line cannot be a buffered
  // whole body.
  t.deepEqual(JSON.parse((await lines.next())!), { hello: 'web' })
  t.false(existsSync(`${s.marker}.go`))
  writeFileSync(`${s.marker}.go`, '')
  t.deepEqual((await lines.rest()).map((l) => JSON.parse(l)), [[1, 2], 'three'])
})

test.serial('SSE with Accept: text/event-stream: one data event per item', async (t) => {
  const res = await post('kinds', [], { accept: 'application/json, text/event-stream;q=0.9' })
  t.is(res.status, 200)
  t.is(res.headers.get('content-type'), 'text/event-stream')
  t.is(res.headers.get('cache-control'), 'no-cache')
  t.is(await res.text(), 'data: 1\n\ndata: "two"\n\ndata: {"three":[3]}\n\ndata: null\n\n')
})

test.serial('a throw after items ends the stream with the error, in NDJSON and in SSE', async (t) => {
  const res = await post('failing', [])
  t.is(res.status, 200)
  const lines = (await reader(res).rest()).map((l) => JSON.parse(l))
  t.deepEqual(lines.slice(0, 2), [0, 1])
  t.is(lines.length, 3)
  t.like(lines[2], { error: { name: 'RangeError', message: 'the source ran dry' } })
  t.regex(lines[2].error.stack, /RangeError: the source ran dry/)

  const sse = await post('failing', [], { accept: 'text/event-stream' })
  const events = await reader(sse, '\n\n').rest()
  t.deepEqual(events.slice(0, 2), ['data: 0', 'data: 1'])
  t.is(events.length, 3)
  const [kind, data] = events[2].split('\n')
  t.is(kind, 'event: error')
  t.like(JSON.parse(data.replace(/^data: /, '')), { error: { name: 'RangeError', message: 'the source ran dry' } })

  // Nothing yielded before the throw: the answer is the error, as for a function.
  const broken = await post('broken', [])
  t.is(broken.status, 500)
  t.like(await broken.json(), { error: { name: 'TypeError', message: 'no items today' } })
})

test.serial('a client that disconnects mid-stream cancels the call: the generator\'s finally runs, its signal aborted', async (t) => {
  const controller = new AbortController()
  const res = await fetch(`http://${s.http}/httpgen/ticks`, { method: 'POST', body: '[]', signal: controller.signal })
  const lines = reader(res)
  t.is(await lines.next(), '0')
  t.is(await lines.next(), '1')
  t.false(existsSync(`${s.marker}.finally`), 'the generator is still running')
  controller.abort()
  // The file appears before its bytes do (writeFileSync creates, then writes): wait for both.
  const written = () => existsSync(`${s.marker}.finally`) && readFileSync(`${s.marker}.finally`, 'utf8').length > 0
  for (let i = 0; i < 200 && !written(); i++) await sleep(50)
  t.deepEqual(JSON.parse(readFileSync(`${s.marker}.finally`, 'utf8')), { aborted: true, reason: 'InputCancelledError' })
})

test.serial('a slow reader pauses the generator; reading on resumes it', async (t) => {
  const res = await post('big', [])
  const lines = reader(res)
  t.is((await lines.next())!.length, 64 * 1024 + 2)
  const produced = () => Number(existsSync(`${s.marker}.produced`) ? readFileSync(`${s.marker}.produced`, 'utf8') : 0)
  // Wait until it stops: a stream buffered whole would run on to 2000 (128 MiB).
  let last = -1
  for (let i = 0; i < 40 && produced() !== last; i++) {
    last = produced()
    await sleep(500)
  }
  t.is(produced(), last, 'the generator paused')
  // What the socket buffers, hyper's write buffer and 16 items of credit hold, at most.
  t.true(last < 500, `paused after ${last} items of 64 KiB`)
  for (let i = 0; i < last + 50; i++) await lines.next()
  t.true(produced() > last, 'reading resumed it')
  await lines.cancel()
})

test.serial('a generator past maxPendingInputs is 429 with Retry-After; a caller gone before its first item is cancelled', async (t) => {
  const running = new AbortController()
  const res = await fetch(`http://${s.http}/httpgen/single`, { method: 'POST', body: '[]', signal: running.signal })
  t.is(await reader(res).next(), '0')
  // Two more: whichever the server takes second is refused at once; the other waits in the
  // queue, with no head until its first item.
  const controllers = [new AbortController(), new AbortController()]
  const calls = controllers.map((c, i) =>
    fetch(`http://${s.http}/httpgen/single`, { method: 'POST', body: '[]', signal: c.signal }).then(
      (res) => ({ i, res, error: undefined }),
      (error: Error) => ({ i, res: undefined, error }),
    ),
  )
  const full = await Promise.race(calls)
  t.is(full.res?.status, 429)
  t.is(full.res?.headers.get('retry-after'), '1')
  t.like(await full.res?.json(), { error: { name: 'QueueFullError' } })
  // The waiting caller leaves before its head, then the running one: the queue is empty again.
  controllers[1 - full.i].abort()
  t.is((await calls[1 - full.i]).error?.name, 'AbortError')
  running.abort()
  let next: Response | undefined
  for (let i = 0; i < 100; i++) {
    next = await post('single', [])
    if (next.status === 200) break
    await next.body?.cancel()
    await sleep(50)
  }
  t.is(next!.status, 200)
  const lines = reader(next!)
  t.is(await lines.next(), '0')
  await lines.cancel()
})

test.serial('a plain function still answers one JSON value; bad arguments to a generator are 400', async (t) => {
  const res = await post('double', [21])
  t.is(res.status, 200)
  t.is(res.headers.get('content-type'), 'application/json')
  t.is(await res.text(), '42')
  const sse = await post('double', [1], { accept: 'text/event-stream' })
  t.is(sse.headers.get('content-type'), 'application/json')
  t.is(await sse.text(), '2')
  const bad = await post('gated', [])
  t.is(bad.status, 400)
  t.regex(((await bad.json()) as { error: { message: string } }).error.message, /^gated takes exactly 1 argument; the arguments hold 0/)
})

test.serial('berth serve stops cleanly after streams', async (t) => {
  await stopsCleanly(t, s)
})
