// A handle: the calls users make on a function or a class method (remote, local, spawn, map,
// starmap, forEach), written once over the transport its target picks (transport.ts).
import { checkArity } from '../shared/arity.ts'
import { FunctionCall } from './function-call.ts'
import { generatorCallError, GenStream, notGeneratorError } from './gen-stream.ts'
import { isSyncIterable, mapLoop, splitOptions, toAsync, zip, zipInputs } from './map.ts'
import { countOf } from './progress.ts'
import type { HandleTarget } from './transport.ts'
import type { MapOptions } from './types.ts'

/** remote / remoteGen / local / spawn / map / starmap / forEach over one target. */
export class Invocable {
  constructor(protected readonly target: HandleTarget) {}

  remote(...args: unknown[]): Promise<unknown> {
    const t = this.target
    if (t.gen === true) return Promise.reject(generatorCallError(t.label, 'remote'))
    if (t.arity !== undefined) {
      try {
        checkArity(t.arity, args.length, t.label)
      } catch (e) {
        return Promise.reject(e)
      }
    }
    return t.transport().remote(args)
  }

  /**
   * A generator's items, read with for await (Modal's `remote_gen`). The call starts at the
   * first read; leaving the loop early cancels it.
   */
  remoteGen(...args: unknown[]): AsyncIterable<unknown> {
    const t = this.target
    return new GenStream((sink) => {
      if (t.gen === false) throw notGeneratorError(t.label)
      if (t.arity !== undefined) checkArity(t.arity, args.length, t.label)
      return t.transport().remoteGen(args, sink)
    })
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
    if (t.gen === true) throw generatorCallError(t.label, 'spawn')
    if (t.arity !== undefined) checkArity(t.arity, args.length, t.label)
    const { id, source } = await t.transport().spawn(args)
    return new FunctionCall(id, source)
  }

  map(...inputs: unknown[]): AsyncIterable<unknown> {
    this.notGenerator('map')
    const transport = this.target.transport()
    const { iterables, opts } = splitOptions(inputs, 'map')
    const tuples = transport.syncInputs ? zipInputs(iterables) : zip(iterables)
    return mapLoop(transport, 'map', tuples, opts, `${this.target.label}.map()`, countOf(iterables))
  }

  starmap(argTuples: Iterable<unknown[]> | AsyncIterable<unknown[]>, opts: MapOptions = {}): AsyncIterable<unknown> {
    this.notGenerator('starmap')
    const transport = this.target.transport()
    const tuples = transport.syncInputs && isSyncIterable(argTuples) ? argTuples : toAsync(argTuples)
    return mapLoop(transport, 'starmap', tuples, opts, `${this.target.label}.starmap()`, countOf([argTuples]))
  }

  async forEach(...inputs: unknown[]): Promise<void> {
    this.notGenerator('forEach')
    const transport = this.target.transport()
    const { iterables, opts } = splitOptions(inputs, 'forEach')
    const tuples = transport.syncInputs ? zipInputs(iterables) : zip(iterables)
    const label = `${this.target.label}.forEach()`
    for await (const _ of mapLoop(transport, 'forEach', tuples, { ...opts, orderOutputs: false }, label, countOf(iterables))) {
      // results are dropped; a failure throws out of the loop
    }
  }

  private notGenerator(what: string): void {
    if (this.target.gen === true) throw generatorCallError(this.target.label, what)
  }
}
