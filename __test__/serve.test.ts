// `berth serve` from the outside: a gRPC client that is not berth's code (@grpc/grpc-js with
// @grpc/proto-loader reading proto/ only), containers as child processes.
import test from 'ava'
import { execFileSync, spawn } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import grpc from '@grpc/grpc-js'

import { Functions, cbor, deadline, invoke, root, serve, stopsCleanly } from './_served.ts'
import { closed } from './_util.ts'

test.serial('berth serve: a plain gRPC client calls functions and class methods; SIGTERM runs exit hooks and exits 0', async (t) => {
  const s = await serve()
  t.teardown(() => s.child.kill('SIGKILL'))
  const client = new Functions(s.address, grpc.credentials.createInsecure())

  const sq = await invoke(client, 'square', [4])
  t.is(cbor.decode(sq.result.value), 16)
  t.regex(sq.functionCallId, /^fc-\d+$/)

  const values = [1.5, 'x', new Map<unknown, unknown>([[1, 'a']]), new Set([2]), new Date(0), new Uint8Array([9]), 10n ** 20n, { a: [null] }]
  const echoed = cbor.decode((await invoke(client, 'echo', [values])).result.value) as unknown[]
  // cbor-x hands byte strings back as Buffer (a Uint8Array); compare the bytes as Uint8Array.
  t.true(echoed[5] instanceof Uint8Array)
  echoed[5] = new Uint8Array(echoed[5] as Uint8Array)
  t.deepEqual(echoed, values)

  const boom = await invoke(client, 'boom', ['nope'])
  t.is(boom.result.error.name, 'TypeError')
  t.is(boom.result.error.message, 'nope')
  t.regex(boom.result.error.stack, /boom/)

  const embed = await invoke(client, 'Embedder', ['hello'], { method: 'embed', params: cbor.encode({ model: 'big' }) })
  t.deepEqual(cbor.decode(embed.result.value), [5, 'big'])

  const many = await Promise.all([1, 2, 3, 4].map((x) => invoke(client, 'Embedder', [x], { method: 'many' })))
  t.deepEqual(many.map((r) => cbor.decode(r.result.value)), [2, 3, 4, 5])

  const notFound = await invoke(client, 'cube', [1]).catch((e) => e)
  t.is(notFound.code, grpc.status.NOT_FOUND)
  t.regex(notFound.details, /square/)
  const malformed = await new Promise<any>((r) => client.Invoke({ function: { app: 'served', function: 'square' }, args: Buffer.from([0xff]) }, deadline(), (e: unknown) => r(e)))
  t.is(malformed.code, grpc.status.INVALID_ARGUMENT)

  client.close()
  await stopsCleanly(t, s)
  const log = readFileSync(s.marker, 'utf8').trim().split('\n')
  t.true(log.includes('enter big') && log.includes('enter mini'), log.join('\n'))
  t.true(log.includes('exit big') && log.includes('exit mini'), 'each container ran its @exit in its own process:\n' + log.join('\n'))
  t.true(log.some((l) => /^batch [2-4]$/.test(l)), 'concurrent calls were batched:\n' + log.join('\n'))
})

test.serial('berth serve --http-port: functions and class methods answer JSON over HTTP', async (t) => {
  const s = await serve()
  t.teardown(() => s.child.kill('SIGKILL'))
  const post = async (path: string, body: string) => {
    const r = await fetch(`http://${s.http}${path}`, { method: 'POST', body, headers: { 'content-type': 'application/json' } })
    return { status: r.status, json: (await r.json()) as any }
  }
  t.deepEqual(await post('/served/square', '[7]'), { status: 200, json: 49 })
  t.deepEqual(await post('/served/Embedder/embed', '{"args":["hello"],"params":{"model":"big"}}'), { status: 200, json: [5, 'big'] })
  // Results cross as CBOR and come back as JSON: Map → object, Set → array, bytes → base64.
  const echoed = await post('/served/echo', '[{"a":[1,2.5,null,true],"s":"x"}]')
  t.deepEqual(echoed, { status: 200, json: { a: [1, 2.5, null, true], s: 'x' } })
  const boom = await post('/served/boom', '["from http"]')
  t.is(boom.status, 500)
  t.is(boom.json.error.name, 'TypeError')
  t.is(boom.json.error.message, 'from http')
  t.regex(boom.json.error.stack, /boom/)
  const unknown = await post('/served/cube', '[1]')
  t.is(unknown.status, 404)
  t.regex(unknown.json.error.message, /square/, 'names what exists')
  t.is((await post('/served/square', '[1,')).status, 400)
  const health = await fetch(`http://${s.http}/healthz`)
  t.is(await health.text(), 'ok')
  await stopsCleanly(t, s)
})

