// A queue's consumer that dies mid-get loses nothing (README "Queue"): a container blocked in
// `get` and killed takes no item from the put that comes after; and a caller that took items
// with a lease and died before it acked them (a plain @grpc/grpc-js client reading proto/ only,
// standing in for berth's client cut off between the take and its ack) has them put back at
// the front of the queue once the lease (10 s) passes; a container that took items over its
// data socket and died before it acked them has them put back as soon as its socket closes.
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'

import * as grpc from '@grpc/grpc-js'
import loader from '@grpc/proto-loader'
import test, { type ExecutionContext } from 'ava'
import { App, Dict, Function, Queue } from 'berth'

import { npxServeListening, userProject } from './_project.ts'
import { cbor, root } from './_served.ts'

const proto = loader.loadSync('berth/v1/data.proto', { includeDirs: [join(root, 'proto')], defaults: true })
const Queues = (grpc.loadPackageDefinition(proto) as any).berth.v1.Queues
const QUEUE_OP_GET = 2

/** Asks `cond` every 50 ms until it holds, for `ms` at most. */
async function eventually(cond: () => Promise<boolean>, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`${what}: not within ${ms} ms`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

const APP = `import { App, Dict, Queue } from 'berth'
export const app = new App('leases')
/** Says its pid, then waits for the next item of queue \`name\`. */
app.function(async function consume(name: string) {
  await Dict.fromName('consumers', { createIfMissing: true }).put(name, process.pid)
  return Queue.fromName(name, { createIfMissing: true }).get({ timeout: 60 })
})
/** Takes the next item of queue \`name\` and dies before it can ack it. */
app.function(async function grab(name: string) {
  await Queue.fromName(name).get({ timeout: 10 })
  process.kill(process.pid, 'SIGKILL')
})
`

/** `berth serve` of APP in a project of its own; its address, the app looked up there. */
async function serveLeases(t: ExecutionContext): Promise<string> {
  const dir = userProject('berth-queue-lease-', (d) => writeFileSync(join(d, 'app.ts'), APP))
  const { server } = await npxServeListening(t, dir, ['--no-reload'])
  App.lookup('leases', { server })
  return server
}

test('a consumer killed while blocked in get takes nothing; items leased to a caller that never acks come back in order', async (t) => {
  const server = await serveLeases(t)
  const name = `lease-${process.pid}`
  const q = Queue.fromName<string>(name, { server, createIfMissing: true })
  await q.len()

  // A consumer container blocks in get and is killed; the item put next is delivered once:
  // to a get after (or to the call, if it ran again in a new container), never to the dead one.
  const consume = Function.fromName<(name: string) => Promise<string>>('leases', 'consume')
  const outcome = consume.remote(name).then(
    (v) => ({ got: v }),
    (e: Error) => ({ failed: e.message }),
  )
  const consumers = Dict.fromName<number>('consumers', { server, createIfMissing: true })
  await eventually(async () => (await consumers.get(name)) !== undefined, 30_000, 'the consumer to start')
  await new Promise((r) => setTimeout(r, 300)) // in its get by now
  process.kill((await consumers.get(name))!, 'SIGKILL')
  await new Promise((r) => setTimeout(r, 500))
  await q.put('only')
  const settled = await Promise.race([outcome, new Promise((r) => setTimeout(() => r({ pending: true }), 5000))])
  if ('got' in (settled as object)) {
    t.deepEqual(settled, { got: 'only' }, 'the call ran again and took it')
    t.is(await q.len(), 0)
  } else {
    t.is(await q.get({ block: false }), 'only', 'the killed consumer took nothing')
  }

  // Leased and never acked: back at the front, in order, once the lease passes.
  await q.putMany(['a', 'b', 'c'])
  const raw = new Queues(server.replace('http://', ''), grpc.credentials.createInsecure())
  t.teardown(() => raw.close())
  const leased: any = await new Promise((resolve, reject) =>
    raw.Queue({ name, op: QUEUE_OP_GET, max: 2, lease: true }, (e: Error | null, r: unknown) => (e ? reject(e) : resolve(r))),
  )
  t.deepEqual(
    leased.values.map((v: Buffer) => cbor.decode(v)),
    ['a', 'b'],
  )
  t.not(Number(leased.lease), 0)
  t.is(await q.len(), 1, 'out on lease')
  await eventually(async () => (await q.len()) === 3, 20_000, 'the leased items to come back')
  t.deepEqual(await q.getMany(3), ['a', 'b', 'c'])
})

test('a container that took items over its data socket and died before it acked them has them back in the queue at once, in order', async (t) => {
  const server = await serveLeases(t)
  const name = `grab-${process.pid}`
  const q = Queue.fromName<string>(name, { server, createIfMissing: true })
  await q.putMany(['x', 'y', 'z'])
  const grab = Function.fromName<(name: string) => Promise<void>>('leases', 'grab')
  await t.throwsAsync(grab.remote(name), undefined, 'the container died')
  // Its socket closed with the take unacked: back now, not when the 10 s lease runs out.
  await eventually(async () => (await q.len()) === 3, 4000, 'the item to come back when the socket closed')
  t.deepEqual(await q.getMany(3), ['x', 'y', 'z'], 'at the front, in order')
})
