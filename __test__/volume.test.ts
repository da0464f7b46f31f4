// Volume (README "Volume"): a named directory on this machine (BERTH_VOLUMES_DIR), mounted in a
// function's or class's containers at an absolute path as a symbolic link berth makes where
// nothing is, and removes when the last container using it stops. Each mode: embedded
// (app.run) and container processes under `npx berth serve`; the file helpers and
// `npx berth volume`; bad input refused saying why and what to do. Every test keeps its volumes
// and mount paths in one temporary directory, never in ~/.berth.
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { readFile, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import test from 'ava'
import { App, Cls, Dict, Function, InitError, InvalidError, method, NotFoundError, Volume } from 'berth'

import { berth } from './_cli.ts'
import { fixtureProject, npxServeListening, userProject, removedAtEnd } from './_project.ts'
import { until } from './_util.ts'

const base = mkdtempSync(join(tmpdir(), 'berth-vol-'))
const volumesDir = join(base, 'volumes')
process.env.BERTH_VOLUMES_DIR = volumesDir
test.after.always(() => rmSync(base, { recursive: true, force: true }))

/** A new directory in the test's temporary one: mount paths go in it. */
function scratch(name: string): string {
  const dir = join(base, name)
  mkdirSync(dir, { recursive: true })
  return dir
}

const isLinkTo = (p: string, target: string): boolean => {
  try {
    return lstatSync(p).isSymbolicLink() && readlinkSync(p) === target
  } catch {
    return false
  }
}

/** The mount records left in the volumes directory (none once nothing uses a mount). */
const records = (): string[] => (existsSync(join(volumesDir, '.mounts')) ? readdirSync(join(volumesDir, '.mounts')) : [])

test.serial('Volume.fromName, the file helpers, commit and reload, Volume.delete', async (t) => {
  t.throws(() => Volume.fromName('never-made'), {
    instanceOf: NotFoundError,
    message: /no volume named 'never-made' .*createIfMissing: true.*npx berth volume create never-made/,
  })
  for (const bad of ['', 'no spaces', '../up', '.hidden', 'a/b']) {
    t.throws(() => Volume.fromName(bad, { createIfMissing: true }), { instanceOf: InvalidError, message: /a volume name is 1 to 128 letters/ })
  }
  const vol = Volume.fromName('files', { createIfMissing: true })
  t.is(vol.name, 'files')
  t.is(vol.path, join(volumesDir, 'files'))
  t.is(Volume.fromName('files').path, vol.path, 'found again without createIfMissing')

  await vol.write('/models/a.txt', 'alpha')
  await vol.write('b.bin', new Uint8Array([1, 2, 3]))
  t.is(readFileSync(join(vol.path, 'models', 'a.txt'), 'utf8'), 'alpha', 'a plain file in the volume directory')
  t.is((await vol.read('models/a.txt')).toString(), 'alpha')
  t.deepEqual([...(await vol.read('/b.bin'))], [1, 2, 3])
  t.deepEqual((await vol.listdir()).map((e) => [e.path, e.type]), [
    ['b.bin', 'file'],
    ['models', 'directory'],
  ])
  t.is((await vol.listdir('b.bin'))[0].size, 3)
  t.deepEqual((await vol.listdir('/', { recursive: true })).map((e) => e.path), ['b.bin', 'models', 'models/a.txt'])
  t.deepEqual((await vol.listdir('models/a.txt')).map((e) => e.path), ['models/a.txt'], 'a file lists itself')
  await vol.commit()
  await vol.reload()

  const local = join(scratch('files-local'), 'in.txt')
  writeFileSync(local, 'from disk')
  await vol.putFile(local, '/copied/')
  t.is((await vol.read('copied/in.txt')).toString(), 'from disk')
  await vol.getFile('copied/in.txt', `${local}.back`)
  t.is(readFileSync(`${local}.back`, 'utf8'), 'from disk')

  // Paths stay inside the volume.
  for (const escape of ['../outside.txt', '/models/../../x', '..']) {
    await t.throwsAsync(vol.write(escape, 'x'), { instanceOf: InvalidError, message: /leaves the volume \('\.\.'\)/ })
    await t.throwsAsync(vol.read(escape), { instanceOf: InvalidError })
  }
  symlinkSync(tmpdir(), join(vol.path, 'out'))
  await t.throwsAsync(vol.read('out/anything'), { instanceOf: InvalidError, message: /leads out of the volume through a symbolic link/ })
  await t.throwsAsync(vol.read('nope.txt'), { instanceOf: NotFoundError, message: /no file 'nope.txt'/ })
  await t.throwsAsync(vol.remove('models'), { instanceOf: InvalidError, message: /is a directory; remove it with \{ recursive: true \}/ })
  await vol.remove('models', { recursive: true })
  await vol.remove('out')
  t.deepEqual((await vol.listdir()).map((e) => e.path), ['b.bin', 'copied'])

  t.true(await Volume.delete('files'))
  t.false(existsSync(vol.path))
  t.false(await Volume.delete('files'))
  await t.throwsAsync(vol.read('b.bin'), { instanceOf: NotFoundError, message: /the volume was deleted/ })
  await t.throwsAsync(vol.commit(), { instanceOf: NotFoundError })
})

test.serial('embedded (app.run): a function writes through its mount path and a class reads it; the link goes with the app, one that was there stays', async (t) => {
  const vol = Volume.fromName('embedded', { createIfMissing: true })
  const mount = join(scratch('embedded'), 'data')
  const theirs = join(scratch('embedded'), 'theirs')
  symlinkSync(vol.path, theirs) // a link to the volume that someone made before: kept
  const app = new App(`volume-embedded-${process.pid}`)
  const write = app.function({ volumes: { [mount]: vol } }, async function write(file: string, text: string) {
    await writeFile(join(mount, file), text)
    await vol.commit()
    return vol.path
  })
  @app.cls({ volumes: { [mount]: vol, [theirs]: vol } })
  class Reader {
    @method() async read(file: string) {
      await vol.reload()
      return [await readFile(join(mount, file), 'utf8'), await readFile(join(theirs, file), 'utf8')]
    }
  }
  t.false(existsSync(mount))
  await app.run(async () => {
    t.is(await write.remote('a.txt', 'hello'), vol.path, 'the volume object works inside the function')
    t.true(isLinkTo(mount, vol.path), 'the mount path links to the volume while the app runs')
    t.deepEqual(await Cls.of(Reader).read.remote('a.txt'), ['hello', 'hello'])
  })
  t.false(existsSync(mount), 'the link berth made is removed when the app stops')
  t.true(isLinkTo(theirs, vol.path), 'a link that was there before stays')
  t.is(readFileSync(join(vol.path, 'a.txt'), 'utf8'), 'hello', 'the file stays in the volume')
  t.deepEqual(records(), [], 'no mount record left')
})

test.serial('bad input: a relative mount path, a value that is no Volume, overlapping mounts, an unknown volume', (t) => {
  const app = new App(`volume-bad-${process.pid}`)
  const vol = Volume.fromName('bad-input', { createIfMissing: true })
  const f = async function f() {}
  t.throws(() => app.function({ volumes: { data: vol } }, f), {
    instanceOf: InvalidError,
    message: /app\.function\('f'\): the volume mount path 'data' must be absolute/,
  })
  t.throws(() => app.function({ volumes: { './data': vol } }, f), { instanceOf: InvalidError, message: /'\.\/data' must be absolute/ })
  t.throws(() => app.function({ volumes: { '/data/../etc': vol } }, f), { instanceOf: InvalidError, message: /must not contain '\.\.'/ })
  t.throws(() => app.function({ volumes: { '/': vol } }, f), { instanceOf: InvalidError, message: /cannot be mounted at the root/ })
  t.throws(() => app.function({ volumes: { '/data': 'bad-input' as never } }, f), {
    instanceOf: InvalidError,
    message: /volumes\['\/data'\] must be a Volume \(Volume\.fromName\('name'\)\), got "bad-input"/,
  })
  t.throws(() => app.function({ volumes: { '/data': Dict.fromName('d') as never } }, f), {
    instanceOf: InvalidError,
    message: /got an instance of Dict/,
  })
  t.throws(() => app.function({ volumes: vol as never }, f), { instanceOf: InvalidError, message: /volumes must be an object of mount paths/ })
  t.throws(() => app.function({ volumes: { '/data': vol, '/data/sub': vol } }, f), {
    instanceOf: InvalidError,
    message: /'\/data' and '\/data\/sub' overlap/,
  })
  t.throws(
    () =>
      app.cls({ volumes: { rel: vol } })(class Bad {}, { kind: 'class', name: 'Bad', addInitializer() {}, metadata: {} } as never),
    { instanceOf: InvalidError, message: /@app\.cls\(\) on Bad: the volume mount path 'rel' must be absolute/ },
  )
  t.throws(() => app.function({ volume: { '/data': vol } } as never, f), { instanceOf: InvalidError, message: /Did you mean 'volumes'/ })
  t.throws(() => app.function({ volumes: { '/data': Volume.fromName('not-there') } }, f), {
    instanceOf: NotFoundError,
    message: /createIfMissing: true/,
  })
})

test.serial('a mount path that exists as a file, or whose parent is missing, fails the container start with InitError naming the path and the fix', async (t) => {
  const vol = Volume.fromName('occupied', { createIfMissing: true })
  const dir = scratch('occupied')
  const file = join(dir, 'taken')
  writeFileSync(file, 'not a volume')
  const orphan = join(dir, 'missing-parent', 'data')
  const app = new App(`volume-occupied-${process.pid}`)
  const onFile = app.function({ volumes: { [file]: vol } }, async function onFile() {
    return 'ran'
  })
  const noParent = app.function({ volumes: { [orphan]: vol } }, async function noParent() {
    return 'ran'
  })
  await app.run(async () => {
    const e = await t.throwsAsync(onFile.remote(), { instanceOf: InitError })
    t.regex(e!.message, new RegExp(`onFile: volume 'occupied' cannot be mounted at ${file}: it already exists \\(a file\\)`))
    t.regex(e!.message, /a mount path that does not exist yet, in a directory this user can write .* or leave the mount out and read vol\.path/)
    const e2 = await t.throwsAsync(noParent.remote(), { instanceOf: InitError })
    t.regex(e2!.message, /its parent directory .*missing-parent does not exist/)
  })
  t.is(readFileSync(file, 'utf8'), 'not a volume', 'what was there is left alone')
})

test.serial('berth serve: containers of a function and a class see each other\'s writes after commit and reload; the link goes when the server stops', async (t) => {
  const dir = fixtureProject('berth-volume-', 'volumes.ts')
  const mount = join(scratch('served'), 'data')
  const s = await npxServeListening(t, dir, [], { BERTH_VOLUMES_DIR: volumesDir, VOLUME_MOUNT: mount })
  App.lookup('volumes', { server: s.server })
  const write = Function.fromName<(file: string, text: string) => Promise<{ pid: number; path: string }>>('volumes', 'write')
  const reader = Cls.fromName<{ read(file: string): Promise<{ text: string; pid: number }> }>('volumes', 'Reader')

  const w = await write.remote('a.txt', 'from write')
  t.is(w.path, join(volumesDir, 'shared'), 'the container finds the volume where this process does')
  const r = await reader.read.remote('a.txt')
  t.is(r.text, 'from write')
  t.not(r.pid, w.pid, 'two container processes')
  t.true(isLinkTo(mount, w.path))
  // A caller on this machine shares it too.
  await Volume.fromName('shared').write('b.txt', 'from the caller')
  t.is((await reader.read.remote('b.txt')).text, 'from the caller')
  await write.remote('a.txt', 'written again')
  t.is((await reader.read.remote('a.txt')).text, 'written again')

  s.npx.kill('SIGTERM')
  await until(() => !existsSync(mount), 30_000, () => `the mount link to go with the server\n${s.out()}`)
  await until(() => records().length === 0, 10_000, 'the mount record to go')
  t.is(readFileSync(join(volumesDir, 'shared', 'a.txt'), 'utf8'), 'written again')
})

test.serial('npx berth volume: create, put, ls, get, rm, list and delete; paths that leave the volume are refused', async (t) => {
  const dir = userProject('berth-volume-cli-', () => {})
  removedAtEnd(t, dir)
  const env = { BERTH_VOLUMES_DIR: volumesDir }
  const run = (...args: string[]) => berth(['volume', ...args], env, { npx: true, cwd: dir })
  writeFileSync(join(dir, 'weights.bin'), 'w1')

  const missing = await run('ls', 'cli-vol')
  t.is(missing.code, 1)
  t.regex(missing.stderr, /no volume named 'cli-vol'.*npx berth volume create cli-vol/)
  t.is((await run('create', 'cli-vol')).code, 0)
  const again = await run('create', 'cli-vol')
  t.is(again.code, 1)
  t.regex(again.stdout, /already exists/)
  t.is((await run('put', 'cli-vol', 'weights.bin')).code, 0)
  t.is((await run('put', 'cli-vol', 'weights.bin', '/models/')).code, 0)
  t.is((await run('put', 'cli-vol', 'weights.bin', 'models/renamed.bin')).code, 0)
  t.is(Volume.fromName('cli-vol').path, join(volumesDir, 'cli-vol'))
  t.is((await Volume.fromName('cli-vol').read('models/renamed.bin')).toString(), 'w1', 'what the CLI put, through the API')

  const ls = await run('ls', 'cli-vol')
  t.is(ls.code, 0, ls.stderr)
  t.deepEqual(ls.stdout.trim().split('\n').map((l) => l.split('\t')[0]), ['models/', 'weights.bin'])
  t.is(ls.stdout.trim().split('\n')[1].split('\t')[1], '2', 'its size')
  const lsModels = await run('ls', 'cli-vol', 'models')
  t.deepEqual(lsModels.stdout.trim().split('\n').map((l) => l.split('\t')[0]), ['models/renamed.bin', 'models/weights.bin'])

  const out = await run('get', 'cli-vol', 'models/renamed.bin', '-')
  t.is(out.stdout, 'w1')
  t.is((await run('get', 'cli-vol', '/models/renamed.bin')).code, 0)
  t.is(readFileSync(join(dir, 'renamed.bin'), 'utf8'), 'w1')
  const clash = await run('get', 'cli-vol', 'weights.bin')
  t.is(clash.code, 1)
  t.regex(clash.stderr, /exists; pass --force to replace it/)
  t.is((await run('get', 'cli-vol', 'weights.bin', '--force')).code, 0)

  const escape = await run('get', 'cli-vol', '../../etc/passwd', '-')
  t.is(escape.code, 1)
  t.regex(escape.stderr, /leaves the volume \('\.\.'\)/)
  t.is((await run('put', 'cli-vol', 'weights.bin', '../x')).code, 1)
  const dirRm = await run('rm', 'cli-vol', 'models')
  t.is(dirRm.code, 1)
  t.regex(dirRm.stderr, /is a directory; .*-r/)
  t.is((await run('rm', 'cli-vol', 'models', '-r')).code, 0)
  t.is((await run('rm', 'cli-vol', 'weights.bin')).code, 0)
  t.is((await run('ls', 'cli-vol')).stdout, '')
  const gone = await run('rm', 'cli-vol', 'weights.bin')
  t.is(gone.code, 1)
  t.regex(gone.stderr, /no 'weights.bin' in the volume/)

  const list = await run('list')
  t.true(list.stdout.split('\n').includes(`cli-vol\t${join(volumesDir, 'cli-vol')}`), list.stdout)
  t.is((await run('delete', 'cli-vol')).code, 0)
  t.is((await run('delete', 'cli-vol')).code, 1)
  t.false(existsSync(join(volumesDir, 'cli-vol')))
  const usage = await run('frobnicate')
  t.is(usage.code, 2)
  t.regex(usage.stderr, /unknown command 'frobnicate'/)
  const help = await berth(['help', 'volume'], env, { npx: true, cwd: dir })
  t.regex(help.stdout, /berth volume put <name> <local-file> \[path\]/)
})
