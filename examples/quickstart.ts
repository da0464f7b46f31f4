// npx berth run examples/quickstart.ts
import { App, Cls, batched, concurrent, enter, exit, method, parameter } from 'berth'

export const app = new App('quickstart')

export const square = app.function({ timeout: 60, retries: 2 }, async function square(x: number) {
  return x * x
})

@app.cls({ scaledownWindow: 60 })
@concurrent({ maxInputs: 32 })
export class Embedder {
  @parameter() model = 'mini'
  private vocab = new Map<string, number>()

  @enter() async load() {
    // Runs once per container, before the first input: load the model here.
    for (const w of ['hello', 'one', 'item']) this.vocab.set(w, this.vocab.size + 1)
    console.log(`[${this.model}] model loaded`)
  }

  @method() async embed(text: string): Promise<number[]> {
    return [text.length, this.vocab.get(text) ?? 0]
  }

  // Callers pass ONE text; the core groups concurrent calls into one batch.
  @batched({ maxBatchSize: 64, waitMs: 5 })
  async embedMany(texts: string[]): Promise<number[][]> {
    console.log(`[${this.model}] batch of ${texts.length}`)
    return texts.map((t) => [t.length, this.vocab.get(t) ?? 0])
  }

  @exit() async close() {
    console.log(`[${this.model}] container stopped`)
  }
}

app.localEntrypoint(async () => {
  console.log('square(4) =', await square.remote(4))
  const e = Cls.of(Embedder, { model: 'mini' })
  console.log('embed =', await e.embed.remote('hello'))
  const words = ['one', 'item', 'hello', 'berth']
  console.log('embedMany =', await Promise.all(words.map((w) => e.embedMany.remote(w))))
  const squares: number[] = []
  for await (const y of square.map([1, 2, 3, 4, 5])) squares.push(y)
  console.log('square.map =', squares)
})
