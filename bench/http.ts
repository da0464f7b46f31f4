// HTTP throughput of berth's routes against the Node servers people use, with the same load
// generator (autocannon, 64 connections, POST of a JSON argument array) in one run, contenders
// interleaved over rounds. Every server runs in a process of its own; berth's is `berth serve`
// with one container process (two processes, as deployed). Run: npx tsx bench/http.ts
import { type ChildProcess, spawn } from 'node:child_process'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import autocannon from 'autocannon'

const root = fileURLToPath(new URL('..', import.meta.url))
const SECONDS = Number(process.env.BENCH_SECONDS ?? 5)
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 2)
const CONNECTIONS = 64

interface Contender {
  name: string
  start(): Promise<{ url: string; child: ChildProcess }>
}

/** Starts `args` with node and waits for the line that names its port. */
function server(args: string[], pattern: RegExp, path: string): Promise<{ url: string; child: ChildProcess }> {
  const child = spawn(process.execPath, args, { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] })
  return new Promise((resolve, reject) => {
    let out = ''
    child.stdout!.on('data', (d) => {
      out += d
      const m = pattern.exec(out)
      if (m) resolve({ url: `http://127.0.0.1:${m[1]}${path}`, child })
    })
    // Kept for the error below; berth's own lines (stopping, ...) are not the benchmark's output.
    child.stderr!.on('data', (d) => (out += d))
    child.on('exit', (code) => reject(new Error(`${args.join(' ')} exited (${code}) before listening:\n${out}`)))
  })
}

const plain = (name: string): Contender => ({
  name,
  start: () => server(['--import', 'tsx', 'bench/fixtures/http-servers.ts', name], /listening (\d+)/, '/noop'),
})
const berth = (fn: string): Contender => ({
  name: `berth RPC route (${fn})`,
  start: () =>
    server(
      [join(root, 'bin/berth.mjs'), 'serve', 'bench/fixtures/http-app.ts', '--grpc-port', '0', '--http-port', '0'],
      /http:\/\/127\.0\.0\.1:(\d+)\//,
      `/bench-http/${fn}`,
    ),
})

const contenders: Contender[] = [
  plain('node-http'),
  plain('fastify'),
  plain('hono'),
  berth('noop'),
  plain('fastify-batcher'),
  berth('batchedNoop'),
]

interface Sample {
  rps: number
  p50: number
  p99: number
}

async function load(url: string, seconds: number): Promise<Sample> {
  const r = await autocannon({
    url,
    connections: CONNECTIONS,
    duration: seconds,
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: '[1]',
  })
  if (r.errors > 0 || r.non2xx > 0) throw new Error(`${url}: ${r.errors} errors, ${r.non2xx} non-2xx answers`)
  return { rps: r.requests.average, p50: r.latency.p50, p99: r.latency.p99 }
}

const samples = new Map<string, Sample[]>(contenders.map((c) => [c.name, []]))
for (let round = 0; round < ROUNDS; round++) {
  for (const c of contenders) {
    const { url, child } = await c.start()
    try {
      await load(url, 1) // warm-up: JIT, the first container, connections
      samples.get(c.name)!.push(await load(url, SECONDS))
    } finally {
      child.kill('SIGTERM')
      await new Promise((r) => child.once('exit', r))
    }
  }
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
const rps = new Map([...samples].map(([k, v]) => [k, median(v.map((s) => s.rps))]))
const vs = (name: string, base: string) => (rps.get(name)! / rps.get(base)!).toFixed(2)
console.log(`\nHTTP, POST /noop with [1], ${CONNECTIONS} connections, ${SECONDS} s x ${ROUNDS} interleaved rounds (median)`)
console.log(`  ${'contender'.padEnd(30)} ${'req/s'.padStart(8)} ${'p50 ms'.padStart(7)} ${'p99 ms'.padStart(7)}   vs node:http  vs fastify`)
for (const [name, s] of samples) {
  const m = { rps: rps.get(name)!, p50: median(s.map((x) => x.p50)), p99: median(s.map((x) => x.p99)) }
  console.log(
    `  ${name.padEnd(30)} ${Math.round(m.rps).toLocaleString('en-US').padStart(8)} ${String(m.p50).padStart(7)} ${String(m.p99).padStart(7)}   ${vs(name, 'node-http').padStart(11)}x ${vs(name, 'fastify').padStart(9)}x`,
  )
}
console.log(`  (the batched pair: berth @batched ${vs('berth RPC route (batchedNoop)', 'fastify-batcher')}x fastify with a DataLoader batcher)`)
