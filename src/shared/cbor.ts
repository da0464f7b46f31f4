// The wire encoding of arguments and results (README "What you can rely on in the embedded runtime"): CBOR with JavaScript's types kept —
// Map as tag 259, Set, Date, bigint, typed arrays, undefined; plain objects stay plain objects.
import { Encoder, addExtension } from 'cbor-x'

import { checkAndCopy, TYPED } from './serialize.ts'

const codec = new Encoder({ useRecords: false, mapsAsObjects: true, tagUint8Array: false })

/**
 * A web `Response` a web endpoint returned, read to its end (README "API", web endpoints): it
 * crosses as CBOR tag WEB_RESPONSE_TAG over `[status, [[name, value], ...], body bytes]`, which
 * the control plane answers the HTTP request with (crates/berth-server/src/web.rs), and which a
 * `.remote()` caller decodes back into a `Response`.
 */
export class WireResponse {
  constructor(
    readonly status: number,
    readonly headers: [string, string][],
    /** null in the head of a streamed body (a web app's, src/run/web.ts), whose chunks follow as items. */
    readonly body: Uint8Array | null,
  ) {}
}
/** berth's own tag ('bert'); crates/berth-server/src/web.rs WEB_RESPONSE_TAG. */
export const WEB_RESPONSE_TAG = 0x62657274

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
  WireResponse.prototype,
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

// After the check above, which lets a WireResponse through.
addExtension({
  Class: WireResponse,
  tag: WEB_RESPONSE_TAG,
  encode(r: WireResponse, encode: (v: unknown) => void) {
    encode([r.status, r.headers, r.body === null ? null : Buffer.from(r.body.buffer, r.body.byteOffset, r.body.length)])
  },
  decode([status, headers, body]: [number, [string, string][], Uint8Array]) {
    // A null-body status (204, 304...) takes no body, not even an empty one.
    const empty = status === 101 || status === 204 || status === 205 || status === 304
    return new Response(empty ? null : body, { status, headers })
  },
} as never)

/**
 * `what` starts the message of a SerializationError, e.g. 'the result of Embedder.embed'. A class
 * instance gets the embedded container's SerializationError (above); a value cbor-x cannot write
 * at all (a function, a symbol) the one checkAndCopy gives, naming what and where; anything else
 * the encoder's own words.
 */
export function encodeValue(value: unknown, what = 'the value'): Uint8Array {
  checking = true
  try {
    return codec.encode(value)
  } catch (e) {
    if (!(e instanceof NotPassed)) {
      checkAndCopy(value, what)
      throw e
    }
  } finally {
    checking = false
  }
  return codec.encode(checkAndCopy(value, what))
}

export function decodeValue(bytes: Uint8Array): unknown {
  return codec.decode(bytes)
}
