// `berth run file.ts::name` and the CLI's small answers (README "CLI"):
// arguments go after `--` and are checked as a call is before anything starts, a class method
// runs as `::Class.method` with `--params`, every subcommand answers --help, --version, and a
// build with nothing to build says so. Each case runs `berth` as a user does.
import test from 'ava'
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import { berth, lines, root } from './_cli.ts'

const app = join('__test__', 'fixtures', 'first-hour.ts')
const run = (name: string, ...rest: string[]) => berth(['run', `${app}::${name}`, ...rest])

/** A one-line answer, no stack trace: what a user reads. */
function oneLine(t: any, stderr: string): string {
  const out = lines(stderr)
  t.is(out.length, 1, stderr)
  t.notRegex(stderr, /^\s+at /m, 'no stack trace')
  return out[0] ?? ''
}

test("an argument put before `--` is an unknown flag, and the answer gives the command with `--` in place", async (t) => {
  const r = await run('add', '--a', '1')
  t.is(r.code, 2)
  const line = oneLine(t, r.stderr)
  t.true(line.startsWith('berth run: unknown flag --a; known: --containers, --params.'), line)
  t.true(line.endsWith(`go after \`--\`: berth run ${app}::add -- --a 1`), line)
})

test('::name with too few arguments fails as such a call does, before anything starts, and says how to pass them', async (t) => {
  const r = await run('add')
  t.is(r.code, 2)
  t.is(r.stdout, '', 'nothing ran')
  t.is(
    oneLine(t, r.stderr),
    `berth run: add takes 1 to 2 arguments (a, b); got 0. Pass it after \`--\`, by name or in order: ` +
      `berth run ${app}::add -- --a <a> (or in order: -- <a>)`,
  )
  const after = await run('add', '--', '--b', '5')
  t.is(after.code, 2)
  t.regex(oneLine(t, after.stderr), /^berth run: add needs 'a' \(it has no default\)\. Pass it after `--`: /)
  const many = await run('add', '--', '1', '2', '3')
  t.is(many.code, 2)
  t.is(oneLine(t, many.stderr), 'berth run: add takes 1 to 2 arguments (a, b); got 3: 1 2 3')
})

test('an unknown named argument is one line naming the parameters, not a stack', async (t) => {
  const r = await run('add', '--', '--c', '9')
  t.is(r.code, 2)
  const line = oneLine(t, r.stderr)
  t.true(line.startsWith("berth run: add has no parameter 'c'."), line)
  t.true(line.includes('Its parameters: a, b.'), line)
  const typo = await run('add', '--', '--bb', '9')
  t.regex(oneLine(t, typo.stderr), /Did you mean --b\?/)
})

test('arguments by name, in order, or both; a left-out parameter with a default gets it', async (t) => {
  const cases: [string[], string][] = [
    [['--a', '1'], '11'],
    [['1', '2'], '3'],
    [['--b', '5', '--a', '1'], '6'],
    [['1', '--b=7'], '8'],
  ]
  for (const [args, want] of cases) {
    const r = await run('add', '--containers', 'embedded', '--', ...args)
    t.is(r.code, 0, r.stderr)
    t.deepEqual(lines(r.stdout), [want], args.join(' '))
  }
})

test('::Class.method runs a class method; --params sets its @parameter values', async (t) => {
  const plain = await run('Model.info', '--', 'hi')
  t.is(plain.code, 0, plain.stderr)
  t.deepEqual(lines(plain.stdout), ['hi small'])
  const large = await run('Model.info', '--params', '{"variant":"large"}', '--', '--prefix', 'hey')
  t.is(large.code, 0, large.stderr)
  t.deepEqual(lines(large.stdout), ['hey large'])
  // A @batched method is called with one item and prints one result, as .remote() does.
  const batched = await run('Model.lengths', '--containers', 'embedded', '--', 'abcd')
  t.is(batched.code, 0, batched.stderr)
  t.deepEqual(lines(batched.stdout), ['4'])
})

