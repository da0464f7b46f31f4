// Schedules (README "Schedules"): `schedule: new Period(...)` or `new Cron(...)` on
// app.function. `npx berth serve` calls the function with no arguments at each tick and never
// runs it twice at once (a tick that comes while the last run still runs is skipped);
// `npx berth run` does not run schedules. Bad schedules are InvalidErrors when the app is defined.
// Cron patterns' next times are tested in crates/berth-server/src/schedule.rs.
import test from 'ava'
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { App, Cron, InvalidError, Period } from 'berth'

import { berth } from './_cli.ts'
import { fixtureProject, npxServeListening, removedAtEnd } from './_project.ts'
import { sleep, until } from './_util.ts'

const project = () => fixtureProject('berth-schedule-', 'scheduled.ts')
const lines = (file: string) => (existsSync(file) ? readFileSync(file, 'utf8').trim().split('\n').filter(Boolean) : [])

test.serial('berth serve calls a scheduled function at each tick, with no arguments, and never runs it twice at once', async (t) => {
  const dir = project()
  const ticks = join(dir, 'ticks')
  const s = await npxServeListening(t, dir, [], { TICKS: ticks })
  const served = Date.now()
  await until(() => lines(ticks).filter((l) => l.startsWith('tick ')).length >= 3, 30_000, () => `three ticks\n${s.out()}`)
  const at = lines(ticks)
    .filter((l) => l.startsWith('tick '))
    .map((l) => Number(l.split(' ')[1]))
  // A period of 1 s: ticks on the second (its multiples since the epoch), no more than one a
  // second (the runs may start late: the first waits for its container to start).
  t.true(at.length <= (Date.now() - served) / 1000 + 1, `${at.length} ticks in ${Date.now() - served} ms`)

  // `slow` runs 2.5 s with a period of 1 s: its runs never overlap.
  await until(() => lines(ticks).filter((l) => l.startsWith('slow end')).length >= 2, 30_000, () => `two slow runs\n${s.out()}`)
  let running = 0
  for (const l of lines(ticks).filter((l) => l.startsWith('slow '))) {
    running += l.startsWith('slow start') ? 1 : -1
    t.true(running === 0 || running === 1, `at most one slow run at once:\n${lines(ticks).join('\n')}`)
  }
  t.regex(s.out(), /scheduled\/slow: the tick of .* is skipped: the last one still runs/)
})

test.serial('berth run does not run schedules', async (t) => {
  const dir = project()
  const ticks = join(dir, 'ticks')
  removedAtEnd(t, dir)
  for (const containers of ['embedded', 'process']) {
    const { code, stdout, stderr } = await berth(['run', 'app.ts', '--containers', containers], { TICKS: ticks }, { npx: true, cwd: dir })
    const out = stdout + stderr
    t.is(code, 0, out)
    t.regex(out, /entrypoint done/)
  }
  await sleep(200)
  t.deepEqual(lines(ticks), [], 'no tick ran')
})

test('a bad schedule is an InvalidError when the app is defined, naming what to fix', (t) => {
  const e1 = t.throws(() => new Cron('61 * * * *'), { instanceOf: InvalidError })
  t.regex(e1.message, /its minute field '61' does not parse/)
  t.regex(t.throws(() => new Cron('0 9 * * *', { timezone: 'Mars/Olympus' }), { instanceOf: InvalidError }).message, /not a time zone/)
  t.regex(t.throws(() => new Cron('* * *'), { instanceOf: InvalidError }).message, /give five fields/)
  t.regex(t.throws(() => new Period({ seconds: 0 }), { instanceOf: InvalidError }).message, /the period is zero/)
  t.regex(t.throws(() => new Period({ weeks: 1 } as never), { instanceOf: InvalidError }).message, /unknown unit 'weeks'/)
  const app = new App('bad-schedules')
  t.regex(
    t.throws(() => app.function({ schedule: new Period({ minutes: 1 }) }, async function needs(x: number) {
      return x
    }), { instanceOf: InvalidError }).message,
    /a schedule calls the function with no arguments at each tick; it takes 1 argument/,
  )
  t.regex(
    t.throws(() => app.function({ schedule: '0 9 * * *' as never }, async function plain() {}), { instanceOf: InvalidError }).message,
    /wrap a cron pattern: new Cron\('0 9 \* \* \*'\)/,
  )
  const scheduledClass = () => {
    @app.cls({ schedule: new Period({ minutes: 1 }) } as never)
    class Nightly {}
    return Nightly
  }
  t.regex(t.throws(scheduledClass, { instanceOf: InvalidError }).message, /put it on an app.function/)
  // A good one defines.
  t.notThrows(() => app.function({ schedule: new Cron('0 9 * * 1-5', { timezone: 'Europe/Paris' }) }, async function daily() {}))
})
