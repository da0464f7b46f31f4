// Dict and Queue round trips per second from inside a berth container (README "Dict", "Queue",
// "Performance"), against Redis doing the same operations from the same place. One function of
// bench/fixtures/data-app.ts runs the loop in its container and answers its timings: embedded
// (`app.run()`, the container is this process and the dicts are this process's) and under
// `berth serve` (a container process; each operation a round trip on its data socket to the
// control plane, src/data/socket.ts).
// The baseline is Redis on this machine through the `redis` client, SET/GET and RPUSH/LPOP, one
// awaited operation at a time, from the same function in the same process. Contenders run in
// interleaved rounds in one run; the ratio is berth over Redis measured in the same mode.
// Run: npx tsx bench/data.ts (BENCH_N operations per loop, default 20000; BENCH_ROUNDS, default
// 3; BENCH_REDIS_URL, default redis://127.0.0.1:6379).
import { spawn } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { App, Function } from 'berth'
import { createClient } from 'redis'
import { app, type Kind, redisProbe, roundTrips, type Store, type Timing } from './fixtures/data-app.ts'

const root = fileURLToPath(new URL('..', import.meta.url))
const N = Number(process.env.BENCH_N ?? 20_000)
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3)
const REDIS_URL = process.env.BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379'

type Mode = 'embedded' | 'served'
type Loop = (store: Store, kind: Kind, n: number, name: string, url: string) => Promise<Timing>

const child = spawn(
  process.execPath,
  [join(root, 'bin/berth.mjs'), 'serve', join(root, 'bench/fixtures/data-app.ts'), '--grpc-port', '0', '--http-port', '0'],
  { stdio: ['ignore', 'pipe', 'inherit'] },
)
const address = await new Promise<string>((resolve, reject) => {
  let out = ''
  child.stdout!.on('data', (d) => {
    out += d
    const m = /on (127\.0\.0\.1:\d+)/.exec(out)
    if (m) resolve(m[1])
  })
  child.on('exit', (code) => reject(new Error(`berth serve exited (${code}) before listening:\n${out}`)))
})
App.lookup('bench-data', { server: `http://${address}` })
const served = Function.fromName<Loop>('bench-data', 'roundTrips')
const servedProbe = Function.fromName<(url: string) => Promise<string | null>>('bench-data', 'redisProbe')