test('::name of a generator prints its items, one line each, in both container modes', async (t) => {
  const gen = join('__test__', 'fixtures', 'generators.ts')
  for (const containers of ['embedded', 'process']) {
    const out = await berth(['run', `${gen}::letters`, '--containers', containers, '--', 'abc'])
    t.is(out.code, 0, out.stderr)
    t.deepEqual(lines(out.stdout), ['a', 'b', 'c'], containers)
  }
})

test('--params mistakes and a class without its method are one line each, naming the fix', async (t) => {
  const typo = await run('Model.info', '--params', '{"varient":"large"}', '--', 'hi')
  t.is(typo.code, 2)
  t.regex(oneLine(t, typo.stderr), /unknown parameter 'varient'\. Did you mean 'variant'\?.*--params/)
  const notJson = await run('Model.info', '--params', 'variant=large', '--', 'hi')
  t.is(notJson.code, 2)
  t.regex(oneLine(t, notJson.stderr), /--params takes a JSON object .* e\.g\. --params '\{"variant":"large"\}'/)
  const onFunction = await run('add', '--params', '{}', '--', '1')
  t.is(onFunction.code, 2)
  t.regex(oneLine(t, onFunction.stderr), /--params sets a class's @parameter values; add, a function, is not a class method/)
  const cls = await run('Model')
  t.is(cls.code, 2)
  t.is(oneLine(t, cls.stderr), `berth run: Model is a class: run one of its methods: ${app}::Model.info, ${app}::Model.lengths`)
  const method = await run('Model.inf')
  t.regex(oneLine(t, method.stderr), /Model has no method 'inf'\. Did you mean 'info'\?/)
})

test('an unknown ::name lists the class methods among the known names', async (t) => {
  const r = await run('info')
  t.is(r.code, 2)
  t.is(
    oneLine(t, r.stderr),
    `berth run: no entrypoint, function or class method named 'info' in ${app}. Known: add, slow, Model.info, Model.lengths`,
  )
  const none = await berth(['run', app])
  t.is(none.code, 2)
  t.regex(oneLine(t, none.stderr), /has 0 local entrypoints; add app\.localEntrypoint\(.*\) or run one of: .*::add, .*::Model\.info, .*::Model\.lengths$/)
})

test('--version and -v print the package version', async (t) => {
  const { version } = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'))
  for (const flag of ['--version', '-v']) {
    const r = await berth([flag])
    t.is(r.code, 0, r.stderr)
    t.is(r.stdout, `berth ${version}\n`)
  }
})

test('every subcommand answers --help (and `berth help <command>`), doing nothing else', async (t) => {
  const secrets = mkdtempSync(join(tmpdir(), 'berth-secrets-'))
  t.teardown(() => rmSync(secrets, { recursive: true, force: true }))
  for (const args of [
    ['run', '--help'],
    ['serve', '--help'],
    ['build', '--help'],
    ['deploy', '--help'],
    ['deploy', 'app.ts', '--target', 'kubernetes', '-h'],
    ['secret', '--help'],
    ['secret', 'create', '--help'],
    ['secret', 'create', 'hf', '--help'],
    ['secret', 'list', '-h'],
    ['help', 'run'],
    ['help', 'deploy'],
    ['help', 'secret'],
  ]) {
    const r = await berth(args, { BERTH_SECRETS_DIR: secrets })
    t.is(r.code, 0, `${args.join(' ')}: ${r.stderr}`)
    t.regex(r.stdout, /^Usage: berth /, args.join(' '))
  }
  t.deepEqual(readdirSync(secrets), [], 'no secret was created')
})

test('berth build on a file without @build hooks says there is nothing to build', async (t) => {
  const r = await berth(['build', app])
  t.is(r.code, 0, r.stderr)
  t.deepEqual(lines(r.stdout), [`berth build: no @build hooks in ${app}: nothing to build (a class method marked @build() runs here)`])
})
