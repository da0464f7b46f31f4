// Errors that must reach the caller, not only the server's log (README "Errors", and "What
// callers cannot do to it"): a remote caller's wrong class parameters, an @enter that throws
// under `berth serve`.
import test from 'ava'
import { readFileSync } from 'node:fs'

import { serve, stopsCleanly } from './_served.ts'

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
