// `@webEndpoint(...)` and `app.function({ webEndpoint })`: a URL the user designs (README
// "API", web endpoints). The options are checked here, at definition, with the fix named; the
// control plane routes by them (crates/berth-server/src/web.rs).
import { arityOf } from '../shared/arity.ts'
import { InvalidError } from '../shared/errors.ts'
import type { WebSpec } from '../run/pool.ts'
import { closest, type WebAppOptions, type WebEndpointOptions, type WebServerOptions } from './options.ts'

export type { WebAppOptions, WebEndpointOptions, WebServerOptions }

const KEYS = ['method', 'label', 'requiresAuth'] as const
const METHODS = ['GET', 'POST', 'PUT', 'PATCH', 'DELETE']

/** Validates the options of `where` (`@webEndpoint() on Model.predict`, `app.function('f')`). */
export function validateWebEndpoint(opts: unknown, where: string): Omit<WebSpec, 'takesRequest'> {
  if (opts === undefined) opts = {}
  if (typeof opts !== 'object' || opts === null || Array.isArray(opts)) {
    throw new InvalidError(
      `${where}: webEndpoint options must be an object, e.g. { method: 'GET' }, got ${opts === null ? 'null' : typeof opts}.`,
    )
  }
  const o = opts as Record<string, unknown>
  for (const key of Object.keys(o)) {
    if ((KEYS as readonly string[]).includes(key)) continue
    const guess = closest(key, KEYS)
    throw new InvalidError(
      `${where}: unknown webEndpoint option '${key}'.` + (guess ? ` Did you mean '${guess}'?` : '') + ` Valid options: ${KEYS.join(', ')}.`,
    )
  }
  const method = o.method ?? 'POST'
  if (typeof method !== 'string' || !METHODS.includes(method.toUpperCase())) {
    throw new InvalidError(`${where}: webEndpoint method must be one of ${METHODS.join(', ')}, got ${JSON.stringify(method)}.`)
  }
  const label = o.label
  if (label !== undefined && (typeof label !== 'string' || !/^[A-Za-z0-9_][A-Za-z0-9_.~-]{0,63}$/.test(label))) {
    throw new InvalidError(
      `${where}: webEndpoint label is one path segment under the app (/{app}/{label}): 1 to 64 letters, digits, '_', '.', '~' or '-', ` +
        `with no '/', got ${JSON.stringify(label)}.`,
    )
  }
  const requiresAuth = o.requiresAuth ?? false
  if (typeof requiresAuth !== 'boolean') {
    throw new InvalidError(`${where}: webEndpoint requiresAuth must be true or false, got ${typeof requiresAuth}.`)
  }
  return { method: method.toUpperCase(), label: label as string | undefined, requiresAuth }
}

const APP_KEYS = ['label', 'requiresAuth'] as const
const SERVER_KEYS = ['label', 'requiresAuth', 'port', 'startupTimeout'] as const

/**
 * Validates the options of a web app member (`@fetchApp()`, `@webServer()`, `@nodeApp()`):
 * every request under its path, with any method, goes to it.
 */
export function validateWebApp(app: 'fetchApp' | 'webServer' | 'nodeApp', opts: unknown, where: string): Omit<WebSpec, 'takesRequest'> {
  if (opts === undefined) opts = {}
  if (typeof opts !== 'object' || opts === null || Array.isArray(opts)) {
    throw new InvalidError(`${where}: options must be an object, e.g. { label: 'api' }, got ${opts === null ? 'null' : typeof opts}.`)
  }
  const o = opts as Record<string, unknown>
  const keys: readonly string[] = app === 'webServer' ? SERVER_KEYS : APP_KEYS
  for (const key of Object.keys(o)) {
    if (keys.includes(key)) continue
    const guess = closest(key, keys)
    throw new InvalidError(
      `${where}: unknown option '${key}'.` + (guess ? ` Did you mean '${guess}'?` : '') + ` Valid options: ${keys.join(', ')}.`,
    )
  }
  // The label and requiresAuth rules are an endpoint's.
  const { label, requiresAuth } = validateWebEndpoint({ label: o.label, requiresAuth: o.requiresAuth }, where)
  const spec: Omit<WebSpec, 'takesRequest'> = { method: '*', label, requiresAuth, app }
  if (o.port !== undefined) {
    if (typeof o.port !== 'number' || !Number.isInteger(o.port) || o.port < 1 || o.port > 65535) {
      throw new InvalidError(
        `${where}: port must be a whole number from 1 to 65535 (or leave it out for a free port), got ${JSON.stringify(o.port)}.`,
      )
    }
    spec.port = o.port
  }
  if (o.startupTimeout !== undefined) {
    if (typeof o.startupTimeout !== 'number' || !(o.startupTimeout > 0) || !Number.isFinite(o.startupTimeout)) {
      throw new InvalidError(`${where}: startupTimeout is in seconds, a number above 0, e.g. 10; got ${JSON.stringify(o.startupTimeout)}.`)
    }
    spec.startupTimeoutMs = o.startupTimeout * 1000
  }
  return spec
}

/**
 * Whether `fn` takes the web `Request` (a second parameter, or a rest parameter): only then is
 * one built for it, since building one costs microseconds (README "API", web endpoints).
 */
export function takesRequest(fn: Function, where: string): boolean {
  const a = arityOf(fn)
  if (a.min > 2) {
    throw new InvalidError(
      `${where}: a web endpoint receives the request's value (the JSON body or the query) and, if it declares a second ` +
        `parameter, the web Request; it declares ${a.min} required parameters. Take (value, request) at most.`,
    )
  }
  return a.max === undefined || a.max >= 2
}

/** What callers pass a web endpoint: its one value (`.remote(value)`; over HTTP, the body or the query). */
export const WEB_ARITY = { min: 0, max: 1 } as const
