// berth: run TypeScript classes the way Modal runs Python.
// Node 20 has no Symbol.metadata; decorators need it before any user class is evaluated.
;(Symbol as any).metadata ??= Symbol.for('Symbol.metadata')

export { App, allApps, type AppRun, type RunOptions } from './define/app.ts'
export { Cls } from './define/handles.ts'
export { FunctionCall } from './call/function-call.ts'
export { Function } from './call/from-name.ts'
export {
  batched,
  build,
  concurrent,
  enter,
  exit,
  fetchApp,
  method,
  nodeApp,
  parameter,
  webEndpoint,
  webServer,
} from './define/decorators.ts'
export type { FetchHandler } from './define/decorators.ts'
export type { WebAppOptions, WebEndpointOptions, WebServerOptions } from './define/options.ts'
export { Retries, type RetriesOptions } from './define/retries.ts'
export { Cron, Period } from './define/schedule.ts'
export { currentFunctionCallId, currentInput, currentInputId, isLocal } from './run/context.ts'
export {
  BerthError,
  FunctionTimeoutError,
  InitError,
  InputCancelledError,
  InvalidError,
  KeyError,
  NotFoundError,
  QueueEmptyError,
  QueueFullError,
  RemoteError,
  SerializationError,
} from './shared/errors.ts'
export { Dict } from './data/dict.ts'
export { Queue } from './data/queue.ts'
export { Volume, type VolumeEntry, type VolumeOptions } from './data/volume.ts'
export type { ClsOptions, FunctionOptions } from './define/options.ts'
export type { ClsHandle, ClsParams, FunctionHandle, GeneratorInvocable, MapOptions, MethodHandle } from './call/types.ts'

/** @internal For the `berth` CLI: process containers and serving, on this module instance. */
export { containerMain as __berthContainerMain } from './run/container.ts'
export { registryOf as __berthRegistryOf } from './define/served.ts'
