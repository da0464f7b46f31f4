// App, the function and class handles, Cls, FunctionCall: the user's view over the runtime.
import { runAsLocal } from './context.ts'
import { getClassMeta, validateParams, type ClassMeta } from './decorators.ts'
import { FunctionTimeoutError, InvalidError } from './errors.ts'
import { normalizeOptions, validateBatched, validateConcurrent, type BatchedOptions, type ClsOptions, type FunctionOptions, type NormalizedOptions } from './options.ts'
import { existsSync } from 'node:fs'
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'

import { RemoteInvocable, clsFromName, lookupApp, remoteFunctionCall, serveHere } from './client.ts'
import { encodeValue } from './cbor.ts'
import { containerCommand } from './command.ts'
import { registryOf } from './process.ts'

import { EmbeddedRuntime, buildMarker, newFunctionCallId, runBuildHooks, type Pool, type PoolDef } from './runtime.ts'
import { arityOf, checkArity, type Arity } from './arity.ts'
import { checkAndCopyArgs, checkAndCopyArgsInPlace } from './serialize.ts'
import type { BatchItem, ClsHandle, ClsParams, FunctionCall as FunctionCallType, FunctionHandle, Invocable as InvocableType, MapOptions } from './types.ts'

/** How long `map` may run ahead of its consumer (inputs submitted, results not yet taken). */
const MAP_WINDOW = 10_000

export interface RunOptions {
  /** `'embedded'` (default): containers live in this process. */
  containers?: 'embedded' | 'process'
}

export interface AppRun extends AsyncDisposable {
  readonly app: App
  /** Stops taking inputs, finishes accepted ones, runs `@exit` hooks. */
  stop(): Promise<void>
}

interface Target {
  app: App
  def: PoolDef
  /** For classes: the method index in `def.methods`. */
  method: number
  label: string
  /** How many arguments a call may pass. */
  arity: Arity
  batched: boolean
  local: (args: unknown[]) => Promise<unknown>
  /** The pool of `def` in the runtime it was made in: looked up once per run, not per call. */
  pool?: Pool
  poolRuntime?: EmbeddedRuntime
  remoteWhat: string
  /** The same target through the control plane (process containers). */
  twin?: RemoteInvocable
}

function makeTarget(t: Omit<Target, 'remoteWhat'>): Target {
  return { ...t, remoteWhat: `${t.label}.remote` }
}

/** The file of the first stack frame outside berth: the module calling `new App()`. */
function callerFile(): string | undefined {
  const lines = (new Error().stack ?? '').split('\n').slice(1)
  const here = __filename
  for (const line of lines) {
    const m = /\((.*?):\d+:\d+\)$/.exec(line) ?? /at (.*?):\d+:\d+$/.exec(line)
    const file = m?.[1]
    if (!file || file.startsWith('node:') || file === here || file.includes('/berth/dist/') || file.endsWith('/src/app.ts')) continue
    return file.startsWith('file://') ? fileURLToPath(file) : file
  }
  return undefined
}

/** The run handle; with a callback, runs it and stops the app when it settles. */
async function runWith(app: App, stop: () => Promise<void>, fn: ((run: AppRun) => unknown) | undefined): Promise<unknown> {
  const handle: AppRun = { app, stop, [Symbol.asyncDispose]: stop }
  if (!fn) return handle
  try {
    return await fn(handle)
  } finally {
    await stop()
  }
}

const registry = new Set<App>()
let nextAppId = 0

/** Every App created in this process (the CLI looks through them). */
export function allApps(): App[] {
  return [...registry]
}

export class App {
  readonly name: string
  description: string | undefined
  private tags: Record<string, string>
  private runtime: EmbeddedRuntime | undefined
  private _appId: string | undefined
  /** @internal */ readonly functions = new Map<string, FunctionHandleImpl>()
  /** @internal */ readonly classes = new Map<string, ClassDef>()
  /** @internal */ readonly entrypoints: ((argv: string[]) => unknown)[] = []
  private readonly included: App[] = []

