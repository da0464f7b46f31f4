// The embedded runtime: the JavaScript side of one scheduler.
//
// The Rust core decides what runs when (slots, batches, timeouts, retries, lifecycle); this
// module runs what it says and reports back. Values never cross into Rust: arguments and
// results stay here, keyed by input id, and only packed ids cross N-API, in batches both ways
// (see crates/berth-node): each call into the core returns the events it caused, and events
// from timers arrive through one weak doorbell.
import { mountVolumes } from '../data/volume.ts'
import { binding, type BindingRuntime } from '../native.ts'
import { batchArityError } from '../shared/arity.ts'
import { AbortReasonCode, ExecStatusCode, OutcomeCode, PhaseCode, RuntimeEvent } from '../shared/codes.ts'
import { errorFromData, InputCancelledError, InvalidError, initError, inputError, SerializationError } from '../shared/errors.ts'
import { checkAndCopy } from '../shared/serialize.ts'
import { newTrace, spanHex, traceparentOf, type Trace } from './trace.ts'
import { asyncContextEnabled, InputAbort, runAsHook, runInContext, setSyncContextSource, type InputContext } from './context.ts'
import {
  applyParams,
  batchResultError,
  bindingSpec,
  type ClassHooks,
  describe,
  type GenCredit,
  runBuildHooks,
  runExitHooks,
  type PoolDef,
  wakeGen,
} from './pool.ts'

// The packed buffers' numbers (crates/berth-node/src/codes.rs), as module constants.
const {
  Run: EV_RUN,
  Hook: EV_HOOK,
  Abort: EV_ABORT,
  Abandoned: EV_ABANDONED,
  Stopped: EV_STOPPED,
  Done: EV_DONE,
  Finished: EV_FINISHED,
  Replaced: EV_REPLACED,
} = RuntimeEvent
const { Ok: ST_OK, Failed: ST_FAILED, FailedFinal: ST_FINAL, Delivered: ST_DELIVERED } = ExecStatusCode
const { Build: PHASE_BUILD, SnapEnter: PHASE_SNAP_ENTER, Exit: PHASE_EXIT } = PhaseCode
const NO_HOOKS: ClassHooks = { snapEnter: [], enter: [], exit: [], build: [] }
const { Ok: OUT_OK, Failed: OUT_FAILED, Init: OUT_INIT } = OutcomeCode
const { Timeout: ABORT_TIMEOUT } = AbortReasonCode
// Failures berth reports itself, worded once for both container modes (crates/berth-core/src/failure.rs).
const { describeAbandoned, describeAbort, describeOutcome, describeReplaced } = binding()
const MICRO_FLUSHES = 64

export interface Pool {
  id: number
  def: PoolDef
  instances: Map<number, any>
}

interface InputRec {
  id: number
  /** Still in the table: false once answered, cancelled or dropped. */
  pending: boolean
  pool: Pool
  method: number
  args: unknown[]
  fc: number
  /** The trace of its call: the calling input's, one a map started, or none yet (`Ctx.callTrace`). */
  trace: Trace | undefined
  resolve: (v: any) => void
  reject: (e: unknown) => void
  /** The attempt most recently handed to user code; outcomes of older attempts are stale. */
  attempt: number
  outcome: unknown
  outcomeAttempt: number
  outcomeOk: boolean
  ctx: Ctx | undefined
  /** Set for a generator call (remoteGen): where its items go and how far it may run ahead. */
  stream: GenState | undefined
}

/** Where a generator call's items go (call/gen-stream.ts ItemSink). */
export interface GenSink {
  item(value: unknown): void
  end(): void
  fail(error: unknown): void
}

/** A generator call's producer state: the reader's credit, and the pump waiting for it. */
interface GenState extends GenCredit {
  sink: GenSink
}

/**
 * Pending inputs by id. Ids are sequential, so a ring of slots indexed by the id's low bits
 * holds nearly all of them without hashing; an id whose slot is still taken (an input pending
 * for 65536 newer ones) goes to a Map.
 */
