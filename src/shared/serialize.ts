import { SerializationError } from './errors.ts'

// What crosses to a container is what CBOR carries: JSON types, undefined, bigint, Uint8Array and
// the other typed arrays (RFC 8746), ArrayBuffer, Date, Map, Set. checkAndCopy validates a value
// and deep-copies it in the same walk, so a caller and the callee never share a mutable object
// (as with a real remote call) and a bad argument fails at the caller, before anything is sent.
//
// Decisions:
// - Symbol-keyed and non-enumerable properties are dropped, as JSON.stringify and structuredClone do.
// - Objects must have Object.prototype or null as prototype; arrays may be Array subclasses (copied
//   to plain arrays, extra non-index properties dropped). Class instances are rejected rather than
//   silently flattened, because their methods would not survive the trip.
// - A shared (non-cyclic) reference is copied once per occurrence, like CBOR without tags would do.
// - Buffer comes back as a plain Uint8Array. DataView and SharedArrayBuffer are rejected.
// - Nesting deeper than MAX_DEPTH is rejected: the control plane refuses deeper CBOR
//   (berth_proto::values::MAX_DEPTH, the same number), because cbor-x decodes recursively and a
//   few hundred levels of Maps overflow its stack; and a deep value is almost always a mistake
//   (a linked list, or a cycle through a getter).
// - Strings (and object keys) must be well-formed Unicode: a lone surrogate ('\ud800') has no
//   UTF-8 form, cbor-x writes invalid UTF-8 for it, and the control plane refuses text that is
//   not UTF-8 (berth_proto::values).

export const MAX_DEPTH = 128

// String.prototype.isWellFormed: Node 20 has it, the ES2022 lib does not declare it.
const wellFormed = (s: string): boolean => (s as unknown as { isWellFormed(): boolean }).isWellFormed()
const LONE = ['a string with a lone surrogate (not well-formed Unicode)', 'Replace it, e.g. with s.toWellFormed(). '] as const

const FIX = 'Pass plain data (JSON types, Uint8Array, Date, Map, Set, bigint) instead.'

type Seg = string | number | { map: unknown } | { mapKey: number } | { set: number }

class Walk {
  readonly what: string
  readonly segs: Seg[] = []
  // Ancestors of the current value; a linear scan beats a Set at the depths real data has.
  readonly stack: object[] = []
  constructor(what: string) {
    this.what = what
  }

  fail(problem: string, hint = ''): never {
    throw new SerializationError(`${this.at(this.segs.length)} is ${problem}, which cannot be sent to a container. ${hint}${FIX}`)
  }

  at(n: number): string {
    return n === 0 ? this.what : `${this.what}: value at ${pathOf(this.segs, n)}`
  }
}

function pathOf(segs: Seg[], n: number): string {
  let p = ''
  for (let i = 0; i < n; i++) {
    const s = segs[i]
    if (typeof s === 'number') p += `[${s}]`
    else if (typeof s === 'string') p += /^[A-Za-z_$][\w$]*$/.test(s) ? `.${s}` : `[${JSON.stringify(s)}]`
    else if ('map' in s) p += `.get(${keyText(s.map)})`
    else if ('mapKey' in s) p += `.keys()[${s.mapKey}]`
    else p += `.values()[${s.set}]`
  }
  return p || '(top level)'
}

function keyText(k: unknown): string {
  if (typeof k === 'string') return JSON.stringify(k)
  if (typeof k === 'bigint') return `${k}n`
  if (typeof k === 'object' && k !== null) return Array.isArray(k) ? '[…]' : '{…}'
  return String(k)
}

/** The typed array classes, by name. */
export const TYPED: Record<string, new (src: ArrayLike<number> & ArrayLike<bigint>) => ArrayBufferView> = {
  Uint8Array,
  Int8Array,
  Uint8ClampedArray,
  Uint16Array,
  Int16Array,
  Uint32Array,
  Int32Array,
  Float32Array,
  Float64Array,
  BigUint64Array,
  BigInt64Array,
} as never

const typedArrayTag = Object.getOwnPropertyDescriptor(Object.getPrototypeOf(Uint8Array.prototype), Symbol.toStringTag)!.get!

function describe(v: object): [problem: string, hint: string] {
  if (v instanceof Promise) return ['a Promise', 'Await it first. ']
  if (v instanceof Error) return [`an Error (${v.name})`, 'Send its message or fields instead. ']
  if (v instanceof WeakMap || v instanceof WeakSet || v instanceof WeakRef) {
    return [`a ${Object.prototype.toString.call(v).slice(8, -1)}`, '']
  }
  if (v instanceof DataView) return ['a DataView', 'Send new Uint8Array(view.buffer, view.byteOffset, view.byteLength). ']
  if (typeof SharedArrayBuffer !== 'undefined' && v instanceof SharedArrayBuffer) {
    return ['a SharedArrayBuffer', 'Copy it into a Uint8Array. ']
  }
  if (v instanceof RegExp) return ['a RegExp', 'Send its source string. ']
  const ctor = (v as { constructor?: unknown }).constructor
  const name = typeof ctor === 'function' && ctor.name ? ctor.name : 'an unknown class'
  if (v instanceof String || v instanceof Number || v instanceof Boolean) return [`a boxed ${name}`, 'Send the primitive. ']
  return [`an instance of ${name}`, 'Convert it to a plain object first. ']
}

function copyValue(v: unknown, w: Walk): unknown {
  const t = typeof v
  if (t !== 'object') {
    if (t === 'function') w.fail('a function')
    if (t === 'symbol') w.fail('a symbol')
    if (t === 'string' && !wellFormed(v as string)) w.fail(...LONE)
    return v
  }
  return v === null ? v : copyObject(v as object, w)
}

