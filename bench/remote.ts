// In-process no-op `.remote()` throughput against a hand-written JS semaphore doing the same
// work and a bare direct call. Run: npm run bench (or: npx tsx bench/remote.ts)
import { App } from 'berth'
import { closedLoop, compare } from './harness.ts'

const IN_FLIGHT = 1000
const N = Number(process.env.BENCH_N ?? 200_000)

async function noop(x: number): Promise<number> {
  return x
}

/** What people write by hand: a counting semaphore in front of an async function. */
class Semaphore {
  private waiting: (() => void)[] = []
  constructor(private free: number) {}
  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.free > 0) this.free--
    else await new Promise<void>((r) => this.waiting.push(r))
    try {
      return await fn()
    } finally {
      const next = this.waiting.shift()
      if (next) next()
      else this.free++
    }
  }
}

const app = new App('bench-remote')
const remoteNoop = app.function({ concurrent: { maxInputs: IN_FLIGHT } }, async function remoteNoop(x: number) {
  return x
})

await app.run(async () => {
  const sem = new Semaphore(IN_FLIGHT)
  await compare(
    'no-op call, in-process',
    [
      { name: 'direct call', run: (n, k) => closedLoop(n, k, (i) => noop(i)) },
      { name: 'hand-written semaphore', run: (n, k) => closedLoop(n, k, (i) => sem.run(() => noop(i))) },
      { name: 'berth .remote()', run: (n, k) => closedLoop(n, k, (i) => remoteNoop.remote(i)) },
    ],
    { n: N, inFlight: IN_FLIGHT, rounds: 5, base: 'hand-written semaphore' },
  )
})
