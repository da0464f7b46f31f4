import { InvalidError } from '../shared/errors.ts'

/** The shortest wait between two attempts, in seconds (crates/berth-core MIN_RETRY_DELAY). */
const MIN_DELAY = 1

export interface RetriesOptions {
  maxRetries: number
  /** Multiplier of the delay between consecutive retries, 1..10. */
  backoffCoefficient?: number
  /** Seconds before the first retry, 0..60; attempts are never less than 1 s apart, as in Modal. */
  initialDelay?: number
  /** Upper bound of any delay in seconds, 1..60. */
  maxDelay?: number
}

function check(value: unknown, field: string, min: number, max: number, integer: boolean): number {
  if (typeof value !== 'number' || !(value >= min && value <= max) || (integer && !Number.isInteger(value))) {
    throw new InvalidError(
      `Retries: ${field} must be ${integer ? 'an integer' : 'a number'} between ${min} and ${max}, got ${String(value)}.`,
    )
  }
  return value
}

/** Retry policy with Modal's bounds. Times are seconds. */
export class Retries {
  readonly maxRetries: number
  readonly backoffCoefficient: number
  readonly initialDelay: number
  readonly maxDelay: number

  constructor(opts: RetriesOptions) {
    if (typeof opts !== 'object' || opts === null) {
      throw new InvalidError('Retries: pass an options object, e.g. new Retries({ maxRetries: 3 }).')
    }
    const { maxRetries, backoffCoefficient = 2, initialDelay = 1, maxDelay = 60 } = opts
    this.maxRetries = check(maxRetries, 'maxRetries', 0, 10, true)
    this.backoffCoefficient = check(backoffCoefficient, 'backoffCoefficient', 1, 10, false)
    this.initialDelay = check(initialDelay, 'initialDelay', 0, 60, false)
    this.maxDelay = check(maxDelay, 'maxDelay', 1, 60, false)
    Object.freeze(this)
  }

  /** `n` means `{ maxRetries: n, backoffCoefficient: 1, initialDelay: 1 }`; undefined means no retries. */
  static normalize(r: number | Retries | RetriesOptions | undefined): Retries {
    if (r === undefined) return NO_RETRIES
    if (r instanceof Retries) return r
    if (typeof r === 'number') return new Retries({ maxRetries: r, backoffCoefficient: 1, initialDelay: 1 })
    if (typeof r === 'object' && r !== null) return new Retries(r)
    throw new InvalidError(
      `retries must be a number or a Retries (e.g. retries: 3 or retries: new Retries({ maxRetries: 3 })), got ${typeof r}.`,
    )
  }

  /** Seconds to wait before retry `k` (1-based): never under a second, as in Modal. */
  delayFor(k: number): number {
    return Math.max(MIN_DELAY, Math.min(this.initialDelay * this.backoffCoefficient ** (k - 1), this.maxDelay))
  }

  /** Milliseconds to wait before retry `k` (1-based). */
  delayMsFor(k: number): number {
    return Math.round(this.delayFor(k) * 1000)
  }

  toJSON(): Required<RetriesOptions> {
    const { maxRetries, backoffCoefficient, initialDelay, maxDelay } = this
    return { maxRetries, backoffCoefficient, initialDelay, maxDelay }
  }
}

const NO_RETRIES = new Retries({ maxRetries: 0 })
