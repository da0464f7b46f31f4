// Web endpoints (README "API", web endpoints) as definitions: misuse is InvalidError naming the
// fix, and a web endpoint is still a function its app calls with .remote(value), in both
// container modes.
import test from 'ava'
import { App, InvalidError, __berthRegistryOf, batched, method, webEndpoint } from 'berth'

import { inBothModes, MODES } from './_modes.ts'

const app = new App('web-define')

test('@webEndpoint() options are checked: unknown keys, a bad method, a label with /, a wrong requiresAuth', (t) => {
  t.throws(() => webEndpoint({ methd: 'GET' } as any), {
    instanceOf: InvalidError,
    message: "@webEndpoint(): unknown webEndpoint option 'methd'. Did you mean 'method'? Valid options: method, label, requiresAuth.",
  })
  t.throws(() => webEndpoint({ method: 'FETCH' } as any), {
    instanceOf: InvalidError,
    message: '@webEndpoint(): webEndpoint method must be one of GET, POST, PUT, PATCH, DELETE, got "FETCH".',
  })
  t.throws(() => webEndpoint({ label: 'a/b' }), { instanceOf: InvalidError, message: /label is one path segment .*with no '\/', got "a\/b"/ })
  t.throws(() => webEndpoint({ requiresAuth: 'yes' } as any), { instanceOf: InvalidError, message: /requiresAuth must be true or false/ })
  t.throws(() => app.function({ webEndpoint: { label: '' } }, async function f() {}), {
    instanceOf: InvalidError,
    message: /^app\.function\('f'\): webEndpoint label is one path segment/,
  })
})

test('@webEndpoint() goes alone, on a plain method: not with @method() or @batched(), not on a generator, not as a class option', (t) => {
  t.throws(
    () => {
      class Both {
        @method() @webEndpoint() async m(_x: unknown) {}
      }
      return Both
    },
    { instanceOf: InvalidError, message: /'m' has both @webEndpoint\(\) and @method\(\)\. A @webEndpoint\(\) is callable already/ },
  )
  t.throws(
    () => {
      class Batch {
        @webEndpoint() @batched({ maxBatchSize: 2, waitMs: 1 }) async m(xs: number[]) {
          return xs
        }
      }
      return Batch
    },
    { instanceOf: InvalidError, message: /has both @batched\(\) and @webEndpoint\(\)/ },
  )
  t.throws(
    () => {
      class Gen {
        @webEndpoint() async *items() {
          yield 1
        }
      }
      return Gen
    },
    { instanceOf: InvalidError, message: /^@webEndpoint\(\) cannot be used on generator 'items' yet.*use @method\(\) and call it with remoteGen/ },
  )
  t.throws(
    () => {
      class Three {
        @webEndpoint() async m(_a: unknown, _b: unknown, _c: unknown) {}
      }
      return Three
    },
    { instanceOf: InvalidError, message: /declares 3 required parameters\. Take \(value, request\) at most/ },
  )
  t.throws(
    () => {
      @app.cls({ webEndpoint: {} } as any)
      class Opt {
        @webEndpoint() async m() {}
      }
      return Opt
    },
    { instanceOf: InvalidError, message: /put @webEndpoint\(\{ method, label \}\) on the method/ },
  )
  t.throws(() => app.function({ webEndpoint: {}, batched: { maxBatchSize: 2, waitMs: 1 } } as any, async function b(xs: number[]) { return xs }), {
    instanceOf: InvalidError,
    message: /^app\.function\('b'\): a web endpoint answers one JSON value or Response, so it cannot be batched/,
  })
})

test('.remote(value) calls a web endpoint with the value (no Request) and a returned Response arrives as one, in both container modes', async (t) => {
  for (const [i, run] of (await inBothModes('__test__/fixtures/web-remote.ts', 'remote')).entries()) {
    t.is(run.code, 0, run.out)
    t.like(run.result, {
      hello: { hi: 'Ada', request: 'none' },
      response: { isResponse: true, status: 201, kind: 'web', text: 'made it' },
    }, MODES[i])
    // The Request is the server's to pass: a caller passes the one value.
    t.regex(run.result.two, /^InvalidError: hello takes (0 to 1|at most 1) argument/, MODES[i])
  }
})

test('two web endpoints at one path are refused when the app is served, naming both', (t) => {
  const twice = new App('web-twice')
  twice.function({ webEndpoint: { label: 'hello' } }, async function a() {})
  @twice.cls()
  class B {
    @webEndpoint({ method: 'GET', label: 'hello' }) async b() {}
  }
  void B
  t.throws(() => __berthRegistryOf([twice]), {
    instanceOf: InvalidError,
    message: 'web endpoints a and B.b are both at /web-twice/hello: give one of them another label',
  })
})
