;(Symbol as any).metadata ??= Symbol.for('Symbol.metadata')

import { InvalidError } from '../shared/errors.ts'
import type { WebSpec } from '../run/pool.ts'
import { closest, validateBatched, validateConcurrent, type BatchedOptions, type ConcurrentOptions } from './options.ts'
import {
  takesRequest,
  validateWebApp,
  validateWebEndpoint,
  type WebAppOptions,
  type WebEndpointOptions,
  type WebServerOptions,
} from './web.ts'

// Every decorator records into `context.metadata` under META. Metadata objects of subclasses
// inherit from their parent's through the prototype chain, so each class writes into its own
// record (copy on write via Object.hasOwn) and getClassMeta merges the chain, base first.

const META = Symbol('berth.meta')

type Role = 'enter' | 'snapEnter' | 'exit' | 'build' | 'method' | 'batched' | 'webEndpoint' | WebAppKind | 'parameter'
type WebAppKind = 'fetchApp' | 'webServer' | 'nodeApp'

const LABEL: Record<Role, string> = {
  enter: '@enter()',
  snapEnter: '@enter({ snap: true })',
  exit: '@exit()',
  build: '@build()',
  method: '@method()',
  batched: '@batched()',
  webEndpoint: '@webEndpoint()',
  fetchApp: '@fetchApp()',
  webServer: '@webServer()',
  nodeApp: '@nodeApp()',
  parameter: '@parameter()',
}

interface MethodEntry {
  name: string
  batched?: BatchedOptions
  gen?: true
  /** A @webEndpoint(): its options (takesRequest is read when the class is served). */
  web?: Omit<WebSpec, 'takesRequest'>
}

/**
 * An `async function*` (or `function*`): its calls stream items (remoteGen, README "API"). Read
 * from the function itself, at definition: a generator function's constructor says so.
 */
export function isGeneratorFunction(fn: unknown): boolean {
  if (typeof fn !== 'function') return false
  const kind = Object.getPrototypeOf(fn)?.constructor?.name
  return kind === 'AsyncGeneratorFunction' || kind === 'GeneratorFunction'
}

interface OwnMeta {
  snapEnter: string[]
  enter: string[]
  exit: string[]
  build: string[]
  methods: MethodEntry[]
  params: string[]
  concurrent?: Required<ConcurrentOptions>
  /** Decorators applied to each member of this class, to catch bad combinations. */
  roles: Map<string, Role[]>
}

export interface ClassMeta {
  /** Method names in definition order, base class first. */
  snapEnter: string[]
  enter: string[]
  exit: string[]
  build: string[]
  /** `@method` and `@batched` members; a subclass override keeps the base position. `gen`: a generator. */
  methods: { name: string; batched?: { maxBatchSize: number; waitMs: number }; gen?: true; web?: Omit<WebSpec, 'takesRequest'> }[]
  /** `@parameter` field names. */
  params: string[]
  concurrent?: { maxInputs: number; targetInputs: number }
}

export type ParamValue = string | number | boolean | Uint8Array

// ---------------------------------------------------------------------------------------------
// Misuse detection

const LEGACY =
  'berth uses TC39 standard decorators, but this one was called the legacy way (TypeScript ' +
  '"experimentalDecorators"). Remove "experimentalDecorators" (and "emitDecoratorMetadata") from ' +
  'tsconfig.json and run with tsx, esbuild or TypeScript ≥ 5 targeting ES2022.'

function isContext(c: unknown): c is DecoratorContext {
  return typeof c === 'object' && c !== null && typeof (c as { kind?: unknown }).kind === 'string'
}

/** True when the arguments look like what a decorator itself (not its factory) receives. */
function looksLikeDecoratorCall(args: readonly unknown[]): boolean {
  if (args.length >= 2 && isContext(args[1])) return true
  // Legacy member decorator: (prototype or constructor, key, descriptor?).
  if (args.length >= 2 && (typeof args[1] === 'string' || typeof args[1] === 'symbol')) return true
  // Legacy class decorator, or a function passed where options belong.
  return typeof args[0] === 'function'
}

