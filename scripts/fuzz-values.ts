// Differential check of the value contract (crates/berth-proto/src/values.rs, which the control
// plane applies to every request) against cbor-x, which containers decode with (src/shared/cbor.ts).
//
//   npx tsx scripts/fuzz-values.ts [iterations] [seed]     (default 200000, ~15 s; needs the binding)
//
// Each iteration makes a random argument list of JavaScript values (every type berth sends,
// nested, near the depth limit at times), then:
//   (a) if checkAndCopyArgs (src/shared/serialize.ts) accepts it, berth's encoder's bytes must pass the
//       Rust check: the server never refuses what the client lets through;
//   (b) for those bytes, byte-level mutations of them, raw CBOR from the grammar (every head
//       width, indefinite lengths, simple values, any tag) and random bytes: whatever the Rust
//       check accepts, cbor-x decodes without throwing, to an array of values checkAndCopy
//       accepts: the contract holds.
// Prints counts; exits 1 with the offending hex (and what went wrong) on a violation.
import { createRequire } from 'node:module'
import { decodeValue, encodeValue } from '../src/shared/cbor.ts'
import { checkAndCopyArgs, MAX_DEPTH } from '../src/shared/serialize.ts'

const { checkArgs } = createRequire(import.meta.url)('../binding.cjs') as { checkArgs(b: Buffer): string | null }

const iterations = Number(process.argv[2] ?? 200000)
let seed = Number(process.argv[3] ?? Date.now() % 2 ** 31) >>> 0
const firstSeed = seed

// mulberry32: reproducible runs from the printed seed.
function rand(): number {
  seed = (seed + 0x6d2b79f5) >>> 0
  let t = seed
  t = Math.imul(t ^ (t >>> 15), t | 1)
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}
const int = (n: number) => Math.floor(rand() * n)
const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)]

const NUMBERS = [0, -0, 1, -1, 23, 24, 255, 256, 65535, 65536, 2 ** 31, 2 ** 32, 2 ** 53 - 1, -(2 ** 53), 2 ** 64, 1.5, 0.1, -2.5e-310, 1e300, 3.4028234663852886e38, NaN, Infinity, -Infinity]
const STRINGS = ['', 'a', 'héllo', '日本', '😀', 'x'.repeat(30), 'y'.repeat(300), '__proto__', 'constructor', '0', '1e3', '\u0000', '\ud800', 'a\udc00b', '\ud83d']
const BIGINTS = [0n, 1n, -1n, 2n ** 63n, -(2n ** 63n), 2n ** 64n - 1n, 2n ** 64n, -(2n ** 64n), -(2n ** 64n) - 1n, 2n ** 70n, -(2n ** 200n), 2n ** 1000n]

function typedArray(): unknown {
  const n = int(5)
  switch (int(12)) {
    case 0: return new Uint8Array(n).map(() => int(256))
    case 1: return new Int8Array(n).map(() => int(256) - 128)
    case 2: return new Uint8ClampedArray(n).map(() => int(256))
    case 3: return new Uint16Array(n).map(() => int(65536))
    case 4: return new Int16Array(n).map(() => int(65536))
    case 5: return new Uint32Array(n).map(() => int(2 ** 32))
    case 6: return new Int32Array(n).map(() => int(2 ** 32))
    case 7: return new Float32Array(n).map(() => pick(NUMBERS))
    case 8: return new Float64Array(n).map(() => pick(NUMBERS))
    case 9: return new BigUint64Array(n).map(() => BigInt(int(2 ** 32)) << 20n)
    case 10: return new BigInt64Array(n).map(() => -BigInt(int(2 ** 32)))
    default: return new Uint8Array(n).buffer
  }
}

function leaf(): unknown {
  switch (int(11)) {
    case 0: return pick(NUMBERS)
    case 1: return int(2 ** 32) - 2 ** 31
    case 2: return pick(STRINGS)
    case 3: return String.fromCharCode(...Array.from({ length: int(6) }, () => int(0x10000)))
    case 4: return pick([true, false, null, undefined])
    case 5: return pick(BIGINTS)
    case 6: return typedArray()
    case 7: return new Date(pick([0, 1500, 1.7e12, -1e12, NaN, 8.64e15]))
    case 8: return rand() * 1e6 - 5e5
    case 9: return []
    default: return {}
  }
}

