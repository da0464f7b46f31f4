import test from 'ava'
import { checkAndCopy, checkAndCopyArgs, MAX_DEPTH } from '../src/shared/serialize.ts'
import { SerializationError } from '../src/shared/errors.ts'

const FIX = /cannot be sent to a container\. .*Pass plain data \(JSON types, Uint8Array, Date, Map, Set, bigint\) instead\./

test('primitives come back as they are', (t) => {
  for (const v of [0, -0, 1.5, NaN, Infinity, 'text', '', true, false, null, undefined, 10n ** 30n]) {
    t.is(checkAndCopy(v, 'x'), v)
  }
})

test('accepted types round-trip equal and are copies', (t) => {
  const values: Record<string, unknown> = {
    object: { a: 1, b: 'two', c: [true, null], d: { e: undefined } },
    nullProto: Object.assign(Object.create(null), { k: 1 }),
    array: [1, 'a', [2, [3]], { x: 1 }],
    bytes: new Uint8Array([1, 2, 3]),
    f64: new Float64Array([1.5, -2]),
    i32: new Int32Array([-1, 7]),
    u8c: new Uint8ClampedArray([255]),
    big64: new BigInt64Array([1n, -2n]),
    arrayBuffer: new Uint8Array([9, 8]).buffer,
    date: new Date(1_700_000_000_000),
    map: new Map<unknown, unknown>([['a', { n: 1 }], [2, [3]]]),
    set: new Set([1, 'two', { three: 3 }]),
    nested: { m: new Map([['s', new Set([new Date(0)])]]), big: 2n ** 70n },
  }
  for (const [name, v] of Object.entries(values)) {
    const c = checkAndCopy(v, name)
    t.deepEqual(c, v, name)
    t.not(c, v, name)
  }
})

test('mutating the copy leaves the original untouched', (t) => {
  const orig = { list: [1, 2], inner: { n: 1 }, bytes: new Uint8Array([1]), when: new Date(0), m: new Map([['k', [1]]]), s: new Set([[1]]) }
  const c = checkAndCopy(orig, 'x')
  c.list.push(3)
  c.inner.n = 2
  c.bytes[0] = 9
  c.when.setTime(5)
  c.m.get('k')!.push(2)
  ;[...c.s][0]!.push(2)
  t.deepEqual(orig, { list: [1, 2], inner: { n: 1 }, bytes: new Uint8Array([1]), when: new Date(0), m: new Map([['k', [1]]]), s: new Set([[1]]) })
})

test('Buffer becomes a plain Uint8Array copy; typed array views copy only their window', (t) => {
  const buf = Buffer.from('hey')
  const c = checkAndCopy(buf, 'x')
  t.is(Object.getPrototypeOf(c), Uint8Array.prototype)
  t.deepEqual([...c], [...buf])
  buf[0] = 0
  t.is(c[0], 'h'.charCodeAt(0))
  const view = new Uint16Array(new ArrayBuffer(16), 4, 2)
  const cv = checkAndCopy(view, 'x')
  t.is(cv.byteLength, 4)
  t.is(cv.byteOffset, 0)
})

test('shared references are copied, not rejected', (t) => {
  const shared = { n: 1 }
  const c = checkAndCopy({ a: shared, b: shared }, 'x')
  t.deepEqual(c, { a: { n: 1 }, b: { n: 1 } })
})

test('symbol keys and non-enumerable properties are dropped', (t) => {
  const o: Record<string | symbol, unknown> = { a: 1, [Symbol('s')]: 2 }
  Object.defineProperty(o, 'hidden', { value: 3, enumerable: false })
  t.deepEqual(Reflect.ownKeys(checkAndCopy(o, 'x')), ['a'])
})

test('a __proto__ key stays data', (t) => {
  const o = JSON.parse('{"__proto__": {"polluted": true}}')
  const c = checkAndCopy(o, 'x')
  t.is(Object.getPrototypeOf(c), Object.prototype)
  t.true(Object.hasOwn(c, '__proto__'))
  t.is(({} as Record<string, unknown>).polluted, undefined)
})

test('rejected values name the path and the fix', (t) => {
  class Model {
    w = 1
  }
  const cases: [unknown, RegExp][] = [
    [{ opts: { cb: () => 1 } }, /^argument 0 of Embedder\.embed: value at \.opts\.cb is a function, which/],
    [[1, [2, Symbol('s')]], /value at \[1\]\[1\] is a symbol/],
    [{ p: Promise.resolve(1) }, /value at \.p is a Promise.*Await it first/],
    [{ w: new WeakMap() }, /value at \.w is a WeakMap/],
    [{ 'odd key': new Model() }, /value at \["odd key"\] is an instance of Model.*Convert it to a plain object/],
    [{ v: new DataView(new ArrayBuffer(2)) }, /value at \.v is a DataView/],
    [{ e: new Error('x') }, /value at \.e is an Error \(Error\)/],
    [{ r: /x/ }, /value at \.r is a RegExp/],
    [{ s: new String('x') }, /value at \.s is a boxed String/],
    [new Map([['k', { f() {} }]]), /value at \.get\("k"\)\.f is a function/],
    [new Map([[() => 1, 1]]), /value at \.keys\(\)\[0\] is a function/],
    [new Set([1, Symbol.iterator]), /value at \.values\(\)\[1\] is a symbol/],
    [{ sab: new SharedArrayBuffer(4) }, /value at \.sab is a SharedArrayBuffer/],
  ]
  for (const [v, msg] of cases) {
    const err = t.throws(() => checkAndCopy(v, 'argument 0 of Embedder.embed'), { instanceOf: SerializationError, message: msg })
    t.regex(err!.message, FIX)
  }
  t.throws(() => checkAndCopy(() => 1, 'result of f'), {
    instanceOf: SerializationError,
    message: /^result of f is a function, which cannot be sent to a container\./,
  })
})

