// Timeouts, retries, cancellation (README "API"), from the user's view.
import test from 'ava'
import { App, Cls, FunctionTimeoutError, InputCancelledError, RemoteError, Retries, batched, concurrent, currentInput, method } from 'berth'
import { abortedWithin, deferred, sleep, until, within } from './_util.ts'

// ---------------------------------------------------------------------------------------------
// Timeout: past `timeout` the input fails with FunctionTimeoutError and its AbortSignal fires.

const timeoutSeen: { aborted: boolean; reason?: string }[] = []
const timeoutApp = new App('timeouts-timeout')
const hang = timeoutApp.function({ timeout: 0.2 }, async function hang(ms: number) {
  const signal = currentInput().signal
  const aborted = await abortedWithin(signal, ms)
  timeoutSeen.push({ aborted, reason: (signal.reason as Error | undefined)?.name })
  return 'finished'
})

test('timeout: the input fails with FunctionTimeoutError and its AbortSignal fires', async (t) => {
  const t0 = Date.now()
  const err = await within(10_000, timeoutApp.run(async () => {
    const e = await t.throwsAsync(hang.remote(5000))
    await until(() => timeoutSeen.length === 1, 5000, 'the method saw its signal')
    return e
  }))
  t.true(err instanceof FunctionTimeoutError, `expected FunctionTimeoutError, got ${err?.name}`)
  t.regex(err!.message, /hang/)
  t.deepEqual(timeoutSeen, [{ aborted: true, reason: 'FunctionTimeoutError' }])
  t.true(Date.now() - t0 < 4000, 'the caller did not wait for the 5 s body')
})

// A method that finishes within its timeout is unaffected, and its signal never fires.
const okSignals: boolean[] = []
const okApp = new App('timeouts-ok')
const quick = okApp.function({ timeout: 0.2 }, async function quick(x: number) {
  const signal = currentInput().signal
  await sleep(20)
  okSignals.push(signal.aborted)
  return x + 1
})

test('an input that finishes within its timeout succeeds and its signal does not fire', async (t) => {
  const out = await within(10_000, okApp.run(() => Promise.all([1, 2, 3].map((x) => quick.remote(x)))))
  t.deepEqual(out, [2, 3, 4])
  t.deepEqual(okSignals, [false, false, false])
})

// ---------------------------------------------------------------------------------------------
// Retries: counted attempts; a number n retries n times; exhausted retries give the RemoteError.

const flakyAttempts = new Map<string, number>()
function flakyBody(key: string, failures: number): string {
  const n = (flakyAttempts.get(key) ?? 0) + 1
  flakyAttempts.set(key, n)
  if (n <= failures) throw new RangeError(`attempt ${n} of ${key} failed`)
  return `${key} ok on attempt ${n}`
}

const retry2App = new App('timeouts-retries-2')
const flaky2 = retry2App.function({ retries: 2 }, async function flaky2(key: string) {
  return flakyBody(key, 2)
})

test('retries: 2 — fails twice then succeeds; 3 attempts observed', async (t) => {
  const out = await within(15_000, retry2App.run(() => flaky2.remote('r2')))
  t.is(out, 'r2 ok on attempt 3')
  t.is(flakyAttempts.get('r2'), 3)
})

const retry1App = new App('timeouts-retries-1')
const flaky1 = retry1App.function({ retries: 1 }, async function flaky1(key: string) {
  return flakyBody(key, 2)
})

test('retries: 1 — fails twice: the caller gets the RemoteError of the last attempt', async (t) => {
  const err = await within(15_000, retry1App.run(() => t.throwsAsync(flaky1.remote('r1'))))
  t.true(err instanceof RemoteError)
  t.is((err as RemoteError).remoteName, 'RangeError')
  t.is(err!.message, 'attempt 2 of r1 failed')
  t.is(flakyAttempts.get('r1'), 2, 'one retry, no more')
})

const noRetryApp = new App('timeouts-no-retries')
const flaky0 = noRetryApp.function(async function flaky0(key: string) {
  return flakyBody(key, 1)
})

