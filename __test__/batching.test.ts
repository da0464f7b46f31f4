// Batching (README "API"), from the user's view: one item in, one result out; the body gets one array
// per argument; a batch goes when full (without waiting) or when waitMs has passed since its
// oldest input; work-conserving growth while busy; wrong-length and throwing batches fail every
// input of that batch; several @batched and @method members side by side.
import test from 'ava'
import { App, Cls, InvalidError, RemoteError, batched, method } from 'berth'
import { deferred, sleep, until, within } from './_util.ts'

// ---------------------------------------------------------------------------------------------
// Full batches go at once: with waitMs 10 s, 8 inputs and maxBatchSize 4 are served long before
// any deadline.

const fullSizes: number[] = []
const fullApp = new App('batching-full')

@fullApp.cls()
class Full {
  @batched({ maxBatchSize: 4, waitMs: 10_000 })
  async double(xs: number[]): Promise<number[]> {
    fullSizes.push(xs.length)
    return xs.map((x) => x * 2)
  }
}

test('a full batch is dispatched at once, without waiting for waitMs', async (t) => {
  const t0 = Date.now()
  const out = await within(8000, fullApp.run(async () => {
    const h = Cls.of(Full)
    return Promise.all([1, 2, 3, 4, 5, 6, 7, 8].map((x) => h.double.remote(x)))
  }), 'full batches (waitMs is 10 s)')
  t.deepEqual(out, [2, 4, 6, 8, 10, 12, 14, 16])
  t.deepEqual(fullSizes, [4, 4])
  t.true(Date.now() - t0 < 5000)
})

// ---------------------------------------------------------------------------------------------
// A partial batch goes at the deadline: waitMs after its OLDEST input, collecting later ones.

const partialSizes: number[] = []
const partialApp = new App('batching-deadline')

@partialApp.cls()
class Partial {
  @batched({ maxBatchSize: 100, waitMs: 300 })
  async upper(xs: string[]): Promise<string[]> {
    partialSizes.push(xs.length)
    return xs.map((x) => x.toUpperCase())
  }
}

test('a partial batch is dispatched when waitMs has passed since its oldest input', async (t) => {
  const { out, elapsed } = await within(8000, partialApp.run(async () => {
    const h = Cls.of(Partial)
    const t0 = Date.now()
    const first = h.upper.remote('a')
    await sleep(60)
    const rest = [h.upper.remote('b'), h.upper.remote('c')]
    const out = await Promise.all([first, ...rest])
    return { out, elapsed: Date.now() - t0 }
  }))
  t.deepEqual(out, ['A', 'B', 'C'])
  // One batch: the inputs that came while the first one waited joined it.
  t.deepEqual(partialSizes, [3])
  t.true(elapsed >= 250, `dispatched after ${elapsed} ms, before the 300 ms deadline`)
})

// ---------------------------------------------------------------------------------------------
// Work-conserving: while the container is busy, the next batch keeps growing.

const growSizes: number[] = []
const busy = deferred()
const growApp = new App('batching-grow')

@growApp.cls()
class Grow {
  @batched({ maxBatchSize: 50, waitMs: 0 })
  async echo(xs: number[]): Promise<number[]> {
    growSizes.push(xs.length)
    if (growSizes.length === 1) await busy.promise
    return xs
  }
}

test('while the container is busy, the next batch keeps growing (work-conserving)', async (t) => {
  const out = await within(8000, growApp.run(async () => {
    const h = Cls.of(Grow)
    const first = h.echo.remote(0)
    await until(() => growSizes.length === 1, 5000, 'first batch started')
    const rest = [1, 2, 3, 4, 5].map((x) => h.echo.remote(x))
    await sleep(50) // waitMs is 0: they are all due, but the only container is busy
    busy.resolve()
    return Promise.all([first, ...rest])
  }))
  t.deepEqual(out, [0, 1, 2, 3, 4, 5])
  t.deepEqual(growSizes, [1, 5])
})

// ---------------------------------------------------------------------------------------------
// One array per argument; ONE result per call; batches never exceed maxBatchSize.

const columns: unknown[][][] = []
const multiApp = new App('batching-columns')

@multiApp.cls()
class Columns {
  @batched({ maxBatchSize: 3, waitMs: 50 })
  async join(names: string[], counts: number[]): Promise<string[]> {
    columns.push([names, counts])
    return names.map((n, i) => n.repeat(counts[i]))
  }
}

