// Container output under `npx berth serve` (README "Observability"): every line a container
// prints reaches the server's stdout or stderr whole, behind app/function#container, or as one
// JSON object per line with --log-format json (the input it was printed in, its level); a 10 MB
// line without a newline is cut with a note; each container's start, stop and crash, and a slow
// @exit hook, are logged. `berth run` prints container lines as they are: its output is the job's.
import test from 'ava'
import { rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

import { berth } from './_cli.ts'
import { npxServe, userProject } from './_project.ts'
import { closed, until } from './_util.ts'

const APP = `
import { App, currentInputId, enter, exit, method } from 'berth'

const app = new App('chatty')

export const shout = app.function({}, async function shout(word: string) {
  console.log(\`hello \${word}\`)
  console.warn(\`careful \${word}\`)
  console.error(\`bad \${word}\`)
  process.stdout.write('two ')
  process.stdout.write('writes\\n')
  return currentInputId()
})

// 10 MB without a newline, then the rest of that line and one more.
export const long = app.function({}, async function long(n: number) {
  process.stdout.write('x'.repeat(n))
  process.stdout.write(' end\\nafter the long one\\n')
  return n
})

export const crash = app.function({}, async function crash() {
  process.kill(process.pid, 'SIGKILL')
})

@app.cls({ scaledownWindow: 1 })
export class Slow {
  @enter() load() { console.log('loading') }
  @method() async ping() { return 'pong' }
  @exit() async close() { await new Promise((r) => setTimeout(r, 1800)) }
}
`

const project = () => userProject('berth-logs-', (dir) => writeFileSync(join(dir, 'app.ts'), APP))

const httpOf = (out: string) => /and http:\/\/(127\.0\.0\.1:\d+)\//.exec(out)?.[1]

async function call(http: string, path: string, args: unknown[]): Promise<Response> {
  return fetch(`http://${http}/chatty/${path}`, { method: 'POST', body: JSON.stringify(args) })
}

test('berth serve: container lines carry app/function#container on their own stream; a 10 MB line is cut; starts, stops, crashes and a slow @exit hook are logged', async (t) => {
  const s = npxServe(t, project(), [], {})
  await until(() => httpOf(s.out()) !== undefined, 60_000, `berth serve to listen\n${s.out()}`)
  const http = httpOf(s.out())!

  t.is((await call(http, 'shout', ['world'])).status, 200)
  // Each stream is relayed on its own: wait for both.
  await until(() => s.stderr().includes('bad world') && s.stdout().includes('two writes'), 10_000, `the lines\n${s.out()}`)
  t.regex(s.stdout(), /^chatty\/shout#\d+ \| hello world$/m)
  t.regex(s.stdout(), /^chatty\/shout#\d+ \| two writes$/m, 'a line written in parts is one line')
  t.regex(s.stderr(), /^chatty\/shout#\d+ \| careful world$/m)
  t.regex(s.stderr(), /^chatty\/shout#\d+ \| bad world$/m)
  t.false(s.stdout().includes('bad world'), 'stderr lines stay on stderr')
  t.regex(s.stderr(), /^berth: container \d+ of chatty\/shout \(pid \d+\) started$/m)
  t.false(s.out().includes('\x1e'), 'the tags are stripped')

  t.is(await (await call(http, 'long', [10 * 1024 * 1024])).json(), 10 * 1024 * 1024)
  await until(() => s.stdout().includes('after the long one'), 20_000, 'the line after the long one')
  const long = s.stdout().split('\n').find((l) => l.includes('xxxx'))
  t.true(/^chatty\/long#\d+ \| x{65536} \[berth: line cut at 65536 bytes\]$/.test(long ?? ''), `the cut line: ${long?.length} chars, ending ${long?.slice(-60)}`)
  t.false(s.stdout().includes(' end'), 'the rest of the cut line is dropped')
  t.regex(s.stdout(), /^chatty\/long#\d+ \| after the long one$/m)

  t.is((await call(http, 'crash', [])).status, 500)
  await until(() => /container \d+ of chatty\/crash \(pid \d+\) was killed by signal 9/.test(s.stderr()), 10_000, `the crash\n${s.out()}`)

  t.is(await (await call(http, 'Slow/ping', [])).json(), 'pong')
  // The line comes through the container's pipe, the answer through its link: either first.
  await until(() => /^chatty\/Slow#\d+ \| loading$/m.test(s.stdout()), 10_000, () => `the @enter line\n${s.out()}`)
  // scaledownWindow 1 s: the container stops, its @exit hook takes 1.8 s.
  await until(
    () => /Slow \(pid \d+\) stopped after/.test(s.stderr()) && /^chatty\/Slow#\d+ \| berth: @exit hook Slow\.close finished/m.test(s.stderr()),
    20_000,
    () => `the stop\n${s.out()}`,
  )
  t.regex(s.stderr(), /^chatty\/Slow#\d+ \| berth: @exit hook Slow\.close still running after 1s \(exitGracePeriod 30s/m)
  t.regex(s.stderr(), /^chatty\/Slow#\d+ \| berth: @exit hook Slow\.close finished after \d\.\ds$/m)
  t.regex(s.stderr(), /^berth: container \d+ of chatty\/Slow \(pid \d+\) stopped after \d+\.\ds$/m)
})

test('berth serve --log-format json: one object per line with app, function, container, stream, level, time and the input it was printed in; berth\'s own lines too', async (t) => {
  const s = npxServe(t, project(), ['--log-format', 'json'], {})
  await until(() => httpOf(s.out()) !== undefined, 60_000, `berth serve to listen\n${s.out()}`)
  const http = httpOf(s.out())!
  const input = (await (await call(http, 'shout', ['json'])).json()) as string
  t.regex(input, /^in-/)
  await until(() => s.stderr().includes('bad json') && s.stdout().includes('two writes'), 10_000, `the lines\n${s.out()}`)
  const objects = (text: string) =>
    text
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Record<string, unknown>)
  const out = objects(s.stdout())
  const err = objects(s.stderr())
  const hello = out.find((o) => o.message === 'hello json')
  t.like(hello, { app: 'chatty', function: 'shout', stream: 'stdout', level: 'info', input })
  t.is(typeof hello?.container, 'number')
  t.regex(String(hello?.time), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/)
  t.like(err.find((o) => o.message === 'careful json'), { function: 'shout', stream: 'stderr', level: 'warn', input })
  t.like(err.find((o) => o.message === 'bad json'), { function: 'shout', stream: 'stderr', level: 'error', input })
  t.like(out.find((o) => o.message === 'two writes'), { level: 'info', input })
  const started = err.find((o) => typeof o.message === 'string' && o.message.includes('of chatty/shout') && o.message.endsWith('started'))
  t.like(started, { app: 'chatty', function: 'shout', container: hello?.container, stream: 'berth', level: 'info' })
  t.is(started?.input, undefined, 'no input printed it')

  t.is(await (await call(http, 'Slow/ping', [])).json(), 'pong')
  await until(() => s.stdout().includes('"loading"'), 10_000, 'the @enter line')
  t.like(objects(s.stdout()).find((o) => o.message === 'loading'), { function: 'Slow', level: 'info' })
  t.is(objects(s.stdout()).find((o) => o.message === 'loading')?.input, undefined, 'an @enter hook is no input')
  t.false(/chatty\/\w+#\d+ \|/.test(s.out()), 'no line is in the text format')

  // berth's own lines too, from the banner to the stop: a log collector reads only objects.
  s.npx.kill('SIGTERM')
  await closed(s.npx)
  for (const [name, text] of [['stdout', s.stdout()], ['stderr', s.stderr()]]) {
    const notJson = text.split('\n').filter((l) => l.trim() !== '' && !l.startsWith('{'))
    t.deepEqual(notJson, [], `every line on ${name} is a JSON object`)
  }
  const own = (text: string, start: string) => objects(text).find((o) => String(o.message).startsWith(start))
  t.like(own(s.stdout(), 'berth: serving'), { stream: 'berth', level: 'info' })
  t.like(own(s.stdout(), 'berth: dashboard at'), { stream: 'berth', level: 'info' })
  t.like(own(s.stderr(), 'berth: stopping'), { stream: 'berth', level: 'info' })
  t.regex(String(own(s.stdout(), 'berth: serving')?.time), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/)
})

test('berth serve --log-format: an unknown format names the known ones', async (t) => {
  const r = await berth(['serve', 'app.ts', '--log-format', 'yaml'])
  t.is(r.code, 2)
  t.regex(r.stderr, /--log-format yaml: use text .* or json/)
})

test('berth run: container lines are printed as they are, no prefix or tag', async (t) => {
  const dir = project()
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const r = await berth(['run', join(dir, 'app.ts') + '::shout', '--', 'plain'])
  t.is(r.code, 0, r.stderr)
  t.regex(r.stdout, /^hello plain$/m)
  t.regex(r.stderr, /^careful plain$/m)
  t.false(r.stdout.includes('\x1e') || r.stdout.includes('#'), r.stdout)
})