function noParens(label: string, example: string, args: readonly unknown[]): InvalidError {
  const legacy = !(args.length >= 2 && isContext(args[1]))
  return new InvalidError(`${label} is a decorator factory: call it. Suggestion: ${example}` + (legacy ? `. Also, ${LEGACY}` : ''))
}

function legacyError(label: string): InvalidError {
  return new InvalidError(`${label}: ${LEGACY}`)
}

function own(metadata: DecoratorMetadataObject | undefined, label: string): OwnMeta {
  if (typeof metadata !== 'object' || metadata === null) {
    throw new InvalidError(
      `${label}: the decorator context has no metadata object. Import 'berth' before defining the class ` +
        '(it installs Symbol.metadata on Node 20) and use tsx, esbuild ≥ 0.21 or TypeScript ≥ 5.2.',
    )
  }
  const md = metadata as Record<symbol, unknown>
  if (Object.hasOwn(md, META)) return md[META] as OwnMeta
  const m: OwnMeta = { snapEnter: [], enter: [], exit: [], build: [], methods: [], params: [], roles: new Map() }
  Object.defineProperty(md, META, { value: m, configurable: true })
  return m
}

const LIFECYCLE: ReadonlySet<Role> = new Set(['enter', 'snapEnter', 'exit', 'build'])
const CALLABLE: ReadonlySet<Role> = new Set(['method', 'batched', 'webEndpoint', 'fetchApp', 'webServer', 'nodeApp'])
const WEB: ReadonlySet<Role> = new Set(['webEndpoint', 'fetchApp', 'webServer', 'nodeApp'])

function checkCombination(name: string, existing: readonly Role[], role: Role): void {
  for (const other of existing) {
    if (other === role) throw new InvalidError(`${LABEL[role]} is applied twice to '${name}'. Remove one.`)
    if (CALLABLE.has(role) && CALLABLE.has(other) && (WEB.has(role) || WEB.has(other))) {
      const web = WEB.has(role) ? role : other
      throw new InvalidError(
        `'${name}' has both ${LABEL[other]} and ${LABEL[role]}. ${LABEL[web]} is a member of its own` +
          (web === 'webEndpoint' ? ' (callable as .remote(value) too, and not batched)' : ' (it answers HTTP requests, not calls)') +
          `: keep ${LABEL[web]} alone, or move the shared code into a helper called from two methods.`,
      )
    }
    if (CALLABLE.has(role) && CALLABLE.has(other)) {
      throw new InvalidError(
        `'${name}' has both @method() and @batched(). Use @batched({ maxBatchSize, waitMs }) alone for a batched method, or @method() alone.`,
      )
    }
    if ((LIFECYCLE.has(role) && CALLABLE.has(other)) || (CALLABLE.has(role) && LIFECYCLE.has(other))) {
      const [hook, call] = LIFECYCLE.has(role) ? [role, other] : [other, role]
      throw new InvalidError(
        `'${name}' has both ${LABEL[hook]} and ${LABEL[call]}. A lifecycle hook is run by the container and cannot ` +
          `also be called as an input: move the shared code into a helper and call it from two separate methods.`,
      )
    }
    // @build() may be stacked on @enter() (runs at build time and again in each container); no other pairs.
    const pair = new Set([role, other])
    if (!(pair.has('build') && (pair.has('enter') || pair.has('snapEnter')))) {
      throw new InvalidError(
        `'${name}' has both ${LABEL[other]} and ${LABEL[role]}. Only @build() may be combined with @enter(); use separate methods.`,
      )
    }
  }
}

function article(kind: string): string {
  return /^[aeiou]/.test(kind) ? `an ${kind}` : `a ${kind}`
}

