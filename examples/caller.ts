// Calls a served app from another process:
//   npx berth serve examples/embeddings.ts &
//   npx tsx examples/caller.ts        # finds it at http://127.0.0.1:7450 (else set BERTH_SERVER)
import { Cls, Function } from 'berth'
import type { Embedder, square } from './embeddings.ts'

const sq = Function.fromName<typeof square>('embeddings', 'square')
console.log(await sq.remote(3))
const e = Cls.fromName<Embedder>('embeddings', 'Embedder', { model: 'mini' })
console.log(await e.embed.remote('hello'))
for await (const y of sq.map([1, 2, 3])) console.log(y)
