// What a function's options do to its container processes: env and secrets in the environment,
// GPUs through CUDA_VISIBLE_DEVICES (from `nvidia-smi -L`, here a stand-in script), and clear
// refusals when a secret is missing or more GPUs are asked for than exist.
import test from 'ava'
import { execFile } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = fileURLToPath(new URL('..', import.meta.url))
const fixture = join('__test__', 'fixtures', 'placed.ts')
const fakeSmi = join(root, '__test__', 'fixtures', 'fake-nvidia-smi.sh')

function berth(args: string[], env: Record<string, string>): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [join(root, 'bin', 'berth.mjs'), ...args], { cwd: root, env: { ...process.env, NODE_OPTIONS: '', ...env }, timeout: 60_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr })
    })
  })
}

const lines = (s: string) => s.split('\n').filter((l) => l.startsWith('{') || l.startsWith('['))

test('secrets and env reach the container process; each GPU container gets its own device', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'berth-secrets-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const env = { BERTH_SECRETS_DIR: dir, BERTH_NVIDIA_SMI: fakeSmi }
  const created = await berth(['secret', 'create', 'fixture-secret', 'FIXTURE_TOKEN=s3cr=t', 'SHARED=from secret'], env)
  t.is(created.code, 0, created.stderr)
  const file = join(dir, 'fixture-secret.json')
  t.is(statSync(file).mode & 0o777, 0o600, 'readable by its owner only')
  const listed = await berth(['secret', 'list'], env)
  t.is(listed.stdout.trim(), 'fixture-secret\tFIXTURE_TOKEN, SHARED')
  t.false(listed.stdout.includes('s3cr=t'), 'list shows keys, never values')

  const r = await berth(['run', fixture], { ...env, MARKER: join(dir, 'entered') })
  t.is(r.code, 0, r.stderr)
  const [who, gpu] = lines(r.stdout).map((l) => JSON.parse(l))
  t.is(who.greeting, 'from env')
  t.is(who.token, 's3cr=t', 'the value keeps everything after the first =')
  t.is(who.shared, 'env wins', 'an explicit env value wins over a secret key')
  t.not(who.pid, undefined)
  // minContainers: 2 on a machine with two A100s (and a T4): one A100 each, by UUID, set
  // before the module loaded (the @enter hook saw it) and seen by the method too.
  t.deepEqual(gpu.entered, ['GPU-0aaa', 'GPU-1bbb'])
  t.true(gpu.entered.includes(gpu.one), gpu.one)
  t.deepEqual(JSON.parse(readFileSync(file, 'utf8')), { FIXTURE_TOKEN: 's3cr=t', SHARED: 'from secret' })
})

test('asking for more GPUs than exist, or for a missing secret, stops before anything runs', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'berth-secrets-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const env = { BERTH_SECRETS_DIR: dir, BERTH_NVIDIA_SMI: fakeSmi }
  const missing = await berth(['run', fixture], { ...env, FIXTURE_GPU: 'none' })
  t.not(missing.code, 0)
  t.regex(missing.stderr, /whoami uses secret 'fixture-secret', which does not exist/)
  t.regex(missing.stderr, /npx berth secret create fixture-secret KEY=VALUE/)

  t.is((await berth(['secret', 'create', 'fixture-secret', 'FIXTURE_TOKEN=x'], env)).code, 0)
  const tooMany = await berth(['run', fixture], { ...env, FIXTURE_GPU: 'A100:3' })
  t.not(tooMany.code, 0)
  t.regex(tooMany.stderr, /OnGpu asks for gpu 'A100:3' but this machine has 3 GPU\(s\): 0: NVIDIA A100-SXM4-80GB, 1: NVIDIA A100-SXM4-80GB, 2: Tesla T4/)

  const warmTooMany = await berth(['run', fixture], { ...env, FIXTURE_GPU: 'T4' })
  t.not(warmTooMany.code, 0)
  t.regex(warmTooMany.stderr, /OnGpu keeps minContainers 2 warm, but the machine's GPUs fit 1/)

  const none = await berth(['run', fixture], { ...env, BERTH_NVIDIA_SMI: join(dir, 'no-such-command') })
  t.not(none.code, 0)
  t.regex(none.stderr, /no GPU was found \(`nvidia-smi -L` lists none\)/)
  t.regex(none.stderr, /remove the gpu option to run on CPU/)

  const bad = await berth(['secret', 'create', 'fixture-secret', 'not a pair'], env)
  t.is(bad.code, 2)
  t.regex(bad.stderr, /is not KEY=VALUE/)
})

test('in embedded containers env, secrets and gpu are not applied, and berth says so', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'berth-secrets-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const env = { BERTH_SECRETS_DIR: dir, FIXTURE_GPU: 'none' }
  const r = await berth(['run', fixture, '--containers', 'embedded'], env)
  t.is(r.code, 0, r.stderr)
  t.regex(r.stderr, /whoami sets env, secrets, which apply to container processes/)
  t.is(JSON.parse(lines(r.stdout)[0]).greeting, undefined)
})