function memberDecorator(role: Role, record: (m: OwnMeta, name: string, value: unknown) => void) {
  const label = LABEL[role]
  const wantsField = role === 'parameter'
  return function decorate(value: unknown, context: unknown): void {
    if (!isContext(context)) throw legacyError(label)
    const kind = context.kind
    const name = (context as { name: unknown }).name
    const shown = typeof name === 'string' ? name : String(name)
    if (kind === 'class') {
      throw new InvalidError(`${label} decorates a ${wantsField ? 'field' : 'method'}, not a class. Put it on a member of ${shown}.`)
    }
    if (wantsField ? kind !== 'field' && kind !== 'accessor' : kind !== 'method') {
      throw new InvalidError(
        wantsField
          ? `${label} decorates a field, but '${shown}' is ${article(kind)}. Write: @parameter() ${shown} = 'default'`
          : `${label} decorates a method, but '${shown}' is ${kind === 'field' ? 'a field (an arrow function in a field is not a method)' : article(kind)}. ` +
              `Write it as a method: async ${shown}(...) { ... }`,
      )
    }
    const member = context as ClassMemberDecoratorContext
    if (member.private) {
      throw new InvalidError(`${label} cannot be used on private member '${shown}': berth reaches it by name. Drop the '#'.`)
    }
    if (member.static) {
      throw new InvalidError(
        `${label} cannot be used on static member '${shown}': berth calls it on the container's instance. Drop 'static'.`,
      )
    }
    if (typeof name !== 'string') {
      throw new InvalidError(`${label} cannot be used on symbol-named member ${shown}: berth reaches it by name. Use a string name.`)
    }
    const m = own(context.metadata, label)
    const roles = m.roles.get(name) ?? []
    checkCombination(name, roles, role)
    roles.push(role)
    m.roles.set(name, roles)
    record(m, name, value)
  }
}

function rejectExtraOptions(label: string, opts: Record<string, unknown>, known: readonly string[]): void {
  for (const key of Object.keys(opts)) {
    if (known.includes(key)) continue
    const guess = closest(key, known)
    throw new InvalidError(
      `${label}: unknown option '${key}'.` +
        (guess ? ` Did you mean '${guess}'?` : '') +
        (known.length ? ` Valid options: ${known.join(', ')}.` : ' It takes no options.'),
    )
  }
}

function checkOptionsObject(label: string, opts: unknown): Record<string, unknown> | undefined {
  if (opts === undefined) return undefined
  if (typeof opts !== 'object' || opts === null || Array.isArray(opts)) {
    throw new InvalidError(`${label}: options must be an object, got ${opts === null ? 'null' : typeof opts}.`)
  }
  return opts as Record<string, unknown>
}

// ---------------------------------------------------------------------------------------------
// Decorators. Factories check their own arguments first: `@method` without parentheses calls the
// factory with (value, context), which must fail loudly instead of silently doing nothing.

type HookDecorator = <This, F extends (this: This) => unknown>(value: F, context: ClassMethodDecoratorContext<This, F>) => void

/** Runs once per container before its first input; `snap: true` hooks run first. */
export function enter(opts?: { snap?: boolean }): HookDecorator {
  if (looksLikeDecoratorCall(arguments as unknown as unknown[])) throw noParens('@enter', '@enter()', arguments as unknown as unknown[])
  const o = checkOptionsObject('@enter()', opts)
  if (o) rejectExtraOptions('@enter()', o, ['snap'])
  const snap = o?.snap ?? false
  if (typeof snap !== 'boolean') throw new InvalidError(`@enter(): snap must be true or false, got ${typeof snap}.`)
  return memberDecorator(snap ? 'snapEnter' : 'enter', (m, n) => (snap ? m.snapEnter : m.enter).push(n))
}

/** Runs once per container on stop, after in-flight inputs finish. */
export function exit(): HookDecorator {
  if (arguments.length > 0) {
    if (looksLikeDecoratorCall(arguments as unknown as unknown[])) throw noParens('@exit', '@exit()', arguments as unknown as unknown[])
    throw new InvalidError('@exit() takes no options.')
  }
  return memberDecorator('exit', (m, n) => m.exit.push(n))
}

/** Runs at build time (`berth build`); its output on disk is cached into the image. */
export function build(): HookDecorator {
  if (arguments.length > 0) {
    if (looksLikeDecoratorCall(arguments as unknown as unknown[])) throw noParens('@build', '@build()', arguments as unknown as unknown[])
    throw new InvalidError('@build() takes no options.')
  }
  return memberDecorator('build', (m, n) => m.build.push(n))
}

