// The numbers the binding and this layer agree on (crates/berth-node/src/codes.rs): tags of
// the packed event buffers, outcome and status codes, phases, abort reasons. Read from the binding once, when berth loads; each
// consumer copies the values it needs into module constants, so the hot path compares numbers
// without a property lookup.
import { binding } from '../native.ts'

const b = binding()

/** `BindingRuntime`'s event tags. */
export const RuntimeEvent = b.RuntimeEvent
/** How an execution ended, as `BindingRuntime.complete` takes it. */
export const ExecStatusCode = b.ExecStatusCode
/** An input's final outcome in a `RuntimeEvent.Done`. */
export const OutcomeCode = b.OutcomeCode
/** A container's lifecycle phase. */
export const PhaseCode = b.PhaseCode
/** Why a running attempt is told to stop. */
export const AbortReasonCode = b.AbortReasonCode
/** `BindingContainer`'s event tags. */
export const ContainerEvent = b.ContainerEvent
/** What one result of `BindingContainer.outputs` holds. */
export const OutputKind = b.OutputKind
/** The kinds of `BindingClient`'s events. */
export const ClientEvent = b.ClientEvent
