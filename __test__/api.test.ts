// Calling and running (README "API"), from the user's view: remote/local/spawn/map/starmap/forEach on
// functions and class methods, FunctionCall get/cancel/fromId, the input context, Cls.of per
// parameter set, app.run(fn) and `await using`, run.stop(), calls on a stopped app.
import test from 'ava'
import { spawnSync } from 'node:child_process'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import {
  App,
  Cls,
  FunctionCall,
  FunctionTimeoutError,
  InputCancelledError,
  InvalidError,
  RemoteError,
  batched,
  concurrent,
  currentFunctionCallId,
  currentInput,
  currentInputId,
  enter,
  exit,
  isLocal,
  method,
  parameter,
} from 'berth'
import { sleep, within } from './_util.ts'

const here = dirname(fileURLToPath(import.meta.url))
const root = join(here, '..')

// ---------------------------------------------------------------------------------------------
// The ways to call a function.

const callApp = new App('api-calls')
const calls: number[] = []
const square = callApp.function(async function square(x: number) {
  calls.push(x)
  return x * x
})
const add = callApp.function(async function add(a: number, b: number) {
  return a + b
})
const slowEcho = callApp.function({ concurrent: { maxInputs: 10 } }, async function slowEcho(ms: number) {
  await sleep(ms)
  return ms
})
const mayFail = callApp.function(async function mayFail(x: number) {
  if (x < 0) throw new RangeError(`negative: ${x}`)
  return x
})
const whereAmI = callApp.function(async function whereAmI() {
  return isLocal()
})

const withDefault = callApp.function(async function withDefault(a: number, b = 10) {
  return a + b
})
const arrowed = callApp.function({ name: 'arrowed' }, async (x: number, { scale } = { scale: 2 }) => x * scale)