/** Makes a method callable as an input (`handle.method.remote(...)`). */
export function method(): <This, F extends (this: This, ...args: any[]) => any>(
  value: F,
  context: ClassMethodDecoratorContext<This, F>,
) => void {
  if (arguments.length > 0) {
    if (looksLikeDecoratorCall(arguments as unknown as unknown[])) throw noParens('@method', '@method()', arguments as unknown as unknown[])
    throw new InvalidError('@method() takes no options. For batching use @batched({ maxBatchSize, waitMs }).')
  }
  return memberDecorator('method', (m, n, v) => m.methods.push(isGeneratorFunction(v) ? { name: n, gen: true } : { name: n }))
}

/**
 * A web endpoint (Modal's `fastapi_endpoint`): `POST /{app}/{Class}/{method}` (or `/{app}/{label}`)
 * on the HTTP port calls it with the JSON body (the query's object of strings for GET and
 * DELETE) and, if it declares a second parameter, the web `Request`. It returns a JSON value or
 * a `Response`. README "API", web endpoints.
 */
export function webEndpoint(
  opts?: WebEndpointOptions,
): <This, F extends (this: This, ...args: any[]) => any>(value: F, context: ClassMethodDecoratorContext<This, F>) => void {
  if (looksLikeDecoratorCall(arguments as unknown as unknown[])) {
    throw noParens('@webEndpoint', "@webEndpoint({ method: 'POST' })", arguments as unknown as unknown[])
  }
  const web = validateWebEndpoint(opts, '@webEndpoint()')
  return memberDecorator('webEndpoint', (m, n, v) => {
    takesRequest(v as Function, `@webEndpoint() on '${n}'`)
    // An `async *` endpoint streams its items: NDJSON, or SSE with Accept: text/event-stream.
    m.methods.push(isGeneratorFunction(v) ? { name: n, gen: true, web } : { name: n, web })
  })
}

/** The object a `@fetchApp()` member returns: a Hono app, an itty-router, a hand-written handler. */
export interface FetchHandler {
  fetch(request: Request): Response | Promise<Response>
}

function webAppDecorator(kind: WebAppKind, opts: unknown, args: unknown[], example: string) {
  if (looksLikeDecoratorCall(args)) throw noParens(`@${kind}`, example, args)
  const web = validateWebApp(kind, opts, `@${kind}()`)
  return memberDecorator(kind, (m, n, v) => {
    if (isGeneratorFunction(v)) {
      throw new InvalidError(
        `@${kind}() on '${n}': the member runs once per container and returns the app; make it a plain method, not a generator.`,
      )
    }
    m.methods.push({ name: n, web })
  })
}

/**
 * A web app (Modal's `asgi_app`): the member runs once per container, after `@enter`, and
 * returns an object with `fetch(request)` (a Hono app, for one). Every request under
 * `/{app}/{Class}/{method}` (or `/{app}/{label}`) goes to it, with the path under that prefix;
 * its Response streams back as it is written. README "API", web apps.
 */
export function fetchApp(
  opts?: WebAppOptions,
): <This, F extends (this: This) => FetchHandler | Promise<FetchHandler>>(value: F, context: ClassMethodDecoratorContext<This, F>) => void {
  return webAppDecorator('fetchApp', opts, arguments as unknown as unknown[], "@fetchApp({ label: 'api' })")
}

/**
 * A web server (Modal's `web_server`): the member starts any Node HTTP server (fastify,
 * express, node:http) on the port it is passed (also `process.env.PORT`) and returns; berth
 * waits until the port accepts connections (`startupTimeout`, seconds, default 5), then
 * proxies every request under the member's path to it. README "API", web apps.
 */
export function webServer(
  opts?: WebServerOptions,
): <This, F extends (this: This, port: number) => unknown>(value: F, context: ClassMethodDecoratorContext<This, F>) => void {
  return webAppDecorator('webServer', opts, arguments as unknown as unknown[], '@webServer({ startupTimeout: 10 })')
}

