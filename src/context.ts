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

const storage = new AsyncLocalStorage<InputContext>()

/** Runs `fn` with `ctx` as the current input; everything `fn` awaits or schedules sees it. */
export function runInContext<R>(ctx: InputContext, fn: () => R): R {
  return storage.run(ctx, fn)
}

export function currentInputId(): string | undefined {
  return storage.getStore()?.inputId
}

export function currentFunctionCallId(): string | undefined {
  return storage.getStore()?.functionCallId
}

/** The input being served. Throws InvalidError outside of an input (e.g. in @enter or at top level). */
export function currentInput(): { readonly inputId: string; readonly functionCallId: string; readonly signal: AbortSignal } {
  const ctx = storage.getStore()
  if (ctx === undefined) {
    throw new InvalidError(
      'currentInput() was called outside of an input. Call it from a @method(), @batched() or app.function body ' +
        '(not from @enter/@exit hooks or top-level code), or use currentInputId(), which returns undefined there.',
    )
  }
  return ctx
}

/** True inside an input run through `.local()`; false in a container and outside any input. */
export function isLocal(): boolean {
  return storage.getStore()?.local === true
}