test('no retries by default: one attempt', async (t) => {
  const err = await within(10_000, noRetryApp.run(() => t.throwsAsync(flaky0.remote('r0'))))
  t.true(err instanceof RemoteError)
  t.is(flakyAttempts.get('r0'), 1)
})

// Delay before retry k is initialDelay · backoffCoefficient^(k-1), and at least 1 s (Modal's floor).
const attemptTimes: number[] = []
const backoffApp = new App('timeouts-backoff')
const backoff = backoffApp.function(
  { retries: new Retries({ maxRetries: 2, initialDelay: 0.5, backoffCoefficient: 3 }) },
  async function backoff() {
    attemptTimes.push(Date.now())
    if (attemptTimes.length < 3) throw new Error('not yet')
    return attemptTimes.length
  },
)

test('Retries({ initialDelay: 0.5, backoffCoefficient: 3 }) waits 1 s (the floor, not 0.5 s), then 1.5 s', async (t) => {
  t.is(await within(15_000, backoffApp.run(() => backoff.remote())), 3)
  const [a, b, c] = attemptTimes
  t.true(b - a >= 950, `first retry after ${b - a} ms, expected ~1000`)
  t.true(c - b >= 1400, `second retry after ${c - b} ms, expected ~1500`)
})

// A timed-out attempt is retried; the late result of the old attempt is not delivered.
let slowFirstAttempts = 0
const retryTimeoutApp = new App('timeouts-retry-timeout')
const slowFirst = retryTimeoutApp.function(
  { timeout: 0.2, retries: new Retries({ maxRetries: 1, initialDelay: 0 }) },
  async function slowFirst() {
    const attempt = ++slowFirstAttempts
    if (attempt === 1) await sleep(500)
    return `attempt ${attempt}`
  },
)

test('a timed-out attempt is retried, and only the retry result is delivered', async (t) => {
  const out = await within(10_000, retryTimeoutApp.run(async () => {
    const r = await slowFirst.remote()
    await sleep(500) // the first attempt returns late meanwhile
    return r
  }))
  t.is(out, 'attempt 2')
  t.is(slowFirstAttempts, 2)
})

// ---------------------------------------------------------------------------------------------
// Cancellation: running inputs see their signal abort, queued ones are dropped, the caller gets
// InputCancelledError, and a cancelled input is not retried.

const cancelLog: string[] = []
const running = deferred()
const cancelApp = new App('timeouts-cancel')

@cancelApp.cls({ retries: new Retries({ maxRetries: 3, initialDelay: 0 }) })
@concurrent({ maxInputs: 1 })
class Worker {
  @method() async job(name: string): Promise<string> {
    cancelLog.push(`start ${name}`)
    const signal = currentInput().signal
    if (name === 'long') running.resolve()
    const aborted = await abortedWithin(signal, name === 'long' ? 5000 : 10)
    cancelLog.push(`${name} ${aborted ? `aborted (${(signal.reason as Error).name})` : 'finished'}`)
    return name
  }
}

test('cancel(): the running input\'s signal aborts, a queued one never runs, callers get InputCancelledError', async (t) => {
  const { errLong, errQueued, next } = await within(10_000, cancelApp.run(async () => {
    const h = Cls.of(Worker)
    const long = await h.job.spawn('long')
    const queued = await h.job.spawn('queued') // maxInputs 1: waits behind `long`
    await running.promise
    await queued.cancel()
    await long.cancel()
    const errLong = await t.throwsAsync(long.get())
    const errQueued = await t.throwsAsync(queued.get())
    await until(() => cancelLog.includes('long aborted (InputCancelledError)'), 5000, 'long saw its signal')
    const next = await h.job.remote('after') // the container is free again
    await sleep(100) // room for a (wrong) retry of the cancelled input
    return { errLong, errQueued, next }
  }))
  t.true(errLong instanceof InputCancelledError, `expected InputCancelledError, got ${errLong?.name}`)
  t.true(errQueued instanceof InputCancelledError, `expected InputCancelledError, got ${errQueued?.name}`)
  t.is(next, 'after')
  t.false(cancelLog.includes('start queued'), 'the queued input was dropped')
  t.is(cancelLog.filter((l) => l === 'start long').length, 1, 'a cancelled input is not retried')
  t.deepEqual(cancelLog, ['start long', 'long aborted (InputCancelledError)', 'start after', 'after finished'])
})