class InputTable {
  private static readonly MASK = 0xffff
  private readonly slots: (InputRec | undefined)[] = new Array(InputTable.MASK + 1).fill(undefined)
  private readonly overflow = new Map<number, InputRec>()
  size = 0
  set(id: number, rec: InputRec): void {
    const i = id & InputTable.MASK
    if (this.slots[i] === undefined) this.slots[i] = rec
    else this.overflow.set(id, rec)
    this.size++
  }
  get(id: number): InputRec | undefined {
    const rec = this.slots[id & InputTable.MASK]
    if (rec !== undefined && rec.id === id) return rec
    return this.overflow.size === 0 ? undefined : this.overflow.get(id)
  }
  has(id: number): boolean {
    return this.get(id) !== undefined
  }
  delete(id: number): void {
    const i = id & InputTable.MASK
    const rec = this.slots[i]
    if (rec !== undefined && rec.id === id) {
      rec.pending = false
      this.slots[i] = undefined
      this.size--
      return
    }
    const other = this.overflow.get(id)
    if (other !== undefined) {
      other.pending = false
      this.overflow.delete(id)
      this.size--
    }
  }
  values(): InputRec[] {
    return [...this.slots.filter((r): r is InputRec => r !== undefined), ...this.overflow.values()]
  }
  clear(): void {
    for (const rec of this.values()) rec.pending = false
    this.slots.fill(undefined)
    this.overflow.clear()
    this.size = 0
  }
}

/** Numbers bound for the core, written straight into a typed array (no conversion at flush). */
class PackBuffer {
  private buf = new Float64Array(4096)
  length = 0
  push2(a: number, b: number): void {
    if (this.length + 2 > this.buf.length) this.grow()
    this.buf[this.length++] = a
    this.buf[this.length++] = b
  }
  push3(a: number, b: number, c: number): void {
    if (this.length + 3 > this.buf.length) this.grow()
    this.buf[this.length++] = a
    this.buf[this.length++] = b
    this.buf[this.length++] = c
  }
  push1(a: number): void {
    if (this.length + 1 > this.buf.length) this.grow()
    this.buf[this.length++] = a
  }
  /** The packed numbers, valid until the next push; empties the buffer. */
  take(): Float64Array {
    const out = this.buf.subarray(0, this.length)
    this.length = 0
    return out
  }
  private grow(): void {
    const next = new Float64Array(this.buf.length * 2)
    next.set(this.buf)
    this.buf = next
  }
}

/** The context of one execution (its abort: InputAbort). */
export class Ctx extends InputAbort implements InputContext {
  /** Inputs of this execution not yet aborted (a batch aborts when all of them are). */
  live: number
  constructor(
    private readonly input: number,
    private readonly fc: number,
    live = 1,
    private trace: Trace | undefined = undefined,
  ) {
    super()
    this.live = live
  }
  get inputId(): string {
    return `in-${this.input}`
  }
  get functionCallId(): string {
    return `fc-${this.fc}`
  }
  /** Its call's trace, and its own span id from its input id; a call made outside of any input starts its trace here, when first asked. */
  get traceparent(): string {
    return traceparentOf(this.callTrace(), spanHex(this.input))
  }
  callTrace(): Trace {
    this.trace ??= newTrace()
    return this.trace
  }
  abort(reason: unknown): void {
    this.abortWith(reason)
  }
}

// The input whose code is running synchronously right now (see context.ts).
let curRec: InputRec | undefined
let curCtx: Ctx | undefined
function ctxOf(rec: InputRec): Ctx {
  return (rec.ctx ??= new Ctx(rec.id, rec.fc, 1, rec.trace))
}
setSyncContextSource(() => curCtx ?? (curRec === undefined ? undefined : ctxOf(curRec)))

function runOneIn(
  rt: EmbeddedRuntime,
  exec: number,
  rec: InputRec,
  attempt: number,
  target: (...a: unknown[]) => unknown,
  inst: unknown,
): void {
  rt.runOne(exec, rec, attempt, target, inst)
}