test.serial('a call with the wrong number of arguments is InvalidError naming what the function takes', async (t) => {
  await callApp.run(async () => {
    const untyped = square as unknown as { remote(...a: unknown[]): Promise<unknown>; local(...a: unknown[]): Promise<unknown>; spawn(...a: unknown[]): Promise<unknown>; map(...a: unknown[]): AsyncIterable<unknown> }
    const few = await t.throwsAsync(untyped.remote(), { instanceOf: InvalidError })
    t.regex(few!.message, /^square takes exactly 1 argument; the call passes 0\. A parameter without a default is required: TypeScript's `x\?` does not exist at run time/)
    await t.throwsAsync(untyped.remote(1, 2), { instanceOf: InvalidError, message: 'square takes exactly 1 argument; the call passes 2' })
    await t.throwsAsync(untyped.local(), { instanceOf: InvalidError })
    await t.throwsAsync(untyped.spawn(1, 2), { instanceOf: InvalidError })
    await t.throwsAsync(async () => {
      for await (const _ of untyped.map([1], [2])) {
        // each input has two arguments: one from each iterable
      }
    }, { instanceOf: InvalidError })
    t.is(await withDefault.remote(1), 11)
    t.is(await withDefault.remote(1, 2), 3)
    await t.throwsAsync((withDefault as any).remote(1, 2, 3), { message: 'withDefault takes 1 to 2 arguments; the call passes 3' })
    t.is(await arrowed.remote(3), 6)
    t.is(await arrowed.remote(3, { scale: 3 }), 9)
    t.false(calls.includes(2), 'nothing ran with the wrong arguments')
  })
})

test.serial('function: remote, local, spawn', async (t) => {
  await callApp.run(async () => {
    t.is(await square.remote(7), 49)
    t.is(await add.remote(2, 3), 5)
    t.is(await square.local(6), 36)
    t.false(await whereAmI.remote())
    t.true(await whereAmI.local())
    const fc = await square.spawn(9)
    t.is(typeof fc.objectId, 'string')
    t.true(fc.objectId.length > 0)
    t.is(await fc.get(), 81)
  })
})

test.serial('function: map (ordered, unordered, several iterables, async iterable), starmap, forEach', async (t) => {
  await callApp.run(async () => {
    const ordered: number[] = []
    for await (const y of slowEcho.map([80, 10, 40, 0])) ordered.push(y)
    t.deepEqual(ordered, [80, 10, 40, 0], 'orderOutputs defaults to true')

    const unordered: number[] = []
    for await (const y of slowEcho.map([300, 0], { orderOutputs: false })) unordered.push(y)
    t.deepEqual(unordered, [0, 300], 'orderOutputs: false yields results as they finish')

    const sums: number[] = []
    for await (const y of add.map([1, 2, 3], [10, 20, 30, 40])) sums.push(y)
    t.deepEqual(sums, [11, 22, 33], 'parallel iterables, stopping at the shortest')

    async function* gen() {
      for (const x of [1, 2, 3]) {
        await sleep(1)
        yield x
      }
    }
    const fromAsync: number[] = []
    for await (const y of square.map(gen())) fromAsync.push(y)
    t.deepEqual(fromAsync, [1, 4, 9])

    const star: number[] = []
    for await (const y of add.starmap([[1, 1], [2, 2], [5, 5]])) star.push(y)
    t.deepEqual(star, [2, 4, 10])

    calls.length = 0
    t.is(await square.forEach([4, 5, 6]), undefined)
    t.deepEqual([...calls].sort(), [4, 5, 6], 'forEach ran every input')
  })
})

test.serial('function: map with returnExceptions yields errors in place; without it, the first error throws', async (t) => {
  await callApp.run(async () => {
    const out: unknown[] = []
    for await (const y of mayFail.map([1, -2, 3], { returnExceptions: true })) out.push(y)
    t.is(out.length, 3)
    t.is(out[0], 1)
    t.true(out[1] instanceof RemoteError)
    t.is((out[1] as RemoteError).remoteName, 'RangeError')
    t.is(out[2], 3)

    const e = await t.throwsAsync(async () => {
      for await (const _ of mayFail.map([1, -2, 3])) void _
    })
    t.true(e instanceof RemoteError)
    t.is(e!.message, 'negative: -2')
    const fe = await t.throwsAsync(mayFail.forEach([1, -5]))
    t.true(fe instanceof RemoteError)
  })
})

// ---------------------------------------------------------------------------------------------
// FunctionCall: get({ timeout }), cancel(), fromId().

test.serial('FunctionCall: get({ timeout }) times out without losing the result; fromId finds the call', async (t) => {
  await callApp.run(async () => {
    const fc = await slowEcho.spawn(300)
    const e = await t.throwsAsync(fc.get({ timeout: 0.05 }))
    t.true(e instanceof FunctionTimeoutError, `expected FunctionTimeoutError, got ${e?.name}`)
    const again = FunctionCall.fromId<number>(fc.objectId)
    t.is(again.objectId, fc.objectId)
    t.is(await again.get(), 300)
    t.is(await fc.get({ timeout: 5 }), 300)
    t.throws(() => FunctionCall.fromId('fc-does-not-exist'), { instanceOf: InvalidError })
  })
})

test.serial('FunctionCall.fromId: a call that finished before anyone asked still gives its result', async (t) => {
  await callApp.run(async () => {
    const fc = await square.spawn(12)
    const id = fc.objectId
    await sleep(100) // the call finishes; nobody has taken its result yet
    let again: FunctionCall<number> | undefined
    t.notThrows(() => {
      again = FunctionCall.fromId<number>(id)
    }, 'fromId must find a finished call whose result was not taken')
    if (again) t.is(await again.get(), 144)
  })
})

const patient = callApp.function(async function patient(ms: number) {
  const signal = currentInput().signal
  await new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, ms)
    signal.addEventListener('abort', () => (clearTimeout(timer), resolve()), { once: true })
  })
  return signal.aborted ? 'aborted' : 'slept'
})

test.serial('FunctionCall.cancel() on a spawned call gives InputCancelledError', async (t) => {
  await callApp.run(async () => {
    const fc = await patient.spawn(5000)
    await sleep(20)
    await fc.cancel()
    const e = await within(3000, t.throwsAsync(fc.get()), 'get() after cancel')
    t.true(e instanceof InputCancelledError)
  })
})

// ---------------------------------------------------------------------------------------------
// Class handles: every call form on @method and @batched members.

const clsApp = new App('api-cls')

@clsApp.cls()
@concurrent({ maxInputs: 8 })
class Embedder {
  @parameter() model = 'mini'
  vocab = new Map<string, number>()
  @enter() load() {
    this.vocab.set('hello', 1).set('world', 2)
  }
  @method() async embed(text: string): Promise<number[]> {
    return [text.length, this.vocab.get(text) ?? 0]
  }
  @method() async pair(a: string, b: number): Promise<string> {
    return `${this.model}:${a}${b}`
  }
  @method() inLocal(): boolean {
    return isLocal()
  }
}

const batchedApp = new App('api-batched')

