// Web endpoints (README "API", web endpoints) as definitions: misuse is InvalidError naming the
// fix, and a web endpoint is still a function its app calls with .remote(value), in both
// container modes.
import test from 'ava'
import { App, Cls, InvalidError, __berthRegistryOf, batched, fetchApp, method, nodeApp, webEndpoint, webServer } from 'berth'

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

test('@webEndpoint() goes alone: not with @method() or @batched(), not as a class option', (t) => {
  t.throws(
    () => {
      class Both {
        @method() @webEndpoint() async m(_x: unknown) {}
      }
      return Both
    },
    { instanceOf: InvalidError, message: /'m' has both @webEndpoint\(\) and @method\(\)\. @webEndpoint\(\) is a member of its own \(callable as \.remote\(value\) too/ },
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
    message: /^app\.function\('b'\): a web endpoint is one request, one input, so it cannot be batched itself/,
  })
})

test('@fetchApp(), @webServer(), @nodeApp(): options checked with the fix named, one per member, no generator; a handle says where they answer', (t) => {
  t.throws(() => (fetchApp as any)(class {}.prototype, { kind: 'method', name: 'x' }), { instanceOf: InvalidError, message: /^@fetchApp is a decorator factory: call it\. Suggestion: @fetchApp\(\{ label: 'api' \}\)/ })
  t.throws(() => webServer({ startupTimout: 3 } as any), { instanceOf: InvalidError, message: "@webServer(): unknown option 'startupTimout'. Did you mean 'startupTimeout'? Valid options: label, requiresAuth, port, startupTimeout." })
  t.throws(() => webServer({ port: 70000 }), { instanceOf: InvalidError, message: /port must be a whole number from 1 to 65535/ })
  t.throws(() => webServer({ startupTimeout: 0 }), { instanceOf: InvalidError, message: /startupTimeout is in seconds, a number above 0/ })
  t.throws(() => nodeApp({ port: 1 } as any), { instanceOf: InvalidError, message: /^@nodeApp\(\): unknown option 'port'\. Valid options: label, requiresAuth\./ })
  t.throws(() => fetchApp({ label: 'a/b' }), { instanceOf: InvalidError, message: /label is one path segment/ })
  t.throws(
    () => {
      class Both {
        @method() @fetchApp() m() {
          return { fetch: () => new Response('') }
        }
      }
      return Both
    },
    { instanceOf: InvalidError, message: /'m' has both @fetchApp\(\) and @method\(\)\. @fetchApp\(\) is a member of its own \(it answers HTTP requests, not calls\)/ },
  )
  t.throws(
    () => {
      class Gen {
        @nodeApp() *m() {}
      }
      return Gen
    },
    { instanceOf: InvalidError, message: /^@nodeApp\(\) on 'm': the member runs once per container and returns the app; make it a plain method/ },
  )
  const fixed = new App('web-apps-port')
  @fixed.cls()
  class Port {
    @webServer({ port: 18080 }) start() {}
  }
  void Port
  t.throws(() => __berthRegistryOf([fixed]), {
    instanceOf: InvalidError,
    message: /^@webServer\(\{ port: 18080 \}\) on Port\.start: every container would listen on port 18080\. Set maxContainers: 1 on Port, or leave port out/,
  })
  const webApps = new App('web-apps-define')
  @webApps.cls()
  class Site {
    @fetchApp() serve() {
      return { fetch: () => new Response('') }
    }
    @method() ping() {
      return 'pong'
    }
  }
  t.throws(() => (Cls.of(Site) as any).serve, {
    instanceOf: InvalidError,
    message: "Cls.of(Site).serve: 'serve' is a @fetchApp(): it answers HTTP requests under its path on the server's HTTP port, not calls; a handle calls methods only. Callable methods of Site: ping.",
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