// A shared executor: one closure fewer per call on the hot path.
const captured: { resolve: (v: any) => void; reject: (e: unknown) => void } = { resolve: () => {}, reject: () => {} }
function capture(resolve: (v: any) => void, reject: (e: unknown) => void): void {
  captured.resolve = resolve
  captured.reject = reject
}

let nextFc = 0
export function newFunctionCallId(): number {
  return ++nextFc
}

/** How many numbers the event at `i` spans; 0 for an unknown tag. */
function eventLength(ev: Float64Array, i: number): number {
  switch (ev[i]) {
    case EV_RUN:
      return 6 + 2 * ev[i + 5]
    case EV_HOOK:
    case EV_ABORT:
    case EV_ABANDONED:
    case EV_REPLACED:
      return 4
    case EV_STOPPED:
      return 3
    case EV_DONE:
      return 5
    case EV_FINISHED:
      return 1
    default:
      return 0
  }
}

/**
 * env, secrets and gpu shape a container's process; embedded containers share the host's, so
 * they are not applied there. Said once per function, not silently dropped.
 */
function warnProcessOnly(def: PoolDef): void {
  const o = def.options
  const set = [Object.keys(o.env).length > 0 && 'env', o.secrets.length > 0 && 'secrets', o.gpu.length > 0 && 'gpu'].filter(Boolean)
  if (set.length === 0 || process.env.BERTH_CONTAINER_ID !== undefined) return
  console.warn(
    `berth: ${def.name} sets ${set.join(', ')}, which apply to container processes; embedded containers share this ` +
      `process's environment and devices. Run with containers as processes to apply them: \`npx berth run\` or app.run({ containers: 'process' }).`,
  )
}

export class EmbeddedRuntime {
  private readonly native: BindingRuntime
  private readonly inputs = new InputTable()
  private readonly pools: Pool[] = []
  private readonly poolsByKey = new Map<string, Pool>()
  private readonly initErrors = new Map<number, unknown>()
  private nextInput = 0
  private readonly submits = new PackBuffer()
  private readonly completes = new PackBuffer()
  private readonly cancels = new PackBuffer()
  private flushScheduled = false
  private keepAlive: ReturnType<typeof setInterval> | undefined
  private stopping: Promise<void> | undefined
  private onFinished: (() => void) | undefined
  private finished = false

  constructor() {
    this.native = new (binding().BindingRuntime)(() => this.process(this.native.drain()))
  }

  get running(): boolean {
    return this.stopping === undefined
  }

  pool(def: PoolDef): Pool {
    let pool = this.poolsByKey.get(def.key)
    if (pool) return pool
    // In-process, every container is another copy of the model in this heap: one unless asked.
    const maxContainers = def.options.maxContainers ?? Math.max(1, def.options.minContainers)
    let id: number
    try {
      id = this.native.addPool(bindingSpec(def, maxContainers))
    } catch (e) {
      throw new InvalidError(`${def.name}: ${(e as Error).message}`)
    }
    pool = { id, def, instances: new Map() }
    warnProcessOnly(def)
    this.pools[id] = pool
    this.poolsByKey.set(def.key, pool)
    return pool
  }

  /** One call: queues the input and resolves with its one result. */
  call(pool: Pool, method: number, args: unknown[], fc: number, trace: Trace | undefined): Promise<unknown> {
    const p = new Promise(capture)
    this.submit(pool, method, args, fc, captured.resolve, captured.reject, false, trace)
    return p
  }

