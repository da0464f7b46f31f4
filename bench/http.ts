// HTTP throughput of berth's routes against the Node servers people use, with the same load
// generator (autocannon, 64 connections, POST of a JSON argument array) in one run, contenders
// interleaved over rounds. Every server runs in a process of its own; berth's is `berth serve`
// with one container process per class (two processes, as deployed): the RPC route, a
// @webEndpoint, a Hono app behind @fetchApp, a fastify app behind @webServer (and, when nginx is
// installed, the same fastify behind nginx: the yardstick of one proxy hop). Then SSE
// first-token latency: from the generator's yield (its time is in the event) to the client
// reading it, for berth's async * @webEndpoint, a @fetchApp Hono streamSSE route and Hono's
// streamSSE on its own server. A summary compares each with its goal (README "Performance").
// The load generator is wrk when it is installed (`apt-get install wrk`): one C thread, it
// leaves the servers most of the second core, where autocannon (Node) takes about as much CPU
// per request as the servers it measures. BENCH_LOADGEN=autocannon forces autocannon.
// Run: npx tsx bench/http.ts (BENCH_SECONDS, BENCH_ROUNDS, BENCH_SSE_EVENTS, BENCH_SSE_WARMUP_S,
// BENCH_ONLY=a,b, BENCH_LOADGEN=wrk|autocannon; BENCH_FLOORS=1 adds the floor of a proxy hop:
// the same fastify behind a tokio byte relay, a minimal HTTP byte lane and a bare hyper proxy;
// BENCH_THREADS=1 adds each contender's CPU per request by process and thread, user + system).
import { type ChildProcess, execFileSync, spawn } from 'node:child_process'
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { request } from 'node:http'
import { type AddressInfo, createServer as createNetServer } from 'node:net'
import { tmpdir } from 'node:os'
import { basename, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import autocannon from 'autocannon'
import { now } from './fixtures/http-servers.ts'

const root = fileURLToPath(new URL('..', import.meta.url))
const SECONDS = Number(process.env.BENCH_SECONDS ?? 5)
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 2)
const CONNECTIONS = 64

interface Contender {
  name: string
  /** The server's process (its CPU time counts with its descendants'), and any others it needs. */
  start(): Promise<{ url: string; child: ChildProcess; others?: ChildProcess[] }>
}

/** Starts `args` with node (or `command`) and waits for the line that names its port. */
function server(args: string[], pattern: RegExp, path: string, command = process.execPath): Promise<{ url: string; child: ChildProcess }> {
  const child = spawn(command, args, { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] })
  return new Promise((resolve, reject) => {
    let out = ''
    child.stdout!.on('data', (d) => {
      out += d
      const m = pattern.exec(out)
      if (m) resolve({ url: `http://127.0.0.1:${m[1]}${path}`, child })
    })
    // Kept for the error below; berth's own lines (stopping, ...) are not the benchmark's output.
    child.stderr!.on('data', (d) => (out += d))
    child.on('exit', (code) => reject(new Error(`${basename(command)} ${args.join(' ')} exited (${code}) before listening:\n${out}`)))
  })
}

const plain = (name: string): Contender => ({
  name,
  start: () => server(['--import', 'tsx', 'bench/fixtures/http-servers.ts', name], /listening (\d+)/, '/noop'),
})
const serve = (file: string, path: string) =>
  server(
    [join(root, 'bin/berth.mjs'), 'serve', file, '--grpc-port', '0', '--http-port', '0'],
    /http:\/\/127\.0\.0\.1:(\d+)\//,
    path,
  )
const berth = (fn: string): Contender => ({
  name: `berth RPC route (${fn})`,
  start: () => serve('bench/fixtures/http-app.ts', `/bench-http/${fn}`),
})
const web = (name: string, path: string): Contender => ({
  name,
  start: () => serve('bench/fixtures/http-web.ts', path),
})

/** Whether `command` runs here (`args` make it print and exit). */
function installed(command: string, args: string[]): boolean {
  try {
    execFileSync(command, args, { stdio: 'ignore' })
    return true
  } catch (e) {
    // Some exit non-zero after printing their version; only a missing binary throws ENOENT.
    return (e as NodeJS.ErrnoException).code !== 'ENOENT'
  }
}

/** A port free now on 127.0.0.1. */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createNetServer()
    s.once('error', reject)
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as AddressInfo
      s.close(() => resolve(port))
    })
  })
}

