import { AsyncLocalStorage } from 'node:async_hooks'
import { InvalidError } from '../shared/errors.ts'
import type { Trace } from './trace.ts'

export interface InputContext {
  inputId: string
  functionCallId: string
  /** Fires on cancel or timeout. */
  signal: AbortSignal
  /** The input's W3C trace context, `00-<trace-id>-<its own span id>-<flags>` (README "Tracing"). */
  readonly traceparent: string
  /** The trace the calls it makes continue (the embedded runtime's calls; others send `traceparent`). */
  callTrace(): Trace
  /** True for code that counts as local (isLocal()); `.local()` calls run in a LocalContext. */
  local?: boolean
}

/**
 * An input's abort, for both container modes' contexts: its AbortController is made only if the
 * code asks for the signal (most never do), and an abort before that is kept for it.
 */
export abstract class InputAbort {
  private ctrl: AbortController | undefined
  private reason: unknown
  get signal(): AbortSignal {
    if (!this.ctrl) {
      this.ctrl = new AbortController()
      if (this.reason !== undefined) this.ctrl.abort(this.reason)
    }
    return this.ctrl.signal
  }
  /** Set once the input was aborted (timeout, cancel, reschedule). */
  get aborted(): boolean {
    return this.reason !== undefined
  }
  /** Aborts with `reason`; false if it was aborted already. */
  protected abortWith(reason: unknown): boolean {
    if (this.reason !== undefined) return false
    this.reason = reason
    this.ctrl?.abort(reason)
    return true
  }
}

/**
 * What a `.local()` call runs in: local code that is no input of its own (Modal's `.local()` is
 * a plain call, and its `current_input_id()` is None there). Called from an input, it is part
 * of that input, `outer`.
 */
interface LocalContext {
  local: true
  outer: InputContext | undefined
}

// Two ways to know the current input.
// - Asynchronous (default): AsyncLocalStorage follows the input across awaits, into any helper.
// - Synchronous (BERTH_ASYNC_CONTEXT=0): the runtime publishes the input only while user code
//   runs synchronously; after the code's first `await` the context functions see no input.
//   On Node 20, AsyncLocalStorage installs promise hooks that make every promise in the process
//   about 3x slower, so a throughput-bound app that does not need the context can opt out.
const storage = new AsyncLocalStorage<InputContext | LocalContext>()
const asyncMode = process.env.BERTH_ASYNC_CONTEXT !== '0'
let syncSource: () => InputContext | undefined = () => undefined

/** The runtime's synchronous source of the current input. */
export function setSyncContextSource(fn: () => InputContext | undefined): void {
  syncSource = fn
}

/** Whether inputs run inside AsyncLocalStorage. */
export function asyncContextEnabled(): boolean {
  return asyncMode
}

/** Runs `fn` with `ctx` as the current input; everything `fn` awaits or schedules sees it. */
export function runInContext<R, A extends unknown[]>(ctx: InputContext, fn: (...args: A) => R, ...args: A): R {
  return storage.run(ctx, fn, ...args)
}

/**
 * Runs `fn` as a `.local()` call: isLocal() is true in it, and the current input is the one
 * that made the call, if any (none from the caller's own code).
 */
export function runAsLocal<R>(fn: () => R): R {
  // `.local()` always runs in AsyncLocalStorage (it is not the hot path); it only turns the
  // promise hooks on when used.
  return storage.run({ local: true, outer: store() }, fn)
}

// Container code that is not an input (@enter, @exit, @build hooks of embedded containers):
// no current input, and not local.
const HOOK = { inputId: undefined, functionCallId: undefined, signal: undefined, local: false } as unknown as InputContext
let syncHook = false
// Set in a container process: everything in it runs in a container.
let containerProcess = false

/** This process is a container (`berth serve`'s child): isLocal() is false in all of it. */
export function markContainerProcess(): void {
  containerProcess = true
}

/** Whether this process is a container: there, an app's own handles call the control plane it attached to. */
export function inContainerProcess(): boolean {
  return containerProcess
}

/**
 * Runs a lifecycle hook of an embedded container as container code. With BERTH_ASYNC_CONTEXT=0
 * that is known during the hook's synchronous part only, as the input context is.
 */
export function runAsHook<R>(fn: () => R): R {
  if (asyncMode) return storage.run(HOOK, fn)
  syncHook = true
  try {
    return fn()
  } finally {
    syncHook = false
  }
}

/** The input being served, if any. */
function store(): InputContext | undefined {
  const ctx = current()
  if (ctx === HOOK) return undefined
  return ctx !== undefined && isLocalContext(ctx) ? ctx.outer : ctx
}

function isLocalContext(ctx: InputContext | LocalContext): ctx is LocalContext {
  return 'outer' in ctx
}

/** The current context, container hooks' and `.local()` calls' included. */
function current(): InputContext | LocalContext | undefined {
  return asyncMode ? storage.getStore() : (syncSource() ?? (syncHook ? HOOK : storage.getStore()))
}

/**
 * The id of the input being served: in a `@method()`, `@batched()` or `app.function` body
 * reached through `.remote()`, `.spawn()`, `.map()` and co. Undefined elsewhere: in your own
 * code, in `@enter`/`@exit` hooks, and in `.local()` calls, which are no input of their own (as
 * Modal's `current_input_id()` is None there; a `.local()` call made from an input sees that
 * input).
 */
export function currentInputId(): string | undefined {
  return store()?.inputId
}

/** The function call the current input belongs to; undefined where currentInputId() is. */
export function currentFunctionCallId(): string | undefined {
  return store()?.functionCallId
}

/**
 * The input being served. Throws InvalidError outside of an input: in @enter/@exit hooks, at
 * top level, and in `.local()` calls (unless made from an input, whose context they share).
 */
export function currentInput(): {
  readonly inputId: string
  readonly functionCallId: string
  readonly signal: AbortSignal
  readonly traceparent: string
} {
  const ctx = store()
  if (ctx === undefined) {
    throw new InvalidError(
      'currentInput() was called outside of an input. Call it from a @method(), @batched() or app.function body ' +
        'reached through .remote(), .spawn() or .map() (not from @enter/@exit hooks, top-level code or a .local() call), ' +
        'or use currentInputId(), which returns undefined there.' +
        (asyncMode ? '' : " BERTH_ASYNC_CONTEXT=0 is set: the input is only known before the code's first await."),
    )
  }
  return ctx
}

/**
 * The current input's context, for the calls made in it to continue its trace (README
 * "Tracing"); undefined outside of an input.
 */
export function callerInput(): InputContext | undefined {
  return store()
}

/**
 * True on the machine that launches the app: the caller's own code and inputs run through
 * `.local()`. False in container code: inputs and lifecycle hooks, in container processes and
 * in embedded containers alike (Modal's `is_local()`).
 */
export function isLocal(): boolean {
  if (containerProcess) return false
  const ctx = current()
  return ctx === undefined || ctx.local === true
}
