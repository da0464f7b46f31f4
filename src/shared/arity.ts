// How many arguments a function or method takes, read from its definition, so that a call with
// too few or too many is refused (InvalidError here, INVALID_ARGUMENT / 400 at the server)
// instead of running with `undefined`s or silently dropping arguments.
//
// - min: the parameters before the first one with a default (Function.length). TypeScript's
//   `x?: T` leaves no trace at run time, so an optional parameter needs a default (`x = 0`,
//   or `x: T | undefined = undefined`) to be optional for berth.
// - max: every declared parameter; none with a rest parameter (`...xs`) or when the body reads
//   `arguments`, or when the source cannot be read.
import { InvalidError } from './errors.ts'

export interface Arity {
  min: number
  /** Undefined: any number. */
  max?: number
}

export function arityOf(fn: Function): Arity {
  const max = declaredParams(fn)
  return max === undefined ? { min: fn.length } : { min: Math.min(fn.length, max), max }
}

/** Throws InvalidError when `n` arguments do not fit. `label`: `square`, `Embedder.embed`. */
export function checkArity(arity: Arity, n: number, label: string): void {
  if (n >= arity.min && (arity.max === undefined || n <= arity.max)) return
  const hint =
    n < arity.min
      ? ". A parameter without a default is required: TypeScript's `x?` does not exist at run time, so give an " +
        'optional parameter a default (`x = 0`, or `x: T | undefined = undefined`)'
      : ''
  throw new InvalidError(`${label} takes ${arityText(arity)}; the call passes ${n}${hint}`)
}

/**
 * A `@batched` body gets one array per parameter, an item per input, so the inputs of one batch
 * must pass the same number of arguments (a call may leave out a parameter with a default or
 * pass more to a rest parameter, but not within a batch whose others did not). Returns the
 * InvalidError that fails every input of a batch whose inputs differ (as Modal fails such a
 * batch), or undefined. `label`: `Embedder.embed`.
 */
export function batchArityError(label: string, counts: readonly number[]): InvalidError | undefined {
  let min = Infinity
  let max = -Infinity
  for (const n of counts) {
    if (n < min) min = n
    if (n > max) max = n
  }
  if (min === max || counts.length === 0) return undefined
  const seen = [...new Set(counts)].sort((a, b) => a - b)
  const got = seen.length === 2 ? `${seen[0]} and ${seen[1]}` : `${seen.slice(0, -1).join(', ')} and ${seen[seen.length - 1]}`
  return new InvalidError(
    `${label} is @batched: the inputs of one batch must pass the same number of arguments; got ${got}. ` +
      'Pass every argument in each call: in a batch each parameter is one array with an item per input, so no input can leave one out',
  )
}

/** The same words as the server's (crates/berth-server/src/plane.rs, Arity::refuses). */
export function arityText({ min, max }: Arity): string {
  const s = (k: number) => (k === 1 ? '' : 's')
  if (max === undefined) return `at least ${min} argument${s(min)}`
  if (max === min) return `exactly ${max} argument${s(max)}`
  if (min === 0) return `at most ${max} argument${s(max)}`
  return `${min} to ${max} arguments`
}

/** The number of declared parameters, or undefined when any number may come. */
function declaredParams(fn: Function): number | undefined {
  let src: string
  try {
    src = Function.prototype.toString.call(fn)
  } catch {
    return undefined
  }
  if (src.includes('[native code]')) return undefined
  // `x => …` and `async x => …`: one parameter, no parentheses.
  const bare = /^(?:async\s+)?[A-Za-z_$][\w$]*\s*=>/.exec(src)
  if (bare) return /\barguments\b/.test(src.slice(bare[0].length)) ? undefined : 1
  const open = src.indexOf('(')
  if (open === -1) return undefined
  let depth = 0
  let count = 0
  let sawToken = false
  let rest = false
  for (let i = open; i < src.length; i++) {
    const c = src[i]
    if (c === '"' || c === "'" || c === '`') {
      i = skipString(src, i)
      if (depth === 1) sawToken = true
      continue
    }
    if (c === '/' && (src[i + 1] === '/' || src[i + 1] === '*')) {
      const end = src[i + 1] === '/' ? src.indexOf('\n', i) : src.indexOf('*/', i + 2) + 1
      if (end <= 0) return undefined
      i = end
      continue
    }
    if (c === '(' || c === '[' || c === '{') {
      depth++
      if (depth > 1) sawToken = true
      continue
    }
    if (c === ')' || c === ']' || c === '}') {
      depth--
      if (depth === 0) {
        if (sawToken) count++
        if (rest) return undefined
        return /\barguments\b/.test(src.slice(i)) ? undefined : count
      }
      continue
    }
    if (depth !== 1) continue
    if (c === ',') {
      if (sawToken) count++
      sawToken = false
    } else if (c === '.' && src.startsWith('...', i) && !sawToken) {
      rest = true
      sawToken = true
      i += 2
    } else if (!/\s/.test(c)) {
      sawToken = true
    }
  }
  return undefined
}

/** The index of the quote that closes the string literal opening at `src[i]` (or the end). */
export function skipString(src: string, i: number): number {
  const q = src[i]
  for (let j = i + 1; j < src.length; j++) {
    if (src[j] === '\\') j++
    else if (src[j] === q) return j
  }
  return src.length
}
