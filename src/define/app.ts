// App: what a user defines (functions, classes, entrypoints) and how it runs: embedded in this
// process, or with containers as processes behind a local control plane.
import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

import { localApps, registerApp } from '../call/app-target.ts'
import { lookupApp, serveHere } from '../call/remote.ts'
import type { BatchItem, FunctionHandle, Invocable as InvocableType } from '../call/types.ts'
import { containerCommand } from '../command.ts'
import { releaseMounts } from '../data/volume.ts'
import { binding } from '../native.ts'
import { EmbeddedRuntime } from '../run/runtime.ts'
import { buildMarker, runBuildHooks, type PoolDef } from '../run/pool.ts'
import { AdminError, ask, DEFAULT_SERVER } from '../shared/admin-request.ts'
import { InvalidError } from '../shared/errors.ts'
import { ClassDef, classDefs } from './class-def.ts'
import { validateParams } from './decorators.ts'
import { FunctionHandleImpl } from './handles.ts'
import { normalizeOptions, type BatchedOptions, type ClsOptions, type FunctionOptions } from './options.ts'
import { servedFunctions } from './served.ts'

export interface RunOptions {
  /** `'embedded'` (default): containers live in this process. */
  containers?: 'embedded' | 'process'
}

export interface AppRun extends AsyncDisposable {
  readonly app: App
  /** Stops taking inputs, finishes accepted ones, runs `@exit` hooks. */
  stop(): Promise<void>
}