  /**
   * Queues one input; `args` must already be checked and copied. Returns its id. `waits`: past
   * maxPendingInputs it waits for room instead of being refused (a map's input). `trace`: the
   * trace its call continues (README "Tracing"); none: one starts when first asked for.
   */
  submit(
    pool: Pool,
    method: number,
    args: unknown[],
    fc: number,
    resolve: (v: any) => void,
    reject: (e: unknown) => void,
    waits = false,
    trace: Trace | undefined = undefined,
  ): number {
    if (this.stopping) {
      reject(new InvalidError(`${pool.def.name}: the app is stopping or stopped; call it inside app.run()`))
      return 0
    }
    const id = ++this.nextInput
    this.inputs.set(id, {
      id,
      pending: true,
      pool,
      method,
      args,
      fc,
      trace,
      resolve,
      reject,
      attempt: 0,
      outcome: undefined,
      outcomeAttempt: 0,
      outcomeOk: false,
      ctx: undefined,
      stream: undefined,
    })
    if (this.inputs.size === 1) this.hold()
    // A waiting input's method goes as -1 - method (crates/berth-node/src/lib.rs, `submit`).
    this.submits.push3(pool.id, waits ? -1 - method : method, id)
    this.scheduleFlush()
    return id
  }

  /**
   * Queues one generator call; `args` must already be checked and copied. Its items go to
   * `sink`, at most `window` ahead of what the reader took (`more`); `close` cancels it.
   */
  submitGen(
    pool: Pool,
    method: number,
    args: unknown[],
    fc: number,
    sink: GenSink,
    window: number,
    trace: Trace | undefined,
  ): { more(n: number): void; close(): void } {
    const id = this.submit(
      pool,
      method,
      args,
      fc,
      () => sink.end(),
      (e) => sink.fail(e),
      false,
      trace,
    )
    const st: GenState = { sink, credit: window, wake: undefined }
    const rec = this.inputs.get(id)
    if (rec !== undefined) rec.stream = st
    return {
      more: (n) => {
        st.credit += n
        wakeGen(st)
      },
      // The core aborts a running generator (its signal, then the pump ends it) or drops a queued one.
      close: () => this.cancel([id]),
    }
  }

  cancel(ids: number[]): void {
    for (const id of ids) if (this.inputs.has(id)) this.cancels.push1(id)
    this.scheduleFlush()
  }

  /** Drains and runs exit hooks; resolves when every container has stopped. */
  stop(): Promise<void> {
    if (!this.stopping) {
      this.stopping = new Promise<void>((resolve) => {
        this.onFinished = resolve
      })
      this.hold()
      this.flush()
      this.process(this.native.shutdown())
    }
    return this.stopping
  }

  /** Stops now: pending inputs fail with InputCancelledError, no exit hooks run. */
  kill(): Promise<void> {
    const p = this.stop()
    if (!this.finished) this.process(this.native.kill())
    return p
  }

  // Keeps Node alive while inputs are pending or a stop is under way, and only then: the
  // doorbell is weak, so an idle runtime never holds the process open.
  private hold(): void {
    this.keepAlive ??= setInterval(() => {}, 1 << 30)
  }
  private release(): void {
    if (this.keepAlive !== undefined && this.inputs.size === 0 && (!this.stopping || this.finished)) {
      clearInterval(this.keepAlive)
      this.keepAlive = undefined
    }
  }

  // Flushes run as microtasks, so a call, its execution and its result can all happen in one
  // turn of the event loop; past MICRO_FLUSHES in one turn the next waits for setImmediate, so
  // a busy runtime still lets I/O and timers run.
  private scheduleFlush(): void {
    if (this.flushScheduled) return
    this.flushScheduled = true
    if (this.microFlushes === 0) setImmediate(this.newTurn)
    if (++this.microFlushes <= MICRO_FLUSHES) queueMicrotask(this.flushBound)
    else setImmediate(this.flushBound)
  }
  private readonly flushBound = () => this.flush()
  private readonly newTurn = () => {
    this.microFlushes = 0
  }
  private microFlushes = 0

  private flush(): void {
    this.flushScheduled = false
    if (this.finished) return
    // Completions first: they free slots the new submissions can use in the same turn.
    // take() hands over a view that the next push may overwrite: each batch is sent before
    // its events are processed (which may queue more).
    if (this.completes.length > 0) this.process(this.native.complete(this.completes.take()))
    if (this.cancels.length > 0) this.process(this.native.cancel(this.cancels.take()))
    if (this.submits.length > 0) this.process(this.native.submit(this.submits.take()))
  }

