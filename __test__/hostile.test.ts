// What an outside caller sends must not kill a container or wear the server down: `berth serve`
// with containers as processes, called with a plain gRPC client (not berth's) and fetch.
import test from 'ava'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import grpc from '@grpc/grpc-js'

import { Functions, cbor, deadline, serve, stopsCleanly, type Served } from './_served.ts'

/** Invoke with raw argument bytes, as a client with its own CBOR encoder sends them. */
function invokeRaw(client: any, fn: string, args: Buffer): Promise<any> {
  return new Promise((resolve, reject) =>
    client.Invoke({ function: { app: 'hostile', function: fn }, args }, deadline(), (e: unknown, r: unknown) => (e ? reject(e) : resolve(r))),
  )
}

const call = (client: any, fn: string, args: unknown[]) => invokeRaw(client, fn, Buffer.from(cbor.encode(args)))
const value = (r: any) => cbor.decode(r.result.value)

async function served(t: any, extra: string[] = []): Promise<[Served, any]> {
  const s = await serve(extra, {}, 'hostile.ts')
  t.teardown(() => s.child.kill('SIGKILL'))
  const client = new Functions(s.address, grpc.credentials.createInsecure())
  t.teardown(() => client.close())
  return [s, client]
}

test.serial('arguments a container cannot decode are INVALID_ARGUMENT, naming the problem; the container keeps serving', async (t) => {
  const [s, client] = await served(t)
  const [, pid] = value(await call(client, 'echo', [1]))
  // Each of these used to pass the server's check and kill the container (and, with retries,
  // one container after another): trailing bytes, tags cbor-x turns into shared references,
  // packed values or Error objects, a Set tag around a non-array, an indefinite-length string.
  const poison: [string, string, RegExp][] = [
    ['trailing bytes', '8103ffff', /2 byte\(s\) follow the end of the value/],
    ['tag 29', '81d81d00', /CBOR tag 29 is not one berth decodes/],
    ['tag 27', '81d81b820000', /CBOR tag 27/],
    ['tag 225', '81d8e100', /CBOR tag 225/],
    ['tag 258 around an integer', '81d9010201', /tag 258 \(Set\) must wrap an array/],
    ['an indefinite-length string', '815f4101ff', /indefinite-length string/],
    ['a map key that is an array', '81a1810102', /a map key is an array/],
  ]
  for (const [what, hex, says] of poison) {
    const e = await invokeRaw(client, 'echo', Buffer.from(hex, 'hex')).catch((e) => e)
    t.is(e.code, grpc.status.INVALID_ARGUMENT, `${what}: ${e.details}`)
    t.regex(e.details, /^args are not a value berth can pass to echo: /, what)
    t.regex(e.details, says, what)
  }
  // Nesting deeper than a container can decode is refused the same way.
  const deep = Buffer.from('81'.repeat(200) + '01', 'hex')
  t.regex((await invokeRaw(client, 'echo', deep).catch((e) => e)).details, /nested more than 128 levels/)
  const [v, after] = value(await call(client, 'echo', [2]))
  t.is(v, 2)
  t.is(after, pid, 'the same container process served before and after')
  t.notRegex(s.stdout(), /exited with|killed by signal/, 'no container died')
  await stopsCleanly(t, s)
})

test.serial('a call with the wrong number of arguments is refused with what the function takes', async (t) => {
  const [s, client] = await served(t)
  for (const args of [[], [1, 2, 3]]) {
    const e = await call(client, 'square', args).catch((e) => e)
    t.is(e.code, grpc.status.INVALID_ARGUMENT)
    t.is(e.details, `square takes exactly 1 argument; args hold ${args.length}`)
  }
  // A default makes a parameter optional; a rest parameter takes any number.
  t.is(value(await call(client, 'optional', [1])), 11)
  t.is(value(await call(client, 'optional', [1, 2])), 3)
  t.regex((await call(client, 'optional', [1, 2, 3]).catch((e) => e)).details, /optional takes 1 to 2 arguments; args hold 3/)
  t.is(value(await call(client, 'rest', [])), 0)
  t.is(value(await call(client, 'rest', [1, 2, 3, 4])), 4)
  const http = await fetch(`http://${s.http}/hostile/square`, { method: 'POST', body: '[]' })
  t.is(http.status, 400)
  t.deepEqual(await http.json(), { error: { name: 'InvalidArgument', message: 'square takes exactly 1 argument; the arguments hold 0' } })
  await stopsCleanly(t, s)
})

test.serial('one message cap on every hop: large arguments reach the container; a result over the cap fails its input alone', async (t) => {
  const [s, client] = await served(t, ['--max-message-bytes', String(8 << 20)])
  // Over the 4 MiB a gRPC client takes by default, under the server's cap.
  const [n, pid] = value(await call(client, 'size', [new Uint8Array(5 << 20)]))
  t.is(n, 5 << 20)
  const r = await call(client, 'zeros', [9 << 20])
  t.is(r.result.error.name, 'SerializationError')
  t.regex(r.result.error.message, /over the server's message limit of 8388608 bytes.*--max-message-bytes/)
  t.is(value(await call(client, 'zeros', [3])).length, 3)
  t.deepEqual(value(await call(client, 'size', [new Uint8Array(1)])), [1, pid], 'the same container serves on')
  t.notRegex(s.stdout(), /exited with|killed by signal|went away/, 'no container died')
  await stopsCleanly(t, s)
})

test.serial('a container whose event loop is blocked past its input\'s timeout is replaced and the input retried', async (t) => {
  const [s, client] = await served(t)
  const folder = mkdtempSync(join(tmpdir(), 'berth-hang-'))
  t.teardown(() => rmSync(folder, { recursive: true, force: true }))
  const marker = join(folder, 'hung')
  // The first attempt blocks its container for 60 s; with one container, nothing else could run.
  const started = Date.now()
  const r = await call(client, 'hang', [marker])
  t.falsy(r.result.error, `the retry answered: ${JSON.stringify(r.result.error)}\n${s.stdout()}`)
  const pid = value(r)
  const hungPid = Number(readFileSync(marker, 'utf8'))
  t.not(pid, hungPid, 'the retry ran on a new container')
  t.true(Date.now() - started < 30_000, 'long before the blocked call would have returned')
  t.regex(s.stdout(), /container \d+ stopped answering .* while input in-\d+ ran past its timeout: replacing it/)
  t.throws(() => process.kill(hungPid, 0), undefined, 'the blocked process was killed')
  await stopsCleanly(t, s)
})

test.serial('isLocal() is false inside a container process; after SIGTERM the server exits last', async (t) => {
  const [s, client] = await served(t)
  t.is(value(await call(client, 'where', [])), false)
  const [, pid] = value(await call(client, 'echo', [1]))
  await stopsCleanly(t, s)
  t.throws(() => process.kill(pid, 0), undefined, 'the container process is gone by the time berth serve has exited')
})
