// Results and errors (README "API"), from the user's view: RemoteError keeps name, message and stack;
// SerializationError at the caller before anything is sent; CBOR value types cross intact;
// caller and container never share references; every input gets exactly one result.
import test from 'ava'
import {
  App,
  Cls,
  FunctionTimeoutError,
  InputCancelledError,
  RemoteError,
  Retries,
  SerializationError,
  concurrent,
  method,
} from 'berth'
import { sleep, within } from './_util.ts'

const app = new App('results')

// ---------------------------------------------------------------------------------------------
// Errors

class QuotaExceeded extends Error {
  override name = 'QuotaExceeded'
}

function checkQuota(user: string): never {
  throw new QuotaExceeded(`user ${user} is over quota`)
}

const charge = app.function(async function charge(user: string) {
  checkQuota(user)
})

const throwsPlain = app.function(async function throwsPlain(kind: string) {
  if (kind === 'type') throw new TypeError('not a number')
  if (kind === 'string') throw 'a bare string' // eslint-disable-line no-throw-literal
  return kind
})

@app.cls()
class Billing {
  @method() async bill(user: string): Promise<void> {
    checkQuota(user)
  }
}

test.serial('a remote throw rejects with RemoteError keeping name, message and stack', async (t) => {
  await app.run(async () => {
    for (const call of [() => charge.remote('ada'), () => Cls.of(Billing).bill.remote('ada')]) {
      const e = await t.throwsAsync(call())
      t.true(e instanceof RemoteError, `expected RemoteError, got ${e?.name}`)
      t.is((e as RemoteError).remoteName, 'QuotaExceeded')
      t.is(e!.message, 'user ada is over quota')
      const stack = (e as RemoteError).remoteStack!
      t.is(typeof stack, 'string')
      t.regex(stack, /QuotaExceeded: user ada is over quota/)
      t.regex(stack, /checkQuota/, 'the stack is the one thrown in the container')
    }
    const te = await t.throwsAsync(throwsPlain.remote('type'))
    t.is((te as RemoteError).remoteName, 'TypeError')
    t.is(te!.message, 'not a number')
    const se = await t.throwsAsync(throwsPlain.remote('string'))
    t.true(se instanceof RemoteError)
    t.is(se!.message, 'a bare string')
  })
})

// ---------------------------------------------------------------------------------------------
// SerializationError at the caller, before sending.

let identityRuns = 0
const identity = app.function({ retries: 0 }, async function identity<T>(x: T): Promise<T> {
  identityRuns++
  return x
})

class Point {
  constructor(readonly x = 1, readonly y = 2) {}
}

test.serial('an argument that cannot be encoded fails at the caller with SerializationError; nothing runs', async (t) => {
  await app.run(async () => {
    const cyclic: Record<string, unknown> = { a: 1 }
    cyclic.self = cyclic
    const bad: unknown[] = [() => 1, Symbol('s'), new Point(), cyclic, { nested: [1, { fn: () => 2 }] }, new WeakMap(), Promise.resolve(1)]
    const before = identityRuns
    for (const v of bad) {
      const p = identity.remote(v as never)
      t.true(p instanceof Promise, 'remote() returns a rejected promise rather than throwing synchronously')
      const e = await t.throwsAsync(p)
      t.true(e instanceof SerializationError, `expected SerializationError for ${String(v)}, got ${e?.name}`)
      t.regex(e!.message, /argument 0/)
    }
    const e3 = await t.throwsAsync(async () => {
      for await (const _ of identity.map([new Point() as never, 1, 3])) void _
    })
    t.true(e3 instanceof SerializationError)
    await sleep(50)
    t.is(identityRuns - before, 0, 'no input with a bad argument reached a container')
  })
})

test.serial('spawn() with an argument that cannot be encoded rejects at the caller with SerializationError', async (t) => {
  await app.run(async () => {
    const before = identityRuns
    // Fails at spawn time, as remote() does: not a FunctionCall whose get() fails later.
    const e = await t.throwsAsync(identity.spawn({ ok: 1, bad: new Point() } as never))
    t.true(e instanceof SerializationError, `expected spawn() to reject with SerializationError, got ${e?.name ?? 'a resolved FunctionCall'}`)
    t.regex(e?.message ?? '', /bad/, 'the message names where the bad value is')
    await sleep(50)
    t.is(identityRuns - before, 0)
  })
})

const badResult = app.function(async function badResult() {
  return new Point()
})

