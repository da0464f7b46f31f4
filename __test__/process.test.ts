import test from 'ava'
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'

const fixture = fileURLToPath(new URL('./fixtures/no-stop.ts', import.meta.url))

function runNode(file: string, env: Record<string, string> = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', file], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d) => (stdout += d))
    child.stderr.on('data', (d) => (stderr += d))
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`${file} did not exit within 20 s (the runtime kept Node alive)\n${stdout}\n${stderr}`))
    }, 20_000)
    child.on('exit', (code) => {
      clearTimeout(timer)
      resolve({ code, stdout, stderr })
    })
  })
}

test('an app that is never stopped lets the process exit, after its @exit hooks', async (t) => {
  const { code, stdout, stderr } = await runNode(fixture)
  t.is(code, 0, stderr)
  t.deepEqual(stdout.trim().split('\n'), ['result 42', '[exit]'])
})

test('BERTH_ASYNC_CONTEXT=0: the input is known before the first await, not after, and the error says why', async (t) => {
  const file = fileURLToPath(new URL('./fixtures/sync-context.ts', import.meta.url))
  const { code, stdout, stderr } = await runNode(file, { BERTH_ASYNC_CONTEXT: '0' })
  t.is(code, 0, stderr)
  const rows = JSON.parse(stdout) as { tag: string; before: string; signalIsAbortSignal: boolean; after: string }[]
  t.is(rows.length, 2)
  t.not(rows[0].before, rows[1].before)
  for (const r of rows) {
    t.regex(r.before, /^in-\d+$/)
    t.true(r.signalIsAbortSignal)
    t.is(r.after, 'undefined threw InvalidError: names the setting')
  }
})