/**
 * A Node request listener (the Node counterpart of Modal's `wsgi_app`): the member returns a
 * `(req, res)` listener (an Express app, Koa's `app.callback()`, connect) and berth serves it
 * in the container, every request under the member's path. README "API", web apps.
 */
export function nodeApp(
  opts?: WebAppOptions,
): <This, F extends (this: This) => unknown>(value: F, context: ClassMethodDecoratorContext<This, F>) => void {
  return webAppDecorator('nodeApp', opts, arguments as unknown as unknown[], '@nodeApp()')
}

/** A non-empty list of array parameters: what a batched method body receives. */
type BatchArgs = [ReadonlyArray<unknown>, ...ReadonlyArray<unknown>[]]

/**
 * Dynamic batching: callers pass ONE item's arguments and get ONE result; the body receives one
 * array per argument and must return an array as long as its inputs.
 */
export function batched(
  opts: BatchedOptions,
): <This, A extends BatchArgs, R extends ReadonlyArray<unknown> | Promise<ReadonlyArray<unknown>>>(
  value: (this: This, ...args: A) => R,
  context: ClassMethodDecoratorContext<This, (this: This, ...args: A) => R>,
) => void {
  if (looksLikeDecoratorCall(arguments as unknown as unknown[])) {
    throw noParens('@batched', '@batched({ maxBatchSize: 64, waitMs: 10 })', arguments as unknown as unknown[])
  }
  const b = validateBatched(opts, '@batched()')
  return memberDecorator('batched', (m, n, v) => {
    if (isGeneratorFunction(v)) {
      throw new InvalidError(
        `@batched() cannot be used on generator '${n}': a batch returns one array of results, a generator streams items. ` +
          'Use @method() for the generator, or make the batched method a plain async method.',
      )
    }
    m.methods.push({ name: n, batched: b })
  })
}

/** Declares a class parameter (`Cls.of(C, { name: value })`): string, integer, boolean or Uint8Array. */
export interface ParameterDecorator {
  <This, V extends ParamValue | undefined>(value: undefined, context: ClassFieldDecoratorContext<This, V>): void
  <This, V extends ParamValue | undefined>(
    value: ClassAccessorDecoratorTarget<This, V>,
    context: ClassAccessorDecoratorContext<This, V>,
  ): void
}

export function parameter(opts?: Record<string, never>): ParameterDecorator {
  if (looksLikeDecoratorCall(arguments as unknown as unknown[]))
    throw noParens('@parameter', "@parameter() name = 'default'", arguments as unknown as unknown[])
  const o = checkOptionsObject('@parameter()', opts)
  if (o) rejectExtraOptions('@parameter()', o, [])
  return memberDecorator('parameter', (m, n) => m.params.push(n)) as ParameterDecorator
}

/** Class decorator: up to `maxInputs` inputs in flight per container; autoscaling aims at `targetInputs`. */
export function concurrent(
  opts: ConcurrentOptions,
): <C extends abstract new (...args: any) => any>(value: C, context: ClassDecoratorContext<C>) => void {
  if (looksLikeDecoratorCall(arguments as unknown as unknown[])) {
    throw noParens('@concurrent', '@concurrent({ maxInputs: 32 })', arguments as unknown as unknown[])
  }
  const c = validateConcurrent(opts, '@concurrent()')
  return function decorate(_value: unknown, context: unknown): void {
    if (!isContext(context)) throw legacyError('@concurrent()')
    if (context.kind !== 'class') {
      throw new InvalidError(
        `@concurrent() decorates a class, but '${String(context.name)}' is ${article(context.kind)}. Put it above the class ` +
          '(for a function, pass the concurrent option to app.function).',
      )
    }
    const m = own(context.metadata, '@concurrent()')
    if (m.concurrent) throw new InvalidError('@concurrent() is applied twice to one class. Remove one.')
    m.concurrent = c
  }
}

// ---------------------------------------------------------------------------------------------
// Reading metadata

