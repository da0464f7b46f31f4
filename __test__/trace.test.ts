// W3C trace context (README "Tracing"): a `traceparent` a caller sends (HTTP header, gRPC
// metadata) reaches the input as currentInput().traceparent, same trace-id, a span id of its
// own, flags kept; the berth calls an input makes (.remote, .map, .spawn, .remoteGen) continue
// it; an invalid header starts a new trace; without one berth starts a trace. The app is a
// user's project served with `npx berth serve`, called with fetch, a plain @grpc/grpc-js client
// and berth's own handles, and run with `npx berth run` in both container modes.
import test from 'ava'
import { spawn } from 'node:child_process'
import { copyFileSync } from 'node:fs'
import { join } from 'node:path'
import grpc from '@grpc/grpc-js'

import { npxServe, removedAtEnd, userProject } from './_project.ts'
import { Functions, cbor, deadline, root } from './_served.ts'
import { closed, until } from './_util.ts'

// Flags 00 (not sampled): kept as sent, where a trace berth starts is 01.
const SENT = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00'
const TRACE_ID = '0af7651916cd43dd8448eb211c80319c'
const VALID = /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/

function parts(traceparent: unknown): { trace: string; span: string; flags: string } {
  const m = VALID.exec(String(traceparent))
  if (m === null) throw new Error(`not a version-00 traceparent: ${traceparent}`)
  return { trace: m[1], span: m[2], flags: m[3] }
}

/** `traceparent` continues `SENT`: its trace-id and flags, a span id of its own. */
function continuesSent(t: any, traceparent: unknown, what: string): void {
  const p = parts(traceparent)
  t.is(p.trace, TRACE_ID, `${what}: the caller's trace-id`)
  t.is(p.flags, '00', `${what}: the caller's flags`)
  t.not(p.span, 'b7ad6b7169203331', `${what}: a span id of its own`)
}

interface Outer {
  mine: string
  remote: string
  mapped: string[]
  spawned: string
  streamed: string[]
}

/** Every call `outer` made continued its trace, and each input had a span id of its own. */
function nestedKeepTheTrace(t: any, o: Outer, what: string): string {
  const mine = parts(o.mine)
  const all = [o.remote, ...o.mapped, o.spawned, ...o.streamed]
  t.is(all.length, 6, what)
  for (const tp of all) t.is(parts(tp).trace, mine.trace, `${what}: a call made in the input keeps its trace-id (${tp})`)
  const spans = new Set([mine.span, ...all.map((tp) => parts(tp).span)])
  t.is(spans.size, 7, `${what}: every input has a span id of its own`)
  return mine.trace
}

const traced = () => userProject('berth-trace-', (dir) => copyFileSync(join(root, '__test__', 'fixtures', 'traced.ts'), join(dir, 'app.ts')))

async function served(t: any): Promise<{ address: string; http: string }> {
  const dir = traced()
  const { out } = npxServe(t, dir, [], {})
  const listening = /serving .* on (127\.0\.0\.1:\d+) .* http:\/\/(127\.0\.0\.1:\d+)\//
  await until(() => listening.test(out()), 60_000, `berth serve to listen\n${out()}`)
  const [, address, http] = listening.exec(out())!
  return { address, http }
}

