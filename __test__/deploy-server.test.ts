// `npx berth deploy app.ts` to a running `npx berth serve` (README "Deploy to a running server"):
// the command returns once the server serves the file's apps, which stay up beside the served
// ones; a redeploy replaces the app while the old version's call in flight finishes; a file that
// does not load changes nothing and says why; the server's containers of the deployed app load
// the deployed file and start in the directory berth deploy ran in.
import { spawn } from 'node:child_process'
import { mkdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

import test from 'ava'
import { App, Function, InvalidError } from 'berth'

import { berth } from './_cli.ts'
import { npxServeListening, processesIn, removedAtEnd, userProject } from './_project.ts'
import { until } from './_util.ts'

const SERVED = `import { App } from 'berth'
export const app = new App('served')
app.function(async function hello() { return 'served' })
`

/**
 * A deployed app: `version` tells the versions apart; `slow` lets a call be in flight. Each test
 * deploys an app of its own `name`: App.lookup is the test process's, and the tests run at once.
 */
const deployed = (version: string, name = 'deployed') => `import { App } from 'berth'
export const app = new App('${name}', { tags: { team: 'search' } })
app.function(async function which() { return { version: '${version}', cwd: process.cwd(), pid: process.pid } })
app.function(async function slow(ms: number) {
  await new Promise((r) => setTimeout(r, ms))
  return '${version}'
})
`

test('berth deploy: the app is served by the running server after the command returns; a redeploy replaces it, the old call in flight finishes', async (t) => {
  const dir = userProject('berth-deploy-srv-', (d) => writeFileSync(join(d, 'app.ts'), SERVED))
  // The deployed app lives in a folder of its own, deployed from there (its containers start there).
  const other = join(dir, 'team')
  mkdirSync(other)
  writeFileSync(join(other, 'search.ts'), deployed('v1'))
  const { server, stdout, stderr } = await npxServeListening(t, dir, ['--no-reload'])
  const env = { BERTH_SERVER: server }

  const first = await berth(['deploy', 'search.ts'], env, { npx: true, cwd: other })
  t.is(first.code, 0, first.stderr)
  t.regex(first.stdout, /deployed 'deployed' to http:\/\/127\.0\.0\.1:\d+: which, slow\n/)
  t.notRegex(first.stdout, /replaces/)
  await until(() => /berth: deployed 'deployed' \(2 functions\) from .*search\.ts/.test(stderr()), 10_000, stderr)
  t.regex(stdout(), /deployed\/which/, 'the server prints what the deployed app serves')

  App.lookup('deployed', { server })
  const which = Function.fromName<() => Promise<{ version: string; cwd: string; pid: number }>>('deployed', 'which')
  const v1 = await which.remote()
  t.is(v1.version, 'v1')
  t.is(v1.cwd, other, "its containers start where berth deploy ran")
  App.lookup('served', { server })
  t.is(await Function.fromName<() => Promise<string>>('served', 'hello').remote(), 'served', 'the served app serves on')

  const list = await berth(['app', 'list'], env, { npx: true, cwd: dir })
  t.regex(list.stdout, /deployed\s+serving\s+which/)
  t.regex(list.stdout, /served\s+serving\s+hello/)

  // A redeploy while a call of the first version is in flight: that call finishes on v1.
  const slow = Function.fromName<(ms: number) => Promise<string>>('deployed', 'slow')
  t.is(await slow.remote(0), 'v1') // its container up, so that the next call is under way at once
  const inFlight = slow.remote(2000)
  await new Promise((r) => setTimeout(r, 500))
  writeFileSync(join(other, 'search.ts'), deployed('v2'))
  const second = await berth(['deploy', 'search.ts'], env, { npx: true, cwd: other })
  t.is(second.code, 0, second.stderr)
  t.regex(second.stdout, /deployed 'deployed' .*\(it replaces the version served before, whose containers drain\)/)
  t.is((await which.remote()).version, 'v2', 'calls after the redeploy run the new version')
  t.is(await inFlight, 'v1', 'the call in flight finished on the old version')

  // app.deploy() from code: the file that defines the app, deployed to the server named.
  writeFileSync(join(other, 'search-api.ts'), deployed('v3'))
  const { app: v3 } = (await import(join(other, 'search-api.ts'))) as { app: App }
  const done = await v3.deploy({ server })
  t.deepEqual(done, { apps: [{ app: 'deployed', functions: ['which', 'slow'], replaced: true }] })
  t.is((await which.remote()).version, 'v3')
  await t.throwsAsync(v3.deploy({ server: 'http://127.0.0.1:1' }), { instanceOf: InvalidError, message: /^app\.deploy\(\): no berth server answers/ })

  // A file that does not load changes nothing, and the command says why.
  writeFileSync(join(other, 'broken.ts'), "import { App } from 'berth'\nexport const app = new App('deployed')\nthis is not typescript\n")
  const broken = await berth(['deploy', 'broken.ts'], env, { npx: true, cwd: other })
  t.is(broken.code, 1)
  t.regex(broken.stderr, /berth deploy: .*broken\.ts did not load: /)
  t.is((await which.remote()).version, 'v3', 'the deployed app serves on')

  const missing = await berth(['deploy', 'nope.ts'], env, { npx: true, cwd: other })
  t.is(missing.code, 2)
  t.regex(missing.stderr, /berth deploy: no file nope\.ts/)
  const stray = await berth(['deploy', 'search.ts', '--image', 'x'], env, { npx: true, cwd: other })
  t.is(stray.code, 2)
  t.regex(stray.stderr, /--image is for --target kubernetes/)
})

test('berth serve without a file serves what berth deploy brings it', async (t) => {
  const dir = userProject('berth-deploy-bare-', (d) => writeFileSync(join(d, 'search.ts'), deployed('bare', 'bare-deployed')))
  removedAtEnd(t, dir)
  const npx = spawn('npx', ['berth', 'serve', '--grpc-port', '0', '--http-port', '0'], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] })
  t.teardown(() => npx.kill('SIGKILL'))
  let out = ''
  npx.stdout!.on('data', (d) => (out += d))
  npx.stderr!.on('data', (d) => (out += d))
  const listening = /serving no app yet on (127\.0\.0\.1:\d+)/
  await until(() => listening.test(out), 60_000, () => `berth serve to listen\n${out}`)
  t.regex(out, /deploy apps to it: npx berth deploy app\.ts/)
  const server = `http://${listening.exec(out)![1]}`
  const done = await berth(['deploy', 'search.ts'], { BERTH_SERVER: server }, { npx: true, cwd: dir })
  t.is(done.code, 0, done.stderr)
  App.lookup('bare-deployed', { server })
  t.is((await Function.fromName<() => Promise<{ version: string }>>('bare-deployed', 'which').remote()).version, 'bare')
  npx.kill('SIGTERM')
  await until(() => processesIn(dir).length === 0, 30_000, 'the server and its containers to stop')
  t.deepEqual(processesIn(dir), [], 'no process outlives the server')
})

