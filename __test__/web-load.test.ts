// Web requests are inputs (README "API", web endpoints) against `npx berth serve` with container
// processes, through fetch and raw sockets: @concurrent caps the requests a container runs at
// once, a client that leaves while its request is queued cancels it, the pool scales out on
// request load and back in after scaledownWindow, and clients that hold a connection without
// finishing a request (slowloris) are dropped while the server keeps serving.
import { existsSync, readFileSync } from 'node:fs'
import { request } from 'node:http'
import { connect, type Socket } from 'node:net'
import test from 'ava'

import { serve, stopsCleanly, type Served } from './_served.ts'
import { sleep, until, within } from './_util.ts'

async function served(t: any): Promise<Served> {
  const s = await serve([], {}, 'web-load.ts')
  t.teardown(() => s.child.kill('SIGKILL'))
  return s
}

const post = (url: string, body: unknown, signal?: AbortSignal) =>
  fetch(url, { method: 'POST', body: JSON.stringify(body), headers: { 'content-type': 'application/json' }, signal })

const marks = (s: Served) => (existsSync(s.marker) ? readFileSync(s.marker, 'utf8') : '')

test.serial('@concurrent({ maxInputs: 2 }) with maxContainers 1: 6 slow requests at once all succeed, the container never runs more than 2; a queued request whose client leaves never runs', async (t) => {
  const s = await served(t)
  const url = `http://${s.http}/webload/slow`
  const started = Date.now()
  const answers = await within(
    60_000,
    Promise.all(
      Array.from({ length: 6 }, async (_, i) => {
        const res = await post(url, { ms: 800, id: `r${i}` })
        return { status: res.status, body: (await res.json()) as any }
      }),
    ),
    'six requests',
  )
  const elapsed = Date.now() - started
  t.deepEqual(
    answers.map((a) => a.status),
    [200, 200, 200, 200, 200, 200],
    JSON.stringify(answers),
  )
  t.deepEqual(answers.map((a) => a.body.id).sort(), ['r0', 'r1', 'r2', 'r3', 'r4', 'r5'])
  t.is(new Set(answers.map((a) => a.body.pid)).size, 1, 'one container served them all')
  const most = Math.max(...answers.map((a) => a.body.most))
  t.is(most, 2, `the container ran at most 2 at once, and did run 2: ${JSON.stringify(answers)}`)
  t.true(answers.every((a) => a.body.seen <= 2))
  // Three rounds of two: the other four waited for a slot.
  t.true(elapsed >= 3 * 800, `6 requests of 800 ms, 2 at a time, took ${elapsed} ms`)

  // Two hold the slots; a third waits in the queue. Its client leaves: it is cancelled there and
  // never runs, and the slot it would have taken goes to the request after it.
  const holders = [post(url, { ms: 2000, id: 'h1' }), post(url, { ms: 2000, id: 'h2' })]
  await until(() => marks(s).includes('start h1') && marks(s).includes('start h2'), 20_000, 'both holders to start')
  // node:http, to leave only once the whole request has been written to the socket.
  const queued = request(url, { method: 'POST', headers: { 'content-type': 'application/json' } })
  const outcome = new Promise<string>((resolve) => {
    queued.on('response', (res) => resolve(`answered ${res.statusCode}`))
    queued.on('error', (e) => resolve(e.message))
  })
  await new Promise<void>((resolve) => queued.end(JSON.stringify({ ms: 10, id: 'gone' }), resolve))
  await sleep(500)
  queued.destroy()
  t.is(await outcome, 'socket hang up', 'the client left before any answer')
  const after = await post(url, { ms: 10, id: 'after' })
  t.is(after.status, 200)
  for (const h of holders) t.is((await h).status, 200)
  t.false(marks(s).includes('start gone'), `the request whose client left never started:\n${marks(s)}`)
  await stopsCleanly(t, s)
})

test.serial('autoscaling follows request load: parallel slow requests are served by more than one container (maxContainers 3), and the extra containers stop after scaledownWindow', async (t) => {
  const s = await served(t)
  const url = `http://${s.http}/webload/wide`
  // Queued work well above a container's start-up (the autoscaler adds a container only when
  // it would help, README "Process containers"): 12 requests of 600 ms, one at a time each.
  const warm = await post(url, { ms: 10 })
  t.is(warm.status, 200)
  const answers = await within(
    60_000,
    Promise.all(
      Array.from({ length: 12 }, async () => {
        const res = await post(url, { ms: 600 })
        t.is(res.status, 200)
        return ((await res.json()) as any).pid as number
      }),
    ),
    'twelve requests',
  )
  const pids = [...new Set(answers)]
  t.true(pids.length > 1, `more than one container served the load: ${JSON.stringify(answers)}`)
  t.true(pids.length <= 3, 'maxContainers 3')
  // Idle past scaledownWindow (1 s): every container but the ones kept warm (none) drains and
  // runs @exit, and its process ends, while the server runs on.
  await until(() => pids.every((pid) => marks(s).includes(`exit ${pid}`)), 30_000, `@exit of ${pids.join(', ')}`)
  for (const pid of pids) {
    await until(
      () => {
        try {
          process.kill(pid, 0)
          return false
        } catch {
          return true
        }
      },
      10_000,
      `container process ${pid} to end`,
    )
  }
  t.is(s.child.exitCode, null, 'berth serve still runs')
  // And a request after the scale-down starts a container again.
  const again = await post(url, { ms: 10 })
  t.is(again.status, 200)
  t.false(pids.includes(((await again.json()) as any).pid), 'a new container served it')
  await stopsCleanly(t, s)
})

