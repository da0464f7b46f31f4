import test from 'ava'
import {
  batched,
  build,
  concurrent,
  enter,
  exit,
  getClassMeta,
  getParamSpecs,
  method,
  parameter,
  validateParams,
} from '../src/define/decorators.ts'
import {
  BerthError,
  errorFromData,
  errorToData,
  FunctionTimeoutError,
  initError,
  InitError,
  inputError,
  InputCancelledError,
  InvalidError,
  RemoteError,
  SerializationError,
} from '../src/shared/errors.ts'
import { normalizeOptions } from '../src/define/options.ts'
import { applyParams } from '../src/run/pool.ts'
import { Retries } from '../src/define/retries.ts'
import { currentFunctionCallId, currentInput, currentInputId, isLocal, runInContext } from '../src/run/context.ts'

// Decorators applied the wrong way on purpose need their types loosened.
const loose = (d: unknown) => d as any

const LEGACY = /TC39 standard decorators.*Remove "experimentalDecorators"/s

// ---------------------------------------------------------------------------------------------
// errors

test('error classes: names, hierarchy, stack header', (t) => {
  for (const [cls, name] of [
    [InvalidError, 'InvalidError'],
    [FunctionTimeoutError, 'FunctionTimeoutError'],
    [InputCancelledError, 'InputCancelledError'],
    [SerializationError, 'SerializationError'],
  ] as const) {
    const e = new cls('boom')
    t.true(e instanceof BerthError && e instanceof Error)
    t.is(e.name, name)
    t.true(e.stack!.startsWith(`${name}: boom`))
    t.false(Object.keys(e).includes('name'))
  }
})

test('RemoteError.from keeps name, message and stack of the original', (t) => {
  const orig = new TypeError('bad type')
  const e = RemoteError.from(orig)
  t.is(e.name, 'RemoteError')
  t.is(e.remoteName, 'TypeError')
  t.is(e.message, 'bad type')
  t.is(e.remoteStack, orig.stack)
  const s = RemoteError.from('just a string')
  t.is(s.remoteName, 'Error')
  t.is(s.message, 'just a string')
  t.is(s.remoteStack, undefined)
  t.is(RemoteError.from({ name: 'Custom', message: 'm' }).remoteName, 'Custom')
})

test('InitError.from carries the @enter error', (t) => {
  const e = InitError.from(new RangeError('no model'))
  t.is(e.name, 'InitError')
  t.is(e.remoteName, 'RangeError')
  t.is(e.message, 'no model')
  t.regex(e.remoteStack!, /RangeError: no model/)
})

test('errorToData/errorFromData round-trip our classes; others become RemoteError', (t) => {
  const back = (e: unknown) => errorFromData(JSON.parse(JSON.stringify(errorToData(e))))
  t.true(back(new FunctionTimeoutError('late')) instanceof FunctionTimeoutError)
  t.true(back(new InputCancelledError('gone')) instanceof InputCancelledError)
  t.true(back(new InvalidError('bad')) instanceof InvalidError)
  t.true(back(new SerializationError('x')) instanceof SerializationError)
  const init = back(InitError.from(new TypeError('t')))
  t.true(init instanceof InitError)
  t.is((init as InitError).remoteName, 'TypeError')
  const remote = back(new SyntaxError('s'))
  t.true(remote instanceof RemoteError)
  t.is((remote as RemoteError).remoteName, 'SyntaxError')
  t.is(remote.message, 's')
  const nested = back(RemoteError.from(new URIError('u')))
  t.is((nested as RemoteError).remoteName, 'URIError')
  t.deepEqual(errorToData(42), { name: 'Error', message: '42' })
})

