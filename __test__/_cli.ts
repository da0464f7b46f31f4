// `berth ...` as a user runs it, for the CLI tests (not a test file: ava only runs *.test.ts).
import { spawn } from 'node:child_process'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

export const root = fileURLToPath(new URL('..', import.meta.url))

export interface Result {
  code: number | null
  stdout: string
  stderr: string
}

/**
 * Runs `node bin/berth.mjs ...args` in the repository (`node <script>` with `node: true`,
 * `npx berth ...args` with `npx: true`, as the README runs it; `cwd`: in a user's project
 * instead); killed after 60 s.
 */
export function berth(args: string[], env: Record<string, string | undefined> = {}, opts: { node?: boolean; npx?: boolean; cwd?: string } = {}): Promise<Result> {
  return new Promise((resolve, reject) => {
    const full: NodeJS.ProcessEnv = { ...process.env, NODE_OPTIONS: '', ...env }
    for (const [k, v] of Object.entries(env)) if (v === undefined) delete full[k]
    const argv = opts.node ? ['--import', 'tsx', ...args] : [join(root, 'bin', 'berth.mjs'), ...args]
    const child = opts.npx
      ? spawn('npx', ['berth', ...args], { cwd: opts.cwd ?? root, env: full, stdio: ['ignore', 'pipe', 'pipe'] })
      : spawn(process.execPath, argv, { cwd: opts.cwd ?? root, env: full, stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    const killer = setTimeout(() => child.kill('SIGKILL'), 60_000)
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d))
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d))
    child.on('error', reject)
    child.on('close', (code) => {
      clearTimeout(killer)
      resolve({ code, stdout, stderr })
    })
  })
}

export const lines = (s: string): string[] => s.split('\n').filter((l) => l.length > 0)