  constructor(name: string, opts: { description?: string; tags?: Record<string, string> } = {}) {
    if (typeof name !== 'string' || name.length === 0) {
      throw new InvalidError("new App(name): the name must be a non-empty string, e.g. new App('embeddings')")
    }
    this.name = name
    this.description = opts.description
    this.tags = { ...(opts.tags ?? {}) }
    this.sourceFile = callerFile()
    registry.add(this)
  }

  /** @internal The module that created this app: what process containers load. */
  sourceFile: string | undefined
  /** @internal Set while the app runs with process containers. */
  processServer: { shutdown(): Promise<void>; kill(): void; address: string } | undefined

  /**
   * Where a served app lives, for `Function.fromName` / `Cls.fromName` in this process
   * (otherwise BERTH_SERVER, else http://127.0.0.1:7450).
   */
  static lookup(name: string, opts: { server: string; token?: string }): { name: string; server: string } {
    return lookupApp(name, opts)
  }

  /** Set while the app runs. */
  get appId(): string | undefined {
    return this._appId
  }
  getTags(): Record<string, string> {
    return { ...this.tags }
  }
  setTags(tags: Record<string, string>): void {
    Object.assign(this.tags, tags)
  }

  /** Serves `other`'s functions and classes as part of this app. */
  include(other: App): this {
    if (!(other instanceof App)) throw new InvalidError('app.include(other): pass another App')
    this.included.push(other)
    return this
  }

  /** A batched function is called with one item and resolves to one result (SPEC §2). */
  function<F extends (...args: any[][]) => unknown[] | Promise<unknown[]>>(
    options: FunctionOptions & { batched: BatchedOptions },
    fn: F,
  ): InvocableType<BatchItem<Parameters<F>>, Awaited<ReturnType<F>>[number]> & { readonly name: string }
  function<F extends (...args: any[]) => any>(options: FunctionOptions, fn: F): FunctionHandle<F> & { readonly name: string }
  function<F extends (...args: any[]) => any>(fn: F): FunctionHandle<F> & { readonly name: string }
  function(a: any, b?: any): any {
    const [options, fn] = typeof a === 'function' ? [{}, a] : [a, b]
    if (typeof fn !== 'function') {
      throw new InvalidError('app.function(options, fn): the second argument must be the function to run, e.g. app.function({ timeout: 60 }, async function square(x) { ... })')
    }
    const name = (options?.name as string | undefined) ?? fn.name
    if (!name) throw new InvalidError('app.function: give the function a name (a named function, or the `name` option)')
    const where = `app.function('${name}')`
    const opts = normalizeOptions(options, where)
    if (this.functions.has(name)) throw new InvalidError(`${where}: app '${this.name}' already has a function named '${name}'; pass a distinct \`name\` option`)
    const handle = new FunctionHandleImpl(this, name, fn, opts)
    this.functions.set(name, handle)
    return handle
  }

  /** The class decorator: `@app.cls({ minContainers: 1 })`. */
  cls(options: ClsOptions = {}): <C extends abstract new (...args: any) => any>(cls: C, context: ClassDecoratorContext<C>) => void {
    const app = this
    if (typeof options === 'function') {
      throw new InvalidError('@app.cls must be called: write @app.cls() (Suggestion: @app.cls())')
    }
    return function (cls: any, context: any) {
      if (context === undefined || typeof context !== 'object' || !('kind' in context)) {
        throw new InvalidError('@app.cls: berth uses TC39 standard decorators; remove `experimentalDecorators` from your tsconfig.json')
      }
      if (context.kind !== 'class' || typeof cls !== 'function') {
        throw new InvalidError(`@app.cls() decorates a class; it was put on a ${context.kind} (${String(context.name)}). Move it onto the class declaration.`)
      }
      const name = options.name ?? cls.name
      const where = `@app.cls() on ${name}`
      const opts = normalizeOptions(options, where, { cls: true })
      const def = new ClassDef(app, name, cls, opts)
      classDefs.set(cls, def)
      app.classes.set(name, def)
    }
  }

