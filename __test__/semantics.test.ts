// Modal's container semantics where a container is stopped from outside (README, "Containers:
// signals, crashes, stuck code"): warm pools under `berth serve`, SIGTERM/SIGINT during @enter,
// during inputs and during @exit, containers that die, code that ignores its AbortSignal, and
// the floor between retries. `berth serve` runs as a user runs it; the caller is a plain gRPC
// client; signals go to the container processes themselves.
import test from 'ava'
import { existsSync, readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import grpc from '@grpc/grpc-js'
import { App, Cls, FunctionTimeoutError, Retries, currentInput, enter, method } from 'berth'

import { Functions, cbor, serve, stopsCleanly, type Served } from './_served.ts'
import { alive, sleep, until } from './_util.ts'

async function served(t: any): Promise<[Served, any, (name: string) => string]> {
  const s = await serve([], {}, 'semantics.ts')
  t.teardown(() => s.child.kill('SIGKILL'))
  const client = new Functions(s.address, grpc.credentials.createInsecure())
  t.teardown(() => client.close())
  const dir = dirname(s.marker)
  const file = (name: string) => (existsSync(join(dir, name)) ? readFileSync(join(dir, name), 'utf8') : '')
  return [s, client, file]
}

/** One call; resolves with the decoded value, rejects with the gRPC error or the remote one. */
function call(client: any, fn: string, method = '', args: unknown[] = [], ms = 60_000): Promise<any> {
  return new Promise((resolve, reject) =>
    client.Invoke(
      { function: { app: 'semantics', function: fn, method }, args: cbor.encode(args) },
      { deadline: Date.now() + ms },
      (e: unknown, r: any) => {
        if (e) reject(e)
        else if (r.result.error) reject(Object.assign(new Error(r.result.error.message), { name: r.result.error.name }))
        else resolve(cbor.decode(r.result.value))
      },
    ),
  )
}

test.serial('minContainers are warm under berth serve: @enter runs when the server starts, before any call', async (t) => {
  const [s, client, file] = await served(t)
  await until(() => /warm-enter (\d+)/.test(file('log')), 20_000, 'the warm container entered without a call')
  const warm = Number(/warm-enter (\d+)/.exec(file('log'))![1])
  t.is(await call(client, 'Warm', 'pid'), warm, 'the first call runs on the warm container')
  t.is(file('log').match(/warm-enter/g)!.length, 1)
  await stopsCleanly(t, s)
})

for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  test.serial(`${signal} during @enter stops the container at once, runs no @exit, and its input runs on another`, async (t) => {
    const [s, client, file] = await served(t)
    const result = call(client, 'SlowStart', 'pid')
    await until(() => file('slow-started') !== '', 20_000, 'the first container is in its @enter')
    const first = Number(file('slow-started'))
    process.kill(first, signal)
    const sent = Date.now()
    await until(() => !alive(first), 10_000, 'the container process ended')
    t.true(Date.now() - sent < 5000, `ended ${Date.now() - sent} ms after the signal`)
    const pid = await result
    t.not(pid, first, 'the input ran on another container')
    t.notRegex(file('log'), new RegExp(`slow-exit ${first}\\b`), 'no @exit for a container that never entered')
    t.notRegex(s.stdout(), /InitError|failed to start/, 'a stop is not a failed start')
    await stopsCleanly(t, s)
    t.regex(file('log'), new RegExp(`slow-exit ${pid}\\b`), 'the serving container exits as usual')
  })
}

test.serial('signals during @exit hooks do not cut them short', async (t) => {
  const [s, client, file] = await served(t)
  const pid: number = await call(client, 'SlowExit', 'pid')
  process.kill(pid, 'SIGTERM')
  await until(() => file('log').includes(`exit-start ${pid}`), 10_000, 'the exit hook started')
  process.kill(pid, 'SIGINT')
  await sleep(100)
  process.kill(pid, 'SIGINT')
  process.kill(pid, 'SIGTERM')
  await until(() => !alive(pid), 20_000, 'the container ended after its exit hook')
  t.regex(file('log'), new RegExp(`exit-done ${pid}\\b`), 'the exit hook ran to its end')
  await stopsCleanly(t, s)
})

test.serial('SIGINT while an input runs: its signal aborts, it runs again on another container without spending a retry, the container exits', async (t) => {
  const [s, client, file] = await served(t)
  const result = call(client, 'Interruptible', 'work')
  await until(() => file('work-started') !== '', 20_000, 'the input is running')
  const first = Number(file('work-started'))
  process.kill(first, 'SIGINT')
  const pid = await result
  t.is(typeof pid, 'number', 'the answer is the rerun, not the interrupted run (retries: 0)')
  t.not(pid, first)
  await until(() => file('log').includes(`interruptible-exit ${first}`), 10_000, 'the interrupted container ran its @exit')
  t.regex(file('log'), new RegExp(`work-aborted ${first} InputCancelledError: .*runs again on another container`))
  await until(() => !alive(first), 20_000, 'the interrupted container ended')
  await stopsCleanly(t, s)
})

