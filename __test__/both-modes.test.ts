// The same app with embedded containers and with container processes: what the caller sees
// must not depend on the mode (README "Process containers": "the handles are the same").
// Each test runs __test__/fixtures/both-modes.ts as a script once per mode.
import test from 'ava'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

import { MODES, inBothModes } from './_modes.ts'

const root = fileURLToPath(new URL('..', import.meta.url))
const fixture = join(root, '__test__/fixtures/both-modes.ts')
const both = (scenario: string) => inBothModes(fixture, scenario)

test.serial('@batched: a batch whose inputs pass different numbers of arguments fails each of them with InvalidError, in both modes', async (t) => {
  for (const [i, r] of (await both('batchArity')).entries()) {
    const mode = MODES[i]
    t.is(r.code, 0, `${mode}\n${r.stdout}\n${r.stderr}`)
    const { mixed, same } = r.result
    for (const m of mixed) {
      t.false(m.ok, `${mode}: a mixed batch must not run (got ${JSON.stringify(m.value)})`)
      t.like(m.error, {
        class: 'InvalidError',
        name: 'InvalidError',
        message:
          'Pairs.join is @batched: the inputs of one batch must pass the same number of arguments; got 1 and 2. ' +
          'Pass every argument in each call: in a batch each parameter is one array with an item per input, so no input can leave one out',
      }, mode)
    }
    t.deepEqual(same, [{ ok: true, value: '1+2' }, { ok: true, value: '3+4' }], `${mode}: a batch whose inputs agree runs`)
  }
})

test.serial('an @exit hook that throws: the remaining exit hooks are skipped, and the log names the hook, those skipped and the stack, in both modes', async (t) => {
  for (const [i, r] of (await both('exitThrows')).entries()) {
    const mode = MODES[i]
    t.is(r.code, 0, `${mode}\n${r.stdout}\n${r.stderr}`)
    t.is(r.result, 'pong')
    const exits = r.stdout.split('\n').filter((l) => l.startsWith('[exit]'))
    t.deepEqual(exits, ['[exit] close'], `${mode}: flush, after close, which threw, does not run`)
    t.regex(r.stderr, /berth: @exit hook Closing\.close threw; the remaining exit hooks \(Closing\.flush\) are skipped: Error: close failed\n\s+at _?Closing\.close /, mode)
  }
})

test.serial('.local() is not an input: currentInputId() and currentFunctionCallId() are undefined, currentInput() throws; called from an input, it sees that input, in both modes', async (t) => {
  for (const [i, r] of (await both('localContext')).entries()) {
    const mode = MODES[i]
    t.is(r.code, 0, `${mode}\n${r.stdout}\n${r.stderr}`)
    const { fnLocal, clsLocal, remote, nested } = r.result
    const none = { inputId: null, functionCallId: null, currentInput: 'InvalidError' }
    t.deepEqual(fnLocal, none, `${mode}: function .local()`)
    t.deepEqual(clsLocal, none, `${mode}: method .local()`)
    t.regex(remote.inputId, /\S/, `${mode}: .remote() runs as an input`)
    t.regex(remote.functionCallId, /\S/)
    t.is(remote.currentInput, remote.inputId)
    t.regex(nested.own.inputId, /\S/)
    t.deepEqual(nested.inner, nested.own, `${mode}: .local() inside an input runs as part of that input`)
  }
})