/** The yardstick of the @webServer goal: the same fastify behind nginx, the reverse proxy people
 *  put in front of a Node server, with `workers` worker processes (1: as berth's control plane
 *  has one thread on two cores; 2: nginx's `auto` here), upstream connections kept alive, no
 *  access log. Measured when nginx is installed (`apt-get install nginx-light`): what one proxy
 *  hop costs on this host. */
const behindNginx = (workers: number): Contender => ({
  name: `fastify behind nginx (${workers} worker${workers > 1 ? 's' : ''})`,
  start: async () => {
    const app = await server(['--import', 'tsx', 'bench/fixtures/http-servers.ts', 'fastify'], /listening (\d+)/, '/noop')
    const dir = mkdtempSync(join(tmpdir(), 'berth-bench-nginx-'))
    const port = await freePort()
    const upstream = new URL(app.url).port
    writeFileSync(
      join(dir, 'nginx.conf'),
      `daemon off; worker_processes ${workers}; pid ${dir}/nginx.pid; error_log ${dir}/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path ${dir}/body; proxy_temp_path ${dir}/proxy; fastcgi_temp_path ${dir}/fcgi;
  uwsgi_temp_path ${dir}/uwsgi; scgi_temp_path ${dir}/scgi;
  upstream app { server 127.0.0.1:${upstream}; keepalive 128; }
  server {
    listen 127.0.0.1:${port};
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
`,
    )
    const child = spawn('nginx', ['-e', join(dir, 'error.log'), '-p', dir, '-c', join(dir, 'nginx.conf')], { stdio: ['ignore', 'ignore', 'inherit'] })
    child.once('exit', () => rmSync(dir, { recursive: true, force: true }))
    const url = `http://127.0.0.1:${port}/noop`
    for (let tries = 0; ; tries++) {
      try {
        await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '[1]' })
        break
      } catch (e) {
        if (tries === 100 || child.exitCode !== null) {
          // Neither outlives the benchmark.
          child.kill('SIGTERM')
          app.child.kill('SIGTERM')
          throw new Error(`nginx did not answer on ${port}: ${e}`)
        }
        await new Promise((r) => setTimeout(r, 50))
      }
    }
    return { url, child, others: [app.child] }
  },
})

/** The floor of one proxy hop (BENCH_FLOORS=1): the same fastify behind
 *  crates/berth-server/examples/proxy_floor.rs, a tokio byte relay, a minimal HTTP byte lane
 *  (heads parsed and written anew, bodies copied by length) or a bare hyper proxy on a runtime
 *  like the control plane's, built here once (`cargo build --release --example`). */
const FLOORS = process.env.BENCH_FLOORS === '1'
let floorBinary: string | undefined
const FLOOR_NAMES = {
  relay: 'fastify behind a tokio byte relay',
  lane: 'fastify behind a minimal HTTP byte lane',
  hyper: 'fastify behind a bare hyper proxy',
}
const behindFloor = (mode: keyof typeof FLOOR_NAMES): Contender => ({
  name: FLOOR_NAMES[mode],
  start: async () => {
    if (floorBinary === undefined) {
      execFileSync('cargo', ['build', '--release', '-q', '-p', 'berth-server', '--example', 'proxy_floor'], { cwd: root, stdio: 'inherit' })
      floorBinary = join(root, 'target', 'release', 'examples', 'proxy_floor')
    }
    const app = await server(['--import', 'tsx', 'bench/fixtures/http-servers.ts', 'fastify'], /listening (\d+)/, '/noop')
    const floor = await server([mode, new URL(app.url).port], /listening (\d+)/, '/noop', floorBinary).catch((e) => {
      app.child.kill('SIGTERM')
      throw e
    })
    return { ...floor, others: [app.child] }
  },
})

const ONLY = process.env.BENCH_ONLY?.split(',')
const contenders: Contender[] = [
  plain('node-http'),
  plain('fastify'),
  plain('hono'),
  berth('noop'),
  plain('fastify-batcher'),
  berth('batchedNoop'),
  web('berth @webEndpoint', '/bench-web/noop'),
  web('berth @fetchApp (Hono)', '/bench-web/hono/noop'),
  web('berth @webServer (fastify)', '/bench-web/fastify/noop'),
  ...(installed('nginx', ['-v']) ? [behindNginx(1), behindNginx(2)] : []),
  ...(FLOORS ? [behindFloor('relay'), behindFloor('lane'), behindFloor('hyper')] : []),
].filter((c) => ONLY === undefined || ONLY.some((o) => c.name.includes(o)))