test.serial('berth serve beyond loopback needs --token, and callers must send it', async (t) => {
  const refused = spawn(process.execPath, [join(root, 'bin/berth.mjs'), 'serve', join(root, '__test__/fixtures/served.ts'), '--host', '0.0.0.0', '--grpc-port', '0'], { stdio: ['ignore', 'pipe', 'pipe'] })
  let err = ''
  refused.stderr!.on('data', (d) => (err += d))
  const code = await closed(refused)
  t.is(code, 2)
  t.regex(err, /--token/)

  const s = await serve(['--token', 's3cret'])
  t.teardown(() => s.child.kill('SIGKILL'))
  const anon = new Functions(s.address, grpc.credentials.createInsecure())
  const e = await invoke(anon, 'square', [2]).catch((x) => x)
  t.is(e.code, grpc.status.UNAUTHENTICATED)
  const meta = new grpc.Metadata()
  meta.set('authorization', 'Bearer s3cret')
  const ok = await new Promise<any>((resolve, reject) =>
    anon.Invoke({ function: { app: 'served', function: 'square' }, args: cbor.encode([3]) }, meta, deadline(), (x: unknown, r: unknown) => (x ? reject(x) : resolve(r))),
  )
  t.is(cbor.decode(ok.result.value), 9)
  anon.close()
  const post = (headers: Record<string, string>) => fetch(`http://${s.http}/served/square`, { method: 'POST', body: '[5]', headers })
  t.is((await post({})).status, 401, 'the HTTP ingress asks for the token too')
  t.is((await post({ authorization: 'Bearer wrong' })).status, 401)
  const viaHttp = await post({ authorization: 'Bearer s3cret' })
  t.is(viaHttp.status, 200)
  t.is(await viaHttp.json(), 25)
  await stopsCleanly(t, s)
})

test.serial('--max-message-bytes: a larger request is RESOURCE_EXHAUSTED over gRPC and 413 over HTTP; smaller ones pass', async (t) => {
  const s = await serve(['--max-message-bytes', '4096'])
  t.teardown(() => s.child.kill('SIGKILL'))
  const client = new Functions(s.address, grpc.credentials.createInsecure())
  const big = 'x'.repeat(8192)
  const refused = await invoke(client, 'echo', [big]).catch((e) => e)
  t.is(refused.code, grpc.status.RESOURCE_EXHAUSTED, String(refused.details))
  const small = await invoke(client, 'echo', ['x'.repeat(1000)])
  t.is(cbor.decode(small.result.value), 'x'.repeat(1000))
  const http = await fetch(`http://${s.http}/served/echo`, { method: 'POST', body: JSON.stringify([big]) })
  t.is(http.status, 413)
  client.close()
  await stopsCleanly(t, s)
})

test.serial('kill -9 of a container under load: 1000 inputs through Map, none lost, none twice', async (t) => {
  const s = await serve()
  t.teardown(() => s.child.kill('SIGKILL'))
  const client = new Functions(s.address, grpc.credentials.createInsecure())
  const n = 1000
  const stream = client.Map(deadline())
  const got = new Map<number, [number, number]>()
  let duplicates = 0
  const done = new Promise<void>((resolve, reject) => {
    stream.on('data', (m: any) => {
      const i = Number(m.index)
      if (got.has(i)) duplicates++
      got.set(i, m.result.value ? (cbor.decode(m.result.value) as [number, number]) : [NaN, 0])
    })
    stream.on('end', resolve)
    stream.on('error', reject)
  })
  stream.write({ function: { app: 'served', function: 'slowSquare' } })
  for (let i = 0; i < n; i++) stream.write({ input: { index: i, args: cbor.encode([i]) } })
  stream.end()
  // Once results flow, kill one container process of the server with SIGKILL.
  const waitUntil = Date.now() + 20_000
  while (got.size < 100 && Date.now() < waitUntil) await new Promise((r) => setTimeout(r, 10))
  const kids = execFileSync('pgrep', ['-P', String(s.child.pid)]).toString().trim().split('\n').map(Number)
  // A container that has served inputs (not the warm spare, which is a child too).
  const victim = [...got.values()][0][1]
  t.true(kids.includes(victim), 'containers are child processes of berth serve')
  const atKill = got.size
  process.kill(victim, 'SIGKILL')
  t.true(atKill < n, `the kill landed mid-run (${atKill}/${n} results so far)`)
  await Promise.race([done, new Promise((_, r) => setTimeout(() => r(new Error(`only ${got.size}/${n} results in 60 s`)), 60_000))])
  t.is(duplicates, 0)
  t.is(got.size, n)
  for (let i = 0; i < n; i++) t.is(got.get(i)![0], i * i, `input ${i}`)
  t.regex(s.stdout(), new RegExp(`berth: container \\d+ of served/slowSquare \\(pid ${victim}\\) was killed by signal 9`), 'the server logs the crash')
  client.close()
  await stopsCleanly(t, s)
})

