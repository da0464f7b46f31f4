// The native binding (crates/berth-node through napi's generated binding.cjs), loaded once and
// typed by the binding.d.ts napi generates beside it. Every module reaches the binding here.
// This file sits at the top of src/ because binding.cjs is one directory up from both src/
// (tests and tools run the sources through tsx) and dist/ (the bundles): one relative path
// serves both.
import { createRequire } from 'node:module'

import type * as Binding from '../binding.js'

export type {
  BindingClient,
  BindingContainer,
  BindingFunctionDef,
  BindingParam,
  BindingPoolSpec,
  BindingRuntime,
  BindingServer,
  ClientEvents,
  ContainerEvents,
} from '../binding.js'

let loaded: typeof Binding | undefined

/**
 * The binding, loaded at the first call. The CLI asks only in the commands that need it, so
 * that `berth --help` loads no native code.
 */
export function binding(): typeof Binding {
  return (loaded ??= createRequire(__filename)('../binding.cjs') as typeof Binding)
}
