// The one map loop (`map`, `starmap`, `forEach`) over any transport, and the input helpers the
// handles share.
import { InvalidError } from '../shared/errors.ts'
import { progress } from './progress.ts'
import type { Transport } from './transport.ts'
import type { MapOptions } from './types.ts'

/** How far `map` may run ahead of its consumer (inputs submitted, results not yet taken). */
export const MAP_WINDOW = 10_000

/**
 * Submits inputs up to MAP_WINDOW ahead of the consumer and yields their results, in input
 * order unless `opts.orderOutputs` is false. Leaving early (a break, a failure) cancels what is
 * still queued or running rather than run it for nobody. `label` and `total` (when the inputs
 * say how many they are) name it on the terminal's progress line (progress.ts).
 */
export async function* mapLoop(
  transport: Transport,
  what: string,
  tuples: Iterable<unknown[]> | AsyncIterable<unknown[]>,
  opts: MapOptions,
  label = what,
  total?: number,
): AsyncGenerator<unknown> {
  const ordered = opts.orderOutputs ?? true
  const results = new Map<number, { ok: boolean; value: unknown }>()
  const arrivals: number[] = []
  let wake: (() => void) | undefined
  let failure: { error: unknown } | undefined
  const poke = () => {
    wake?.()
    wake = undefined
  }
  const shown = progress(label, total)
  const stream = transport.openMap(what, {
    item: (index, ok, value) => {
      shown.done(ok)
      results.set(index, { ok, value })
      arrivals.push(index)
      poke()
    },
    end: poke,
    fail: (error) => {
      failure = { error }
      poke()
    },
  })
  const lowWater = transport.mapLowWater
  let submitted = 0
  let taken = 0
  let exhausted = false
  // Plain iterables are read without an await per input, so that a transport that sends
  // inputs in batches (one per microtask) gets up to a window's worth in one.
  const syncIt = Symbol.iterator in tuples ? (tuples as Iterable<unknown[]>)[Symbol.iterator]() : undefined
  const asyncIt = syncIt ? undefined : (tuples as AsyncIterable<unknown[]>)[Symbol.asyncIterator]()
  try {
    for (;;) {
      if (!exhausted && submitted - taken <= lowWater) {
        while (!exhausted && submitted - taken < MAP_WINDOW) {
          const r = syncIt ? syncIt.next() : await asyncIt!.next()
          if (r.done) {
            exhausted = true
            stream.close()
            break
          }
          const i = submitted++
          stream.push(i, r.value)
        }
      }
      if (exhausted && taken === submitted) return
      const next = ordered ? (results.has(taken) ? taken : undefined) : arrivals.shift()
      if (next === undefined) {
        if (failure) throw failure.error
        await new Promise<void>((r) => (wake = r))
        continue
      }
      const s = results.get(next)!
      results.delete(next)
      taken++
      if (s.ok) yield s.value
      else if (opts.returnExceptions) yield s.value
      else throw s.value
    }
  } finally {
    shown.end()
    if (!exhausted) stream.close()
    stream.finish(!(exhausted && taken === submitted))
  }
}

export function splitOptions(inputs: unknown[], what: string): { iterables: unknown[]; opts: MapOptions } {
  let opts: MapOptions = {}
  const last = inputs[inputs.length - 1]
  if (inputs.length > 1 && last !== null && typeof last === 'object' && !(Symbol.iterator in last) && !(Symbol.asyncIterator in last)) {
    opts = last as MapOptions
    inputs = inputs.slice(0, -1)
  }
  if (inputs.length === 0) throw new InvalidError(`${what}(): pass at least one iterable of inputs`)
  for (const x of inputs) {
    if (x === null || typeof x !== 'object' || (!(Symbol.iterator in x) && !(Symbol.asyncIterator in x))) {
      throw new InvalidError(
        `${what}(): each input must be an iterable (an array, a generator, an async iterable); for one call use .remote()`,
      )
    }
  }
  return { iterables: inputs, opts }
}

export async function* toAsync<T>(it: Iterable<T> | AsyncIterable<T>): AsyncGenerator<T> {
  if (it === null || typeof it !== 'object' || (!(Symbol.iterator in it) && !(Symbol.asyncIterator in it))) {
    throw new InvalidError('starmap(): pass an iterable of argument tuples, e.g. [[1, 2], [3, 4]]')
  }
  yield* it as AsyncIterable<T>
}

/** Parallel iterables, Modal's `f.map(xs, ys)`: stops at the shortest. */
export async function* zip(iterables: unknown[]): AsyncGenerator<unknown[]> {
  if (iterables.length === 1) {
    for await (const x of iterables[0] as AsyncIterable<unknown>) yield [x]
    return
  }
  const its = iterables.map((x) => toAsync(x as AsyncIterable<unknown>)[Symbol.asyncIterator]())
  for (;;) {
    const rs = await Promise.all(its.map((i) => i.next()))
    if (rs.some((r) => r.done)) return
    yield rs.map((r) => r.value)
  }
}

/** A plain (sync-only) iterable object, which can be read without an await per item. */
export function isSyncIterable(x: unknown): x is Iterable<unknown> {
  return x !== null && typeof x === 'object' && Symbol.iterator in x && !(Symbol.asyncIterator in x)
}

/**
 * `zip`, without an await per input when every input is a plain (sync) iterable: a caller that
 * feeds a stream can then push a whole array in one batch.
 */
export function zipInputs(iterables: unknown[]): Iterable<unknown[]> | AsyncIterable<unknown[]> {
  if (!iterables.every(isSyncIterable)) return zip(iterables)
  return (function* () {
    const its = iterables.map((x) => (x as Iterable<unknown>)[Symbol.iterator]())
    for (;;) {
      const rs = its.map((i) => i.next())
      if (rs.some((r) => r.done)) return
      yield rs.map((r) => r.value)
    }
  })()
}