function copyObject(v: object, w: Walk): unknown {
  const i = w.stack.indexOf(v)
  if (i !== -1) {
    const target = i === 0 ? 'the top-level value' : pathOf(w.segs, i)
    throw new SerializationError(
      `${w.at(w.segs.length)} refers back to ${target} (a cycle), which cannot be sent to a container. ` +
        'Break the cycle, e.g. send ids instead of back-references.',
    )
  }

  const proto = Object.getPrototypeOf(v)
  if (proto === Object.prototype || proto === null) return enter(v, w, copyPlain)
  if (Array.isArray(v)) return enter(v, w, copyArray)
  if (ArrayBuffer.isView(v)) {
    const ctor = TYPED[typedArrayTag.call(v) as string]
    // Constructing from a typed array copies; Buffer becomes a plain Uint8Array.
    if (ctor !== undefined) return new ctor(v as never)
  } else if (v instanceof Date) {
    return new Date(v.getTime())
  } else if (v instanceof Map) {
    return enter(v, w, copyMap)
  } else if (v instanceof Set) {
    return enter(v, w, copySet)
  } else if (v instanceof ArrayBuffer) {
    return v.slice(0)
  }
  const [problem, hint] = describe(v)
  return w.fail(problem, hint)
}

// Only containers count as levels, as in the control plane's count: a Date or a typed array is
// a leaf at any depth.
function enter<T extends object>(v: T, w: Walk, copy: (v: T, w: Walk) => unknown): unknown {
  if (w.stack.length >= MAX_DEPTH) w.fail(`nested deeper than ${MAX_DEPTH} levels`)
  w.stack.push(v)
  const out = copy(v, w)
  w.stack.pop()
  return out
}

function copyPlain(v: object, w: Walk): unknown {
  const out: Record<string, unknown> = {}
  const keys = Object.keys(v)
  const src = v as Record<string, unknown>
  for (let i = 0; i < keys.length; i++) {
    const k = keys[i]
    const x = src[k]
    const t = typeof x
    if (!wellFormed(k)) {
      w.segs.push(k)
      w.fail(`an object key that is ${LONE[0]}`, LONE[1])
    }
    if (t === 'object' || t === 'function' || t === 'symbol' || (t === 'string' && !wellFormed(x as string))) {
      w.segs.push(k)
      // defineProperty so that a '__proto__' key stays an own property instead of setting the prototype.
      if (k === '__proto__') Object.defineProperty(out, k, { value: copyValue(x, w), enumerable: true, writable: true, configurable: true })
      else out[k] = copyValue(x, w)
      w.segs.pop()
    } else {
      out[k] = x
    }
  }
  return out
}

function copyArray(v: unknown[], w: Walk): unknown[] {
  const n = v.length
  const out = new Array<unknown>(n)
  for (let i = 0; i < n; i++) {
    const x = v[i]
    const t = typeof x
    if (t === 'object' || t === 'function' || t === 'symbol' || (t === 'string' && !wellFormed(x as string))) {
      w.segs.push(i)
      out[i] = copyValue(x, w)
      w.segs.pop()
    } else {
      out[i] = x
    }
  }
  return out
}

function copyMap(v: Map<unknown, unknown>, w: Walk): Map<unknown, unknown> {
  const out = new Map<unknown, unknown>()
  let i = 0
  for (const [k, x] of v) {
    w.segs.push({ mapKey: i++ })
    const key = copyValue(k, w)
    w.segs.pop()
    w.segs.push({ map: k })
    out.set(key, copyValue(x, w))
    w.segs.pop()
  }
  return out
}

function copySet(v: Set<unknown>, w: Walk): Set<unknown> {
  const out = new Set<unknown>()
  let i = 0
  for (const x of v) {
    w.segs.push({ set: i++ })
    out.add(copyValue(x, w))
    w.segs.pop()
  }
  return out
}

/**
 * Checks that `value` can be sent to a container and returns a deep copy of it (primitives are
 * returned as they are). `what` starts the error message, e.g. 'argument 0 of Embedder.embed'.
 * Throws SerializationError naming the offending path.
 */
export function checkAndCopy<T>(value: T, what: string): T {
  const t = typeof value
  if (t !== 'object' && t !== 'function' && t !== 'symbol' && t !== 'string') return value
  if (value === null || (t === 'string' && wellFormed(value as string))) return value
  return copyValue(value, new Walk(what)) as T
}

/** checkAndCopy for each positional argument; errors read 'argument i of <what>: …'. Returns a new array. */
export function checkAndCopyArgs(args: readonly unknown[], what: string): unknown[] {
  const n = args.length
  const out = new Array<unknown>(n)
  for (let i = 0; i < n; i++) {
    const x = args[i]
    const t = typeof x
    out[i] =
      t !== 'object' && t !== 'function' && t !== 'symbol' && (t !== 'string' || wellFormed(x as string))
        ? x
        : x === null
          ? x
          : copyValue(x, new Walk(`argument ${i} of ${what}`))
  }
  return out
}

/** checkAndCopyArgs for an array the caller owns (a rest parameter): copies into it, no new array. */
export function checkAndCopyArgsInPlace(args: unknown[], what: string): unknown[] {
  const n = args.length
  for (let i = 0; i < n; i++) {
    const x = args[i]
    const t = typeof x
    if (t === 'object' ? x !== null : t === 'function' || t === 'symbol' || (t === 'string' && !wellFormed(x as string)))
      args[i] = copyValue(x, new Walk(`argument ${i} of ${what}`))
  }
  return args
}
