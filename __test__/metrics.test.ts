// GET /metrics (README "Metrics"): after a known workload through `berth serve`, the counts a
// Prometheus parser reads from the exposition are exactly the workload's: inputs by outcome,
// retries, the batches formed, one latency per input, the containers started; the CPU and
// memory of the server and of each container process; the token is required when set.
import test from 'ava'
import { spawnSync } from 'node:child_process'

import { serve, stopsCleanly } from './_served.ts'

// The exposition is read by Prometheus' own Python client parser (`pip install
// prometheus_client`; .ci/run installs it), not by a parser of this repository's.
const PARSE = `
import json, sys
from prometheus_client.parser import text_string_to_metric_families
print(json.dumps([{"name": f.name, "type": f.type, "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in f.samples]} for f in text_string_to_metric_families(sys.stdin.read())]))
`
const probe = spawnSync('python3', ['-c', 'import prometheus_client'], { encoding: 'utf8' })
const parser = probe.status === 0 ? undefined : `prometheus_client is not installed (pip install prometheus_client): ${(probe.stderr || probe.error?.message || '').trim().split('\n').pop()}`

/** These tests, skipped (with the reason logged below) where the parser is missing. */
const measured = parser ? test.skip : test.serial

interface Sample {
  name: string
  labels: Record<string, string>
  value: number
}
interface Family {
  name: string
  type: string
  samples: Sample[]
}

async function scrape(http: string, token?: string): Promise<Map<string, Family>> {
  const res = await fetch(`http://${http}/metrics`, { headers: token ? { authorization: `Bearer ${token}` } : {} })
  if (res.status !== 200) throw new Error(`GET /metrics: ${res.status} ${await res.text()}`)
  if (!res.headers.get('content-type')?.startsWith('text/plain; version=0.0.4')) throw new Error(`content-type ${res.headers.get('content-type')}`)
  const parsed = spawnSync('python3', ['-c', PARSE], { input: await res.text(), encoding: 'utf8' })
  if (parsed.status !== 0) throw new Error(`the exposition does not parse:\n${parsed.stderr}`)
  return new Map((JSON.parse(parsed.stdout) as Family[]).map((f) => [f.name, f]))
}

/** The value of the one sample named `name` (in family `family`, by default the same) whose labels include `labels`. */
function value(m: Map<string, Family>, name: string, labels: Record<string, string>, family = name.replace(/_(total|bucket|count|sum)$/, '')): number {
  const found = (m.get(family)?.samples ?? []).filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
  if (found.length !== 1) throw new Error(`${name} ${JSON.stringify(labels)}: ${found.length} samples`)
  return found[0].value
}

