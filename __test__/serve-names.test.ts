// What `berth serve` tells a caller about what it serves (README "CLI"):
// the banner lists each endpoint, GET /<app> lists them as JSON, an unknown app or function is
// answered with what exists; and callers in another process find the server without
// BERTH_SERVER (the default http://127.0.0.1:7450) and read a spawned call by its id. Through
// real clients: fetch, @grpc/grpc-js, and berth's own client in a separate process.
import test from 'ava'
import grpc from '@grpc/grpc-js'

import { berth, lines } from './_cli.ts'
import { Functions, cbor, deadline, serve, stopsCleanly, type Served } from './_served.ts'
import { until } from './_util.ts'

const caller = '__test__/fixtures/remote-caller.ts'

function grpcCall(client: any, rpc: string, request: object): Promise<any> {
  return new Promise((resolve, reject) => client[rpc](request, deadline(), (e: unknown, r: unknown) => (e ? reject(e) : resolve(r))))
}

/** `berth serve first-hour.ts` and a plain gRPC client, both ended with the test. */
async function served(t: any, extra: string[] = [], fixture = 'first-hour.ts'): Promise<{ s: Served; client: any }> {
  const s = await serve(extra, {}, fixture)
  t.teardown(() => s.child.kill('SIGKILL'))
  const client = new Functions(s.address, grpc.credentials.createInsecure())
  t.teardown(() => client.close())
  return { s, client }
}

/** The JSON lines a remote-caller.ts run printed, by step. */
function steps(stdout: string): Record<string, any> {
  return Object.fromEntries(lines(stdout).map((l) => JSON.parse(l)).map((o) => [o.step, o.error ? { error: o.error } : o.value]))
}

test.serial('the banner lists each function and class method with its gRPC FunctionRef and HTTP path; GET /<app> lists them as JSON', async (t) => {
  const { s } = await served(t)
  await until(() => s.stdout().includes('Model.lengths'), 10_000, 'the endpoint lines')
  const banner = lines(s.stdout()).filter((l) => l.startsWith('  '))
  t.deepEqual(banner.map((l) => l.split(/\s{2,}/).filter(Boolean)), [
    ['add', "gRPC {app: 'firsthour', function: 'add'}", 'POST /firsthour/add'],
    ['slow', "gRPC {app: 'firsthour', function: 'slow'}", 'POST /firsthour/slow'],
    ['Model.info', "gRPC {app: 'firsthour', function: 'Model', method: 'info'}", 'POST /firsthour/Model/info'],
    ['Model.lengths', "gRPC {app: 'firsthour', function: 'Model', method: 'lengths'}", 'POST /firsthour/Model/lengths'],
  ])

  const listing = await fetch(`http://${s.http}/firsthour`)
  t.is(listing.status, 200)
  const body = (await listing.json()) as any
  t.is(body.app, 'firsthour')
  t.deepEqual(body.functions, [
    { function: 'add', path: '/firsthour/add' },
    { function: 'slow', path: '/firsthour/slow' },
    { function: 'Model', method: 'info', path: '/firsthour/Model/info' },
    { function: 'Model', method: 'lengths', path: '/firsthour/Model/lengths' },
  ])
  t.regex(body.call, /POST a path with a JSON array of arguments/)
  // What the listing names answers.
  const add = await fetch(`http://${s.http}${body.functions[0].path}`, { method: 'POST', body: '[1]' })
  t.is(await add.json(), 11)
  const info = await fetch(`http://${s.http}${body.functions[2].path}`, { method: 'POST', body: '{"args":["hi"],"params":{"variant":"large"}}' })
  t.is(await info.json(), 'hi large')
  // GET / lists every app; a trailing slash is the same path.
  const all = (await (await fetch(`http://${s.http}/`)).json()) as any
  t.deepEqual(all.apps.map((a: any) => a.app), ['firsthour'])
  t.deepEqual(await (await fetch(`http://${s.http}/firsthour/`)).json(), body)
  await stopsCleanly(t, s)
})

