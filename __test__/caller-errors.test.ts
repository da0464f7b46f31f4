// Errors that must reach the caller, not only the server's log (README "Errors", and "What
// callers cannot do to it"): a remote caller's wrong class parameters, an @enter that throws
// under `berth serve`, a result that is a class instance, a handle member that is no method.
import test from 'ava'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'

import { inBothModes } from './_modes.ts'
import { root, serve, stopsCleanly } from './_served.ts'

const fixture = join(root, '__test__/fixtures/caller-errors.ts')

function safeRead(f: string): string {
  try {
    return readFileSync(f, 'utf8')
  } catch {
    return ''
  }
}

test.serial('wrong class parameters from a remote caller: INVALID_ARGUMENT / 400 in the embedded check\'s words, before any container starts; the defaults, passed or not, share one pool', async (t) => {
  const { App, Cls, InvalidError } = await import('berth')
  const { Model } = await import('./fixtures/caller-errors.ts')
  const s = await serve([], {}, 'caller-errors.ts')
  t.teardown(() => s.child.kill('SIGKILL'))
  App.lookup('caller-errors', { server: `http://${s.address}` })
  const post = async (body: string) => {
    const r = await fetch(`http://${s.http}/caller-errors/Model/info`, { method: 'POST', body })
    return { status: r.status, json: (await r.json()) as any }
  }
  // What the embedded check says, with `Model` where it says `Cls.of(Model)`.
  const embedded = (params: Record<string, unknown>) => {
    const e = t.throws(() => Cls.of(Model, params as never), { instanceOf: InvalidError })
    return e!.message.replace(/^Cls\.of\(Model\)/, 'Model')
  }

  for (const params of [{ varient: 'x' }, { size: 'big' }, { size: 1.5 }, { variant: 7 }]) {
    const want = embedded(params)
    const e = await t.throwsAsync(Cls.fromName<any>('caller-errors', 'Model', params).info.remote(), { instanceOf: InvalidError })
    t.is(e!.message, want, JSON.stringify(params))
    t.deepEqual(await post(JSON.stringify({ params })), { status: 400, json: { error: { name: 'InvalidArgument', message: want } } })
  }
  t.is(embedded({ varient: 'x' }), "Model: unknown parameter 'varient'. Did you mean 'variant'? Known parameters: variant, size.")
  t.is(embedded({ variant: 7 }), "Model: parameter 'variant' must be a string, got the number 7.")
  // The gRPC Map stream's first message is checked the same way.
  const mapped = Cls.fromName<any>('caller-errors', 'Model', { varient: 'x' }).info.starmap([[]])
  await t.throwsAsync(async () => {
    for await (const _ of mapped);
  }, { instanceOf: InvalidError, message: /unknown parameter 'varient'/ })
  t.false(/enter Model/.test(safeRead(s.marker)), 'no container started for a call with bad parameters')
  t.false(/exited with status/.test(s.stdout()), s.stdout())

  // No parameters, the defaults spelt out (any order, or some of them), over gRPC and HTTP:
  // one pool, one container (maxContainers 1 per pool), entered once.
  const pids = new Set<number>()
  for (const params of [undefined, { variant: 'base', size: 3 }, { size: 3, variant: 'base' }, { size: 3 }]) {
    const info = (await Cls.fromName<InstanceType<typeof Model>>('caller-errors', 'Model', params).info.remote()) as { pid: number }
    pids.add(info.pid)
  }
  const http = await post('{"params": {"variant": "base"}}')
  t.is(http.status, 200)
  pids.add(http.json.pid)
  t.is(pids.size, 1, 'every call with the default parameters ran in one container')
  const enters = safeRead(s.marker).split('\n').filter((l) => l.startsWith('enter Model'))
  t.deepEqual(enters, [`enter Model ${[...pids][0]} base 3`])
  // Other parameters, another pool.
  const other = (await Cls.fromName<InstanceType<typeof Model>>('caller-errors', 'Model', { variant: 'large' }).info.remote()) as { variant: string; size: number }
  t.like(other, { variant: 'large', size: 3 })
  await stopsCleanly(t, s)
})