test.serial('berth serve: the HTTP route, web endpoints and a @fetchApp continue a traceparent header; nested calls keep it; an invalid one starts a new trace', async (t) => {
  const { http } = await served(t)
  const post = async (path: string, body: string, headers: Record<string, string>) => {
    const res = await fetch(`http://${http}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body })
    t.is(res.status, 200, path)
    return res.json() as Promise<any>
  }
  continuesSent(t, await post('/traced/inner', '[1]', { traceparent: SENT }), 'HTTP route')
  const nested = (await post('/traced/outer', '[]', { traceparent: SENT })) as Outer
  continuesSent(t, nested.mine, 'HTTP route, outer')
  t.is(nestedKeepTheTrace(t, nested, 'HTTP'), TRACE_ID)

  const hook = await post('/traced/Web/hook', '{}', { traceparent: SENT })
  continuesSent(t, hook.traceparent, '@webEndpoint')
  t.is(hook.header, SENT, 'the header is on the Request as sent')
  const api = await post('/traced/api/anything', 'x', { traceparent: SENT })
  continuesSent(t, api.traceparent, '@fetchApp')
  t.is(api.header, SENT)

  // Invalid: upper case, all-zero ids, version ff, garbage. Never an error: a new trace.
  const seen = new Set<string>()
  for (const bad of [SENT.toUpperCase(), '00-00000000000000000000000000000000-b7ad6b7169203331-01', `ff${SENT.slice(2)}`, 'hello', '']) {
    const p = parts(await post('/traced/inner', '[1]', { traceparent: bad }))
    t.not(p.trace, TRACE_ID, bad)
    t.is(p.flags, '01', 'a trace berth starts is sampled')
    seen.add(p.trace)
  }
  const none = (await post('/traced/outer', '[]', {})) as Outer
  seen.add(nestedKeepTheTrace(t, none, 'HTTP without a header'))
  t.is(seen.size, 6, 'each call without a valid header starts a trace of its own')
})

test.serial('berth serve: a plain gRPC client sends traceparent metadata on Invoke, Map, Spawn and InvokeStream', async (t) => {
  const { address } = await served(t)
  const client = new Functions(address, grpc.credentials.createInsecure())
  t.teardown(() => client.close())
  const md = () => {
    const m = new grpc.Metadata()
    m.set('traceparent', SENT)
    return m
  }
  const ref = (f: string) => ({ app: 'traced', function: f })
  const unary = (rpc: string, req: unknown, m = md()) =>
    new Promise<any>((resolve, reject) => client[rpc](req, m, deadline(), (e: unknown, r: unknown) => (e ? reject(e) : resolve(r))))

  const invoked = await unary('Invoke', { function: ref('inner'), args: cbor.encode([1]) })
  continuesSent(t, cbor.decode(invoked.result.value), 'Invoke')
  const outer = cbor.decode((await unary('Invoke', { function: ref('outer'), args: cbor.encode([]) })).result.value) as Outer
  continuesSent(t, outer.mine, 'Invoke outer')
  nestedKeepTheTrace(t, outer, 'gRPC')

  const { functionCallId } = await unary('Spawn', { function: ref('inner'), args: cbor.encode([1]) })
  const got = await unary('GetResult', { functionCallId, timeout: 30 }, new grpc.Metadata())
  continuesSent(t, cbor.decode(got.result.value), 'Spawn')

  const mapped = await new Promise<string[]>((resolve, reject) => {
    const out: string[] = []
    const stream = client.Map(md(), deadline())
    stream.on('data', (r: any) => out.push(cbor.decode(r.result.value)))
    stream.on('error', reject)
    stream.on('end', () => resolve(out))
    stream.write({ function: ref('inner') })
    for (let i = 0; i < 5; i++) stream.write({ input: { index: i, args: cbor.encode([i]) } })
    stream.end()
  })
  t.is(mapped.length, 5)
  for (const tp of mapped) continuesSent(t, tp, 'Map')
  t.is(new Set(mapped.map((tp) => parts(tp).span)).size, 5, 'a span id per input of the Map call')

  const streamed = await new Promise<string[]>((resolve, reject) => {
    const out: string[] = []
    const call = client.InvokeStream({ function: ref('gen'), args: cbor.encode([]) }, md(), deadline())
    call.on('data', (item: any) => out.push(cbor.decode(item.value)))
    call.on('error', reject)
    call.on('end', () => resolve(out))
  })
  t.is(streamed.length, 1)
  continuesSent(t, streamed[0], 'InvokeStream')

  const invalid = new grpc.Metadata()
  invalid.set('traceparent', 'not-a-traceparent')
  const fresh = parts(cbor.decode((await unary('Invoke', { function: ref('inner'), args: cbor.encode([1]) }, invalid)).result.value))
  t.not(fresh.trace, TRACE_ID, 'invalid metadata: a new trace, no error')
})

test.serial('berth serve: Map calls served at once by one container: each input sees its own call\'s id and trace', async (t) => {
  // The control plane sends an input's call id and trace only when they differ from the previous
  // input's on that container (containers.proto `ExecInput`): inputs of several calls, their
  // executions interleaved, must each still see their own.
  const { address } = await served(t)
  const client = new Functions(address, grpc.credentials.createInsecure())
  t.teardown(() => client.close())
  const N = 400
  const CALLS = 6
  const traceOf = (k: number) => `${String(k + 1).padStart(2, '0')}${TRACE_ID.slice(2)}`
  const map = (k: number) =>
    new Promise<{ fc: string; got: { fc: string; traceparent: string }[] }>((resolve, reject) => {
      const got: { fc: string; traceparent: string }[] = []
      let fc = ''
      const m = new grpc.Metadata()
      // Calls 0-2 continue a trace of their own, 3-5 send none (berth starts one each).
      if (k < 3) m.set('traceparent', `00-${traceOf(k)}-b7ad6b7169203331-01`)
      const stream = client.Map(m, deadline())
      stream.on('metadata', (md: grpc.Metadata) => (fc = String(md.get('berth-function-call-id')[0])))
      stream.on('data', (r: any) => got.push(cbor.decode(r.result.value)))
      stream.on('error', reject)
      stream.on('end', () => resolve({ fc, got }))
      stream.write({ function: { app: 'traced', function: 'ids' } })
      // Written in rounds, so that the calls' inputs reach the scheduler interleaved.
      let i = 0
      const round = () => {
        for (const end = Math.min(N, i + 20); i < end; i++) stream.write({ input: { index: i, args: cbor.encode([i]) } })
        if (i < N) setImmediate(round)
        else stream.end()
      }
      round()
    })
  const calls = await Promise.all(Array.from({ length: CALLS }, (_, k) => map(k)))
  const traces = new Set<string>()
  calls.forEach(({ fc, got }, k) => {
    t.regex(fc, /^fc-\d+$/, `call ${k} names its id`)
    t.is(got.length, N)
    t.deepEqual([...new Set(got.map((g) => g.fc))], [fc], `every input of call ${k} sees its id`)
    const own = [...new Set(got.map((g) => parts(g.traceparent).trace))]
    t.is(own.length, 1, `every input of call ${k} sees one trace`)
    if (k < 3) t.is(own[0], traceOf(k), `call ${k} continues its caller's trace`)
    traces.add(own[0])
  })
  t.is(new Set(calls.map((c) => c.fc)).size, CALLS, 'a call id per call')
  t.is(traces.size, CALLS, 'a trace per call')
})

