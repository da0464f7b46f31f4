// Broker mode against the direct control plane (issue 12's goals): `.map()` of no-op inputs (one
// container of up to 1000 at once, as in bench/serve.ts),
// `.remote()` with 1000 in flight and a warm `.remote()` round trip, through `berth serve`
// alone, then through NATS JetStream (`berth serve --broker` and one, then two `berth worker`);
// and a function burning about 1 ms of CPU per input (two containers per worker), with one
// worker and with two, each worker and its containers held to one core (`taskset`, when there
// is one). Starts a nats-server of its own (Debian's `nats-server`) on a free port with a
// store of its own. A route that does not finish within BENCH_STALL_S seconds (90) is reported
// as stalled. Run: npx tsx bench/broker.ts (BENCH_N, BENCH_BURN_N, BENCH_STALL_S).
import { type ChildProcess, spawn, spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { App, Function } from 'berth'

const root = fileURLToPath(new URL('..', import.meta.url))
const FIXTURE = join(root, 'bench/fixtures/broker-app.ts')
const N = Number(process.env.BENCH_N ?? 50_000)
const BURN_N = Number(process.env.BENCH_BURN_N ?? 3000)
const IN_FLIGHT = 1000

const nats = ['nats-server', '/usr/sbin/nats-server'].find((p) => spawnSync(p, ['--version']).status === 0)
if (nats === undefined) {
  console.log('bench/broker.ts: no nats-server (apt-get install nats-server); nothing measured')
  process.exit(0)
}

const children: ChildProcess[] = []
const store = mkdtempSync(join(tmpdir(), 'berth-bench-nats-'))
function stopAll() {
  for (const c of children) {
    try {
      process.kill(-c.pid!, 'SIGKILL')
    } catch {
      // gone already
    }
  }
  children.length = 0
}
process.on('exit', () => {
  stopAll()
  rmSync(store, { recursive: true, force: true })
})
process.on('SIGINT', () => process.exit(130))

/** `argv`, in a process group of its own; resolves with its output once `ready` matches it. */
function start(argv: string[], ready: RegExp, env: Record<string, string> = {}): Promise<{ child: ChildProcess; match: RegExpExecArray }> {
  const child = spawn(argv[0], argv.slice(1), { cwd: root, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'], detached: true })
  children.push(child)
  return new Promise((resolve, reject) => {
    let out = ''
    const seen = (d: Buffer) => {
      out += d
      const m = ready.exec(out)
      if (m) resolve({ child, match: m })
    }
    child.stdout!.on('data', seen)
    child.stderr!.on('data', seen)
    child.on('exit', (code) => reject(new Error(`${argv.join(' ')} exited (${code}):\n${out}`)))
  })
}

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port
      s.close(() => resolve(port))
    })
  })
}

const pinned = spawnSync('taskset', ['-c', '0', 'true']).status === 0
const berth = (args: string[], env: Record<string, string> = {}, prefix: string[] = []) =>
  start([...prefix, process.execPath, join(root, 'bin/berth.mjs'), ...args], args[0] === 'serve' ? /serving .* on (127\.0\.0\.1:\d+)/ : /pulling from berth__/, env)

interface Figures {
  map: number
  inFlight: number
  warmP50: number
  burn?: number
}

async function measure(name: string, address: string, burn: boolean): Promise<Figures> {
  console.log(`${name}: measuring`)
  App.lookup('bench-broker', { server: `http://${address}` })
  const noop = Function.fromName<(x: number) => Promise<number>>('bench-broker', 'noop')
  await noop.remote(0)
  for await (const _ of noop.map(Array.from({ length: 2000 }, (_, i) => i)));
  const rate = async (n: number, f: () => Promise<void>) => {
    const t0 = performance.now()
    await f()
    return n / ((performance.now() - t0) / 1000)
  }
  const map = await rate(N, async () => {
    let got = 0
    for await (const _ of noop.map(Array.from({ length: N }, (_, i) => i))) got++
    if (got !== N) throw new Error(`${got}/${N} results`)
  })
  const calls = 20 * IN_FLIGHT
  const inFlight = await rate(calls, async () => {
    let next = 0
    await Promise.all(
      Array.from({ length: IN_FLIGHT }, async () => {
        while (next < calls) await noop.remote(next++)
      }),
    )
  })
  const times: number[] = []
  for (let i = 0; i < 500; i++) {
    const t0 = performance.now()
    await noop.remote(i)
    times.push(performance.now() - t0)
  }
  times.sort((a, b) => a - b)
  const figures: Figures = { map, inFlight, warmP50: times[times.length >> 1] }
  if (burn) {
    const f = Function.fromName<(x: number) => Promise<number>>('bench-broker', 'burn')
    // Warm: every worker's containers started (a worker starts its second container when its
    // first has more than it runs at once), so what is measured is the steady rate.
    for await (const _ of f.map(Array.from({ length: 1000 }, (_, i) => i)));
    figures.burn = await rate(BURN_N, async () => {
      for await (const _ of f.map(Array.from({ length: BURN_N }, (_, i) => i)));
    })
  }
  return figures
}