  /** Handles events from the core, in order: runs, hooks, aborts, results. */
  private process(ev: Float64Array | null): void {
    if (ev === null) return
    const n = ev.length
    let i = 0
    while (i < n) {
      const tag = ev[i]
      const len = eventLength(ev, i)
      if (len === 0) {
        console.error(`berth: internal error: unknown event ${tag} from the core; the rest of this batch is dropped`)
        break
      }
      // One failing event must not stop the loop (it would strand every other input).
      try {
        switch (tag) {
          case EV_RUN:
            this.run(ev[i + 1], ev[i + 2], ev[i + 3], ev[i + 4], ev, i + 6, ev[i + 5])
            break
          case EV_HOOK:
            void this.hook(ev[i + 1], ev[i + 2], ev[i + 3])
            break
          case EV_ABORT:
            this.abort(ev[i + 1], ev[i + 2], ev[i + 3])
            break
          case EV_ABANDONED:
            this.abandoned(ev[i + 1], ev[i + 2], ev[i + 3])
            break
          case EV_STOPPED:
            this.pools[ev[i + 1]]?.instances.delete(ev[i + 2])
            break
          case EV_DONE:
            this.done(ev[i + 1], ev[i + 2], ev[i + 3], ev[i + 4])
            break
          case EV_FINISHED:
            this.finish()
            break
          case EV_REPLACED:
            this.replaced(ev[i + 1], ev[i + 2], ev[i + 3])
            break
        }
      } catch (e) {
        console.error(`berth: internal error while handling an event: ${describe(e)}`)
      }
      i += len
    }
    if (this.completes.length > 0) this.scheduleFlush()
  }

  private instance(pool: Pool, cid: number): any {
    let inst = pool.instances.get(cid)
    if (inst === undefined) {
      const { cls, params } = pool.def
      if (cls) {
        inst = new cls()
        if (params) applyParams(inst, params)
      } else {
        inst = null
      }
      pool.instances.set(cid, inst)
    }
    return inst
  }

  private run(exec: number, poolId: number, cid: number, method: number, ev: Float64Array, at: number, k: number): void {
    const pool = this.pools[poolId]
    const m = pool.def.methods[method]
    let inst: any
    try {
      inst = this.instance(pool, cid)
    } catch (e) {
      // A constructor that throws fails this attempt of each input, with the constructor's error.
      const err = inputError(e)
      for (let j = 0; j < k; j++) {
        const rec = this.inputs.get(ev[at + 2 * j])
        if (rec === undefined) continue
        rec.attempt = ev[at + 2 * j + 1]
        this.record(rec.id, rec.attempt, false, err)
      }
      this.completes.push2(exec, ST_FAILED)
      return
    }
    const target: (...a: unknown[]) => unknown = pool.def.fn ?? inst[m.name]
    if (m.batched === undefined) {
      const rec = this.inputs.get(ev[at])
      if (rec === undefined) {
        this.completes.push2(exec, ST_FINAL)
        return
      }
      const attempt = ev[at + 1]
      rec.attempt = attempt
      rec.ctx = undefined
      if (asyncContextEnabled()) {
        runInContext(ctxOf(rec), runOneIn, this, exec, rec, attempt, target, inst)
      } else {
        curRec = rec
        try {
          this.runOne(exec, rec, attempt, target, inst)
        } finally {
          curRec = undefined
        }
      }
      return
    }
    // A batch: one array per argument, one result per input.
    const ids: number[] = new Array(k)
    const attempts: number[] = new Array(k)
    const recs: (InputRec | undefined)[] = new Array(k)
    const counts: number[] = []
    for (let j = 0; j < k; j++) {
      ids[j] = ev[at + 2 * j]
      attempts[j] = ev[at + 2 * j + 1]
      const rec = this.inputs.get(ids[j])
      recs[j] = rec
      if (rec) counts.push(rec.args.length)
    }
    const mixed = batchArityError(pool.def.fn ? pool.def.name : `${pool.def.name}.${m.name}`, counts)
    if (mixed !== undefined) {
      // Not user code failing: the batch cannot run as sent, so no attempt would do better.
      for (let j = 0; j < k; j++) {
        const rec = recs[j]
        if (rec === undefined) continue
        rec.attempt = attempts[j]
        this.record(ids[j], attempts[j], false, mixed)
      }
      this.completes.push2(exec, ST_FINAL)
      return
    }
    const arity = counts.length === 0 ? 0 : counts[0]
    const columns: unknown[][] = Array.from({ length: arity }, () => new Array(k))
    const first = recs.find((r) => r !== undefined)
    const ctx = new Ctx(ids[0], first?.fc ?? 0, k, first?.trace)
    for (let j = 0; j < k; j++) {
      const rec = recs[j]
      if (rec) {
        rec.attempt = attempts[j]
        rec.ctx = ctx
      }
      for (let a = 0; a < arity; a++) columns[a][j] = rec?.args[a]
    }
    const runBatch = async () => {
      let ok = true
      let value: unknown
      try {
        value = await target.apply(inst, columns)
      } catch (e) {
        ok = false
        value = e
      }
      this.settleBatch(exec, pool, m.name, ids, attempts, ok, value)
    }
    if (asyncContextEnabled()) {
      runInContext(ctx, runBatch)
    } else {
      curCtx = ctx
      try {
        void runBatch()
      } finally {
        curCtx = undefined
      }
    }
  }

