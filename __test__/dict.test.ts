// Dict (README "Dict"): a named key-value map shared by every container and caller, held by the
// control plane under `npx berth serve` and with process containers, and by the process while
// an app runs embedded. Each mode: every operation, values as copies, writers in 4 containers
// at once lose nothing, and bad input is refused saying why.
import test from 'ava'
import { App, Dict, Function, InvalidError, KeyError, NotFoundError, SerializationError } from 'berth'

import { berth } from './_cli.ts'
import { fixtureProject, npxServeListening, removedAtEnd } from './_project.ts'

/** Every operation on a fresh dict `name`, from wherever `opts` points. */
async function everyOperation(t: any, name: string, opts: { server?: string } = {}) {
  await t.throwsAsync(Dict.fromName(name, opts).len(), { instanceOf: NotFoundError, message: /createIfMissing: true/ })
  const d = Dict.fromName<unknown>(name, { ...opts, createIfMissing: true })
  t.is(await d.len(), 0)
  t.is(await d.get('a'), undefined)
  t.is(await d.get('a', 'fallback'), 'fallback')
  const value = { list: [1, 2, 3], when: new Date(0), big: 12345678901234567890n, nested: { m: new Map([['k', 1]]) } }
  t.true(await d.put('a', value))
  value.list.push(4) // stored as it was when put
  t.deepEqual(await d.get('a'), { list: [1, 2, 3], when: new Date(0), big: 12345678901234567890n, nested: { m: new Map([['k', 1]]) } })
  t.false(await d.put('a', 'other', { skipIfExists: true }), 'not replaced')
  t.true(await d.contains('a'))
  t.false(await d.contains('b'))
  await d.put(1, 'one')
  await d.put(1.0, 'one again') // the same key as 1
  await d.put(true, 'yes')
  await d.put(7n, 'seven')
  t.is(await d.get(1), 'one again')
  await d.update({ x: 10, y: 20 })
  await d.update(new Map<string, number>([['z', 30]]))
  t.is(await d.len(), 7)
  t.deepEqual((await d.keys()).map(String).sort(), ['1', '7', 'a', 'true', 'x', 'y', 'z'])
  t.deepEqual(new Map(await d.items()).get('y'), 20)
  t.true((await d.values()).includes(30))
  t.is(await d.pop('x'), 10)
  t.is(await d.pop('x', 'gone'), 'gone')
  await t.throwsAsync(d.pop('x'), { instanceOf: KeyError, message: /no key 'x'/ })
  // Bad input, refused before anything is sent.
  await t.throwsAsync(d.put({} as never, 1), { instanceOf: InvalidError, message: /a dict key is a string, a finite number, a boolean or a bigint/ })
  await t.throwsAsync(d.get(Number.NaN), { instanceOf: InvalidError })
  await t.throwsAsync(d.put('f', () => 1), { instanceOf: SerializationError })
  t.throws(() => Dict.fromName('no spaces please'), { instanceOf: InvalidError, message: /1 to 128 letters/ })
  await d.clear()
  t.is(await d.len(), 0)
  t.true(await Dict.delete(name, opts))
  t.false(await Dict.delete(name, opts))
}

test.serial('embedded (app.run): every operation, in this process', async (t) => {
  const app = new App(`dict-embedded-${process.pid}`)
  const writer = app.function({ maxContainers: 4 }, async function writer(name: string, w: number) {
    const d = Dict.fromName(name, { createIfMissing: true })
    for (let j = 0; j < 50; j++) await d.put(`w${w}-${j}`, w)
  })
  await app.run(async () => {
    await everyOperation(t, `embedded-${process.pid}`)
    const name = `writers-${process.pid}`
    await Promise.all([0, 1, 2, 3].map((w) => writer.remote(name, w)))
    t.is(await Dict.fromName(name).len(), 200, 'writers in 4 containers lose nothing')
  })
})

