// Process containers from code and from `berth run --containers process`: the user's code runs
// in child processes, the handles are the same, exit hooks run in the containers.
import test from 'ava'
import { spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = fileURLToPath(new URL('..', import.meta.url))
const fixture = join(root, '__test__/fixtures/process-app.ts')

/** The marker folders of this test process, removed as it exits. */
const markers: string[] = []
process.once('exit', () => {
  for (const d of markers) rmSync(d, { recursive: true, force: true })
})

function run(args: string[]): Promise<{ code: number | null; out: string; marker: string[] }> {
  const folder = mkdtempSync(join(tmpdir(), 'berth-process-'))
  markers.push(folder)
  const marker = join(folder, 'marker')
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { env: { ...process.env, MARKER: marker }, stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    child.stdout.on('data', (d) => (out += d))
    child.stderr.on('data', (d) => (out += d))
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`did not finish in 60 s:\n${out}`))
    }, 60_000)
    child.on('exit', (code) => {
      clearTimeout(timer)
      let lines: string[] = []
      try {
        lines = readFileSync(marker, 'utf8').trim().split('\n')
      } catch {}
      resolve({ code, out, marker: lines })
    })
  })
}

function check(t: any, r: { code: number | null; out: string; marker: string[] }) {
  t.is(r.code, 0, r.out)
  const line = r.out.split('\n').find((l) => l.startsWith('{'))
  t.truthy(line, r.out)
  const { caller, container, totals } = JSON.parse(line!)
  t.not(container, caller, 'the function ran in another process')
  t.deepEqual(totals, [2, 5], 'one container kept its state across calls')
  t.is(r.marker.length, 2, r.marker.join('\n'))
  const [enter, exit] = r.marker
  t.regex(enter, /^enter \d+$/)
  t.is(exit, enter.replace('enter', 'exit'), 'the exit hook ran in the same container process')
  t.not(Number(enter.split(' ')[1]), caller)
}

test('berth run --containers process', async (t) => {
  check(t, await run([join(root, 'bin/berth.mjs'), 'run', fixture, '--containers', 'process']))
})

test("app.run(fn, { containers: 'process' }) from a script; after stop no container process is left", async (t) => {
  const r = await run(['--import', 'tsx', fixture, '--as-script'])
  check(t, r)
  const after = r.out.split('\n').find((l) => l.startsWith('{"childrenAfterStop"'))
  t.deepEqual(JSON.parse(after!).childrenAfterStop, [], 'the containers and the warm spare are gone')
})

test('process containers scale up under load and down after scaledownWindow, running @exit', async (t) => {
  const r = await run(['--import', 'tsx', join(root, '__test__/fixtures/autoscale-app.ts')])
  t.is(r.code, 0, r.out)
  const { pids, busyEnd, stoppingAt } = JSON.parse(r.out.split('\n').find((l) => l.startsWith('{'))!)
  t.true(pids.length >= 2 && pids.length <= 3, `scaled up to between 2 and maxContainers (3) processes: ${pids.length}`)
  const rows = r.marker.map((l) => l.split(' ')).map(([what, pid, at]) => ({ what, pid: Number(pid), at: Number(at) }))
  const exits = rows.filter((e) => e.what === 'exit')
  // A container the autoscaler added as the queue emptied may have served nothing: it exits too.
  const exited = exits.map((e) => e.pid)
  t.is(new Set(exited).size, exited.length, `no container ran @exit twice: ${JSON.stringify(rows)}`)
  t.true(exited.length <= 3, `at most maxContainers (3) containers: ${JSON.stringify(rows)}`)
  for (const pid of pids) t.true(exited.includes(pid), `container ${pid}, which served inputs, ran @exit: ${JSON.stringify(rows)}`)
  const scaledDown = exits.filter((e) => e.at < stoppingAt)
  t.true(scaledDown.length >= exited.length - 1, `idle containers past the window exited before the app stopped: ${JSON.stringify(rows)}`)
  for (const e of scaledDown) {
    const lastDone = Math.max(...rows.filter((d) => d.what === 'done' && d.pid === e.pid).map((d) => d.at))
    t.true(e.at - lastDone >= 950, `container ${e.pid} exited ${e.at - lastDone} ms after its last input: not before the 1 s window`)
  }
  t.true(busyEnd < stoppingAt)
})