  // The user's promise settles straight into settleOne: no extra async frame per input.
  /** @internal */
  runOne(exec: number, rec: InputRec, attempt: number, target: (...a: unknown[]) => unknown, inst: unknown): void {
    if (rec.stream !== undefined) {
      void this.runGen(exec, rec, attempt, target, inst, rec.stream)
      return
    }
    let ret: unknown
    try {
      ret = target.apply(inst, rec.args)
    } catch (e) {
      queueMicrotask(() => this.settleOne(exec, rec, attempt, false, e))
      return
    }
    if (ret instanceof Promise) {
      ret.then(
        (v) => this.settleOne(exec, rec, attempt, true, v),
        (e) => this.settleOne(exec, rec, attempt, false, e),
      )
    } else if (ret !== null && typeof ret === 'object' && typeof (ret as any).then === 'function') {
      Promise.resolve(ret).then(
        (v) => this.settleOne(exec, rec, attempt, true, v),
        (e) => this.settleOne(exec, rec, attempt, false, e),
      )
    } else {
      queueMicrotask(() => this.settleOne(exec, rec, attempt, true, ret))
    }
  }

  /**
   * Runs a generator, pulling one item at a time while the reader has credit: a slow reader
   * pauses it at its `yield`. An abort (timeout, cancel, a reader that left) or the end of the
   * input stops the pulling and calls the generator's return(), so its finally blocks run.
   * A failure before the first item may be retried; after one, the reader has seen part of the
   * stream and a new attempt would repeat it, so the failure is final.
   */
  private async runGen(
    exec: number,
    rec: InputRec,
    attempt: number,
    target: (...a: unknown[]) => unknown,
    inst: unknown,
    st: GenState,
  ): Promise<void> {
    const live = () => rec.pending && rec.attempt === attempt && rec.ctx?.aborted !== true
    let it: AsyncIterator<unknown> | Iterator<unknown> | undefined
    let sent = 0
    let open = false
    let status = ST_OK
    try {
      it = target.apply(inst, rec.args) as AsyncIterator<unknown>
      open = true
      for (;;) {
        while (st.credit <= 0 && live()) await new Promise<void>((r) => (st.wake = r))
        if (!live()) break
        const r = await it.next()
        if (r.done) {
          open = false
          if (live()) status = ST_DELIVERED
          break
        }
        if (!live()) break
        let value = r.value
        const t = typeof value
        if (t === 'object' ? value !== null : t === 'function' || t === 'symbol') {
          value = checkAndCopy(value, `item ${sent} of ${this.label(rec)}`)
        }
        st.credit--
        sent++
        st.sink.item(value)
      }
    } catch (e) {
      // From it.next(), the generator has ended; from checkAndCopy, it waits at its yield.
      if (e instanceof SerializationError) {
        status = ST_FINAL
        this.record(rec.id, attempt, false, e)
      } else {
        open = false
        status = sent === 0 ? ST_FAILED : ST_FINAL
        this.record(rec.id, attempt, false, inputError(e))
      }
    }
    if (open) {
      try {
        await it!.return?.(undefined)
      } catch (e) {
        console.error(`berth: ${this.label(rec)}: the generator's return() threw: ${describe(e)}`)
      }
    }
    if (status === ST_DELIVERED) {
      this.inputs.delete(rec.id)
      rec.resolve(undefined)
      if (this.inputs.size === 0) this.release()
    }
    this.completes.push2(exec, status)
    this.scheduleFlush()
  }