test('the body receives one array per argument; each caller gets its own one result', async (t) => {
  const out = await within(8000, multiApp.run(async () => {
    const h = Cls.of(Columns)
    return Promise.all([h.join.remote('a', 1), h.join.remote('b', 2), h.join.remote('c', 3), h.join.remote('d', 2)])
  }))
  t.deepEqual(out, ['a', 'bb', 'ccc', 'dd'])
  t.true(columns.every(([n, c]) => Array.isArray(n) && Array.isArray(c) && n.length === c.length && n.length <= 3))
  t.deepEqual(columns.flatMap(([n]) => n), ['a', 'b', 'c', 'd'])
  t.deepEqual(columns.flatMap(([, c]) => c), [1, 2, 3, 2])
})

// ---------------------------------------------------------------------------------------------
// A wrong-length result and a throw fail every input of that batch, and only that batch.

let badCalls = 0
const badApp = new App('batching-errors')

class EmbedError extends Error {
  override name = 'EmbedError'
}

@badApp.cls()
class Bad {
  @batched({ maxBatchSize: 3, waitMs: 5000 })
  async short(xs: number[]): Promise<number[]> {
    badCalls++
    return xs.slice(1) // one result too few
  }
  @batched({ maxBatchSize: 3, waitMs: 5000 })
  async notArray(xs: number[]): Promise<number[]> {
    return { length: xs.length } as unknown as number[]
  }
  @batched({ maxBatchSize: 3, waitMs: 5000 })
  async boom(xs: number[]): Promise<number[]> {
    if (xs.includes(13)) throw new EmbedError(`unlucky batch ${xs.join(',')}`)
    return xs
  }
}

test.serial('a batch returning the wrong number of results fails every input with InvalidError', async (t) => {
  const [short, notArray] = await within(8000, badApp.run(async () => {
    const h = Cls.of(Bad)
    return Promise.all([
      Promise.allSettled([1, 2, 3].map((x) => h.short.remote(x))),
      Promise.allSettled([1, 2, 3].map((x) => h.notArray.remote(x))),
    ])
  }))
  t.is(badCalls, 1)
  for (const s of [...short, ...notArray]) {
    t.is(s.status, 'rejected')
    const e = (s as PromiseRejectedResult).reason
    t.true(e instanceof InvalidError, `expected InvalidError, got ${e?.name}`)
    t.regex(e.message, /array of 3/)
  }
})

test.serial('a batch that throws fails every input of that batch with the RemoteError, others succeed', async (t) => {
  const settled = await within(8000, badApp.run(async () => {
    const h = Cls.of(Bad)
    // Two full batches: [1, 13, 2] throws, [3, 4, 5] succeeds.
    return Promise.allSettled([1, 13, 2, 3, 4, 5].map((x) => h.boom.remote(x)))
  }))
  for (const s of settled.slice(0, 3)) {
    t.is(s.status, 'rejected')
    const e = (s as PromiseRejectedResult).reason
    t.true(e instanceof RemoteError)
    t.is(e.remoteName, 'EmbedError')
    t.is(e.message, 'unlucky batch 1,13,2')
    t.regex(e.remoteStack, /boom/)
  }
  t.deepEqual(settled.slice(3).map((s) => (s as PromiseFulfilledResult<number>).value), [3, 4, 5])
})

// ---------------------------------------------------------------------------------------------
// Several @batched methods and plain @methods side by side, and app.function({ batched }).

const sideBatches: string[] = []
const sideApp = new App('batching-side-by-side')

@sideApp.cls()
class SideBySide {
  prefix = '>'
  @batched({ maxBatchSize: 8, waitMs: 20 })
  async lens(xs: string[]): Promise<number[]> {
    sideBatches.push(`lens:${xs.length}`)
    return xs.map((x) => x.length)
  }
  @method() async plain(x: string): Promise<string> {
    return this.prefix + x
  }
  @batched({ maxBatchSize: 8, waitMs: 20 })
  async negate(xs: number[]): Promise<number[]> {
    sideBatches.push(`negate:${xs.length}`)
    return xs.map((x) => -x)
  }
}

const sumPairs = sideApp.function({ batched: { maxBatchSize: 10, waitMs: 20 } }, async function sumPairs(as: number[], bs: number[]) {
  sideBatches.push(`sumPairs:${as.length}`)
  return as.map((a, i) => a + bs[i])
})

test('several @batched and @method members side by side; app.function({ batched })', async (t) => {
  const out = await within(8000, sideApp.run(async () => {
    const h = Cls.of(SideBySide)
    return Promise.all([
      Promise.all(['a', 'bb', 'ccc'].map((x) => h.lens.remote(x))),
      Promise.all([1, 2].map((x) => h.negate.remote(x))),
      h.plain.remote('x'),
      Promise.all([[1, 2], [3, 4], [5, 6]].map(([a, b]) => sumPairs.remote(a, b))),
    ])
  }))
  t.deepEqual(out, [[1, 2, 3], [-1, -2], '>x', [3, 7, 11]])
  t.deepEqual([...sideBatches].sort(), ['lens:3', 'negate:2', 'sumPairs:3'])
})
