// Small helpers shared by the user-view tests (not a test file: ava only runs *.test.ts).
import { setTimeout as delay } from 'node:timers/promises'

export const sleep = (ms: number): Promise<void> => delay(ms, undefined, { ref: true })

/** A promise with its resolve exposed. */
export function deferred<T = void>(): { promise: Promise<T>; resolve: (v: T) => void } {
  let resolve!: (v: T) => void
  const promise = new Promise<T>((r) => (resolve = r))
  return { promise, resolve }
}

/** A child's exit code once its output pipes are closed too: Node's 'exit' can come before the
 *  last bytes a process wrote are read, so a test that reads the output after it waits for this. */
export function closed(child: import('node:child_process').ChildProcess): Promise<number | null> {
  return new Promise((resolve) => child.once('close', (code) => resolve(code)))
}

/** What a wait is for: a text, or a function making it when the wait fails (so that it can
 *  show processes' output as it is then). */
type What = string | (() => string)
const say = (what: What): string => (typeof what === 'function' ? what() : what)

/** Rejects if `p` has not settled within `ms`: catches hangs without tight timing. */
export async function within<T>(ms: number, p: Promise<T>, what: What = 'operation'): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${say(what)} did not finish within ${ms} ms (hang?)`)), ms)
  })
  try {
    return await Promise.race([p, late])
  } finally {
    clearTimeout(timer)
  }
}

/** Resolves once `cond()` holds, polling; rejects after `ms`. */
export async function until(cond: () => boolean, ms = 5000, what: What = 'condition'): Promise<void> {
  const end = Date.now() + ms
  while (!cond()) {
    if (Date.now() > end) throw new Error(`${say(what)} not reached within ${ms} ms`)
    await sleep(5)
  }
}

/** Waits for `signal` to abort (or `ms` to pass); returns whether it aborted. */
export function abortedWithin(signal: AbortSignal, ms: number): Promise<boolean> {
  if (signal.aborted) return Promise.resolve(true)
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), ms)
    signal.addEventListener('abort', () => {
      clearTimeout(timer)
      resolve(true)
    }, { once: true })
  })
}

/** Whether a process with this pid exists (a zombie counts until it is reaped). */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}