interface Sample {
  rps: number
  p50: number
  p99: number
  /** CPU time of the server's processes per request, in µs: steadier than req/s on a busy host. */
  cpu: number
  /** With BENCH_THREADS=1: µs of user and system time per request, by process and thread. */
  threads?: Map<string, [number, number]>
}

const THREADS = process.env.BENCH_THREADS === '1'

/** What a server's process is, for the per-thread table: berth's control plane and container,
 *  or the program's name (node, nginx, proxy_floor). */
function processLabel(pid: number): string {
  try {
    const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')
    if (argv.includes('__container')) return 'berth container'
    if (argv.includes('serve') && argv.some((a) => a.endsWith('berth.mjs'))) return 'berth serve'
    return basename(argv[0])
  } catch {
    return '?'
  }
}

/** `pid` and its descendants; none where /proc has none (gone, or not Linux). */
function processTree(pid: number): number[] {
  try {
    const tree = [pid]
    for (const task of readdirSync(`/proc/${pid}/task`)) {
      for (const c of readFileSync(`/proc/${pid}/task/${task}/children`, 'utf8').split(' ')) if (c !== '') tree.push(...processTree(Number(c)))
    }
    return tree
  } catch {
    return []
  }
}

/** A /proc stat line's name and its user and system CPU time in ms. */
function statCpu(path: string): { name: string; user: number; system: number } {
  const stat = readFileSync(path, 'utf8')
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  // utime, stime in clock ticks (100 Hz)
  return { name: stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')')), user: Number(f[11]) * 10, system: Number(f[12]) * 10 }
}

/** User and system CPU time in ms of each thread of `pid` and its descendants, by
 *  "process / thread (tid)"; none where /proc has none. */
function threadCpuMs(pid: number, into = new Map<string, [number, number]>()): Map<string, [number, number]> {
  for (const p of processTree(pid)) {
    try {
      const label = processLabel(p)
      for (const task of readdirSync(`/proc/${p}/task`)) {
        const { name, user, system } = statCpu(`/proc/${p}/task/${task}/stat`)
        into.set(`${label} / ${name} (${task})`, [user, system])
      }
    } catch {
      // Gone meanwhile.
    }
  }
  return into
}

/** Each thread's µs per request between two `threadCpuMs` readings, by "process / thread"
 *  (threads of one name in one process added up: the tids change from round to round). */
function perRequest(before: Map<string, [number, number]>, after: Map<string, [number, number]>, requests: number): Map<string, [number, number]> {
  const out = new Map<string, [number, number]>()
  for (const [key, [u, s]] of after) {
    const [u0, s0] = before.get(key) ?? [0, 0]
    const name = key.replace(/ \(\d+\)$/, '')
    const [su, ss] = out.get(name) ?? [0, 0]
    out.set(name, [su + ((u - u0) * 1000) / requests, ss + ((s - s0) * 1000) / requests])
  }
  return out
}

/** CPU time (user + system) of `pid` and its descendants, in ms; 0 where /proc has none (not Linux). */
function treeCpuMs(pid: number): number {
  let ms = 0
  for (const p of processTree(pid)) {
    try {
      const { user, system } = statCpu(`/proc/${p}/stat`)
      ms += user + system
    } catch {
      // Gone meanwhile.
    }
  }
  return ms
}

// wrk --version exits 1 after printing its version.
const hasWrk = installed('wrk', ['--version'])
const LOADGEN = process.env.BENCH_LOADGEN ?? (hasWrk ? 'wrk' : 'autocannon')
const wrkFolder = mkdtempSync(join(tmpdir(), 'berth-bench-'))
process.once('exit', () => rmSync(wrkFolder, { recursive: true, force: true }))
const wrkScript = join(wrkFolder, 'post.lua')
writeFileSync(wrkScript, 'wrk.method = "POST"\nwrk.body = "[1]"\nwrk.headers["Content-Type"] = "application/json"\n')

/** wrk's figure `value` with its unit (us, ms, s; k, M) in the base unit (ms, or a count). */
function wrkNumber(value: string): number {
  const m = /^([\d.]+)(us|ms|s|k|M)?$/.exec(value)
  if (m === null) throw new Error(`wrk printed ${value}`)
  const scale: Record<string, number> = { us: 0.001, ms: 1, s: 1000, k: 1000, M: 1e6 }
  return Number(m[1]) * (m[2] === undefined ? 1 : scale[m[2]])
}