/** A raw connection to `host:port`. */
function open(hostPort: string): Promise<Socket> {
  const [host, port] = hostPort.split(':')
  return new Promise((resolve, reject) => {
    const sock = connect(Number(port), host, () => resolve(sock))
    sock.once('error', reject)
  })
}

/** Everything the server sends until it closes the connection, and when it closed. */
function untilClosed(sock: Socket): Promise<{ data: string; at: number }> {
  let data = ''
  sock.on('data', (d) => (data += d))
  return new Promise((resolve) => {
    sock.once('close', () => resolve({ data, at: Date.now() }))
    sock.once('error', () => {})
  })
}

test.serial('slowloris on a web endpoint: headers without end and a body that stops are dropped after the server\'s timeouts (10 s head, 30 s body: 408 naming the fix) while other requests are served', async (t) => {
  const s = await served(t)
  t.teardown(() => s.child.kill('SIGKILL'))
  const path = '/webload/echo'

  // A head that never ends: one header line a second, never the blank line.
  const head = await open(s.http)
  t.teardown(() => head.destroy())
  const headClosed = untilClosed(head)
  const headStart = Date.now()
  head.write(`POST ${path} HTTP/1.1\r\nHost: ${s.http}\r\n`)
  const drip = setInterval(() => head.writable && head.write(`x-drip-${Date.now()}: 1\r\n`), 1000)
  t.teardown(() => clearInterval(drip))

  // A body that stops: the head is whole, 10 of the 100 bytes it declares come, then nothing.
  const body = await open(s.http)
  t.teardown(() => body.destroy())
  const bodyClosed = untilClosed(body)
  const bodyStart = Date.now()
  body.write(`POST ${path} HTTP/1.1\r\nHost: ${s.http}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{"a":"xxx`)

  // Meanwhile the endpoint serves others, at once.
  for (let i = 0; i < 5; i++) {
    const res = await within(5000, post(`http://${s.http}${path}`, { i }), 'a request beside the slowloris clients')
    t.is(res.status, 200)
    t.deepEqual(await res.json(), { echo: { i } })
    await sleep(500)
  }

  const h = await within(40_000, headClosed, 'the unending head to be dropped')
  clearInterval(drip)
  t.true(h.at - headStart < 25_000, `the unending head was dropped after ${h.at - headStart} ms (handshake_timeout 10 s)`)
  t.notRegex(h.data, /HTTP\/1\.1 200/, 'it was never answered as a request')

  const b = await within(60_000, bodyClosed, 'the stalled body to be dropped')
  t.true(b.at - bodyStart < 50_000, `the stalled body was dropped after ${b.at - bodyStart} ms (body_timeout 30 s)`)
  t.regex(b.data, /^HTTP\/1\.1 408 /)
  t.regex(b.data, /connection: close/i)
  const json = JSON.parse(b.data.slice(b.data.indexOf('\r\n\r\n') + 4))
  t.is(json.error.name, 'RequestTimeout')
  t.regex(json.error.message, /brought no bytes for 30s \(the server's body_timeout\): send the whole body without pausing/)

  // Still serving after both.
  const res = await post(`http://${s.http}${path}`, 'after')
  t.deepEqual(await res.json(), { echo: 'after' })
  await stopsCleanly(t, s)
})

test.serial('a web endpoint body over the cap is 413 whether it declares its length or streams it chunked; the server serves on', async (t) => {
  const s = await serve(['--max-message-bytes', '100000'], {}, 'web-load.ts')
  t.teardown(() => s.child.kill('SIGKILL'))
  const url = `http://${s.http}/webload/echo`
  const big = JSON.stringify({ text: 'x'.repeat(200_000) })
  const declared = await post(url, JSON.parse(big))
  t.is(declared.status, 413)
  // Chunked, with no Content-Length: refused once the bytes read pass the cap.
  const bytes = new TextEncoder().encode(big)
  const chunked = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: new ReadableStream({
      start(c) {
        for (let i = 0; i < bytes.length; i += 16_384) c.enqueue(bytes.subarray(i, i + 16_384))
        c.close()
      },
    }),
    duplex: 'half',
  } as RequestInit).catch((e: Error) => e)
  t.false(chunked instanceof Error, String(chunked))
  const res = chunked as Response
  t.is(res.status, 413)
  t.deepEqual(await res.json(), { error: { name: 'ResourceExhausted', message: "the body is over this server's limit of 100000 bytes" } })
  const after = await post(url, [1])
  t.deepEqual(await after.json(), { echo: [1] })
  await stopsCleanly(t, s)
})
