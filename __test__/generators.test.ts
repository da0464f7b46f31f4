// Generators (README "API", remoteGen): an `async function*` function or `async *` method streams
// its items to the caller, in order, with backpressure; a reader that leaves early ends it; a
// throw or a timeout ends the stream after the items already yielded. Each scenario of
// __test__/fixtures/generators.ts runs as a script in each container mode.
import test from 'ava'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

import { runInMode, type Run } from './_modes.ts'

const root = fileURLToPath(new URL('..', import.meta.url))
const fixture = join(root, '__test__/fixtures/generators.ts')
const GEN_MODES = ['embedded'] as const

async function eachMode(scenario: string, check: (r: Run, mode: string) => void) {
  for (const mode of GEN_MODES) {
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
    // 1 item read + the window (16) + an item in flight; without backpressure it is 100000.
    t.true(result.whilePaused >= 2 && result.whilePaused <= 40, `${mode}: the generator ran ${result.whilePaused} items ahead of a paused reader`)
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
