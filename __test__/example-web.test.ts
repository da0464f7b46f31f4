// examples/web.ts (README "A model behind a URL") against `berth serve`, through fetch: an ONNX
// model (onnxruntime-node) loaded in @enter, served by a @batched method that the web endpoint
// calls once per request, so concurrent requests share a session.run; the streaming route read
// event by event; MODEL_PATH and MODEL_LABELS; the local entrypoint under `berth run`.
// onnxruntime-node is the examples' own dependency (examples/web/package.json; `npm test` and
// .ci/run install it): without it these tests are skipped, saying so.
import { copyFileSync, existsSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import test from 'ava'

import { berth, root } from './_cli.ts'
import { serve, stopsCleanly, type Served } from './_served.ts'

const installed = existsSync(join(root, 'examples/web/node_modules/onnxruntime-node/package.json'))
if (!installed) {
  console.log('example-web.test.ts: skipped, examples/web/node_modules/onnxruntime-node is missing: run `npm --prefix examples/web install`')
}
const maybe = installed ? test.serial : test.skip

const EXAMPLE = '../../examples/web.ts' // serve() takes a path under __test__/fixtures
const LABELS = ['negative', 'neutral', 'positive']

/** The shipped model's answer from its weights (examples/web/model/make-model.ts): each sentiment word adds 3 to its label's logit, 'neutral' has a bias of 1. */
function answer(negative: number, positive: number) {
  const logits = [3 * negative, 1, 3 * positive]
  const e = logits.map((v) => Math.exp(v - Math.max(...logits)))
  const sum = e.reduce((a, b) => a + b, 0)
  return { label: LABELS[logits.indexOf(Math.max(...logits))], probabilities: Object.fromEntries(LABELS.map((l, i) => [l, e[i] / sum])) }
}
const KNOWN: [string, ReturnType<typeof answer>][] = [
  ['I love this, it is great', answer(0, 2)],
  ['What a terrible, boring film', answer(2, 0)],
  ['The train leaves at noon', answer(0, 0)],
  ['good but slow and bad', answer(2, 1)],
]

function close(t: any, got: Record<string, number>, want: Record<string, number>, what: string) {
  t.deepEqual(Object.keys(got), Object.keys(want), what)
  for (const k of Object.keys(want)) t.true(Math.abs(got[k] - want[k]) < 1e-5, `${what}: ${k} ${got[k]} ≠ ${want[k]}`)
}

const post = (url: string, body: unknown, headers: Record<string, string> = {}) =>
  fetch(url, { method: 'POST', body: JSON.stringify(body), headers: { 'content-type': 'application/json', ...headers } })

let s: Served
async function server(): Promise<Served> {
  return (s ??= await serve([], {}, EXAMPLE))
}
test.after.always(() => {
  if (s && s.child.exitCode === null) s.child.kill('SIGKILL')
})

maybe('POST /sentiment/classify: the weights\' answers, concurrent requests answered in shared batches', async (t) => {
  const { http } = await server()
  const texts = Array.from({ length: 48 }, (_, i) => KNOWN[i % KNOWN.length])
  const replies = await Promise.all(texts.map(([text]) => post(`http://${http}/sentiment/classify`, { text })))
  const sizes: number[] = []
  for (const [i, res] of replies.entries()) {
    t.is(res.status, 200)
    const body = (await res.json()) as { label: string; probabilities: Record<string, number>; batchSize: number }
    const [text, want] = texts[i]
    t.is(body.label, want.label, text)
    close(t, body.probabilities, want.probabilities, text)
    sizes.push(body.batchSize)
  }
  t.true(Math.max(...sizes) > 1, `48 requests at once ran in batches of ${sizes}`)
  t.true(Math.max(...sizes) <= 32, 'maxBatchSize is 32')
  // The container's own count: fewer session.runs than texts.
  const model = (await (await fetch(`http://${http}/sentiment/model`)).json()) as { batches: number; texts: number; labels: string[] }
  t.deepEqual(model.labels, LABELS)
  t.true(model.texts >= 48 && model.batches < model.texts, JSON.stringify(model))
})

maybe('POST /sentiment/classify without {"text"}: 400 naming the shape to send', async (t) => {
  const { http } = await server()
  const res = await post(`http://${http}/sentiment/classify`, { txt: 'hi' })
  t.is(res.status, 400)
  t.regex(((await res.json()) as { error: string }).error, /send a JSON object with a string "text", e\.g\. \{"text": "I love it"\}; got \{"txt":"hi"\}/)
})

maybe('the streaming route: one SSE event per word, each the prediction so far, read as they come; NDJSON without the Accept', async (t) => {
  const { http } = await server()
  const res = await post(`http://${http}/sentiment/stream`, { text: 'a good day' }, { accept: 'text/event-stream' })
  t.is(res.status, 200)
  t.regex(res.headers.get('content-type') ?? '', /^text\/event-stream/)
  const reader = res.body!.getReader()
  const decoder = new TextDecoder()
  let buffered = ''
  const next = async (): Promise<string | undefined> => {
    for (;;) {
      const at = buffered.indexOf('\n\n')
      if (at >= 0) {
        const event = buffered.slice(0, at)
        buffered = buffered.slice(at + 2)
        return event
      }
      const { done, value } = await reader.read()
      if (done) return undefined
      buffered += decoder.decode(value, { stream: true })
    }
  }
  const want = [
    { token: 'a', index: 0, ...answer(0, 0) },
    { token: 'good', index: 1, ...answer(0, 1) },
    { token: 'day', index: 2, ...answer(0, 1) },
  ]
  for (const w of want) {
    const event = await next()
    t.truthy(event, `event ${w.index}`)
    t.true(event!.startsWith('data: '), event)
    const item = JSON.parse(event!.slice('data: '.length))
    t.like(item, { token: w.token, index: w.index, label: w.label })
    close(t, item.probabilities, w.probabilities, w.token)
  }
  t.is(await next(), undefined, 'three words, three events')

  const nd = await post(`http://${http}/sentiment/stream`, { text: 'so boring' })
  t.is(nd.headers.get('content-type'), 'application/x-ndjson')
  const items = (await nd.text()).trim().split('\n').map((l) => JSON.parse(l))
  t.deepEqual(items.map((i) => [i.token, i.label]), [['so', 'neutral'], ['boring', 'negative']])
})

maybe('SIGTERM stops the served example cleanly', async (t) => {
  await stopsCleanly(t, await server())
})

maybe('MODEL_PATH serves another model file and MODEL_LABELS names its outputs; a label count that does not fit fails @enter naming the fix', async (t) => {
  const folder = mkdtempSync(join(tmpdir(), 'berth-model-'))
  t.teardown(() => rmSync(folder, { recursive: true, force: true }))
  const path = join(folder, 'mine.onnx')
  copyFileSync(join(root, 'examples/web/model/tiny-classifier.onnx'), path)
  const other = await serve([], { MODEL_PATH: path, MODEL_LABELS: 'sad, meh, glad' }, EXAMPLE)
  t.teardown(() => other.child.kill('SIGKILL'))
  const res = await post(`http://${other.http}/sentiment/classify`, { text: 'so happy' })
  t.like(await res.json(), { label: 'glad', batchSize: 1 })
  t.like(await (await fetch(`http://${other.http}/sentiment/model`)).json(), { path, labels: ['sad', 'meh', 'glad'] })
  await stopsCleanly(t, other)

  const wrong = await serve([], { MODEL_PATH: path, MODEL_LABELS: 'a,b' }, EXAMPLE)
  t.teardown(() => wrong.child.kill('SIGKILL'))
  const failed = await post(`http://${wrong.http}/sentiment/classify`, { text: 'hi' })
  t.is(failed.status, 503, "its container could not start")
  t.regex(JSON.stringify(await failed.json()), /has 3 columns but 2 labels are named \(a,b\); set MODEL_LABELS to 3 comma-separated names/)
  await stopsCleanly(t, wrong)
})

maybe('berth run examples/web.ts -- texts: the local entrypoint classifies them in one batch', async (t) => {
  const r = await berth(['run', 'examples/web.ts', '--', 'a good day', 'so boring'])
  t.is(r.code, 0, r.stderr)
  t.regex(r.stdout, /^positive .* \(batch of 2\) {2}a good day$/m)
  t.regex(r.stdout, /^negative .* \(batch of 2\) {2}so boring$/m)
})

maybe('behind berth serve --token, the endpoint stays public and its call to predict passes the token', async (t) => {
  const guarded = await serve(['--token', 'ex-token'], { BERTH_TOKEN: '' }, EXAMPLE)
  t.teardown(() => guarded.child.kill('SIGKILL'))
  const res = await post(`http://${guarded.http}/sentiment/classify`, { text: 'so sad' })
  t.is(res.status, 200)
  t.like(await res.json(), { label: 'negative' })
  t.is((await post(`http://${guarded.http}/sentiment/Classifier/predict`, ['so sad'])).status, 401, 'the RPC route still needs the token')
  await stopsCleanly(t, guarded)
})

maybe('the endpoint called as a function in embedded containers (berth run ::Classifier.classify --containers embedded) reaches predict', async (t) => {
  const r = await berth(['run', 'examples/web.ts::Classifier.classify', '--containers', 'embedded', '--', '{"text":"a good day"}'])
  t.is(r.code, 0, r.stderr)
  t.like(JSON.parse(r.stdout.trim().split('\n').at(-1)!), { label: 'positive', batchSize: 1 })
})
