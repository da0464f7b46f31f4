// Queue (README "Queue"): a named FIFO queue per partition, shared by every container and caller,
// held by the control plane under `npx berth serve` and with process containers, and by the
// process while an app runs embedded. Each mode: put/get in order, partitions, len and clear, a
// non-blocking get, a blocking get released by a put from another container, a timeout, and
// bad input refused saying why.
import test from 'ava'
import { App, Function, InvalidError, NotFoundError, Queue, QueueEmptyError, SerializationError } from 'berth'

import { berth } from './_cli.ts'
import { fixtureProject, npxServeListening, removedAtEnd } from './_project.ts'

async function everyOperation(t: any, name: string, opts: { server?: string } = {}) {
  await t.throwsAsync(Queue.fromName(name, opts).len(), { instanceOf: NotFoundError, message: /createIfMissing: true/ })
  const q = Queue.fromName<unknown>(name, { ...opts, createIfMissing: true })
  await q.putMany([1, 2, 3])
  await q.put({ four: [4] })
  await q.put('elsewhere', { partition: 'p' })
  t.is(await q.len(), 4)
  t.is(await q.len({ partition: 'p' }), 1)
  t.is(await q.len({ total: true }), 5)
  t.is(await q.get(), 1)
  t.deepEqual(await q.getMany(2), [2, 3])
  t.deepEqual(await q.get({ block: false }), { four: [4] })
  t.is(await q.get({ block: false }), undefined, 'empty: undefined without blocking')
  const t0 = Date.now()
  await t.throwsAsync(q.get({ timeout: 0.3 }), { instanceOf: QueueEmptyError })
  t.true(Date.now() - t0 >= 250, 'it waited for its timeout')
  t.is(await q.get({ partition: 'p' }), 'elsewhere')
  await q.putMany(['a', 'b', 'c'])
  const seen: unknown[] = []
  for await (const x of q.iterate()) seen.push(x)
  t.deepEqual(seen, ['a', 'b', 'c'])
  await q.putMany([1, 2])
  await q.put(3, { partition: 'p' })
  await q.clear({ all: true })
  t.is(await q.len({ total: true }), 0)
  // Bad input.
  await t.throwsAsync(q.get({ timeout: -1 }), { instanceOf: InvalidError, message: /timeout is seconds from 0 up/ })
  await t.throwsAsync(q.put(() => 1), { instanceOf: SerializationError })
  await t.throwsAsync(q.getMany(0), { instanceOf: InvalidError })
  t.throws(() => Queue.fromName('no spaces'), { instanceOf: InvalidError })
  t.true(await Queue.delete(name, opts))
  t.false(await Queue.delete(name, opts))
}

test.serial('embedded (app.run): every operation; a blocked get in one container is released by a put in another', async (t) => {
  const app = new App(`queue-embedded-${process.pid}`)
  const consume = app.function({ maxContainers: 2 }, async function consume(name: string) {
    return Queue.fromName(name, { createIfMissing: true }).get({ timeout: 30 })
  })
  const produce = app.function({ maxContainers: 2 }, async function produce(name: string) {
    await new Promise((r) => setTimeout(r, 300))
    await Queue.fromName(name, { createIfMissing: true }).put('hi')
  })
  await app.run(async () => {
    await everyOperation(t, `embedded-${process.pid}`)
    const name = `handoff-${process.pid}`
    const [got] = await Promise.all([consume.remote(name), produce.remote(name)])
    t.is(got, 'hi')
  })
})

test.serial('berth serve: every operation over gRPC; a get blocked in one container is released by a put from another', async (t) => {
  const dir = fixtureProject('berth-queue-', 'queues.ts')
  const { server } = await npxServeListening(t, dir)
  await everyOperation(t, `served-${process.pid}`, { server })
  App.lookup('queues', { server })
  const consume = Function.fromName<(name: string, timeout: number) => Promise<unknown>>('queues', 'consume')
  const produce = Function.fromName<(name: string, items: unknown[], delayMs: number) => Promise<number>>('queues', 'produce')
  const name = `handoff-${process.pid}`
  const [got] = await Promise.all([consume.remote(name, 30), produce.remote(name, [{ n: 1 }], 500)])
  t.deepEqual(got, { n: 1 })
  // A caller's put reaches a container's get, and the other way round.
  const waiting = consume.remote(name, 30)
  await Queue.fromName(name, { server }).put('from the caller')
  t.is(await waiting, 'from the caller')
  await produce.remote(name, ['x', 'y'], 0)
  t.deepEqual(await Queue.fromName(name, { server }).getMany(5), ['x', 'y'])

  // The CLI, as a user feeds or drains a running server's queue (BERTH_SERVER).
  const env = { BERTH_SERVER: server }
  const cli = (args: string[]) => berth(['queue', ...args], env, { npx: true, cwd: dir })
  const jobs = `jobs-${process.pid}`
  t.is((await cli(['put', jobs, '{"n":1}', 'two'])).code, 0)
  t.is((await cli(['put', jobs, '3', '--partition', 'p'])).code, 0)
  t.is((await cli(['len', jobs])).stdout.trim(), '3', 'every partition')
  t.is((await cli(['len', jobs, '--partition', 'p'])).stdout.trim(), '1')
  t.deepEqual(await Queue.fromName(jobs, { server }).get(), { n: 1 }, 'what the CLI put, parsed as JSON')
  t.is((await cli(['get', jobs])).stdout.trim(), '"two"')
  const empty = await cli(['get', jobs])
  t.is(empty.code, 1)
  t.regex(empty.stderr, /is empty/)
  t.is((await cli(['clear', jobs])).code, 0)
  t.is(await Queue.fromName(jobs, { server }).len({ total: true }), 0)
  const absent = await cli(['len', 'never-made'])
  t.is(absent.code, 1)
  t.regex(absent.stderr, /no queue named 'never-made': create it with Queue.fromName/)
})

test.serial('npx berth run: the queue is the run\'s, with process containers and embedded ones', async (t) => {
  const dir = fixtureProject('berth-queue-run-', 'queues.ts')
  removedAtEnd(t, dir)
  for (const containers of ['process', 'embedded']) {
    const { code, stdout, stderr } = await berth(['run', 'app.ts', '--containers', containers], {}, { npx: true, cwd: dir })
    t.is(code, 0, stdout + stderr)
    t.deepEqual(JSON.parse(stdout.trim().split('\n').pop()!), { got: 'hello' }, containers)
  }
})