function metadataOf(clsOrMetadata: object): object | null {
  if (typeof clsOrMetadata === 'function') {
    const md = (clsOrMetadata as unknown as Record<symbol, unknown>)[Symbol.metadata]
    return typeof md === 'object' && md !== null ? md : null
  }
  return clsOrMetadata
}

const metaCache = new WeakMap<object, ClassMeta>()

/**
 * The merged metadata of a class, base class first. Pass the class once it is fully defined, or
 * `context.metadata` from inside a class decorator (a class decorator runs before the class's
 * Symbol.metadata is set, so reading it from the class there would see the parent's).
 */
export function getClassMeta(clsOrMetadata: Function | DecoratorMetadataObject): ClassMeta {
  // Only a finished class (own Symbol.metadata) is cached: a metadata object can still grow
  // while later class decorators run.
  const cacheable = typeof clsOrMetadata === 'function' && Object.hasOwn(clsOrMetadata, Symbol.metadata)
  if (cacheable) {
    const hit = metaCache.get(clsOrMetadata)
    if (hit) return hit
  }
  const chain: OwnMeta[] = []
  for (let md = metadataOf(clsOrMetadata); md !== null; md = Object.getPrototypeOf(md)) {
    if (Object.hasOwn(md, META)) chain.unshift((md as Record<symbol, unknown>)[META] as OwnMeta)
  }
  const meta: ClassMeta = { snapEnter: [], enter: [], exit: [], build: [], methods: [], params: [] }
  for (const m of chain) {
    for (const key of ['snapEnter', 'enter', 'exit', 'build', 'params'] as const) {
      // An overriding subclass hook keeps the base position: it runs once, as the override.
      for (const n of m[key]) if (!meta[key].includes(n)) meta[key].push(n)
    }
    for (const e of m.methods) {
      const i = meta.methods.findIndex((x) => x.name === e.name)
      const entry: ClassMeta['methods'][number] = e.batched ? { name: e.name, batched: { ...e.batched } } : { name: e.name }
      if (e.gen) entry.gen = e.gen
      if (e.web) entry.web = { ...e.web }
      if (i === -1) meta.methods.push(entry)
      else meta.methods[i] = entry
    }
    if (m.concurrent) meta.concurrent = { ...m.concurrent }
  }
  for (const { name } of meta.methods) {
    for (const key of ['snapEnter', 'enter', 'exit', 'build'] as const) {
      if (meta[key].includes(name)) {
        throw new InvalidError(
          `'${name}' is a lifecycle hook in one class and a @method()/@batched() in another of the same hierarchy. ` +
            'Rename one of them.',
        )
      }
    }
  }
  if (cacheable) metaCache.set(clsOrMetadata, deepFreeze(meta))
  return meta
}

function deepFreeze<T extends object>(o: T): T {
  for (const v of Object.values(o)) if (typeof v === 'object' && v !== null) deepFreeze(v)
  return Object.freeze(o)
}

// ---------------------------------------------------------------------------------------------
// Parameters

export interface ParamSpec {
  type: 'string' | 'number' | 'boolean' | 'bytes' | 'any'
  default?: unknown
  required: boolean
}

const ALLOWED = 'a string, an integer number, a boolean or a Uint8Array'

function paramType(v: unknown): ParamSpec['type'] | undefined {
  switch (typeof v) {
    case 'string':
      return 'string'
    case 'boolean':
      return 'boolean'
    case 'number':
      return Number.isSafeInteger(v) ? 'number' : undefined
    case 'object':
      return v instanceof Uint8Array ? 'bytes' : undefined
    default:
      return undefined
  }
}

// The control plane describes a remote caller's parameters in the same words
// (crates/berth-server/src/params.rs).
function describeValue(v: unknown): string {
  if (v === null) return 'null'
  if (typeof v === 'number') {
    if (Number.isSafeInteger(v)) return `the number ${v}`
    return Number.isInteger(v) ? `${v} (too large)` : `${v} (not an integer)`
  }
  if (Array.isArray(v)) return 'an array'
  if (v instanceof Uint8Array) return 'a Uint8Array'
  if (typeof v === 'object') return `an object${v.constructor && v.constructor !== Object ? ` (${v.constructor.name})` : ''}`
  if (typeof v === 'string') return JSON.stringify(v)
  return `a ${typeof v}`
}

