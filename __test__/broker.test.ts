// Broker mode (ARCHITECTURE.md, "A broker"), started as users start it: `npx berth serve app.ts --broker`
// (the front) and `npx berth worker app.ts --broker` (workers), with NATS JetStream on
// 127.0.0.1:4222. Each test serves an app of its own name (its own streams) and removes the
// streams it made. Skipped, saying so, when nothing answers on 4222.
import test, { type ExecutionContext } from 'ava'
import { type ChildProcess, spawn } from 'node:child_process'
import { copyFileSync, existsSync, readFileSync, writeFileSync } from 'node:fs'
import { connect } from 'node:net'
import { join } from 'node:path'

import { berth } from './_cli.ts'
import { npxServe, processesIn, userProject } from './_project.ts'
import { root } from './_served.ts'
import { sleep, until, within } from './_util.ts'

const URL = 'nats://127.0.0.1:4222'

/** Whether a NATS server with JetStream answers on 4222 (its INFO says so). */
function natsUp(): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = connect(4222, '127.0.0.1')
    const done = (up: boolean) => {
      sock.destroy()
      resolve(up)
    }
    sock.setTimeout(2000, () => done(false))
    sock.on('error', () => done(false))
    sock.once('data', (d) => done(/^INFO .*"jetstream":true/.test(String(d))))
  })
}

/** Deletes JetStream streams over the NATS protocol itself (`nats stream rm`), waiting for each answer. */
async function removeStreams(streams: string[]): Promise<void> {
  const sock = connect(4222, '127.0.0.1')
  let buf = ''
  sock.setEncoding('utf8').on('data', (d: string) => (buf += d))
  await new Promise((resolve, reject) => sock.once('connect', resolve).once('error', reject))
  sock.write('CONNECT {"verbose":false,"pedantic":false}\r\nSUB _INBOX.berth-test 1\r\n')
  for (const s of streams) sock.write(`PUB $JS.API.STREAM.DELETE.${s} _INBOX.berth-test 0\r\n\r\n`)
  await until(() => (buf.match(/MSG _INBOX\.berth-test/g) ?? []).length >= streams.length, 10_000, `deleting ${streams.join(', ')}`)
  sock.end()
}

/** A JetStream consumer's counts (`nats consumer info`): messages not delivered yet, and delivered but not acked. */
async function consumerCounts(stream: string): Promise<{ pending: number; unacked: number }> {
  const sock = connect(4222, '127.0.0.1')
  let buf = ''
  sock.setEncoding('utf8').on('data', (d: string) => (buf += d))
  await new Promise((resolve, reject) => sock.once('connect', resolve).once('error', reject))
  sock.write(`CONNECT {"verbose":false,"pedantic":false}\r\nSUB _INBOX.berth-info 1\r\nPUB $JS.API.CONSUMER.INFO.${stream}.workers _INBOX.berth-info 0\r\n\r\n`)
  await until(() => /MSG _INBOX\.berth-info 1 \d+\r\n.*\r\n/.test(buf), 10_000, `consumer info of ${stream}`)
  sock.end()
  const info = JSON.parse(/MSG _INBOX\.berth-info 1 \d+\r\n(.*)\r\n/.exec(buf)![1]) as { num_pending: number; num_ack_pending: number }
  return { pending: info.num_pending, unacked: info.num_ack_pending }
}

let apps = 0
/**
 * A user's project serving fixtures/broker.ts under a new app name, NATS checked first; its
 * stream is removed at teardown. `undefined` (the test passes, saying why) without NATS.
 */
async function brokerProject(t: ExecutionContext): Promise<{ dir: string; app: string } | undefined> {
  if (!(await natsUp())) {
    console.log(`  ${t.title}: skipped: no NATS server with JetStream on 127.0.0.1:4222 (start one with nats-server -js)`)
    t.pass()
    return undefined
  }
  const app = `bt-${process.pid}-${++apps}-${Date.now().toString(36)}`
  // The pools' streams, and the bucket of spawned calls' results every front opens.
  t.teardown(() => removeStreams([...['square', 'flaky', 'broken', 'Model', 'Batcher', 'overlap', 'traced', 'count', 'Web', 'ticker', 'remember', 'take', 'writeVol', 'readVol'].map((f) => `berth__${app}__${f}`), `KV_berth__${app}`]))
  const dir = userProject('berth-broker-', (d) => copyFileSync(join(root, '__test__', 'fixtures', 'broker.ts'), join(d, 'app.ts')))
  return { dir, app }
}