  /** The function `berth run` calls with the arguments after `--`. */
  localEntrypoint<F extends (argv: string[]) => unknown>(fn: F): F {
    if (typeof fn !== 'function') throw new InvalidError('app.localEntrypoint(fn): pass a function')
    this.entrypoints.push(fn)
    return fn
  }

  /**
   * Starts the app in this process. `await using run = await app.run()` stops it at the end of
   * the block; `await app.run(async () => ...)` stops it when the callback settles.
   */
  run(opts?: RunOptions): Promise<AppRun>
  run<T>(fn: (run: AppRun) => Promise<T> | T, opts?: RunOptions): Promise<T>
  async run(a?: any, b?: any): Promise<any> {
    const [fn, opts] = typeof a === 'function' ? [a, b as RunOptions | undefined] : [undefined, a as RunOptions | undefined]
    const mode = opts?.containers ?? 'embedded'
    if (mode !== 'embedded' && mode !== 'process') {
      throw new InvalidError(`app.run({ containers: '${String(mode)}' }): containers are 'embedded' (default) or 'process'`)
    }
    if (mode === 'process') return this.runProcess(fn)
    const apps = this.withIncluded()
    for (const app of apps) {
      if (app.runtime?.running) throw new InvalidError(`App '${app.name}' is already running; stop it first (run.stop())`)
    }
    const runtime = new EmbeddedRuntime()
    const appId = `ap-${process.pid}-${++nextAppId}`
    for (const app of apps) {
      app.runtime = runtime
      app._appId = appId
    }
    // minContainers start warm, as in Modal: pools that need no parameters are created now.
    for (const app of apps) {
      for (const f of app.functions.values()) if (f.opts.minContainers > 0) runtime.pool(f.def)
      for (const c of app.classes.values()) {
        if (c.opts.minContainers > 0) {
          try {
            runtime.pool(c.poolDef(validateParams(c.cls, undefined)))
          } catch {
            // Required parameters: containers start with the first Cls.of(...) call.
          }
        }
      }
    }
    // A program that never stops its app still gets its @exit hooks: when nothing else keeps
    // Node alive, the app stops (an idle runtime holds nothing open, so this fires).
    const onBeforeExit = () => void stop()
    process.once('beforeExit', onBeforeExit)
    const stop = async () => {
      process.off('beforeExit', onBeforeExit)
      await runtime.stop()
      for (const app of apps) if (app.runtime === runtime) app._appId = undefined
    }
    return runWith(this, stop, fn)
  }

  /**
   * @internal `berth build`: runs this app's classes' `@build` hooks whose cached marker is missing.
   * Returns what each class did.
   */
  async runBuilds(): Promise<{ name: string; status: 'built' | 'cached' | 'none' }[]> {
    const out: { name: string; status: 'built' | 'cached' | 'none' }[] = []
    {
      for (const c of this.classes.values()) {
        const meta = c.classMeta
        if (meta.build.length === 0) {
          out.push({ name: c.name, status: 'none' })
          continue
        }
        if (existsSync(buildMarker(c.cls))) {
          out.push({ name: c.name, status: 'cached' })
          continue
        }
        let params: Record<string, unknown> = {}
        try {
          params = validateParams(c.cls, undefined)
        } catch {
          // required parameters: build hooks see the fields' own initial values
        }
        const inst = new c.cls()
        for (const [k, v] of Object.entries(params)) inst[k] = v
        await runBuildHooks(c.cls, meta, inst)
        out.push({ name: c.name, status: 'built' })
      }
    }
    return out
  }

  /** @internal What `berth serve` serves: every function and class of this app. */
  servedDefs(): { def: PoolDef; isClass: boolean }[] {
    return [
      ...[...this.functions.values()].map((f) => ({ def: f.def, isClass: false })),
      ...[...this.classes.values()].map((c) => ({ def: c.poolDef({}), isClass: true })),
    ]
  }

