// Web endpoints (README "API", web endpoints) against `npx berth serve`, through fetch: a class
// whose @enter loads before the first request, JSON in and out, a query, a Response passed
// through, requiresAuth, wrong method, unknown path, malformed JSON, timeout.
import { existsSync, readFileSync } from 'node:fs'
import test from 'ava'

import { berth, lines } from './_cli.ts'
import { serve, stopsCleanly, type Served } from './_served.ts'
import { until } from './_util.ts'

async function served(t: any, extra: string[] = []): Promise<Served> {
  const s = await serve(extra, {}, 'web.ts')
  t.teardown(() => s.child.kill('SIGKILL'))
  return s
}

const post = (url: string, body: string, headers: Record<string, string> = {}, signal?: AbortSignal) =>
  fetch(url, { method: 'POST', body, headers: { 'content-type': 'application/json', ...headers }, signal })

test.serial('a @webEndpoint answers JSON with what @enter loaded; GET gets the query; a Response passes through; the banner prints each URL', async (t) => {
  const s = await served(t)
  const base = `http://${s.http}/shop`
  await until(() => s.stdout().includes('Model.info'), 10_000, 'the banner')
  const banner = lines(s.stdout()).filter((l) => l.startsWith('  ')).map((l) => l.split(/\s{2,}/).filter(Boolean))
  t.deepEqual(banner.find((r) => r[0] === 'Model.predict'), [
    'Model.predict',
    "gRPC {app: 'shop', function: 'Model', method: 'predict'}",
    `POST ${base}/Model/predict`,
    'web endpoint',
  ])
  t.deepEqual(banner.find((r) => r[0] === 'Model.search')?.[2], `GET ${base}/search`)
  t.deepEqual(banner.find((r) => r[0] === 'Model.secret')?.slice(2), [`POST ${base}/secret`, 'web endpoint, token required'])
  t.deepEqual(banner.find((r) => r[0] === 'echo')?.[2], `DELETE ${base}/echo`)
  t.deepEqual(banner.find((r) => r[0] === 'square')?.[2], 'POST /shop/square')

  const predict = await post(`${base}/Model/predict`, '{"text":"hi"}')
  t.is(predict.status, 200)
  t.regex(predict.headers.get('content-type') ?? '', /^application\/json/)
  t.deepEqual(await predict.json(), { label: 'hi:loaded' })

  const search = await fetch(`${base}/search?q=red+shoes&page=2&q=blue%20hats`)
  t.is(search.status, 200)
  t.deepEqual(await search.json(), { query: { q: 'blue hats', page: '2' }, weights: 'loaded' })

  const raw = await fetch(`${base}/raw`, { method: 'PUT', body: 'yz', headers: { 'content-type': 'text/plain' } })
  t.is(raw.status, 201)
  t.is(raw.headers.get('x-made-by'), 'berth')
  t.is(raw.headers.get('x-method'), 'PUT')
  t.is(await raw.text(), 'xyz')

  const echo = await fetch(`${base}/echo?id=42`, { method: 'DELETE' })
  t.deepEqual(await echo.json(), { deleted: '42' })
  // The RPC routes of the app still answer.
  t.is(await (await post(`${base}/square`, '[3]')).json(), 9)
  // GET /<app> lists each endpoint with its path and method.
  const listing = ((await (await fetch(base)).json()) as any).functions
  t.deepEqual(listing.find((f: any) => f.method === 'search'), {
    function: 'Model',
    method: 'search',
    path: '/shop/search',
    web: { method: 'GET', takes: 'the query', requiresAuth: false },
  })
  t.deepEqual(listing.find((f: any) => f.method === 'info'), { function: 'Model', method: 'info', path: '/shop/Model/info' })
  t.like(listing.find((f: any) => f.function === 'echo'), { path: '/shop/echo', web: { method: 'DELETE' } })
  await stopsCleanly(t, s)
})