test.serial('an app or function not served is answered with what is, and the name meant when it is close (gRPC and HTTP)', async (t) => {
  const { s, client } = await served(t)
  const http = await fetch(`http://${s.http}/firsthour2`)
  t.is(http.status, 404)
  const want = "no app named 'firsthour2' is served here (perhaps you mean 'firsthour'); served: firsthour"
  t.is(((await http.json()) as any).error.message, want)
  const post = await fetch(`http://${s.http}/firsthour2/add`, { method: 'POST', body: '[1]' })
  t.is(post.status, 404)
  t.is(((await post.json()) as any).error.message, want)

  const args = cbor.encode([1])
  const app = await grpcCall(client, 'Invoke', { function: { app: 'firsthour2', function: 'add' }, args }).catch((e) => e)
  t.is(app.code, grpc.status.NOT_FOUND)
  t.is(app.details, want)
  const other = await grpcCall(client, 'Invoke', { function: { app: 'billing', function: 'add' }, args }).catch((e) => e)
  t.is(other.details, "no app named 'billing' is served here; served: firsthour")
  const fn = await grpcCall(client, 'Invoke', { function: { app: 'firsthour', function: 'ad' }, args }).catch((e) => e)
  t.is(fn.code, grpc.status.NOT_FOUND)
  t.is(fn.details, "app 'firsthour' has no function or class 'ad' (perhaps you mean 'add'); it has: add, slow, Model")
  const method = await grpcCall(client, 'Invoke', { function: { app: 'firsthour', function: 'Model', method: 'infos' }, args }).catch((e) => e)
  t.is(method.details, "class 'Model' has no method 'infos' (perhaps you mean 'info'); its methods: info, lengths")
  await stopsCleanly(t, s)
})

test.serial("a big app's banner stays short and points at GET /<app>, which lists everything", async (t) => {
  const { s } = await served(t, [], 'many-functions.ts')
  await until(() => s.stdout().includes('more: GET'), 10_000, 'the banner')
  const banner = lines(s.stdout()).filter((l) => l.startsWith('  '))
  t.is(banner.length, 20)
  t.is(banner[19], `  … and 11 more: GET http://${s.http}/many lists them all`)
  const body = (await (await fetch(`http://${s.http}/many`)).json()) as any
  t.is(body.functions.length, 30)
  await stopsCleanly(t, s)
})

test.serial('FunctionCall.fromId from another process: get() and get({ timeout }), cancel(), an unknown id', async (t) => {
  const { s, client } = await served(t)
  const spawn = async (fn: string, args: unknown[]) => (await grpcCall(client, 'Spawn', { function: { app: 'firsthour', function: fn }, args: cbor.encode(args) })).functionCallId
  const done = await spawn('add', [1])
  const slow = await spawn('slow', [60_000])
  const r = await berth([caller, 'from-id', done, slow], { BERTH_SERVER: `http://${s.address}` }, { node: true })
  t.is(r.code, 0, r.stderr)
  const got = steps(r.stdout)
  t.is(got.done, 11)
  t.is(got['slow, 0.3 s'].error.name, 'FunctionTimeoutError')
  t.is(got.cancel, null)
  t.is(got['slow, after cancel'].error.name, 'InputCancelledError')
  t.is(got.unknown.error.name, 'InvalidError')
  t.regex(got.unknown.error.message, new RegExp(`^FunctionCall\\.fromId\\('fc-999999'\\): not a call of this process, and the server at http://${s.address} says: no spawned call`))
  // The other process took the result: the server delivers it once.
  const again = await grpcCall(client, 'GetResult', { functionCallId: done, timeout: 0 }).catch((e) => e)
  t.is(again.code, grpc.status.NOT_FOUND)
  await stopsCleanly(t, s)
})

test.serial('callers need no BERTH_SERVER: they find `berth serve` at http://127.0.0.1:7450, and are told so when nothing answers there', async (t) => {
  const noEnv = { BERTH_SERVER: undefined, BERTH_TOKEN: undefined }
  const before = steps((await berth([caller, 'call'], noEnv, { node: true })).stdout)
  t.is(before.add.error.name, 'InvalidError')
  t.regex(before.add.error.message, /no berth server answers at http:\/\/127\.0\.0\.1:7450 \(the default when BERTH_SERVER is unset\): start one with `npx berth serve app\.ts`, or point BERTH_SERVER=/)

  const { s, client } = await served(t, ['--grpc-port', '7450'])
  t.is(s.address, '127.0.0.1:7450')
  const call = await berth([caller, 'call'], noEnv, { node: true })
  t.is(call.code, 0, call.stderr)
  // cancel() on a call that has its result does nothing (it used to reject, unhandled: the
  // server no longer knows a delivered call).
  t.deepEqual(steps(call.stdout), { add: 11, spawned: 12, 'cancel after get': null })
  const { functionCallId } = await grpcCall(client, 'Spawn', { function: { app: 'firsthour', function: 'add' }, args: cbor.encode([5]) })
  const r = await berth([caller, 'get', functionCallId], noEnv, { node: true })
  t.is(r.code, 0, r.stderr)
  t.deepEqual(steps(r.stdout), { [functionCallId]: 15 })
  await stopsCleanly(t, s)
})