/** The file of the first stack frame outside berth: the module calling `new App()`. */
function callerFile(): string | undefined {
  const lines = (new Error().stack ?? '').split('\n').slice(1)
  const here = __filename
  for (const line of lines) {
    const m = /\((.*?):\d+:\d+\)$/.exec(line) ?? /at (.*?):\d+:\d+$/.exec(line)
    const file = m?.[1]
    if (!file || file.startsWith('node:') || file === here || file.includes('/berth/dist/') || file.endsWith('/src/define/app.ts')) continue
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

let nextAppId = 0

/** Every App created in this process (the CLI looks through them). */
export function allApps(): App[] {
  return localApps() as App[]
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
    registerApp(this)
  }

  /** @internal The module that created this app: what process containers load. */
  sourceFile: string | undefined
  /** @internal Set while the app runs with process containers. */
  processServer: { shutdown(): Promise<void>; kill(): void; address: string; httpAddress?: string | null } | undefined

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

  /**
   * Serves `other`'s functions and classes as part of this app, under this app's name (README
   * "Apps: include and tags"): `Function.fromName(this.name, ...)` reaches them, and `other`'s
   * handles call them here. An app is included in one app at most.
   */
  include(other: App): this {
    if (!(other instanceof App)) throw new InvalidError('app.include(other): pass another App')
    if (other === this) throw new InvalidError(`app.include: app '${this.name}' cannot include itself`)
    if (other.includedBy === this) return this
    if (other.includedBy !== undefined) {
      throw new InvalidError(
        `app.include: app '${other.name}' is included in '${other.includedBy.name}' already; an app is part of one app`,
      )
    }
    for (let a: App | undefined = this; a !== undefined; a = a.includedBy) {
      if (a === other) throw new InvalidError(`app.include: '${other.name}' includes '${this.name}', which would include it back`)
    }
    other.includedBy = this
    this.included.push(other)
    return this
  }

  /** The app that included this one (app.include), if any. */
  private includedBy: App | undefined

  /** @internal The app this one is served as part of: its includer's, else itself. */
  root(): App {
    return this.includedBy?.root() ?? this
  }

  /** A batched function is called with one item and resolves to one result (README "API"). */
  function<F extends (...args: any[][]) => unknown[] | Promise<unknown[]>>(
    options: FunctionOptions & { batched: BatchedOptions },
    fn: F,
  ): InvocableType<BatchItem<Parameters<F>>, Awaited<ReturnType<F>>[number]> & { readonly name: string }
  function<F extends (...args: any[]) => any>(options: FunctionOptions, fn: F): FunctionHandle<F> & { readonly name: string }
  function<F extends (...args: any[]) => any>(fn: F): FunctionHandle<F> & { readonly name: string }
  function(a: any, b?: any): any {
    const [options, fn] = typeof a === 'function' ? [{}, a] : [a, b]
    if (typeof fn !== 'function') {
      throw new InvalidError(
        'app.function(options, fn): the second argument must be the function to run, e.g. app.function({ timeout: 60 }, async function square(x) { ... })',
      )
    }
    const name = (options?.name as string | undefined) ?? fn.name
    if (!name) throw new InvalidError('app.function: give the function a name (a named function, or the `name` option)')
    const where = `app.function('${name}')`
    const opts = normalizeOptions(options, where)
    if (this.functions.has(name))
      throw new InvalidError(`${where}: app '${this.name}' already has a function named '${name}'; pass a distinct \`name\` option`)
    const handle = new FunctionHandleImpl(this, name, fn, opts)
    this.functions.set(name, handle)
    return handle
  }

  /** The class decorator: `@app.cls({ minContainers: 1 })`. */
  cls(options: ClsOptions = {}): <C extends abstract new (...args: any) => any>(cls: C, context: ClassDecoratorContext<C>) => void {
    if (typeof options === 'function') {
      throw new InvalidError('@app.cls must be called: write @app.cls() (Suggestion: @app.cls())')
    }
    return (cls: any, context: any) => {
      if (context === undefined || typeof context !== 'object' || !('kind' in context)) {
        throw new InvalidError('@app.cls: berth uses TC39 standard decorators; remove `experimentalDecorators` from your tsconfig.json')
      }
      if (context.kind !== 'class' || typeof cls !== 'function') {
        throw new InvalidError(
          `@app.cls() decorates a class; it was put on a ${context.kind} (${String(context.name)}). Move it onto the class declaration.`,
        )
      }
      const name = options.name ?? cls.name
      const where = `@app.cls() on ${name}`
      const opts = normalizeOptions(options, where, { cls: true })
      const def = new ClassDef(this, name, cls, opts)
      classDefs.set(cls, def)
      this.classes.set(name, def)
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
    if (typeof a !== 'function' && b !== undefined) {
      throw new InvalidError(
        `app.run(options, fn): the function comes first, as app.run(async () => { ... }, { containers: 'process' }); ` +
          'or, without a function, const run = await app.run(options)',
      )
    }
    const [fn, opts] = typeof a === 'function' ? [a, b as RunOptions | undefined] : [undefined, a as RunOptions | undefined]
    if (opts !== undefined && (typeof opts !== 'object' || opts === null || Object.keys(opts).some((k) => k !== 'containers'))) {
      const extra = opts !== null && typeof opts === 'object' ? Object.keys(opts).filter((k) => k !== 'containers') : []
      throw new InvalidError(
        `app.run(fn, options): options is { containers?: 'embedded' | 'process' }` +
          (extra.length > 0 ? `; it has no ${extra.map((k) => `'${k}'`).join(', ')}` : `, got ${String(opts)}`),
      )
    }
    const mode = opts?.containers ?? 'embedded'
    if (mode !== 'embedded' && mode !== 'process') {
      throw new InvalidError(`app.run({ containers: '${String(mode)}' }): containers are 'embedded' (default) or 'process'`)
    }
    if (this.includedBy !== undefined) {
      throw new InvalidError(
        `app '${this.name}' is included in '${this.root().name}', which serves its functions: run '${this.root().name}' instead`,
      )
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
      // The mount links its containers made go with the app (README "Volume").
      releaseMounts(
        apps.flatMap((a) => [...a.functions.values(), ...a.classes.values()].flatMap((d) => d.opts.volumes.map((v) => v.mountPath))),
      )
    }
    return runWith(this, stop, fn)
  }

  /**
   * @internal `berth build`: runs this app's classes' `@build` hooks whose cached marker is missing.
   * Returns what each class did.
   */
  async runBuilds(): Promise<{ name: string; status: 'built' | 'cached' | 'none' }[]> {
    const out: { name: string; status: 'built' | 'cached' | 'none' }[] = []
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
    return out
  }

  /** @internal What `berth serve` serves: every function and class of this app. */
  servedDefs(): { def: PoolDef; isClass: boolean }[] {
    const { functions, classes } = this.served()
    return [
      ...[...functions.values()].map((f) => ({ def: f.def, isClass: false })),
      ...[...classes.values()].map((c) => ({ def: c.poolDef({}), isClass: true })),
    ]
  }

  /** @internal A class this app serves, its included apps' too. */
  servedClass(name: string): ClassDef | undefined {
    return this.served().classes.get(name)
  }

  /** The functions and classes served under this app's name: its own and its included apps'. */
  private served(): { functions: Map<string, FunctionHandleImpl>; classes: Map<string, ClassDef> } {
    const functions = new Map(this.functions)
    const classes = new Map(this.classes)
    for (const other of this.withIncluded().slice(1)) {
      for (const [name, def] of [...other.functions, ...other.classes]) {
        if (functions.has(name) || classes.has(name)) {
          throw new InvalidError(
            `app '${this.name}' includes '${other.name}', and both serve a function or class named '${name}': rename one (the \`name\` option)`,
          )
        }
        if (def instanceof ClassDef) classes.set(name, def)
        else functions.set(name, def)
      }
    }
    return { functions, classes }
  }

  /** @internal The pool definition a container process serves. */
  containerDef(name: string, params: Record<string, unknown> | undefined): PoolDef {
    const { functions, classes } = this.served()
    const f = functions.get(name)
    if (f) return f.def
    const c = classes.get(name)
    if (!c) throw new InvalidError(`app '${this.name}' has no function or class '${name}'`)
    return c.poolDef(validateParams(c.cls, params))
  }

  /**
   * Serves the file that defines this app on a running `berth serve` (BERTH_SERVER, or `server`),
   * as `npx berth deploy <file>` does (README "Deploy to a running server"): resolves once the
   * server serves the file's apps, which stay up after this process ends. Rejects with the
   * server's reason when it does not (the file did not load, no server answers, ...).
   */
  async deploy(
    opts: { server?: string; token?: string } = {},
  ): Promise<{ apps: { app: string; functions: string[]; replaced: boolean }[] }> {
    const file = this.root().sourceFile
    if (!file || !existsSync(file)) {
      throw new InvalidError(`app.deploy(): cannot tell which file defines app '${this.name}'; run \`npx berth deploy <file.ts>\``)
    }
    const server = opts.server ?? (process.env.BERTH_SERVER || DEFAULT_SERVER)
    const query = `file=${encodeURIComponent(file)}&cwd=${encodeURIComponent(process.cwd())}`
    try {
      return await ask(server, opts.token ?? process.env.BERTH_TOKEN, 'POST', `/_berth/deploy?${query}`)
    } catch (e) {
      if (e instanceof AdminError) throw new InvalidError(e.message.replace(/^berth: /, `app.deploy(): `))
      throw e
    }
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
      if (app.runtime?.running || app.processServer)
        throw new InvalidError(`App '${app.name}' is already running; stop it first (run.stop())`)
    }
    const file = this.sourceFile
    if (!file || !existsSync(file)) {
      throw new InvalidError(
        `app.run({ containers: 'process' }): cannot tell which file defines app '${this.name}' (containers load it); run it with \`npx berth run <file.ts> --containers process\``,
      )
    }
    const served = servedFunctions([this])
    const server = binding().BindingServer.start(served, {
      host: '127.0.0.1',
      grpcPort: 0,
      // Web endpoints are reached over HTTP: a free port, which `berth run` prints.
      httpPort: served.some((d) => (d.web?.length ?? 0) > 0) ? 0 : undefined,
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
    return rt?.running ? rt : undefined
  }

  /** @internal */
  requireRuntime(what: string): EmbeddedRuntime {
    const rt = this.runtime
    if (!rt?.running) {
      throw new InvalidError(
        `${what}: app '${this.name}' is not running. Call it inside \`await app.run(async () => { ... })\` (or \`await using run = await app.run()\`), or run the file with \`npx berth run file.ts\`.`,
      )
    }
    return rt
  }

  private withIncluded(seen = new Set<App>()): App[] {
    if (seen.has(this)) return []
    seen.add(this)
    return [this, ...this.included.flatMap((a) => a.withIncluded(seen))]
  }
}
