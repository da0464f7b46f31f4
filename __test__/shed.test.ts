// Load shedding (README "API"): maxPendingInputs bounds the inputs waiting in a function's
// queue; past it a call is refused at once — QueueFullError in TypeScript (both container
// modes, and callers of `berth serve`), RESOURCE_EXHAUSTED over gRPC, 429 with Retry-After over
// HTTP — while a map's inputs wait for room. The gate in __test__/fixtures/shed.ts (`hold`)
// keeps the queue full for as long as the test needs, so no outcome depends on timing.
import test from 'ava'
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import grpc from '@grpc/grpc-js'

import { MODES, inBothModes } from './_modes.ts'
import { Functions, cbor, deadline, root, serve, stopsCleanly } from './_served.ts'

const MESSAGE =
  'hold: its queue is full (2 inputs already waiting, its maxPendingInputs); the call was not accepted. ' +
  'Retry later, or raise maxPendingInputs or maxContainers in its options'

async function waitFor(path: string): Promise<void> {
  const until = Date.now() + 30_000
  while (!existsSync(path)) {
    if (Date.now() > until) throw new Error(`${path} did not appear in 30 s`)
    await new Promise((r) => setTimeout(r, 10))
  }
}

test.serial('maxPendingInputs: past the bound a call fails at once with QueueFullError, accepted inputs all finish, map inputs wait for room; the same in both modes', async (t) => {
  const runs = await inBothModes(join(root, '__test__/fixtures/shed.ts'), 'shed')
  for (const [i, r] of runs.entries()) {
    const mode = MODES[i]
    t.is(r.code, 0, `${mode}\n${r.out}`)
    const { first, e, spawned, whileHeld, a, bcd, mapped } = r.result
    const refused = { ok: false, class: 'QueueFullError', isQueueFull: true, name: 'QueueFullError', message: MESSAGE }
    t.deepEqual(first, refused, `${mode}: the first of b, c, d to settle is the refused one, while a still holds the slot`)
    t.deepEqual(e, refused, `${mode}: a call is refused while map inputs wait`)
    t.deepEqual(spawned, refused, `${mode}: a refused spawn's get() fails with QueueFullError`)
    t.deepEqual(whileHeld, { aStarted: true, mapStarted: false }, mode)
    t.deepEqual(a, { ok: true, value: 'a' }, mode)
    const ok = bcd.filter((x: any) => x.ok).map((x: any) => x.value)
    t.is(ok.length, 2, `${mode}: two of b, c, d were accepted and finished: ${JSON.stringify(bcd)}`)
    t.deepEqual(bcd.filter((x: any) => !x.ok), [refused], mode)
    t.deepEqual(mapped, ['m1', 'm2', 'm3', 'm4'], `${mode}: no map input is refused`)
  }
})