/** One wrk run (one thread, CONNECTIONS connections): req/s, p50 and p99 in ms, requests. */
function wrk(url: string, seconds: number): Promise<{ rps: number; p50: number; p99: number; total: number }> {
  return new Promise((resolve, reject) => {
    const child = spawn('wrk', ['-t1', `-c${CONNECTIONS}`, `-d${seconds}s`, '--latency', '-s', wrkScript, url], { stdio: ['ignore', 'pipe', 'inherit'] })
    let out = ''
    child.stdout.on('data', (d) => (out += d))
    child.on('error', reject)
    child.on('exit', (code) => {
      const bad = /Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)/.exec(out)
      const p50 = /^\s+50%\s+(\S+)/m.exec(out)
      const p99 = /^\s+99%\s+(\S+)/m.exec(out)
      const total = /(\d+) requests in/.exec(out)
      const rps = /Requests\/sec:\s+([\d.]+)/.exec(out)
      if (code !== 0 || bad !== null || !p50 || !p99 || !total || !rps) return reject(new Error(`wrk ${url}:\n${out}`))
      resolve({ rps: Number(rps[1]), p50: wrkNumber(p50[1]), p99: wrkNumber(p99[1]), total: Number(total[1]) })
    })
  })
}

async function load(url: string, seconds: number, pids: number[]): Promise<Sample> {
  const cpuMs = () => pids.reduce((sum, pid) => sum + treeCpuMs(pid), 0)
  const threadsMs = () => pids.reduce((into, pid) => threadCpuMs(pid, into), new Map<string, [number, number]>())
  const cpu0 = cpuMs()
  const threads0 = THREADS ? threadsMs() : undefined
  if (LOADGEN === 'wrk') {
    const r = await wrk(url, seconds)
    const threads = threads0 && perRequest(threads0, threadsMs(), r.total)
    return { rps: r.rps, p50: r.p50, p99: r.p99, cpu: ((cpuMs() - cpu0) * 1000) / r.total, threads }
  }
  const r = await autocannon({
    url,
    connections: CONNECTIONS,
    duration: seconds,
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: '[1]',
  })
  if (r.errors > 0 || r.non2xx > 0) throw new Error(`${url}: ${r.errors} errors, ${r.non2xx} non-2xx answers`)
  return { rps: r.requests.average, p50: r.latency.p50, p99: r.latency.p99, cpu: ((cpuMs() - cpu0) * 1000) / r.requests.total }
}

const samples = new Map<string, Sample[]>(contenders.map((c) => [c.name, []]))
for (let round = 0; round < ROUNDS; round++) {
  for (const c of contenders) {
    const { url, child, others = [] } = await c.start()
    const pids = [child, ...others].map((p) => p.pid!)
    try {
      // The first answer waits for the container (and the server a @webServer starts); then a
      // warm-up: JIT, connections.
      await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '[1]' })
      await load(url, 1, pids)
      samples.get(c.name)!.push(await load(url, SECONDS, pids))
    } finally {
      for (const p of [child, ...others]) {
        p.kill('SIGTERM')
        if (p.exitCode === null && p.signalCode === null) await new Promise((r) => p.once('exit', r))
      }
    }
  }
}

// SSE first-token latency: STREAMS streams at once, each asking for its share of the events,
// one every SSE_EVERY_MS; each event's latency is the client's now() at reading it minus the
// time of its yield (both performance.timeOrigin + performance.now(), one machine clock).
// Each server first streams at the same rate for SSE_WARMUP_S, reported on its own ("just
// started"): in the first seconds of a Node process, code tiers up and V8's memory reducer runs
// full collections (seen with --trace-gc about 8 s after start, in the main heap and in the
// module loader's thread), their marking on helper threads across both cores of this machine.
// An event to a berth client crosses two such processes (control plane, container), to a Hono
// client one, so a measurement that starts at once mostly counts those collections: berth's
// p99 was 2.5-3.7 ms in the first 10 s after start and 0.8-1.6 ms after (2026-11-30). 8000
// events leave 80 past the p99; 2000 (the earlier default) moved it by a millisecond between runs.
const SSE_EVENTS = Number(process.env.BENCH_SSE_EVENTS ?? 8000)
const SSE_WARMUP_S = Number(process.env.BENCH_SSE_WARMUP_S ?? 12)
const STREAMS = 4
const SSE_EVERY_MS = 5
const sseContenders: Contender[] = [
  { name: 'hono', start: () => server(['--import', 'tsx', 'bench/fixtures/http-servers.ts', 'hono'], /listening (\d+)/, '/sse') },
  web('berth async * @webEndpoint', '/bench-web/sse'),
  web('berth @fetchApp (Hono)', '/bench-web/hono/sse'),
].filter((c) => ONLY === undefined || ONLY.some((o) => c.name.includes(o) || o === 'sse'))