const results = new Map<string, Figures | string>()
const STALL_S = Number(process.env.BENCH_STALL_S ?? 90)
/** `measure`, or why it did not finish within STALL_S seconds. */
async function bounded(name: string, address: string, burn: boolean): Promise<Figures | string> {
  let timer: ReturnType<typeof setTimeout> | undefined
  const stalled = new Promise<string>((resolve) => {
    timer = setTimeout(() => resolve(`stalled: no end within ${STALL_S} s`), STALL_S * 1000)
  })
  try {
    return await Promise.race([measure(name, address, burn), stalled])
  } finally {
    clearTimeout(timer)
  }
}

{
  const { match } = await berth(['serve', FIXTURE, '--grpc-port', '0', '--http-port', '0', '--no-reload'])
  results.set('direct (berth serve)', await bounded('direct (berth serve)', match[1], false))
  stopAll()
}

const port = await freePort()
await start([nats, '-a', '127.0.0.1', '-p', String(port), '-js', '-sd', store], /Server is ready/)
const url = `nats://127.0.0.1:${port}`
for (const workers of [1, 2]) {
  const { match } = await berth(['serve', FIXTURE, '--grpc-port', '0', '--http-port', '0', '--broker', url])
  // Each worker held to a core of its own (taskset), as on a machine of its own: one worker
  // gets one core whatever its containers, two get two.
  for (let i = 0; i < workers; i++) await berth(['worker', FIXTURE, '--broker', url], {}, pinned ? ['taskset', '-c', String(i % 2)] : [])
  const name = `JetStream, ${workers} worker${workers > 1 ? 's' : ''}`
  results.set(name, await bounded(name, match[1], true))
  // Only the front and the workers: the nats-server (the first child) keeps its streams.
  for (const c of children.splice(1)) {
    try {
      process.kill(-c.pid!, 'SIGKILL')
    } catch {
      // gone already
    }
  }
}

const k = (x: number) => `${Math.round(x).toLocaleString('en-US')}/s`
console.log(`\nbench/broker.ts: no-op inputs (.map() of ${N}, ${IN_FLIGHT} .remote() in flight, warm .remote() p50 of 500), and ${BURN_N} inputs burning ~1 ms of CPU each`)
console.log(`  ${'route'.padEnd(24)} ${'.map()'.padStart(12)} ${'in flight'.padStart(12)} ${'warm p50'.padStart(10)} ${'burn .map()'.padStart(12)}`)
for (const [name, f] of results) {
  if (typeof f === 'string') {
    console.log(`  ${name.padEnd(24)} ${f}`)
    continue
  }
  console.log(
    `  ${name.padEnd(24)} ${k(f.map).padStart(12)} ${k(f.inFlight).padStart(12)} ${`${f.warmP50.toFixed(2)} ms`.padStart(10)} ${(f.burn === undefined ? '-' : k(f.burn)).padStart(12)}`,
  )
}
const figures = (name: string) => {
  const f = results.get(name)
  return typeof f === 'string' ? undefined : f
}
const direct = figures('direct (berth serve)')
const one = figures('JetStream, 1 worker')
const two = figures('JetStream, 2 workers')
const goal = (what: string, value: number | undefined, target: number, atLeast: boolean, unit = '') => {
  if (value === undefined || Number.isNaN(value)) return console.log(`  MISSED  ${what.padEnd(52)} not measured (stalled)`)
  const met = atLeast ? value >= target : value <= target
  console.log(`  ${met ? 'met   ' : 'MISSED'}  ${what.padEnd(52)} ${value.toFixed(2)}${unit} (goal ${atLeast ? '>=' : '<='} ${target}${unit})`)
}
console.log('\nGoals')
goal('.map() through JetStream, 1 worker (inputs/s)', one?.map, 50_000, true)
goal('warm .remote() round trip through JetStream, p50', one?.warmP50, 2, false, ' ms')
goal('CPU-bound: 2 workers / 1 worker', two?.burn === undefined || one?.burn === undefined ? undefined : two.burn / one.burn, 1.6, true, 'x')
if (direct && one) console.log(`  (vs direct: .map() ${(one.map / direct.map).toFixed(2)}x, in flight ${(one.inFlight / direct.inFlight).toFixed(2)}x)`)
process.exit(0)
