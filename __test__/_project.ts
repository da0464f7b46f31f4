// A user's project outside this checkout, with `npx berth serve` run in it, for the tests that
// run berth as the README says (not a test file: ava only runs *.test.ts).
import { type ChildProcess, spawn } from 'node:child_process'
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import type { ExecutionContext } from 'ava'

import { root } from './_served.ts'
import { until } from './_util.ts'

/**
 * A new project named by `prefix`: package.json, node_modules/berth (this checkout) and
 * node_modules/.bin/berth; `fill` puts the app in it.
 */
export function userProject(prefix: string, fill: (dir: string) => void): string {
  const dir = mkdtempSync(join(tmpdir(), prefix))
  mkdirSync(join(dir, 'node_modules', '.bin'), { recursive: true })
  symlinkSync(root, join(dir, 'node_modules', 'berth'))
  symlinkSync(join('..', 'berth', 'bin', 'berth.mjs'), join(dir, 'node_modules', '.bin', 'berth'))
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'user-app', private: true, type: 'module', dependencies: { berth: 'file:' + root } }))
  fill(dir)
  return dir
}

/**
 * Processes whose working directory is `dir` (npx, berth serve, its containers and loaders),
 * this one excepted; with `words`, only those whose command line has each (or a path ending in it).
 */
export function processesIn(dir: string, words: string[] = []): number[] {
  const out: number[] = []
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue
    try {
      if (readlinkSync(`/proc/${name}/cwd`) !== dir) continue
      if (words.length > 0) {
        const args = readFileSync(`/proc/${name}/cmdline`, 'utf8').split('\0')
        if (!words.every((w) => args.some((a) => a === w || a.endsWith(`/${w}`)))) continue
      }
      out.push(Number(name))
    } catch {
      // gone, or not ours to read
    }
  }
  return out
}

/**
 * `npx berth serve app.ts --grpc-port 0 --http-port 0 ...extra` in project `dir`, its stdout and
 * stderr gathered in `out()` (and each alone in `stdout()`, `stderr()`). Teardown kills it and every process in `dir`, and removes `dir`.
 */
export function npxServe(
  t: ExecutionContext,
  dir: string,
  extra: string[],
  env: Record<string, string>,
): { npx: ChildProcess; out: () => string; stdout: () => string; stderr: () => string } {
  const npx = spawn('npx', ['berth', 'serve', 'app.ts', '--grpc-port', '0', '--http-port', '0', ...extra], {
    cwd: dir,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let out = ''
  let stdout = ''
  let stderr = ''
  npx.stdout!.on('data', (d) => {
    out += d
    stdout += d
  })
  npx.stderr!.on('data', (d) => {
    out += d
    stderr += d
  })
  t.teardown(() => npx.kill('SIGKILL'))
  removedAtEnd(t, dir)
  return { npx, out: () => out, stdout: () => stdout, stderr: () => stderr }
}

/** A user's project whose app.ts is `__test__/fixtures/<fixture>`. */
export function fixtureProject(prefix: string, fixture: string): string {
  return userProject(prefix, (dir) => copyFileSync(join(root, '__test__', 'fixtures', fixture), join(dir, 'app.ts')))
}

/** npxServe, once it listens; `server` is its gRPC address as a URL (what callers and `{ server }` take). */
export async function npxServeListening(
  t: ExecutionContext,
  dir: string,
  extra: string[] = [],
  env: Record<string, string> = {},
): Promise<ReturnType<typeof npxServe> & { server: string }> {
  const s = npxServe(t, dir, extra, env)
  const listening = /serving .* on (127\.0\.0\.1:\d+)/
  await until(() => listening.test(s.out()), 60_000, () => `berth serve to listen\n${s.out()}`)
  return { ...s, server: `http://${listening.exec(s.out())![1]}` }
}

/** At the test's end: every process working in `dir` is killed, and `dir` removed. */
export function removedAtEnd(t: ExecutionContext, dir: string): void {
  t.teardown(() => {
    for (const pid of processesIn(dir)) {
      try {
        process.kill(pid, 'SIGKILL')
      } catch {
        // already gone
      }
    }
    rmSync(dir, { recursive: true, force: true })
  })
}