test.serial('a result that cannot be encoded fails the call with SerializationError', async (t) => {
  await app.run(async () => {
    const e = await t.throwsAsync(badResult.remote())
    t.true(e instanceof SerializationError, `expected SerializationError, got ${e?.name}`)
  })
})

// ---------------------------------------------------------------------------------------------
// Values cross: JSON types, Uint8Array and typed arrays, Date, Map, Set, bigint.

const received: unknown[] = []
const inspect = app.function(async function inspect(v: Record<string, unknown>) {
  received.push(v)
  return {
    echo: v,
    types: {
      bytes: v.bytes instanceof Uint8Array,
      i32: v.i32 instanceof Int32Array,
      f64: v.f64 instanceof Float64Array,
      date: v.date instanceof Date,
      map: v.map instanceof Map,
      set: v.set instanceof Set,
      big: typeof v.big,
    },
    made: { at: new Date(0), ids: new Set([1n, 2n]), bytes: new Uint8Array([9, 8, 7]) },
  }
})

test.serial('values cross intact: JSON, Uint8Array, typed arrays, Date, Map, Set, bigint', async (t) => {
  const value = {
    s: 'héllo ✓',
    n: 3.25,
    neg: -7,
    t: true,
    nil: null,
    arr: [1, 'two', [3], { four: 4 }],
    obj: { deep: { deeper: { x: [true, false] } } },
    bytes: new Uint8Array([0, 1, 2, 255]),
    i32: new Int32Array([-1, 2 ** 31 - 1]),
    f64: new Float64Array([0.5, -1.25]),
    date: new Date('2024-05-06T07:08:09.010Z'),
    map: new Map<unknown, unknown>([['a', 1], [2, 'b'], ['nested', new Map([['k', [1, 2]]])]]),
    set: new Set([1, 'x', 3]),
    big: 2n ** 70n + 1n,
    negBig: -(2n ** 65n),
  }
  const out = await app.run(() => inspect.remote(value))
  t.deepEqual(out.types, { bytes: true, i32: true, f64: true, date: true, map: true, set: true, big: 'bigint' })
  t.deepEqual(received[received.length - 1], value, 'the container received the value intact')
  t.deepEqual(out.echo, value, 'and the caller got it back intact')
  t.true(out.echo.bytes instanceof Uint8Array)
  t.true(out.echo.date instanceof Date)
  t.is((out.echo.date as Date).getTime(), value.date.getTime())
  t.true(out.echo.map instanceof Map)
  t.is((out.echo.map as Map<unknown, unknown>).get(2), 'b')
  t.is(out.echo.big, 2n ** 70n + 1n)
  t.deepEqual(out.made, { at: new Date(0), ids: new Set([1n, 2n]), bytes: new Uint8Array([9, 8, 7]) })
})

// ---------------------------------------------------------------------------------------------
// Copies, not shared references, both ways.

@app.cls()
class Store {
  state = { items: ['seed'] as string[] }
  lastArg: { list: number[] } | undefined
  @method() async snapshot(): Promise<{ items: string[] }> {
    return this.state
  }
  @method() async mutate(arg: { list: number[] }): Promise<number[]> {
    this.lastArg = arg
    arg.list.push(99)
    return arg.list
  }
  @method() async seenLast(): Promise<number[] | undefined> {
    return this.lastArg?.list
  }
}

test.serial('arguments and results are copies: neither side sees the other\'s mutations', async (t) => {
  await app.run(async () => {
    const h = Cls.of(Store)
    const arg = { list: [1, 2] }
    const p = h.mutate.remote(arg)
    arg.list.push(3) // after the call: the container must not see it
    const returned = await p
    t.deepEqual(returned, [1, 2, 99])
    t.deepEqual(arg.list, [1, 2, 3], 'the container\'s push did not reach the caller\'s object')
    returned.push(1000)
    t.deepEqual(await h.seenLast.remote(), [1, 2, 99], 'mutating a result does not reach the container')

    const snap = await h.snapshot.remote()
    snap.items.push('caller')
    t.deepEqual((await h.snapshot.remote()).items, ['seed'])
    const a = await h.snapshot.remote()
    const b = await h.snapshot.remote()
    t.not(a, b)
    t.not(a.items, b.items)
  })
})

// ---------------------------------------------------------------------------------------------
// Every input exactly one result: many inputs, concurrency, failures, retries, timeouts.

const mixedAttempts = new Map<number, number>()
const mixedApp = new App('results-exactly-once')

