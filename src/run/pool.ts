// What a pool is (one function, or one class with one parameter set), and what both kinds of
// container do with one: make the instance, run its lifecycle hooks, check a batch's results.
// The embedded runtime (runtime.ts) and the container process loop (container.ts) share it.
import { createHash } from 'node:crypto'
import { existsSync, mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

import type { BindingPoolSpec } from '../native.ts'
import type { Arity } from '../shared/arity.ts'
import { InvalidError } from '../shared/errors.ts'

/** A class's lifecycle hooks, by member name in the order they run (define/decorators.ts ClassMeta). */
export interface ClassHooks {
  snapEnter: string[]
  enter: string[]
  exit: string[]
  build: string[]
}

/** The options a pool runs with (define/options.ts NormalizedOptions). */
export interface PoolOptions {
  timeoutMs: number
  startupTimeoutMs: number
  retries: { maxRetries: number; backoffCoefficient: number; initialDelay: number; maxDelay: number }
  minContainers: number
  maxContainers: number | undefined
  bufferContainers: number
  scaledownWindowMs: number
  exitGracePeriodMs: number
  singleUseContainers: boolean
  maxPendingInputs: number | undefined
  env: Record<string, string>
  secrets: string[]
  gpu: string[]
  /** Requests for deploy targets (`berth deploy`), not enforced locally. */
  cpu?: number
  memory?: number
  /** Volumes made visible at these mount paths when a container starts (src/data/volume.ts `mountVolumes`). */
  volumes?: { mountPath: string; volume: { name: string; path: string } }[]
  /** A function's schedule, which `berth serve` keeps (crates/berth-server/src/schedule.rs). */
  schedule?: { periodMs?: number; cron?: string; timezone?: string }
}

/** A web endpoint (`@webEndpoint`, `app.function({ webEndpoint })`; src/define/web.ts). */
export interface WebSpec {
  /** Upper case: 'GET', 'POST', 'PUT', 'PATCH', 'DELETE'. */
  method: string
  label: string | undefined
  requiresAuth: boolean
  /** It declares a second parameter: the control plane sends the request's head and body. */
  takesRequest: boolean
  /**
   * A web app rather than an endpoint (src/run/web.ts): every request under its path goes to
   * what the member returned, or to the server it started; `method` is then '*'.
   */
  app?: 'fetchApp' | 'webServer' | 'nodeApp'
  /** A @webServer's fixed port (else a free one) and how long it may take to accept connections. */
  port?: number
  startupTimeoutMs?: number
}

/** What the runtime needs to serve one function or one class with one parameter set. */
export interface PoolDef {
  /** Unique per callable and parameter set. */
  key: string
  /** For messages: `square`, `Embedder`. */
  name: string
  /** `gen`: an `async function*` (or `function*`) whose items stream to the caller (remoteGen). */
  methods: { name: string; batched?: { maxBatchSize: number; waitMs: number }; gen?: boolean; web?: WebSpec; arity: Arity }[]
  options: PoolOptions
  maxInputs: number
  targetInputs: number
  fn?: (...args: any[]) => unknown
  cls?: new () => any
  meta?: ClassHooks
  params?: Record<string, unknown>
}

/**
 * How many items a generator may yield ahead of its reader (README "API"), in both container
 * modes; proto/berth/v1/containers.proto `Items` says the same to other containers.
 */
export const GEN_WINDOW = 16

/**
 * A generator's credit, in both container modes (proto/berth/v1/containers.proto `Items` says
 * the same to other containers): items it may still yield, and the pull loop waiting for more.
 */
export interface GenCredit {
  credit: number
  /** Resumes a pull loop that waits for credit, an abort, or the input's end. */
  wake: (() => void) | undefined
}

/** Resumes `st`'s pull loop, if it waits. */
export function wakeGen(st: GenCredit | undefined): void {
  const w = st?.wake
  if (w === undefined) return
  st!.wake = undefined
  w()
}

/** Sets validated parameters on a freshly constructed instance (before any @enter hook). */
export function applyParams(instance: object, params: Record<string, unknown>): void {
  for (const key of Object.keys(params)) (instance as Record<string, unknown>)[key] = params[key]
}

/** The pool settings the core takes (crates/berth-node `BindingPoolSpec`). */
export function bindingSpec(def: PoolDef, maxContainers: number): BindingPoolSpec {
  const o = def.options
  const hooks = def.meta
  return {
    name: def.name,
    // Retries do not apply to web requests (README "API", web endpoints).
    methods: def.methods.map((m) => ({ maxBatchSize: m.batched?.maxBatchSize, waitMs: m.batched?.waitMs, noRetries: m.web !== undefined })),
    hasBuild: (hooks?.build.length ?? 0) > 0,
    hasSnapEnter: (hooks?.snapEnter.length ?? 0) > 0,
    // A web app starts after the @enter hooks, in the same phase (src/run/web.ts); volumes are
    // mounted in a container's first phase (README "Volume"), so a function with some has one.
    hasEnter: (hooks?.enter.length ?? 0) > 0 || def.methods.some((m) => m.web?.app !== undefined) || (o.volumes?.length ?? 0) > 0,
    // With --broker a container commits its volumes as it stops (README "Volume").
    hasExit: (hooks?.exit.length ?? 0) > 0 || (o.volumes?.length ?? 0) > 0,
    maxInputs: def.maxInputs,
    targetInputs: def.targetInputs,
    timeoutMs: o.timeoutMs,
    startupTimeoutMs: o.startupTimeoutMs,
    retries: {
      maxRetries: o.retries.maxRetries,
      backoffCoefficient: o.retries.backoffCoefficient,
      initialDelayMs: o.retries.initialDelay * 1000,
      maxDelayMs: o.retries.maxDelay * 1000,
    },
    minContainers: Math.min(o.minContainers, maxContainers),
    maxContainers,
    bufferContainers: o.bufferContainers,
    scaledownWindowMs: o.scaledownWindowMs,
    exitGraceMs: o.exitGracePeriodMs,
    singleUse: o.singleUseContainers,
    maxPending: o.maxPendingInputs,
  }
}

function cacheDir(): string {
  return process.env.BERTH_CACHE_DIR ?? join(process.cwd(), 'node_modules', '.cache', 'berth')
}

/** `@build` output is keyed by class name and a hash of its source: edit the class, rebuild. */
export function buildMarker(cls: Function): string {
  const hash = createHash('sha256').update(cls.toString()).digest('hex').slice(0, 16)
  return join(cacheDir(), `build-${cls.name || 'anonymous'}-${hash}.done`)
}

const buildsInProcess = new Map<string, Promise<void>>()

/** Runs the class's `@build` hooks unless their marker says an earlier run did. */
export function runBuildHooks(cls: Function, meta: ClassHooks, instance: any): Promise<void> {
  if (meta.build.length === 0) return Promise.resolve()
  const marker = buildMarker(cls)
  let p = buildsInProcess.get(marker)
  if (!p) {
    p = (async () => {
      if (existsSync(marker)) return
      for (const name of meta.build) await instance[name]()
      mkdirSync(cacheDir(), { recursive: true })
      writeFileSync(marker, JSON.stringify({ class: cls.name, builtAt: new Date().toISOString() }) + '\n')
    })()
    p.catch(() => buildsInProcess.delete(marker))
    buildsInProcess.set(marker, p)
  }
  return p
}

export function describe(err: unknown): string {
  return err instanceof Error ? (err.stack ?? `${err.name}: ${err.message}`) : String(err)
}

/** A `@batched` body that did not return one result per input: the error each input fails with. */
export function batchResultError(label: string, k: number, value: unknown): InvalidError {
  const got = Array.isArray(value) ? `an array of ${value.length}` : value === null ? 'null' : typeof value
  return new InvalidError(
    `${label} is @batched: it got ${k} inputs and must return an array of ${k} results (one per input, in order), but returned ${got}`,
  )
}

/**
 * Runs a container's `@exit` hooks in order. As in Modal, a hook that throws ends them: the ones
 * after it are skipped, and the log names the hook that threw, the ones skipped, and its stack.
 * `call` runs one hook by member name; `cls` names the class for the log. With `slowMs`, a hook
 * still running after that long is logged (its name, and the grace it runs within), and so is
 * its end (README "Observability").
 */
export async function runExitHooks(
  cls: string,
  names: readonly string[],
  call: (name: string) => unknown,
  slow?: { slowMs: number; graceMs: number },
): Promise<void> {
  for (let i = 0; i < names.length; i++) {
    const started = Date.now()
    let late = false
    const timer =
      slow &&
      setTimeout(() => {
        late = true
        console.warn(
          `berth: @exit hook ${cls}.${names[i]} still running after ${slow.slowMs / 1000}s ` +
            `(exitGracePeriod ${slow.graceMs / 1000}s: the container is killed past it)`,
        )
      }, slow.slowMs)
    try {
      await call(names[i])
    } catch (e) {
      const rest = names.slice(i + 1).map((n) => `${cls}.${n}`)
      const skipped = rest.length === 0 ? '' : `; the remaining exit hooks (${rest.join(', ')}) are skipped`
      console.error(`berth: @exit hook ${cls}.${names[i]} threw${skipped}: ${describe(e)}`)
      return
    } finally {
      clearTimeout(timer)
      if (late) console.warn(`berth: @exit hook ${cls}.${names[i]} finished after ${((Date.now() - started) / 1000).toFixed(1)}s`)
    }
  }
}