test.serial('a container killed mid-input (SIGKILL): the input runs again without spending a retry', async (t) => {
  const [s, client, file] = await served(t)
  const pid = await call(client, 'crashOnce')
  t.not(pid, Number(file('crashed')), 'answered by a new container')
  t.regex(s.stdout(), /killed by signal 9|signal 9/, 'the crash is in the server log')
  await stopsCleanly(t, s)
})

test.serial('an input that kills every container it touches fails with ContainerLost after a bounded number of runs', async (t) => {
  const [s, client, file] = await served(t)
  const e = await call(client, 'crashAlways', '', [], 120_000).catch((e) => e)
  t.is(e.name, 'ContainerLost', e.message)
  t.regex(e.message, /stopped unexpectedly, 4 times in a row/)
  t.is(file('log').match(/^crash /gm)!.length, 4, 'one first run and 3 reschedules, each on a new container')
  await stopsCleanly(t, s)
})

test.serial('code that ignores its AbortSignal past its timeout: after a grace the container is replaced and the next input runs', async (t) => {
  const [s, client, file] = await served(t)
  const e = await call(client, 'stubborn', '', ['hang']).catch((e) => e)
  t.is(e.name, 'FunctionTimeoutError', e.message)
  const hung = Number(/hang (\d+)/.exec(file('log'))![1])
  // maxContainers 1, one slot: this input waits for the slot the stuck code holds.
  const pid = await call(client, 'stubborn', '', ['quick'])
  t.not(pid, hung, 'a new container')
  t.regex(s.stdout(), /stubborn \(input in-\d+\) kept running 5s after it was aborted .* container \d+ is replaced by a new one/)
  await until(() => !alive(hung), 15_000, 'the stuck container process ended')
  await stopsCleanly(t, s)
})

test.serial('a burst of quick batches under berth serve stays on one container instead of starting others that load the model for nothing', async (t) => {
  const [s, client, file] = await served(t)
  const stream = client.Map()
  const got: number[] = []
  const ended = new Promise<void>((resolve, reject) => {
    stream.on('data', (r: any) => got.push(cbor.decode(r.result.value)))
    stream.on('end', resolve)
    stream.on('error', reject)
  })
  stream.write({ function: { app: 'semantics', function: 'Batcher', method: 'predict' } })
  for (let i = 0; i < 50; i++) stream.write({ input: { index: i, args: cbor.encode([i]) } })
  stream.end()
  await ended
  t.deepEqual(got.sort((a, b) => a - b), Array.from({ length: 50 }, (_, i) => i * 2))
  await sleep(1500) // a container started needlessly would have entered by now
  const enters = file('log').match(/^batcher-enter /gm) ?? []
  const batches = file('log').match(/^batch \d+ \d+$/gm) ?? []
  t.is(enters.length, 1, `one container entered (7 batches of 8 are 210 ms of work; a second one takes 1 s to load)\n${file('log')}`)
  t.true(batches.length >= 7, `${batches.length} batches`)
  await stopsCleanly(t, s)
})

// ---------------------------------------------------------------------------------------------
// Embedded containers: the same rule for stuck code (the instance is dropped and a new one
// entered), and Modal's floor of one second between attempts.

const stuckApp = new App('semantics-stuck')
let enters = 0
@stuckApp.cls({ timeout: 0.5, startupTimeout: 60 })
class Stuck {
  @enter() load() {
    enters++
  }
  @method() async run(kind: string) {
    if (kind === 'hang') await new Promise(() => {}) // never settles, ignores its signal
    return enters
  }
}

test.serial('embedded: code that ignores its AbortSignal past its timeout gets its container replaced', async (t) => {
  await stuckApp.run(async () => {
    const h = Cls.of(Stuck)
    const e = await h.run.remote('hang').catch((e: unknown) => e)
    t.true(e instanceof FunctionTimeoutError)
    const started = Date.now()
    t.is(await h.run.remote('quick'), 2, 'answered by a second, newly entered instance')
    t.true(Date.now() - started < 30_000)
  })
})

const retryApp = new App('semantics-retry')
const attempts: number[] = []
const flaky = retryApp.function({ retries: new Retries({ maxRetries: 2, initialDelay: 0 }) }, async function flaky() {
  attempts.push(Date.now())
  if (attempts.length < 3) throw new Error(`attempt ${attempts.length} fails`)
  return currentInput().inputId
})

test.serial('Retries({ initialDelay: 0 }) still waits a second between attempts, as Modal does', async (t) => {
  await retryApp.run(async () => {
    await flaky.remote()
  })
  t.is(attempts.length, 3)
  for (let i = 1; i < attempts.length; i++) t.true(attempts[i] - attempts[i - 1] >= 950, `gap ${attempts[i] - attempts[i - 1]} ms`)
})
