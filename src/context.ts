import { AsyncLocalStorage } from 'node:async_hooks'
import { InvalidError } from './errors.ts'

export interface InputContext {
  inputId: string
  functionCallId: string
  /** Fires on cancel or timeout. */
  signal: AbortSignal
  /** True when running through `.local()`. */
  local?: boolean
}

// Two ways to know the current input.
// - Synchronous (default): the runtime publishes the input while user code runs synchronously.
//   It costs nothing, but is gone after the code's first `await`.
// - Asynchronous: AsyncLocalStorage follows the input across awaits. On Node 20 it installs
//   promise hooks that make every promise in the process about 3x slower, so berth turns it on
//   only when asked to: when a function's or class's source uses the context API (the runtime
//   checks), when BERTH_ASYNC_CONTEXT=1, or from the moment code asks for the context where the
//   synchronous way cannot answer.
const storage = new AsyncLocalStorage<InputContext>()
let asyncMode = process.env.BERTH_ASYNC_CONTEXT === '1'
let syncSource: () => InputContext | undefined = () => undefined

/** The runtime's synchronous source of the current input. */
export function setSyncContextSource(fn: () => InputContext | undefined): void {
  syncSource = fn
}

/** Whether inputs should run inside AsyncLocalStorage. */
export function asyncContextEnabled(): boolean {
  return asyncMode
}

export function enableAsyncContext(): void {
  asyncMode = true
}

/** Source code that uses the context API needs the asynchronous way. */
export const CONTEXT_API = /\b(currentInput|currentInputId|currentFunctionCallId|isLocal)\b/

/** Runs `fn` with `ctx` as the current input; everything `fn` awaits or schedules sees it. */
export function runInContext<R>(ctx: InputContext, fn: () => R): R {
  return storage.run(ctx, fn)
}

function store(): InputContext | undefined {
  const ctx = syncSource() ?? storage.getStore()
  // Asked for where only the asynchronous way could answer: switch it on for what follows.
  if (ctx === undefined && !asyncMode) asyncMode = true
  return ctx
}

export function currentInputId(): string | undefined {
  return store()?.inputId
}

export function currentFunctionCallId(): string | undefined {
  return store()?.functionCallId
}

/** The input being served. Throws InvalidError outside of an input (e.g. in @enter or at top level). */
export function currentInput(): { readonly inputId: string; readonly functionCallId: string; readonly signal: AbortSignal } {
  const ctx = store()
  if (ctx === undefined) {
    throw new InvalidError(
      'currentInput() was called outside of an input. Call it from a @method(), @batched() or app.function body ' +
        '(not from @enter/@exit hooks or top-level code), or use currentInputId(), which returns undefined there. ' +
        'If this code runs inside an input after an await in a helper berth could not see, set BERTH_ASYNC_CONTEXT=1 ' +
        '(berth follows the input across awaits from now on).',
    )
  }
  return ctx
}

/** True inside an input run through `.local()`; false in a container and outside any input. */
export function isLocal(): boolean {
  return store()?.local === true
}
