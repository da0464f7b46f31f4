// Concurrency (README "API"), from the user's view: in-flight inputs per container never exceed
// maxInputs (a live counter inside the method), default one at a time, the `concurrent` option
// of app.function, and targetInputs > maxInputs rejected.
import test from 'ava'
import { App, Cls, FunctionTimeoutError, InvalidError, concurrent, enter, method } from 'berth'
import { sleep, within } from './_util.ts'

// ---------------------------------------------------------------------------------------------

let live = 0
let peak = 0
const capApp = new App('concurrency-cap')

@capApp.cls()
@concurrent({ maxInputs: 4 })
class Capped {
  @method() async work(ms: number): Promise<number> {
    live++
    peak = Math.max(peak, live)
    await sleep(ms)
    live--
    return live
  }
}

test('@concurrent({ maxInputs: 4 }): in-flight inputs never exceed 4, and do reach 4', async (t) => {
  await within(10_000, capApp.run(async () => {
    const h = Cls.of(Capped)
    await Promise.all(Array.from({ length: 40 }, () => h.work.remote(15)))
  }))
  t.is(live, 0)
  t.true(peak <= 4, `peak in-flight ${peak} > maxInputs 4`)
  t.is(peak, 4, 'with 40 inputs waiting, a free slot is always filled')
})

// ---------------------------------------------------------------------------------------------

let seqLive = 0
let seqPeak = 0
const defaultApp = new App('concurrency-default')

@defaultApp.cls()
class OneAtATime {
  @method() async work(ms: number): Promise<void> {
    seqLive++
    seqPeak = Math.max(seqPeak, seqLive)
    await sleep(ms)
    seqLive--
  }
}

test('without @concurrent a container runs one input at a time', async (t) => {
  await within(10_000, defaultApp.run(async () => {
    const h = Cls.of(OneAtATime)
    await Promise.all(Array.from({ length: 15 }, () => h.work.remote(5)))
  }))
  t.is(seqPeak, 1)
})

// ---------------------------------------------------------------------------------------------

let idSeq = 0
const perContainerPeaks = new Map<number, number>()
let globalLive = 0
let globalPeak = 0
const multiApp = new App('concurrency-multi')

@multiApp.cls({ maxContainers: 3 })
@concurrent({ maxInputs: 2 })
class PerContainer {
  id = 0
  live = 0
  @enter() load() {
    this.id = ++idSeq
  }
  @method() async work(ms: number): Promise<number> {
    this.live++
    globalLive++
    globalPeak = Math.max(globalPeak, globalLive)
    perContainerPeaks.set(this.id, Math.max(perContainerPeaks.get(this.id) ?? 0, this.live))
    await sleep(ms)
    this.live--
    globalLive--
    return this.id
  }
}

test('maxInputs is per container: each of several containers stays within it', async (t) => {
  const ids = await within(10_000, multiApp.run(async () => {
    const h = Cls.of(PerContainer)
    return Promise.all(Array.from({ length: 60 }, () => h.work.remote(10)))
  }))
  t.true(new Set(ids).size >= 2, 'several containers served')
  for (const [id, p] of perContainerPeaks) t.true(p <= 2, `container ${id} ran ${p} inputs at once (maxInputs 2)`)
  t.true(globalPeak <= 6, `${globalPeak} inputs at once on at most 3 containers × 2`)
  t.true(globalPeak > 2, 'more than one container worked at once')
})

// ---------------------------------------------------------------------------------------------

let fnLive = 0
let fnPeak = 0
const fnApp = new App('concurrency-function')
const fetchPage = fnApp.function({ concurrent: { maxInputs: 3 } }, async function fetchPage(ms: number) {
  fnLive++
  fnPeak = Math.max(fnPeak, fnLive)
  await sleep(ms)
  fnLive--
  return ms
})

test('app.function({ concurrent: { maxInputs: 3 } }) caps in-flight inputs at 3', async (t) => {
  const out = await within(10_000, fnApp.run(async () => {
    const r: number[] = []
    for await (const x of fetchPage.map(Array.from({ length: 24 }, () => 10))) r.push(x)
    return r
  }))
  t.is(out.length, 24)
  t.true(fnPeak <= 3, `peak ${fnPeak} > 3`)
  t.is(fnPeak, 3)
})

// ---------------------------------------------------------------------------------------------
// A timed-out input keeps its slot until its code settles: the code still runs, so the cap holds.

let toLive = 0
let toPeak = 0
const timeoutSlotApp = new App('concurrency-timeout-slot')
const stubborn = timeoutSlotApp.function(
  { timeout: 0.1, concurrent: { maxInputs: 2 } },
  async function stubborn(ms: number) {
    toLive++
    toPeak = Math.max(toPeak, toLive)
    await sleep(ms) // ignores its abort signal on purpose
    toLive--
    return ms
  },
)

test('inputs past their timeout still count against maxInputs until their code returns', async (t) => {
  const settled = await within(10_000, timeoutSlotApp.run(async () => {
    return Promise.allSettled(Array.from({ length: 6 }, () => stubborn.remote(300)))
  }))
  for (const s of settled) {
    t.is(s.status, 'rejected')
    t.true((s as PromiseRejectedResult).reason instanceof FunctionTimeoutError)
  }
  t.true(toPeak <= 2, `${toPeak} inputs ran at once with maxInputs 2`)
})

// ---------------------------------------------------------------------------------------------

test('targetInputs > maxInputs is an InvalidError naming the fix', (t) => {
  const app = new App('concurrency-invalid')
  const e1 = t.throws(() => {
    @app.cls()
    @concurrent({ maxInputs: 2, targetInputs: 5 })
    class TooMany {
      @method() work(): number {
        return 1
      }
    }
    void TooMany
  })
  t.true(e1 instanceof InvalidError)
  t.regex(e1!.message, /targetInputs.*maxInputs/)
  const e2 = t.throws(() => app.function({ concurrent: { maxInputs: 1, targetInputs: 2 } }, async function f() {}))
  t.true(e2 instanceof InvalidError)
  t.regex(e2!.message, /targetInputs/)
})
