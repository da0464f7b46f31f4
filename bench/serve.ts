// Throughput of `.map()` through the control plane and one container process, and a cold
// container's first-call time. Run: npx tsx bench/serve.ts
import { execFileSync, spawn } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import grpc from '@grpc/grpc-js'
import loader from '@grpc/proto-loader'
import { Encoder } from 'cbor-x'
import { App, Function } from 'berth'

const root = fileURLToPath(new URL('..', import.meta.url))
const N = Number(process.env.BENCH_N ?? 100_000)
const cbor = new Encoder({ useRecords: false, mapsAsObjects: true, tagUint8Array: false })

const t0 = performance.now()
const child = spawn(process.execPath, [join(root, 'bin/berth.mjs'), 'serve', join(root, 'bench/fixtures/noop.ts'), '--grpc-port', '0', '--http-port', '0'], { stdio: ['ignore', 'pipe', 'inherit'] })
const address = await new Promise<string>((resolve) => {
  let out = ''
  child.stdout!.on('data', (d) => {
    out += d
    const m = /on (127\.0\.0\.1:\d+)/.exec(out)
    if (m) resolve(m[1])
  })
})
const listening = performance.now() - t0
App.lookup('bench-serve', { server: `http://${address}` })
const noop = Function.fromName<(x: number) => Promise<number>>('bench-serve', 'noop')
const c0 = performance.now()
await noop.remote(0)
const cold = performance.now() - c0
const w0 = performance.now()
await noop.remote(1)
const warm = performance.now() - w0
// A container started later (scale-up, another function) comes from the warm spare: a Node
// process with tsx and berth loaded, which only loads the module and attaches.
await new Promise((r) => setTimeout(r, 1500))
const other = Function.fromName<(x: number) => Promise<number>>('bench-serve', 'other')
const s0 = performance.now()
await other.remote(0)
const fromSpare = performance.now() - s0

// The Map stream, from a plain gRPC client.
const proto = loader.loadSync('berth/v1/functions.proto', { includeDirs: [join(root, 'proto')] })
const Functions = (grpc.loadPackageDefinition(proto) as any).berth.v1.Functions
const client = new Functions(address, grpc.credentials.createInsecure(), { 'grpc.max_receive_message_length': -1 })
async function mapStream(n: number): Promise<number> {
  const start = performance.now()
  const stream = client.Map()
  let got = 0
  const done = new Promise<void>((resolve, reject) => {
    stream.on('data', () => {
      got++
    })
    stream.on('end', resolve)
    stream.on('error', reject)
  })
  stream.write({ function: { app: 'bench-serve', function: 'noop' } })
  const args = cbor.encode([1])
  for (let i = 0; i < n; i++) stream.write({ input: { index: i, args } })
  stream.end()
  await done
  if (got !== n) throw new Error(`${got}/${n} results`)
  return n / ((performance.now() - start) / 1000)
}
// berth's own client: .map() is one Map stream, inputs and results in packed batches.
async function berthMap(n: number): Promise<number> {
  const start = performance.now()
  let count = 0
  for await (const _ of noop.map(Array.from({ length: n }, (_, i) => i))) count++
  if (count !== n) throw new Error(`${count}/${n} results`)
  return n / ((performance.now() - start) / 1000)
}
await berthMap(10_000)
// CPU time of each process (utime + stime, ms), to see which side bounds the rate.
const cpuMs = (pid: number) => {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ')
  return (Number(f[11]) + Number(f[12])) * (1000 / 100)
}
const procs = [process.pid, child.pid!, ...execFileSync('ps', ['-o', 'pid=', '--ppid', String(child.pid)], { encoding: 'utf8' }).trim().split(/\s+/).map(Number)]
const cpu0 = procs.map(cpuMs)
const berthRates = [await berthMap(N), await berthMap(N), await berthMap(N)].sort((a, b) => a - b)
const perInput = procs.map((p, i) => ((cpuMs(p) - cpu0[i]) * 1000) / (3 * N))
// A plain grpc-js client, for reference: in this process it is the bottleneck (protobufjs).
const grpcRate = await mapStream(10_000)

console.log(`\ncontrol plane + 1 container process (2 cores), no-op inputs`)
console.log(`  berth serve listening after       ${listening.toFixed(0)} ms`)
console.log(`  first call after listening        ${cold.toFixed(0)} ms   (the first container, prestarted while berth serve loaded the file)`)
console.log(`  next call (warm)                  ${warm.toFixed(1)} ms`)
console.log(`  first call, container from spare  ${fromSpare.toFixed(0)} ms   (spawn-to-ready: load the file + attach + run; BERTH_WARM_SPARE=0 to compare)`)
console.log(`  Function.fromName().map()         ${Math.round(berthRates[1]).toLocaleString('en-US')} inputs/s (one Map stream, median of 3 x ${N})`)
console.log(`    CPU per input: caller ${perInput[0].toFixed(1)} µs, control plane ${perInput[1].toFixed(1)} µs, container ${Math.max(...perInput.slice(2)).toFixed(1)} µs`)
console.log(`  Map stream from @grpc/grpc-js     ${Math.round(grpcRate).toLocaleString('en-US')} inputs/s (10,000; the JS client is the bottleneck)`)
client.close()
child.kill('SIGTERM')
await new Promise((r) => child.on('exit', r))
