// @build from the user's view: runs once (not per container or parameter set), leaves a marker
// in BERTH_CACHE_DIR that lets later runs skip it; @build stacked on @enter runs in both phases.
import test from 'ava'
import { mkdtempSync, readdirSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { App, Cls, build, concurrent, enter, method, parameter } from 'berth'
import { berth, lines } from './_cli.ts'
import { sleep, within } from './_util.ts'


// This process's cache: a fresh temp dir, read by berth when a build runs.
const cacheDir = mkdtempSync(join(tmpdir(), 'berth-build-test-'))
process.env.BERTH_CACHE_DIR = cacheDir
test.after.always(() => rmSync(cacheDir, { recursive: true, force: true }))

const markers = (dir: string) => readdirSync(dir).filter((f) => /^build-.*\.done$/.test(f))

// ---------------------------------------------------------------------------------------------

let builds = 0
let enters = 0
const onceApp = new App('build-once')

@onceApp.cls({ maxContainers: 2 })
@concurrent({ maxInputs: 1 })
class Model {
  @parameter() variant = 'a'
  @build() async download() {
    builds++
    await sleep(30)
  }
  @enter() load() {
    enters++
  }
  @method() async predict(x: number): Promise<string> {
    await sleep(10)
    return `${this.variant}:${x}`
  }
}

test.serial('@build runs once for all containers and parameter sets, and leaves a marker in BERTH_CACHE_DIR', async (t) => {
  const out = await within(10_000, onceApp.run(async () => {
    const a = Cls.of(Model, { variant: 'a' })
    const b = Cls.of(Model, { variant: 'b' })
    return Promise.all([1, 2, 3, 4, 5, 6].flatMap((x) => [a.predict.remote(x), b.predict.remote(x)]))
  }))
  t.is(out.length, 12)
  t.is(out[0], 'a:1')
  t.is(out[1], 'b:1')
  t.is(builds, 1)
  t.true(enters >= 2, `each parameter set entered its own container (${enters} enters)`)
  t.true(markers(cacheDir).some((f) => f.includes('Model')), `a marker for Model in ${cacheDir}: ${markers(cacheDir).join(', ')}`)
  // A later run in this process: the build is not repeated.
  await within(10_000, onceApp.run(() => Cls.of(Model, { variant: 'c' }).predict.remote(0)))
  t.is(builds, 1)
})

let warmCalls = 0
const stackedApp = new App('build-stacked')

@stackedApp.cls()
class Warm {
  @parameter() n = 0
  @build() @enter() warm() {
    warmCalls++
  }
  @method() async calls(): Promise<number> {
    return warmCalls
  }
}

test.serial('@build stacked on @enter runs at build time and again when a container enters', async (t) => {
  await within(10_000, stackedApp.run(async () => {
    t.is(await Cls.of(Warm).calls.remote(), 2, 'build + enter of the first container')
    t.is(await Cls.of(Warm, { n: 1 }).calls.remote(), 3, 'a second container enters; the build is cached')
  }))
})

// ---------------------------------------------------------------------------------------------
// Across processes: the marker is what lets a second run skip the build.

const fixture = join('__test__', 'fixtures', 'build-app.ts')

test('a second `berth run` skips @build thanks to the marker; removing the marker builds again', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'berth-build-cli-'))
  try {
    const env = { BERTH_CACHE_DIR: dir }
    const first = await berth(['run', fixture], env)
    t.is(first.code, 0, first.stderr)
    t.deepEqual(lines(first.stdout), ['[build] download', '[warm]', '[warm]', '[enter] load', 'pong'])
    t.is(markers(dir).length, 1, 'the build left one marker in BERTH_CACHE_DIR')

    const second = await berth(['run', fixture], env)
    t.is(second.code, 0, second.stderr)
    t.deepEqual(lines(second.stdout), ['[warm]', '[enter] load', 'pong'], 'no build: only the enter hooks')

    for (const m of markers(dir)) rmSync(join(dir, m))
    const third = await berth(['run', fixture], env)
    t.is(third.code, 0, third.stderr)
    t.deepEqual(lines(third.stdout), ['[build] download', '[warm]', '[warm]', '[enter] load', 'pong'])
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})

test('`berth build app.ts` runs the @build hooks once and caches them for `berth run`', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'berth-build-cmd-'))
  try {
    const env = { BERTH_CACHE_DIR: dir }
    const built = await berth(['build', fixture], env)
    t.is(built.code, 0, built.stderr)
    t.true(lines(built.stdout).includes('[build] download'))
    t.false(lines(built.stdout).includes('[enter] load'), 'build does not start containers')
    t.is(markers(dir).length, 1)
    const run = await berth(['run', fixture], env)
    t.is(run.code, 0, run.stderr)
    t.deepEqual(lines(run.stdout), ['[warm]', '[enter] load', 'pong'])
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})