test.serial('Function.fromName / Cls.fromName reach a served app from another process', async (t) => {
  const { App, Function, Cls, RemoteError, InvalidError } = await import('berth')
  const s = await serve()
  t.teardown(() => s.child.kill('SIGKILL'))
  App.lookup('served', { server: `http://${s.address}` })
  type Square = (x: number) => Promise<number>
  const square = Function.fromName<Square>('served', 'square')
  t.is(await square.remote(7), 49)
  const ys: number[] = []
  for await (const y of square.map([1, 2, 3])) ys.push(y)
  t.deepEqual(ys, [1, 4, 9])
  const fc = await square.spawn(5)
  t.regex(fc.objectId, /^fc-\d+$/)
  t.is(await fc.get(), 25)

  interface Embedder {
    embed(text: string): Promise<[number, string]>
    many(xs: number[]): Promise<number[]>
  }
  const e = Cls.fromName<Embedder>('served', 'Embedder', { model: 'remote' })
  t.deepEqual(await e.embed.remote('abc'), [3, 'remote'])
  t.deepEqual(await Promise.all([10, 20].map((x) => e.many.remote(x))), [11, 21])

  const boom = Function.fromName<(m: string) => Promise<never>>('served', 'boom')
  const err = await t.throwsAsync(boom.remote('bad input'), { instanceOf: RemoteError })
  t.is(err?.remoteName, 'TypeError')
  t.is(err?.message, 'bad input')
  await t.throwsAsync(Function.fromName('served', 'cube').remote(1), { instanceOf: InvalidError, message: /no function or class 'cube'.*square/ })
  await stopsCleanly(t, s)
})

test.serial('leaving a remote map() early (break) cancels its inputs on the server instead of running them for nobody', async (t) => {
  const { App, Function } = await import('berth')
  const s = await serve()
  t.teardown(() => s.child.kill('SIGKILL'))
  App.lookup('served', { server: `http://${s.address}` })
  const tick = Function.fromName<(x: number) => Promise<number>>('served', 'tick')
  const n = 40
  const got: number[] = []
  for await (const y of tick.map(Array.from({ length: n }, (_, i) => i))) {
    got.push(y)
    if (got.length === 2) break
  }
  t.deepEqual(got, [0, 1])
  const ran = () => readFileSync(s.marker, 'utf8').split('\n').filter((l) => l.startsWith('tick ')).length
  // Two at a time, 100 ms each: all 40 would take 2 s. Wait past that and count.
  await new Promise((r) => setTimeout(r, 2500))
  const started = ran()
  t.true(started < n / 2, `${started} of ${n} inputs started after the caller left`)
  // The server is still in shape for the next caller.
  t.is(await tick.remote(99), 99)
  await stopsCleanly(t, s)
})

test.serial('an @enter that throws in a container process: callers get InitError with the original error, no @exit, restarts back off', async (t) => {
  const { App, Cls, InitError } = await import('berth')
  const s = await serve()
  t.teardown(() => s.child.kill('SIGKILL'))
  App.lookup('served', { server: `http://${s.address}` })
  const bad = Cls.fromName<{ run(): Promise<string> }>('served', 'BadEnter')
  const e = await t.throwsAsync(bad.run.remote(), { instanceOf: InitError })
  t.is(e!.message, 'weights missing', 'the hook\'s message, as embedded containers give it')
  t.is((e as any).remoteName, 'RangeError')
  t.regex((e as any).remoteStack ?? '', /load/, 'the stack of the throwing hook comes along')
  await new Promise((r) => setTimeout(r, 1500))
  await t.throwsAsync(bad.run.remote(), { instanceOf: InitError })
  const log = readFileSync(s.marker, 'utf8').split('\n')
  const enters = log.filter((l) => l.startsWith('bad-enter')).length
  t.true(enters >= 2, 'the container was started again')
  t.true(enters <= 6, `restarted with backoff, not in a hot loop (${enters} starts in ~1.5 s)`)
  t.false(log.some((l) => l.startsWith('bad-exit')), '@exit does not run after a failed @enter')
  await stopsCleanly(t, s)
})

