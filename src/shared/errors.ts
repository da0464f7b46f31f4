// Error classes of berth. `name` lives on each prototype (not assigned in the constructor) so
// that V8 already uses it for the stack header and minifiers renaming classes cannot change it.

export class BerthError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options)
  }
}

/** Bad definition or call: wrong decorator use, out-of-range option, unknown parameter. */
export class InvalidError extends BerthError {}

/** The remote function threw. `remoteName`/`message`/`remoteStack` are those of the original. */
export class RemoteError extends BerthError {
  readonly remoteName: string
  readonly remoteStack: string | undefined
  constructor(remoteName: string, message: string, remoteStack?: string) {
    super(message)
    this.remoteName = remoteName
    this.remoteStack = remoteStack
  }
  static from(err: unknown): RemoteError {
    const d = errorToData(err)
    return new RemoteError(d.name, d.message, d.stack)
  }
}

/** An `@enter` hook threw: the container never took the input. Carries the hook's error. */
export class InitError extends BerthError {
  readonly remoteName: string
  readonly remoteStack: string | undefined
  constructor(remoteName: string, message: string, remoteStack?: string) {
    super(message)
    this.remoteName = remoteName
    this.remoteStack = remoteStack
  }
  static from(err: unknown): InitError {
    const d = errorToData(err)
    return new InitError(d.name, d.message, d.stack)
  }
}

/** An attempt ran past its `timeout`. */
export class FunctionTimeoutError extends BerthError {}

/** The input was cancelled (`FunctionCall.cancel()`). */
export class InputCancelledError extends BerthError {}

/** A value cannot cross as CBOR; thrown at the caller before anything is sent. */
export class SerializationError extends BerthError {}

/**
 * The function's queue already held `maxPendingInputs` waiting inputs: the call was refused at
 * once and never ran. Retry later, or raise maxPendingInputs or maxContainers.
 */
export class QueueFullError extends BerthError {}

/** `Dict.pop(key)` without a default found no such key (Modal raises KeyError). */
export class KeyError extends BerthError {}

/** A named dict that does not exist was asked for without `createIfMissing`. */
export class NotFoundError extends BerthError {}

/** A blocking `Queue.get` found nothing within its timeout (Modal's `queue.Empty`). */
export class QueueEmptyError extends BerthError {}

const CLASSES = {
  BerthError,
  InvalidError,
  RemoteError,
  InitError,
  FunctionTimeoutError,
  InputCancelledError,
  SerializationError,
  QueueFullError,
  KeyError,
  NotFoundError,
  QueueEmptyError,
} as const
for (const [name, cls] of Object.entries(CLASSES)) {
  Object.defineProperty(cls.prototype, 'name', { value: name, writable: true, configurable: true })
}

/** An error as it travels on the wire. `remoteName`/`remoteStack` only for RemoteError/InitError. */
export interface ErrorData {
  name: string
  message: string
  stack?: string
  remoteName?: string
  remoteStack?: string
}

export function errorToData(err: unknown): ErrorData {
  if (err instanceof RemoteError || err instanceof InitError) {
    const d: ErrorData = { name: err.name, message: err.message, remoteName: err.remoteName }
    if (err.stack !== undefined) d.stack = err.stack
    if (err.remoteStack !== undefined) d.remoteStack = err.remoteStack
    return d
  }
  if (err instanceof Error) {
    const d: ErrorData = { name: String(err.name), message: String(err.message) }
    if (typeof err.stack === 'string') d.stack = err.stack
    return d
  }
  // Thrown non-errors (`throw 'x'`, `throw {code: 1}`) and errors from other realms.
  if (typeof err === 'object' && err !== null && typeof (err as Error).message === 'string') {
    const e = err as Partial<Error>
    const d: ErrorData = { name: typeof e.name === 'string' ? e.name : 'Error', message: e.message! }
    if (typeof e.stack === 'string') d.stack = e.stack
    return d
  }
  let message: string
  try {
    message = String(err)
  } catch {
    message = Object.prototype.toString.call(err)
  }
  return { name: 'Error', message }
}

/** An error as process containers send it (`name\0message\0stack`) and the control plane passes it on. */
export interface WireError {
  name: string
  message: string
  stack?: string
}

/**
 * The one description of an error thrown by user code (an input's body, an `@enter` hook), in
 * embedded and process containers alike: its name, message and stack, which is all a container
 * process can send. A RemoteError or InitError that the code lets through (a call it made
 * failed) is described by the error it carries.
 */
export function wireError(err: unknown): WireError {
  if (err instanceof RemoteError || err instanceof InitError) {
    const w: WireError = { name: err.remoteName, message: err.message }
    if (err.remoteStack !== undefined) w.stack = err.remoteStack
    return w
  }
  const d = errorToData(err)
  const w: WireError = { name: d.name, message: d.message }
  if (d.stack !== undefined) w.stack = d.stack
  return w
}

/**
 * What the caller gets when an input's code threw `err`, in either mode: the error rebuilt from
 * its wire description, as a caller of process containers rebuilds it (a RemoteError carrying
 * the original name, message and stack; berth's own classes as themselves).
 */
export function inputError(err: unknown): BerthError {
  return errorFromData(wireError(err))
}

/** What the caller gets when an `@enter` hook threw `err`, in either mode (see errorFromData). */
export function initError(err: unknown): InitError {
  const w = wireError(err)
  return new InitError(w.name, w.message, w.stack)
}

/**
 * Rebuilds an error from the wire. Our own classes come back as themselves (the remote stack, if
 * any, is kept in `remoteStack`); anything else becomes a RemoteError with the original name.
 */
export function errorFromData(data: ErrorData): BerthError {
  const { name, message } = data
  switch (name) {
    case 'RemoteError':
      return new RemoteError(data.remoteName ?? 'Error', message, data.remoteStack ?? data.stack)
    case 'InitError': {
      if (data.remoteName !== undefined) return new InitError(data.remoteName, message, data.remoteStack ?? data.stack)
      // From the control plane, which words the hook's error `<name>: <message>`
      // (crates/berth-server/src/plane.rs, `done()`): split it back, so that the caller sees
      // what an embedded container gives (initError).
      const cut = message.indexOf(': ')
      return cut > 0
        ? new InitError(message.slice(0, cut), message.slice(cut + 2), data.stack)
        : new InitError('Error', message, data.stack)
    }
    case 'InvalidError':
    case 'FunctionTimeoutError':
    case 'InputCancelledError':
    case 'SerializationError':
    case 'QueueFullError':
    case 'BerthError': {
      const err = new CLASSES[name](message)
      if (data.stack !== undefined) Object.defineProperty(err, 'remoteStack', { value: data.stack, enumerable: false })
      return err
    }
    default:
      return new RemoteError(name, message, data.stack)
  }
}
