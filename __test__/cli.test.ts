// `berth run` from the user's view: a child process on small fixtures, checking stdout, stderr
// and the exit status; exit hooks seen through the output. Also `berth serve`'s exit statuses.
import test from 'ava'
import { spawn } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import grpc from '@grpc/grpc-js'

import { Functions, cbor, exitOf, invoke, serve } from './_served.ts'
import { until } from './_util.ts'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const fixture = (name: string) => join('__test__', 'fixtures', name)

interface Result {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
  ms: number
}

/** Runs `node bin/berth.mjs ...args`; `onLine` sees each stdout line (and may signal the child). */
function berth(args: string[], onLine?: (line: string, child: ReturnType<typeof spawn>) => void): Promise<Result> {
  return new Promise((resolve, reject) => {
    const t0 = Date.now()
    const child = spawn(process.execPath, [join(root, 'bin', 'berth.mjs'), ...args], {
      cwd: root,
      env: { ...process.env, NODE_OPTIONS: '' },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let stdout = ''
    let stderr = ''
    let partial = ''
    const killer = setTimeout(() => child.kill('SIGKILL'), 30_000)
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      stdout += d
      partial += d
      let nl: number
      while ((nl = partial.indexOf('\n')) !== -1) {
        const line = partial.slice(0, nl)
        partial = partial.slice(nl + 1)
        onLine?.(line, child)
      }
    })
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d))
    child.on('error', reject)
    child.on('close', (code, signal) => {
      clearTimeout(killer)
      resolve({ code, signal, stdout, stderr, ms: Date.now() - t0 })
    })
  })
}

const lines = (s: string) => s.split('\n').filter((l) => l.length > 0)

test('berth run file.ts -- args: runs the local entrypoint with argv, exit hooks run, status 0', async (t) => {
  const r = await berth(['run', fixture('cli-app.ts'), '--', 'ada', '5'])
  t.is(r.code, 0, r.stderr)
  t.deepEqual(lines(r.stdout), [
    'argv=["ada","5"]',
    '[enter] Greeter',
    'greet=hello ada',
    'triple=15',
    'entrypoint done',
    '[exit] Greeter',
  ])
})

test('berth run file.ts::name -- --x 3 runs one function with named arguments and prints its result', async (t) => {
  const r = await berth(['run', `${fixture('cli-app.ts')}::triple`, '--', '--x', '3'])
  t.is(r.code, 0, r.stderr)
  t.deepEqual(lines(r.stdout), ['9'])
  const p = await berth(['run', `${fixture('cli-app.ts')}::triple`, '--', '4'])
  t.is(p.code, 0, p.stderr)
  t.deepEqual(lines(p.stdout), ['12'])
})

test('berth run file.ts::function that throws exits 1 and prints the remote error and stack', async (t) => {
  const r = await berth(['run', `${fixture('cli-app.ts')}::explode`, '--', '--what', 'boom'])
  t.is(r.code, 1)
  t.regex(r.stderr, /exploded: boom/)
  t.regex(r.stderr, /RangeError/)
  t.regex(r.stderr, /throwFromDeepInside/, 'the remote stack is shown')
})

test('a throwing entrypoint exits 1, prints the error, and exit hooks still run', async (t) => {
  const r = await berth(['run', fixture('cli-throw.ts')])
  t.is(r.code, 1)
  t.regex(r.stderr, /deliberate entrypoint failure/)
  t.deepEqual(lines(r.stdout), ['resource used', '[exit] Resource released'])
})

test('an entrypoint returning 3 exits with status 3 after the exit hooks', async (t) => {
  const r = await berth(['run', fixture('cli-exit3.ts')])
  t.is(r.code, 3, r.stderr)
  t.deepEqual(lines(r.stdout), ['returning 3', '[exit] Job'])
})