test.serial('maxPendingInputs under berth serve: gRPC callers get RESOURCE_EXHAUSTED, HTTP callers 429 with Retry-After and the error as JSON, Function.fromName callers QueueFullError', async (t) => {
  const { App, Function, QueueFullError } = await import('berth')
  const s = await serve([], {}, 'shed.ts')
  t.teardown(() => s.child.kill('SIGKILL'))
  const client = new Functions(s.address, grpc.credentials.createInsecure())
  t.teardown(() => client.close())
  const dir = mkdtempSync(join(tmpdir(), 'berth-shed-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const at = (id: string) => join(dir, id)
  const invoke = (p: string) =>
    new Promise<any>((resolve) =>
      client.Invoke({ function: { app: 'shed', function: 'hold' }, args: cbor.encode([p]) }, deadline(), (err: any, r: any) => resolve(err ?? r)),
    )

  const a = invoke(at('a'))
  await waitFor(`${at('a')}.started`)
  const b = invoke(at('b'))
  const c = invoke(at('c'))
  // b and c are in the queue once the next call is refused; any of the three may be the one.
  const d = invoke(at('d'))
  const first = await Promise.race([b, c, d])
  t.is(first.code, grpc.status.RESOURCE_EXHAUSTED, JSON.stringify(first))
  t.is(first.details, MESSAGE)

  // By now two wait: every further call is refused, whoever makes it.
  const http = await fetch(`http://${s.http}/shed/hold`, { method: 'POST', body: JSON.stringify([at('h')]), headers: { 'content-type': 'application/json' } })
  t.is(http.status, 429)
  t.is(http.headers.get('retry-after'), '1')
  t.deepEqual(await http.json(), { error: { name: 'QueueFullError', message: MESSAGE } })

  App.lookup('shed', { server: `http://${s.address}` })
  const hold = Function.fromName<(p: string) => Promise<string>>('shed', 'hold')
  const err = await t.throwsAsync(hold.remote(at('f')), { instanceOf: QueueFullError })
  t.is(err?.message, MESSAGE)
  t.false(existsSync(`${at('h')}.started`) || existsSync(`${at('f')}.started`), 'refused calls never run')

  // A map's inputs wait for room instead.
  const mapped = (async () => {
    const out: string[] = []
    for await (const r of hold.map([at('m1'), at('m2'), at('m3')])) out.push(r)
    return out
  })()
  writeFileSync(join(dir, 'go'), '')
  const results = await Promise.all([a, b, c, d])
  t.is(cbor.decode(results[0].result.value), 'a')
  const ok = results.slice(1).filter((r) => r.result !== undefined).map((r) => cbor.decode(r.result.value))
  t.is(ok.length, 2, JSON.stringify(results))
  t.is(results.slice(1).filter((r) => r.code === grpc.status.RESOURCE_EXHAUSTED).length, 1)
  t.deepEqual(await mapped, ['m1', 'm2', 'm3'])
  await stopsCleanly(t, s)
})

test.serial('maxPendingInputs on a generator under berth serve: a gRPC InvokeStream refused is RESOURCE_EXHAUSTED (a status, as Invoke), remoteGen callers get QueueFullError; accepted streams all finish', async (t) => {
  const { App, Function, QueueFullError } = await import('berth')
  const s = await serve([], {}, 'shed.ts')
  t.teardown(() => s.child.kill('SIGKILL'))
  const client = new Functions(s.address, grpc.credentials.createInsecure())
  t.teardown(() => client.close())
  const dir = mkdtempSync(join(tmpdir(), 'berth-shed-gen-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const at = (id: string) => join(dir, id)
  // One InvokeStream call read to its end: its items (an error item as { error }), and its status.
  const stream = (p: string, onItem: (v: unknown) => void = () => {}) =>
    new Promise<{ items: unknown[]; code: number; details: string }>((resolve) => {
      const items: unknown[] = []
      const call = client.InvokeStream({ function: { app: 'shed', function: 'holdGen' }, args: cbor.encode([p]) }, deadline())
      call.on('data', (m: any) => {
        const v = m.error ? { error: m.error.name } : cbor.decode(m.value)
        items.push(v)
        onItem(v)
      })
      call.on('error', (e: any) => resolve({ items, code: e.code, details: e.details }))
      call.on('end', () => resolve({ items, code: grpc.status.OK, details: '' }))
    })

  // a runs (it has yielded, so it holds the one slot); of b and c one waits and one is refused.
  let started!: () => void
  const aStarted = new Promise<void>((r) => (started = r))
  const a = stream(at('a'), (v) => v === 'started' && started())
  await aStarted
  const bc = [stream(at('b')), stream(at('c'))]
  const refused = await Promise.race(bc)
  t.is(refused.code, grpc.status.RESOURCE_EXHAUSTED, JSON.stringify(refused))
  t.deepEqual(refused.items, [], 'no item, not an error item')
  t.regex(refused.details, /^holdGen: its queue is full \(1 inputs? already waiting, its maxPendingInputs\); the call was not accepted/)

  App.lookup('shed', { server: `http://${s.address}` })
  const holdGen = Function.fromName<(p: string) => AsyncGenerator<string>>('shed', 'holdGen')
  const err = await t.throwsAsync(
    (async () => {
      for await (const _ of holdGen.remoteGen(at('f'))) t.fail('a refused stream yields nothing')
    })(),
    { instanceOf: QueueFullError },
  )
  t.regex(err?.message ?? '', /holdGen: its queue is full/)

  writeFileSync(join(dir, 'go'), '')
  t.deepEqual(await a, { items: ['started', 'a'], code: grpc.status.OK, details: '' })
  const all = await Promise.all(bc)
  const accepted = all.filter((r) => r.code === grpc.status.OK)
  t.is(accepted.length, 1, JSON.stringify(all))
  t.is(accepted[0].items.length, 2)
  await stopsCleanly(t, s)
})

test('maxPendingInputs must be a positive integer: anything else is named with the fix, for functions and classes', async (t) => {
  const { App, InvalidError, QueueFullError, BerthError } = await import('berth')
  const app = new App('shed-validation')
  for (const bad of [0, -1, 1.5, '3', Number.NaN, 2 ** 32]) {
    t.throws(() => app.function({ maxPendingInputs: bad as any }, async function f() {}), {
      instanceOf: InvalidError,
      message: `app.function('f'): maxPendingInputs must be a positive integer (the most inputs that may wait in its queue), got ${typeof bad === 'string' ? JSON.stringify(bad) : bad}. Leave it out for no bound.`,
    })
  }
  t.throws(() => app.cls({ maxPendingInputs: 0 })(class Model {}, { kind: 'class', name: 'Model', metadata: {} } as any), {
    instanceOf: InvalidError,
    message: /maxPendingInputs must be a positive integer/,
  })
  t.throws(() => app.function({ max_pending_inputs: 3 } as any, async function g() {}), { instanceOf: InvalidError, message: /maxPendingInputs/ })
  t.notThrows(() => app.function({ maxPendingInputs: 1 }, async function h() {}))
  t.true(new QueueFullError('x') instanceof BerthError)
})