measured('GET /metrics counts a known workload exactly: outcomes, retries, batches, latencies, containers, processes', async (t) => {
  const { App, Cls, Function, RemoteError } = await import('berth')
  const s = await serve([], {}, 'metrics.ts')
  t.teardown(() => s.child.kill('SIGKILL'))
  App.lookup('metered', { server: `http://${s.address}` })

  const before = await scrape(s.http)
  t.is(value(before, 'berth_inputs_total', { function: 'flaky', outcome: 'ok' }), 0, 'a function with no calls yet is listed')

  const flaky = Function.fromName<(x: number) => Promise<number>>('metered', 'flaky')
  const results = await Promise.allSettled([1, 2, 3, 4, -1, -2].map((x) => flaky.remote(x)))
  t.deepEqual(
    results.map((r) => r.status),
    ['fulfilled', 'fulfilled', 'fulfilled', 'fulfilled', 'rejected', 'rejected'],
  )
  t.true(results.every((r) => r.status === 'fulfilled' || r.reason instanceof RemoteError))
  const embedder = Cls.fromName<{ embed(x: number): Promise<number> }>('metered', 'Embedder')
  const embedded: number[] = []
  for await (const y of embedder.embed.map([0, 1, 2, 3, 4, 5, 6, 7])) embedded.push(y)
  t.deepEqual(embedded, [1, 2, 3, 4, 5, 6, 7, 8])

  const m = await scrape(s.http)
  const f = { app: 'metered', function: 'flaky', method: 'flaky' }
  const e = { app: 'metered', function: 'Embedder', method: 'embed' }
  t.is(value(m, 'berth_inputs_total', { ...f, outcome: 'ok' }), 4)
  t.is(value(m, 'berth_inputs_total', { ...f, outcome: 'failed' }), 2)
  for (const outcome of ['timeout', 'cancelled', 'init_failed', 'lost', 'rejected', 'queue_full']) {
    t.is(value(m, 'berth_inputs_total', { ...f, outcome }), 0, outcome)
  }
  t.is(value(m, 'berth_input_retries_total', f), 2, 'each negative input once')
  t.is(value(m, 'berth_input_retries_total', e), 0)
  t.is(value(m, 'berth_inputs_total', { ...e, outcome: 'ok' }), 8)
  t.is(m.get('berth_input_latency_seconds')?.type, 'histogram')
  t.is(value(m, 'berth_input_latency_seconds_count', f), 6, 'one latency per input')
  t.is(value(m, 'berth_input_latency_seconds_bucket', { ...f, le: '+Inf' }), 6)
  t.is(value(m, 'berth_queue_wait_seconds_count', f), 8, 'one queue wait per attempt: 6 inputs, 2 retries')
  t.is(value(m, 'berth_batch_size_count', e), 2, 'eight inputs, two batches')
  t.is(value(m, 'berth_batch_size_sum', e), 8)
  t.is(value(m, 'berth_batch_size_bucket', { ...e, le: "2" }), 0, 'no batch of 2 or fewer')
  t.is(value(m, 'berth_batch_size_bucket', { ...e, le: "4" }), 2, 'both batches full')
  t.is(value(m, 'berth_batch_size_count', f), 8, 'an unbatched method: one input per execution')
  t.is(value(m, 'berth_batch_size_bucket', { ...f, le: "1" }), 8)
  t.is(value(m, 'berth_inputs_queued', f), 0)
  t.is(value(m, 'berth_inputs_running', e), 0)
  t.is(value(m, 'berth_containers_started_total', { function: 'flaky' }), 1)
  t.is(value(m, 'berth_containers_started_total', { function: 'Embedder' }), 1)
  t.is(value(m, 'berth_containers', { function: 'flaky', state: 'serving' }), 1)
  t.is(value(m, 'berth_containers_lost_total', { function: 'Embedder' }), 0)
  t.true(value(m, 'process_resident_memory_bytes', {}) > 1 << 20)
  const containers = m.get('berth_container_resident_memory_bytes')?.samples ?? []
  t.deepEqual(containers.map((c) => c.labels.function).sort(), ['Embedder', 'flaky'], 'one series per container process')
  t.true(containers.every((c) => c.value > 1 << 20))
  const cpu = m.get('berth_container_cpu_seconds')?.samples ?? []
  t.is(cpu.length, 2)
  t.true(cpu.every((c) => c.value > 0))
  await stopsCleanly(t, s)
})

measured('GET /metrics needs the token when the server has one', async (t) => {
  const s = await serve(['--token', 'sesame'], {}, 'metrics.ts')
  t.teardown(() => s.child.kill('SIGKILL'))
  const res = await fetch(`http://${s.http}/metrics`)
  t.is(res.status, 401)
  const m = await scrape(s.http, 'sesame')
  t.is(value(m, 'berth_inputs_total', { function: 'flaky', outcome: 'ok' }), 0)
  t.is((await fetch(`http://${s.http}/metrics`, { method: 'POST' })).status, 401, 'the token comes first')
  await stopsCleanly(t, s)
})

if (parser) {
  test('GET /metrics: skipped without a Prometheus parser', (t) => {
    t.log(`skipped: ${parser}`)
    t.pass()
  })
}
