// A class registered with `@app.cls()`: its decorators' metadata, the pool definition of each
// parameter set, and the instance `.local()` calls run on.
import type { LocalApp } from '../call/app-target.ts'
import { arityOf } from '../shared/arity.ts'
import { InvalidError } from '../shared/errors.ts'
import { runBuildHooks, type PoolDef } from '../run/pool.ts'
import { getClassMeta, type ClassMeta } from './decorators.ts'
import type { NormalizedOptions } from './options.ts'
import { takesRequest, WEB_ARITY } from './web.ts'

export class ClassDef {
  private readonly locals = new Map<string, Promise<any>>()
  constructor(
    readonly app: LocalApp,
    readonly name: string,
    readonly cls: new () => any,
    readonly opts: NormalizedOptions,
  ) {}
  // Read lazily: class decorators apply bottom-up, so @concurrent may sit above or below @app.cls.
  get classMeta(): ClassMeta {
    const meta = getClassMeta(this.cls)
    if (meta.methods.length === 0) {
      throw new InvalidError(`${this.name} has no @method() or @batched() member; mark the methods callers may call`)
    }
    return meta
  }
  /**
   * The members of the class a handle has no call for (hooks, parameters, undecorated methods),
   * each with what it is; `pass` says how a parameter is passed instead.
   */
  notCallable(pass: (param: string) => string): Map<string, string> {
    const meta = this.classMeta
    const what = new Map<string, string>()
    const callable = new Set(meta.methods.map((m) => m.name))
    for (let p = this.cls.prototype; p && p !== Object.prototype; p = Object.getPrototypeOf(p)) {
      for (const n of Object.getOwnPropertyNames(p)) {
        if (n === 'constructor' || callable.has(n) || what.has(n)) continue
        if (typeof Object.getOwnPropertyDescriptor(p, n)?.value !== 'function') continue
        what.set(n, 'not a @method(): mark it @method() (or @batched({ maxBatchSize, waitMs })) to call it as an input')
      }
    }
    const hooks: [string[], string][] = [
      [meta.build, 'a @build() hook: `berth build` runs it, and containers whose build is not cached'],
      [meta.exit, 'an @exit() hook: each container runs it when it stops'],
      [meta.snapEnter, 'an @enter({ snap: true }) hook: each container runs it once, before its first input'],
      [meta.enter, 'an @enter() hook: each container runs it once, before its first input'],
    ]
    for (const [names, text] of hooks) for (const n of names) what.set(n, text)
    for (const n of meta.params) what.set(n, `a @parameter(): pass it ${pass(n)}`)
    return what
  }
  /**
   * What reaching each member of `notCallable`, or a web app member, through a `Cls.of` handle
   * throws (the control plane tells other callers the same: crates/berth-server/src/functions.rs).
   */
  get handleErrors(): Map<string, string> {
    const meta = this.classMeta
    const methods = meta.methods.filter((m) => m.web?.app === undefined).map((m) => m.name)
    const members: [string, string][] = [...this.notCallable((n) => `when making the handle, Cls.of(${this.name}, { ${n}: ... })`)]
    for (const m of meta.methods) {
      if (m.web?.app !== undefined) {
        members.push([m.name, `a @${m.web.app}(): it answers HTTP requests under its path on the server's HTTP port, not calls`])
      }
    }
    this._handleErrors ??= new Map(
      members.map(([n, text]) => [
        n,
        `Cls.of(${this.name}).${n}: '${n}' is ${text}; a handle calls methods only. Callable methods of ${this.name}: ${methods.join(', ')}.`,
      ]),
    )
    return this._handleErrors
  }
  private _handleErrors: Map<string, string> | undefined
  poolDef(params: Record<string, unknown>): PoolDef {
    const meta = this.classMeta
    const c = meta.concurrent
    return {
      key: `cls:${this.name}:${paramsKey(params)}`,
      name: this.name,
      methods: meta.methods.map((m) => {
        const fn = this.cls.prototype[m.name]
        if (m.web === undefined) return { name: m.name, batched: m.batched, gen: m.gen, arity: arityOf(fn) }
        // A web app's requests stream back (a head, then its body's chunks) as a generator's items.
        if (m.web.app !== undefined) return { name: m.name, web: { ...m.web, takesRequest: true }, gen: true, arity: WEB_ARITY }
        const web = { ...m.web, takesRequest: takesRequest(fn, `@webEndpoint() on ${this.name}.${m.name}`) }
        return { name: m.name, web, gen: m.gen, arity: WEB_ARITY }
      }),
      options: this.opts,
      maxInputs: c?.maxInputs ?? 1,
      targetInputs: c?.targetInputs ?? c?.maxInputs ?? 1,
      cls: this.cls,
      meta,
      params,
    }
  }
  /** The instance `.local()` calls run on: built and entered once per parameter set. */
  localInstance(params: Record<string, unknown>): Promise<any> {
    const key = paramsKey(params)
    let p = this.locals.get(key)
    if (!p) {
      p = (async () => {
        const meta = this.classMeta
        const inst = new this.cls()
        for (const [k, v] of Object.entries(params)) inst[k] = v
        await runBuildHooks(this.cls, meta, inst)
        for (const n of meta.snapEnter) await inst[n]()
        for (const n of meta.enter) await inst[n]()
        return inst
      })()
      p.catch(() => this.locals.delete(key))
      this.locals.set(key, p)
    }
    return p
  }
}

/** The ClassDef of each class decorated with @app.cls(). */
export const classDefs = new WeakMap<Function, ClassDef>()

function paramsKey(params: Record<string, unknown>): string {
  return JSON.stringify(
    Object.keys(params)
      .sort()
      .map((k) => {
        const v = params[k]
        return [k, v instanceof Uint8Array ? Buffer.from(v).toString('base64') : v]
      }),
  )
}
