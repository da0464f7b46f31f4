// Compile-time checks (`tsc --noEmit`): each @ts-expect-error line must be a type error, so a
// wrongly typed call or decorator use would fail the typecheck. Never executed.
import { batched, build, concurrent, enter, exit, method, parameter } from '../src/define/decorators.ts'
import type { ClsHandle, FunctionCall, FunctionHandle, MethodHandle } from '../src/call/types.ts'

@concurrent({ maxInputs: 32, targetInputs: 16 })
class Embedder {
  @parameter() model = 'mini'
  @parameter() size = 3
  @parameter() fast = true
  @parameter() blob = new Uint8Array()
  @parameter() required!: string
  @build() async download(): Promise<void> {}
  @build() @enter() warm(): void {}
  @enter({ snap: true }) async snap(): Promise<void> {}
  @enter() async load(): Promise<void> {}
  @method() async embed(text: string): Promise<number[]> {
    return [text.length]
  }
  @method() add(a: number, b: number): number {
    return a + b
  }
  @batched({ maxBatchSize: 64, waitMs: 5 })
  async embedMany(texts: string[]): Promise<number[][]> {
    return texts.map((t) => [t.length])
  }
  @batched({ maxBatchSize: 8, waitMs: 0 })
  pairs(xs: number[], ys: string[]): boolean[] {
    return xs.map((x, i) => String(x) === ys[i])
  }
  @exit() close(): void {}
}

class Misused {
  // @ts-expect-error batched needs array parameters
  @batched({ maxBatchSize: 4, waitMs: 1 }) one(x: string): string[] {
    return [x]
  }
  // @ts-expect-error batched must return an array
  @batched({ maxBatchSize: 4, waitMs: 1 }) notArray(xs: string[]): string {
    return xs.join()
  }
  // @ts-expect-error a parameter must be string | number | boolean | Uint8Array
  @parameter() opts = { a: 1 }
  // @ts-expect-error lifecycle hooks take no arguments
  @enter() hook(x: number): void {}
  // @ts-expect-error @method without parentheses
  @method async noParens(): Promise<void> {}
}
void Misused

declare const e: ClsHandle<Embedder>
declare function expectType<T>(v: T): void

async function calls(): Promise<void> {
  expectType<Promise<number[]>>(e.embed.remote('hello'))
  // @ts-expect-error wrong argument type
  void e.embed.remote(42)
  // @ts-expect-error missing argument
  void e.embed.remote()
  expectType<Promise<number>>(e.add.local(1, 2))
  // @ts-expect-error wrong second argument type
  void e.add.remote(1, '2')

  // @batched: one item in, one result out.
  expectType<Promise<number[]>>(e.embedMany.remote('one item'))
  const n: number[] = await e.embedMany.remote('one item')
  void n
  // @ts-expect-error wrong item type
  void e.embedMany.remote(42)
  expectType<Promise<boolean>>(e.pairs.remote(1, 'a'))
  // @ts-expect-error items of the second argument are strings
  void e.pairs.remote(1, 2)

  const call: FunctionCall<number[]> = await e.embed.spawn('x')
  expectType<Promise<number[]>>(call.get({ timeout: 1 }))

  for await (const r of e.embed.map(['a', 'b'])) expectType<number[]>(r)
  for await (const r of e.embed.map(['a'], { orderOutputs: false })) expectType<number[]>(r)
  for await (const r of e.embed.map(['a'], { returnExceptions: true })) expectType<number[] | Error>(r)
  // @ts-expect-error map over numbers for a string parameter
  e.embed.map([1, 2])
  for await (const r of e.add.map([1, 2], [3, 4])) expectType<number>(r)
  for await (const r of e.add.starmap([[1, 2], [3, 4]])) expectType<number>(r)
  // @ts-expect-error starmap tuples must match the parameters
  e.add.starmap([[1, 'x']])
  for await (const r of e.embedMany.map(['a', 'b'])) expectType<number[]>(r)
  await e.embed.forEach(['a', 'b'], { ignoreExceptions: true })
  async function* gen(): AsyncGenerator<string> {
    yield 'a'
  }
  for await (const r of e.embed.map(gen())) expectType<number[]>(r)

  // Lifecycle hooks and parameters are not callable as inputs via their own handle types.
  // @ts-expect-error fields are not methods
  void e.model
}
void calls