  /** @internal The pool definition a container process serves. */
  containerDef(name: string, params: Record<string, unknown> | undefined): PoolDef {
    const f = this.functions.get(name)
    if (f) return f.def
    const c = this.classes.get(name)
    if (!c) throw new InvalidError(`app '${this.name}' has no function or class '${name}'`)
    return c.poolDef(validateParams(c.cls, params))
  }

  deploy(): never {
    throw new InvalidError('app.deploy() is not available in this version; serve the app in-process with app.run()')
  }

  /**
   * Containers as child processes behind a local control plane; the handles call through it.
   * Inside a container process (which loads this same module) it does nothing.
   */
  private async runProcess(fn: ((run: AppRun) => unknown) | undefined): Promise<any> {
    if (process.env.BERTH_CONTAINER_ID !== undefined) {
      const idle: AppRun = { app: this, stop: async () => {}, [Symbol.asyncDispose]: async () => {} }
      return fn ? undefined : idle
    }
    const apps = this.withIncluded()
    for (const app of apps) {
      if (app.runtime?.running || app.processServer) throw new InvalidError(`App '${app.name}' is already running; stop it first (run.stop())`)
    }
    const file = this.sourceFile
    if (!file || !existsSync(file)) {
      throw new InvalidError(`app.run({ containers: 'process' }): cannot tell which file defines app '${this.name}' (containers load it); run it with \`npx berth run <file.ts> --containers process\``)
    }
    const { BindingServer } = createRequire(__filename)('../binding.cjs')
    const server = BindingServer.start(registryOf(apps), {
      host: '127.0.0.1',
      grpcPort: 0,
      containerCommand: containerCommand(),
      appFile: file,
    })
    const appId = `ap-${process.pid}-${++nextAppId}`
    serveHere(`http://${server.address}`, server)
    for (const app of apps) {
      app.processServer = server
      app._appId = appId
      lookupApp(app.name, { server: `http://${server.address}` })
    }
    let stopped: Promise<void> | undefined
    const stop = () =>
      (stopped ??= (async () => {
        await server.shutdown()
        for (const app of apps) {
          app.processServer = undefined
          app._appId = undefined
        }
      })())
    return runWith(this, stop, fn)
  }

  /** @internal */
  runtimeIfRunning(): EmbeddedRuntime | undefined {
    const rt = this.runtime
    return rt !== undefined && rt.running ? rt : undefined
  }

  /** @internal */
  requireRuntime(what: string): EmbeddedRuntime {
    const rt = this.runtime
    if (!rt || !rt.running) {
      throw new InvalidError(`${what}: app '${this.name}' is not running. Call it inside \`await app.run(async () => { ... })\` (or \`await using run = await app.run()\`), or run the file with \`npx berth run file.ts\`.`)
    }
    return rt
  }

  private withIncluded(seen = new Set<App>()): App[] {
    if (seen.has(this)) return []
    seen.add(this)
    return [this, ...this.included.flatMap((a) => a.withIncluded(seen))]
  }
}

