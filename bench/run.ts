// `.remote()` and `.map()` from the process that runs the control plane itself:
// `app.run({ containers: 'process' })`, what `berth run --containers process` does. One
// container process, no-op inputs. Run: npx tsx bench/run.ts
import { app, noop } from './fixtures/noop.ts'

const N = Number(process.env.BENCH_N ?? 50_000)
const SEQ = 2_000
const IN_FLIGHT = 1000
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]

await app.run(async () => {
  await noop.remote(0)
  const seq: number[] = []
  const flight: number[] = []
  const map: number[] = []
  for (let round = 0; round < 3; round++) {
    let t0 = performance.now()
    for (let i = 0; i < SEQ; i++) await noop.remote(i)
    seq.push(((performance.now() - t0) * 1000) / SEQ)

    t0 = performance.now()
    let next = 0
    await Promise.all(Array.from({ length: IN_FLIGHT }, async () => {
      while (next < N) await noop.remote(next++)
    }))
    flight.push(N / ((performance.now() - t0) / 1000))

    t0 = performance.now()
    let count = 0
    for await (const _ of noop.map(Array.from({ length: N }, (_, i) => i))) count++
    if (count !== N) throw new Error(`${count}/${N} results`)
    map.push(N / ((performance.now() - t0) / 1000))
  }
  const fmt = (x: number) => Math.round(x).toLocaleString('en-US')
  console.log(`\napp.run({ containers: 'process' }), 1 container process (2 cores), no-op inputs, median of 3 rounds`)
  console.log(`  .remote() one at a time           ${median(seq).toFixed(0)} µs per call (${SEQ} calls)`)
  console.log(`  .remote(), ${IN_FLIGHT} in flight          ${fmt(median(flight))} calls/s (${N} calls)`)
  console.log(`  .map()                            ${fmt(median(map))} inputs/s (${N} inputs)`)
}, { containers: 'process' })
