// The process that runs its own control plane (app.run with process containers, `berth run`)
// calls it directly, not over a loopback gRPC connection to itself: no Functions request
// reaches the gRPC listener, and every call and refusal reads as it does over gRPC.
import test from 'ava'
import { join } from 'node:path'

import { runInMode } from './_modes.ts'
import { root } from './_served.ts'

const fixture = join(root, '__test__/fixtures/in-process.ts')

test('remote, map, spawn, parameters, cancel and FunctionCall.fromId(id).cancel() go in process; refusals read as over gRPC', async (t) => {
  const r = await runInMode(fixture, 'calls', 'process')
  t.is(r.code, 0, r.out)
  const got = r.result
  t.is(got.remote, 49)
  t.is(got.mapped, 1 + 4 + 9 + 16)
  t.is(got.got, 25)
  t.is(got.params, 9)
  t.deepEqual(got.cancelled.map((c: any) => c.class), ['InputCancelledError', 'InputCancelledError'], JSON.stringify(got.cancelled))
  t.is(got.grpcCallsInProcess, 0, 'no Functions request went over gRPC')
  t.is(got.grpcCallsAfter, got.grpc.length, 'each call of the other spelling did')
  t.is(got.local.length, got.grpc.length)
  for (let i = 0; i < got.local.length; i++) {
    // Messages that name the server say which address was called; the rest must be equal.
    const strip = (m: string) => m.replaceAll(/http:\/\/127\.0\.0\.1:\d+\/?/g, '<server>')
    t.deepEqual({ ...got.local[i], message: strip(got.local[i].message) }, { ...got.grpc[i], message: strip(got.grpc[i].message) }, `mistake ${i}`)
  }
  t.regex(got.local[0].message, /perhaps you mean 'square'/)
  t.regex(got.local[4].message, /message size cap/)
  t.is(got.afterStop.class, 'InvalidError')
  t.regex(got.afterStop.message, /no berth server answers at http:\/\/127\.0\.0\.1:\d+/)
})
