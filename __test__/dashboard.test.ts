// The dashboard (README "Dashboard") as a user sees it: Debian's chromium, driven by
// playwright-core, opens GET /dashboard of a `berth serve` with a token, a workload runs, and
// the page's numbers change and match GET /metrics; a click on a function shows its containers
// and its batches; failures show with their stacks; a screenshot is kept
// (__test__/output/dashboard.png). Skipped, saying why, without /usr/bin/chromium
// (`apt-get install chromium`; .ci/run installs it).
import test from 'ava'
import { existsSync, mkdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'

import { root, serve, stopsCleanly } from './_served.ts'
import { sleep, until, within } from './_util.ts'

const CHROMIUM = '/usr/bin/chromium'
const TOKEN = 'sesame'

/** The value of `name`'s one sample whose labels include `labels`, read from the exposition text. */
function sample(text: string, name: string, labels: Record<string, string>): number {
  const found = text.split('\n').filter((line) => {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line)
    return m !== null && m[1] === name && Object.entries(labels).every(([k, v]) => (m[2] ?? '').includes(`${k}="${v}"`))
  })
  if (found.length !== 1) throw new Error(`${name} ${JSON.stringify(labels)}: ${found.length} samples`)
  return Number(found[0].split(' ').pop())
}

const metrics = async (http: string) => (await fetch(`http://${http}/metrics`, { headers: { authorization: `Bearer ${TOKEN}` } })).text()

if (!existsSync(CHROMIUM)) {
  test('dashboard: skipped without chromium', (t) => {
    t.log(`skipped: no ${CHROMIUM} (apt-get install chromium)`)
    t.pass()
  })
} else {
  test.serial('the dashboard in a browser: live numbers that match /metrics, a function\'s containers and batches, recent errors with stacks, the token', async (t) => {
    t.timeout(180_000)
    const { chromium } = await import('playwright-core')
    const { App, Cls, Function } = await import('berth')
    const s = await serve(['--token', TOKEN], {}, 'metrics.ts')
    t.teardown(() => s.child.kill('SIGKILL'))
    await until(() => /berth: dashboard at http:\/\/127\.0\.0\.1:\d+\/dashboard\?token=<token>/.test(s.stdout()), 10_000, () => `berth serve to say where the dashboard is:\n${s.stdout()}`)

    // The token: without it, neither the page nor its events.
    t.is((await fetch(`http://${s.http}/dashboard`)).status, 401)
    t.is((await fetch(`http://${s.http}/dashboard/events`)).status, 401)
    t.is((await fetch(`http://${s.http}/dashboard?token=wrong`)).status, 401)

    const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--disable-gpu'] })
    t.teardown(() => browser.close())
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } })
    await page.goto(`http://${s.http}/dashboard?token=${TOKEN}`)
    await page.locator('#status', { hasText: 'live' }).waitFor({ timeout: 30_000 })
    const flakyRow = page.locator('tr[data-fn="metered/flaky/flaky"]')
    await flakyRow.waitFor({ timeout: 30_000 })
    t.is(await flakyRow.locator('td.ok').textContent(), '0', 'listed before any call, at zero')

    // A workload: 12 answers, 2 failures (each after a retry), 8 inputs in batches of 4.
    App.lookup('metered', { server: `http://${s.address}`, token: TOKEN })
    const flaky = Function.fromName<(x: number) => Promise<number>>('metered', 'flaky')
    const settled = await within(60_000, Promise.allSettled([...Array.from({ length: 12 }, (_, i) => i), -1, -2].map((x) => flaky.remote(x))), 'the calls')
    t.is(settled.filter((r) => r.status === 'rejected').length, 2)
    const embedder = Cls.fromName<{ embed(x: number): Promise<number> }>('metered', 'Embedder')
    for await (const _ of embedder.embed.map([0, 1, 2, 3, 4, 5, 6, 7]));

    // The page follows, and says what /metrics says.
    await page.locator('tr[data-fn="metered/flaky/flaky"] td.ok', { hasText: /^12$/ }).waitFor({ timeout: 30_000 })
    await page.locator('tr[data-fn="metered/Embedder/embed"] td.ok', { hasText: /^8$/ }).waitFor({ timeout: 30_000 })
    const text = await metrics(s.http)
    const f = { app: 'metered', function: 'flaky', method: 'flaky' }
    t.is(Number(await flakyRow.locator('td.ok').textContent()), sample(text, 'berth_inputs_total', { ...f, outcome: 'ok' }))
    t.is(Number(await flakyRow.locator('td.failed').textContent()), sample(text, 'berth_inputs_total', { ...f, outcome: 'failed' }))
    t.is(Number(await flakyRow.locator('td.failed').textContent()), 2)
    t.regex((await flakyRow.locator('td.p50').textContent()) ?? '', /^\d+(\.\d+)? (ms|s)$/, 'a latency from the histogram')
    // Containers still starting change the count: the page catches up within a round or two.
    let serving = -1
    let shown = -2
    for (let i = 0; i < 40 && shown !== serving; i++) {
      if (i > 0) await sleep(250)
      serving = sample(await metrics(s.http), 'berth_containers', { app: 'metered', function: 'flaky', state: 'serving' })
      shown = Number.parseInt((await flakyRow.locator('td.containers').textContent()) ?? '', 10)
    }
    t.true(serving >= 1)
    t.is(shown, serving, 'its serving containers')
    const embedRow = page.locator('tr[data-fn="metered/Embedder/embed"]')
    t.is(Number(await embedRow.locator('td.ok').textContent()), 8)

    // Recent errors, with their stacks.
    const errors = page.locator('#errors tr.error')
    await errors.first().waitFor({ timeout: 30_000 })
    t.is(await errors.count(), 2)
    t.regex((await errors.first().textContent()) ?? '', /metered \/ flaky.*RangeError: -[12] is negative/s)
    t.regex((await errors.first().locator('pre').textContent()) ?? '', /at .*flaky/, 'the stack')

    // A click on a function: its containers, and its batches as /metrics counts them.
    await embedRow.click()
    await page.locator('#containers tr.container').first().waitFor({ timeout: 30_000 })
    t.is(await page.locator('#containers tr.container').count(), 1)
    t.is(await page.locator('#containers tr.container td.state').textContent(), 'serving', 'its state, as berth container list says')
    t.is(await page.locator('#containers tr.container td.inflight').textContent(), '0')
    t.is(await page.locator('#selected').textContent(), 'metered / Embedder.embed')
    const bars = page.locator('#batches .batch')
    await bars.first().waitFor({ timeout: 30_000 })
    const counts = await bars.evaluateAll((els) => els.map((e) => [e.getAttribute('data-size'), Number(e.getAttribute('data-count'))]))
    t.deepEqual(counts, [['3–4', 2]], 'two batches of four')
    t.is(sample(text, 'berth_batch_size_count', { app: 'metered', function: 'Embedder', method: 'embed' }), 2)

    mkdirSync(join(root, '__test__', 'output'), { recursive: true })
    await page.screenshot({ path: join(root, '__test__', 'output', 'dashboard.png'), fullPage: true })

    // The server keeps a bounded ring of recent errors, however many fail: 60 more failed
    // inputs, 62 in all, the last 50 kept (what the events stream sends).
    await within(60_000, Promise.allSettled(Array.from({ length: 60 }, (_, i) => flaky.remote(-10 - i))), 'the failures')
    const res = await fetch(`http://${s.http}/dashboard/events?token=${TOKEN}`)
    t.is(res.headers.get('content-type'), 'text/event-stream')
    const reader = res.body!.getReader()
    let got = ''
    while (!/event: errors\ndata: .*\n\n/.test(got)) got += new TextDecoder().decode((await reader.read()).value)
    await reader.cancel()
    const ring = JSON.parse(/event: errors\ndata: (.*)\n\n/.exec(got)![1]) as { message: string }[]
    t.is(ring.length, 50, 'the last 50 of 62')
    t.true(ring.every((e) => /^-\d+ is negative$/.test(e.message)))
    t.false(ring.some((e) => /^-[12] is negative$/.test(e.message)), 'the oldest went first')

    // A dashboard left open does not keep the server from stopping.
    await stopsCleanly(t, s)
  })
}

