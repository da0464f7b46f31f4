import { normalizeMounts, type Volume, type VolumeMount } from '../data/volume.ts'
import { InvalidError } from '../shared/errors.ts'
import { Retries, type RetriesOptions } from './retries.ts'
import { type Cron, type Period, type ScheduleSpec, validateSchedule } from './schedule.ts'

export interface BatchedOptions {
  /** Largest batch handed to the method, 1..1000. */
  maxBatchSize: number
  /** Longest wait in ms since the oldest waiting input before a partial batch goes, 0..600000. */
  waitMs: number
}

export interface ConcurrentOptions {
  /** Hard cap of in-flight inputs per container (integer ≥ 1). */
  maxInputs: number
  /** What the autoscaler aims at, 1..maxInputs; defaults to maxInputs. */
  targetInputs?: number
}

/** Options of `@app.cls(...)`. Times are seconds. A class sets concurrency with `@concurrent()`. */
export interface ClsOptions {
  /** Name under which the function/class is registered; defaults to its JS name. */
  name?: string
  /** Seconds each attempt may run (default 300). */
  timeout?: number
  /** Seconds a container may spend in `@enter` hooks (defaults to `timeout`). */
  startupTimeout?: number
  /** A number n means `{ maxRetries: n, backoffCoefficient: 1, initialDelay: 1 }`. */
  retries?: number | Retries | RetriesOptions
  /** Containers kept warm even when idle (default 0). */
  minContainers?: number
  /** Upper bound of containers; undefined lets the runtime decide. */
  maxContainers?: number
  /** Idle containers kept beyond current demand (default 0). */
  bufferContainers?: number
  /** Seconds an idle container lives before scale-down (default 60). */
  scaledownWindow?: number
  /** Stop each container after one input. */
  singleUseContainers?: boolean
  /**
   * Most inputs that may wait in its queue (accepted, not yet running); past it a call fails at
   * once with QueueFullError (HTTP 429, gRPC RESOURCE_EXHAUSTED). `.map()` inputs wait for room
   * instead. Default: no bound.
   */
  maxPendingInputs?: number
  /** Seconds `@exit` hooks get at stop (default 30). */
  exitGracePeriod?: number
  /** Environment variables set in each container process (over the secrets' keys). */
  env?: Record<string, string>
  /** Secrets (`npx berth secret create NAME KEY=VALUE`) whose keys are set in each container process's environment. */
  secrets?: string[]
  /**
   * GPU request, e.g. 'T4', 'A100:2', 'any', or a list of acceptable types in order of
   * preference. Each container process gets its own devices through CUDA_VISIBLE_DEVICES.
   */
  gpu?: string | string[]
  /** CPU cores requested (fractional allowed); a request for deploy targets, not enforced locally. */
  cpu?: number
  /** Memory requested in MiB; a request for deploy targets, not enforced locally. */
  memory?: number
  /** Volumes visible in each container at these absolute paths (README "Volume"): `{ '/data': Volume.fromName('data') }`. */
  volumes?: Record<string, Volume>
}

export interface WebEndpointOptions {
  /** The HTTP method it answers; default 'POST'. */
  method?: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE'
  /** Its path under the app, `/{app}/{label}`; default the function's name, or `Class/method`. */
  label?: string
  /** Demand the server's token (`authorization: Bearer <token>`); default false. */
  requiresAuth?: boolean
}

/** Options of `@fetchApp()` and `@nodeApp()`: where the app answers. */
export interface WebAppOptions {
  /** Its path under the app, `/{app}/{label}`; every request under it goes to the app. Default `Class/method`. */
  label?: string
  /** Demand the server's token (`authorization: Bearer <token>`); default false. */
  requiresAuth?: boolean
}

/** Options of `@webServer()`. */
export interface WebServerOptions extends WebAppOptions {
  /** The port the member starts its server on; default a free port, passed to the member (and in process.env.PORT). */
  port?: number
  /** Seconds the server has to accept connections after the member returns; default 5. */
  startupTimeout?: number
}

