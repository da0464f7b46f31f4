// `npx berth deploy --target kubernetes` (README "Deploy to Kubernetes"): the files it writes for a class with every
// option it maps and a function, their key fields, the core objects checked against the
// Kubernetes schema offline (kubernetes-validate, when installed), the KEDA objects against the
// field names and types of KEDA's spec (src/deploy/keda.ts), and the refusals.
import { execFileSync, spawnSync } from 'node:child_process'
import { chmodSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import test from 'ava'
import { parseAllDocuments } from 'yaml'

import { SCALED_OBJECT_FIELDS } from '../src/deploy/keda.ts'
import { gpuProducts, k8sName, lagThreshold } from '../src/deploy/kubernetes.ts'
import type { PoolDef } from '../src/run/pool.ts'
import { berth } from './_cli.ts'

const FIXTURE = '__test__/fixtures/deploy-app.ts'

type Obj = { apiVersion: string; kind: string; metadata: { name: string; annotations?: Record<string, string> }; spec: any; data?: any }

function read(dir: string, file: string): Obj[] {
  return parseAllDocuments(readFileSync(join(dir, file), 'utf8')).map((d) => d.toJS() as Obj)
}


/** The --out folders of this test process, removed as it exits. */
const outs: string[] = []
process.once('exit', () => {
  for (const d of outs) rmSync(d, { recursive: true, force: true })
})

async function deploy(extra: string[] = [], env: Record<string, string> = {}) {
  const folder = mkdtempSync(join(tmpdir(), 'berth-deploy-'))
  outs.push(folder)
  const out = join(folder, 'k8s')
  const r = await berth(['deploy', FIXTURE, '--target', 'kubernetes', '--image', 'registry.example.com/demo:1', '--out', out, ...extra], env, { npx: true })
  return { ...r, out }
}

/** The kubernetes-validate CLI, or why the schema check is skipped. */
function validator(): { cmd: string[] } | { skip: string } {
  const probe = spawnSync('python3', ['-m', 'kubernetes_validate', '--version'], { encoding: 'utf8' })
  if (probe.status === 0) return { cmd: ['python3', '-m', 'kubernetes_validate'] }
  return { skip: `kubernetes-validate is not installed (pip install kubernetes-validate): ${(probe.stderr || probe.error?.message || '').trim().split('\n').pop()}` }
}

test('writes a front, a worker Deployment and ScaledObject per pool, and the NATS ConfigMap', async (t) => {
  const r = await deploy(['--nats', 'nats://nats.messaging.svc:4222'])
  t.is(r.code, 0, r.stderr)
  t.deepEqual(readdirSync(r.out).sort(), ['deploy-demo-embedder.yaml', 'deploy-demo-square.yaml', 'front.yaml', 'nats.yaml'])
  t.regex(r.stdout, /kubectl create secret generic hf-token .*berth secret 'hf_token'/)
  t.regex(r.stdout, /kubectl create secret generic db-creds /)
  t.regex(r.stdout, /kubectl create secret generic deploy-demo-token --from-literal=BERTH_TOKEN=/)

  // The NATS reference, once: the monitoring endpoint derived from --nats (port 8222).
  const [cm, auth] = read(r.out, 'nats.yaml')
  t.is(cm.kind, 'ConfigMap')
  t.deepEqual(cm.data, { NATS_URL: 'nats://nats.messaging.svc:4222', NATS_MONITORING_ENDPOINT: 'nats.messaging.svc:8222', NATS_ACCOUNT: '$G' })
  t.is(auth.kind, 'TriggerAuthentication')
  t.deepEqual(auth.spec.configMapTargetRef, [
    { parameter: 'natsServerMonitoringEndpoint', name: 'deploy-demo-nats', key: 'NATS_MONITORING_ENDPOINT' },
    { parameter: 'account', name: 'deploy-demo-nats', key: 'NATS_ACCOUNT' },
  ])

  const [front, service] = read(r.out, 'front.yaml')
  t.is(front.kind, 'Deployment')
  const fc = front.spec.template.spec.containers[0]
  t.deepEqual(fc.command.slice(0, 6), ['node', 'node_modules/berth/bin/berth.mjs', 'serve', FIXTURE, '--broker', '$(NATS_URL)'])
  t.false(fc.command.includes('npx'))
  t.is(fc.image, 'registry.example.com/demo:1')
  t.deepEqual(fc.envFrom, [{ configMapRef: { name: 'deploy-demo-nats' } }])
  t.deepEqual(
    fc.ports.map((p: { containerPort: number }) => p.containerPort),
    [7450, 7451],
  )
  t.is(service.kind, 'Service')
  t.deepEqual(
    service.spec.ports.map((p: { port: number }) => p.port),
    [7450, 7451],
  )
  t.deepEqual(service.spec.selector, front.spec.selector.matchLabels)

  // The class: every option deploy maps.
  const [dep, so] = read(r.out, 'deploy-demo-embedder.yaml')
  t.is(dep.kind, 'Deployment')
  const pod = dep.spec.template.spec
  const c = pod.containers[0]
  t.deepEqual(c.command, ['node', 'node_modules/berth/bin/berth.mjs', 'worker', FIXTURE, '--broker', '$(NATS_URL)', '--function', 'Embedder'])
  t.deepEqual(c.env, [
    { name: 'MODEL', value: 'mini' },
    { name: 'LOG_LEVEL', value: 'debug' },
  ])
  t.deepEqual(c.envFrom, [{ configMapRef: { name: 'deploy-demo-nats' } }, { secretRef: { name: 'hf-token' } }, { secretRef: { name: 'db-creds' } }])
  t.deepEqual(c.resources, { requests: { cpu: '2.5', memory: '8192Mi' }, limits: { 'nvidia.com/gpu': '2' } })
  const terms = pod.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms
  t.is(terms.length, 1)
  t.is(terms[0].matchExpressions[0].key, 'nvidia.com/gpu.product')
  t.is(terms[0].matchExpressions[0].operator, 'In')
  t.true(terms[0].matchExpressions[0].values.includes('NVIDIA-A100-SXM4-80GB'))
  t.false(terms[0].matchExpressions[0].values.some((v: string) => v.includes('A10G')))
  t.is(dep.spec.replicas, 1)

  t.is(so.kind, 'ScaledObject')
  t.is(so.apiVersion, 'keda.sh/v1alpha1')
  t.deepEqual(so.spec.scaleTargetRef, { name: dep.metadata.name })
  t.is(so.spec.minReplicaCount, 1)
  t.is(so.spec.maxReplicaCount, 5)
  t.is(so.spec.cooldownPeriod, 120)
  t.is(so.spec.advanced.horizontalPodAutoscalerConfig.behavior.scaleDown.stabilizationWindowSeconds, 120)
  const trigger = so.spec.triggers[0]
  t.is(trigger.type, 'nats-jetstream')
  // The names berth-core gives the pool (crates/berth-core/src/broker.rs), which the broker uses.
  t.deepEqual(trigger.metadata, { stream: 'berth__deploy-demo__Embedder', consumer: 'workers', lagThreshold: '4' })
  t.deepEqual(trigger.authenticationRef, { name: 'deploy-demo-nats' })

  // The function: no gpu, default bounds, lagThreshold from maxInputs (1).
  const [fdep, fso] = read(r.out, 'deploy-demo-square.yaml')
  const fpod = fdep.spec.template.spec
  t.is(fpod.affinity, undefined)
  t.is(fpod.containers[0].resources, undefined)
  t.deepEqual(fpod.containers[0].command.slice(-2), ['--function', 'square'])
  t.is(fso.spec.minReplicaCount, 0)
  t.is(fso.spec.maxReplicaCount, 3)
  t.is(fso.spec.cooldownPeriod, 60)
  t.is(fso.spec.triggers[0].metadata.lagThreshold, '1')
  t.is(fso.spec.triggers[0].metadata.stream, 'berth__deploy-demo__square')
})

test('the core objects pass the Kubernetes schema; the KEDA objects have the fields of KEDA spec', async (t) => {
  const r = await deploy()
  t.is(r.code, 0, r.stderr)
  const all = readdirSync(r.out).flatMap((f) => read(r.out, f))
  const keda = all.filter((o) => o.apiVersion === 'keda.sh/v1alpha1')
  const core = all.filter((o) => o.apiVersion !== 'keda.sh/v1alpha1')
  t.deepEqual(core.map((o) => o.kind).sort(), ['ConfigMap', 'Deployment', 'Deployment', 'Deployment', 'Service'])

  // KEDA: every field is one KEDA documents, of the documented type (trigger metadata: strings).
  const typeOf = (v: unknown) => (Array.isArray(v) ? 'array' : typeof v)
  const check = (obj: Record<string, unknown>, spec: Record<string, string>, where: string) => {
    for (const [k, v] of Object.entries(obj)) {
      t.true(k in spec, `${where}.${k} is not in KEDA's spec`)
      t.is(typeOf(v), spec[k], `${where}.${k}`)
    }
  }
  for (const so of keda.filter((o) => o.kind === 'ScaledObject')) {
    check(so.spec, SCALED_OBJECT_FIELDS.spec, 'spec')
    check(so.spec.scaleTargetRef, SCALED_OBJECT_FIELDS.scaleTargetRef, 'spec.scaleTargetRef')
    check(so.spec.advanced, SCALED_OBJECT_FIELDS.advanced, 'spec.advanced')
    for (const tr of so.spec.triggers) {
      check(tr, SCALED_OBJECT_FIELDS.trigger, 'trigger')
      check(tr.metadata, SCALED_OBJECT_FIELDS.natsJetStreamMetadata, 'trigger.metadata')
      for (const required of ['stream', 'consumer', 'lagThreshold']) t.truthy(tr.metadata[required], required)
    }
    t.true(Number.isInteger(so.spec.minReplicaCount) && Number.isInteger(so.spec.maxReplicaCount))
    t.true(so.spec.minReplicaCount <= so.spec.maxReplicaCount)
  }
  const auth = keda.find((o) => o.kind === 'TriggerAuthentication')!
  t.deepEqual(Object.keys(auth.spec), ['configMapTargetRef'])
  for (const ref of auth.spec.configMapTargetRef) t.deepEqual(Object.keys(ref).sort(), ['key', 'name', 'parameter'])

  const v = validator()
  if ('skip' in v) {
    t.log(`schema check skipped: ${v.skip}`)
    return
  }
  // Only the core objects: kubernetes-validate has no schema for KEDA's CRDs.
  const file = join(r.out, '..', 'core.json')
  const files = core.map((o, i) => {
    const f = `${file}.${i}.json`
    writeFileSync(f, JSON.stringify(o))
    return f
  })
  const res = spawnSync(v.cmd[0], [...v.cmd.slice(1), '--strict', ...files], { encoding: 'utf8' })
  t.is(res.status, 0, `${res.stdout}\n${res.stderr}`)
  t.notRegex(res.stdout, /ERROR|INVALID/i)
})

test('refusals: unknown target, no file, no app, unwritable --out, no image, a gpu that does not parse', async (t) => {
  const unknown = await deploy(['--target', 'nomad'])
  t.is(unknown.code, 2)
  t.regex(unknown.stderr, /unknown target 'nomad'; targets: server, kubernetes/)

  const none = await berth(['deploy', '--target', 'kubernetes', '--image', 'x'])
  t.is(none.code, 2)
  t.regex(none.stderr, /expected one file, got none/)
  const missing = await berth(['deploy', 'nope.ts', '--target', 'kubernetes', '--image', 'x'])
  t.is(missing.code, 2)
  t.regex(missing.stderr, /no file nope\.ts/)

  const dir = mkdtempSync(join(tmpdir(), 'berth-deploy-'))
  outs.push(dir)
  const noApp = await berth(['deploy', '__test__/fixtures/deploy-no-app.ts', '--target', 'kubernetes', '--image', 'x', '--out', join(dir, 'k8s')])
  t.is(noApp.code, 2)
  t.regex(noApp.stderr, /creates no App/)
  // A file the image's working directory cannot hold at the path the manifests name.
  const outside = join(dir, 'app.ts')
  writeFileSync(outside, readFileSync(FIXTURE))
  const far = await berth(['deploy', outside, '--target', 'kubernetes', '--image', 'x', '--out', join(dir, 'k8s')])
  t.is(far.code, 2)
  t.regex(far.stderr, /is outside this directory/)

  // A path under a file (root can write anywhere else), and a read-only directory for the rest.
  const file = join(dir, 'a-file')
  writeFileSync(file, '')
  const under = await berth(['deploy', FIXTURE, '--target', 'kubernetes', '--image', 'x', '--out', join(file, 'k8s')])
  t.is(under.code, 1)
  t.regex(under.stderr, /cannot write the manifests to .*a-file\/k8s/)
  if (process.getuid?.() !== 0) {
    const ro = join(dir, 'ro')
    execFileSync('mkdir', [ro])
    chmodSync(ro, 0o500)
    const denied = await berth(['deploy', FIXTURE, '--target', 'kubernetes', '--image', 'x', '--out', ro])
    t.is(denied.code, 1)
    t.regex(denied.stderr, /cannot write the manifests/)
  }

  const noImage = await berth(['deploy', FIXTURE, '--target', 'kubernetes'])
  t.is(noImage.code, 2)
  t.regex(noImage.stderr, /--image is required/)

  const badNats = await deploy(['--nats', 'localhost'])
  t.is(badNats.code, 2)
  t.regex(badNats.stderr, /--nats takes NATS's client URL/)

  // The option check's own words (src/define/options.ts), at load.
  const bad = await deploy([], { FIXTURE_GPU: JSON.stringify('A100:x') })
  t.is(bad.code, 1)
  t.regex(bad.stderr, /gpu 'A100:x' must be a type with an optional count of at least 1/)
  // Choices the option takes but one Deployment cannot: different counts.
  const counts = await deploy([], { FIXTURE_GPU: JSON.stringify(['L4:2', 'A10G']) })
  t.is(counts.code, 2)
  t.regex(counts.stderr, /different counts/)
})

test('a second run names the files it wrote before for pools the app no longer has, and leaves others alone', async (t) => {
  const first = await deploy()
  t.is(first.code, 0, first.stderr)
  const old = join(first.out, 'deploy-demo-gone.yaml')
  writeFileSync(old, readFileSync(join(first.out, 'deploy-demo-square.yaml')))
  writeFileSync(join(first.out, 'mine.yaml'), 'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: mine}\n')
  const again = await berth(['deploy', FIXTURE, '--target', 'kubernetes', '--image', 'x', '--out', first.out])
  t.is(again.code, 0, again.stderr)
  t.regex(again.stderr, /deploy-demo-gone\.yaml was written by an earlier berth deploy .*kubectl delete -f/)
  t.notRegex(again.stderr, /mine\.yaml/)
})

test('a list of gpu types is one node affinity term each, preferred in order; an unknown type is asked for as it is', async (t) => {
  const r = await deploy([], { FIXTURE_GPU: JSON.stringify(['L4', 'A10G', 'X9000']) })
  t.is(r.code, 0, r.stderr)
  t.regex(r.stderr, /gpu 'X9000' is no GPU type berth knows/)
  const [dep] = read(r.out, 'deploy-demo-embedder.yaml')
  const na = dep.spec.template.spec.affinity.nodeAffinity
  const values = na.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms.map(
    (term: { matchExpressions: { values: string[] }[] }) => term.matchExpressions[0].values,
  )
  t.deepEqual(values, [['NVIDIA-L4'], ['NVIDIA-A10G'], ['X9000']])
  t.deepEqual(
    na.preferredDuringSchedulingIgnoredDuringExecution.map((p: { weight: number }) => p.weight),
    [100, 90, 80],
  )
  t.is(dep.spec.template.spec.containers[0].resources.limits['nvidia.com/gpu'], '1')
})

test('lagThreshold counts a batch as its inputs; names and GPU products', (t) => {
  const def = (targetInputs: number, sizes: (number | undefined)[]) =>
    ({ targetInputs, methods: sizes.map((maxBatchSize) => (maxBatchSize ? { batched: { maxBatchSize, waitMs: 5 } } : {})) }) as unknown as PoolDef
  t.is(lagThreshold(def(4, [undefined])), 4)
  t.is(lagThreshold(def(2, [32, undefined, 8])), 64)
  t.is(lagThreshold(def(1, [])), 1)

  t.is(k8sName(['my-app', 'Embedder']), 'my-app-embedder')
  t.is(k8sName(['9lives', 'f_x.y']), 'b-9lives-f-x-y')
  t.not(k8sName(['a', 'Model'], true), k8sName(['a', 'model'], true))
  const long = k8sName(['a'.repeat(40), 'b'.repeat(40)])
  t.true(long.length <= 63 && /^[a-z][a-z0-9-]*[a-z0-9]$/.test(long), long)

  // berth's rule for a GPU's name (crates/berth-server/src/gpu.rs is_kind): A10 is not A100.
  t.deepEqual(gpuProducts('A10'), ['NVIDIA-A10'])
  t.deepEqual(gpuProducts('T4'), ['Tesla-T4'])
  t.deepEqual(gpuProducts('L40'), ['NVIDIA-L40'])
  t.true(gpuProducts('H100').every((p) => p.includes('H100')))
  t.deepEqual(gpuProducts('X9000'), [])
})

test('an included app is deployed as part of the app that includes it: the front and pools take its name', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'berth-deploy-include-'))
  t.teardown(() => execFileSync('rm', ['-rf', dir]))
  // The included app is created first (its module is imported first).
  writeFileSync(join(dir, 'lib.ts'), "import { App } from 'berth'\nexport const lib = new App('lib')\nlib.function(async function embed(s: string) { return s })\n")
  writeFileSync(
    join(dir, 'app.ts'),
    "import { App } from 'berth'\nimport { lib } from './lib.ts'\nexport const app = new App('search').include(lib)\napp.function(async function rank(s: string) { return s })\n",
  )
  execFileSync('mkdir', ['-p', join(dir, 'node_modules')])
  execFileSync('ln', ['-s', join(import.meta.dirname, '..'), join(dir, 'node_modules', 'berth')])
  const r = await berth(['deploy', 'app.ts', '--target', 'kubernetes', '--image', 'x', '--out', 'k8s'], {}, { cwd: dir })
  t.is(r.code, 0, r.stderr)
  t.deepEqual(readdirSync(join(dir, 'k8s')).sort(), ['front.yaml', 'nats.yaml', 'search-embed.yaml', 'search-rank.yaml'])
  t.regex(readFileSync(join(dir, 'k8s', 'front.yaml'), 'utf8'), /name: search\n/)
})