const TYPE_TEXT: Record<ParamSpec['type'], string> = {
  string: 'a string',
  number: 'an integer number',
  boolean: 'a boolean',
  bytes: 'a Uint8Array',
  any: ALLOWED,
}

const specCache = new WeakMap<Function, Map<string, ParamSpec>>()

/**
 * Parameter specs of a class. Field defaults only exist on an instance, so this constructs one
 * probe instance (once per class): constructors must be cheap and take no arguments; heavy work
 * belongs in @enter(), as in Modal.
 */
export function getParamSpecs(cls: Function): Map<string, ParamSpec> {
  const hit = specCache.get(cls)
  if (hit) return hit
  const { params } = getClassMeta(cls)
  const specs = new Map<string, ParamSpec>()
  if (params.length > 0) {
    let probe: Record<string, unknown>
    try {
      probe = new (cls as new () => Record<string, unknown>)()
    } catch (err) {
      const e = err instanceof Error ? `${err.name}: ${err.message}` : String(err)
      throw new InvalidError(
        `${cls.name}: constructing an instance to read @parameter() defaults threw (${e}). Constructors must be cheap ` +
          'and take no arguments: move heavy work into an @enter() hook.',
        { cause: err },
      )
    }
    for (const name of params) {
      const v = probe[name]
      if (v === undefined) {
        specs.set(name, { type: 'any', required: true })
        continue
      }
      const type = paramType(v)
      if (type === undefined) {
        throw new InvalidError(
          `${cls.name}.${name}: a @parameter() must be ${ALLOWED}, but its default is ${describeValue(v)}. ` +
            'Use one of those types (structured settings can travel as a JSON string).',
        )
      }
      specs.set(name, { type, default: v, required: false })
    }
  }
  specCache.set(cls, specs)
  return specs
}

/**
 * Checks class parameters against the class's @parameter() fields and returns the full set,
 * defaults filled in. `where` starts error messages (default `Cls.of(Name)`).
 */
export function validateParams(
  cls: Function,
  params: Record<string, unknown> | undefined,
  where = `Cls.of(${cls.name})`,
): Record<string, unknown> {
  const specs = getParamSpecs(cls)
  if (params !== undefined && params !== null) {
    const p = Object.getPrototypeOf(params)
    if (typeof params !== 'object' || (p !== Object.prototype && p !== null)) {
      throw new InvalidError(`${where}: parameters must be a plain object, e.g. { model: 'mini' }.`)
    }
    const known = [...specs.keys()]
    for (const key of Object.keys(params)) {
      if (specs.has(key)) continue
      if (known.length === 0) {
        throw new InvalidError(
          `${where}: unknown parameter '${key}': ${cls.name} declares no parameters. Declare one with: @parameter() ${key} = <default>`,
        )
      }
      const guess = closest(key, known)
      throw new InvalidError(
        `${where}: unknown parameter '${key}'.` + (guess ? ` Did you mean '${guess}'?` : '') + ` Known parameters: ${known.join(', ')}.`,
      )
    }
  }
  const out: Record<string, unknown> = {}
  for (const [name, spec] of specs) {
    let v = params?.[name]
    if (v === undefined) {
      if (spec.required) {
        throw new InvalidError(
          `${where}: missing required parameter '${name}' (${TYPE_TEXT.any}). Pass it, e.g. Cls.of(${cls.name}, { ${name}: ... }), ` +
            'or give the field a default.',
        )
      }
      v = spec.default
    } else {
      const type = paramType(v)
      if (type === undefined || (spec.type !== 'any' && spec.type !== type)) {
        throw new InvalidError(`${where}: parameter '${name}' must be ${TYPE_TEXT[spec.type]}, got ${describeValue(v)}.`)
      }
    }
    // Copy bytes so instances never share a mutable default or the caller's buffer.
    out[name] = v instanceof Uint8Array ? new Uint8Array(v) : v
  }
  return out
}
