// Generators (README "API", remoteGen): an `async function*` function or `async *` method streams
// its items to the caller, in order, with backpressure; a reader that leaves early ends it; a
// throw or a timeout ends the stream after the items already yielded. Each scenario of
// __test__/fixtures/generators.ts runs as a script in each container mode.
import test from 'ava'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import grpc from '@grpc/grpc-js'
import { App, Cls, Function, InvalidError } from 'berth'

import { MODES, runInMode, type Run } from './_modes.ts'
import { Functions, cbor, deadline, invoke, serve, stopsCleanly } from './_served.ts'

const root = fileURLToPath(new URL('..', import.meta.url))
const fixture = join(root, '__test__/fixtures/generators.ts')

async function eachMode(scenario: string, check: (r: Run, mode: string) => void) {
  for (const mode of MODES) {
    const r = await runInMode(fixture, scenario, mode)
    if (r.code !== 0 || r.result === undefined) throw new Error(`${scenario} (${mode}) exited ${r.code}:\n${r.out}`)
    check(r, mode)
  }
}

test.serial('remoteGen yields a generator function\'s and a generator method\'s items in order, then ends', async (t) => {
  await eachMode('ordered', ({ result }, mode) => {
    t.deepEqual(result.letters, { items: ['b', 'e', 'r', 't', 'h'], end: { ok: true } }, mode)
    t.deepEqual(result.counted, Array.from({ length: 200 }, (_, i) => i), mode)
  })
})

test.serial('a slow reader pauses the generator: it runs at most a small window ahead, and resumes as the reader reads', async (t) => {
  await eachMode('backpressure', ({ result }, mode) => {
    t.is(result.first, 0)
    // Embedded: 1 item read + the window (16) + an item in flight. With container processes the
    // caller's window and the container's add up (and credit goes back 8 items at a time).
    // Without backpressure it is 100000.
    t.true(result.whilePaused >= 2 && result.whilePaused <= 48, `${mode}: the generator ran ${result.whilePaused} items ahead of a paused reader`)
    t.is(result.read, 100_000, mode)
    t.is(result.produced, 100_000, mode)
  })
})

test.serial('a reader that breaks out of its loop ends the generator: its finally runs, with the input\'s signal aborted', async (t) => {
  await eachMode('early', ({ result }, mode) => {
    t.deepEqual(result.seen, [0, 1, 2, 3], mode)
    t.deepEqual(result.finished, { aborted: true, reason: 'InputCancelledError' }, mode)
  })
})

test.serial('a generator that throws after some items: the reader gets those items, then the error', async (t) => {
  await eachMode('throws', ({ result }, mode) => {
    t.deepEqual(result.items, [0, 1, { two: 2 }], mode)
    t.false(result.end.ok)
    t.like(result.end.error, { message: 'the source ran dry', remoteName: 'RangeError' }, mode)
    t.regex(result.end.error.class, /RemoteError$/)
  })
})

test.serial('a generator\'s timeout bounds the whole stream: the items so far, then FunctionTimeoutError', async (t) => {
  await eachMode('timeout', ({ result }, mode) => {
    t.true(result.count >= 2, `${mode}: ${result.count} items before the timeout`)
    t.true(result.inOrder)
    t.deepEqual(result.end, {
      ok: false,
      error: { class: 'FunctionTimeoutError', message: 'endless timed out after 0.5s; raise `timeout` in its options if it needs longer' },
    }, mode)
  })
})

test.serial('a generator holds its concurrency slot until it ends', async (t) => {
  await eachMode('slot', ({ result }, mode) => {
    t.deepEqual(result, { early: 'waiting', after: 'pong' }, mode)
  })
})

test.serial('.remote(), .spawn() and .map() on a generator, and .remoteGen() on a plain function, are InvalidError naming the call to use', async (t) => {
  await eachMode('misuse', ({ result }, mode) => {
    const gen = (label: string, what: string) => ({
      ok: false,
      error: {
        class: 'InvalidError',
        message: `${label} is a generator (async function*): ${what}() would have no single result. Call ${label}.remoteGen(...args) and read the items with for await`,
      },
    })
    t.deepEqual(result.remote, gen('letters', 'remote'), mode)
    t.deepEqual(result.spawn, gen('letters', 'spawn'), mode)
    t.deepEqual(result.map, gen('letters', 'map'), mode)
    t.deepEqual(result.methodRemote, gen('Counter.count', 'remote'), mode)
    t.deepEqual(result.remoteGenOnPlain, {
      items: [],
      end: {
        ok: false,
        error: {
          class: 'InvalidError',
          message: 'plain is not a generator: call it with plain.remote(...args). remoteGen() is for async function* functions and async * methods',
        },
      },
    }, mode)
    t.like(result.arity.end.error, { class: 'InvalidError' })
    t.regex(result.arity.end.error.message, /^letters takes exactly 1 argument; the call passes 0/)
  })
})