// Breaking out of map cancels what is still queued or running.
let mapStarted = 0
const mapCancelApp = new App('timeouts-map-cancel')
const slowSquare = mapCancelApp.function(async function slowSquare(x: number) {
  mapStarted++
  await sleep(x === 0 ? 0 : 50)
  return x * x
})

test('breaking out of map() cancels the inputs not yet run', async (t) => {
  const got = await within(10_000, mapCancelApp.run(async () => {
    const out: number[] = []
    for await (const y of slowSquare.map([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])) {
      out.push(y)
      if (out.length === 1) break
    }
    await sleep(300)
    return out
  }))
  t.deepEqual(got, [0])
  t.true(mapStarted < 10, `all ${mapStarted} inputs ran after the consumer stopped`)
})

// ---------------------------------------------------------------------------------------------
// Batches: the timeout bounds the batch; cancelling one input leaves the rest of its batch alone;
// the batch's signal fires once every input of it is cancelled.

const batchSignals: { items: string; aborted: boolean; reason?: string }[] = []
let batchStarted = deferred()
const batchApp = new App('timeouts-batch')

@batchApp.cls({ timeout: 0.2 })
class BatchJob {
  @batched({ maxBatchSize: 3, waitMs: 5000 })
  async job(xs: number[]): Promise<number[]> {
    const signal = currentInput().signal
    batchStarted.resolve()
    const aborted = await abortedWithin(signal, xs.includes(0) ? 3000 : 150)
    batchSignals.push({ items: xs.join(','), aborted, reason: (signal.reason as Error | undefined)?.name })
    return xs.map((x) => x * 10)
  }
}

test.serial('a batch past its timeout fails every input with FunctionTimeoutError and its signal fires', async (t) => {
  batchSignals.length = 0
  const settled = await within(10_000, batchApp.run(async () => {
    const h = Cls.of(BatchJob)
    const r = await Promise.allSettled([0, 1, 2].map((x) => h.job.remote(x)))
    await until(() => batchSignals.length === 1, 5000, 'the batch saw its signal')
    return r
  }))
  for (const s of settled) t.true(s.status === 'rejected' && s.reason instanceof FunctionTimeoutError)
  t.deepEqual(batchSignals, [{ items: '0,1,2', aborted: true, reason: 'FunctionTimeoutError' }])
})

test.serial('cancelling one input of a running batch fails only that input; cancelling all fires the batch signal', async (t) => {
  batchSignals.length = 0
  await within(10_000, batchApp.run(async () => {
    const h = Cls.of(BatchJob)
    batchStarted = deferred()
    const one = await Promise.all([1, 2, 3].map((x) => h.job.spawn(x)))
    await batchStarted.promise
    await one[0].cancel()
    const r1 = await Promise.allSettled(one.map((c) => c.get()))
    t.true(r1[0].status === 'rejected' && r1[0].reason instanceof InputCancelledError)
    t.deepEqual(r1.slice(1), [{ status: 'fulfilled', value: 20 }, { status: 'fulfilled', value: 30 }])

    batchStarted = deferred()
    const all = await Promise.all([4, 5, 6].map((x) => h.job.spawn(x)))
    await batchStarted.promise
    await Promise.all(all.map((c) => c.cancel()))
    const r2 = await Promise.allSettled(all.map((c) => c.get()))
    t.true(r2.every((s) => s.status === 'rejected' && s.reason instanceof InputCancelledError))
    await until(() => batchSignals.length === 2, 5000, 'the second batch returned')
  }))
  t.deepEqual(batchSignals, [
    { items: '1,2,3', aborted: false, reason: undefined },
    { items: '4,5,6', aborted: true, reason: 'InputCancelledError' },
  ])
})