test.serial('the first container process is started while berth serve still loads the file, and serves the first call', async (t) => {
  const s = await serve()
  t.teardown(() => s.child.kill('SIGKILL'))
  const client = new Functions(s.address, grpc.credentials.createInsecure())
  const containerPid = cbor.decode((await invoke(client, 'pid', [])).result.value) as number
  // When that process started, in epoch ms: /proc/<pid>/stat field 22 (clock ticks since boot,
  // 100 per second) against /proc/uptime, both read now.
  const ticks = Number(readFileSync(`/proc/${containerPid}/stat`, 'utf8').split(') ')[1].split(' ')[19])
  const uptimeMs = Number(readFileSync('/proc/uptime', 'utf8').split(' ')[0]) * 1000
  const startedAt = Date.now() - (uptimeMs - ticks * 10)
  const loadedAt = Number(/server-loaded-at (\d+)/.exec(readFileSync(s.marker, 'utf8'))![1])
  t.true(startedAt < loadedAt, `the container started ${startedAt - loadedAt} ms after the server loaded the file`)
  client.close()
  await stopsCleanly(t, s)
})

for (const signal of ['SIGTERM', 'SIGINT'] as const)
test.serial(`${signal} to one container: it finishes its inputs, runs @exit and exits; the rest move on, none lost`, async (t) => {
  const s = await serve()
  t.teardown(() => s.child.kill('SIGKILL'))
  const client = new Functions(s.address, grpc.credentials.createInsecure())
  const n = 400
  const stream = client.Map(deadline())
  const got = new Map<number, [number, number]>()
  let duplicates = 0
  const done = new Promise<void>((resolve, reject) => {
    stream.on('data', (m: any) => {
      if (got.has(Number(m.index))) duplicates++
      if (!m.result.value) return reject(new Error(`input ${m.index} failed: ${JSON.stringify(m.result.error)}`))
      got.set(Number(m.index), cbor.decode(m.result.value) as [number, number])
    })
    stream.on('end', resolve)
    stream.on('error', reject)
  })
  stream.write({ function: { app: 'served', function: 'SlowWorker', method: 'work' } })
  for (let i = 0; i < n; i++) stream.write({ input: { index: i, args: cbor.encode([i]) } })
  stream.end()
  const waitUntil = Date.now() + 20_000
  while (got.size < 40 && Date.now() < waitUntil) await new Promise((r) => setTimeout(r, 5))
  const victim = [...got.values()][0][1]
  const atSignal = got.size
  process.kill(victim, signal)
  await done
  t.true(atSignal < n, `the signal landed mid-run (${atSignal}/${n})`)
  t.is(duplicates, 0)
  t.is(got.size, n)
  for (let i = 0; i < n; i++) t.is(got.get(i)![0], i)
  const servedBy = new Set([...got.values()].map(([, pid]) => pid))
  t.true(servedBy.size >= 2, 'the remaining inputs moved to another container')
  t.true(readFileSync(s.marker, 'utf8').includes(`slow-exit ${victim}\n`), 'the signalled container ran its @exit')
  const gone = await new Promise<boolean>((resolve) => {
    const until = Date.now() + 10_000
    const poll = () => {
      try {
        process.kill(victim, 0)
        if (Date.now() > until) resolve(false)
        else setTimeout(poll, 50)
      } catch {
        resolve(true)
      }
    }
    poll()
  })
  t.true(gone, 'the signalled container process exited')
  client.close()
  await stopsCleanly(t, s)
})

test.serial('a container killed before it attaches fails waiting calls with InitError at once, and stop still completes', async (t) => {
  const s = await serve([], { SLOW_CONTAINER_START: '5000' })
  t.teardown(() => s.child.kill('SIGKILL'))
  const client = new Functions(s.address, grpc.credentials.createInsecure())
  const started = Date.now()
  const call = invoke(client, 'square', [3])
  let kids: number[] = []
  while (kids.length === 0 && Date.now() - started < 4000) {
    await new Promise((r) => setTimeout(r, 50))
    try {
      kids = execFileSync('pgrep', ['-P', String(s.child.pid)]).toString().trim().split('\n').map(Number)
    } catch {}
  }
  t.true(kids.length > 0, 'a container process was started for the call')
  process.kill(kids[0], 'SIGKILL')
  const r = await call
  t.is(r.result.error.name, 'InitError')
  t.regex(r.result.error.message, /signal 9/)
  t.true(Date.now() - started < 5000, 'answered when the process died, not at the startup timeout')
  client.close()
  await stopsCleanly(t, s)
})