/** A process's resident memory, in bytes (Linux /proc). */
const rss = (pid: number) => Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]) * 1024

/** Reads `rounds` rounds of the dashboard's event stream (each ends with its `errors` event). */
async function readRounds(http: string, rounds: number): Promise<void> {
  const res = await fetch(`http://${http}/dashboard/events`)
  if (res.status !== 200) throw new Error(`GET /dashboard/events: ${res.status}`)
  const reader = res.body!.getReader()
  const decoder = new TextDecoder()
  let seen = 0
  let tail = ''
  while (seen < rounds) {
    const { value, done } = await reader.read()
    if (done) throw new Error(`the stream ended after ${seen} rounds`)
    const text = tail + decoder.decode(value, { stream: true })
    seen += text.split('event: errors\n').length - 1
    tail = text.slice(-16)
  }
  await reader.cancel()
}

test.serial('a dashboard open for an hour does not grow the server: an hour of rounds (3600, a round every 2 ms here) leaves its memory where it was', async (t) => {
  if (process.platform !== 'linux') return t.pass('reads /proc')
  t.timeout(120_000)
  const s = await serve([], { BERTH_DASHBOARD_EVERY_MS: '2' }, 'metrics.ts')
  t.teardown(() => s.child.kill('SIGKILL'))
  const { App, Function } = await import('berth')
  App.lookup('metered', { server: `http://${s.address}` })
  const flaky = Function.fromName<(x: number) => Promise<number>>('metered', 'flaky')
  await Promise.allSettled([1, 2, -1, -2].map((x) => flaky.remote(x)))
  await within(60_000, readRounds(s.http, 500), 'warming up')
  const before = rss(s.child.pid!)
  await within(90_000, readRounds(s.http, 3600), 'an hour of rounds')
  const after = rss(s.child.pid!)
  t.log(`server RSS ${(before / 2 ** 20).toFixed(1)} MiB before, ${(after / 2 ** 20).toFixed(1)} MiB after 3600 rounds`)
  t.true(after - before < 16 * 2 ** 20, `grew ${((after - before) / 2 ** 20).toFixed(1)} MiB`)
  await stopsCleanly(t, s)
})
