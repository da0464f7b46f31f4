// The package as a user gets it (README: "Use the package", "What ships, and how it is
// published"): `npm pack` berth and the package of this platform's binary (npm/<platform> with the
// built .node put in, as the publish steps do), install both tarballs into a new project outside
// the repository with no cargo or rustc on its PATH, and run the README's "Ten lines" there with
// `npx berth run ten.ts`. The dependencies (cbor-x, tsx) come from the npm registry: without it
// the test is skipped, saying so.
import test from 'ava'
import { spawn, spawnSync } from 'node:child_process'
import {
  copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync,
} from 'node:fs'
import { tmpdir } from 'node:os'
import { delimiter, dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const repoPkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'))

/** The environment of a user's shell: none of the npm variables `npm test` sets for ava. */
function userEnv(path: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {}
  for (const [k, v] of Object.entries(process.env)) {
    if (!/^npm_/i.test(k) && k !== 'INIT_CWD' && k !== 'NODE_OPTIONS') env[k] = v
  }
  return { ...env, PATH: path, npm_config_audit: 'false', npm_config_fund: 'false', npm_config_update_notifier: 'false' }
}

interface Run { code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }

/** Runs a command in its own process group, killed (the whole group) after `ms`. */
function run(cmd: string, args: string[], opts: { cwd: string; env: NodeJS.ProcessEnv; ms: number }): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: opts.cwd, env: opts.env, stdio: ['ignore', 'pipe', 'pipe'], detached: true })
    let stdout = ''
    let stderr = ''
    const killer = setTimeout(() => {
      stderr += `\n[package.test: killed after ${opts.ms} ms]`
      try {
        process.kill(-child.pid!, 'SIGKILL')
      } catch {}
    }, opts.ms)
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d))
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d))
    child.on('error', reject)
    child.on('close', (code, signal) => {
      clearTimeout(killer)
      resolve({ code, signal, stdout, stderr })
    })
  })
}

// Without the registry the install cannot fetch cbor-x and tsx: skip, and say why.
const ping = spawnSync('npm', ['ping'], { env: userEnv(process.env.PATH ?? ''), encoding: 'utf8', timeout: 30_000 })
const unreachable = ping.status === 0 ? undefined : `the npm registry is unreachable (npm ping: ${
  (ping.error?.message ?? ping.stderr ?? '').trim().split('\n').pop()})`
if (unreachable) console.log(`package.test.ts skipped: ${unreachable}`)

// The binary this machine built (scripts/build.mjs), whose platform package is packed.
const nodeFile = readdirSync(root).find((f) => /^berth\..+\.node$/.test(f))
const platform = nodeFile?.slice('berth.'.length, -'.node'.length)

/** The README's "Ten lines" example, as written there. */
function tenLines(): string {
  const readme = readFileSync(join(root, 'README.md'), 'utf8')
  const section = readme.slice(readme.indexOf('## Ten lines'))
  const m = /```ts\n([\s\S]*?)```/.exec(section)
  if (!m) throw new Error('README.md: no ```ts block under "## Ten lines"')
  return m[1]
}

/** Every regular file under `dir`, relative to it. */
function filesUnder(dir: string, prefix = ''): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? filesUnder(join(dir, e.name), `${prefix}${e.name}/`) : [`${prefix}${e.name}`])
}

