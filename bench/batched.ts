// A @batched method against a hand-written DataLoader-style batcher, same process, interleaved
// rounds. Run: npm run bench (or: npx tsx bench/batched.ts)
import { App, Cls, batched, method } from 'berth'
import { closedLoop, compare } from './harness.ts'

const IN_FLIGHT = 1000
const N = Number(process.env.BENCH_N ?? 200_000)
const MAX_BATCH = 64

async function embedMany(xs: number[]): Promise<number[]> {
  return xs.map((x) => x * 2)
}

/** What people write by hand: collect the calls of one tick, run them as batches of MAX_BATCH. */
class Batcher {
  private queue: { x: number; resolve: (v: number) => void; reject: (e: unknown) => void }[] = []
  private scheduled = false
  load(x: number): Promise<number> {
    return new Promise((resolve, reject) => {
      this.queue.push({ x, resolve, reject })
      if (!this.scheduled) {
        this.scheduled = true
        process.nextTick(() => this.dispatch())
      }
    })
  }
  private dispatch() {
    this.scheduled = false
    const q = this.queue
    this.queue = []
    for (let i = 0; i < q.length; i += MAX_BATCH) {
      const part = q.slice(i, i + MAX_BATCH)
      embedMany(part.map((p) => p.x)).then(
        (out) => part.forEach((p, j) => p.resolve(out[j])),
        (e) => part.forEach((p) => p.reject(e)),
      )
    }
  }
}

const app = new App('bench-batched')

@app.cls()
class Model {
  @batched({ maxBatchSize: MAX_BATCH, waitMs: 0 })
  async embedMany(xs: number[]): Promise<number[]> {
    return xs.map((x) => x * 2)
  }
  @method() async ping(): Promise<number> {
    return 0
  }
}

await app.run(async () => {
  const batcher = new Batcher()
  const model = Cls.of(Model)
  await compare(
    '@batched method, maxBatchSize 64, in-process',
    [
      { name: 'hand-written DataLoader batcher', run: (n, k) => closedLoop(n, k, (i) => batcher.load(i)) },
      { name: 'berth @batched .remote()', run: (n, k) => closedLoop(n, k, (i) => model.embedMany.remote(i)) },
    ],
    { n: N, inFlight: IN_FLIGHT, rounds: 5, base: 'hand-written DataLoader batcher' },
  )
})