@batchedApp.cls()
class Lengths {
  @batched({ maxBatchSize: 4, waitMs: 10 })
  async lens(xs: string[]): Promise<number[]> {
    return xs.map((x) => x.length)
  }
}

test.serial('class handle: remote, local, spawn, map, starmap, forEach on @method members', async (t) => {
  await clsApp.run(async () => {
    const e = Cls.of(Embedder, { model: 'big' })
    t.deepEqual(await e.embed.remote('hello'), [5, 1])
    t.deepEqual(await e.embed.local('world'), [5, 2], 'local() runs the enter hooks on a local instance')
    t.false(await e.inLocal.remote())
    t.true(await e.inLocal.local())
    const fc = await e.embed.spawn('xyz')
    t.deepEqual(await fc.get(), [3, 0])
    const mapped: number[][] = []
    for await (const v of e.embed.map(['hello', 'world', 'abc'])) mapped.push(v)
    t.deepEqual(mapped, [[5, 1], [5, 2], [3, 0]])
    const star: string[] = []
    for await (const v of e.pair.starmap([['a', 1], ['b', 2]])) star.push(v)
    t.deepEqual(star, ['big:a1', 'big:b2'])
    t.is(await e.embed.forEach(['a', 'b']), undefined)
  })
})

test.serial('class handle: @batched members take one item and give one result through every call form', async (t) => {
  await batchedApp.run(async () => {
    const h = Cls.of(Lengths)
    t.is(await h.lens.remote('four'), 4)
    t.is(await h.lens.local('sixsix'), 6)
    t.is(await (await h.lens.spawn('ab')).get(), 2)
    const out: number[] = []
    for await (const n of h.lens.map(['a', 'bb', 'ccc', 'dddd', 'eeeee'])) out.push(n)
    t.deepEqual(out, [1, 2, 3, 4, 5])
    const star: number[] = []
    for await (const n of h.lens.starmap([['x'], ['yy']])) star.push(n)
    t.deepEqual(star, [1, 2])
  })
})

test('local() runs in this process without a running app, with the enter hooks', async (t) => {
  const e = Cls.of(Embedder, { model: 'offline' })
  t.deepEqual(await e.embed.local('hello'), [5, 1])
  t.is(await e.pair.local('q', 7), 'offline:q7')
  t.is(await square.local(3), 9)
})

// ---------------------------------------------------------------------------------------------
// The input context: ids distinct across inputs, stable across awaits; signal; isLocal.

const ctxApp = new App('api-context')
type Seen = { input: string | undefined; fc: string | undefined; afterInput: string | undefined; afterFc: string | undefined; signal: boolean; aborted: boolean; local: boolean }
const whoAmI = ctxApp.function({ concurrent: { maxInputs: 20 } }, async function whoAmI(ms: number): Promise<Seen> {
  const input = currentInputId()
  const fc = currentFunctionCallId()
  // A .local() call is no input: currentInput() throws there.
  const signal = input === undefined ? undefined : currentInput().signal
  await sleep(ms)
  return {
    input,
    fc,
    afterInput: currentInputId(),
    afterFc: currentFunctionCallId(),
    signal: signal instanceof AbortSignal,
    aborted: signal?.aborted ?? false,
    local: isLocal(),
  }
})

@ctxApp.cls()
@concurrent({ maxInputs: 20 })
class CtxCls {
  @method() async ids(ms: number): Promise<[string | undefined, string | undefined]> {
    await sleep(ms)
    return [currentInputId(), currentFunctionCallId()]
  }
}

