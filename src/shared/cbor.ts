// The wire encoding of arguments and results (README "What you can rely on in the embedded runtime"): CBOR with JavaScript's types kept —
// Map as tag 259, Set, Date, bigint, typed arrays, undefined; plain objects stay plain objects.
import { Encoder, addExtension } from 'cbor-x'

import { checkAndCopy, TYPED } from './serialize.ts'

const codec = new Encoder({ useRecords: false, mapsAsObjects: true, tagUint8Array: false })

// One rule for what crosses, the embedded one (serialize.ts): cbor-x alone would write a class
// instance as a plain map of its fields (`new Point(1, 2)` arriving as `{ x: 1, y: 2 }`), an
// Error or a RegExp as tags berth does not decode. cbor-x handles plain objects, arrays and Maps
// before it looks at its extensions; everything else meets the extensions in order, and this
// one, first, stops those whose prototype is not one berth passes as it is. Such a value then
// goes through checkAndCopy: a SerializationError naming what and where, or the plain copy an
// embedded container sends (a subclass of Array, Map or Set). Plain data pays nothing, other
// known types one prototype lookup.
const PASSED = new Set<object | null>([
  null,
  Object.prototype,
  Date.prototype,
  Set.prototype,
  ArrayBuffer.prototype,
  Buffer.prototype,
  ...Object.values(TYPED).map((c) => c.prototype),
])

class NotPassed extends Error {}
/** Only berth's own encodes: cbor-x's extensions are global to its module. */
let checking = false

// No tag: cbor-x writes none, and decoding is not affected.
addExtension({
  Class: { [Symbol.hasInstance]: (v: object) => checking && !PASSED.has(Object.getPrototypeOf(v)) },
  encode() {
    throw new NotPassed()
  },
} as never)

/** `what` starts the message of a SerializationError, e.g. 'the result of Embedder.embed'. */
export function encodeValue(value: unknown, what = 'the value'): Uint8Array {
  checking = true
  try {
    return codec.encode(value)
  } catch (e) {
    if (!(e instanceof NotPassed)) throw e
  } finally {
    checking = false
  }
  return codec.encode(checkAndCopy(value, what))
}

export function decodeValue(bytes: Uint8Array): unknown {
  return codec.decode(bytes)
}
