// `berth serve` reloads on change (README "CLI"): a user's project in a temporary folder, served
// with `npx berth serve app.ts`, its files edited as an editor saves them, called over HTTP.
import test, { type ExecutionContext } from 'ava'
import type { ChildProcess } from 'node:child_process'
import { cpSync, readFileSync, renameSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

import { npxServe, processesIn, userProject } from './_project.ts'
import { root } from './_served.ts'
import { sleep, until } from './_util.ts'

/** A user's project holding a copy of fixtures/reload (app.ts imports ./helper.ts). */
const reloadProject = () => userProject('berth-reload-', (dir) => cpSync(join(root, '__test__', 'fixtures', 'reload'), dir, { recursive: true }))

interface Served {
  dir: string
  npx: ChildProcess
  http: string
  out: () => string
}

/** `npx berth serve app.ts` in a fresh project; everything it started is killed in teardown. */
async function serve(t: ExecutionContext, extra: string[] = []): Promise<Served> {
  const dir = reloadProject()
  const { npx, out } = npxServe(t, dir, extra, { MARKER: join(dir, 'marker') })
  await until(() => /http:\/\/127\.0\.0\.1:\d+\//.test(out()), 30_000, () => `berth serve started:\n${out()}`)
  const http = /http:\/\/(127\.0\.0\.1:\d+)\//.exec(out())![1]
  return { dir, npx, http, out }
}

async function call(s: Served, path: string, args: unknown[] = []): Promise<unknown> {
  const res = await fetch(`http://${s.http}/reload/${path}`, { method: 'POST', body: JSON.stringify(args) })
  const body = await res.json()
  if (res.status !== 200) throw new Error(`${path}: ${res.status} ${JSON.stringify(body)}`)
  return body
}

/** Saves as many editors do: write a temporary file, rename it over the original. */
function saveByRename(path: string, text: string): void {
  writeFileSync(`${path}.tmp~`, text)
  renameSync(`${path}.tmp~`, path)
}

/** Calls `path` until it answers `want`; the answers seen on the way must be `from` (no errors). */
async function untilAnswer(s: Served, path: string, want: unknown, from: unknown): Promise<void> {
  const end = Date.now() + 20_000
  for (;;) {
    const got = await call(s, path)
    if (got === want) return
    if (got !== from) throw new Error(`${path} answered ${JSON.stringify(got)}, expected ${JSON.stringify(from)} then ${JSON.stringify(want)}`)
    if (Date.now() > end) throw new Error(`${path} still answers ${JSON.stringify(got)} 20 s after the edit\n${s.out()}`)
    await sleep(100)
  }
}

const marker = (s: Served): string => {
  try {
    return readFileSync(join(s.dir, 'marker'), 'utf8')
  } catch {
    return ''
  }
}

test.serial('berth serve reloads a saved edit: new calls get the new code, a call in flight finishes on the old one, a file that fails to load keeps the last good version', async (t) => {
  if (process.platform !== 'linux') return t.pass('reads /proc')
  const s = await serve(t)
  const app = join(s.dir, 'app.ts')
  const source = readFileSync(app, 'utf8')
  t.is(await call(s, 'version'), 'one')
  t.is(await call(s, 'helper'), 'h1')

  // A slow call of the first version is running when the file is saved.
  const slow = call(s, 'Slow/wait', [1500])
  await until(() => marker(s).includes('wait one slow'), 20_000, 'the slow call started')
  saveByRename(app, source.replace("const VERSION = 'one'", "const VERSION = 'two'"))
  await untilAnswer(s, 'version', 'two', 'one')
  t.is(await slow, 'one', 'the call in flight finished on the version it started on')
  t.regex(s.out(), /berth: reloaded 'reload' \(3 functions\) after a change to app\.ts\n/)
  // The old container drained: its @exit hook ran (with the old code).
  await until(() => marker(s).includes('exit one'), 20_000, `the old container's exit hook ran:\n${marker(s)}`)
  t.is(await call(s, 'Slow/wait', [1]), 'two')
  t.is(await call(s, 'helper'), 'h1')

  // A syntax error: said on stderr in one line naming the file; the last good version's
  // containers keep serving (a container that starts now loads the file on disk: README "CLI").
  writeFileSync(app, `${source.replace("const VERSION = 'one'", "const VERSION = 'three'")}\nexport const broken = (\n`)
  await until(() => s.out().includes('berth: app.ts failed to load, still serving the previous version: '), 20_000, () => `the failure was said:\n${s.out()}`)
  const line = s.out().split('\n').find((l) => l.includes('failed to load'))!
  t.regex(line, /app\.ts.*(Transform failed|Unexpected|Expected)/, line)
  t.is(await call(s, 'version'), 'two')
  t.is(await call(s, 'helper'), 'h1')

  // A throw at import: the same.
  writeFileSync(app, `${source}\nthrow new Error('no model file here')\n`)
  await until(() => s.out().includes('still serving the previous version: Error: no model file here'), 20_000, () => `the throw was said:\n${s.out()}`)
  t.is(await call(s, 'version'), 'two')

  // Fixed, with a web endpoint added: served again, at its new URL too, and the listing of
  // what is served printed again.
  t.not((await fetch(`http://${s.http}/reload/hi?name=ada`)).status, 200, 'no endpoint there yet')
  const greet = `
export const greet = app.function({ webEndpoint: { method: 'GET', label: 'hi' } }, async function greet(query: Record<string, string>) {
  return \`hi \${query.name} from \${VERSION}\`
})
`
  saveByRename(app, source.replace("const VERSION = 'one'", "const VERSION = 'three'") + greet)
  await untilAnswer(s, 'version', 'three', 'two')
  t.is(await (await fetch(`http://${s.http}/reload/hi?name=ada`)).json(), 'hi ada from three')
  t.regex(s.out(), /berth: reloaded 'reload' \(4 functions\) after a change to app\.ts\n( {2}.*\n)* {2}greet .*GET http:\/\/127\.0\.0\.1:\d+\/reload\/hi {2}web endpoint\n/)
  // Its container up, so that the answer below comes from the reload, not from a container
  // that starts afterwards and loads the edited files.
  t.is(await call(s, 'helper'), 'h1')

  // An edit of a local module the app imports reloads it too.
  writeFileSync(join(s.dir, 'helper.ts'), "export const HELPER = 'h2'\n")
  await untilAnswer(s, 'helper', 'h2', 'h1')
  t.regex(s.out(), /berth: reloaded 'reload' \(4 functions\) after a change to helper\.ts\n/)

  // Stopped as a process manager stops it: nothing it started is left (containers, loaders).
  s.npx.kill('SIGTERM')
  await until(() => processesIn(s.dir).length === 0, 30_000, () => `every process to exit after SIGTERM\n${s.out()}`)
  t.pass()
})

test.serial('berth serve --no-reload serves the version it started with', async (t) => {
  if (process.platform !== 'linux') return t.pass('reads /proc')
  const s = await serve(t, ['--no-reload'])
  const app = join(s.dir, 'app.ts')
  t.is(await call(s, 'version'), 'one')
  saveByRename(app, readFileSync(app, 'utf8').replace("const VERSION = 'one'", "const VERSION = 'two'"))
  // With reload on, the change is served within about a second (the test above).
  await sleep(3000)
  t.is(await call(s, 'version'), 'one')
  t.notRegex(s.out(), /reloaded|failed to load/)
})
