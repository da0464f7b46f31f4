// Broker mode across hosts (ARCHITECTURE.md, "A broker"): a nats-server, a front and two worker
// hosts, each in a network namespace of its own (_netns.ts), started as users start them
// (`npx berth serve --broker`, `npx berth worker --broker`). One worker host's link goes down
// halfway through a `.map()` of 10,000 inputs: what it held runs on the other host after the ack
// deadline, and the caller gets exactly one result per input. The test starts its own
// nats-server (Debian's `nats-server`) on its own address and store, and removes its namespaces
// when done, also when it fails. Skipped, saying why, without root, `ip netns` or nats-server.
import test from 'ava'
import { type ChildProcess, spawn } from 'node:child_process'
import { copyFileSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import { natsServer } from './_nats.ts'
import { hostsUnavailable, makeHosts } from './_netns.ts'
import { processesIn, userProject } from './_project.ts'
import { root } from './_served.ts'
import { until, within } from './_util.ts'

type Square = (x: number) => Promise<{ y: number; by: string }>

test.serial('broker mode across hosts: 10,000 inputs, one worker host cut off halfway: every input has exactly one result, and both hosts did work', async (t) => {
  const nats = natsServer()
  const why = hostsUnavailable() ?? (nats === undefined ? 'no nats-server (apt-get install nats-server)' : undefined)
  if (why !== undefined) {
    console.log(`  ${t.title}: skipped: ${why}`)
    return t.pass()
  }
  const hosts = makeHosts(process.pid % 10_000, ['nats', 'front', 'w1', 'w2'])
  const store = mkdtempSync(join(tmpdir(), 'berth-nats-'))
  const dir = userProject('berth-hosts-', (d) => copyFileSync(join(root, '__test__', 'fixtures', 'broker.ts'), join(d, 'app.ts')))
  const started: ChildProcess[] = []
  t.teardown(() => {
    // Each process group: npx, berth and its containers; the nats-server.
    for (const c of started) {
      try {
        process.kill(-c.pid!, 'SIGKILL')
      } catch {
        // gone already
      }
    }
    for (const pid of processesIn(dir)) {
      try {
        process.kill(pid, 'SIGKILL')
      } catch {
        // gone already
      }
    }
    hosts.remove()
    rmSync(store, { recursive: true, force: true })
    rmSync(dir, { recursive: true, force: true })
  })
  const outs = new Map<string, () => string>()
  /** `until`, its error carrying what every process printed by then. */
  const wait = (cond: () => boolean, ms: number, what: string) =>
    until(cond, ms, what).catch((e: Error) => {
      throw new Error(`${e.message}\n${[...outs].map(([h, o]) => `--- ${h}:\n${o()}`).join('\n')}`)
    })
  /** `argv` on host `host`, in its own process group, its output gathered. */
  const run = (host: string, argv: string[], env: Record<string, string> = {}) => {
    const c = spawn(hosts.exec(host)[0], [...hosts.exec(host).slice(1), ...argv], {
      cwd: dir,
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    })
    started.push(c)
    let out = ''
    c.stdout!.on('data', (d) => (out += d))
    c.stderr!.on('data', (d) => (out += d))
    outs.set(host, () => out)
    return () => out
  }

  const url = `nats://${hosts.address('nats')}:4222`
  const natsOut = run('nats', [nats!, '-a', hosts.address('nats'), '-p', '4222', '-js', '-sd', store])
  await wait(() => /Server is ready/.test(natsOut()), 30_000, 'nats-server to start')

  const app = `bh-${process.pid}-${Date.now().toString(36)}`
  // Off loopback, a server takes a token.
  const token = `t-${process.pid}`
  // A short timeout: the ack deadline of what the cut-off host held is timeout + 5 s.
  const env = { BROKER_APP: app, SLEEP_MS: '1', SQUARE_TIMEOUT: '2' }
  const front = run('front', ['npx', 'berth', 'serve', 'app.ts', '--broker', url, '--host', hosts.address('front'), '--grpc-port', '0', '--http-port', '0', '--token', token], env)
  await wait(() => /serving .* on \d+\.\d+\.\d+\.\d+:\d+/.test(front()), 60_000, 'the front to listen')
  const address = /serving .* on (\d+\.\d+\.\d+\.\d+:\d+)/.exec(front())![1]
  const worker = (host: string) => {
    const out = run(host, ['npx', 'berth', 'worker', 'app.ts', '--broker', url], { ...env, WORKER_TAG: host })
    return wait(() => /pulling from berth__/.test(out()), 60_000, `worker ${host} to start`)
  }
  await Promise.all([worker('w1'), worker('w2')])

  const { App, Function } = await import('berth')
  App.lookup(app, { server: `http://${address}`, token })
  const square = Function.fromName<Square>(app, 'square')
  const n = 10_000
  const results: { y: number; by: string }[] = []
  let cut = false
  await within(
    180_000,
    (async () => {
      for await (const r of square.map(Array.from({ length: n }, (_, i) => i))) {
        results.push(r)
        if (!cut && results.length === n / 2) {
          hosts.cut('w1')
          cut = true
        }
      }
    })(),
    `the map, w1 cut off at ${n / 2}\nfront:\n${front()}\nw1:\n${outs.get('w1')!()}\nw2:\n${outs.get('w2')!()}`,
  )
  t.true(cut)
  t.is(results.length, n, 'one result per input')
  t.true(
    results.every((r, i) => r.y === i * i),
    'each input its own result, in order',
  )
  const by = (host: string) => results.filter((r) => r.by === host).length
  t.true(by('w1') > 0 && by('w2') > 0, `both hosts did work: w1 ${by('w1')}, w2 ${by('w2')}`)
  t.true(
    results.slice(n / 2 + 4000).every((r) => r.by === 'w2'),
    'once w1 was cut off, only w2 answered',
  )
  t.log(`w1 answered ${by('w1')}, w2 ${by('w2')}`)

  // Stopped as a process manager stops them: each drains and exits, the cut-off one too.
  for (const c of started) process.kill(-c.pid!, 'SIGTERM')
  await wait(() => processesIn(dir).length === 0, 60_000, 'every process of the project to exit')
  t.deepEqual(processesIn(dir), [], 'no process outlives the test')
})