/** One InvokeStream call read to its end: the decoded items, the error item if any, the status. */
function invokeStream(client: any, fn: string, args: unknown[], extra: Record<string, unknown> = {}) {
  return new Promise<{ items: unknown[]; error?: { name: string; message: string }; status: number; details: string }>((resolve) => {
    const items: unknown[] = []
    let error: { name: string; message: string } | undefined
    const call = client.InvokeStream({ function: { app: 'generators', function: fn, ...extra }, args: cbor.encode(args) }, deadline())
    call.on('data', (m: any) => {
      // proto-loader without `oneofs`: the item is whichever field is set.
      if (m.error) error = { name: m.error.name, message: m.error.message }
      else items.push(cbor.decode(m.value))
    })
    call.on('error', (e: any) => resolve({ items, error, status: e.code, details: e.details }))
    call.on('end', () => resolve({ items, error, status: grpc.status.OK, details: '' }))
  })
}

test.serial('berth serve: a plain gRPC client reads a generator through InvokeStream, and so does Function.fromName(...).remoteGen(); a reset or a break cancels it; Invoke on a generator and InvokeStream on a function are INVALID_ARGUMENT', async (t) => {
  const s = await serve([], {}, 'generators.ts')
  t.teardown(() => s.child.kill('SIGKILL'))
  const client = new Functions(s.address, grpc.credentials.createInsecure())

  t.deepEqual(await invokeStream(client, 'letters', ['berth']), { items: ['b', 'e', 'r', 't', 'h'], error: undefined, status: grpc.status.OK, details: '' })
  const counted = await invokeStream(client, 'Counter', [300], { method: 'count' })
  t.deepEqual(counted.items, Array.from({ length: 300 }, (_, i) => i))
  t.deepEqual(await invokeStream(client, 'failing', []), {
    items: [0, 1, { two: 2 }],
    error: { name: 'RangeError', message: 'the source ran dry' },
    status: grpc.status.OK,
    details: '',
  })

  // The caller resets its stream after 4 items: the generator's signal aborts, its finally runs.
  const seen: number[] = []
  await new Promise<void>((resolve) => {
    const call = client.InvokeStream({ function: { app: 'generators', function: 'Counter', method: 'ticks' }, args: cbor.encode([]) }, deadline())
    call.on('data', (m: any) => {
      seen.push(cbor.decode(m.value))
      if (seen.length === 4) call.cancel()
    })
    call.on('error', () => resolve())
    call.on('end', () => resolve())
  })
  t.deepEqual(seen, [0, 1, 2, 3])
  let finished: unknown = null
  for (let i = 0; i < 200 && finished === null; i++) {
    finished = (cbor.decode((await invoke(client, 'Counter', [], { app: 'generators', method: 'state' })).result.value) as any).finished
    if (finished === null) await new Promise((r) => setTimeout(r, 50))
  }
  t.deepEqual(finished, { aborted: true, reason: 'InputCancelledError' })

  const asCall = await new Promise<any>((resolve) =>
    client.Invoke({ function: { app: 'generators', function: 'letters' }, args: cbor.encode(['x']) }, deadline(), (e: unknown) => resolve(e)),
  )
  t.is(asCall.code, grpc.status.INVALID_ARGUMENT)
  t.is(
    asCall.details,
    'letters is a generator (async function*): Invoke would have no single result. Call it with InvokeStream (in TypeScript, .remoteGen(...args) and read the items with for await)',
  )
  const asStream = await invokeStream(client, 'plain', [1])
  t.is(asStream.status, grpc.status.INVALID_ARGUMENT)
  t.is(asStream.details, 'plain is not a generator: call it with Invoke (in TypeScript, .remote(...args)). InvokeStream is for async function* functions and async * methods')

  // Function.fromName: the same stream through berth's own client, over gRPC.
  App.lookup('generators', { server: `http://${s.address}` })
  const letters = Function.fromName<(word: string) => AsyncGenerator<string>>('generators', 'letters')
  const got: string[] = []
  for await (const c of letters.remoteGen('serve')) got.push(c)
  t.deepEqual(got, ['s', 'e', 'r', 'v', 'e'])
  const early: number[] = []
  const ticks = Cls.fromName<{ ticks(): AsyncGenerator<number> }>('generators', 'Counter')
  for await (const x of ticks.ticks.remoteGen()) {
    early.push(x)
    if (x === 2) break
  }
  t.deepEqual(early, [0, 1, 2])
  // Over HTTP its items stream as NDJSON (http-gen.test.ts has the rest).
  const http = await fetch(`http://${s.http}/generators/letters`, { method: 'POST', body: JSON.stringify({ args: ['xy'] }) })
  t.is(http.status, 200)
  t.is(await http.text(), '"x"\n"y"\n')
  await t.throwsAsync((letters as any).remote('x'), { instanceOf: InvalidError, message: /^letters is a generator \(async function\*\): Invoke would have no single result/ })
  await stopsCleanly(t, s)
})