  private record(id: number, attempt: number, ok: boolean, value: unknown): void {
    const rec = this.inputs.get(id)
    if (rec === undefined || rec.attempt !== attempt) return
    rec.outcome = value
    rec.outcomeOk = ok
    rec.outcomeAttempt = attempt
  }

  // A success that JavaScript holds before it has seen any abort of that attempt is delivered at
  // once: the core would only confirm it, and the caller's input stops occupying memory a whole
  // round trip earlier. The core still learns of it (the slot), and decides everything else:
  // failures (retry or not), timeouts, cancellations. A late success of an attempt that timed
  // out, or of an input already answered, changes nothing (`rec.attempt` / the record is gone).
  private settleOne(exec: number, rec: InputRec, attempt: number, ok: boolean, value: unknown): void {
    const id = rec.id
    let status = ST_OK
    if (!ok) {
      status = ST_FAILED
      this.record(id, attempt, false, inputError(value))
    } else if (rec.pending && rec.attempt === attempt) {
      const t = typeof value
      if (t === 'object' ? value !== null : t === 'function' || t === 'symbol') {
        try {
          value = checkAndCopy(value, `the result of ${this.label(rec)}`)
        } catch (e) {
          // A web endpoint's Response reaches a .remote() caller as a Response, as it does from
          // a container process (src/shared/cbor.ts WireResponse); checked only here, off the
          // path of values that copy.
          if (!(value instanceof Response && rec.pool.def.methods[rec.method].web)) {
            status = ST_FINAL
            this.record(id, attempt, false, e)
          }
        }
      }
      if (status === ST_OK && (rec.ctx === undefined || !rec.ctx.aborted)) {
        status = ST_DELIVERED
        this.inputs.delete(id)
        rec.resolve(value)
        if (this.inputs.size === 0) this.release()
      }
    }
    this.completes.push2(exec, status)
    this.scheduleFlush()
  }

  private settleBatch(exec: number, pool: Pool, name: string, ids: number[], attempts: number[], ok: boolean, value: unknown): void {
    const k = ids.length
    const label = pool.def.fn ? pool.def.name : `${pool.def.name}.${name}`
    let status = ST_OK
    if (!ok) {
      status = ST_FAILED
      const err = inputError(value)
      for (let j = 0; j < k; j++) this.record(ids[j], attempts[j], false, err)
    } else if (!Array.isArray(value) || value.length !== k) {
      status = ST_FAILED
      const err = batchResultError(label, k, value)
      for (let j = 0; j < k; j++) this.record(ids[j], attempts[j], false, err)
    } else {
      // As in settleOne: results JavaScript holds before any abort are delivered at once, each
      // input's own (a result that cannot cross fails that input alone, finally).
      status = ST_DELIVERED
      for (let j = 0; j < k; j++) {
        const rec = this.inputs.get(ids[j])
        if (rec === undefined || rec.attempt !== attempts[j]) continue
        if (rec.ctx?.aborted) {
          status = ST_OK
          this.record(ids[j], attempts[j], true, value[j])
          continue
        }
        this.inputs.delete(ids[j])
        try {
          rec.resolve(checkAndCopy(value[j], `result ${j} of ${label}`))
        } catch (e) {
          rec.reject(e)
        }
      }
      if (this.inputs.size === 0) this.release()
    }
    this.completes.push2(exec, status)
    this.scheduleFlush()
  }