test('strings with lone surrogates are rejected, naming the path (found by scripts/fuzz-values.ts)', (t) => {
  // cbor-x writes a lone surrogate as invalid UTF-8, which the control plane refuses.
  const lone = /is a string with a lone surrogate \(not well-formed Unicode\), which cannot be sent to a container\. Replace it, e\.g\. with s\.toWellFormed\(\)\./
  t.throws(() => checkAndCopy('\ud800', 'x'), { instanceOf: SerializationError, message: /^x is a string with a lone surrogate/ })
  t.throws(() => checkAndCopy({ a: ['ok', 'b\udc00'] }, 'x'), { message: /^x: value at \.a\[1\] / })
  t.throws(() => checkAndCopy({ a: 'b\udc00' }, 'x'), { message: lone })
  t.throws(() => checkAndCopy({ 'k\ud83d': 1 }, 'x'), { message: /an object key that is a string with a lone surrogate/ })
  t.throws(() => checkAndCopy(new Map([['\ud800', 1]]), 'x'), { message: /^x: value at \.keys\(\)\[0\] / })
  t.throws(() => checkAndCopyArgs([1, '\udfff'], 'f'), { message: /^argument 1 of f is a string with a lone surrogate/ })
  // Pairs are fine, and so is the replacement character.
  t.is(checkAndCopy('😀\ufffd', 'x'), '😀\ufffd')
  t.deepEqual(checkAndCopyArgs(['\ud83d\ude00'], 'f'), ['😀'])
})

test('cycles are rejected, naming where they close', (t) => {
  const a: Record<string, unknown> = { x: 1 }
  a.self = a
  t.throws(() => checkAndCopy(a, 'argument 0 of f'), {
    instanceOf: SerializationError,
    message: /^argument 0 of f: value at \.self refers back to the top-level value \(a cycle\).*Break the cycle/,
  })
  const inner: unknown[] = []
  inner.push({ back: inner })
  t.throws(() => checkAndCopy({ list: inner }, 'v'), {
    instanceOf: SerializationError,
    message: /value at \.list\[0\]\.back refers back to \.list/,
  })
  const m = new Map<string, unknown>()
  m.set('me', m)
  t.throws(() => checkAndCopy(m, 'v'), { instanceOf: SerializationError, message: /cycle/ })
})

test('nesting deeper than MAX_DEPTH is rejected', (t) => {
  let deep: unknown = 1
  for (let i = 0; i < MAX_DEPTH + 1; i++) deep = [deep]
  t.throws(() => checkAndCopy(deep, 'v'), { instanceOf: SerializationError, message: new RegExp(`nested deeper than ${MAX_DEPTH}`) })
  let ok: unknown = 1
  for (let i = 0; i < MAX_DEPTH - 1; i++) ok = { v: ok }
  t.notThrows(() => checkAndCopy(ok, 'v'))
  // Leaves are no level (found by scripts/fuzz-values.ts: the control plane took a Date or a
  // typed array inside MAX_DEPTH containers, this check refused it).
  for (const leaf of [new Date(0), new Uint16Array([1]), new ArrayBuffer(1)]) {
    let v: unknown = leaf
    for (let i = 0; i < MAX_DEPTH; i++) v = i % 2 ? new Map([[1, v]]) : new Set([v])
    t.notThrows(() => checkAndCopy(v, 'v'))
    t.throws(() => checkAndCopy([v], 'v'), { message: new RegExp(`nested deeper than ${MAX_DEPTH}`) })
  }
})

test('checkAndCopyArgs names the argument index and copies', (t) => {
  const obj = { a: [1] }
  const args = [1, 'x', obj, null]
  const out = checkAndCopyArgs(args, 'Embedder.embed')
  t.deepEqual(out, args)
  t.not(out, args)
  t.not(out[2], obj)
  t.throws(() => checkAndCopyArgs([1, { opts: { cb: () => 1 } }], 'Embedder.embed'), {
    instanceOf: SerializationError,
    message: /^argument 1 of Embedder\.embed: value at \.opts\.cb is a function, which cannot be sent to a container\. Pass plain data/,
  })
  t.throws(() => checkAndCopyArgs([Symbol('x')], 'f'), { message: /^argument 0 of f is a symbol/ })
})