class ClassDef {
  private readonly locals = new Map<string, Promise<any>>()
  constructor(readonly app: App, readonly name: string, readonly cls: new () => any, readonly opts: NormalizedOptions) {}
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
  /** What reaching each member of `notCallable` through a `Cls.of` handle throws. */
  get handleErrors(): Map<string, string> {
    const methods = this.classMeta.methods.map((m) => m.name).join(', ')
    this._handleErrors ??= new Map(
      [...this.notCallable((n) => `when making the handle, Cls.of(${this.name}, { ${n}: ... })`)].map(([n, text]) => [
        n,
        `Cls.of(${this.name}).${n}: '${n}' is ${text}; a handle calls methods only. Callable methods of ${this.name}: ${methods}.`,
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
      methods: meta.methods.map((m) => ({ name: m.name, batched: m.batched, arity: arityOf(this.cls.prototype[m.name]) })),
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

const classDefs = new WeakMap<Function, ClassDef>()

function paramsKey(params: Record<string, unknown>): string {
  return JSON.stringify(Object.keys(params).sort().map((k) => {
    const v = params[k]
    return [k, v instanceof Uint8Array ? Buffer.from(v).toString('base64') : v]
  }))
}

type Settled = { ok: true; value: unknown } | { ok: false; error: unknown }

/** remote / local / spawn / map / starmap / forEach over one target. */
class Invocable {
  constructor(protected readonly target: Target) {}

  /** With process containers, the same calls go through the local control plane. */
  private twin(): RemoteInvocable | undefined {
    const t = this.target
    if (!t.app.processServer) return undefined
    const method = t.def.cls ? t.def.methods[t.method].name : ''
    const params = t.def.params ? Buffer.from(encodeValue(t.def.params)) : Buffer.alloc(0)
    return (t.twin ??= new RemoteInvocable(t.app.name, t.def.name, method, params, t.label))
  }

  remote(...args: unknown[]): Promise<unknown> {
    const t = this.target
    try {
      checkArity(t.arity, args.length, t.label)
    } catch (e) {
      return Promise.reject(e)
    }
    const twin = this.twin()
    if (twin) return twin.remote(...args)
    const rt = t.app.runtimeIfRunning()
    try {
      if (rt === undefined) t.app.requireRuntime(t.remoteWhat)
      let pool = t.pool
      if (t.poolRuntime !== rt) {
        pool = t.pool = rt!.pool(t.def)
        t.poolRuntime = rt
      }
      checkAndCopyArgsInPlace(args, t.remoteWhat)
      return rt!.call(pool!, t.method, args, newFunctionCallId())
    } catch (e) {
      return Promise.reject(e)
    }
  }

  local(...args: unknown[]): Promise<unknown> {
    try {
      checkArity(this.target.arity, args.length, this.target.label)
      return this.target.local(args)
    } catch (e) {
      return Promise.reject(e)
    }
  }

  async spawn(...args: unknown[]): Promise<FunctionCall<unknown>> {
    checkArity(this.target.arity, args.length, this.target.label)
    const twin = this.twin()
    if (twin) return twin.spawn(...args)
    const { rt, pool, target } = this.prepare('spawn')
    const checked = checkAndCopyArgsInPlace(args, `${target.label}.spawn`)
    const fc = newFunctionCallId()
    let input = 0
    const result = new Promise((resolve, reject) => {
      input = rt.submit(pool, target.method, checked, fc, resolve, reject)
    })
    return new FunctionCall(`fc-${fc}`, result, () => rt.cancel([input]))
  }

  map(...inputs: unknown[]): AsyncIterable<unknown> {
    const twin = this.twin()
    if (twin) return twin.map(...inputs)
    const { iterables, opts } = splitOptions(inputs, 'map')
    return this.run('map', zip(iterables), opts)
  }

  starmap(argTuples: Iterable<unknown[]> | AsyncIterable<unknown[]>, opts: MapOptions = {}): AsyncIterable<unknown> {
    const twin = this.twin()
    if (twin) return twin.starmap(argTuples, opts)
    return this.run('starmap', toAsync(argTuples), opts)
  }

  async forEach(...inputs: unknown[]): Promise<void> {
    const twin = this.twin()
    if (twin) return twin.forEach(...inputs)
    const { iterables, opts } = splitOptions(inputs, 'forEach')
    for await (const _ of this.run('forEach', zip(iterables), { ...opts, orderOutputs: false })) {
      // results are dropped; a failure throws out of the loop
    }
  }

  private prepare(what: string): { rt: EmbeddedRuntime; pool: Pool; target: Target } {
    const target = this.target
    const rt = target.app.requireRuntime(`${target.label}.${what}`)
    return { rt, pool: rt.pool(target.def), target }
  }

  private async *run(what: string, tuples: AsyncIterable<unknown[]>, opts: MapOptions): AsyncGenerator<unknown> {
    const { rt, pool, target } = this.prepare(what)
    const ordered = opts.orderOutputs ?? true
    const fc = newFunctionCallId()
    const results = new Map<number, Settled>()
    const arrivals: number[] = []
    const live = new Map<number, number>()
    let wake: (() => void) | undefined
    let submitted = 0
    let taken = 0
    let exhausted = false
    const it = tuples[Symbol.asyncIterator]()
    const settle = (i: number, s: Settled) => {
      live.delete(i)
      results.set(i, s)
      arrivals.push(i)
      wake?.()
      wake = undefined
    }
    try {
      for (;;) {
        while (!exhausted && submitted - taken < MAP_WINDOW) {
          const r = await it.next()
          if (r.done) {
            exhausted = true
            break
          }
          const i = submitted++
          checkArity(target.arity, (r.value as unknown[]).length, `${target.label} (input ${i} of ${what})`)
          const args = checkAndCopyArgs(r.value, `${target.label}.${what} (input ${i})`)
          live.set(i, rt.submit(pool, target.method, args, fc, (value) => settle(i, { ok: true, value }), (error) => settle(i, { ok: false, error })))
        }
        if (exhausted && taken === submitted) return
        let next: number | undefined
        if (ordered) {
          if (results.has(taken)) next = taken
        } else {
          next = arrivals.shift()
        }
        if (next === undefined) {
          await new Promise<void>((r) => (wake = r))
          continue
        }
        const s = results.get(next)!
        results.delete(next)
        taken++
        if (s.ok) yield s.value
        else if (opts.returnExceptions) yield s.error
        else throw s.error
      }
    } finally {
      // Stopped early (break, or a failure): what is still queued or running is cancelled.
      if (live.size > 0) rt.cancel([...live.values()])
    }
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
      throw new InvalidError(`${what}(): each input must be an iterable (an array, a generator, an async iterable); for one call use .remote()`)
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

class FunctionHandleImpl extends Invocable {
  readonly def: PoolDef
  constructor(readonly app: App, readonly name: string, readonly fn: (...a: any[]) => unknown, readonly opts: NormalizedOptions) {
    const batched = opts.batched ? validateBatched(opts.batched, `app.function('${name}')`) : undefined
    const conc = opts.concurrent ? validateConcurrent(opts.concurrent, `app.function('${name}')`) : undefined
    const def: PoolDef = {
      key: `fn:${name}`,
      name,
      methods: [{ name, batched, arity: arityOf(fn) }],
      options: opts,
      maxInputs: conc?.maxInputs ?? 1,
      targetInputs: conc?.targetInputs ?? 1,
      fn,
    }
    super(makeTarget({
      app, def, method: 0, label: name, arity: def.methods[0].arity, batched: batched !== undefined,
      local: (args) => callLocal(fn, null, args, batched !== undefined),
    }))
    this.def = def
  }
}

/** A `.local()` call is no input of its own, as in Modal: no input id, no function call id (context.ts runAsLocal). */
function callLocal(fn: (...a: any[]) => unknown, self: unknown, args: unknown[], batched: boolean): Promise<unknown> {
  return runAsLocal(async () => {
    if (!batched) return fn.apply(self, args)
    const out = await fn.apply(self, args.map((a) => [a]))
    if (!Array.isArray(out) || out.length !== 1) {
      throw new InvalidError(`${fn.name} is @batched: called with 1 input it must return an array of 1 result`)
    }
    return out[0]
  })
}

/** Spawned calls whose result nobody took yet; past this many, the oldest finished ones go. */
const MAX_KEPT_CALLS = 100_000

/** A call's result asked of a server at each get(): undefined when not ready within `timeout` (s). */
type FetchResult = (timeout: number | undefined) => Promise<Settled | undefined>

export class FunctionCall<R> implements FunctionCallType<R> {
  private static readonly calls = new Map<string, FunctionCall<unknown>>()
  private readonly result: Promise<Settled> | undefined
  private readonly fetch: FetchResult | undefined
  private fetched: Settled | undefined
  private settled = false
  /** @internal `result`: the call's outcome as it comes; or how to ask a server for it (fromId). */
  constructor(readonly objectId: string, result: Promise<unknown> | FetchResult, private readonly doCancel: () => unknown) {
    if (typeof result === 'function') {
      this.fetch = result
    } else {
      this.result = result.then((value) => ({ ok: true as const, value }), (error) => ({ ok: false as const, error }))
      void this.result.then(() => (this.settled = true))
    }
    const calls = FunctionCall.calls
    calls.set(objectId, this as FunctionCall<unknown>)
    if (calls.size > MAX_KEPT_CALLS) {
      for (const [id, fc] of calls) {
        if (calls.size <= MAX_KEPT_CALLS) break
        if (fc.settled) calls.delete(id)
      }
    }
  }

  /**
   * A spawned call by its `objectId`, from any process. A call spawned in this process is found
   * here until get() has returned its result. Otherwise the call is asked of the server that
   * ran it (`berth serve`): `opts.server`, else BERTH_SERVER, else http://127.0.0.1:7450; a
   * process that runs an app of its own asks a server only when `opts.server` names it. The
   * server delivers a result once, and keeps it for its --result-ttl after the call finished.
   */
  static fromId<R = unknown>(id: string, opts?: { server?: string; token?: string }): FunctionCall<R> {
    if (typeof id !== 'string' || id.length === 0) {
      throw new InvalidError(`FunctionCall.fromId(id): pass a call's objectId, e.g. 'fc-12' (what spawn() returned)`)
    }
    const fc = FunctionCall.calls.get(id)
    if (fc && opts?.server === undefined) return fc as FunctionCall<R>
    if (opts?.server === undefined && allApps().some((a) => a.runtimeIfRunning() !== undefined || a.processServer !== undefined)) {
      throw new InvalidError(
        `FunctionCall.fromId('${id}'): no such call in this process. Calls are kept until get() returns their result; keep the ` +
          `FunctionCall object to read it again. For a call spawned on a served app, name its server: ` +
          `FunctionCall.fromId('${id}', { server: 'http://127.0.0.1:7450' })`,
      )
    }
    return remoteFunctionCall(id, opts) as FunctionCall<R>
  }

  /** Waits for the result; with `timeout` (seconds) fails with FunctionTimeoutError if not ready. */
  async get(opts: { timeout?: number } = {}): Promise<R> {
    let s: Settled
    if (this.fetch !== undefined) {
      this.fetched ??= await this.fetch(opts.timeout)
      if (this.fetched === undefined) {
        throw new FunctionTimeoutError(`${this.objectId}: no result within ${opts.timeout}s; call get() again to keep waiting`)
      }
      this.settled = true
      s = this.fetched
    } else if (opts.timeout === undefined) {
      s = await this.result!
    } else {
      let timer: ReturnType<typeof setTimeout> | undefined
      const late = new Promise<undefined>((r) => (timer = setTimeout(r, opts.timeout! * 1000, undefined)))
      const first = await Promise.race([this.result!, late])
      clearTimeout(timer)
      if (first === undefined) throw new FunctionTimeoutError(`${this.objectId}: no result within ${opts.timeout}s; call get() again to keep waiting`)
      s = first
    }
    FunctionCall.calls.delete(this.objectId)
    if (s.ok) return s.value as R
    throw s.error
  }

  /** Cancels the call (its input stops; get() fails with InputCancelledError); nothing once it has a result. */
  async cancel(): Promise<void> {
    if (this.settled) return
    await this.doCancel()
  }
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
      throw new InvalidError(`Cls.of(${(cls as any)?.name ?? String(cls)}): the class is not registered with an app. Decorate it with @app.cls()`)
    }
    const full = validateParams(cls, params as Record<string, unknown> | undefined)
    const meta = def.classMeta
    const pd = def.poolDef(full)
    const handle: Record<string, Invocable> = {}
    meta.methods.forEach((m, i) => {
      const batched = m.batched !== undefined
      handle[m.name] = new Invocable(makeTarget({
        app: def.app, def: pd, method: i, label: `${def.name}.${m.name}`, arity: pd.methods[i].arity, batched,
        local: async (args) => {
          const inst = await def.localInstance(full)
          return callLocal(inst[m.name], inst, args, batched)
        },
      }))
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