test.serial("berth serve: TypeScript calls from outside an input start a trace, which the input's own calls continue", async (t) => {
  const { address } = await served(t)
  const { App, Function } = await import('berth')
  App.lookup('traced', { server: `http://${address}` })
  const outer = Function.fromName<() => Promise<Outer>>('traced', 'outer')
  const a = nestedKeepTheTrace(t, await outer.remote(), '.remote()')
  const b = nestedKeepTheTrace(t, await (await outer.spawn()).get({ timeout: 30 }), '.spawn()')
  const mapped: Outer[] = []
  for await (const o of outer.starmap([[], []])) mapped.push(o)
  const m = mapped.map((o) => nestedKeepTheTrace(t, o, '.map()'))
  t.is(m[0], m[1], 'one trace per .map()')
  t.is(new Set([a, b, m[0]]).size, 3, 'a trace per call')
})

for (const containers of ['process', 'embedded']) {
  test.serial(`npx berth run --containers ${containers}: calls made in an input keep its trace`, async (t) => {
    const dir = traced()
    removedAtEnd(t, dir)
    const child = spawn('npx', ['berth', 'run', 'app.ts', '--containers', containers], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    let err = ''
    child.stdout.on('data', (d) => (out += d))
    child.stderr.on('data', (d) => (err += d))
    const code = await closed(child)
    t.is(code, 0, err)
    const o = JSON.parse(out.trim().split('\n').pop()!) as Outer
    t.is(parts(o.mine).flags, '01')
    nestedKeepTheTrace(t, o, containers)
  })
}