;(unreachable ? test.skip : test)('npm pack, install into a new project without Rust, npx berth run the README example', async (t) => {
  t.timeout(300_000, 'pack, install (registry) and run')
  if (!nodeFile || !platform) return t.fail('no berth.<platform>.node in the repository: run `npm run build` first')
  t.true(existsSync(join(root, 'npm', platform, 'package.json')), `npm/${platform}: the napi-rs package of this platform`)

  const tmp = mkdtempSync(join(tmpdir(), 'berth-package-'))
  t.teardown(() => rmSync(tmp, { recursive: true, force: true }))
  const packs = join(tmp, 'packs')
  mkdirSync(packs)

  // No cargo or rustc on PATH; node, npm and npx stay reachable through links of their own.
  const bin = join(tmp, 'bin')
  mkdirSync(bin)
  for (const tool of ['node', 'npm', 'npx']) {
    const found = spawnSync('which', [tool], { encoding: 'utf8' }).stdout.trim()
    if (found) symlinkSync(found, join(bin, tool))
  }
  const noRust = [bin, ...(process.env.PATH ?? '').split(delimiter)
    .filter((d) => d && !existsSync(join(d, 'cargo')) && !existsSync(join(d, 'rustc')))].join(delimiter)
  const env = userEnv(noRust)
  t.not(spawnSync('sh', ['-c', 'command -v cargo || command -v rustc'], { env, encoding: 'utf8' }).status, 0,
    'no cargo or rustc on the install PATH')

  // The main package, packed from the repository as `npm pack` does (prepack/postpack).
  const packed = await run('npm', ['pack', '--pack-destination', packs], { cwd: root, env: userEnv(process.env.PATH ?? ''), ms: 120_000 })
  t.is(packed.code, 0, packed.stderr)
  t.deepEqual(JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')), repoPkg,
    'postpack put the repository\'s package.json back')
  t.false(existsSync(join(root, 'package.json.prepack')))

  // The platform package, as the publish steps make it: npm/<platform> with its binary.
  const platformDir = join(tmp, platform)
  mkdirSync(platformDir)
  for (const f of readdirSync(join(root, 'npm', platform))) copyFileSync(join(root, 'npm', platform, f), join(platformDir, f))
  copyFileSync(join(root, nodeFile), join(platformDir, nodeFile))
  const packedPlatform = await run('npm', ['pack', '--pack-destination', packs], { cwd: platformDir, env, ms: 60_000 })
  t.is(packedPlatform.code, 0, packedPlatform.stderr)

  const project = join(tmp, 'project')
  mkdirSync(project)
  writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'ten', version: '1.0.0', private: true }, null, 2))
  const tarballs = [`berth-${repoPkg.version}.tgz`, `berth-${platform}-${repoPkg.version}.tgz`].map((f) => join(packs, f))
  const install = await run('npm', ['install', '--no-audit', '--no-fund', ...tarballs], { cwd: project, env, ms: 180_000 })
  t.is(install.code, 0, `npm install: ${install.stdout}\n${install.stderr}`)
  // npm 11 lists the packages whose install-time scripts it did not run; berth is not one.
  t.notRegex(install.stderr, /install-scripts\s+berth@/, 'npm sees no install script in berth')

  const installed = join(project, 'node_modules', 'berth')
  const pkg = JSON.parse(readFileSync(join(installed, 'package.json'), 'utf8'))
  t.is(pkg.scripts, undefined, 'the published package.json has no scripts (no prepare, no install)')
  t.true(existsSync(join(installed, 'proto', 'berth', 'v1', 'functions.proto')), 'proto/ ships')
  t.true(existsSync(join(installed, 'proto', 'berth', 'v1', 'containers.proto')))
  t.deepEqual(filesUnder(installed).filter((f) => f.endsWith('.node')), [], 'no .node in the main package')
  const platforms = readdirSync(join(root, 'npm')).filter((d) => existsSync(join(root, 'npm', d, 'package.json')))
  const entries = (o: Record<string, string>) => Object.entries(o).sort(([a], [b]) => a.localeCompare(b))
  t.deepEqual(entries(pkg.optionalDependencies ?? {}), entries(Object.fromEntries(platforms.map((d) => [`berth-${d}`, repoPkg.version]))),
    'every npm/<platform> package is an optional dependency, at berth\'s version')
  t.true(existsSync(join(project, 'node_modules', `berth-${platform}`, nodeFile)), 'the binary came in its own package')

  // The README's example, run as the README says.
  writeFileSync(join(project, 'ten.ts'), tenLines())
  const ten = await run('npx', ['berth', 'run', 'ten.ts'], { cwd: project, env, ms: 60_000 })
  t.is(ten.code, 0, `npx berth run ten.ts: ${ten.stdout}\n${ten.stderr}`)
  t.deepEqual(ten.stdout.split('\n').filter((l) => l.length > 0), ['[ 5 ]'], ten.stderr)

  // An error thrown inside berth, under `node --enable-source-maps`, names lines of src/*.ts
  // that are in the installed package and hold the throw.
  writeFileSync(join(project, 'throws.cjs'),
    "const { App } = require('berth')\n" +
    "try { new App('x').localEntrypoint(42) } catch (e) { console.log(e.stack) }\n")
  const thrown = await run(process.execPath, ['--enable-source-maps', 'throws.cjs'], { cwd: project, env, ms: 30_000 })
  t.is(thrown.code, 0, thrown.stderr)
  const frames = [...thrown.stdout.matchAll(/node_modules\/berth\/(src\/[\w./-]+\.ts):(\d+):\d+/g)]
  t.true(frames.length > 0, `a frame in node_modules/berth/src: ${thrown.stdout}`)
  for (const [, file, line] of frames) {
    const path = join(installed, file)
    t.true(existsSync(path), `${file} ships`)
    t.not(readFileSync(path, 'utf8').split('\n')[Number(line) - 1], undefined, `${file}:${line} exists`)
  }
  const [, top, topLine] = frames[0]
  t.regex(readFileSync(join(installed, top), 'utf8').split('\n')[Number(topLine) - 1], /throw new InvalidError/,
    `${top}:${topLine} is the throw`)
})