test('one description of a user error for both modes: an error let through from a failed call is the one it carries; the control plane\'s InitError wording is read back', (t) => {
  // A call made by user code failed and the code let the error through: the caller sees the
  // original error, not a RemoteError named RemoteError.
  const nested = inputError(RemoteError.from(new TypeError('inner bad')))
  t.true(nested instanceof RemoteError)
  t.is((nested as RemoteError).remoteName, 'TypeError')
  t.is(nested.message, 'inner bad')
  t.regex((nested as RemoteError).remoteStack!, /^TypeError: inner bad/)
  // The control plane sends an @enter failure as InitError '<name>: <message>' (plane.rs done()).
  const fromPlane = errorFromData({ name: 'InitError', message: 'RangeError: weights missing: /models', stack: 'RangeError: weights missing: /models\n    at load' })
  const embedded = initError(new RangeError('weights missing: /models'))
  for (const e of [fromPlane, embedded] as InitError[]) {
    t.true(e instanceof InitError)
    t.is(e.remoteName, 'RangeError')
    t.is(e.message, 'weights missing: /models')
  }
  const bare = errorFromData({ name: 'InitError', message: 'the container failed to start' }) as InitError
  t.is(bare.remoteName, 'Error')
  t.is(bare.message, 'the container failed to start')
})

// ---------------------------------------------------------------------------------------------
// decorators used without parentheses

test('@method without parentheses', (t) => {
  t.throws(() => {
    class A {
      @loose(method) run() {}
    }
    return A
  }, { instanceOf: InvalidError, message: /Suggestion: @method\(\)/ })
})

test('@enter, @exit, @build, @parameter without parentheses', (t) => {
  t.throws(() => class {
    @loose(enter) load() {}
  }, { instanceOf: InvalidError, message: /Suggestion: @enter\(\)/ })
  t.throws(() => class {
    @loose(exit) close() {}
  }, { instanceOf: InvalidError, message: /Suggestion: @exit\(\)/ })
  t.throws(() => class {
    @loose(build) dl() {}
  }, { instanceOf: InvalidError, message: /Suggestion: @build\(\)/ })
  t.throws(() => class {
    @loose(parameter) model = 'x'
  }, { instanceOf: InvalidError, message: /Suggestion: @parameter\(\)/ })
})

