// Dict.ephemeral and Queue.ephemeral (README "Dict", "Queue"): a dict or queue with a name of
// its own that exists while the block runs and is deleted after it, also when the block throws.
// Embedded (app.run) and under `npx berth serve`, with the same app: its containers open the
// block's dict or queue by name, read what the block put and put what the block reads; and a
// container makes ephemeral ones of its own.
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import test from 'ava'
import { App, Dict, Function, InvalidError, NotFoundError, Queue } from 'berth'

import { npxServeListening, removedAtEnd, userProject } from './_project.ts'

/** The app, served from its own project and imported by the embedded test. None of it creates what it opens. */
const APP = `import { App, Dict, Queue } from 'berth'

export const app = new App('ephemeral')

export const read = app.function({}, async function read(name: string, key: string) {
  return Dict.fromName(name).get(key)
})

export const write = app.function({}, async function write(name: string, key: string, value: unknown) {
  await Dict.fromName(name).put(key, value)
})

export const take = app.function({}, async function take(name: string) {
  return Queue.fromName(name).get({ timeout: 10 })
})

export const give = app.function({}, async function give(name: string, value: unknown) {
  await Queue.fromName(name).put(value)
})

/** Ephemeral ones made in a container: what they held, and whether they are gone after. */
export const inside = app.function({}, async function inside() {
  const gone = (p: Promise<unknown>) => p.then(() => 'still there', (e) => e.name)
  const [dictName, got] = await Dict.ephemeral(async (d) => {
    await d.put('k', 'v')
    return [d.name, await d.get('k')]
  })
  const [queueName, item] = await Queue.ephemeral(async (q) => {
    await q.put(1)
    return [q.name, await q.get()]
  })
  return { got, item, dict: await gone(Dict.fromName(dictName).len()), queue: await gone(Queue.fromName(queueName).len()) }
})
`

interface Remote<A extends unknown[], R> {
  remote(...args: A): Promise<R>
}
interface Fns {
  read: Remote<[string, string], unknown>
  write: Remote<[string, string, unknown], void>
  take: Remote<[string], unknown>
  give: Remote<[string, unknown], void>
  inside: Remote<[], unknown>
}

/** A user's project whose app.ts is APP. */
function project(t: any, prefix: string): string {
  const dir = userProject(prefix, (d) => writeFileSync(join(d, 'app.ts'), APP))
  removedAtEnd(t, dir)
  return dir
}

async function lifecycle(t: any, fns: Fns, opts: { server?: string }) {
  // A dict: there from the start, shared with containers by name, gone after.
  let dictName = ''
  const result = await Dict.ephemeral(opts, async (d) => {
    dictName = d.name
    t.regex(d.name, /^ephemeral-[0-9a-f-]{36}$/)
    t.is(await Dict.fromName(d.name, opts).len(), 0, 'it exists before anything is put')
    await d.put('a', { n: 1 })
    t.deepEqual(await fns.read.remote(d.name, 'a'), { n: 1 }, 'a container reads what the block put')
    await fns.write.remote(d.name, 'b', [2])
    t.deepEqual(await d.get('b'), [2], 'the block reads what a container put')
    return 'the result'
  })
  t.is(result, 'the result', 'resolves to what the block returned')
  await t.throwsAsync(Dict.fromName(dictName, opts).len(), { instanceOf: NotFoundError, message: /no dict named 'ephemeral-/ })
  t.false(await Dict.delete(dictName, opts), 'already deleted')

  // Deleted when the block throws too; the block's error is what the caller gets.
  let thrown = ''
  await t.throwsAsync(
    Dict.ephemeral(opts, async (d) => {
      thrown = d.name
      await d.put('x', 1)
      throw new RangeError('the block failed')
    }),
    { instanceOf: RangeError, message: 'the block failed' },
  )
  await t.throwsAsync(Dict.fromName(thrown, opts).get('x'), { instanceOf: NotFoundError })

  // Two at once are apart.
  await Dict.ephemeral(opts, async (a) =>
    Dict.ephemeral(opts, async (b) => {
      t.not(a.name, b.name)
      await a.put('k', 'a')
      t.is(await b.get('k'), undefined)
    }),
  )

  // A queue, the same way.
  const queueName = await Queue.ephemeral<string, string>(opts, async (q) => {
    t.regex(q.name, /^ephemeral-/)
    t.is(await Queue.fromName(q.name, opts).len(), 0, 'it exists before anything is put')
    await q.put('from the block')
    t.is(await fns.take.remote(q.name), 'from the block', "a container gets the block's item")
    await fns.give.remote(q.name, 'from a container')
    t.is(await q.get({ timeout: 10 }), 'from a container', "the block gets a container's item")
    return q.name
  })
  await t.throwsAsync(Queue.fromName(queueName, opts).len(), { instanceOf: NotFoundError, message: /no queue named 'ephemeral-/ })
  let thrownQueue = ''
  await t.throwsAsync(
    Queue.ephemeral(opts, async (q) => {
      thrownQueue = q.name
      await q.put(1)
      throw new Error('the queue block failed')
    }),
    { message: 'the queue block failed' },
  )
  await t.throwsAsync(Queue.fromName(thrownQueue, opts).len(), { instanceOf: NotFoundError })

  // Made and deleted inside a container.
  t.deepEqual(await fns.inside.remote(), { got: 'v', item: 1, dict: 'NotFoundError', queue: 'NotFoundError' })
}

test('misuse: no block, or options that are not an object, is an InvalidError naming the call to make', async (t) => {
  await t.throwsAsync((Dict.ephemeral as any)(), { instanceOf: InvalidError, message: /pass the function that uses the dict: Dict\.ephemeral\(async \(d\)/ })
  await t.throwsAsync((Dict.ephemeral as any)({ server: 'http://127.0.0.1:1' }), { instanceOf: InvalidError, message: /pass the function/ })
  await t.throwsAsync((Dict.ephemeral as any)('http://127.0.0.1:1', async () => {}), { instanceOf: InvalidError, message: /the options come first, as an object/ })
  await t.throwsAsync((Queue.ephemeral as any)(async () => {}, {}), { instanceOf: InvalidError, message: /pass the function that uses the queue: Queue\.ephemeral/ })
  await t.throwsAsync((Queue.ephemeral as any)({}, async () => {}, 1), { instanceOf: InvalidError })
})

test.serial('embedded (app.run): an ephemeral dict or queue is shared with containers while the block runs, and deleted after', async (t) => {
  const dir = project(t, 'berth-ephemeral-embedded-')
  const mod = await import(join(dir, 'app.ts'))
  await (mod.app as App).run(async () => {
    await lifecycle(t, mod as Fns, {})
  })
})

test.serial('berth serve: an ephemeral dict or queue is held by the control plane while the block runs, and deleted after', async (t) => {
  const dir = project(t, 'berth-ephemeral-served-')
  const { server } = await npxServeListening(t, dir)
  App.lookup('ephemeral', { server })
  const fn = (name: string) => Function.fromName<(...args: any[]) => Promise<any>>('ephemeral', name)
  const fns: Fns = { read: fn('read'), write: fn('write'), take: fn('take'), give: fn('give'), inside: fn('inside') }
  await lifecycle(t, fns, { server })
})