// Exit statuses after signals, one rule (README "CLI"): a run that got a Ctrl-C exits 130
// however many and in either container mode; SIGTERM stops a run with 143 and a serve with 0; a
// second Ctrl-C forces and says what it skips; a further SIGTERM changes nothing.
const MODES = ['process', 'embedded'] as const
const kill = (child: ReturnType<typeof spawn>, signal: NodeJS.Signals) => {
  try {
    child.kill(signal)
  } catch {
    // already gone
  }
}

for (const containers of MODES) {
  test(`SIGINT during an input (${containers}): the input finishes, exit hooks run, status 130`, async (t) => {
    const r = await berth(['run', fixture('cli-signal.ts'), '--containers', containers, '--', '800'], (line, child) => {
      if (line === 'ready') child.kill('SIGINT')
    })
    t.is(r.code, 130, r.stderr)
    // 'result ok' comes from berth run, the rest from the container (a process of its own, or
    // this one): only the order within each process is fixed.
    const out = lines(r.stdout)
    t.deepEqual(out.filter((l) => l !== 'result ok'), ['ready', 'work finished', '[exit] Slow'])
    t.true(out.indexOf('result ok') > out.indexOf('work finished'), out.join('\n'))
  })

  test(`a second SIGINT stops at once (${containers}), says what it skips, status 130`, async (t) => {
    let readyAt = 0
    const r = await berth(['run', fixture('cli-signal.ts'), '--containers', containers, '--', '20000'], (line, child) => {
      if (line === 'ready') {
        readyAt = Date.now()
        child.kill('SIGINT')
        setTimeout(() => kill(child, 'SIGINT'), 200)
      }
    })
    // Counted from the signals, not from the start (a loaded machine starts Node slowly): the
    // work takes 20 s, so an exit well before that was not a graceful wait.
    const ms = Date.now() - readyAt
    t.is(r.code, 130, r.stderr)
    t.false(r.stdout.includes('work finished'))
    t.false(r.stdout.includes('[exit] Slow'))
    t.true(ms < 15_000, `took ${ms} ms after the signals: the second SIGINT did not stop at once`)
    t.regex(r.stderr, /berth: stopping now: in-flight inputs are cancelled and the containers' exit hooks that have not run are skipped\n/)
  })

  test(`a Ctrl-C after the app stopped, while the process lingers on an open handle, exits 130, not death by SIGINT (${containers})`, async (t) => {
    let sentAt = 0
    const r = await berth(['run', fixture('cli-linger.ts'), '--containers', containers], (line, child) => {
      if (line === '[exit] Quick') {
        setTimeout(() => {
          sentAt = Date.now()
          kill(child, 'SIGINT')
        }, 2000)
      }
    })
    t.is(r.signal, null, r.stderr)
    t.is(r.code, 130, r.stderr)
    // Counted from the signal (a loaded machine starts Node slowly); a hang would take far longer.
    t.true(sentAt > 0 && Date.now() - sentAt < 15_000, `exited ${Date.now() - sentAt} ms after the signal`)
  })

  test(`SIGTERM stops a run gracefully with status 143; a second SIGTERM changes nothing (${containers})`, async (t) => {
    const r = await berth(['run', fixture('cli-signal.ts'), '--containers', containers, '--', '800'], (line, child) => {
      if (line === 'ready') {
        child.kill('SIGTERM')
        setTimeout(() => kill(child, 'SIGTERM'), 200)
      }
    })
    t.is(r.code, 143, r.stderr)
    t.deepEqual(lines(r.stdout).filter((l) => l !== 'result ok'), ['ready', 'work finished', '[exit] Slow'])
  })
}

/** `berth serve` with SlowWorker inputs in flight (20 ms each, ten at a time per container; its @exit writes `slow-exit <pid>`). */
async function busyServer(t: any) {
  const s = await serve()
  t.teardown(() => s.child.kill('SIGKILL'))
  const client = new Functions(s.address, grpc.credentials.createInsecure())
  t.teardown(() => client.close())
  const n = 400
  const work = Array.from({ length: n }, (_, i) =>
    invoke(client, 'SlowWorker', [i], { method: 'work' }).then((r) => (cbor.decode(r.result.value) as number[])[0], (e: Error) => e),
  )
  await Promise.race(work)
  return { s, work, all: Array.from({ length: n }, (_, i) => i) }
}

test.serial('berth serve: Ctrl-C drains (in-flight inputs finish, @exit runs) and exits 130', async (t) => {
  const { s, work, all } = await busyServer(t)
  s.child.kill('SIGINT')
  t.is(await exitOf(s), 130, s.stdout())
  t.deepEqual(await Promise.all(work), all, 'every accepted input finished')
  t.regex(readFileSync(s.marker, 'utf8'), /^slow-exit \d+$/m)
})

test.serial('berth serve: SIGTERM drains and exits 0; a second SIGTERM does not force a stop', async (t) => {
  const { s, work, all } = await busyServer(t)
  s.child.kill('SIGTERM')
  setTimeout(() => kill(s.child, 'SIGTERM'), 50)
  t.is(await exitOf(s), 0, s.stdout())
  t.deepEqual(await Promise.all(work), all, 'every accepted input finished')
  t.regex(readFileSync(s.marker, 'utf8'), /^slow-exit \d+$/m)
})

test.serial('berth serve: a second Ctrl-C stops at once, says what it skips, and exits 130', async (t) => {
  const s = await serve()
  t.teardown(() => s.child.kill('SIGKILL'))
  const client = new Functions(s.address, grpc.credentials.createInsecure())
  t.teardown(() => client.close())
  // Two inputs of 100 ms, both running (tick: two at a time, one container), none queued.
  const ticks = [0, 1].map((i) => invoke(client, 'tick', [i]).then((r) => (r.result.value ? 'finished' : r.result.error.name), (e: Error) => e.message))
  await until(() => /tick 0\n[^]*tick 1\n|tick 1\n[^]*tick 0\n/.test(readFileSync(s.marker, 'utf8')), 20_000, 'both ticks to start')
  s.child.kill('SIGINT')
  setTimeout(() => kill(s.child, 'SIGINT'), 20)
  t.is(await exitOf(s), 130, s.stdout())
  t.regex(s.stdout(), /berth: stopping now: in-flight inputs are cancelled and the containers' exit hooks that have not run are skipped\n/)
  const outcomes = await Promise.all(ticks)
  t.true(outcomes.some((r) => r !== 'finished'), `an input in flight was cut off: ${outcomes.join(', ')}`)
})

test('berth run with an unknown ::name exits non-zero naming what exists', async (t) => {
  const r = await berth(['run', `${fixture('cli-app.ts')}::nope`])
  t.not(r.code, 0)
  t.regex(r.stderr, /nope/)
  t.regex(r.stderr, /triple/)
})

test("the issue's commands on examples/embeddings.ts: run the entrypoint, and ::square -- --x 3", async (t) => {
  const r = await berth(['run', 'examples/embeddings.ts'])
  t.is(r.code, 0, r.stderr)
  const out = lines(r.stdout)
  // Embedder keeps minContainers warm, so its @enter may print before the entrypoint's first line.
  t.true(out.includes('16'), out.join('\n'))
  t.true(out.includes('[ 5, 6 ] [ 8 ]'), out.join('\n'))
  t.is(out.filter((l) => /^\[mini\] loaded in process \d+$/.test(l)).length, 1, 'the warm container served the calls: one @enter')
  t.true(out.some((l) => /^\[mini\] closed in process \d+$/.test(l)), 'the container ran @exit before berth run exited')
  const sq = await berth(['run', 'examples/embeddings.ts::square', '--', '--x', '3'])
  t.is(sq.code, 0, sq.stderr)
  t.true(lines(sq.stdout).includes('9'), sq.stdout)
})
