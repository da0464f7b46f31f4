// A handle: the calls users make on a function or a class method (remote, local, spawn, map,
// starmap, forEach), written once over the transport its target picks (transport.ts).
import { checkArity } from '../shared/arity.ts'
import { FunctionCall } from './function-call.ts'
import { isSyncIterable, mapLoop, splitOptions, toAsync, zip, zipInputs } from './map.ts'
import type { HandleTarget } from './transport.ts'
import type { MapOptions } from './types.ts'

/** remote / local / spawn / map / starmap / forEach over one target. */
export class Invocable {
  constructor(protected readonly target: HandleTarget) {}

  remote(...args: unknown[]): Promise<unknown> {
    const t = this.target
    if (t.arity !== undefined) {
      try {
        checkArity(t.arity, args.length, t.label)
      } catch (e) {
        return Promise.reject(e)
      }
    }
    return t.transport().remote(args)
  }

  local(...args: unknown[]): Promise<unknown> {
    const t = this.target
    try {
      if (t.arity !== undefined) checkArity(t.arity, args.length, t.label)
      return t.local(args)
    } catch (e) {
      return Promise.reject(e)
    }
  }

  async spawn(...args: unknown[]): Promise<FunctionCall<unknown>> {
    const t = this.target
    if (t.arity !== undefined) checkArity(t.arity, args.length, t.label)
    const { id, source } = await t.transport().spawn(args)
    return new FunctionCall(id, source)
  }

  map(...inputs: unknown[]): AsyncIterable<unknown> {
    const transport = this.target.transport()
    const { iterables, opts } = splitOptions(inputs, 'map')
    return mapLoop(transport, 'map', transport.syncInputs ? zipInputs(iterables) : zip(iterables), opts)
  }

  starmap(argTuples: Iterable<unknown[]> | AsyncIterable<unknown[]>, opts: MapOptions = {}): AsyncIterable<unknown> {
    const transport = this.target.transport()
    const tuples = transport.syncInputs && isSyncIterable(argTuples) ? argTuples : toAsync(argTuples)
    return mapLoop(transport, 'starmap', tuples, opts)
  }

  async forEach(...inputs: unknown[]): Promise<void> {
    const transport = this.target.transport()
    const { iterables, opts } = splitOptions(inputs, 'forEach')
    const tuples = transport.syncInputs ? zipInputs(iterables) : zip(iterables)
    for await (const _ of mapLoop(transport, 'forEach', tuples, { ...opts, orderOutputs: false })) {
      // results are dropped; a failure throws out of the loop
    }
  }
}
