// Lifecycle (README "API"), from the user's view: @enter (snap first, base class first), enter once per
// container and per parameter set, @enter failures (InitError, no @exit, restart with backoff),
// @exit on stop after in-flight inputs finish, exit grace.
import test from 'ava'
import { App, Cls, InitError, InvalidError, concurrent, enter, exit, method, parameter } from 'berth'
import { deferred, sleep, until, within } from './_util.ts'

// ---------------------------------------------------------------------------------------------
// Hook order: snap enters, then plain enters, each group in definition order, base class first;
// all finish before the first input; sync and async hooks alike. Exits in definition order.

const order: string[] = []

class BaseModel {
  @enter() baseLoad() {
    order.push('base.enter')
  }
  @enter({ snap: true }) async baseSnap() {
    await sleep(20)
    order.push('base.snap')
  }
  @exit() baseClose() {
    order.push('base.exit')
  }
}

const orderApp = new App('lifecycle-order')

@orderApp.cls()
class ChildModel extends BaseModel {
  @enter() async loadA() {
    await sleep(30)
    order.push('child.enterA')
  }
  @enter({ snap: true }) childSnap() {
    order.push('child.snap')
  }
  @enter() loadB() {
    order.push('child.enterB')
  }
  @method() async work(): Promise<string[]> {
    order.push('work')
    return [...order]
  }
  @exit() async closeA() {
    await sleep(10)
    order.push('child.exitA')
  }
  @exit() closeB() {
    order.push('child.exitB')
  }
}

test('hook order: snap enters, then enters, definition order, base class first; exits on stop', async (t) => {
  const seen = await within(10_000, orderApp.run(async () => {
    const h = Cls.of(ChildModel)
    const first = await h.work.remote()
    await h.work.remote()
    return first
  }))
  t.deepEqual(seen, ['base.snap', 'child.snap', 'base.enter', 'child.enterA', 'child.enterB', 'work'])
  // The second input reused the container: no enter hook ran again.
  t.deepEqual(order, [
    'base.snap', 'child.snap', 'base.enter', 'child.enterA', 'child.enterB', 'work', 'work',
    'base.exit', 'child.exitA', 'child.exitB',
  ])
})

// ---------------------------------------------------------------------------------------------
// Enter once per container.

let containerSeq = 0
const enteredContainers: number[] = []

const perContainerApp = new App('lifecycle-per-container')

@perContainerApp.cls({ maxContainers: 3 })
class PerContainer {
  container = 0
  entered = 0
  @enter() async load() {
    this.container = ++containerSeq
    await sleep(20)
    this.entered++
    enteredContainers.push(this.container)
  }
  @method() async work(ms: number): Promise<{ container: number; entered: number }> {
    await sleep(ms)
    return { container: this.container, entered: this.entered }
  }
}

test('@enter runs once per container, before that container takes its first input', async (t) => {
  const results = await within(10_000, perContainerApp.run(async () => {
    const h = Cls.of(PerContainer)
    const first = await Promise.all(Array.from({ length: 30 }, () => h.work.remote(15)))
    // A second wave on warm containers.
    const second = await Promise.all(Array.from({ length: 10 }, () => h.work.remote(1)))
    return [...first, ...second]
  }))
  t.true(results.every((r) => r.entered === 1), 'every input ran on a container whose enter ran exactly once')
  const used = new Set(results.map((r) => r.container))
  t.true(used.size > 1, `load was spread on several containers (maxContainers: 3), got ${used.size}`)
  t.true(used.size <= 3)
  // Each container entered once: no duplicates, and no container served without entering.
  t.is(new Set(enteredContainers).size, enteredContainers.length)
  for (const c of used) t.true(enteredContainers.includes(c))
  t.true(enteredContainers.length <= 3, `at most maxContainers enters, got ${enteredContainers.length}`)
})

// ---------------------------------------------------------------------------------------------
// Enter once per parameter set.

const paramEnters: string[] = []
const perParamsApp = new App('lifecycle-per-params')

@perParamsApp.cls()
class PerParams {
  @parameter() model = 'mini'
  @parameter() size = 1
  loadedFor = ''
  @enter() load() {
    paramEnters.push(`${this.model}/${this.size}`)
    this.loadedFor = `${this.model}/${this.size}`
  }
  @method() async who(): Promise<string> {
    return this.loadedFor
  }
}

test('@enter runs once per parameter set, with the parameters already set', async (t) => {
  const out = await within(10_000, perParamsApp.run(async () => {
    const a = Cls.of(PerParams, { model: 'a' })
    const b = Cls.of(PerParams, { model: 'b', size: 2 })
    const a2 = Cls.of(PerParams, { model: 'a', size: 1 }) // same set as `a`, a new handle
    const d = Cls.of(PerParams) // defaults
    const r: string[] = []
    for (let i = 0; i < 3; i++) {
      r.push(await a.who.remote(), await b.who.remote(), await a2.who.remote(), await d.who.remote())
    }
    return r
  }))
  t.deepEqual(out.slice(0, 4), ['a/1', 'b/2', 'a/1', 'mini/1'])
  t.deepEqual([...paramEnters].sort(), ['a/1', 'b/2', 'mini/1'])
})

