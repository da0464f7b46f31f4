// The README's ten-line example: npx tsx examples/readme.ts
import { App, Cls, batched, enter, method } from 'berth'

const app = new App('embeddings')

@app.cls()
class Embedder {
  vocab = new Map<string, number>()
  @enter() load() { this.vocab.set('hello', 1) }      // once per container: load the model
  @method() async embed(text: string) { return [this.vocab.get(text) ?? 0] }
  @batched({ maxBatchSize: 64, waitMs: 5 })           // callers send one text each
  async embedMany(texts: string[]) { return texts.map((t) => [t.length]) }
}

await app.run(async () => console.log(await Cls.of(Embedder).embedMany.remote('hello')))