/** Options of `app.function(...)`: those of a class plus concurrency and batching. */
export interface FunctionOptions extends ClsOptions {
  concurrent?: ConcurrentOptions
  batched?: BatchedOptions
  /** Serve it at a URL of its own (README "API", web endpoints); checked in src/define/web.ts. */
  webEndpoint?: WebEndpointOptions
  /** Call it with no arguments at each tick, under `berth serve` (README "Schedules"). */
  schedule?: Period | Cron
}

export interface NormalizedOptions {
  name: string | undefined
  timeoutMs: number
  startupTimeoutMs: number
  retries: Retries
  minContainers: number
  maxContainers: number | undefined
  bufferContainers: number
  scaledownWindowMs: number
  singleUseContainers: boolean
  maxPendingInputs: number | undefined
  exitGracePeriodMs: number
  env: Record<string, string>
  secrets: string[]
  /** Empty when no GPU is requested. */
  gpu: string[]
  cpu: number | undefined
  /** MiB. */
  memory: number | undefined
  volumes: VolumeMount[]
  concurrent: Required<ConcurrentOptions> | undefined
  batched: BatchedOptions | undefined
  /** Unchecked here: src/define/handles.ts checks it with the function in hand. */
  webEndpoint: unknown
  schedule: ScheduleSpec | undefined
}

export const DEFAULT_TIMEOUT_S = 300
export const DEFAULT_SCALEDOWN_WINDOW_S = 60
export const DEFAULT_EXIT_GRACE_PERIOD_S = 30
/** Largest accepted time in seconds (a day), as Modal's timeout bound. */
export const MAX_SECONDS = 86_400

const CLS_KEYS = [
  'name',
  'timeout',
  'startupTimeout',
  'retries',
  'minContainers',
  'maxContainers',
  'bufferContainers',
  'scaledownWindow',
  'singleUseContainers',
  'maxPendingInputs',
  'exitGracePeriod',
  'env',
  'secrets',
  'gpu',
  'cpu',
  'memory',
  'volumes',
] as const
const FUNCTION_KEYS = [...CLS_KEYS, 'concurrent', 'batched', 'webEndpoint', 'schedule'] as const

// Names users coming from Modal (or typos) reach for, mapped to ours.
const ALIASES: Record<string, string> = {
  startup_timeout: 'startupTimeout',
  min_containers: 'minContainers',
  max_containers: 'maxContainers',
  buffer_containers: 'bufferContainers',
  scaledown_window: 'scaledownWindow',
  container_idle_timeout: 'scaledownWindow',
  single_use_containers: 'singleUseContainers',
  max_pending_inputs: 'maxPendingInputs',
  maxPending: 'maxPendingInputs',
  maxQueueSize: 'maxPendingInputs',
  exit_grace_period: 'exitGracePeriod',
  keep_warm: 'minContainers',
  keepWarm: 'minContainers',
  concurrency_limit: 'maxContainers',
  concurrencyLimit: 'maxContainers',
  allow_concurrent_inputs: 'concurrent',
  allowConcurrentInputs: 'concurrent',
  max_inputs: 'concurrent',
  maxInputs: 'concurrent',
  maxBatchSize: 'batched',
  max_batch_size: 'batched',
  waitMs: 'batched',
  wait_ms: 'batched',
  secret: 'secrets',
  environment: 'env',
  cron: 'schedule',
  period: 'schedule',
}

function editDistance(a: string, b: string): number {
  a = a.toLowerCase()
  b = b.toLowerCase()
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j)
  for (let i = 1; i <= a.length; i++) {
    const cur = [i]
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1))
    }
    prev = cur
  }
  return prev[b.length]
}

