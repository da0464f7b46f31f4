// Calls from inside a container (README "API"): a function or method calling another function or
// method of its own app through its handle (`double.remote(x)`, `Cls.of(Batcher).many.remote(x)`)
// makes an input of its own at the control plane the container attached to, as a caller outside
// would; so a web endpoint can feed a @batched method of its class, one request per input. Against
// `berth serve` (container processes), with and without --token, and embedded (app.run).
import test from 'ava'

import { serve, stopsCleanly } from './_served.ts'

const post = (url: string, body: unknown) => fetch(url, { method: 'POST', body: JSON.stringify(body), headers: { 'content-type': 'application/json' } })

for (const extra of [[], ['--token', 'inner-token']]) {
  test.serial(`berth serve${extra.length > 0 ? ` ${extra.join(' ')}` : ''}: a web endpoint feeds its class's @batched method through Cls.of; a function calls another; a generator too`, async (t) => {
    const s = await serve(extra, { BERTH_TOKEN: '' }, 'inner-calls.ts')
    t.teardown(() => s.child.kill('SIGKILL'))
    const replies = await Promise.all(Array.from({ length: 32 }, (_, x) => post(`http://${s.http}/inner/one`, { x })))
    const bodies = (await Promise.all(replies.map((r) => r.json()))) as { value: number; batch: number }[]
    t.deepEqual(bodies.map((b) => b.value), Array.from({ length: 32 }, (_, x) => 10 * x), JSON.stringify(bodies[0]))
    t.true(Math.max(...bodies.map((b) => b.batch)) > 1, `batches of ${bodies.map((b) => b.batch)}`)

    const auth: Record<string, string> = extra.length > 0 ? { authorization: 'Bearer inner-token' } : {}
    const q = await fetch(`http://${s.http}/inner/quadruple`, { method: 'POST', body: '[5]', headers: auth })
    const quad = (await q.json()) as { value: number; pid: number; doublePid: number }
    t.is(quad.value, 20, JSON.stringify(quad))
    t.not(quad.pid, quad.doublePid, 'double ran in a container of its own')

    const g = await fetch(`http://${s.http}/inner/Batcher/each`, { method: 'POST', body: '[3]', headers: auth })
    t.deepEqual((await g.text()).trim().split('\n').map((l) => JSON.parse(l).value), [0, 10, 20])
    await stopsCleanly(t, s)
  })
}

test.serial('embedded (app.run): the same calls stay in this process', async (t) => {
  const { app, quadruple, Batcher } = await import('./fixtures/inner-calls.ts')
  const { Cls } = await import('berth')
  await app.run(async () => {
    const bodies = await Promise.all(Array.from({ length: 8 }, (_, x) => Cls.of(Batcher).one.remote({ x })))
    t.deepEqual(bodies.map((b) => b.value), Array.from({ length: 8 }, (_, x) => 10 * x))
    t.true(Math.max(...bodies.map((b) => b.batch)) > 1)
    t.like(await quadruple.remote(5), { value: 20, pid: process.pid, doublePid: process.pid })
  })
})