/** CPU time (user + system) of process `pid`, every thread, in µs. */
const cpuUs = (pid: number) => {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return (Number(f[11]) + Number(f[12])) * 10_000
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
const fmt = (x: number) => Math.round(x).toLocaleString('en-US')

const rates = new Map<string, number[]>()
const record = (key: string, x: number) => rates.set(key, [...(rates.get(key) ?? []), x])
/** Per served round trip (each put or get), µs of CPU: the container, the control plane, redis-server. */
const cpu = new Map<string, { container: number; plane: number; redis: number }[]>()

await app.run(async () => {
  const loops: Record<Mode, Loop> = { embedded: (...a) => roundTrips.remote(...a), served: (...a) => served.remote(...a) }
  const unreachable = (await redisProbe.remote(REDIS_URL)) ?? (await servedProbe.remote(REDIS_URL))
  const stores: Store[] = unreachable === null ? ['berth', 'redis'] : ['berth']
  if (unreachable !== null) console.log(`Redis baseline skipped: ${REDIS_URL} is not reachable from the container (${unreachable})`)
  const info = unreachable === null ? createClient({ url: REDIS_URL }) : undefined
  await info?.connect()
  const redisCpuUs = async () => {
    if (info === undefined) return 0
    const text = await info.info('cpu')
    const get = (k: string) => Number(new RegExp(`${k}:([\\d.]+)`).exec(text)![1])
    return (get('used_cpu_user') + get('used_cpu_sys')) * 1e6
  }

  let seq = 0
  const once = async (mode: Mode, store: Store, kind: Kind, n: number): Promise<Timing> => {
    const plane0 = cpuUs(child.pid!)
    const redis0 = await redisCpuUs()
    const t = await loops[mode](store, kind, n, `bench-${process.pid}-${seq++}`, REDIS_URL)
    if (mode === 'served') {
      const per = (us: number) => us / (2 * n)
      const sample = { container: per(t.cpuUs), plane: per(cpuUs(child.pid!) - plane0), redis: per((await redisCpuUs()) - redis0) }
      const key = `${store} ${kind}`
      cpu.set(key, [...(cpu.get(key) ?? []), sample])
    }
    return t
  }
  // Warm-up: connections, the container, V8's tiers.
  for (const mode of ['embedded', 'served'] as Mode[])
    for (const kind of ['dict', 'queue'] as Kind[]) for (const store of stores) await once(mode, store, kind, Math.min(N, 5000))
  cpu.clear()
  for (let r = 0; r < ROUNDS; r++) {
    for (const kind of ['dict', 'queue'] as Kind[]) {
      for (const mode of ['embedded', 'served'] as Mode[]) {
        for (const store of stores) {
          const t = await once(mode, store, kind, N)
          record(`${mode} ${store} ${kind} put`, N / (t.putMs / 1000))
          record(`${mode} ${store} ${kind} get`, N / (t.getMs / 1000))
        }
      }
    }
  }
  await info?.quit()

  console.log(
    `\nDict and Queue round trips from inside a container, one awaited operation at a time` +
      `\n(${fmt(N)} puts then ${fmt(N)} gets per loop; median and range of ${ROUNDS} interleaved rounds; ops/s)`,
  )
  const range = (k: string) => {
    const xs = rates.get(k)!
    return `${fmt(median(xs)).padStart(9)} (${fmt(Math.min(...xs))}–${fmt(Math.max(...xs))})`
  }
  const ops: [Kind, 'put' | 'get', string][] = [
    ['dict', 'put', 'Dict.put vs SET'],
    ['dict', 'get', 'Dict.get vs GET'],
    ['queue', 'put', 'Queue.put vs RPUSH'],
    ['queue', 'get', 'Queue.get vs LPOP'],
  ]
  const ratios: Record<Mode, string[]> = { embedded: [], served: [] }
  let met = true
  for (const mode of ['embedded', 'served'] as Mode[]) {
    console.log(`  ${mode === 'embedded' ? 'embedded (app.run)' : 'berth serve (container process)'}`)
    for (const [kind, op, label] of ops) {
      const b = `${mode} berth ${kind} ${op}`
      const x = `${mode} redis ${kind} ${op}`
      let line = `    ${label.padEnd(20)} berth ${range(b)}`
      if (rates.has(x)) {
        const ratio = median(rates.get(b)!) / median(rates.get(x)!)
        const perRound = rates.get(b)!.map((v, i) => v / rates.get(x)![i])
        line += `   redis ${range(x)}   berth/redis ${ratio.toFixed(2)}x (${Math.min(...perRound).toFixed(2)}–${Math.max(...perRound).toFixed(2)})`
        ratios[mode].push(`${kind} ${op} ${ratio.toFixed(2)}x`)
        if (mode === 'served' && ratio < 1) met = false
      }
      console.log(line)
    }
  }
  if (cpu.size > 0) {
    console.log('  CPU per served round trip (each put or get), median of rounds: container / control plane / redis-server')
    for (const [key, samples] of cpu) {
      const m = (f: (s: (typeof samples)[number]) => number) => median(samples.map(f)).toFixed(1)
      console.log(`    ${key.padEnd(12)} ${m((s) => s.container)} / ${m((s) => s.plane)} / ${m((s) => s.redis)} µs`)
    }
  }
  console.log('Goals')
  if (stores.includes('redis')) {
    console.log(`  berth served >= 1.0x Redis, each operation: ${ratios.served.join(', ')}: ${met ? 'met' : 'missed'}`)
    console.log(`  (embedded, for reference: ${ratios.embedded.join(', ')})`)
  } else {
    console.log('  berth served >= 1.0x Redis: not measured (no Redis baseline)')
  }
})

child.kill('SIGTERM')
await new Promise((r) => child.on('exit', r))
process.exit(0)