/** The candidate closest to `key`, or undefined when nothing is plausibly meant. */
export function closest(key: string, candidates: readonly string[]): string | undefined {
  let best: string | undefined
  let bestD = Infinity
  const lower = key.toLowerCase()
  for (const c of candidates) {
    const l = c.toLowerCase()
    if (lower.length >= 3 && (lower.startsWith(l) || l.startsWith(lower))) return c
    const d = editDistance(key, c)
    if (d < bestD) {
      best = c
      bestD = d
    }
  }
  return bestD <= Math.max(2, Math.floor(key.length / 3)) ? best : undefined
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  if (typeof v !== 'object' || v === null) return false
  const p = Object.getPrototypeOf(v)
  return p === Object.prototype || p === null
}

function seconds(where: string, key: string, v: unknown, def: number, min: number, allowZero: boolean): number {
  if (v === undefined) return def * 1000
  if (typeof v !== 'number' || Number.isNaN(v) || (allowZero ? v < min : v <= min) || v > MAX_SECONDS) {
    throw new InvalidError(
      `${where}: ${key} must be a number of seconds ${allowZero ? `≥ ${min}` : `> ${min}`} and ≤ ${MAX_SECONDS}, got ${show(v)}.`,
    )
  }
  // A positive timeout never rounds down to 0 ms, which would read as "no time at all".
  return v > 0 ? Math.max(1, Math.round(v * 1000)) : 0
}

function count(where: string, key: string, v: unknown, def: number, min: number): number
function count(where: string, key: string, v: unknown, def: undefined, min: number): number | undefined
function count(where: string, key: string, v: unknown, def: number | undefined, min: number): number | undefined {
  if (v === undefined) return def
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min) {
    throw new InvalidError(`${where}: ${key} must be an integer ≥ ${min}, got ${show(v)}.`)
  }
  return v
}

function show(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v)
  if (typeof v === 'bigint') return `${v}n`
  if (typeof v === 'object' && v !== null) return Array.isArray(v) ? 'an array' : 'an object'
  return String(v)
}

/** Validates `@batched`/`batched:` bounds: 1 ≤ maxBatchSize ≤ 1000 (integer), 0 ≤ waitMs ≤ 600000. */
export function validateBatched(opts: unknown, where: string): BatchedOptions {
  if (!isPlainObject(opts)) {
    throw new InvalidError(`${where}: batching needs options, e.g. { maxBatchSize: 64, waitMs: 10 }.`)
  }
  rejectUnknown(opts, ['maxBatchSize', 'waitMs'], where)
  const { maxBatchSize, waitMs } = opts
  if (typeof maxBatchSize !== 'number' || !Number.isInteger(maxBatchSize) || maxBatchSize < 1 || maxBatchSize > 1000) {
    throw new InvalidError(`${where}: maxBatchSize must be an integer between 1 and 1000, got ${show(maxBatchSize)}.`)
  }
  if (typeof waitMs !== 'number' || !(waitMs >= 0 && waitMs <= 600_000)) {
    throw new InvalidError(`${where}: waitMs must be a number of milliseconds between 0 and 600000, got ${show(waitMs)}.`)
  }
  return { maxBatchSize, waitMs }
}

/** Validates concurrency: maxInputs integer ≥ 1, 1 ≤ targetInputs ≤ maxInputs (default maxInputs). */
export function validateConcurrent(opts: unknown, where: string): Required<ConcurrentOptions> {
  if (!isPlainObject(opts)) {
    throw new InvalidError(`${where}: concurrency needs options, e.g. { maxInputs: 32, targetInputs: 16 }.`)
  }
  rejectUnknown(opts, ['maxInputs', 'targetInputs'], where)
  const { maxInputs, targetInputs = maxInputs } = opts
  if (typeof maxInputs !== 'number' || !Number.isInteger(maxInputs) || maxInputs < 1) {
    throw new InvalidError(`${where}: maxInputs must be an integer ≥ 1, got ${show(maxInputs)}.`)
  }
  if (typeof targetInputs !== 'number' || !Number.isInteger(targetInputs) || targetInputs < 1) {
    throw new InvalidError(`${where}: targetInputs must be an integer ≥ 1, got ${show(targetInputs)}.`)
  }
  if (targetInputs > maxInputs) {
    throw new InvalidError(
      `${where}: targetInputs (${targetInputs}) is greater than maxInputs (${maxInputs}). ` +
        'maxInputs is the hard cap per container and targetInputs what the autoscaler aims at: ' +
        `lower targetInputs or raise maxInputs to at least ${targetInputs}.`,
    )
  }
  return { maxInputs, targetInputs }
}