test.serial('an error from user code reaches the caller with the same class, name, message, remoteName and stack in both modes', async (t) => {
  const [embedded, proc] = await both('errors')
  t.is(embedded.code, 0, embedded.stderr)
  t.is(proc.code, 0, proc.stderr)
  const e = embedded.result
  t.deepEqual(e.enterError, {
    ok: false,
    error: { class: 'InitError', name: 'InitError', message: 'weights missing', remoteName: 'Error', remoteStack: e.enterError.error.remoteStack },
  })
  t.regex(e.enterError.error.remoteStack, /^Error: weights missing\n\s+at _?EnterError\.load /)
  t.deepEqual(e.enterString, { ok: false, error: { class: 'InitError', name: 'InitError', message: 'weights missing', remoteName: 'Error' } })
  t.like(e.enterCustom.error, { class: 'InitError', message: 'no weights at /models', remoteName: 'WeightsMissing' })
  t.like(e.typeError.error, { class: 'RemoteError', name: 'RemoteError', remoteName: 'TypeError' })
  t.regex(e.typeError.error.message, /null/)
  t.like(e.customError.error, { class: 'RemoteError', message: 'no weights at /models', remoteName: 'WeightsMissing' })
  t.like(e.ownClass.error, { class: 'InvalidError', name: 'InvalidError', message: 'the config names no model' })
  t.like(e.constructorError.error, { class: 'RemoteError', message: 'no config for this model', remoteName: 'RangeError' })
  // berth's own errors about a result: the same words in both modes.
  t.is(e.unsendable.error.class, 'SerializationError')
  t.regex(e.unsendable.error.message, /^the result of unsendable: value at \.f is a function/)
  t.like(e.short.error, {
    class: 'InvalidError',
    message: 'Short.lens is @batched: it got 1 inputs and must return an array of 1 results (one per input, in order), but returned an array of 0',
  })
  const seen = ({ ok, error }: { ok: boolean; error?: Record<string, unknown> }) =>
    // A berth error from a container process also carries the container's stack (remoteStack).
    ok || error?.remoteName !== undefined ? { ok, error } : { ok, error: { ...error, remoteStack: undefined } }
  for (const k of Object.keys(e)) t.deepEqual(seen(proc.result[k]), seen(e[k]), `${k}: process containers vs embedded`)
})

test.serial('failures berth reports itself (timeouts with and without retries, a cancelled call) read the same in both modes and name the function or method, for the caller and in the input\'s AbortSignal', async (t) => {
  const runs = await both('failures')
  const reasons = runs.map((r) => r.stdout.split('\n').filter((l) => l.startsWith('[reason] ')))
  for (const [i, r] of runs.entries()) t.is(r.code, 0, `${MODES[i]}\n${r.stdout}\n${r.stderr}`)
  const hint = '; raise `timeout` in its options if it needs longer'
  t.deepEqual(runs[0].result, {
    timeout: { ok: false, error: { class: 'FunctionTimeoutError', name: 'FunctionTimeoutError', message: `stuck timed out after 0.5s${hint}` } },
    timeoutRetried: { ok: false, error: { class: 'FunctionTimeoutError', name: 'FunctionTimeoutError', message: `stuckTwice timed out after 0.5s on each of 2 attempts${hint}` } },
    method: { ok: false, error: { class: 'FunctionTimeoutError', name: 'FunctionTimeoutError', message: `Stuck.wait timed out after 0.5s${hint}` } },
    cancelled: { ok: false, error: { class: 'InputCancelledError', name: 'InputCancelledError', message: 'held was cancelled' } },
  })
  t.deepEqual(runs[1].result, runs[0].result, 'the caller reads the same with container processes')
  t.deepEqual(reasons[0], [
    '[reason] InputCancelledError: held was cancelled',
    '[reason] FunctionTimeoutError: stuck timed out after 0.5s (attempt 1)',
    '[reason] FunctionTimeoutError: stuckTwice timed out after 0.5s (attempt 1)',
    '[reason] FunctionTimeoutError: stuckTwice timed out after 0.5s (attempt 2)',
    '[reason] FunctionTimeoutError: Stuck.wait timed out after 0.5s (attempt 1)',
  ])
  // Each function has its own container process, whose lines reach stdout in whatever order
  // the processes write them.
  t.deepEqual([...reasons[1]].sort(), [...reasons[0]].sort(), 'the input\'s signal says the same inside a container process')
})
