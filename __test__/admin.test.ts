// `npx berth app list|stop`, `npx berth container list`, `npx berth logs [-f]` against a
// running `npx berth serve` (README "CLI"), run in a user's project as a user runs them, with
// the server where BERTH_SERVER says and its token in BERTH_TOKEN.
import test from 'ava'
import { type ChildProcess, spawn } from 'node:child_process'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

import { berth } from './_cli.ts'
import { npxServe, processesIn, userProject } from './_project.ts'
import { alive, until } from './_util.ts'

const APP = `
import { App, exit, method } from 'berth'
import { appendFileSync } from 'node:fs'

const app = new App('shop')

export const hello = app.function({}, async function hello(word: string, ms = 0) {
  console.log(\`hello \${word}\`)
  await new Promise((r) => setTimeout(r, ms))
  return word
})

@app.cls()
export class Till {
  @method() async ring() { return 'ring' }
  @exit() async close() {
    await new Promise((r) => setTimeout(r, 300))
    appendFileSync(process.env.MARKER!, 'till closed\\n')
  }
}
`

/** `npx berth ...args` in `dir`, as a user runs it. */
const npxBerth = (dir: string, args: string[], env: Record<string, string | undefined>) => berth(args, env, { npx: true, cwd: dir })

test('app list, container list, logs and logs -f, app stop: against npx berth serve with a token', async (t) => {
  const dir = userProject('berth-admin-', (d) => writeFileSync(join(d, 'app.ts'), APP))
  const marker = join(dir, 'marker')
  writeFileSync(marker, '')
  const token = 'sesame'
  const s = npxServe(t, dir, ['--token', token], { MARKER: marker })
  await until(() => /and http:\/\/127\.0\.0\.1:\d+\//.test(s.out()), 60_000, `berth serve to listen\n${s.out()}`)
  const grpc = /serving .* on (127\.0\.0\.1:\d+) \(gRPC/.exec(s.out())![1]
  const http = /and http:\/\/(127\.0\.0\.1:\d+)\//.exec(s.out())![1]
  const env = { BERTH_SERVER: `http://${grpc}`, BERTH_TOKEN: token }
  const call = (path: string, args: unknown[]) =>
    fetch(`http://${http}/shop/${path}`, { method: 'POST', headers: { authorization: `Bearer ${token}` }, body: JSON.stringify(args) })

  t.is((await call('hello', ['one'])).status, 200)
  t.is((await call('Till/ring', [])).status, 200)

  // The token is required when the server has one.
  const refused = await npxBerth(dir, ['app', 'list'], { ...env, BERTH_TOKEN: undefined })
  t.is(refused.code, 1)
  t.regex(refused.stderr, /pass the server's token: --token T or BERTH_TOKEN/)
  const wrong = await npxBerth(dir, ['container', 'list', '--token', 'nope'], env)
  t.is(wrong.code, 1, wrong.stderr)

  const apps = await npxBerth(dir, ['app', 'list'], env)
  t.is(apps.code, 0, apps.stderr)
  t.regex(apps.stdout, /^APP\s+STATE\s+FUNCTION\s+METHODS\s+CONTAINERS$/m)
  t.regex(apps.stdout, /^shop\s+serving\s+hello\s+-\s+1$/m)
  t.regex(apps.stdout, /^shop\s+serving\s+Till\s+ring\s+1$/m)

  // An input in flight while the containers are listed.
  const slow = call('hello', ['slowly', 4000])
  await until(() => s.stdout().includes('hello slowly'), 20_000, 'the slow input started')
  const listed = await npxBerth(dir, ['container', 'list'], env)
  t.is(listed.code, 0, listed.stderr)
  t.regex(listed.stdout, /^CONTAINER\s+PID\s+APP\s+FUNCTION\s+STATE\s+IN-FLIGHT\s+UPTIME$/m)
  const row = /^(\d+)\s+(\d+)\s+shop\s+hello\s+serving\s+1\s+\d+s$/m.exec(listed.stdout)
  t.truthy(row, listed.stdout)
  t.true(alive(Number(row![2])), 'the pid is the container process')
  t.regex(listed.stdout, /^\d+\s+\d+\s+shop\s+Till\s+serving\s+0\s+\d+s$/m)
  t.is(await (await slow).json(), 'slowly')

  const logs = await npxBerth(dir, ['logs', 'shop'], env)
  t.is(logs.code, 0, logs.stderr)
  t.regex(logs.stdout, /^shop\/hello#\d+ \| hello one$/m)
  t.regex(logs.stdout, /^shop\/hello#\d+ \| hello slowly$/m)
  t.regex(logs.stderr, /^berth: container \d+ of shop\/hello \(pid \d+\) started$/m)
  const unknown = await npxBerth(dir, ['logs', 'shoe'], env)
  t.is(unknown.code, 1)
  t.regex(unknown.stderr, /no app named 'shoe' is served here \(perhaps you mean 'shop'\); served: shop/)

  // -f: a line printed after it started reaches it.
  const follower: ChildProcess = spawn('npx', ['berth', 'logs', 'shop', '-f', '--lines', '1'], {
    cwd: dir,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  t.teardown(() => follower.kill('SIGKILL'))
  let followed = ''
  follower.stdout!.setEncoding('utf8').on('data', (d: string) => (followed += d))
  await until(() => followed.includes('hello'), 20_000, `logs -f to print the last line\n${followed}`)
  t.false(followed.includes('hello one'), '--lines 1: only the last line before it started')
  t.is((await call('hello', ['later'])).status, 200)
  await until(() => /^shop\/hello#\d+ \| hello later$/m.test(followed), 10_000, `logs -f to print the new line\n${followed}`)
  follower.kill('SIGINT')

  // Stop: it drains (the exit hook runs), then the app is gone and callers are told why.
  const stopped = await npxBerth(dir, ['app', 'stop', 'shop'], env)
  t.is(stopped.code, 0, stopped.stderr)
  t.regex(stopped.stdout, /berth: app 'shop' stopped/)
  t.is(readFileSync(marker, 'utf8'), 'till closed\n', 'the @exit hook ran before app stop returned')
  const after = await call('hello', ['again'])
  t.is(after.status, 404)
  t.regex(((await after.json()) as any).error.message, /app 'shop' was stopped \(berth app stop\)/)
  const none = await npxBerth(dir, ['app', 'list'], env)
  t.regex(none.stdout, /no apps are served/)
  const gone = await npxBerth(dir, ['container', 'list'], env)
  t.regex(gone.stdout, /no containers are running/)
  const again = await npxBerth(dir, ['app', 'stop', 'shop'], env)
  t.is(again.code, 1)
  t.regex(again.stderr, /app 'shop' was stopped/)

  // A follower does not hold the server up: SIGTERM stops the server, and the follower ends.
  const last: ChildProcess = spawn('npx', ['berth', 'logs', 'shop', '-f'], { cwd: dir, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
  t.teardown(() => last.kill('SIGKILL'))
  let lastOut = ''
  last.stdout!.setEncoding('utf8').on('data', (d: string) => (lastOut += d))
  await until(() => lastOut.includes('hello later'), 20_000, `the stopped app's lines are still there\n${lastOut}`)
  const [server] = processesIn(dir, ['berth', 'serve', 'app.ts'])
  t.truthy(server, 'berth serve runs')
  s.npx.kill('SIGTERM')
  await until(() => last.exitCode !== null, 30_000, `logs -f to end with the server\n${s.out()}`)
  t.is(last.exitCode, 0)
  await until(() => !alive(server), 30_000, `berth serve to exit\n${s.out()}`)
})

test('the admin commands name the fix for a server that is not there and for a wrong usage', async (t) => {
  const dir = userProject('berth-admin-', (d) => writeFileSync(join(d, 'app.ts'), APP))
  t.teardown(() => import('node:fs').then((fs) => fs.rmSync(dir, { recursive: true, force: true })))
  const missing = await npxBerth(dir, ['app', 'list', '--server', 'http://127.0.0.1:9'], {})
  t.is(missing.code, 1)
  t.regex(missing.stderr, /no berth server answers at http:\/\/127\.0\.0\.1:9 .*start one with `npx berth serve app\.ts`/)
  const usage = await npxBerth(dir, ['app', 'stop'], {})
  t.is(usage.code, 2)
  t.regex(usage.stderr, /name the app to stop: berth app stop <app>/)
})
