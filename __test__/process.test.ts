import test from 'ava'
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'

const fixture = fileURLToPath(new URL('./fixtures/no-stop.ts', import.meta.url))

function runNode(file: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', file], { stdio: ['ignore', 'pipe', 'pipe'] })
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