test('@batched and @concurrent without parentheses', (t) => {
  t.throws(() => class {
    @loose(batched) many(xs: number[]) { return xs }
  }, { instanceOf: InvalidError, message: /Suggestion: @batched\(\{ maxBatchSize/ })
  t.throws(() => {
    @loose(concurrent) class A {}
    return A
  }, { instanceOf: InvalidError, message: /Suggestion: @concurrent\(\{ maxInputs/ })
})

// ---------------------------------------------------------------------------------------------
// legacy experimentalDecorators calls

test('legacy member decorator call (target, key, descriptor) is rejected', (t) => {
  class A {
    run() {}
  }
  const desc = Object.getOwnPropertyDescriptor(A.prototype, 'run')
  for (const d of [method(), enter(), exit(), build(), batched({ maxBatchSize: 2, waitMs: 1 })]) {
    t.throws(() => loose(d)(A.prototype, 'run', desc), { instanceOf: InvalidError, message: LEGACY })
  }
  t.throws(() => loose(parameter())(A.prototype, 'model'), { instanceOf: InvalidError, message: LEGACY })
})

test('legacy class decorator call (constructor only) is rejected', (t) => {
  t.throws(() => loose(concurrent({ maxInputs: 2 }))(class {}), { instanceOf: InvalidError, message: LEGACY })
})

test('legacy call without parentheses names both fixes', (t) => {
  class A {
    run() {}
  }
  const desc = Object.getOwnPropertyDescriptor(A.prototype, 'run')
  const err = t.throws(() => loose(method)(A.prototype, 'run', desc), { instanceOf: InvalidError })
  t.regex(err!.message, /Suggestion: @method\(\)/)
  t.regex(err!.message, LEGACY)
  t.throws(() => loose(concurrent)(class {}), { instanceOf: InvalidError, message: LEGACY })
})

// ---------------------------------------------------------------------------------------------
// bad combinations

test('lifecycle decorator combined with @method, either order', (t) => {
  t.throws(() => class {
    @method() @enter() load() {}
  }, { instanceOf: InvalidError, message: /'load' has both @enter\(\) and @method\(\).*separate methods/s })
  t.throws(() => class {
    @enter() @method() load() {}
  }, { instanceOf: InvalidError, message: /'load' has both @enter\(\) and @method\(\)/ })
  t.throws(() => class {
    @loose(exit()) @batched({ maxBatchSize: 2, waitMs: 0 }) close(xs: number[]) { return xs }
  }, { instanceOf: InvalidError, message: /'close' has both @exit\(\) and @batched\(\)/ })
  t.throws(() => class {
    @method() @build() dl() {}
  }, { instanceOf: InvalidError, message: /@build\(\) and @method\(\)/ })
  t.throws(() => class {
    @enter({ snap: true }) @method() s() {}
  }, { instanceOf: InvalidError, message: /@enter\(\{ snap: true \}\) and @method\(\)/ })
})

test('@method and @batched on one member', (t) => {
  t.throws(() => class {
    @method() @batched({ maxBatchSize: 2, waitMs: 0 }) m(xs: number[]) { return xs }
  }, { instanceOf: InvalidError, message: /both @method\(\) and @batched\(\).*alone/ })
})

test('the same decorator twice, and lifecycle pairs other than build+enter', (t) => {
  t.throws(() => class {
    @method() @method() m() {}
  }, { instanceOf: InvalidError, message: /applied twice to 'm'. Remove one/ })
  t.throws(() => class {
    @enter() @exit() m() {}
  }, { instanceOf: InvalidError, message: /Only @build\(\) may be combined with @enter\(\)/ })
  t.throws(() => class {
    @enter() @enter({ snap: true }) m() {}
  }, { instanceOf: InvalidError, message: /Only @build\(\) may be combined/ })
  t.throws(() => {
    @concurrent({ maxInputs: 2 }) @concurrent({ maxInputs: 3 }) class A {}
    return A
  }, { instanceOf: InvalidError, message: /applied twice/ })
})

// ---------------------------------------------------------------------------------------------
// wrong kind of member

test('method decorators on a field, getter, setter or accessor', (t) => {
  t.throws(() => class {
    @loose(method()) run = async () => 1
  }, { instanceOf: InvalidError, message: /'run' is a field.*Write it as a method: async run/s })
  t.throws(() => class {
    @loose(enter()) get x() { return 1 }
  }, { instanceOf: InvalidError, message: /decorates a method, but 'x' is a getter/ })
  t.throws(() => class {
    @loose(exit()) set x(_v: number) {}
  }, { instanceOf: InvalidError, message: /'x' is a setter/ })
  t.throws(() => class {
    @loose(batched({ maxBatchSize: 2, waitMs: 0 })) accessor x = 1
  }, { instanceOf: InvalidError, message: /'x' is an accessor/ })
})

test('@parameter on a method, and member decorators on a class', (t) => {
  t.throws(() => class {
    @loose(parameter()) m() {}
  }, { instanceOf: InvalidError, message: /@parameter\(\) decorates a field, but 'm' is a method/ })
  t.throws(() => {
    @loose(method()) class A {}
    return A
  }, { instanceOf: InvalidError, message: /decorates a method, not a class/ })
  t.throws(() => class {
    @loose(concurrent({ maxInputs: 1 })) m() {}
  }, { instanceOf: InvalidError, message: /@concurrent\(\) decorates a class.*Put it above the class/s })
})

test('private and static members are rejected', (t) => {
  t.throws(() => class {
    @method() #secret() {}
  }, { instanceOf: InvalidError, message: /private member '#secret'.*Drop the '#'/ })
  t.throws(() => class {
    @enter() static boot() {}
  }, { instanceOf: InvalidError, message: /static member 'boot'.*Drop 'static'/ })
  t.throws(() => class {
    @parameter() static model = 'x'
  }, { instanceOf: InvalidError, message: /static member 'model'/ })
  const sym = Symbol('s')
  t.throws(() => class {
    @method() [sym]() {}
  }, { instanceOf: InvalidError, message: /symbol-named member/ })
})

test('unknown decorator options', (t) => {
  t.throws(() => enter({ snapshot: true } as any), { instanceOf: InvalidError, message: /unknown option 'snapshot'. Did you mean 'snap'/ })
  t.throws(() => enter({ snap: 'yes' } as any), { instanceOf: InvalidError, message: /snap must be true or false/ })
  t.throws(() => (method as any)({}), { instanceOf: InvalidError, message: /takes no options/ })
  t.throws(() => batched({ maxBatchSize: 2, waitMs: 0, maxWait: 3 } as any), { instanceOf: InvalidError, message: /unknown option 'maxWait'/ })
})

// ---------------------------------------------------------------------------------------------
// bounds

test('batching bounds: 1 ≤ maxBatchSize ≤ 1000 integer, 0 ≤ waitMs ≤ 600000', (t) => {
  for (const maxBatchSize of [0, 1001, 1.5, -1, NaN, '8' as any]) {
    t.throws(() => batched({ maxBatchSize, waitMs: 1 }), {
      instanceOf: InvalidError,
      message: /maxBatchSize must be an integer between 1 and 1000/,
    })
  }
  for (const waitMs of [-1, 600_001, NaN, undefined as any]) {
    t.throws(() => batched({ maxBatchSize: 4, waitMs }), {
      instanceOf: InvalidError,
      message: /waitMs must be a number of milliseconds between 0 and 600000/,
    })
  }
  t.throws(() => (batched as any)(), { instanceOf: InvalidError, message: /e\.g\. \{ maxBatchSize: 64, waitMs: 10 \}/ })
  for (const [maxBatchSize, waitMs] of [[1, 0], [1000, 600_000], [64, 2.5]]) {
    t.notThrows(() => batched({ maxBatchSize, waitMs }))
  }
})

test('concurrency bounds: maxInputs ≥ 1 integer, 1 ≤ targetInputs ≤ maxInputs', (t) => {
  for (const maxInputs of [0, -3, 1.5, NaN]) {
    t.throws(() => concurrent({ maxInputs }), { instanceOf: InvalidError, message: /maxInputs must be an integer ≥ 1/ })
  }
  t.throws(() => concurrent({ maxInputs: 4, targetInputs: 0 }), { instanceOf: InvalidError, message: /targetInputs must be an integer ≥ 1/ })
  t.throws(() => concurrent({ maxInputs: 4, targetInputs: 5 }), {
    instanceOf: InvalidError,
    message: /targetInputs \(5\) is greater than maxInputs \(4\).*lower targetInputs or raise maxInputs/s,
  })
  @concurrent({ maxInputs: 8 })
  class A {}
  t.deepEqual(getClassMeta(A).concurrent, { maxInputs: 8, targetInputs: 8 })
})

// ---------------------------------------------------------------------------------------------
// metadata

class Base {
  @enter({ snap: true }) snapBase() {}
  @enter() loadBase() {}
  @method() shared(xs: number[]) { return xs }
  @method() baseOnly() {}
  @exit() closeBase() {}
}

class Sub extends Base {
  @enter() loadSub() {}
  @enter({ snap: true }) snapSub() {}
  @batched({ maxBatchSize: 4, waitMs: 1 }) override shared(xs: number[]) { return xs }
  @method() subOnly() {}
  @exit() closeSub() {}
}

test('hook and method order: definition order, base class first', (t) => {
  const m = getClassMeta(Sub)
  t.deepEqual(m.snapEnter, ['snapBase', 'snapSub'])
  t.deepEqual(m.enter, ['loadBase', 'loadSub'])
  t.deepEqual(m.exit, ['closeBase', 'closeSub'])
  t.deepEqual(m.methods, [
    { name: 'shared', batched: { maxBatchSize: 4, waitMs: 1 } }, // override keeps the base position
    { name: 'baseOnly' },
    { name: 'subOnly' },
  ])
})

test('a subclass does not mutate its parent metadata', (t) => {
  getClassMeta(Sub)
  const m = getClassMeta(Base)
  t.deepEqual(m.enter, ['loadBase'])
  t.deepEqual(m.snapEnter, ['snapBase'])
  t.deepEqual(m.methods, [{ name: 'shared' }, { name: 'baseOnly' }])
  t.deepEqual(m.exit, ['closeBase'])
  t.is(m.concurrent, undefined)
  @concurrent({ maxInputs: 3, targetInputs: 2 })
  class Sub2 extends Base {}
  t.deepEqual(getClassMeta(Sub2).concurrent, { maxInputs: 3, targetInputs: 2 })
  t.is(getClassMeta(Base).concurrent, undefined)
})

test('an overridden hook runs once, at the base position; plain subclasses inherit metadata', (t) => {
  class A {
    @enter() a() {}
    @enter() b() {}
  }
  class B extends A {
    @enter() override a() {}
  }
  class C extends B {}
  t.deepEqual(getClassMeta(B).enter, ['a', 'b'])
  t.deepEqual(getClassMeta(C).enter, ['a', 'b'])
  t.deepEqual(getClassMeta(class {}), { snapEnter: [], enter: [], exit: [], build: [], methods: [], params: [] })
})

test('snap enters are listed separately from plain enters', (t) => {
  class A {
    @enter() plain() {}
    @enter({ snap: true }) snapped() {}
    @enter({ snap: false }) plain2() {}
  }
  const m = getClassMeta(A)
  t.deepEqual(m.snapEnter, ['snapped'])
  t.deepEqual(m.enter, ['plain', 'plain2'])
})

test('@build stacked on @enter lists the member in both', (t) => {
  class A {
    @build() @enter() warm() {}
    @enter() @build() warm2() {}
    @build() dl() {}
  }
  const m = getClassMeta(A)
  t.deepEqual(m.build, ['warm', 'warm2', 'dl'])
  t.deepEqual(m.enter, ['warm', 'warm2'])
  t.deepEqual(m.methods, [])
})

test('a name that is a hook in the base and a method in a subclass is rejected', (t) => {
  class A {
    @enter() run() {}
  }
  class B extends A {
    @method() override run() {}
  }
  t.throws(() => getClassMeta(B), { instanceOf: InvalidError, message: /'run' is a lifecycle hook.*Rename one/s })
})

test('getClassMeta from context.metadata inside a class decorator sees the class itself', (t) => {
  let seen: unknown
  const spy = (_v: unknown, ctx: ClassDecoratorContext) => {
    seen = getClassMeta(ctx.metadata)
  }
  class P {
    @method() p() {}
  }
  @spy
  @concurrent({ maxInputs: 2 })
  class Q extends P {
    @method() q() {}
  }
  t.deepEqual(seen, { snapEnter: [], enter: [], exit: [], build: [], methods: [{ name: 'p' }, { name: 'q' }], params: [], concurrent: { maxInputs: 2, targetInputs: 2 } })
  t.true(Object.isFrozen(getClassMeta(Q)))
})

// ---------------------------------------------------------------------------------------------
// parameters

test('parameter specs from field defaults; probe constructed once', (t) => {
  let constructed = 0
  class E {
    @parameter() model = 'mini'
    @parameter() size = 3
    @parameter() fast = false
    @parameter() blob = new Uint8Array([1, 2])
    @parameter() name!: string
    constructor() {
      constructed++
    }
  }
  const specs = getParamSpecs(E)
  t.deepEqual([...specs], [
    ['model', { type: 'string', default: 'mini', required: false }],
    ['size', { type: 'number', default: 3, required: false }],
    ['fast', { type: 'boolean', default: false, required: false }],
    ['blob', { type: 'bytes', default: new Uint8Array([1, 2]), required: false }],
    ['name', { type: 'any', required: true }],
  ])
  getParamSpecs(E)
  validateParams(E, { name: 'x' })
  t.is(constructed, 1)
  t.deepEqual(getClassMeta(E).params, ['model', 'size', 'fast', 'blob', 'name'])
})

test('@parameter on an auto-accessor', (t) => {
  class A {
    @parameter() accessor tag = 'a'
  }
  t.deepEqual([...getParamSpecs(A)], [['tag', { type: 'string', default: 'a', required: false }]])
  const a = new A()
  applyParams(a, validateParams(A, { tag: 'b' }))
  t.is(a.tag, 'b')
})

test('a parameter default of an unsupported type names the field and the allowed types', (t) => {
  for (const [make, got] of [
    [() => class Obj { @loose(parameter()) opts = { a: 1 } }, /Obj\.opts.*an object/],
    [() => class Flt { @parameter() ratio = 0.5 }, /Flt\.ratio.*0\.5 \(not an integer\)/],
    [() => class Arr { @loose(parameter()) list = [1] }, /Arr\.list.*an array/],
    [() => class Nul { @loose(parameter()) n = null }, /Nul\.n.*null/],
    [() => class Big { @loose(parameter()) b = 1n }, /Big\.b.*a bigint/],
  ] as const) {
    t.throws(() => getParamSpecs(make()), {
      instanceOf: InvalidError,
      message: got,
    })
    t.throws(() => getParamSpecs(make()), { message: /must be a string, an integer number, a boolean or a Uint8Array/ })
  }
})

test('a throwing constructor is reported with the fix', (t) => {
  class Heavy {
    @parameter() model = 'x'
    constructor() {
      throw new Error('loading 4 GB')
    }
  }
  t.throws(() => getParamSpecs(Heavy), { instanceOf: InvalidError, message: /loading 4 GB.*move heavy work into an @enter\(\) hook/s })
})

class P {
  @parameter() model = 'mini'
  @parameter() size = 3
  @parameter() blob = new Uint8Array([7])
  @parameter() key!: string
}

test('validateParams fills defaults and copies bytes', (t) => {
  const params = validateParams(P, { key: 'k', size: 5 })
  t.deepEqual(params, { model: 'mini', size: 5, blob: new Uint8Array([7]), key: 'k' })
  t.not(params.blob, getParamSpecs(P).get('blob')!.default)
  t.deepEqual(validateParams(P, { key: true }).key, true)
  const inst = new P()
  applyParams(inst, params)
  t.is(inst.size, 5)
  t.is(inst.key, 'k')
})

test('validateParams: unknown key lists the known ones', (t) => {
  t.throws(() => validateParams(P, { key: 'k', modle: 'x' }), {
    instanceOf: InvalidError,
    message: /Cls\.of\(P\): unknown parameter 'modle'\. Did you mean 'model'\? Known parameters: model, size, blob, key\./,
  })
  class None {}
  t.throws(() => validateParams(None, { a: 1 }), { instanceOf: InvalidError, message: /declares no parameters.*@parameter\(\) a =/s })
  t.deepEqual(validateParams(None, undefined), {})
})

test('validateParams: missing required parameter', (t) => {
  t.throws(() => validateParams(P, {}), {
    instanceOf: InvalidError,
    message: /missing required parameter 'key'.*Cls\.of\(P, \{ key: \.\.\. \}\).*or give the field a default/s,
  })
  t.throws(() => validateParams(P, undefined), { instanceOf: InvalidError, message: /missing required parameter 'key'/ })
})

test('validateParams: mistyped values say the expected type', (t) => {
  t.throws(() => validateParams(P, { key: 'k', size: '5' }), { instanceOf: InvalidError, message: /'size' must be an integer number, got "5"/ })
  t.throws(() => validateParams(P, { key: 'k', size: 1.5 }), { instanceOf: InvalidError, message: /'size' must be an integer number, got 1\.5 \(not an integer\)/ })
  t.throws(() => validateParams(P, { key: 'k', model: 1 }), { instanceOf: InvalidError, message: /'model' must be a string/ })
  t.throws(() => validateParams(P, { key: 'k', blob: [1] }), { instanceOf: InvalidError, message: /'blob' must be a Uint8Array, got an array/ })
  t.throws(() => validateParams(P, { key: { a: 1 } }), { instanceOf: InvalidError, message: /'key' must be a string, an integer number, a boolean or a Uint8Array/ })
  t.throws(() => validateParams(P, 'x' as any), { instanceOf: InvalidError, message: /plain object/ })
})

// ---------------------------------------------------------------------------------------------
// Retries

test('Retries bounds', (t) => {
  t.throws(() => new Retries({ maxRetries: -1 }), { instanceOf: InvalidError, message: /maxRetries must be an integer between 0 and 10, got -1/ })
  t.throws(() => new Retries({ maxRetries: 11 }), { instanceOf: InvalidError, message: /between 0 and 10/ })
  t.throws(() => new Retries({ maxRetries: 1.5 }), { instanceOf: InvalidError, message: /maxRetries must be an integer/ })
  t.throws(() => new Retries({ maxRetries: 1, backoffCoefficient: 0.5 }), { instanceOf: InvalidError, message: /backoffCoefficient must be a number between 1 and 10/ })
  t.throws(() => new Retries({ maxRetries: 1, backoffCoefficient: 11 }), { instanceOf: InvalidError, message: /backoffCoefficient/ })
  t.throws(() => new Retries({ maxRetries: 1, initialDelay: 61 }), { instanceOf: InvalidError, message: /initialDelay must be a number between 0 and 60/ })
  t.throws(() => new Retries({ maxRetries: 1, maxDelay: 0.5 }), { instanceOf: InvalidError, message: /maxDelay must be a number between 1 and 60/ })
  t.notThrows(() => new Retries({ maxRetries: 10, backoffCoefficient: 10, initialDelay: 0, maxDelay: 60 }))
})

test('Retries.normalize and delays', (t) => {
  t.deepEqual(Retries.normalize(3).toJSON(), { maxRetries: 3, backoffCoefficient: 1, initialDelay: 1, maxDelay: 60 })
  t.is(Retries.normalize(undefined).maxRetries, 0)
  const r = new Retries({ maxRetries: 5 })
  t.is(Retries.normalize(r), r)
  t.deepEqual(r.toJSON(), { maxRetries: 5, backoffCoefficient: 2, initialDelay: 1, maxDelay: 60 })
  t.deepEqual([1, 2, 3, 4, 7, 8].map((k) => r.delayFor(k)), [1, 2, 4, 8, 60, 60])
  t.is(new Retries({ maxRetries: 2, initialDelay: 0.5, backoffCoefficient: 3, maxDelay: 4 }).delayMsFor(3), 4000)
  t.throws(() => Retries.normalize('3' as any), { instanceOf: InvalidError, message: /retries must be a number or a Retries/ })
})

// ---------------------------------------------------------------------------------------------
// options

test('normalizeOptions defaults, in milliseconds', (t) => {
  const o = normalizeOptions(undefined, 'app.function(f)')
  t.is(o.timeoutMs, 300_000)
  t.is(o.startupTimeoutMs, 300_000)
  t.is(o.scaledownWindowMs, 60_000)
  t.is(o.exitGracePeriodMs, 30_000)
  t.is(o.minContainers, 0)
  t.is(o.maxContainers, undefined)
  t.is(o.bufferContainers, 0)
  t.is(o.retries.maxRetries, 0)
  t.false(o.singleUseContainers)
  t.deepEqual(o.gpu, [])
  const p = normalizeOptions({ timeout: 0.05, retries: 2, concurrent: { maxInputs: 4 }, gpu: 'T4', maxContainers: 3, env: { A: 'b' } }, 'x')
  t.is(p.timeoutMs, 50)
  t.is(p.startupTimeoutMs, 50)
  t.is(p.retries.backoffCoefficient, 1)
  t.deepEqual(p.concurrent, { maxInputs: 4, targetInputs: 4 })
  t.deepEqual(p.gpu, ['T4'])
  t.deepEqual(p.env, { A: 'b' })
})

test('normalizeOptions rejects bad values naming the fix', (t) => {
  const w = "app.function('sq')"
  t.throws(() => normalizeOptions({ timeout: -1 }, w), { instanceOf: InvalidError, message: /app\.function\('sq'\): timeout must be a number of seconds > 0/ })
  t.throws(() => normalizeOptions({ timeout: 0 }, w), { instanceOf: InvalidError, message: /timeout must be/ })
  t.throws(() => normalizeOptions({ timeout: '60' as any }, w), { instanceOf: InvalidError, message: /timeout must be.*got "60"/ })
  t.throws(() => normalizeOptions({ scaledownWindow: -1 }, w), { instanceOf: InvalidError, message: /scaledownWindow must be a number of seconds ≥ 0/ })
  t.throws(() => normalizeOptions({ minContainers: 3, maxContainers: 2 }, w), {
    instanceOf: InvalidError,
    message: /minContainers \(3\) is greater than maxContainers \(2\)/,
  })
  t.throws(() => normalizeOptions({ maxContainers: 0 }, w), { instanceOf: InvalidError, message: /maxContainers must be an integer ≥ 1/ })
  t.throws(() => normalizeOptions({ timout: 3 } as any, w), { instanceOf: InvalidError, message: /unknown option 'timout'. Did you mean 'timeout'\?/ })
  t.throws(() => normalizeOptions({ keep_warm: 1 } as any, w), { instanceOf: InvalidError, message: /Did you mean 'minContainers'\?/ })
  t.throws(() => normalizeOptions({ retries: 20 }, w), { instanceOf: InvalidError, message: /app\.function\('sq'\): Retries: maxRetries/ })
  t.throws(() => normalizeOptions({ concurrent: { maxInputs: 2, targetInputs: 3 } }, w), { instanceOf: InvalidError, message: /targetInputs \(3\)/ })
  t.throws(() => normalizeOptions({ batched: { maxBatchSize: 0, waitMs: 1 } }, w), { instanceOf: InvalidError, message: /maxBatchSize/ })
  t.throws(() => normalizeOptions({ concurrent: { maxInputs: 2 } } as any, '@app.cls(E)', { cls: true }), {
    instanceOf: InvalidError,
    message: /@concurrent\(\{ maxInputs \}\) class decorator/,
  })
  t.throws(() => normalizeOptions({ env: { A: 1 } } as any, w), { instanceOf: InvalidError, message: /env\.A must be a string/ })
  t.throws(() => normalizeOptions({ name: 'a b' }, w), { instanceOf: InvalidError, message: /name must be/ })
  t.throws(() => normalizeOptions({ memory: 1.5 }, w), { instanceOf: InvalidError, message: /memory must be a positive integer of MiB/ })
  for (const gpu of ['A100:0', 'A100:x', ':2', 'A 100']) {
    t.throws(() => normalizeOptions({ gpu }, w), { instanceOf: InvalidError, message: /gpu '.*' must be a type with an optional count of at least 1, e\.g\. 'T4'/ })
  }
  t.deepEqual(normalizeOptions({ gpu: ['H100:8', 'any:2'] }, w).gpu, ['H100:8', 'any:2'])
})

// ---------------------------------------------------------------------------------------------
// input context

test('input context', async (t) => {
  t.is(currentInputId(), undefined)
  t.true(isLocal(), 'outside any input is the caller\'s code: local')
  t.throws(() => currentInput(), { instanceOf: InvalidError, message: /outside of an input/ })
  const ac = new AbortController()
  const trace = { traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01', callTrace: () => ({ id: '0af7651916cd43dd8448eb211c80319c', flags: '01' }) }
  await runInContext({ inputId: 'in-1', functionCallId: 'fc-1', signal: ac.signal, ...trace }, async () => {
    await new Promise((r) => setTimeout(r, 1))
    t.is(currentInputId(), 'in-1')
    t.is(currentFunctionCallId(), 'fc-1')
    t.is(currentInput().signal, ac.signal)
    t.false(isLocal())
  })
  runInContext({ inputId: 'in-2', functionCallId: 'fc-2', signal: ac.signal, local: true, ...trace }, () => t.true(isLocal()))
})