test.serial('berth serve: a dict is shared by containers and callers, every operation over gRPC; writers in 4 containers lose nothing', async (t) => {
  const dir = fixtureProject('berth-dict-', 'dicts.ts')
  const { server } = await npxServeListening(t, dir)
  await everyOperation(t, `served-${process.pid}`, { server })

  App.lookup('dicts', { server })
  const fill = Function.fromName<(name: string, w: number, n: number) => Promise<number>>('dicts', 'fill')
  const name = `fill-${process.pid}`
  const pids = await Promise.all([0, 1, 2, 3].map((w) => fill.remote(name, w, 100)))
  t.is(new Set(pids).size, 4, 'four containers wrote at once')
  const d = Dict.fromName<{ worker: number; j: number }>(name, { server })
  t.is(await d.len(), 400, 'no write lost')
  t.like(await d.get('w3-99'), { worker: 3, j: 99 })
  await Dict.fromName(name, { server }).put('from-caller', 'hello')
  const peek = Function.fromName<(name: string, key: string) => Promise<unknown>>('dicts', 'peek')
  t.is(await peek.remote(name, 'from-caller'), 'hello', 'a container reads what a caller put')

  // The CLI, as a user inspects a running server's dicts (BERTH_SERVER).
  const env = { BERTH_SERVER: server }
  const cli = `cli-${process.pid}`
  t.is((await berth(['dict', 'put', cli, 'k', '{"a":[1,2]}'], env, { npx: true, cwd: dir })).code, 0)
  t.is((await berth(['dict', 'put', cli, 'text', 'plain words'], env, { npx: true, cwd: dir })).code, 0)
  t.deepEqual(await Dict.fromName(cli, { server }).get('k'), { a: [1, 2] }, 'what the CLI put, parsed as JSON')
  const got = await berth(['dict', 'get', cli, 'text'], env, { npx: true, cwd: dir })
  t.is(got.stdout.trim(), '"plain words"')
  const items = await berth(['dict', 'items', cli], env, { npx: true, cwd: dir })
  t.deepEqual(items.stdout.trim().split('\n').map((l) => JSON.parse(l)).sort((a, b) => a.key.localeCompare(b.key)), [
    { key: 'k', value: { a: [1, 2] } },
    { key: 'text', value: 'plain words' },
  ])
  t.is((await berth(['dict', 'len', cli], env, { npx: true, cwd: dir })).stdout.trim(), '2')
  const missing = await berth(['dict', 'get', cli, 'nope'], env, { npx: true, cwd: dir })
  t.is(missing.code, 1)
  t.regex(missing.stderr, /has no key 'nope'/)
  t.is((await berth(['dict', 'clear', cli], env, { npx: true, cwd: dir })).code, 0)
  t.is(await Dict.fromName(cli, { server }).len(), 0)
  const absent = await berth(['dict', 'len', 'never-made'], env, { npx: true, cwd: dir })
  t.is(absent.code, 1)
  t.regex(absent.stderr, /no dict named 'never-made': create it with Dict.fromName/)
})

test.serial('berth serve --token: containers reach dicts and queues over their data socket with their own credentials; errors as over gRPC', async (t) => {
  // The container is not given the server's token: its data socket says hello with the
  // container's own id and token (src/data/socket.ts, crates/berth-server/src/datasock.rs).
  const dir = fixtureProject('berth-dict-socket-', 'dicts.ts')
  const token = `secret-${process.pid}`
  const { server } = await npxServeListening(t, dir, ['--token', token, '--max-message-bytes', '100000'])
  App.lookup('dicts', { server, token })
  const overSocket = Function.fromName<(name: string, big: number) => Promise<{ seen: string[]; socket: boolean }>>('dicts', 'overSocket')
  const name = `socket-${process.pid}`
  const { seen, socket } = await overSocket.remote(name, 300_000)
  t.true(socket, 'the container was given the data socket')
  t.regex(seen[0], /^big: InvalidError: the request is \d+ bytes, over the server's message cap of 100000/, 'refused, naming the cap')
  t.deepEqual(seen.slice(1), [
    'small: 1',
    `absent: NotFoundError: no dict named '${name}-absent': create it with Dict.fromName('${name}-absent', { createIfMissing: true })`,
    'meanwhile: stored',
    'queue: released',
  ], 'the connection goes on after a refusal; a blocked get holds up nothing asked after it')
  const d = Dict.fromName(name, { server, token })
  t.deepEqual((await d.keys()).sort(), ['meanwhile', 'small'], 'what the container stored, seen by a caller over gRPC')
})

test.serial('npx berth run --containers process: the run\'s control plane holds the dict for the entrypoint and the containers', async (t) => {
  const dir = fixtureProject('berth-dict-run-', 'dicts.ts')
  removedAtEnd(t, dir)
  for (const containers of ['process', 'embedded']) {
    const { code, stdout, stderr } = await berth(['run', 'app.ts', '--containers', containers], {}, { npx: true, cwd: dir })
    const out = stdout + stderr
    t.is(code, 0, out)
    const r = JSON.parse(out.trim().split('\n').pop()!)
    t.is(r.len, 201, `${containers}: 4 x 50 from the containers and 1 from the entrypoint`)
    t.deepEqual(r.peeked, [1, 'two'], `${containers}: a container reads what the entrypoint put`)
    if (containers === 'process') t.true(r.containers >= 2, `${r.containers} container processes wrote at once`)
  }
})
