// Shared bench harness: interleaved rounds in one process, medians, ratios.
export interface Contender {
  name: string
  /** Runs `n` calls with `inFlight` callers, each awaiting its call before making the next. */
  run(n: number, inFlight: number): Promise<void>
}

export async function closedLoop(n: number, inFlight: number, call: (i: number) => Promise<unknown>): Promise<void> {
  let next = 0
  const worker = async () => {
    while (next < n) await call(next++)
  }
  await Promise.all(Array.from({ length: inFlight }, worker))
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]

/** Runs every contender `rounds` times, interleaved, and prints inputs/s and ratios to `base`. */
export async function compare(title: string, contenders: Contender[], opts: { n: number; inFlight: number; rounds: number; base: string }) {
  const rates = new Map<string, number[]>(contenders.map((c) => [c.name, []]))
  for (const c of contenders) await c.run(Math.min(opts.n, 20_000), opts.inFlight) // warm-up
  for (let r = 0; r < opts.rounds; r++) {
    for (const c of contenders) {
      const t0 = process.hrtime.bigint()
      await c.run(opts.n, opts.inFlight)
      const s = Number(process.hrtime.bigint() - t0) / 1e9
      rates.get(c.name)!.push(opts.n / s)
    }
  }
  const base = median(rates.get(opts.base)!)
  const context = process.env.BERTH_ASYNC_CONTEXT === '0' ? 'BERTH_ASYNC_CONTEXT=0' : 'AsyncLocalStorage context (default)'
  console.log(`\n${title}, ${context}  (${opts.n} calls, ${opts.inFlight} in flight, median of ${opts.rounds} interleaved rounds)`)
  for (const c of contenders) {
    const m = median(rates.get(c.name)!)
    console.log(`  ${c.name.padEnd(34)} ${Math.round(m).toLocaleString('en-US').padStart(12)} calls/s   ${(m / base).toFixed(2)}x ${opts.base}`)
  }
  return new Map([...rates].map(([k, v]) => [k, median(v)]))
}