/** `npx berth worker app.ts --broker …` in `dir`, tagged `tag` (its containers' WORKER_TAG); ready once it pulls. */
async function npxWorker(dir: string, tag: string, env: Record<string, string>, extra: string[] = []): Promise<{ npx: ChildProcess; out: () => string }> {
  const npx = spawn('npx', ['berth', 'worker', 'app.ts', '--broker', URL, ...extra], {
    cwd: dir,
    env: { ...process.env, ...env, WORKER_TAG: tag },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let out = ''
  npx.stdout!.on('data', (d) => (out += d))
  npx.stderr!.on('data', (d) => (out += d))
  await until(() => /pulling from berth__/.test(out) || npx.exitCode !== null, 60_000, () => `worker ${tag} to start\n${out}`)
  if (npx.exitCode !== null) throw new Error(`worker ${tag} exited ${npx.exitCode}:\n${out}`)
  return { npx, out: () => out }
}

/** Whether process `pid`'s environment has `entry` (`NAME=value`). */
function taggedWith(pid: number, entry: string): boolean {
  try {
    return readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0').includes(entry)
  } catch {
    return false
  }
}

/** The processes of `dir` whose environment has `WORKER_TAG=tag`: that worker, npx and its containers. */
function workerProcesses(dir: string, tag: string): number[] {
  return processesIn(dir).filter((pid) => taggedWith(pid, `WORKER_TAG=${tag}`))
}

/** SIGTERM to every npx started: each berth process drains and exits, and takes its containers with it. */
async function stopAll(t: ExecutionContext, dir: string, npxs: ChildProcess[]): Promise<void> {
  for (const n of npxs) n.kill('SIGTERM')
  await until(() => processesIn(dir).length === 0, 30_000, 'every process of the project to exit').catch(() => {})
  t.deepEqual(processesIn(dir), [], 'no process outlives the test')
}

type Square = (x: number) => Promise<{ y: number; by: string }>

test.serial('broker mode: .remote(), .map(), a class method with parameters and the HTTP route through a front and two workers; both work, every input has one result', async (t) => {
  if (process.platform !== 'linux') return t.pass('reads /proc')
  const p = await brokerProject(t)
  if (!p) return
  const env = { BROKER_APP: p.app, SLEEP_MS: '20', SAY: '1' }
  const front = npxServe(t, p.dir, ['--broker', URL], env)
  await until(() => /serving .* on 127\.0\.0\.1:\d+/.test(front.out()), 60_000, () => `the front to listen\n${front.out()}`)
  const address = /serving .* on (127\.0\.0\.1:\d+)/.exec(front.out())![1]
  const http = /and (http:\/\/127\.0\.0\.1:\d+)\//.exec(front.out())![1]
  const a = await npxWorker(p.dir, 'A', env)
  const b = await npxWorker(p.dir, 'B', env)

  const { App, Cls, Function } = await import('berth')
  App.lookup(p.app, { server: `http://${address}` })
  const square = Function.fromName<Square>(p.app, 'square')
  t.is((await within(60_000, square.remote(3), '.remote()')).y, 9)
  // A worker's containers' lines are named, and their starts logged, as under berth serve.
  const workers = () => a.out() + b.out()
  await until(() => workers().includes('squaring 3'), 10_000, `the worker's container line\n${workers()}`)
  t.regex(workers(), new RegExp(`^${p.app}/square#\\d+ \\| squaring 3$`, 'm'))
  t.regex(workers(), new RegExp(`^berth: container \\d+ of ${p.app}/square \\(pid \\d+\\) started$`, 'm'))

  const n = 200
  const results: { y: number; by: string }[] = []
  await within(120_000, (async () => {
    for await (const r of square.map(Array.from({ length: n }, (_, i) => i))) results.push(r)
  })(), '.map()')
  t.is(results.length, n, 'one result per input')
  t.true(results.every((r, i) => r.y === i * i), 'each input its own result, in order')
  const by = new Set(results.map((r) => r.by))
  t.deepEqual([...by].sort(), ['A', 'B'], 'both workers ran inputs')

  const model = Cls.fromName<{ describe(x: number): Promise<string> }>(p.app, 'Model', { variant: 'big' })
  t.regex(await within(60_000, model.describe.remote(2), 'a class method'), /^big:2:[AB]$/, 'the class parameters reach the worker')

  const res = await fetch(`${http}/${p.app}/square`, { method: 'POST', body: '[5]' })
  t.is(res.status, 200)
  t.is(((await res.json()) as { y: number }).y, 25)

  const containers = processesIn(p.dir, ['__container'])
  t.true(containers.length >= 2, 'the workers run containers')
  t.deepEqual(containers.filter((pid) => !workerProcesses(p.dir, 'A').includes(pid) && !workerProcesses(p.dir, 'B').includes(pid)), [], 'the front runs none')
  await stopAll(t, p.dir, [front.npx, a.npx, b.npx])
})

/** A project, the file its runs are noted in, a front on it, listening, and its `square`; none when skipped. */
async function runsFront(t: ExecutionContext) {
  const p = await brokerProject(t)
  if (!p) return undefined
  const runs = join(p.dir, 'runs')
  const env = { BROKER_APP: p.app, RUNS: runs }
  const front = npxServe(t, p.dir, ['--broker', URL], env)
  await until(() => /serving .* on 127\.0\.0\.1:\d+/.test(front.out()), 60_000, () => `the front to listen\n${front.out()}`)
  const address = /serving .* on (127\.0\.0\.1:\d+)/.exec(front.out())![1]
  const { App, Function } = await import('berth')
  App.lookup(p.app, { server: `http://${address}` })
  return { p, runs, env, front, square: Function.fromName<Square>(p.app, 'square') }
}

test.serial('broker mode: a @batched method gets batches the worker formed from what it pulled; a @concurrent function runs up to maxInputs at once in one container', async (t) => {
  if (process.platform !== 'linux') return t.pass('reads /proc')
  const f = await runsFront(t)
  if (!f) return
  const { p, runs, env, front } = f
  const w = await npxWorker(p.dir, 'W', env)
  const { Cls, Function } = await import('berth')
  const batcher = Cls.fromName<{ squares(x: number): Promise<number> }>(p.app, 'Batcher')
  const xs = Array.from({ length: 40 }, (_, i) => i)
  const squares: number[] = []
  await within(90_000, (async () => {
    for await (const y of batcher.squares.map(xs)) squares.push(y)
  })(), () => `the batched map\n${w.out()}`)
  t.deepEqual(squares, xs.map((x) => x * x), 'one result per input, in order')
  const sizes = readFileSync(runs, 'utf8').split('\n').filter((l) => l.startsWith('W batch ')).map((l) => Number(l.split(' ')[2]))
  t.is(sizes.reduce((a, b) => a + b, 0), 40, `every input in one batch: ${sizes}`)
  t.true(sizes.every((n) => n >= 1 && n <= 8), `no batch past maxBatchSize: ${sizes}`)
  t.true(Math.max(...sizes) > 1, `inputs pulled together were batched: ${sizes}`)

  const overlap = Function.fromName<(x: number) => Promise<{ x: number; peak: number }>>(p.app, 'overlap')
  const answers: { x: number; peak: number }[] = []
  await within(90_000, (async () => {
    for await (const r of overlap.map([1, 2, 3, 4, 5, 6, 7, 8])) answers.push(r)
  })(), () => `the concurrent map\n${w.out()}`)
  t.deepEqual(answers.map((a) => a.x), [1, 2, 3, 4, 5, 6, 7, 8])
  const peak = Math.max(...answers.map((a) => a.peak))
  t.true(peak > 1 && peak <= 4, `several at once, never past maxInputs 4: ${peak}`)
  await stopAll(t, p.dir, [front.npx, w.npx])
})

test.serial('broker mode: a worker SIGKILLed mid-run: its inputs run on another after the ack deadline, and each gets exactly one result', async (t) => {
  if (process.platform !== 'linux') return t.pass('reads /proc')
  const f = await runsFront(t)
  if (!f) return
  const { p, runs, env, front, square } = f
  // Worker A never finishes an input (within the function's 10 s timeout, before it is killed).
  const a = await npxWorker(p.dir, 'A', { ...env, SLEEP_MS: '9000' })

  const n = 4
  const results: { y: number; by: string }[] = []
  const mapped = (async () => {
    for await (const r of square.map(Array.from({ length: n }, (_, i) => i + 1))) results.push(r)
  })()
  const started = (tag: string) => (existsSync(runs) ? readFileSync(runs, 'utf8').split('\n').filter((l) => l.startsWith(`${tag} start`)) : [])
  // A holds what its containers have room for (maxContainers 2: running) and as much read
  // ahead (queued in A): all four.
  await until(() => started('A').length === 2, 60_000, () => `worker A to run two inputs\n${a.out()}`)
  const killed = workerProcesses(p.dir, 'A')
  t.true(killed.length >= 3, 'npx, berth worker and its containers')
  for (const pid of killed) process.kill(pid, 'SIGKILL')
  await until(() => workerProcesses(p.dir, 'A').length === 0, 10_000, 'worker A to be gone')

  const b = await npxWorker(p.dir, 'B', { ...env, SLEEP_MS: '0' })
  await within(90_000, mapped, 'the map after the worker died')
  t.is(results.length, n, 'one result per input')
  t.deepEqual(results.map((r) => r.y), [1, 4, 9, 16])
  t.true(results.every((r) => r.by === 'B'), 'worker B ran every input, the two A held included')
  const reran = started('A').map((l) => l.split(' ')[2])
  t.true(reran.every((x) => started('B').some((l) => l.endsWith(` ${x}`))), `the inputs A held ran again on B: ${readFileSync(runs, 'utf8')}`)
  await stopAll(t, p.dir, [front.npx, b.npx])
})

test.serial('broker mode: a worker stopped with SIGTERM gives back at once the inputs it read ahead and had not started; it finishes the running ones; each input runs once', async (t) => {
  if (process.platform !== 'linux') return t.pass('reads /proc')
  const f = await runsFront(t)
  if (!f) return
  const { p, runs, env, front, square } = f
  // A's inputs take 4 s: two run (maxContainers 2), two wait in A, read ahead.
  const a = await npxWorker(p.dir, 'A', { ...env, SLEEP_MS: '4000' })

  const results: { y: number; by: string }[] = []
  const mapped = (async () => {
    for await (const r of square.map([1, 2, 3, 4])) results.push(r)
  })()
  const started = (tag: string) => (existsSync(runs) ? readFileSync(runs, 'utf8').split('\n').filter((l) => l.startsWith(`${tag} start`)) : [])
  await until(() => started('A').length === 2, 60_000, () => `worker A to run two inputs\n${a.out()}`)
  // Stopped while its two run (4 s each), before B starts: B's start takes seconds under load,
  // and A, told later, would have started the two it read ahead by then.
  a.npx.kill('SIGTERM')
  const b = await npxWorker(p.dir, 'B', { ...env, SLEEP_MS: '0' })
  await within(60_000, mapped, 'the map after A stopped')
  t.deepEqual(results.map((r) => r.y), [1, 4, 9, 16], 'one result per input, in order')
  const ranA = started('A').map((l) => l.split(' ')[2])
  const ranB = started('B').map((l) => l.split(' ')[2])
  t.is(ranA.length, 2, `A ran only the two it had started: ${readFileSync(runs, 'utf8')}`)
  t.is(ranB.length, 2, `B ran the two A gave back: ${readFileSync(runs, 'utf8')}`)
  t.deepEqual([...ranA, ...ranB].sort(), ['1', '2', '3', '4'], 'each input ran once')
  t.deepEqual(
    results.map((r) => r.by),
    [1, 2, 3, 4].map((x) => (ranA.includes(String(x)) ? 'A' : 'B')),
    'each result is from the worker that ran it',
  )
  await stopAll(t, p.dir, [front.npx, a.npx, b.npx])
})

test.serial('broker mode: FunctionCall.fromId on another front: a call spawned through front A is read through front B, also once A is gone', async (t) => {
  if (process.platform !== 'linux') return t.pass('reads /proc')
  const f = await runsFront(t)
  if (!f) return
  const { p, env, front, square } = f
  const b = npxServe(t, p.dir, ['--broker', URL], { ...env, FRONT_TAG: 'B' })
  await until(() => /serving .* on 127\.0\.0\.1:\d+/.test(b.out()), 60_000, () => `front B to listen\n${b.out()}`)
  const onB = `http://${/serving .* on (127\.0\.0\.1:\d+)/.exec(b.out())![1]}`
  const w = await npxWorker(p.dir, 'W', { ...env, SLEEP_MS: '1500' })

  const { FunctionCall } = await import('berth')
  // Read on A, which spawned it, as before: the call's ids name their front.
  const here = await within(60_000, square.spawn(4), 'spawn on A')
  t.regex(here.objectId, /^fc-[0-9a-f]{16}-\d+$/)
  t.is((await within(60_000, here.get(), 'get on A')).y, 16)

  const call = await within(60_000, square.spawn(5), 'spawn on A')
  const elsewhere = FunctionCall.fromId<{ y: number; by: string }>(call.objectId, { server: onB })
  // Not done yet (the input takes 1.5 s): B says so rather than failing.
  await t.throwsAsync(elsewhere.get({ timeout: 0 }), { name: 'FunctionTimeoutError' })
  // Front A goes away (SIGKILL: no goodbye); the worker still finishes the call, and B has it.
  for (const pid of processesIn(p.dir).filter((pid) => !taggedWith(pid, 'FRONT_TAG=B') && !taggedWith(pid, 'WORKER_TAG=W'))) {
    process.kill(pid, 'SIGKILL')
  }
  t.deepEqual(await within(60_000, elsewhere.get(), 'get on B'), { y: 25, by: 'W' })
  // Kept for the result TTL: asked again, by another handle, the same.
  t.deepEqual(await within(30_000, FunctionCall.fromId(call.objectId, { server: onB }).get(), 'get on B again'), { y: 25, by: 'W' })
  // An id no front issued: not found, as before.
  await t.throwsAsync(FunctionCall.fromId('fc-nope', { server: onB }).get(), { message: /no spawned call or open Map call 'fc-nope'/ })
  await stopAll(t, p.dir, [front.npx, b.npx, w.npx])
})

test.serial('broker mode: a cancelled call is answered InputCancelledError and acked, never run again: one cancelled while it runs, one still in the stream cancelled through another front', async (t) => {
  if (process.platform !== 'linux') return t.pass('reads /proc')
  const f = await runsFront(t)
  if (!f) return
  const { p, runs, env, front, square } = f
  const b = npxServe(t, p.dir, ['--broker', URL], env)
  await until(() => /serving .* on 127\.0\.0\.1:\d+/.test(b.out()), 60_000, () => `front B to listen\n${b.out()}`)
  const onB = `http://${/serving .* on (127\.0\.0\.1:\d+)/.exec(b.out())![1]}`
  // Inputs take 6 s (square's timeout is 10 s): one that answers sooner was cut short.
  const w = await npxWorker(p.dir, 'W', { ...env, SLEEP_MS: '6000' })
  const { FunctionCall, InputCancelledError } = await import('berth')
  const started = () => (existsSync(runs) ? readFileSync(runs, 'utf8').split('\n').filter((l) => l.startsWith('W start')) : [])

  // Cancelled while it runs (its container sleeps 6 s).
  const running = await within(60_000, square.spawn(2), 'spawn')
  await until(() => started().includes('W start 2'), 60_000, () => `the input to start\n${w.out()}`)
  await running.cancel()
  const cut = await t.throwsAsync(within(30_000, running.get(), 'get() of the cancelled running call'))
  t.true(cut instanceof InputCancelledError, `cancelled while it ran: ${cut}`)

  // The worker holds 4 (maxContainers 2 running, 2 read ahead): the map's 10 and 11 run, 12
  // and 13 wait in the worker, and `queued` waits in the stream.
  const mapped: number[] = []
  const mapping = (async () => {
    for await (const r of square.map([10, 11, 12, 13])) mapped.push(r.y)
  })()
  await until(() => started().includes('W start 10') && started().includes('W start 11'), 60_000, () => `the map to start\n${w.out()}`)
  const queued = await within(60_000, square.spawn(1), 'spawn')
  // Cancelled through front B, which did not spawn it.
  await FunctionCall.fromId(queued.objectId, { server: onB }).cancel()
  const never = await t.throwsAsync(within(60_000, queued.get(), 'get() of the cancelled queued call'))
  t.true(never instanceof InputCancelledError, `cancelled in the stream: ${never}`)
  // Cancelling a call that is over (its result delivered) does nothing, on the front that ran it.
  const onA = `http://${/serving .* on (127\.0\.0\.1:\d+)/.exec(front.out())![1]}`
  await FunctionCall.fromId(running.objectId, { server: onA }).cancel()

  await within(60_000, mapping, 'the map')
  t.deepEqual(mapped, [100, 121, 144, 169], 'the other calls ran')
  t.false(started().includes('W start 1'), 'the queued call never ran')
  t.is(started().filter((l) => l === 'W start 2').length, 1, 'the running call ran once')
  // Settled: nothing left to deliver or to redeliver after an ack deadline.
  let counts = await consumerCounts(`berth__${p.app}__square`)
  for (let i = 0; i < 50 && counts.pending + counts.unacked > 0; i++) {
    await sleep(200)
    counts = await consumerCounts(`berth__${p.app}__square`)
  }
  t.deepEqual(counts, { pending: 0, unacked: 0 })
  await stopAll(t, p.dir, [front.npx, b.npx, w.npx])
})

test.serial('broker mode: a worker scales its containers with the work waiting for it, up to maxContainers, and stops them after scaledownWindow with nothing to do', async (t) => {
  if (process.platform !== 'linux') return t.pass('reads /proc')
  const p = await brokerProject(t)
  if (!p) return
  const env = { BROKER_APP: p.app, SLEEP_MS: '1500', SCALEDOWN_S: '2' }
  const front = npxServe(t, p.dir, ['--broker', URL], env)
  await until(() => /serving .* on 127\.0\.0\.1:\d+/.test(front.out()), 60_000, () => `the front to listen\n${front.out()}`)
  const address = /serving .* on (127\.0\.0\.1:\d+)/.exec(front.out())![1]
  // Without the warm spare (a container process started ahead of need, not yet any pool's),
  // the worker's container processes are its pool's containers.
  // Its log as JSON lines (README "Logs"), checked below.
  const w = await npxWorker(p.dir, 'W', { ...env, BERTH_WARM_SPARE: '0', SAY: '1' }, ['--log-format', 'json'])
  const containers = () => processesIn(p.dir, ['__container']).filter((pid) => taggedWith(pid, 'WORKER_TAG=W'))
  t.is(containers().length, 0, 'minContainers 0: none before the work')

  const { App, Function } = await import('berth')
  App.lookup(p.app, { server: `http://${address}` })
  const square = Function.fromName<Square>(p.app, 'square')
  // One call: one container.
  t.is((await within(60_000, square.remote(2), 'one call')).y, 4)
  t.is(containers().length, 1, 'one container for one call')
  // The worker's container line, as one JSON object: who printed it, in which input.
  await until(() => w.out().includes('squaring 2'), 10_000, () => `the container's line\n${w.out()}`)
  const said = w.out().split('\n').find((l) => l.includes('squaring 2'))!
  const line = JSON.parse(said) as Record<string, unknown>
  t.like(line, { app: p.app, function: 'square', stream: 'stdout', message: 'squaring 2' })
  t.true(typeof line.container === 'number' || typeof line.container === 'string', said)
  t.regex(String(line.input), /\S/, `printed inside an input: ${said}`)
  // The worker's own banner is an object too.
  const banner = w.out().split('\n').find((l) => l.includes('pulling from berth__'))!
  t.like(JSON.parse(banner), { stream: 'berth', level: 'info' }, banner)
  // Eight inputs of 1.5 s waiting: the worker scales to square's maxContainers (2), no further.
  let most = 0
  const watching = setInterval(() => (most = Math.max(most, containers().length)), 50)
  const results: number[] = []
  await within(90_000, (async () => {
    for await (const r of square.map([1, 2, 3, 4, 5, 6, 7, 8])) results.push(r.y)
  })(), () => `the map\n${w.out()}`)
  clearInterval(watching)
  t.deepEqual(results, [1, 4, 9, 16, 25, 36, 49, 64])
  t.is(most, 2, 'scaled up to maxContainers, and not past it')
  // Nothing to do for scaledownWindow (2 s): its containers stop; the worker stays.
  await until(() => containers().length === 0, 30_000, () => `the idle worker's containers to stop\n${w.out()}`)
  t.true(workerProcesses(p.dir, 'W').length > 0, 'the worker itself keeps running')
  t.is((await within(60_000, square.remote(3), 'a call after the scale-down')).y, 9, 'and scales up again for new work')
  await stopAll(t, p.dir, [front.npx, w.npx])
})

test.serial('broker mode: a failed attempt runs again after a nak with the Retries backoff, and the caller gets one result: the retry\'s, or the last failure; another version of the app is refused at start', async (t) => {
  if (process.platform !== 'linux') return t.pass('reads /proc')
  const p = await brokerProject(t)
  if (!p) return
  const runs = join(p.dir, 'runs')
  const env = { BROKER_APP: p.app, RUNS: runs, FLAKY_DIR: p.dir }
  const front = npxServe(t, p.dir, ['--broker', URL], env)
  await until(() => /serving .* on 127\.0\.0\.1:\d+/.test(front.out()), 60_000, () => `the front to listen\n${front.out()}`)
  const address = /serving .* on (127\.0\.0\.1:\d+)/.exec(front.out())![1]
  const w = await npxWorker(p.dir, 'A', env)

  const { App, Function, RemoteError } = await import('berth')
  App.lookup(p.app, { server: `http://${address}` })
  const flaky = Function.fromName<(key: string) => Promise<string>>(p.app, 'flaky')
  t.is(await within(60_000, flaky.remote('k1'), 'flaky'), 'k1: answered on a retry')
  const broken = Function.fromName<(key: string) => Promise<never>>(p.app, 'broken')
  const err = await t.throwsAsync(within(60_000, broken.remote('k2'), 'broken'), { instanceOf: RemoteError })
  t.is(err?.remoteName, 'RangeError')
  t.is(err?.message, 'broken k2')
  const log = readFileSync(runs, 'utf8')
  t.is(log.match(/flaky k1/g)?.length, 2, `the failed attempt and the retry: ${log}`)
  t.is(log.match(/broken k2/g)?.length, 2, `maxRetries 1: two attempts, then the error: ${log}`)
  await stopAll(t, p.dir, [front.npx, w.npx])

  // Another version of a function finds its stream made by this one: refused at start, with the fix.
  for (const cmd of [['serve', '--grpc-port', '0', '--http-port', '0'], ['worker']]) {
    const r = await within(60_000, berth([cmd[0], join(p.dir, 'app.ts'), '--broker', URL, ...cmd.slice(1)], { ...env, SQUARE_TIMEOUT: '11' }), cmd[0])
    t.is(r.code, 2, r.stderr)
    t.regex(r.stderr, new RegExp(`stream berth__${p.app}__square exists but does not match this app .*nats stream rm berth__${p.app}__square`), cmd[0])
  }
})

test('broker mode: an unreachable broker is an error at start naming its URL, for the front and for a worker', async (t) => {
  const app = join(root, '__test__', 'fixtures', 'broker.ts')
  for (const args of [
    ['serve', app, '--broker', 'nats://127.0.0.1:1', '--grpc-port', '0', '--http-port', '0'],
    ['worker', app, '--broker', 'nats://127.0.0.1:1'],
  ]) {
    const r = await within(30_000, berth(args), `berth ${args[0]}`)
    t.is(r.code, 2, r.stderr)
    t.regex(r.stderr, /NATS broker at nats:\/\/127\.0\.0\.1:1 is unreachable .*nats-server -js/, args[0])
  }
  const none = await berth(['worker', app])
  t.is(none.code, 2)
  t.regex(none.stderr, /--broker is required/)
  const unknown = await berth(['worker', app, '--broker', 'nats://127.0.0.1:1', '--function', 'cube'])
  t.is(unknown.code, 2)
  t.regex(unknown.stderr, /--function cube: the app has no function or class 'cube'; it has: square/)
})

test.serial("broker mode: a caller's traceparent travels in the envelope to the worker's input; a .map() without one is one trace", async (t) => {
  if (process.platform !== 'linux') return t.pass('reads /proc')
  const f = await runsFront(t)
  if (!f) return
  const { p, env, front } = f
  const http = /and (http:\/\/127\.0\.0\.1:\d+)\//.exec(front.out())![1]
  const a = await npxWorker(p.dir, 'A', env)
  const sent = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00'
  const res = await within(60_000, fetch(`${http}/${p.app}/traced`, { method: 'POST', body: '[1]', headers: { traceparent: sent } }), 'the HTTP call')
  t.is(res.status, 200)
  const got = (await res.json()) as { traceparent: string; by: string }
  t.is(got.by, 'A', 'a worker ran it')
  const [, trace, span, flags] = got.traceparent.split('-')
  t.deepEqual([trace, flags], ['0af7651916cd43dd8448eb211c80319c', '00'], "the caller's trace-id and flags")
  t.not(span, 'b7ad6b7169203331', 'a span id of its own')

  const { Function } = await import('berth')
  const traced = Function.fromName<(x: number) => Promise<{ traceparent: string; by: string }>>(p.app, 'traced')
  const mapped: string[] = []
  await within(60_000, (async () => {
    for await (const r of traced.map([1, 2, 3, 4])) mapped.push(r.traceparent)
  })(), '.map()')
  const ids = mapped.map((tp) => /^00-([0-9a-f]{32})-([0-9a-f]{16})-01$/.exec(tp))
  t.true(ids.every((m) => m !== null), mapped.join(' '))
  t.is(new Set(ids.map((m) => m![1])).size, 1, 'one trace for the map')
  t.not(ids[0]![1], trace)
  t.is(new Set(ids.map((m) => m![2])).size, 4, 'a span id per input')
  await stopAll(t, p.dir, [front.npx, a.npx])
})

type Count = (n: number, fail?: boolean, pad?: number) => AsyncGenerator<{ i: number; by: string }>

test.serial('broker mode: generators, web endpoints and fetch apps run on a worker: items come back through NATS in order, a slow reader holds the generator back, one that leaves ends it, a throw arrives after the items', async (t) => {
  if (process.platform !== 'linux') return t.pass('reads /proc')
  const f = await runsFront(t)
  if (!f) return
  const { p, runs, env, front } = f
  const http = /and (http:\/\/127\.0\.0\.1:\d+)\//.exec(front.out())![1]
  const w = await npxWorker(p.dir, 'W', env)
  const lines = () => (existsSync(runs) ? readFileSync(runs, 'utf8').split('\n') : [])
  const { Function } = await import('berth')
  const count = Function.fromName<Count>(p.app, 'count')

  // In order, all of them, from the worker.
  const items: { i: number; by: string }[] = []
  await within(60_000, (async () => {
    for await (const x of count.remoteGen(200)) items.push(x)
  })(), () => `remoteGen\n${w.out()}`)
  t.deepEqual(items.map((x) => x.i), Array.from({ length: 200 }, (_, i) => i))
  t.true(items.every((x) => x.by === 'W'), 'the worker ran it')
  t.true(lines().includes('W count end done'))

  // A throw mid-stream: the items before it, then the error.
  const before: number[] = []
  const thrown = await t.throwsAsync(within(60_000, (async () => {
    for await (const x of count.remoteGen(3, true)) before.push(x.i)
  })(), 'the failing generator'))
  t.deepEqual(before, [0, 1, 2])
  t.regex(String(thrown?.message), /ran dry after 3/)

  // A paused reader holds it back; one that leaves ends it, its signal aborted.
  // Items of 16 KiB: the gRPC stream to this process holds 1 MiB (HTTP/2's window), 64 of them.
  const it = count.remoteGen(3000, false, 16_384)[Symbol.asyncIterator]()
  t.is((await within(60_000, it.next(), 'the first item')).value?.i, 0)
  await sleep(1500)
  const yielded = () => lines().filter((l) => l.startsWith('W yield')).length
  const whilePaused = yielded()
  // What the gRPC stream to this process holds (HTTP/2's windows, in bytes: a few MiB), the
  // caller's window, the front's and the container's (16 each), and credit given back 8 at a
  // time; without backpressure (a front that takes all a worker sends) it runs to 3000.
  t.true(whilePaused >= 2 && whilePaused <= 600, `the generator ran ${whilePaused} items ahead of a paused reader`)
  await it.return?.(undefined)
  await until(() => lines().includes('W count end aborted'), 20_000, () => `the generator to end, aborted\n${w.out()}\n${front.out()}\n${lines().slice(-5).join('\n')}`)
  t.true(yielded() < 1000, `it stopped: ${yielded()} yielded`)

  // Web endpoints: a JSON answer and a streamed one (NDJSON and SSE), run by the worker.
  const who = await within(60_000, fetch(`${http}/${p.app}/who`), 'GET who')
  t.is(who.status, 200)
  t.deepEqual(await who.json(), { by: 'W' })
  const api = await within(60_000, fetch(`${http}/${p.app}/api/some/where`), 'GET api')
  t.is(api.headers.get('x-from'), 'api')
  t.like(await api.json(), { by: 'W' })
  const nd = await within(60_000, fetch(`${http}/${p.app}/words`, { method: 'POST', body: '{"text":"a b c"}', headers: { 'content-type': 'application/json' } }), 'POST words')
  t.regex(nd.headers.get('content-type') ?? '', /^application\/x-ndjson/)
  t.is(await nd.text(), '{"w":"a","by":"W"}\n{"w":"b","by":"W"}\n{"w":"c","by":"W"}\n')
  const sse = await within(60_000, fetch(`${http}/${p.app}/words`, { method: 'POST', body: '{"text":"x y"}', headers: { accept: 'text/event-stream' } }), 'SSE words')
  t.regex(sse.headers.get('content-type') ?? '', /^text\/event-stream/)
  t.regex(await sse.text(), /data: \{"w":"x","by":"W"\}\n\n.*data: \{"w":"y","by":"W"\}\n\n/s)

  // Settled: nothing left in the streams.
  for (const pool of ['count', 'Web']) {
    let counts = await consumerCounts(`berth__${p.app}__${pool}`)
    for (let i = 0; i < 50 && counts.pending + counts.unacked > 0; i++) {
      await sleep(200)
      counts = await consumerCounts(`berth__${p.app}__${pool}`)
    }
    t.deepEqual(counts, { pending: 0, unacked: 0 }, pool)
  }
  t.deepEqual(processesIn(p.dir, ['__container']).filter((pid) => !taggedWith(pid, 'WORKER_TAG=W')), [], 'the front ran no container')
  await stopAll(t, p.dir, [front.npx, w.npx])
})

test.serial('broker mode: a worker SIGKILLed mid-stream: the caller gets the items it sent, then InputLostError (a generator does not run again once it has yielded)', async (t) => {
  if (process.platform !== 'linux') return t.pass('reads /proc')
  const f = await runsFront(t)
  if (!f) return
  const { p, runs, env, front } = f
  const a = await npxWorker(p.dir, 'A', { ...env, YIELD_MS: '200' })
  const lines = () => (existsSync(runs) ? readFileSync(runs, 'utf8').split('\n') : [])
  const { Function } = await import('berth')
  const count = Function.fromName<Count>(p.app, 'count')
  const got: number[] = []
  const reading = (async () => {
    for await (const x of count.remoteGen(1000)) {
      got.push(x.i)
      if (got.length === 3) {
        for (const pid of workerProcesses(p.dir, 'A')) process.kill(pid, 'SIGKILL')
      }
    }
  })()
  // The input comes back after its ack deadline (timeout 10 s + 5 s) to worker B, which starts
  // it again: the front ends the stream rather than hand the caller a second beginning.
  await until(() => got.length >= 3, 60_000, () => `three items\n${a.out()}`)
  const b = await npxWorker(p.dir, 'B', env)
  const lost = await t.throwsAsync(within(90_000, reading, () => `the stream to end\n${b.out()}`))
  t.regex(String(lost?.message), /lost after it had sent \d+ items/)
  t.deepEqual(got, Array.from({ length: got.length }, (_, i) => i), 'the items A sent, in order, once')
  // B's attempt was cancelled: it does not run on for nobody.
  t.true(lines().some((l) => l.startsWith('B yield')), 'B started it again: what the front saw')
  await until(() => lines().includes('B count end aborted'), 30_000, () => `B's attempt to end, aborted\n${b.out()}`)
  await stopAll(t, p.dir, [front.npx, b.npx])
})

test.serial('broker mode: a schedule served by two fronts fires each tick once (the first front to start it in the bucket), on a worker', async (t) => {
  if (process.platform !== 'linux') return t.pass('reads /proc')
  const p = await brokerProject(t)
  if (!p) return
  const runs = join(p.dir, 'runs')
  const env = { BROKER_APP: p.app, RUNS: runs, TICK_EVERY: '1' }
  // The worker first: each tick's run then starts as soon as a front fires it.
  const w = await npxWorker(p.dir, 'W', { BROKER_APP: p.app, RUNS: runs })
  const a = npxServe(t, p.dir, ['--broker', URL], env)
  const b = npxServe(t, p.dir, ['--broker', URL], env)
  for (const f of [a, b]) await until(() => /serving .* on 127\.0\.0\.1:\d+/.test(f.out()), 60_000, () => `a front to listen\n${f.out()}`)
  const ticks = () =>
    (existsSync(runs) ? readFileSync(runs, 'utf8').split('\n') : []).filter((l) => l.startsWith('W tick ')).map((l) => Number(l.split(' ')[2]))
  // Each front logs the tick of each run it fires: a tick fired by both would be logged twice.
  // Five runs on the worker however slowly a loaded host runs them (a tick whose last run still
  // runs is skipped, so a count of runs in a fixed time would not do).
  const fired = () => [...(a.out() + b.out()).matchAll(/scheduled run of (\S+)/g)].map((m) => m[1])
  await until(() => fired().length >= 5 && ticks().length >= 5, 60_000, () => `five runs\n${w.out()}\n${a.out()}\n${b.out()}`)
  const once = fired()
  t.is(new Set(once).size, once.length, `each tick fired once: ${once.join(' ')}`)
  t.true(once.every((at) => Date.parse(at) % 1000 === 0), `on the second: ${once.join(' ')}`)
  await stopAll(t, p.dir, [a.npx, b.npx, w.npx])
})

test.serial('broker mode: a scheduled run that still runs, fired by one front, is not started again by the other at the next ticks', async (t) => {
  if (process.platform !== 'linux') return t.pass('reads /proc')
  const p = await brokerProject(t)
  if (!p) return
  const runs = join(p.dir, 'runs')
  // Each run takes 2.5 s; ticks come each second, fired by either front.
  const w = await npxWorker(p.dir, 'W', { BROKER_APP: p.app, RUNS: runs, TICK_MS: '2500' })
  const env = { BROKER_APP: p.app, RUNS: runs, TICK_EVERY: '1' }
  const a = npxServe(t, p.dir, ['--broker', URL], env)
  const b = npxServe(t, p.dir, ['--broker', URL], env)
  for (const f of [a, b]) await until(() => /serving .* on 127\.0\.0\.1:\d+/.test(f.out()), 60_000, () => `a front to listen\n${f.out()}`)
  const spans = () =>
    (existsSync(runs) ? readFileSync(runs, 'utf8').split('\n') : [])
      .filter((l) => l.startsWith('W tick-end '))
      .map((l) => l.split(' ').slice(2).map(Number))
      .sort((x, y) => x[0] - y[0])
  await until(() => spans().length >= 3, 60_000, () => `three runs\n${w.out()}\n${a.out()}\n${b.out()}`)
  const all = spans()
  for (let i = 1; i < all.length; i++) {
    t.true(all[i][0] >= all[i - 1][1], `run ${i} started at ${all[i][0]} while run ${i - 1} ran (${all[i - 1][0]}-${all[i - 1][1]})`)
  }
  // The ticks in between were skipped, by a front that saw the other's run in the bucket too.
  t.regex(a.out() + b.out(), /the tick of \S+ is skipped: the one of \S+ still runs/)
  await stopAll(t, p.dir, [a.npx, b.npx, w.npx])
})

test.serial('broker mode: a queue is a JetStream stream: a get blocked in a container on a worker is released by a put through the front; FIFO, partitions, len, clear, delete', async (t) => {
  if (process.platform !== 'linux') return t.pass('reads /proc')
  const f = await runsFront(t)
  if (!f) return
  const { p, env, front } = f
  const name = `q-${p.app}`
  t.teardown(() => removeStreams([`berth_queue__${name}`]))
  const server = `http://${/serving .* on (127\.0\.0\.1:\d+)/.exec(front.out())![1]}`
  const w = await npxWorker(p.dir, 'W', env)
  const { Function, NotFoundError, Queue } = await import('berth')
  await t.throwsAsync(Queue.fromName(name, { server }).len(), { instanceOf: NotFoundError })
  const q = Queue.fromName<unknown>(name, { server, createIfMissing: true })
  t.is(await q.len(), 0)
  const take = Function.fromName<(name: string, timeout: number) => Promise<{ value: unknown; by: string }>>(p.app, 'take')
  const waiting = take.remote(name, 60)
  await sleep(1500)
  await q.put('hello')
  t.deepEqual(await within(60_000, waiting, () => `take\n${w.out()}`), { value: 'hello', by: 'W' }, 'released by the put')
  await q.putMany([1, 2, 3])
  t.deepEqual(await take.remote(name, 10), { value: 1, by: 'W' }, 'first in, first out')
  t.is(await q.get(), 2)
  await q.put('elsewhere', { partition: 'x' })
  t.is(await q.len(), 1)
  t.is(await q.len({ partition: 'x' }), 1)
  t.is(await q.len({ total: true }), 2)
  t.deepEqual(await q.getMany(5, { partition: 'x' }), ['elsewhere'])
  t.is(await q.get({ block: false, partition: 'x' }), undefined)
  await q.clear({ all: true })
  t.is(await q.len({ total: true }), 0)
  const cli = await berth(['queue', 'put', name, '"from the cli"'], { BERTH_SERVER: server }, { npx: true, cwd: p.dir })
  t.is(cli.code, 0, cli.stderr)
  t.is(await q.get({ timeout: 5 }), 'from the cli')
  t.true(await Queue.delete(name, { server }))
  await t.throwsAsync(Queue.fromName(name, { server }).len(), { instanceOf: NotFoundError })
  await stopAll(t, p.dir, [front.npx, w.npx])
})

test.serial('broker mode: a volume is shared across machines through the NATS object store: a commit on one worker reaches a container starting on another, a removal its reload', async (t) => {
  if (process.platform !== 'linux') return t.pass('reads /proc')
  const p = await brokerProject(t)
  if (!p) return
  const name = `${p.app}-vol`
  t.teardown(() => removeStreams([`OBJ_berth_volume__${name}`]))
  // Three machines, as far as volumes go: each its own BERTH_VOLUMES_DIR.
  const dirs = Object.fromEntries(['front', 'A', 'B'].map((m) => [m, join(p.dir, `volumes-${m}`)]))
  const env = { BROKER_APP: p.app, VOLUME_TEST: '1' }
  const front = npxServe(t, p.dir, ['--broker', URL], { ...env, BERTH_VOLUMES_DIR: dirs.front })
  await until(() => /serving .* on 127\.0\.0\.1:\d+/.test(front.out()), 60_000, () => `the front to listen\n${front.out()}`)
  const { App, Function } = await import('berth')
  App.lookup(p.app, { server: `http://${/serving .* on (127\.0\.0\.1:\d+)/.exec(front.out())![1]}` })
  const a = await npxWorker(p.dir, 'A', { ...env, BERTH_VOLUMES_DIR: dirs.A }, ['--function', 'writeVol'])
  const b = await npxWorker(p.dir, 'B', { ...env, BERTH_VOLUMES_DIR: dirs.B }, ['--function', 'readVol'])
  const writeVol = Function.fromName<(file: string, text: string | null) => Promise<string>>(p.app, 'writeVol')
  const readVol = Function.fromName<(file: string, reload: boolean) => Promise<{ text: string | null; by: string }>>(p.app, 'readVol')
  t.is(await within(60_000, writeVol.remote('notes/a.txt', 'written on A'), () => `writeVol\n${a.out()}`), 'A')
  t.false(existsSync(join(dirs.B, name, 'notes', 'a.txt')), 'not on B before it syncs')
  t.deepEqual(
    await within(60_000, readVol.remote('notes/a.txt', false), () => `readVol\n${b.out()}`),
    { text: 'written on A', by: 'B' },
    "B's container started with A's commit",
  )
  t.is(readFileSync(join(dirs.B, name, 'notes', 'a.txt'), 'utf8'), 'written on A')
  t.is(await writeVol.remote('notes/a.txt', null), 'A')
  t.deepEqual(await readVol.remote('notes/a.txt', true), { text: null, by: 'B' }, 'a removal committed on A, reloaded on B')
  // `berth volume --broker` from a machine with no copy of it yet (a laptop): list shows it,
  // put sends a file the workers' containers reload, get fetches, rm and delete reach them.
  const laptop = { BERTH_VOLUMES_DIR: join(p.dir, 'volumes-laptop') }
  const cli = async (args: string[], env: Record<string, string> = laptop) => {
    const r = await berth(['volume', ...args, '--broker', URL], env, { npx: true, cwd: p.dir })
    t.is(r.code, 0, `berth volume ${args.join(' ')}: ${r.stderr}`)
    return r.stdout
  }
  t.regex(await cli(['list']), new RegExp(`^${name}\t\\(on the broker only`, 'm'))
  writeFileSync(join(p.dir, 'cli.txt'), 'from the laptop')
  await cli(['put', name, 'cli.txt', 'notes/'])
  t.deepEqual(await readVol.remote('notes/cli.txt', true), { text: 'from the laptop', by: 'B' }, 'put from the CLI, reloaded on B')
  t.is(await cli(['get', name, 'notes/cli.txt', '-'], { BERTH_VOLUMES_DIR: join(p.dir, 'volumes-other') }), 'from the laptop', 'fetched')
  await cli(['rm', name, 'notes/cli.txt'])
  t.deepEqual(await readVol.remote('notes/cli.txt', true), { text: null, by: 'B' }, 'removed from the CLI')
  const other = { BERTH_VOLUMES_DIR: join(p.dir, 'volumes-other') }
  t.regex(await cli(['delete', name], other), /deleted volume/)
  t.notRegex(await cli(['list'], other), new RegExp(`^${name}\t`, 'm'), 'its object store is gone with it')
  // B still has its copy: a reload there says the volume was deleted, and does not make it again.
  const stale = await t.throwsAsync(readVol.remote('notes/a.txt', true))
  t.is((stale as { remoteName?: string } | undefined)?.remoteName, 'NotFoundError', stale?.message)
  t.regex(stale?.message ?? '', new RegExp(`Volume\\('${name}'\\)\\.reload: volume '${name}' was deleted on the NATS server .*Volume\\.delete\\('${name}'\\) removes it here too`))
  t.notRegex(await cli(['list'], other), new RegExp(`^${name}\t`, 'm'), 'not made again by the copy on B')
  await stopAll(t, p.dir, [front.npx, a.npx, b.npx])
})

test.serial('broker mode: a dict is a JetStream key-value bucket: what a container on a worker puts, a caller reads through the front, and back; a key popped at once by four callers goes to one', async (t) => {
  if (process.platform !== 'linux') return t.pass('reads /proc')
  const f = await runsFront(t)
  if (!f) return
  const { p, env, front } = f
  const name = `d-${p.app}`
  t.teardown(() => removeStreams([`KV_berth_dict__${name}`]))
  const server = `http://${/serving .* on (127\.0\.0\.1:\d+)/.exec(front.out())![1]}`
  const w = await npxWorker(p.dir, 'W', env)
  const { Dict, Function, KeyError, NotFoundError } = await import('berth')
  await t.throwsAsync(Dict.fromName(name, { server }).len(), { instanceOf: NotFoundError })
  const remember = Function.fromName<(name: string, key: string, value: unknown) => Promise<number>>(p.app, 'remember')
  t.is(await within(60_000, remember.remote(name, 'k1', 1), () => `remember\n${w.out()}`), 1)
  const d = Dict.fromName<unknown>(name, { server })
  t.deepEqual(await d.get('k1'), { value: 1, by: 'W' }, 'put by a container on the worker, read through the front')
  await d.put('k2', 'from the caller')
  t.is(await remember.remote(name, 'k3', 3), 3, "the worker's container sees the caller's put")
  t.deepEqual((await d.keys()).map(String).sort(), ['k1', 'k2', 'k3'])
  t.false(await d.put('k2', 'again', { skipIfExists: true }))
  t.true(await d.contains('k2'))
  await d.update({ u1: 1, u2: [2, 2] })
  t.is(await d.len(), 5)
  t.deepEqual(new Map(await d.items()).get('u2'), [2, 2])
  t.is(await d.pop('u1'), 1)
  await t.throwsAsync(d.pop('u1'), { instanceOf: KeyError })
  await d.put('once', 'the one')
  const pops = await Promise.all([0, 1, 2, 3].map(() => Dict.fromName(name, { server }).pop('once', null)))
  t.deepEqual(pops.filter((x) => x !== null), ['the one'], 'popped by one caller only')
  const cli = await berth(['dict', 'get', name, 'k2'], { BERTH_SERVER: server }, { npx: true, cwd: p.dir })
  t.is(cli.stdout.trim(), '"from the caller"', cli.stderr)
  await d.clear()
  t.is(await d.len(), 0)
  t.true(await Dict.delete(name, { server }))
  await t.throwsAsync(Dict.fromName(name, { server }).len(), { instanceOf: NotFoundError })
  await stopAll(t, p.dir, [front.npx, w.npx])
})