test.serial('context: input ids and function call ids are distinct across inputs and stable across awaits', async (t) => {
  await ctxApp.run(async () => {
    const viaRemote = await Promise.all(Array.from({ length: 10 }, (_, i) => whoAmI.remote(10 - i)))
    for (const s of viaRemote) {
      t.regex(s.input ?? '', /\S/)
      t.regex(s.fc ?? '', /\S/)
      t.is(s.afterInput, s.input, 'the input id survives an await')
      t.is(s.afterFc, s.fc)
      t.true(s.signal)
      t.false(s.aborted)
      t.false(s.local)
    }
    t.is(new Set(viaRemote.map((s) => s.input)).size, 10, 'distinct input ids')
    t.is(new Set(viaRemote.map((s) => s.fc)).size, 10, 'each remote() is its own function call')

    const viaMap: Seen[] = []
    for await (const s of whoAmI.map([5, 1, 3, 2, 4])) viaMap.push(s)
    t.is(new Set(viaMap.map((s) => s.input)).size, 5, 'distinct input ids within a map')
    t.is(new Set(viaMap.map((s) => s.fc)).size, 1, 'one map() is one function call')
    t.false(viaRemote.some((s) => s.input === viaMap[0].input), 'input ids are never reused')

    const fc = await whoAmI.spawn(1)
    t.is((await fc.get()).fc, fc.objectId, 'currentFunctionCallId() inside is the FunctionCall objectId')

    const clsIds = await Promise.all(Array.from({ length: 6 }, (_, i) => Cls.of(CtxCls).ids.remote(6 - i)))
    t.is(new Set(clsIds.map(([i]) => i)).size, 6)
    t.true(clsIds.every(([i, f]) => typeof i === 'string' && typeof f === 'string'))

    const local = await whoAmI.local(1)
    t.true(local.local, 'isLocal() is true in .local()')
    t.is(local.input, undefined, 'a .local() call is no input (Modal: current_input_id() is None)')
    t.is(local.fc, undefined)
    t.false(local.signal)
  })
  // Outside any input: the caller's own code, which is local (Modal's is_local()).
  t.is(currentInputId(), undefined)
  t.is(currentFunctionCallId(), undefined)
  t.true(isLocal())
  t.throws(() => currentInput(), { instanceOf: InvalidError })
})

const hooksLocal: boolean[] = []

@ctxApp.cls()
class WhereHooksRun {
  @enter() load() {
    hooksLocal.push(isLocal())
  }
  @method() async where(): Promise<[boolean, string | undefined]> {
    return [isLocal(), currentInputId()]
  }
  @exit() close() {
    hooksLocal.push(isLocal())
  }
}

test.serial('isLocal(): true in the caller\'s code and .local(); false in an embedded container\'s inputs and hooks', async (t) => {
  t.true(isLocal())
  await ctxApp.run(async () => {
    const [local, input] = await Cls.of(WhereHooksRun).where.remote()
    t.false(local)
    t.regex(input ?? '', /\S/)
    t.true(isLocal(), 'still local around the call')
    t.true((await Cls.of(WhereHooksRun).where.local())[0])
  })
  // The container's @enter and @exit are container code; .local() runs @enter in the caller.
  t.deepEqual(hooksLocal, [false, true, false])
})

test('context: a helper reached after an await sees the input, even on the first input of the process', (t) => {
  // A fresh process: which inputs run inside the asynchronous context must not depend on history.
  const r = spawnSync(process.execPath, ['--import', 'tsx', join(here, 'fixtures', 'context-helper.ts')], {
    cwd: root,
    encoding: 'utf8',
    env: { ...process.env, BERTH_ASYNC_CONTEXT: '' },
    timeout: 30_000,
  })
  t.is(r.status, 0, r.stderr)
  const rows = r.stdout.trim().split('\n').map((l) => JSON.parse(l))
  t.is(rows.length, 2)
  for (const row of rows) {
    t.regex(row.before ?? '', /\S/)
    t.is(row.after, row.before, `currentInputId() through a helper after an await: ${JSON.stringify(row)}`)
    t.true(row.signal, 'currentInput().signal through a helper after an await')
  }
})

// ---------------------------------------------------------------------------------------------
// Cls.of per parameter set.

const paramsApp = new App('api-params')
const paramEnters: string[] = []

@paramsApp.cls()
class Tokenizer {
  @parameter() lang = 'en'
  @parameter() size = 8
  @parameter() lower = false
  @parameter() salt = new Uint8Array([1])
  @enter() load() {
    paramEnters.push(this.key())
  }
  key(): string {
    return `${this.lang}/${this.size}/${this.lower}/${[...this.salt].join('.')}`
  }
  @method() async describe(): Promise<string> {
    return this.key()
  }
}

test.serial('Cls.of: one set of containers per parameter set, each entered once, seeing its parameters', async (t) => {
  await paramsApp.run(async () => {
    const sets = [
      {},
      { lang: 'fr' },
      { lang: 'fr', size: 16, lower: true },
      { salt: new Uint8Array([7, 7]) },
    ] as const
    for (let round = 0; round < 3; round++) {
      const got = await Promise.all(sets.map((p) => Cls.of(Tokenizer, p).describe.remote()))
      t.deepEqual(got, ['en/8/false/1', 'fr/8/false/1', 'fr/16/true/1', 'en/8/false/7.7'])
    }
  })
  t.deepEqual([...paramEnters].sort(), ['en/8/false/1', 'en/8/false/7.7', 'fr/16/true/1', 'fr/8/false/1'])
  t.throws(() => Cls.of(Tokenizer, { langue: 'de' } as never), { instanceOf: InvalidError, message: /lang/ })
  t.throws(() => Cls.of(Tokenizer, { size: 'big' } as never), { instanceOf: InvalidError, message: /size/ })
})