declare const square: FunctionHandle<(x: number) => Promise<number>>
async function fnCalls(): Promise<void> {
  expectType<Promise<number>>(square.remote(4))
  // @ts-expect-error wrong argument type
  void square.remote('4')
  for await (const r of square.map([1, 2, 3])) expectType<number>(r)
}
void fnCalls

type AnyHandle = MethodHandle<(...a: any[]) => any>
declare const anyHandle: AnyHandle
void anyHandle.remote(1, 'x', {})

// Function.fromName<T>: T is the function's type or its handle's (`typeof square`, README "API").
import { Function as BerthFunction } from '../src/call/from-name.ts'
async function fromNameCalls(): Promise<void> {
  const byHandle = BerthFunction.fromName<typeof square>('embeddings', 'square')
  expectType<Promise<number>>(byHandle.remote(3))
  // @ts-expect-error wrong argument type through a handle type
  void byHandle.remote('3')
  const byFn = BerthFunction.fromName<(x: number, y: string) => Promise<boolean>>('a', 'f')
  expectType<Promise<boolean>>(byFn.remote(1, 'y'))
  // @ts-expect-error missing argument through a function type
  void byFn.remote(1)
}
void fromNameCalls

// Cls.of / Cls.fromName<T> parameters: the class's fields of a @parameter() type, each optional.
import { Cls } from '../src/define/handles.ts'
function clsParams(): void {
  Cls.of(Embedder)
  Cls.of(Embedder, { model: 'big', size: 4, fast: false, blob: new Uint8Array([1]), required: 'x' })
  Cls.of(Embedder, { blob: Buffer.from([1]) })
  // @ts-expect-error a misspelt parameter
  Cls.of(Embedder, { modle: 'big' })
  // @ts-expect-error a parameter of the wrong type
  Cls.of(Embedder, { size: '4' })
  // @ts-expect-error a method is no parameter
  Cls.of(Embedder, { embed: 'x' })
  Cls.fromName<Embedder>('app', 'Embedder', { model: 'big' })
  // @ts-expect-error a misspelt parameter through Cls.fromName<T>
  Cls.fromName<Embedder>('app', 'Embedder', { modle: 'big' })
  // Without a type, any names (the server checks them).
  Cls.fromName('app', 'Embedder', { modle: 'big' })
}
void clsParams

// Generators: `remoteGen` yields the item type; `.remote()` is no call of theirs.
class Streams {
  @method() async *tokens(prompt: string): AsyncGenerator<string> {
    yield prompt
  }
  @method() async *numbers(n: number) {
    for (let i = 0; i < n; i++) yield i
  }
}
declare const streams: ClsHandle<Streams>
declare const letters: FunctionHandle<(word: string) => AsyncGenerator<string>>
async function genCalls(): Promise<void> {
  for await (const t of streams.tokens.remoteGen('hi')) expectType<string>(t)
  for await (const n of streams.numbers.remoteGen(3)) expectType<number>(n)
  // @ts-expect-error wrong argument type
  streams.numbers.remoteGen('3')
  // @ts-expect-error a generator has no single result
  void streams.tokens.remote('hi')
  for await (const c of letters.remoteGen('abc')) expectType<string>(c)
  // @ts-expect-error a generator has no single result
  void letters.remote('abc')
  // @ts-expect-error a plain function has no remoteGen
  square.remoteGen(1)
  const byHandle = BerthFunction.fromName<typeof letters>('a', 'letters')
  for await (const c of byHandle.remoteGen('abc')) expectType<string>(c)
  const byFn = BerthFunction.fromName<(n: number) => AsyncGenerator<number>>('a', 'numbers')
  for await (const n of byFn.remoteGen(1)) expectType<number>(n)
}
void genCalls