test.serial('an @enter that throws under berth serve: logged once with its stack, callers get InitError, restarts back off while calls keep coming', async (t) => {
  const { App, Cls, InitError } = await import('berth')
  const s = await serve([], {}, 'caller-errors.ts')
  t.teardown(() => s.child.kill('SIGKILL'))
  App.lookup('caller-errors', { server: `http://${s.address}` })
  const broken = Cls.fromName<{ run(): Promise<number> }>('caller-errors', 'Broken')
  // One call fails; then four callers call again as soon as their call fails, for 4 s.
  const errors: unknown[] = [await broken.run.remote().catch((e) => e)]
  const until = Date.now() + 4000
  await Promise.all(
    Array.from({ length: 4 }, async () => {
      while (Date.now() < until) errors.push(await broken.run.remote().catch((e) => e))
    }),
  )
  t.true(errors.length >= 4)
  for (const e of errors) {
    t.true(e instanceof InitError, String(e))
    t.is((e as Error).message, 'no weights at /models/tiny')
  }
  const starts = safeRead(s.marker).split('\n').filter((l) => l.startsWith('enter Broken')).map((l) => Number(l.split(' ')[2]))
  const gaps = starts.slice(1).map((at, i) => at - starts[i])
  // README ("Errors"): one container at a time, 250 ms after the first failure, then twice as
  // long each time (a start also takes its own time). Each waiting caller used to bring a
  // container of its own to each restart.
  t.true(starts.length >= 3 && starts.length <= 6, `${starts.length} starts in 4 s, gaps ${gaps}`)
  gaps.forEach((gap, i) => t.true(gap >= 250 * 2 ** i - 20, `gap ${i} is ${gap} ms; all: ${gaps}`))
  // The server's log has the failure, with its stack, once.
  const log = s.stdout()
  t.is(log.split('no weights at /models/tiny').length - 1, 1, log)
  t.regex(log, /caller-errors\/Broken: an @enter\(\) hook threw in container \d+.*\nTypeError: no weights at \/models\/tiny\n\s+at .*load/)
  await stopsCleanly(t, s)
})

const both = (scenario: string) => inBothModes(fixture, scenario)

test.serial('a result that is a class instance fails with SerializationError in both modes; values that cross arrive the same', async (t) => {
  const [embedded, proc] = await both('results')
  t.is(embedded.code, 0, embedded.out)
  t.is(proc.code, 0, proc.out)
  const e = embedded.result
  t.deepEqual(e.point, {
    ok: false,
    error: {
      class: 'SerializationError',
      message: 'the result of point is an instance of Point, which cannot be sent to a container. Convert it to a plain object first. Pass plain data (JSON types, Uint8Array, Date, Map, Set, bigint) instead.',
    },
  })
  t.like(e.nested.error, { class: 'SerializationError' })
  t.regex(e.nested.error.message, /^the result of nested: value at \.at\[0\] is an instance of Point/)
  t.deepEqual(e.crosses, { tagsIsPlainArray: true, tags: ['a', 'b'], bare: { k: 1 }, when: 0, set: [1] })
  t.deepEqual(proc.result, e, 'process containers: the same rule')
})

test.serial('a handle member that is an @enter hook, a parameter or an undecorated method: InvalidError saying what it is and what can be called, in both modes', async (t) => {
  const [embedded, proc] = await both('members')
  t.is(embedded.code, 0, embedded.out)
  t.is(proc.code, 0, proc.out)
  const e = embedded.result
  const invalid = (message: string) => ({ ok: false, error: { class: 'InvalidError', message } })
  t.deepEqual(e.load, invalid("Cls.of(Model).load: 'load' is an @enter() hook: each container runs it once, before its first input; a handle calls methods only. Callable methods of Model: info."))
  t.deepEqual(e.helper, invalid("Cls.of(Model).helper: 'helper' is not a @method(): mark it @method() (or @batched({ maxBatchSize, waitMs })) to call it as an input; a handle calls methods only. Callable methods of Model: info."))
  t.deepEqual(e.variant, invalid("Cls.of(Model).variant: 'variant' is a @parameter(): pass it when making the handle, Cls.of(Model, { variant: ... }); a handle calls methods only. Callable methods of Model: info."))
  t.deepEqual(e.info, { ok: true, value: { variant: 'base', size: 3 } })
  t.deepEqual(proc.result, e, 'process containers: the same handle')
})

test.serial('Cls.fromName: a member that is an @enter hook, a parameter or an undecorated method is refused saying what it is and what can be called', async (t) => {
  const { App, Cls, InvalidError } = await import('berth')
  const s = await serve([], {}, 'caller-errors.ts')
  t.teardown(() => s.child.kill('SIGKILL'))
  App.lookup('caller-errors', { server: `http://${s.address}` })
  const model = Cls.fromName<InstanceType<typeof import('./fixtures/caller-errors.ts').Model>>('caller-errors', 'Model')
  const refused = async (call: () => Promise<unknown>) => (await t.throwsAsync(call(), { instanceOf: InvalidError }))!.message
  t.is(await refused(() => model.load.remote()), "Model.load: 'load' is an @enter() hook: each container runs it once, before its first input; callers call methods only. Callable methods of Model: info.")
  t.is(await refused(() => model.helper.remote()), "Model.helper: 'helper' is not a @method(): mark it @method() (or @batched({ maxBatchSize, waitMs })) to call it as an input; callers call methods only. Callable methods of Model: info.")
  t.is(await refused(() => (model as any).variant.remote()), `Model.variant: 'variant' is a @parameter(): pass it with the class parameters (Cls.fromName('caller-errors', 'Model', { variant: ... }), or "params" over HTTP); callers call methods only. Callable methods of Model: info.`)
  const http = await fetch(`http://${s.http}/caller-errors/Model/load`, { method: 'POST', body: '[]' })
  t.is(http.status, 404)
  t.regex(((await http.json()) as any).error.message, /^Model\.load: 'load' is an @enter\(\) hook/)
  t.false(/enter Model/.test(safeRead(s.marker)), 'no container started')
  await stopsCleanly(t, s)
})