// ---------------------------------------------------------------------------------------------
// Enter failure: InitError with the original name/message/stack; no input runs; no @exit.

let badEnterAttempts = 0
let badWorkRuns = 0
let badExits = 0

function loadWeightsFromDisk(): never {
  throw new TypeError('weights file is missing')
}

const badEnterApp = new App('lifecycle-bad-enter')

@badEnterApp.cls()
class BadEnter {
  @enter() async load() {
    badEnterAttempts++
    loadWeightsFromDisk()
  }
  @method() async work(): Promise<number> {
    badWorkRuns++
    return 1
  }
  @exit() close() {
    badExits++
  }
}

test('@enter that throws: callers get InitError with the original name, message and stack; no @exit', async (t) => {
  const settled = await within(10_000, badEnterApp.run(async () => {
    const h = Cls.of(BadEnter)
    return Promise.allSettled([h.work.remote(), h.work.remote(), h.work.remote()])
  }))
  t.is(settled.length, 3)
  for (const s of settled) {
    t.is(s.status, 'rejected')
    const e = (s as PromiseRejectedResult).reason
    t.true(e instanceof InitError, `expected InitError, got ${e?.name}: ${e?.message}`)
    t.is(e.remoteName, 'TypeError')
    t.regex(e.message, /weights file is missing/)
    t.is(typeof e.remoteStack, 'string')
    t.regex(e.remoteStack, /loadWeightsFromDisk/)
  }
  t.true(badEnterAttempts >= 1)
  t.is(badWorkRuns, 0, 'the container never took an input')
  t.is(badExits, 0, '@exit does not run after a failed @enter')
})

let transientEnters = 0
const transientApp = new App('lifecycle-transient-enter')

@transientApp.cls()
class Transient {
  @enter() load() {
    transientEnters++
    if (transientEnters === 1) throw new Error('disk not mounted yet')
  }
  @method() async work(): Promise<string> {
    return 'served'
  }
}

test('after a failed @enter, a restarted container serves later inputs', async (t) => {
  const [first, second] = await within(10_000, transientApp.run(async () => {
    const h = Cls.of(Transient)
    const first = await h.work.remote().catch((e: unknown) => e)
    return [first, await h.work.remote()]
  }))
  t.true(first instanceof InitError)
  t.is((first as InitError).message, 'disk not mounted yet')
  t.is(second, 'served')
  t.is(transientEnters, 2)
})

let crashLoopAttempts = 0
const crashLoopApp = new App('lifecycle-crash-loop')

@crashLoopApp.cls({ minContainers: 1 })
class CrashLoop {
  @enter() load() {
    crashLoopAttempts++
    throw new Error('cannot start')
  }
  @method() async work(): Promise<number> {
    return 1
  }
}

test('a container that keeps failing to start is restarted with backoff, not in a hot loop', async (t) => {
  await within(10_000, crashLoopApp.run(async () => {
    await sleep(1500)
  }))
  // minContainers: 1 keeps restarting it; with backoff that is a handful of attempts in 1.5 s.
  t.true(crashLoopAttempts >= 2, `restarted at least once, got ${crashLoopAttempts} attempts`)
  t.true(crashLoopAttempts <= 10, `backoff between restarts, got ${crashLoopAttempts} attempts in 1.5 s`)
  void Cls.of(CrashLoop)
})

// ---------------------------------------------------------------------------------------------
// Stop: in-flight and accepted inputs finish, then @exit hooks in definition order.

const stopLog: string[] = []
const started = deferred()
const stopApp = new App('lifecycle-stop')

@stopApp.cls()
class Closing {
  @method() async slow(ms: number): Promise<string> {
    stopLog.push('start')
    started.resolve()
    await sleep(ms)
    stopLog.push('end')
    return 'done'
  }
  @method() quick(i: number): number {
    stopLog.push(`quick${i}`)
    return i
  }
  @exit() close1() {
    stopLog.push('exit1')
  }
  @exit() async close2() {
    await sleep(10)
    stopLog.push('exit2')
  }
}

test.serial('run.stop() lets in-flight and queued inputs finish, then runs @exit hooks', async (t) => {
  const run = await stopApp.run()
  const h = Cls.of(Closing)
  const slow = h.slow.remote(200)
  const queued = [h.quick.remote(1), h.quick.remote(2)]
  await started.promise
  const stopping = run.stop()
  // Stopped: new calls are refused with a message that names the fix.
  const late = await t.throwsAsync(h.quick.remote(9))
  t.true(late instanceof InvalidError)
  t.is(await slow, 'done')
  t.deepEqual(await Promise.all(queued), [1, 2])
  await within(10_000, stopping, 'stop()')
  t.deepEqual(stopLog, ['start', 'end', 'quick1', 'quick2', 'exit1', 'exit2'])
})

