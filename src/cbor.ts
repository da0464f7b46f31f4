// The wire encoding of arguments and results (SPEC §4): CBOR with JavaScript's types kept —
// Map as tag 259, Set, Date, bigint, typed arrays, undefined; plain objects stay plain objects.
import { Encoder } from 'cbor-x'

const codec = new Encoder({ useRecords: false, mapsAsObjects: true, tagUint8Array: false })

export function encodeValue(value: unknown): Uint8Array {
  return codec.encode(value)
}

export function decodeValue(bytes: Uint8Array): unknown {
  return codec.decode(bytes)
}