/** One SSE stream of `n` events: the latency of each, in ms. */
function sseStream(url: string, n: number): Promise<number[]> {
  return new Promise((resolve, reject) => {
    const out: number[] = []
    const req = request(url, { method: 'POST', headers: { 'content-type': 'application/json', accept: 'text/event-stream' } }, (res) => {
      if (res.statusCode !== 200) reject(new Error(`${url}: ${res.statusCode}`))
      let buf = ''
      res.setEncoding('utf8')
      res.on('data', (chunk: string) => {
        const at = now()
        buf += chunk
        for (let end = buf.indexOf('\n\n'); end >= 0; end = buf.indexOf('\n\n')) {
          const event = buf.slice(0, end)
          buf = buf.slice(end + 2)
          const data = event.split('\n').find((l) => l.startsWith('data:'))
          if (data === undefined) continue
          out.push(at - (JSON.parse(data.slice(5)) as { t: number }).t)
        }
      })
      res.on('end', () => (out.length === n ? resolve(out) : reject(new Error(`${url}: ${out.length} of ${n} events`))))
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end(JSON.stringify({ n, everyMs: SSE_EVERY_MS }))
  })
}

async function sseLatency(url: string, events: number): Promise<number[]> {
  const each = Math.ceil(events / STREAMS)
  return (await Promise.all(Array.from({ length: STREAMS }, () => sseStream(url, each)))).flat()
}

const sse = new Map<string, number[]>(sseContenders.map((c) => [c.name, []]))
const sseStarting = new Map<string, number[]>(sseContenders.map((c) => [c.name, []]))
for (let round = 0; round < ROUNDS; round++) {
  for (const c of sseContenders) {
    const { url, child } = await c.start()
    try {
      sseStarting.get(c.name)!.push(...(await sseLatency(url, Math.max(STREAMS, ((SSE_WARMUP_S * 1000) / SSE_EVERY_MS) * STREAMS))))
      sse.get(c.name)!.push(...(await sseLatency(url, SSE_EVENTS)))
    } finally {
      child.kill('SIGTERM')
      await new Promise((r) => child.once('exit', r))
    }
  }
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
const pct = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((xs.length * p) / 100))]
const rps = new Map([...samples].map(([k, v]) => [k, median(v.map((s) => s.rps))]))
const ratio = (name: string, base: string) => rps.get(name)! / rps.get(base)!
const vs = (name: string, base: string) => (rps.has(name) && rps.has(base) ? `${ratio(name, base).toFixed(2)}x` : '-')
if (samples.size > 0) {
  console.log(`\nHTTP, POST /noop with [1], ${LOADGEN}, ${CONNECTIONS} connections, ${SECONDS} s x ${ROUNDS} interleaved rounds (median)`)
  console.log(
    `  ${'contender'.padEnd(30)} ${'req/s'.padStart(8)} ${'p50 ms'.padStart(7)} ${'p99 ms'.padStart(7)}   vs node:http  vs fastify   vs hono   server CPU µs/req`,
  )
  for (const [name, s] of samples) {
    const m = { rps: rps.get(name)!, p50: median(s.map((x) => x.p50)), p99: median(s.map((x) => x.p99)), cpu: median(s.map((x) => x.cpu)) }
    console.log(
      `  ${name.padEnd(30)} ${Math.round(m.rps).toLocaleString('en-US').padStart(8)} ${String(m.p50).padStart(7)} ${String(m.p99).padStart(7)}   ${vs(name, 'node-http').padStart(12)} ${vs(name, 'fastify').padStart(10)} ${vs(name, 'hono').padStart(9)}   ${m.cpu.toFixed(0).padStart(17)}`,
    )
  }
  console.log(`  (the batched pair: berth @batched ${vs('berth RPC route (batchedNoop)', 'fastify-batcher')} fastify with a DataLoader batcher)`)
  if (THREADS) {
    console.log('\nCPU per request by process / thread, µs user + system (median of the rounds; threads above 0.3 µs)')
    for (const [name, s] of samples) {
      console.log(`  ${name}`)
      const keys = new Set(s.flatMap((x) => [...(x.threads?.keys() ?? [])]))
      const rows = [...keys].map((k) => {
        const u = median(s.map((x) => x.threads?.get(k)?.[0] ?? 0))
        const sys = median(s.map((x) => x.threads?.get(k)?.[1] ?? 0))
        return { k, u, sys }
      })
      for (const { k, u, sys } of rows.filter((r) => r.u + r.sys >= 0.3).sort((a, b) => b.u + b.sys - (a.u + a.sys))) {
        console.log(`    ${k.padEnd(40)} ${u.toFixed(1).padStart(5)} + ${sys.toFixed(1).padStart(5)}`)
      }
    }
  }
}
if (sse.size > 0) {
  console.log(
    `\nSSE first-token latency, ${SSE_EVENTS} events x ${ROUNDS} rounds over ${STREAMS} concurrent streams, one event per ${SSE_EVERY_MS} ms each, after ${SSE_WARMUP_S} s of the same ("just started": during those)`,
  )
  console.log(`  ${'contender'.padEnd(30)} ${'p50 ms'.padStart(7)} ${'p99 ms'.padStart(7)} ${'max ms'.padStart(7)}   ${'just started: p99 ms'.padStart(20)}`)
  for (const [name, xs] of sse) {
    const starting = sseStarting.get(name)!
    console.log(
      `  ${name.padEnd(30)} ${pct(xs, 50).toFixed(3).padStart(7)} ${pct(xs, 99).toFixed(3).padStart(7)} ${pct(xs, 100).toFixed(3).padStart(7)}   ${pct(starting, 99).toFixed(3).padStart(20)}`,
    )
  }
}

// The goals of issue 11, each met or not, and by how much.
console.log('\nGoals')
const goal = (what: string, value: number | undefined, target: number, atLeast: boolean, unit: string) => {
  if (value === undefined || Number.isNaN(value)) return
  const met = atLeast ? value >= target : value <= target
  const by = atLeast ? `${((value / target - 1) * 100).toFixed(0)}%` : `${(target - value).toFixed(2)} ${unit}`
  console.log(`  ${met ? 'met    ' : 'MISSED '} ${what.padEnd(52)} ${value.toFixed(2)}${unit} (goal ${atLeast ? '>=' : '<='} ${target}${unit}; ${met ? 'margin' : 'short by'} ${by.replace('-', '')})`)
}
const r = (a: string, b: string) => (rps.has(a) && rps.has(b) ? ratio(a, b) : undefined)
// The same ratio by CPU time per request (the contender's over berth's): what req/s would be
// with a core to spare for each process; on a busy host, req/s favours the side with more processes.
const cpuOf = (name: string) => median(samples.get(name)?.map((x) => x.cpu) ?? [Number.NaN])
const byCpu = (a: string, b: string) => (samples.has(a) && samples.has(b) ? `; by CPU per request ${(cpuOf(b) / cpuOf(a)).toFixed(2)}x` : '')
const pair = (what: string, a: string, b: string, target: number) => {
  goal(what, r(a, b), target, true, 'x')
  if (byCpu(a, b) !== '') console.log(`          ${byCpu(a, b).slice(2)}`)
}
pair('@webEndpoint vs fastify', 'berth @webEndpoint', 'fastify', 1.2)
pair('@webEndpoint vs node:http', 'berth @webEndpoint', 'node-http', 0.9)
pair('@fetchApp (Hono) vs Hono on @hono/node-server', 'berth @fetchApp (Hono)', 'hono', 1.0)
pair('@webServer (fastify) vs the same fastify directly', 'berth @webServer (fastify)', 'fastify', 0.8)
for (const nginx of [...rps.keys()].filter((name) => name.startsWith('fastify behind '))) {
  console.log(`          the yardstick, ${nginx}: ${vs(nginx, 'fastify')} fastify${byCpu(nginx, 'fastify')}; berth's @webServer ${vs('berth @webServer (fastify)', nginx)} it`)
}
for (const [name, xs] of sse) if (name !== 'hono') goal(`SSE p99, ${name}`, pct(xs, 99), 2, false, ' ms')
goal('SSE p99, Hono streamSSE on its own server (reference)', sse.has('hono') ? pct(sse.get('hono')!, 99) : undefined, 2, false, ' ms')
