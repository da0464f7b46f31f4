// app.include(other) and tags (README "Apps: include and tags"): an included app's functions and
// classes are served under the including app's name, its own handles call them there (inside a
// container too), and it is not served on its own; `berth app list` shows the app's tags.
// Misuse is refused saying why.
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'

import test from 'ava'
import { App, Cls, Function, InvalidError } from 'berth'

import { berth } from './_cli.ts'
import { npxServe, npxServeListening, userProject } from './_project.ts'
import { closed } from './_util.ts'

const LIB = `import { App, method } from 'berth'
export const lib = new App('lib')
export const shout = lib.function(async function shout(s: string) { return s.toUpperCase() })
@lib.cls()
export class Counter {
  @method() async twice(n: number) { return n * 2 }
}
`

const MAIN = `import { App } from 'berth'
import { lib, shout } from './lib.ts'
export const app = new App('main', { tags: { team: 'search', tier: 'gold' } }).include(lib)
// A function of the including app calling the included one through its own handle.
app.function(async function greet(s: string) { return 'hello ' + (await shout.remote(s)) })
`

test('berth serve: the included app serves under the including name; its handles reach it from a container; app list shows the tags', async (t) => {
  const dir = userProject('berth-include-', (d) => {
    writeFileSync(join(d, 'lib.ts'), LIB)
    writeFileSync(join(d, 'app.ts'), MAIN)
  })
  const { server, stdout } = await npxServeListening(t, dir, ['--no-reload'])
  t.regex(stdout(), /serving 'main' on/, 'one app is served')
  t.notRegex(stdout(), /'lib'/)
  App.lookup('main', { server })
  App.lookup('lib', { server })
  t.is(await Function.fromName<(s: string) => Promise<string>>('main', 'shout').remote('hi'), 'HI')
  t.is(await Function.fromName<(s: string) => Promise<string>>('main', 'greet').remote('x'), 'hello X')
  t.is(await Cls.fromName<{ twice(n: number): Promise<number> }>('main', 'Counter').twice.remote(21), 42)
  await t.throwsAsync(Function.fromName('lib', 'shout').remote('hi'), { instanceOf: InvalidError, message: /main/ })

  const list = await berth(['app', 'list'], { BERTH_SERVER: server }, { npx: true, cwd: dir })
  t.is(list.code, 0, list.stderr)
  t.regex(list.stdout, /^APP\s+STATE\s+FUNCTION\s+METHODS\s+CONTAINERS\s+TAGS$/m)
  t.regex(list.stdout, /^main\s+serving\s+shout\s+-\s+\d+\s+team=search,tier=gold$/m)
  t.regex(list.stdout, /^main\s+serving\s+Counter\s+twice\s+\d+\s+team=search,tier=gold$/m)
  t.notRegex(list.stdout, /^lib\s/m)
})

test('berth serve: an included app and its includer both serving one name is refused at start, naming both', async (t) => {
  const dir = userProject('berth-include-dup-', (d) => {
    writeFileSync(join(d, 'lib.ts'), LIB)
    writeFileSync(join(d, 'app.ts'), MAIN.replace('async function greet', 'async function shout'))
  })
  const s = npxServe(t, dir, ['--no-reload'], {})
  const code = await closed(s.npx)
  t.not(code, 0)
  t.regex(s.out(), /app 'main' includes 'lib', and both serve a function or class named 'shout'/)
})

test('embedded: included handles run in the includer; running the included app alone, cycles and a second includer are refused', async (t) => {
  const lib = new App(`inc-lib-${process.pid}`)
  const double = lib.function(async function double(n: number) {
    return n * 2
  })
  const main = new App(`inc-main-${process.pid}`, { tags: { team: 'ml' } })
  t.is(main.include(lib), main)
  t.is(main.include(lib), main, 'including twice is one include')
  t.deepEqual(main.getTags(), { team: 'ml' })
  main.setTags({ stage: 'dev' })
  t.deepEqual(main.getTags(), { team: 'ml', stage: 'dev' })
  await main.run(async () => {
    t.is(await double.remote(21), 42)
  })
  await t.throwsAsync(lib.run(async () => {}), { instanceOf: InvalidError, message: new RegExp(`run 'inc-main-${process.pid}' instead`) })
  t.throws(() => lib.include(main), { instanceOf: InvalidError, message: /would include it back/ })
  t.throws(() => main.include(main), { instanceOf: InvalidError, message: /cannot include itself/ })
  t.throws(() => new App(`inc-other-${process.pid}`).include(lib), { instanceOf: InvalidError, message: /is included in .* already/ })
  t.throws(() => main.include({} as App), { instanceOf: InvalidError, message: /pass another App/ })
})
