// `@webEndpoint(...)` and `app.function({ webEndpoint })`: a URL the user designs (README
// "API", web endpoints). The options are checked here, at definition, with the fix named; the
// control plane routes by them (crates/berth-server/src/web.rs).
import { arityOf } from '../shared/arity.ts'
import { InvalidError } from '../shared/errors.ts'
import type { WebSpec } from '../run/pool.ts'
import { closest, type WebEndpointOptions } from './options.ts'

export type { WebEndpointOptions }

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