// ---------------------------------------------------------------------------------------------
// Running: app.run(fn), await using, run.stop(), appId, calls on a stopped or never-run app.

const runLog: string[] = []
const runApp = new App('api-run', { tags: { team: 'ml' } })

@runApp.cls()
class Service {
  @enter() up() {
    runLog.push('enter')
  }
  @method() async ping(): Promise<string> {
    runLog.push('ping')
    return 'pong'
  }
  @exit() down() {
    runLog.push('exit')
  }
}
const hello = runApp.function(async function hello(name: string) {
  return `hello ${name}`
})

const FIX = /app\.run/

test.serial('calling an app that is not running gives InvalidError naming the fix', async (t) => {
  t.is(runApp.appId, undefined)
  for (const call of [
    () => hello.remote('x'),
    () => hello.spawn('x'),
    () => Cls.of(Service).ping.remote(),
    () => hello.forEach(['x']),
  ]) {
    const e = await t.throwsAsync(async () => call())
    t.true(e instanceof InvalidError, `expected InvalidError, got ${e?.name}`)
    t.regex(e!.message, /not running/)
    t.regex(e!.message, FIX)
  }
  const e = await t.throwsAsync(async () => {
    for await (const _ of hello.map(['x'])) void _
  })
  t.true(e instanceof InvalidError)
  t.regex(e!.message, FIX)
})

test.serial('app.run(fn) returns what fn returns, and stops the app (exit hooks ran) when fn settles', async (t) => {
  runLog.length = 0
  const out = await runApp.run(async (run) => {
    t.is(run.app, runApp)
    t.regex(runApp.appId ?? '', /\S/, 'appId is set while running')
    return [await hello.remote('ada'), await Cls.of(Service).ping.remote()]
  })
  t.deepEqual(out, ['hello ada', 'pong'])
  t.deepEqual(runLog, ['enter', 'ping', 'exit'])
  t.is(runApp.appId, undefined)
  const e = await t.throwsAsync(hello.remote('late'))
  t.true(e instanceof InvalidError)
  t.regex(e!.message, FIX)

  // A throwing fn still stops the app.
  runLog.length = 0
  await t.throwsAsync(runApp.run(async () => {
    await Cls.of(Service).ping.remote()
    throw new Error('entrypoint failed')
  }), { message: 'entrypoint failed' })
  t.deepEqual(runLog, ['enter', 'ping', 'exit'])
})

test.serial('await using run = await app.run(): the app stops (exit hooks run) at the end of the block', async (t) => {
  runLog.length = 0
  {
    await using run = await runApp.run()
    t.is(run.app, runApp)
    t.is(await Cls.of(Service).ping.remote(), 'pong')
    t.deepEqual(runLog, ['enter', 'ping'])
  }
  t.deepEqual(runLog, ['enter', 'ping', 'exit'])
  const e = await t.throwsAsync(Cls.of(Service).ping.remote())
  t.true(e instanceof InvalidError)
  t.regex(e!.message, FIX)
})

test.serial('run.stop() runs @exit; the stopped app refuses calls; it can run again', async (t) => {
  runLog.length = 0
  const run = await runApp.run()
  await t.throwsAsync(runApp.run(), { instanceOf: InvalidError, message: /already running/ })
  await Cls.of(Service).ping.remote()
  await within(10_000, run.stop(), 'stop()')
  t.deepEqual(runLog, ['enter', 'ping', 'exit'])
  for (const call of [() => hello.remote('x'), () => Cls.of(Service).ping.remote(), () => hello.spawn('x')]) {
    const e = await t.throwsAsync(async () => call())
    t.true(e instanceof InvalidError, `expected InvalidError, got ${e?.name}`)
    t.regex(e!.message, FIX)
  }
  // stop() twice is harmless.
  await within(5000, run.stop(), 'second stop()')
  // A stopped app runs again with fresh containers.
  runLog.length = 0
  t.is(await runApp.run(() => hello.remote('again')), 'hello again')
  t.is(await runApp.run(() => Cls.of(Service).ping.remote()), 'pong')
  t.deepEqual(runLog, ['enter', 'ping', 'exit'])
})

