// Mistakes in defining or running an app fail where they are made, with InvalidError naming the fix.
import test from 'ava'
import { App, Cls, InvalidError, batched, method } from 'berth'

const app = new App('app-validation')

test('@app.cls without parentheses suggests @app.cls()', (t) => {
  t.throws(
    () => {
      // @ts-expect-error: used bare on purpose
      @app.cls
      class Bare {
        @method() async m() {}
      }
      return Bare
    },
    { instanceOf: InvalidError, message: /Suggestion: @app\.cls\(\)/ },
  )
})

test('@app.cls on a method says it decorates a class', (t) => {
  t.throws(
    () => {
      class Host {
        // @ts-expect-error: a class decorator on a method, on purpose
        @app.cls() m() {}
      }
      return Host
    },
    { instanceOf: InvalidError, message: /decorates a class.*method/ },
  )
})

test('@app.cls applied the legacy (experimentalDecorators) way says so', (t) => {
  class Legacy {}
  t.throws(() => (app.cls() as any)(Legacy), { instanceOf: InvalidError, message: /experimentalDecorators/ })
})

test('Cls.of on a class not registered with an app names @app.cls()', (t) => {
  class Loose {
    @method() async m() {}
  }
  t.throws(() => Cls.of(Loose), { instanceOf: InvalidError, message: /@app\.cls\(\)/ })
})

test('a class with no @method or @batched member is refused at Cls.of', (t) => {
  @app.cls()
  class Empty {
    plain() {}
  }
  t.throws(() => Cls.of(Empty), { instanceOf: InvalidError, message: /no @method\(\) or @batched\(\) member/ })
})

test('app.function needs a function, a name, and a name not used yet', (t) => {
  t.throws(() => (app.function as any)({ timeout: 1 }), { instanceOf: InvalidError, message: /second argument must be the function/ })
  t.throws(() => app.function({}, async () => 1), { instanceOf: InvalidError, message: /give the function a name/ })
  app.function({}, async function once() {})
  t.throws(() => app.function({}, async function once() {}), { instanceOf: InvalidError, message: /already has a function named 'once'.*`name` option/ })
})

test('app.run with its arguments swapped, or with options it does not have, says what it takes', async (t) => {
  let ran = false
  const body = async () => {
    ran = true
  }
  await t.throwsAsync(app.run({ containers: 'embedded' } as any, body as any), {
    instanceOf: InvalidError,
    message: /^app\.run\(options, fn\): the function comes first, as app\.run\(async \(\) => \{ \.\.\. \}, \{ containers: 'process' \}\)/,
  })
  await t.throwsAsync(app.run(body, { container: 'process' } as any), { instanceOf: InvalidError, message: /options is \{ containers\?: 'embedded' \| 'process' \}; it has no 'container'$/ })
  await t.throwsAsync(app.run(body, 'process' as any), { instanceOf: InvalidError, message: /options is .*, got process$/ })
  t.false(ran, 'nothing ran')
})

test('app.run rejects containers modes it does not have, and a second run while running', async (t) => {
  await t.throwsAsync(app.run({ containers: 'k8s' as any }), { instanceOf: InvalidError, message: /'embedded' \(default\) or 'process'/ })
  const other = new App('app-validation-twice')
  await other.run(async () => {
    await t.throwsAsync(other.run(), { instanceOf: InvalidError, message: /already running/ })
  })
})

test('new App needs a name', (t) => {
  t.throws(() => new App(''), { instanceOf: InvalidError, message: /non-empty string/ })
})

test('a generator cannot be batched: @batched() on an async * method and app.function({ batched }) on an async function* say so', (t) => {
  t.throws(
    () => {
      class Batches {
        // @ts-expect-error: a generator is no batched method, on purpose
        @batched({ maxBatchSize: 4, waitMs: 1 }) async *items(xs: number[]) {
          yield* xs
        }
      }
      return Batches
    },
    { instanceOf: InvalidError, message: /^@batched\(\) cannot be used on generator 'items'.*Use @method\(\) for the generator/ },
  )
  t.throws(() => app.function({ batched: { maxBatchSize: 4, waitMs: 1 } } as any, async function* gens(xs: number[]) {
    yield* xs
  }), { instanceOf: InvalidError, message: /^app\.function\('gens'\): a generator cannot be batched.*Drop the batched option/ })
})
