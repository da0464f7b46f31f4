// Broker mode through a restart of the NATS server (issue 12 item 3; README "More than one
// machine"): a nats-server of the test's own (file storage), a front and a worker started as users
// start them (`npx berth serve --broker`, `npx berth worker --broker`), and a caller running a
// `.map()` and `.remote()` calls when the server is SIGKILLed and then started again on the same
// port and store. Skipped, saying why, without nats-server.
import test from 'ava'
import { type ChildProcess, spawn } from 'node:child_process'
import { copyFileSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import { freePort, natsServer, startNats } from './_nats.ts'
import { npxServe, processesIn, userProject } from './_project.ts'
import { root } from './_served.ts'
import { sleep, until, within } from './_util.ts'

type Square = (x: number) => Promise<{ y: number; by: string }>

test.serial('broker mode: the NATS server SIGKILLed mid-run and restarted on its store: front and worker reconnect, every input of a .map() and every .remote() in flight gets exactly one result, in order, and both keep serving', async (t) => {
  if (process.platform !== 'linux') return t.pass('reads /proc')
  t.timeout(280_000)
  const nats = natsServer()
  if (nats === undefined) {
    console.log(`  ${t.title}: skipped: no nats-server (apt-get install nats-server)`)
    return t.pass()
  }
  const port = await freePort()
  const url = `nats://127.0.0.1:${port}`
  const store = mkdtempSync(join(tmpdir(), 'berth-nats-restart-'))
  let server = await startNats(nats, port, store)
  const servers: ChildProcess[] = [server.child]
  t.teardown(() => {
    for (const c of servers) {
      try {
        process.kill(-c.pid!, 'SIGKILL')
      } catch {
        // gone already
      }
    }
    rmSync(store, { recursive: true, force: true })
  })

  const app = `br-${process.pid}-${Date.now().toString(36)}`
  const dir = userProject('berth-restart-', (d) => copyFileSync(join(root, '__test__', 'fixtures', 'broker.ts'), join(d, 'app.ts')))
  const env = { BROKER_APP: app, SLEEP_MS: '0' }
  const front = npxServe(t, dir, ['--broker', url], env)
  const worker = spawn('npx', ['berth', 'worker', 'app.ts', '--broker', url], { cwd: dir, env: { ...process.env, ...env, WORKER_TAG: 'W' }, stdio: ['ignore', 'pipe', 'pipe'] })
  let workerOut = ''
  worker.stdout!.on('data', (d) => (workerOut += d))
  worker.stderr!.on('data', (d) => (workerOut += d))
  const outs = () => `--- front:\n${front.out()}\n--- worker:\n${workerOut}\n--- nats-server:\n${server.out()}`
  await until(() => /serving .* on 127\.0\.0\.1:\d+/.test(front.out()), 60_000, () => `the front to listen\n${outs()}`)
  await until(() => /pulling from berth__/.test(workerOut), 60_000, () => `the worker to start\n${outs()}`)
  const address = /serving .* on (127\.0\.0\.1:\d+)/.exec(front.out())![1]

  const { App, Function } = await import('berth')
  App.lookup(app, { server: `http://${address}` })
  const square = Function.fromName<Square>(app, 'square')
  t.is((await within(60_000, square.remote(3), 'a first .remote()')).y, 9)

  const n = 4000
  const results: { y: number; by: string }[] = []
  let remotes: Promise<{ y: number }[]> | undefined
  let restarted: Promise<void> | undefined
  // SIGKILL with inputs published and not yet run, running, and answered but not yet acked;
  // .remote() calls on their way; down long enough for the clients to notice and retry.
  const restart = async () => {
    remotes = Promise.all(Array.from({ length: 20 }, (_, i) => square.remote(10_000 + i)))
    process.kill(-server.child.pid!, 'SIGKILL')
    await sleep(2000)
    server = await startNats(nats, port, store)
    servers.push(server.child)
  }
  await within(
    150_000,
    (async () => {
      for await (const r of square.map(Array.from({ length: n }, (_, i) => i))) {
        results.push(r)
        if (results.length === n / 4) restarted = restart()
      }
    })(),
    'the map through the restart',
  ).catch((e: Error) => {
    // The processes' output as it is now, not as it was when the map started.
    throw new Error(`${e.message}\n(${results.length} results by then)\n${outs()}`)
  })
  await within(60_000, restarted!, 'the restart')
  t.is(results.length, n, 'one result per input')
  t.true(
    results.every((r, i) => r.y === i * i),
    'each input its own result, in order',
  )
  const remote = await within(120_000, remotes!, () => `the .remote() calls in flight at the kill\n${outs()}`)
  t.deepEqual(
    remote.map((r) => r.y),
    Array.from({ length: 20 }, (_, i) => (10_000 + i) ** 2),
  )
  // Both kept serving: a new call after the restart.
  t.is((await within(60_000, square.remote(7), () => `a .remote() after the restart\n${outs()}`)).y, 49)

  // Stopped as a process manager stops them: each drains and exits.
  front.npx.kill('SIGTERM')
  worker.kill('SIGTERM')
  await until(() => processesIn(dir).length === 0, 60_000, () => `every process of the project to exit\n${outs()}`).catch(() => {})
  t.deepEqual(processesIn(dir), [], 'no process outlives the test')
})
