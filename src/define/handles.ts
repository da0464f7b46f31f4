// The handles an app gives out: `app.function(...)`'s, and `Cls.of(...)`'s for each method of a
// registered class. Their calls are the call layer's (call/handle.ts) over an AppTarget.
import { AppTarget, type LocalApp } from '../call/app-target.ts'
import { clsFromName } from '../call/from-name.ts'
import { Invocable } from '../call/handle.ts'
import type { ClsHandle, ClsParams } from '../call/types.ts'
import { runAsLocal } from '../run/context.ts'
import type { PoolDef, WebSpec } from '../run/pool.ts'
import { arityOf } from '../shared/arity.ts'
import { InvalidError } from '../shared/errors.ts'
import { classDefs } from './class-def.ts'
import { isGeneratorFunction, validateParams } from './decorators.ts'
import { validateBatched, validateConcurrent, type NormalizedOptions } from './options.ts'
import { takesRequest, validateWebEndpoint, WEB_ARITY } from './web.ts'

export class FunctionHandleImpl extends Invocable {
  readonly def: PoolDef
  constructor(
    readonly app: LocalApp,
    readonly name: string,
    readonly fn: (...a: any[]) => unknown,
    readonly opts: NormalizedOptions,
  ) {
    const batched = opts.batched ? validateBatched(opts.batched, `app.function('${name}')`) : undefined
    const conc = opts.concurrent ? validateConcurrent(opts.concurrent, `app.function('${name}')`) : undefined
    const gen = isGeneratorFunction(fn)
    if (gen && batched) {
      throw new InvalidError(
        `app.function('${name}'): a generator cannot be batched: a batch returns one array of results, a generator streams items. ` +
          'Drop the batched option, or make the function a plain async function.',
      )
    }
    const where = `app.function('${name}')`
    let web: WebSpec | undefined
    if (opts.webEndpoint !== undefined) {
      if (batched) {
        throw new InvalidError(
          `${where}: a web endpoint is one request, one input, so it cannot be batched itself. Drop the batched option and call a ` +
            'batched function from the endpoint, or drop webEndpoint.',
        )
      }
      web = { ...validateWebEndpoint(opts.webEndpoint, where), takesRequest: takesRequest(fn, where) }
    }
    if (opts.schedule !== undefined) {
      const arity = arityOf(fn)
      if (web || batched || gen || arity.min > 0) {
        const why = web
          ? 'a web endpoint is called by requests'
          : batched
            ? 'a batched function takes its inputs in batches'
            : gen
              ? 'a generator streams to a caller, and a tick has none'
              : `it takes ${arity.min} argument${arity.min === 1 ? '' : 's'}, and a tick passes none (give them defaults)`
        throw new InvalidError(`${where}: a schedule calls the function with no arguments at each tick; ${why}.`)
      }
    }
    const def: PoolDef = {
      key: `fn:${name}`,
      name,
      methods: [web ? { name, web, gen, arity: WEB_ARITY } : { name, batched, gen, arity: arityOf(fn) }],
      options: opts,
      maxInputs: conc?.maxInputs ?? 1,
      targetInputs: conc?.targetInputs ?? 1,
      fn,
    }
    super(new AppTarget(app, def, 0, name, def.methods[0].arity, (args) => callLocal(fn, null, args, batched !== undefined)))
    this.def = def
  }
}

/** A `.local()` call is no input of its own, as in Modal: no input id, no function call id (context.ts runAsLocal). */
function callLocal(fn: (...a: any[]) => unknown, self: unknown, args: unknown[], batched: boolean): Promise<unknown> {
  return runAsLocal(async () => {
    if (!batched) return fn.apply(self, args)
    const out = await fn.apply(
      self,
      args.map((a) => [a]),
    )
    if (!Array.isArray(out) || out.length !== 1) {
      throw new InvalidError(`${fn.name} is @batched: called with 1 input it must return an array of 1 result`)
    }
    return out[0]
  })
}

/** Handles on classes: `Cls.of(Embedder, { model: 'mini' })`, `Cls.fromName<Embedder>(app, 'Embedder')`. */
export const Cls = {
  /** A handle on a class of an app served elsewhere (App.lookup, else BERTH_SERVER, else http://127.0.0.1:7450). */
  fromName<T = unknown>(app: string, name: string, params?: NoInfer<ClsParams<T>>): ClsHandle<T> {
    return clsFromName<T>(app, name, params as Record<string, unknown> | undefined)
  },

  of<T>(cls: new () => T, params?: NoInfer<ClsParams<T>>): ClsHandle<T> {
    const def = classDefs.get(cls)
    if (!def) {
      throw new InvalidError(
        `Cls.of(${(cls as any)?.name ?? String(cls)}): the class is not registered with an app. Decorate it with @app.cls()`,
      )
    }
    const full = validateParams(cls, params as Record<string, unknown> | undefined)
    const meta = def.classMeta
    const pd = def.poolDef(full)
    const handle: Record<string, Invocable> = {}
    meta.methods.forEach((m, i) => {
      if (m.web?.app !== undefined) return
      const batched = m.batched !== undefined
      handle[m.name] = new Invocable(
        new AppTarget(def.app, pd, i, `${def.name}.${m.name}`, pd.methods[i].arity, async (args) => {
          const inst = await def.localInstance(full)
          return callLocal(inst[m.name], inst, args, batched)
        }),
      )
    })
    // Members the types show but no caller may call: reaching one says what it is.
    for (const [name, error] of def.handleErrors) {
      Object.defineProperty(handle, name, {
        get() {
          throw new InvalidError(error)
        },
      })
    }
    return Object.freeze(handle) as unknown as ClsHandle<T>
  },
}