@mixedApp.cls({ timeout: 0.3, retries: new Retries({ maxRetries: 1, initialDelay: 0 }), maxContainers: 2 })
@concurrent({ maxInputs: 16 })
class Mixed {
  @method() async run(i: number): Promise<number> {
    const attempt = (mixedAttempts.get(i) ?? 0) + 1
    mixedAttempts.set(i, attempt)
    await sleep(i % 3)
    if (i % 7 === 0) throw new Error(`fails ${i}`) // fails on both attempts
    if (i % 11 === 0 && attempt === 1) throw new Error(`flaky ${i}`) // ok on the retry
    if (i % 13 === 0 && attempt === 1) await sleep(600) // times out, then ok (its late result is stale)
    if (i % 17 === 0) await sleep(600) // times out on both attempts
    return i * 10
  }
}

test('every input gets exactly one result: none lost, none twice', async (t) => {
  const N = 400
  const results = await within(20_000, mixedApp.run(async () => {
    const h = Cls.of(Mixed)
    const out: unknown[] = []
    for await (const r of h.run.map(Array.from({ length: N }, (_, i) => i), { returnExceptions: true, orderOutputs: true })) out.push(r)
    await sleep(700) // late results of timed-out attempts arrive in this window and must go nowhere
    return out
  }))
  t.is(results.length, N)
  for (let i = 0; i < N; i++) {
    const r = results[i]
    if (i % 7 === 0) {
      t.true(r instanceof RemoteError, `input ${i}: expected RemoteError, got ${String(r)}`)
    } else if (i % 17 === 0) {
      t.true(r instanceof FunctionTimeoutError, `input ${i}: expected FunctionTimeoutError, got ${String(r)}`)
    } else {
      t.is(r, i * 10, `input ${i}`)
    }
  }
  // Also through remote() and unordered map: each promise settles once with its own value.
  const again = await within(20_000, mixedApp.run(async () => {
    const h = Cls.of(Mixed)
    const viaRemote = await Promise.allSettled(Array.from({ length: 50 }, (_, i) => h.run.remote(i * 2 + 1)))
    const seen: number[] = []
    for await (const r of h.run.map([1, 2, 3, 4, 5, 6, 8, 9, 10], { orderOutputs: false })) seen.push(r)
    return { viaRemote, seen }
  }))
  again.viaRemote.forEach((s, i) => {
    const x = i * 2 + 1
    if (x % 7 === 0 || x % 17 === 0) t.is(s.status, 'rejected')
    else t.deepEqual(s, { status: 'fulfilled', value: x * 10 })
  })
  t.deepEqual([...again.seen].sort((a, b) => a - b), [10, 20, 30, 40, 50, 60, 80, 90, 100])
})

const cancelManyApp = new App('results-cancel-many')
const sleepy = cancelManyApp.function({ concurrent: { maxInputs: 5 } }, async function sleepy(ms: number) {
  await sleep(ms)
  return ms
})

test('cancelled and completed spawns each settle exactly once', async (t) => {
  const outcomes = await within(10_000, cancelManyApp.run(async () => {
    const calls = await Promise.all(Array.from({ length: 30 }, (_, i) => sleepy.spawn(i % 2 === 0 ? 5 : 200)))
    await sleep(20)
    await Promise.all(calls.filter((_, i) => i % 2 === 1).map((c) => c.cancel()))
    return Promise.allSettled(calls.map((c) => c.get()))
  }))
  outcomes.forEach((o, i) => {
    if (i % 2 === 0) t.deepEqual(o, { status: 'fulfilled', value: 5 })
    else t.true(o.status === 'rejected' && o.reason instanceof InputCancelledError, `call ${i}`)
  })
})

const manyApp = new App('results-many')
const inc = manyApp.function({ concurrent: { maxInputs: 64 } }, async function inc(i: number) {
  return i + 1
})

test('a map of 30,000 inputs (beyond any internal window) yields each result exactly once, in order', async (t) => {
  const N = 30_000
  const { count, inOrder, sum } = await within(30_000, manyApp.run(async () => {
    let count = 0
    let inOrder = true
    let sum = 0
    for await (const y of inc.map(Array.from({ length: N }, (_, i) => i))) {
      if (y !== count + 1) inOrder = false
      count++
      sum += y
    }
    return { count, inOrder, sum }
  }))
  t.is(count, N)
  t.true(inOrder)
  t.is(sum, (N * (N + 1)) / 2)
})
