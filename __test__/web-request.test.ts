// The Request a web app (@fetchApp) and a web endpoint get (README "API", web apps and web
// endpoints), through fetch against `npx berth serve`: its body read as text, JSON, bytes or a
// stream, once (a second read fails as Node's Request's does), cloned, and made into a new
// Request (as a proxy does) with its method, headers and body; a URL Node normalises is
// normalised. The Responses a web app makes behave as Node's, whether they are made from a
// string, bytes, nothing or a stream, read, cloned or changed before they are returned.
import test from 'ava'

import { serve, type Served } from './_served.ts'

async function served(t: any): Promise<Served> {
  const s = await serve([], {}, 'web-request.ts')
  t.teardown(() => s.child.kill('SIGKILL'))
  return s
}

test('a web app reads its Request every way, once, and can make another from it; a web endpoint reads its own', async (t) => {
  const s = await served(t)
  const base = `http://${s.http}/webreq`
  const post = (path: string, body: string, headers: Record<string, string> = {}) => fetch(`${base}/app${path}`, { method: 'POST', body, headers })

  const forward = await post('/forward', 'hello', { 'x-a': 'one' })
  t.is(forward.status, 200)
  t.deepEqual(await forward.json(), { isRequest: true, method: 'POST', header: 'one', body: 'hello', url: `http://${s.http}/forward` })

  const twice = await (await post('/twice', '{"n":[1,2]}', { 'content-type': 'application/json' })).json()
  t.deepEqual(twice, { first: { n: [1, 2] }, used: true, again: 'TypeError', cache: 'default', signal: true })

  const streamed = await (await post('/stream', 'x'.repeat(70_000))).json()
  t.deepEqual(streamed, { streamed: 70_000, clone: 'x'.repeat(70_000), used: true })

  const bytes = await (await post('/bytes', 'abc', { 'content-type': 'text/plain' })).json()
  t.deepEqual(bytes, { method: 'POST', length: 3, type: 'text/plain', url: `http://${s.http}/bytes` })
  // A GET has no body; a path with dot segments is normalised, as Node's Request does.
  const get = await (await fetch(`${base}/app/a/%2E%2E/b?q=1`)).json()
  t.deepEqual(get, { method: 'GET', length: 0, type: null, url: `http://${s.http}/b?q=1` })

  const raw = await fetch(`${base}/raw?z=1`, { method: 'PUT', body: 'plain words', headers: { 'x-b': 'two', 'content-type': 'text/plain' } })
  t.deepEqual(await raw.json(), { text: 'plain words', method: 'PUT', url: `http://${s.http}/webreq/raw?z=1`, header: 'two' })
})

test("a web app's Responses behave as Node's: made, read, cloned, subclassed, refused; headers set late, bytes copied, no body, a stream", async (t) => {
  const s = await served(t)
  const get = (kind: string) => fetch(`http://${s.http}/webreq/app/resp/${kind}`)

  t.deepEqual(await (await get('kinds')).json(), {
    instance: true,
    status: [201, true, '', 'default', 'text/plain;charset=UTF-8', '1'],
    text: 'abc',
    used: [false, 'abc', true, 'TypeError'],
    stream: 'streamed',
    json: { n: 1 },
    bytes: [7, 8],
    noBody: [204, null],
    errors: ['TypeError', 'RangeError', 'TypeError'],
    subclass: [true, true, true, 'm'],
    error: 'error',
    redirect: 'http://example.com/',
  })

  const late = await get('late-header')
  t.is(await late.text(), 'late')
  t.deepEqual([late.headers.get('x-a'), late.headers.get('x-late'), late.headers.get('content-type')], ['1', '2', 'text/plain;charset=UTF-8'])

  const bytes = await get('bytes')
  t.is(bytes.status, 202)
  t.deepEqual([...new Uint8Array(await bytes.arrayBuffer())], [1, 2, 3])

  const none = await get('no-content')
  t.deepEqual([none.status, none.headers.get('x-empty'), await none.text()], [204, 'yes', ''])

  const made = await get('status-text')
  t.deepEqual([made.status, await made.text()], [201, 'made'])

  t.is(await (await get('stream')).text(), 'one two three')
})