test('berth deploy: no server at BERTH_SERVER says how to start one; a file using another berth install is refused naming both', async (t) => {
  const dir = userProject('berth-deploy-none-', (d) => writeFileSync(join(d, 'app.ts'), SERVED))
  removedAtEnd(t, dir)
  const none = await berth(['deploy', 'app.ts'], { BERTH_SERVER: 'http://127.0.0.1:1' }, { npx: true, cwd: dir })
  t.is(none.code, 1)
  t.regex(none.stderr, /no berth server answers at http:\/\/127\.0\.0\.1:1 .*npx berth serve app\.ts/)

  // A project whose node_modules/berth is a copy elsewhere (its package.json is enough to resolve).
  const { server } = await npxServeListening(t, dir, ['--no-reload'])
  const foreign = userProject('berth-deploy-foreign-', (d) => writeFileSync(join(d, 'app.ts'), deployed('x')))
  removedAtEnd(t, foreign)
  const copy = join(foreign, 'vendored-berth')
  mkdirSync(copy)
  writeFileSync(join(copy, 'package.json'), JSON.stringify({ name: 'berth', version: '0.0.0', exports: { './package.json': './package.json' } }))
  rmSync(join(foreign, 'node_modules', 'berth'))
  symlinkSync(copy, join(foreign, 'node_modules', 'berth'))
  const refused = await berth(['deploy', 'app.ts'], { BERTH_SERVER: server }, { cwd: foreign })
  t.is(refused.code, 1, refused.stderr)
  t.regex(refused.stderr, /imports berth from .*vendored-berth, and this server runs berth from /)
})