  private abort(id: number, attempt: number, reason: number): void {
    const rec = this.inputs.get(id)
    if (rec === undefined || rec.attempt !== attempt) return
    const ctx = ctxOf(rec)
    // A batch's signal aborts once all its inputs are cancelled or rescheduled; a timeout ends
    // the whole execution at once.
    if (reason !== ABORT_TIMEOUT && --ctx.live > 0) return
    ctx.abort(errorFromData(describeAbort(this.label(rec), reason, attempt, rec.pool.def.options.timeoutMs)))
    wakeGen(rec.stream)
  }

  private label(rec: InputRec): string {
    const d = rec.pool.def
    return d.fn ? d.name : `${d.name}.${d.methods[rec.method].name}`
  }

  private done(id: number, attempt: number, code: number, aux: number): void {
    const rec = this.inputs.get(id)
    if (rec === undefined) return
    this.inputs.delete(id)
    wakeGen(rec.stream)
    const name = this.label(rec)
    switch (code) {
      case OUT_OK:
      case OUT_FAILED:
        if (rec.outcomeAttempt === attempt) {
          if (rec.outcomeOk) rec.resolve(rec.outcome)
          else rec.reject(rec.outcome)
        } else {
          rec.reject(errorFromData(describeOutcome(name, code, attempt, 0)))
        }
        break
      case OUT_INIT: {
        const cause = this.initErrors.get(aux)
        rec.reject(cause === undefined ? errorFromData(describeOutcome(rec.pool.def.name, code, attempt, 0)) : initError(cause))
        break
      }
      default:
        rec.reject(errorFromData(describeOutcome(name, code, attempt, rec.pool.def.options.timeoutMs, aux)))
    }
    if (this.inputs.size === 0) this.release()
  }

  private async hook(poolId: number, cid: number, phase: number): Promise<void> {
    const pool = this.pools[poolId]
    // A function has a phase only to mount its volumes.
    const meta = pool.def.meta ?? NO_HOOKS
    let ok = true
    try {
      if (phase !== PHASE_EXIT) mountVolumes(pool.def.name, pool.def.options.volumes)
      const inst = this.instance(pool, cid)
      if (phase === PHASE_BUILD) {
        await runAsHook(() => runBuildHooks(pool.def.cls!, meta, inst))
      } else if (phase === PHASE_EXIT) {
        await runExitHooks(pool.def.name, meta.exit, (name) => runAsHook(() => inst[name]()))
      } else {
        const names = phase === PHASE_SNAP_ENTER ? meta.snapEnter : meta.enter
        for (const name of names) await runAsHook(() => inst[name]())
      }
    } catch (e) {
      ok = false
      this.initErrors.set(cid, e)
    }
    if (!this.finished) this.process(this.native.hookDone(cid, phase, ok))
  }

  private abandoned(poolId: number, cid: number, phase: number): void {
    const { def } = this.pools[poolId]
    const bound = phase === PHASE_EXIT ? def.options.exitGracePeriodMs : def.options.startupTimeoutMs
    const f = describeAbandoned(def.name, cid, phase, bound)
    console.error(`berth: ${f.message}`)
    if (phase !== PHASE_EXIT && !this.initErrors.has(cid)) this.initErrors.set(cid, errorFromData(f))
  }

  // Code cannot be stopped in-process: its instance is dropped (no @exit: like a process that
  // is ended) and a new one serves, while the old code runs on unanswered until it settles.
  private replaced(poolId: number, cid: number, input: number): void {
    console.error(describeReplaced(this.pools[poolId]?.def.name ?? 'a function', cid, input))
  }

  private finish(): void {
    this.finished = true
    const recs = this.inputs.values()
    this.inputs.clear()
    for (const rec of recs) {
      rec.reject(new InputCancelledError(`${this.label(rec)}: the app stopped`))
      wakeGen(rec.stream)
    }
    this.release()
    this.onFinished?.()
  }
}
