// W3C trace context in the JavaScript layer (README "Tracing"): an input's `traceparent`,
// formatted only when asked for, and the trace its calls continue. The control plane's side is
// crates/berth-proto/src/trace.rs (parsing a caller's header, span ids of process containers'
// inputs); this is the embedded runtime's and the container loop's.
import { randomFillSync } from 'node:crypto'

/** A trace, as the calls made in it share it: its trace-id and flags, lowercase hex. */
export interface Trace {
  readonly id: string
  readonly flags: string
}

const HEX: string[] = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'))

/** `n` bytes of `bytes` from `at`, as lowercase hex. */
export function hexOf(bytes: Uint8Array, at: number, n: number): string {
  let s = ''
  for (let i = at; i < at + n; i++) s += HEX[bytes[i]]
  return s
}

// Randomness for trace-ids and the span key, taken from the OS 4 KiB at a time.
const pool = new Uint8Array(4096)
let poolAt = pool.length
function random(n: number): number {
  if (poolAt + n > pool.length) {
    randomFillSync(pool)
    poolAt = 0
  }
  const at = poolAt
  poolAt += n
  return at
}

/** A new trace (sampled, as the control plane's are: a tracer in the input records it). */
export function newTrace(): Trace {
  let at = random(16)
  // An all-zero trace-id is invalid (W3C); 16 random zero bytes do not happen, but say so.
  while (pool.subarray(at, at + 16).every((b) => b === 0)) at = random(16)
  return { id: hexOf(pool, at, 16), flags: '01' }
}

const TRACEPARENT = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$/

/**
 * The trace of a `traceparent` header value, as W3C Trace Context level 1 reads it (version 00
 * exactly, a later one but `ff` by its first fields; ids not all zero); undefined otherwise.
 */
export function parseTraceparent(header: string): Trace | undefined {
  const m = TRACEPARENT.exec(header)
  if (m === null || m[1] === 'ff' || (m[1] === '00' && m[5] !== undefined)) return undefined
  if (/^0+$/.test(m[2]) || /^0+$/.test(m[3])) return undefined
  return { id: m[2], flags: m[4] }
}

// The span ids of embedded inputs: a keyed bijection of the input id (unique in this process),
// so they never repeat here and differ across processes.
const keyAt = random(8)
const KEY = [
  (pool[keyAt] | (pool[keyAt + 1] << 8) | (pool[keyAt + 2] << 16) | (pool[keyAt + 3] << 24)) >>> 0,
  (pool[keyAt + 4] | (pool[keyAt + 5] << 8) | (pool[keyAt + 6] << 16) | (pool[keyAt + 7] << 24)) >>> 0,
]

/** murmur3's 32-bit finalizer: a bijection. */
function fmix32(h: number): number {
  h ^= h >>> 16
  h = Math.imul(h, 0x85ebca6b)
  h ^= h >>> 13
  h = Math.imul(h, 0xc2b2ae35)
  h ^= h >>> 16
  return h >>> 0
}

/** The span id of input `n`, 16 hex digits, never all zero. */
export function spanHex(n: number): string {
  const lo = n >>> 0
  const a = fmix32(lo ^ KEY[0])
  let b = fmix32((lo ^ KEY[1]) + Math.floor(n / 0x100000000))
  if (a === 0 && b === 0) b = 1
  return a.toString(16).padStart(8, '0') + b.toString(16).padStart(8, '0')
}

/** `00-<trace-id>-<span>-<flags>`. */
export function traceparentOf(trace: Trace, span: string): string {
  return `00-${trace.id}-${span}-${trace.flags}`
}