test.serial('wrong method 405 with Allow, unknown path 404 naming the endpoints, malformed JSON 400, a body over the cap 413, a throw 500 not retried, timeout 504', async (t) => {
  const s = await served(t, ['--max-message-bytes', '100000'])
  const base = `http://${s.http}/shop`
  const wrong = await fetch(`${base}/search`, { method: 'POST', body: '{}' })
  t.is(wrong.status, 405)
  t.is(wrong.headers.get('allow'), 'GET')
  t.regex(((await wrong.json()) as any).error.message, /\/shop\/search answers GET only/)

  const unknown = await post(`${base}/nope`, '{}')
  t.is(unknown.status, 404)
  const message = ((await unknown.json()) as any).error.message
  t.regex(message, /no endpoint \/shop\/nope/)
  t.regex(message, /POST \/shop\/Model\/predict/)
  t.regex(message, /GET \/shop\/search/)

  const bad = await post(`${base}/Model/predict`, '{"text":')
  t.is(bad.status, 400)
  t.regex(((await bad.json()) as any).error.message, /the body is not valid JSON .*: send a JSON body/)

  const big = await post(`${base}/Model/predict`, JSON.stringify({ text: 'x'.repeat(200_000) }))
  t.is(big.status, 413)
  t.regex(((await big.json()) as any).error.message, /over this server's limit of 100000 bytes/)

  const flaky = await post(`${base}/flaky`, '')
  t.is(flaky.status, 500)
  t.like(((await flaky.json()) as any).error, { name: 'RangeError', message: 'flaky failed' })
  t.is(readFileSync(s.marker, 'utf8').match(/flaky attempt/g)?.length, 1, 'not retried, though the class has retries: 2')

  const late = await post(`${base}/sleep`, '5000')
  t.is(late.status, 504)
  const err = ((await late.json()) as any).error
  t.is(err.name, 'FunctionTimeoutError')
  t.regex(err.message, /Model\.sleep/)
  await stopsCleanly(t, s)
})

test.serial('requiresAuth: 401 without the token, 200 with it; other endpoints stay public', async (t) => {
  const s = await served(t, ['--token', 's3cret'])
  const base = `http://${s.http}/shop`
  const none = await post(`${base}/secret`, '')
  t.is(none.status, 401)
  t.is(none.headers.get('www-authenticate'), 'Bearer')
  const wrong = await post(`${base}/secret`, '', { authorization: 'Bearer nope' })
  t.is(wrong.status, 401)
  const ok = await post(`${base}/secret`, '', { authorization: 'Bearer s3cret' })
  t.is(ok.status, 200)
  t.is(await ok.json(), 'classified')
  t.deepEqual(await (await post(`${base}/Model/predict`, '{"text":"a"}')).json(), { label: 'a:loaded' })
  // The RPC routes keep the server's token rule.
  t.is((await post(`${base}/square`, '[3]')).status, 401)
  await stopsCleanly(t, s)
})

test.serial('a client that goes away cancels its request: the input signal aborts', async (t) => {
  const s = await served(t)
  const gone = new AbortController()
  const pending = post(`http://${s.http}/shop/hang`, '', {}, gone.signal).catch((e) => e)
  void pending
  await until(() => existsSync(s.marker) && readFileSync(s.marker, 'utf8').includes('started'), 10_000, 'the request to start')
  gone.abort()
  await until(() => readFileSync(s.marker, 'utf8').includes('aborted'), 10_000, 'the abort')
  t.regex(readFileSync(s.marker, 'utf8'), /aborted: InputCancelledError/)
  await stopsCleanly(t, s)
})

test.serial('berth run prints each web endpoint URL while it runs (process containers serve them on a free HTTP port)', async (t) => {
  const r = await berth(['run', '__test__/fixtures/web.ts::square', '--', '7'])
  t.is(r.code, 0, r.stderr)
  t.regex(r.stdout, /49/)
  t.regex(r.stderr, /berth: web endpoints while this runs:\n/)
  t.regex(r.stderr, /Model\.predict\s+gRPC .*\s+POST http:\/\/127\.0\.0\.1:\d+\/shop\/Model\/predict\s+web endpoint\n/)
  t.regex(r.stderr, /echo\s+gRPC .*\s+DELETE http:\/\/127\.0\.0\.1:\d+\/shop\/echo\s+web endpoint\n/)
  t.notRegex(r.stderr, /\/shop\/square/)
})

test.serial('berth run --containers embedded says where web endpoints are served instead', async (t) => {
  const r = await berth(['run', '__test__/fixtures/web.ts::square', '--containers', 'embedded', '--', '7'])
  t.is(r.code, 0, r.stderr)
  t.regex(r.stderr, /web endpoints are served over HTTP with process containers \(the default\) or by berth serve/)
})
