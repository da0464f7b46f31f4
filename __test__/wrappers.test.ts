// Started the way users start it: `npx berth serve app.ts` in a project that depends on berth,
// stopped the way a process manager stops it (SIGTERM to the process it started: npx).
import test from 'ava'
import { spawn } from 'node:child_process'
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import grpc from '@grpc/grpc-js'

import { Functions, cbor, invoke, root } from './_served.ts'
import { alive, until } from './_util.ts'

/** A user's project: package.json, node_modules/berth (this checkout), node_modules/.bin/berth. */
function userProject(): string {
  const dir = mkdtempSync(join(tmpdir(), 'berth-project-'))
  mkdirSync(join(dir, 'node_modules', '.bin'), { recursive: true })
  symlinkSync(root, join(dir, 'node_modules', 'berth'))
  symlinkSync(join('..', 'berth', 'bin', 'berth.mjs'), join(dir, 'node_modules', '.bin', 'berth'))
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'user-app', private: true, type: 'module', dependencies: { berth: 'file:' + root } }))
  copyFileSync(join(root, '__test__', 'fixtures', 'served.ts'), join(dir, 'app.ts'))
  return dir
}

/** Processes whose working directory is `dir` and whose command line has each of `words` (or a path ending in it). */
function processesIn(dir: string, words: string[]): number[] {
  const out: number[] = []
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue
    try {
      if (readlinkSync(`/proc/${name}/cwd`) !== dir) continue
      const args = readFileSync(`/proc/${name}/cmdline`, 'utf8').split('\0')
      if (words.every((w) => args.some((a) => a === w || a.endsWith(`/${w}`)))) out.push(Number(name))
    } catch {
      // gone, or not ours to read
    }
  }
  return out
}

test.serial('npx berth serve under a process manager: SIGTERM to npx drains the server, runs @exit, and no process outlives it', async (t) => {
  if (process.platform !== 'linux') return t.pass('reads /proc')
  const dir = userProject()
  const marker = join(dir, 'marker')
  const npx = spawn('npx', ['berth', 'serve', 'app.ts', '--grpc-port', '0', '--http-port', '0'], {
    cwd: dir,
    env: { ...process.env, MARKER: marker },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let out = ''
  npx.stdout!.on('data', (d) => (out += d))
  npx.stderr!.on('data', (d) => (out += d))
  t.teardown(() => {
    npx.kill('SIGKILL')
    for (const pid of [...processesIn(dir, ['berth']), ...processesIn(dir, ['berth.mjs'])]) {
      try {
        process.kill(pid, 'SIGKILL')
      } catch {
        // already gone
      }
    }
    rmSync(dir, { recursive: true, force: true })
  })
  await until(() => /serving .* on (127\.0\.0\.1:\d+)/.test(out), 60_000, `berth serve to listen\n${out}`)
  const address = /serving .* on (127\.0\.0\.1:\d+)/.exec(out)![1]
  const [server] = processesIn(dir, ['berth', 'serve', 'app.ts'])
  t.truthy(server, 'berth serve runs')
  t.not(server, npx.pid, 'npx runs berth serve as a process of its own')

  const client = new Functions(address, grpc.credentials.createInsecure())
  const embed = await invoke(client, 'Embedder', ['hi'], { method: 'embed' })
  t.deepEqual(cbor.decode(embed.result.value), [2, 'mini'])
  const container = cbor.decode((await invoke(client, 'pid', [])).result.value) as number
  client.close()
  t.true(alive(container))

  npx.kill('SIGTERM')
  await until(() => !alive(server), 30_000, `berth serve to exit after npx got SIGTERM\n${out}`)
  t.false(alive(container), 'the server exits last: its containers are gone by then')
  t.deepEqual([...processesIn(dir, ['berth']), ...processesIn(dir, ['berth.mjs'])], [], 'no berth process is left')
  const log = readFileSync(marker, 'utf8')
  t.regex(log, /^exit mini$/m, 'the container ran @exit')
})