function value(depth: number, maxDepth: number): unknown {
  if (depth >= maxDepth || rand() < 0.35) return leaf()
  const n = int(4)
  switch (int(5)) {
    case 0: return Array.from({ length: n }, () => value(depth + 1, maxDepth))
    // fromEntries: a '__proto__' key stays an own property, as in data from JSON.parse.
    case 1: return Object.fromEntries(Array.from({ length: n }, () => [rand() < 0.5 ? pick(STRINGS) : String(int(100)), value(depth + 1, maxDepth)]))
    case 2: return new Map(Array.from({ length: n }, () => [value(depth + 1, maxDepth), value(depth + 1, maxDepth)]))
    case 3: return new Set(Array.from({ length: n }, () => value(depth + 1, maxDepth)))
    default: return [value(depth + 1, maxDepth)]
  }
}

// One chain `depth` levels deep of one container kind: exactly at and just past the limit.
function deep(levels: number): unknown {
  const kind = int(4)
  let v: unknown = leaf()
  for (let i = 0; i < levels; i++) {
    v = kind === 0 ? [v] : kind === 1 ? { k: v } : kind === 2 ? new Map([[1, v]]) : new Set([v])
  }
  return v
}

function mutate(b: Uint8Array): Uint8Array {
  const out = Array.from(b)
  for (let k = 1 + int(3); k > 0; k--) {
    const at = int(out.length + 1)
    switch (int(6)) {
      case 0: if (out.length) out[at % out.length] = int(256); break
      case 1: out.splice(at, 0, int(256)); break
      case 2: out.splice(at, 1 + int(3)); break
      case 3: out.length = Math.min(out.length, at); break
      case 4: out.splice(at, 0, pick([0xff, 0x9f, 0xbf, 0xf7, 0xd9, 0xc1, 0xc2, 0xd8, 0x5f, 0x7f, 0xf8, 0xfb, 0xa1, 0x81])); break
      default: if (out.length) out[at % out.length] ^= 1 << int(8)
    }
  }
  return Uint8Array.from(out)
}

// Raw CBOR from the grammar, with what cbor-x never writes: every head width, indefinite
// lengths, half floats, simple values, break codes, any tag around anything.
function head(major: number, n: number, out: number[]): void {
  const width = n < 24 && rand() < 0.7 ? -1 : n < 256 && rand() < 0.6 ? 0 : n < 65536 && rand() < 0.6 ? 1 : rand() < 0.8 ? 2 : 3
  if (width === -1) return void out.push((major << 5) | n)
  out.push((major << 5) | (24 + width))
  for (let k = (1 << width) - 1; k >= 0; k--) out.push(k >= 4 ? 0 : (n >>> (8 * k)) & 0xff)
}
const TAG_NUMBERS = [0, 1, 2, 3, 258, 259, 55799, 64, 65, 68, 69, 70, 72, 75, 79, 81, 82, 85, 86, 87, 76, 27, 28, 29, 105, 40, 256, 57344]
function cbor(depth: number, out: number[]): void {
  switch (depth > 6 ? int(6) : int(12)) {
    case 0: return head(int(2), pick([0, 1, 23, 24, 255, 256, 65535, 65536, 2 ** 32 - 1, int(1000)]), out)
    case 1: {
      const kind = int(3)
      out.push(0xf9 + kind, ...Array.from({ length: 2 << kind }, () => int(256)))
      return
    }
    case 2: return void out.push(pick([0xf4, 0xf5, 0xf6, 0xf7, 0xe0, 0xf3, 0xff, 0x1c, 0xf8]), ...(rand() < 0.2 ? [int(256)] : []))
    case 3: {
      const text = rand() < 0.5
      const bytes = text ? Array.from(Buffer.from(pick(STRINGS.filter((x) => x.isWellFormed())))) : Array.from({ length: int(9) }, () => int(256))
      if (rand() < 0.05) return void out.push(text ? 0x7f : 0x5f, ...(() => { const o: number[] = []; head(text ? 3 : 2, bytes.length, o); return o })(), ...bytes, 0xff)
      head(text ? 3 : 2, bytes.length, out)
      return void out.push(...bytes)
    }
    case 4: return head(1, int(2 ** 32), out)
    case 5: return void out.push(int(256))
    case 6: case 7: {
      const n = int(4)
      const indefinite = rand() < 0.2
      if (indefinite) out.push(0x9f)
      else head(4, n, out)
      for (let i = 0; i < n; i++) cbor(depth + 1, out)
      if (indefinite) out.push(0xff)
      return
    }
    case 8: case 9: {
      const n = int(3)
      const indefinite = rand() < 0.2
      if (indefinite) out.push(0xbf)
      else head(5, n, out)
      for (let i = 0; i < 2 * n; i++) cbor(depth + 1, out)
      if (indefinite) out.push(0xff)
      return
    }
    default: {
      head(6, pick(TAG_NUMBERS), out)
      return cbor(depth + 1, out)
    }
  }
}
function randomArgs(): Uint8Array {
  const out: number[] = []
  const n = int(4)
  head(4, n, out)
  for (let i = 0; i < n; i++) cbor(0, out)
  return Uint8Array.from(out)
}

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex')
const counts = { generated: 0, refusedByClient: 0, encoded: 0, checked: 0, accepted: 0, refused: 0, grammar: 0, grammarAccepted: 0 }