const exitCountPerContainer = new Map<number, number>()
let exitSeq = 0
const exitEachApp = new App('lifecycle-exit-each')

@exitEachApp.cls({ maxContainers: 2 })
@concurrent({ maxInputs: 1 })
class ExitEach {
  id = 0
  @enter() load() {
    this.id = ++exitSeq
  }
  @method() async work(): Promise<number> {
    await sleep(20)
    return this.id
  }
  @exit() close() {
    exitCountPerContainer.set(this.id, (exitCountPerContainer.get(this.id) ?? 0) + 1)
  }
}

test('@exit runs once per container on stop', async (t) => {
  const ids = await within(10_000, exitEachApp.run(async () => {
    const h = Cls.of(ExitEach)
    return Promise.all(Array.from({ length: 10 }, () => h.work.remote()))
  }))
  const containers = new Set(ids)
  t.true(containers.size >= 1)
  t.deepEqual([...exitCountPerContainer.keys()].sort(), [...containers].sort())
  t.true([...exitCountPerContainer.values()].every((n) => n === 1))
  // Every container that entered also exited.
  t.is(exitCountPerContainer.size, exitSeq)
})

let hungExitStarted = false
const graceApp = new App('lifecycle-grace')

@graceApp.cls({ exitGracePeriod: 0.2 })
class SlowExit {
  @method() work(): number {
    return 1
  }
  @exit() async close() {
    hungExitStarted = true
    await new Promise<void>((r) => setTimeout(r, 3000).unref())
  }
}

test('an @exit hook past exitGracePeriod is abandoned: stop() does not hang', async (t) => {
  const t0 = Date.now()
  await within(10_000, graceApp.run(async () => {
    await Cls.of(SlowExit).work.remote()
  }))
  t.true(hungExitStarted)
  t.true(Date.now() - t0 < 2500, `stop() waited for the 3 s hook instead of the 0.2 s grace (${Date.now() - t0} ms)`)
})


// ---------------------------------------------------------------------------------------------
// Scale-down is a stop too: an idle container past scaledownWindow runs @exit; the next input
// gets a fresh container (entered again).

const scaleLog: string[] = []
let scaleSeq = 0
const scaleApp = new App('lifecycle-scaledown')

@scaleApp.cls({ scaledownWindow: 0.1 })
class Ephemeral {
  id = 0
  @enter() load() {
    this.id = ++scaleSeq
    scaleLog.push(`enter ${this.id}`)
  }
  @method() async work(): Promise<number> {
    scaleLog.push(`work ${this.id}`)
    return this.id
  }
  @exit() close() {
    scaleLog.push(`exit ${this.id}`)
  }
}

test('scale-down after scaledownWindow runs @exit while the app runs; the next input enters a new container', async (t) => {
  await within(10_000, scaleApp.run(async () => {
    const h = Cls.of(Ephemeral)
    t.is(await h.work.remote(), 1)
    await until(() => scaleLog.includes('exit 1'), 5000, 'scale-down of the idle container')
    t.is(await h.work.remote(), 2)
  }))
  t.deepEqual(scaleLog, ['enter 1', 'work 1', 'exit 1', 'enter 2', 'work 2', 'exit 2'])
})

// singleUseContainers: one input per container, each entered and exited once.
const singleLog: string[] = []
let singleSeq = 0
const singleApp = new App('lifecycle-single-use')

@singleApp.cls({ singleUseContainers: true })
class OneShot {
  id = 0
  @enter() load() {
    this.id = ++singleSeq
    singleLog.push(`enter ${this.id}`)
  }
  @method() async work(): Promise<number> {
    return this.id
  }
  @exit() close() {
    singleLog.push(`exit ${this.id}`)
  }
}

test('singleUseContainers: every input gets its own container, entered and exited once', async (t) => {
  const ids = await within(10_000, singleApp.run(async () => {
    const h = Cls.of(OneShot)
    const out: number[] = []
    for (let i = 0; i < 3; i++) out.push(await h.work.remote())
    return out
  }))
  t.deepEqual(ids, [1, 2, 3])
  t.deepEqual([...singleLog].sort(), ['enter 1', 'enter 2', 'enter 3', 'exit 1', 'exit 2', 'exit 3'])
})

// startupTimeout bounds the enter hooks: past it, callers get InitError instead of waiting.
const slowEnterApp = new App('lifecycle-startup-timeout')

@slowEnterApp.cls({ startupTimeout: 0.2 })
class SlowEnter {
  @enter() async load() {
    await new Promise<void>((r) => setTimeout(r, 3000).unref())
  }
  @method() async work(): Promise<number> {
    return 1
  }
}

test('an @enter past startupTimeout fails the waiting inputs with InitError', async (t) => {
  const t0 = Date.now()
  const e = await within(10_000, slowEnterApp.run(() => t.throwsAsync(Cls.of(SlowEnter).work.remote())))
  t.true(e instanceof InitError, `expected InitError, got ${e?.name}`)
  t.true(Date.now() - t0 < 2500, 'the caller did not wait for the 3 s hook')
})