function rejectUnknown(opts: Record<string, unknown>, known: readonly string[], where: string): void {
  for (const key of Object.keys(opts)) {
    if (known.includes(key)) continue
    const alias = ALIASES[key]
    const guess = alias !== undefined && known.includes(alias) ? alias : closest(key, known)
    throw new InvalidError(
      `${where}: unknown option '${key}'.` +
        (guess !== undefined ? ` Did you mean '${guess}'?` : '') +
        ` Valid options: ${known.join(', ')}.`,
    )
  }
}

/**
 * Validates options of `app.function` (or, with `{ cls: true }`, of `@app.cls`) and fills in
 * defaults. `where` starts every error message, e.g. "app.function('square')". Times become ms.
 */
export function normalizeOptions(
  opts: FunctionOptions | ClsOptions | undefined,
  where: string,
  { cls = false }: { cls?: boolean } = {},
): NormalizedOptions {
  if (opts === undefined || opts === null) opts = {}
  if (!isPlainObject(opts)) {
    throw new InvalidError(`${where}: options must be a plain object, e.g. { timeout: 60 }, got ${show(opts)}.`)
  }
  const o = opts as Record<string, unknown>
  if (cls) {
    if ('concurrent' in o) {
      throw new InvalidError(
        `${where}: a class sets concurrency with the @concurrent({ maxInputs }) class decorator, not the 'concurrent' option.`,
      )
    }
    if ('webEndpoint' in o) {
      throw new InvalidError(`${where}: a class serves web endpoints per method: put @webEndpoint({ method, label }) on the method.`)
    }
    if ('schedule' in o) {
      throw new InvalidError(
        `${where}: a schedule calls a function with no arguments: put it on an app.function(...), which may call the class.`,
      )
    }
    if ('batched' in o) {
      throw new InvalidError(
        `${where}: a class batches per method: put @batched({ maxBatchSize, waitMs }) on the method instead of the 'batched' option.`,
      )
    }
  }
  rejectUnknown(o, cls ? CLS_KEYS : FUNCTION_KEYS, where)

  const name = o.name
  if (name !== undefined && (typeof name !== 'string' || !/^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$/.test(name))) {
    throw new InvalidError(
      `${where}: name must be 1 to 64 characters of letters, digits, '_', '.' or '-' (not starting with '.' or '-'), got ${show(name)}.`,
    )
  }

  const timeoutMs = seconds(where, 'timeout', o.timeout, DEFAULT_TIMEOUT_S, 0, false)
  const startupTimeoutMs = o.startupTimeout === undefined ? timeoutMs : seconds(where, 'startupTimeout', o.startupTimeout, 0, 0, false)
  const scaledownWindowMs = seconds(where, 'scaledownWindow', o.scaledownWindow, DEFAULT_SCALEDOWN_WINDOW_S, 0, true)
  const exitGracePeriodMs = seconds(where, 'exitGracePeriod', o.exitGracePeriod, DEFAULT_EXIT_GRACE_PERIOD_S, 0, true)

  let retries: Retries
  try {
    retries = Retries.normalize(o.retries as number | Retries | undefined)
  } catch (err) {
    if (err instanceof InvalidError) throw new InvalidError(`${where}: ${err.message}`)
    throw err
  }

  const minContainers = count(where, 'minContainers', o.minContainers, 0, 0)
  const maxContainers = count(where, 'maxContainers', o.maxContainers, undefined, 1)
  const bufferContainers = count(where, 'bufferContainers', o.bufferContainers, 0, 0)
  if (maxContainers !== undefined && minContainers > maxContainers) {
    throw new InvalidError(
      `${where}: minContainers (${minContainers}) is greater than maxContainers (${maxContainers}). Lower minContainers or raise maxContainers.`,
    )
  }

  const singleUseContainers = o.singleUseContainers ?? false
  if (typeof singleUseContainers !== 'boolean') {
    throw new InvalidError(`${where}: singleUseContainers must be true or false, got ${show(singleUseContainers)}.`)
  }

  const maxPendingInputs = o.maxPendingInputs
  if (
    maxPendingInputs !== undefined &&
    (typeof maxPendingInputs !== 'number' || !Number.isInteger(maxPendingInputs) || maxPendingInputs < 1 || maxPendingInputs > 0xffff_ffff)
  ) {
    throw new InvalidError(
      `${where}: maxPendingInputs must be a positive integer (the most inputs that may wait in its queue), got ${show(maxPendingInputs)}. Leave it out for no bound.`,
    )
  }

  const env: Record<string, string> = {}
  if (o.env !== undefined) {
    if (!isPlainObject(o.env)) throw new InvalidError(`${where}: env must be an object of strings, e.g. { LOG_LEVEL: 'debug' }.`)
    for (const [k, v] of Object.entries(o.env)) {
      if (typeof v !== 'string') {
        throw new InvalidError(`${where}: env.${k} must be a string, got ${show(v)}. Convert it with String(...).`)
      }
      env[k] = v
    }
  }

  const secrets = strings(where, 'secrets', o.secrets, false)
  const gpu = strings(where, 'gpu', o.gpu, true)
  for (const g of gpu) {
    if (!/^[^:\s]+(:[1-9][0-9]*)?$/.test(g)) {
      throw new InvalidError(`${where}: gpu '${g}' must be a type with an optional count of at least 1, e.g. 'T4', 'A100:2' or 'any'.`)
    }
  }

  const cpu = o.cpu
  if (cpu !== undefined && (typeof cpu !== 'number' || !(cpu > 0) || !Number.isFinite(cpu))) {
    throw new InvalidError(`${where}: cpu must be a positive number of cores, e.g. 0.5 or 2, got ${show(cpu)}.`)
  }
  const memory = o.memory
  if (memory !== undefined && (typeof memory !== 'number' || !Number.isInteger(memory) || memory < 1)) {
    throw new InvalidError(`${where}: memory must be a positive integer of MiB, e.g. 2048, got ${show(memory)}.`)
  }

  const concurrent = o.concurrent === undefined ? undefined : validateConcurrent(o.concurrent, `${where}: concurrent`)
  const batched = o.batched === undefined ? undefined : validateBatched(o.batched, `${where}: batched`)

  return {
    name: name as string | undefined,
    timeoutMs,
    startupTimeoutMs,
    retries,
    minContainers,
    maxContainers,
    bufferContainers,
    scaledownWindowMs,
    singleUseContainers,
    maxPendingInputs: maxPendingInputs as number | undefined,
    exitGracePeriodMs,
    env,
    secrets,
    gpu,
    cpu: cpu as number | undefined,
    memory: memory as number | undefined,
    volumes: normalizeMounts(where, o.volumes),
    concurrent,
    batched,
    webEndpoint: o.webEndpoint,
    schedule: o.schedule === undefined ? undefined : validateSchedule(o.schedule, where),
  }
}

function strings(where: string, key: string, v: unknown, single: boolean): string[] {
  if (v === undefined) return []
  if (single && typeof v === 'string' && v !== '') return [v]
  if (Array.isArray(v) && v.every((s) => typeof s === 'string' && s !== '')) return [...v]
  throw new InvalidError(`${where}: ${key} must be ${single ? 'a string or ' : ''}an array of non-empty strings, got ${show(v)}.`)
}