function fail(what: string, bytes: Uint8Array, detail: string): never {
  console.error(`fuzz-values: VIOLATION (${what}) after ${counts.checked} checks, seed ${firstSeed}`)
  console.error(`  bytes: ${hex(bytes)}`)
  console.error(`  ${detail}`)
  process.exit(1)
}

// (b): accepted bytes decode, to plain values.
function contract(bytes: Uint8Array): void {
  counts.checked++
  const refused = checkArgs(Buffer.from(bytes))
  if (refused !== null) {
    counts.refused++
    return
  }
  counts.accepted++
  let decoded: unknown
  try {
    decoded = decodeValue(bytes)
  } catch (e) {
    fail('the Rust check accepts, cbor-x throws', bytes, String(e))
  }
  if (!Array.isArray(decoded)) fail('accepted arguments decode to a non-array', bytes, String(decoded))
  try {
    checkAndCopyArgs(decoded, 'the decoded arguments')
  } catch (e) {
    fail('accepted arguments decode to a value berth cannot pass on', bytes, String(e))
  }
}

const started = Date.now()
for (let i = 0; i < iterations; i++) {
  counts.generated++
  const args: unknown[] =
    i % 50 === 0 ? [deep(MAX_DEPTH - 1 + int(3))] : Array.from({ length: int(4) }, () => value(0, 1 + int(8)))
  let copied: unknown[]
  try {
    copied = checkAndCopyArgs(args, 'fuzz')
  } catch {
    counts.refusedByClient++
    continue
  }
  const bytes = encodeValue(copied)
  counts.encoded++
  // (a): what the client sends passes the server.
  counts.checked++
  const refused = checkArgs(Buffer.from(bytes))
  if (refused !== null) fail('berth encodes it, the server refuses it', bytes, refused)
  counts.accepted++
  contract(bytes)
  for (let m = 0; m < 4; m++) contract(mutate(bytes))
  contract(Uint8Array.from({ length: int(24) }, () => int(256)))
  const raw = randomArgs()
  const before = counts.accepted
  contract(raw)
  counts.grammar++
  counts.grammarAccepted += counts.accepted - before
  contract(mutate(raw))
}
const secs = ((Date.now() - started) / 1000).toFixed(1)
console.log(
  `fuzz-values: ok, seed ${firstSeed}: ${counts.generated} argument lists (${counts.refusedByClient} refused by checkAndCopy), ` +
    `${counts.encoded} encodings all accepted by the Rust check; ${counts.checked} checks, ` +
    `${counts.accepted} accepted (each decoded by cbor-x to plain values), ${counts.refused} refused ` +
    `(of ${counts.grammar} raw CBOR argument lists from the grammar, ${counts.grammarAccepted} accepted); ${secs} s`,
)
