// The Request a web app (@fetchApp) and a web endpoint get (README "API", web apps and web
// endpoints), through fetch against `npx berth serve`: its body read as text, JSON, bytes or a
// stream, once (a second read fails as Node's Request's does), cloned, and made into a new
// Request (as a proxy does) with its method, headers and body; a URL Node normalises is
// normalised.
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
