// The app README "CLI" runs, and examples/caller.ts calls:
//   npx berth run examples/embeddings.ts                   # the local entrypoint; containers are child processes
//   npx berth run examples/embeddings.ts::square -- --x 3
//   npx berth serve examples/embeddings.ts                 # gRPC on 127.0.0.1:7450, HTTP on :7451
//   npx tsx examples/caller.ts                             # finds the server at its default address
//   npx berth build examples/embeddings.ts                 # runs @build hooks, caches them
import { App, Cls, batched, build, concurrent, enter, exit, method, parameter } from 'berth'

export const app = new App('embeddings', { tags: { team: 'ml' } })

export const square = app.function({ timeout: 60, retries: 2 }, async function square(x: number) {
  return x * x
})

@app.cls({ minContainers: 1, scaledownWindow: 60 })
@concurrent({ maxInputs: 32, targetInputs: 16 })
export class Embedder {
  @parameter() model = 'mini'
  private dims = 0

  @build() async download() {
    // Runs at build time (`berth build`), once per class source: fetch weights to disk here.
    console.log(`[build] would download ${this.model}`)
  }

  @enter() async load() {
    this.dims = this.model === 'mini' ? 2 : 4
    console.log(`[${this.model}] loaded in process ${process.pid}`)
  }

  @method() async embed(text: string): Promise<number[]> {
    return Array.from({ length: this.dims }, (_, i) => text.length + i)
  }

  @batched({ maxBatchSize: 64, waitMs: 5 })
  async embedMany(texts: string[]): Promise<number[][]> {
    return texts.map((t) => [t.length])
  }

  @exit() async close() {
    console.log(`[${this.model}] closed in process ${process.pid}`)
  }
}

app.localEntrypoint(async (argv: string[]) => {
  console.log(await square.remote(4))
  const e = Cls.of(Embedder, { model: argv[0] ?? 'mini' })
  console.log(await e.embed.remote('hello'), await e.embedMany.remote('one item'))
})
