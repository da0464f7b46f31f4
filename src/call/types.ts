// Type-level shapes of call handles. Runtime objects implementing them live in handles.ts.

export interface FunctionCall<R> {
  readonly objectId: string
  /** Waits for the result; `timeout` in seconds (rejects with FunctionTimeoutError when it passes). */
  get(opts?: { timeout?: number }): Promise<R>
  cancel(): Promise<void>
}

export interface MapOptions {
  /** Yield results in input order (default true); false yields them as they finish. */
  orderOutputs?: boolean
  /** Yield a failed input's error as a value instead of throwing (default false). */
  returnExceptions?: boolean
}

export interface ForEachOptions {
  /** Keep going when an input fails instead of rejecting (default false). */
  ignoreExceptions?: boolean
}

export type AnyIterable<T> = Iterable<T> | AsyncIterable<T>

/**
 * One iterable per parameter, consumed in lockstep like Modal's `map(xs, ys)`:
 * for `f(x: number)` it is `[Iterable<number>]`, so `f.map([1, 2, 3])` works.
 */
export type ParallelIterables<A extends unknown[]> = { [K in keyof A]: AnyIterable<A[K]> }

/**
 * The ways to call a function or method.
 *
 * `map`/`forEach` take one iterable per parameter, optionally followed by an options object.
 * At runtime the trailing argument is options when it is a non-null object that is neither
 * iterable nor async-iterable (it has no Symbol.iterator / Symbol.asyncIterator).
 */
export interface Invocable<A extends unknown[], R> {
  remote(...args: A): Promise<R>
  /**
   * Runs the code in this process (a class's enter hooks first, once). It is no input of its
   * own: in it currentInputId() and currentFunctionCallId() are undefined and currentInput()
   * throws, as Modal's `current_input_id()` is None in `.local()`; called from an input, the
   * code sees that input. isLocal() is true in it.
   */
  local(...args: A): Promise<R>
  spawn(...args: A): Promise<FunctionCall<R>>
  map(...inputs: ParallelIterables<A>): AsyncIterable<R>
  map(...inputs: [...ParallelIterables<A>, MapOptions & { returnExceptions?: false }]): AsyncIterable<R>
  map(...inputs: [...ParallelIterables<A>, MapOptions & { returnExceptions: true }]): AsyncIterable<R | Error>
  map(...inputs: [...ParallelIterables<A>, MapOptions]): AsyncIterable<R | Error>
  starmap(argTuples: AnyIterable<A>, opts?: MapOptions & { returnExceptions?: false }): AsyncIterable<R>
  starmap(argTuples: AnyIterable<A>, opts: MapOptions & { returnExceptions: true }): AsyncIterable<R | Error>
  starmap(argTuples: AnyIterable<A>, opts?: MapOptions): AsyncIterable<R | Error>
  forEach(...inputs: ParallelIterables<A> | [...ParallelIterables<A>, ForEachOptions]): Promise<void>
}

/**
 * The handle of an `async function*` function or `async *` method: `remoteGen` streams its
 * items (Modal's `remote_gen`); `.remote()`, `.spawn()` and `.map()` throw InvalidError, as a
 * stream has no single result. `.local()` runs it here and resolves to the generator itself.
 */
export interface GeneratorInvocable<A extends unknown[], Y, G = AsyncGenerator<Y>> {
  /** The items in order, read with for await; leaving the loop early cancels the call. */
  remoteGen(...args: A): AsyncIterable<Y>
  local(...args: A): Promise<G>
}

/** The item type of a generator, or never. */
type Yielded<R> = R extends AsyncGenerator<infer Y, any, any> ? Y : R extends Generator<infer Y, any, any> ? Y : never

export type FunctionHandle<F extends (...a: any[]) => any> =
  IsAny<ReturnType<F>> extends true
    ? Invocable<Parameters<F>, any>
    : [Yielded<ReturnType<F>>] extends [never]
      ? Invocable<Parameters<F>, Awaited<ReturnType<F>>>
      : GeneratorInvocable<Parameters<F>, Yielded<ReturnType<F>>, ReturnType<F>>

/**
 * What `Function.fromName<T>` returns: `T` is the function's type, or the type of its handle
 * (`typeof square`, where `square = app.function(...)`), as README "API" writes it.
 */
export type RemoteFunctionHandle<T> =
  T extends GeneratorInvocable<infer A, infer Y, infer G>
    ? GeneratorInvocable<A, Y, G>
    : T extends Invocable<infer A, infer R>
      ? Invocable<A, R>
      : T extends (...a: any[]) => any
        ? FunctionHandle<T>
        : never

type IsAny<T> = 0 extends 1 & T ? true : false

/** Element types of a tuple of arrays: `[string[], number[]]` → `[string, number]`. */
export type BatchItem<A extends readonly unknown[]> = { -readonly [K in keyof A]: A[K] extends readonly (infer E)[] ? E : never }

/**
 * The handle of one class member. Types cannot see decorators, so a member shaped like a batched
 * method (every parameter an array, returning an array, at least one parameter) gets the one-item
 * form of `@batched` as its primary signatures, `embedMany(texts: string[]): Promise<number[][]>`
 * is called as `embedMany.remote('text'): Promise<number[]>`, and the whole-array form as a second
 * overload for a plain `@method()` that happens to take and return arrays.
 */
export type MethodHandle<F> = F extends (...a: infer A) => infer R
  ? IsAny<R> extends false
    ? [Yielded<R>] extends [never]
      ? PlainMethodHandle<A, R>
      : GeneratorInvocable<A, Yielded<R>, R>
    : PlainMethodHandle<A, R>
  : never

type PlainMethodHandle<A extends unknown[], R> =
  IsAny<A[number]> extends true
    ? Invocable<A, Awaited<R>>
    : A extends [readonly unknown[], ...(readonly unknown[])[]]
      ? Awaited<R> extends readonly (infer E)[]
        ? Invocable<BatchItem<A>, E> & Invocable<A, Awaited<R>>
        : Invocable<A, Awaited<R>>
      : Invocable<A, Awaited<R>>

/**
 * `Cls.of(C, params)`, `Cls.fromName<C>(app, name, params)`: the fields of `C` whose type a
 * `@parameter()` may have (string, integer, boolean, Uint8Array), each optional (a default may
 * stand in; a required one is checked when the handle is made). Types cannot see decorators: a
 * field of such a type without `@parameter()` type-checks here and fails with InvalidError.
 */
export type ClsParams<T> = unknown extends T
  ? Record<string, unknown>
  : {
      [K in keyof T as K extends string
        ? T[K] extends string | number | boolean | Uint8Array | undefined
          ? K
          : never
        : never]?: T[K] extends Uint8Array ? Uint8Array : T[K]
    }

/**
 * `Cls.of(C)`: one MethodHandle per method of the instance type. Types cannot see decorators, so
 * lifecycle hooks and undecorated methods are here too; reaching one throws InvalidError, which
 * says what the member is and which members can be called.
 */
export type ClsHandle<T> = {
  [K in keyof T as T[K] extends (...a: any[]) => any ? K : never]: MethodHandle<T[K]>
}
