// `berth deploy --target kubernetes` (README "Deploy to Kubernetes"): the app's functions and classes as
// Kubernetes objects, built as typed values (kubernetes-types, KEDA's spec in ./keda.ts) and
// written as YAML, one file per pool (its Deployment and its ScaledObject, which are applied,
// changed and deleted together), one for the front and one for the NATS reference.
//
// The front runs `berth serve <file> --broker $(NATS_URL)`; each container pool a Deployment of
// `berth worker <file> --broker $(NATS_URL) --function <name>` that KEDA scales on the lag of the
// pool's JetStream consumer. Stream, subject and consumer names come from berth-core
// (`berth_core::broker::names`, through the binding), the ones the broker uses. The `gpu`
// option is parsed as the control plane parses it (the binding's `parseGpu`, same errors).
import { createHash } from 'node:crypto'
import type { Deployment, DeploymentSpec } from 'kubernetes-types/apps/v1.js'
import type {
  ConfigMap,
  Container,
  EnvFromSource,
  EnvVar,
  NodeSelectorTerm,
  PodSpec,
  ResourceRequirements,
  Service,
  Toleration,
} from 'kubernetes-types/core/v1.js'
import type { ObjectMeta } from 'kubernetes-types/meta/v1.js'
import { stringify } from 'yaml'

import type { PoolDef } from '../run/pool.ts'
import { KEDA_API_VERSION, type ScaledObject, type TriggerAuthentication } from './keda.ts'

/** What deploy needs of an app (src/define/app.ts App). */
export interface DeployedApp {
  readonly name: string
  servedDefs(): { def: PoolDef; isClass: boolean }[]
  /** The app it is served as part of (app.include), else itself: only those are deployed on their own. */
  root(): DeployedApp
}

/** What deploy needs of the binding (crates/berth-node/src/deploy.rs). */
export interface DeployBinding {
  brokerNames(app: string, fn: string): { stream: string; subject: string; consumer: string }
  parseGpu(gpu: string[]): { kind: string; count: number }[]
}

export interface KubernetesOptions {
  /** The app file as the image's working directory has it, e.g. `app.ts`. */
  file: string
  /** The container image: the app, its package.json and node_modules (berth included). */
  image: string
  /** NATS's client URL, e.g. nats://nats:4222. */
  natsUrl: string
  /** host:port of NATS's monitoring port (8222), what KEDA's scaler reads. */
  natsMonitoring: string
  /** The NATS account of the streams ("$G" without accounts). */
  natsAccount: string
}

/** Any object written: a core Kubernetes object or one of KEDA's. */
export type Manifest = Deployment | Service | ConfigMap | ScaledObject | TriggerAuthentication

export interface ManifestFile {
  /** File name within --out. */
  name: string
  objects: Manifest[]
}

export interface KubernetesPlan {
  files: ManifestFile[]
  /** Kubernetes Secrets the user creates (one per berth secret): Secret name and berth name. */
  secrets: { name: string; berth: string }[]
  /** The Secret holding the front's token (key BERTH_TOKEN), which the user creates too. */
  token: string
  /** What the user should know (a GPU type with no known node label value). */
  warnings: string[]
}

/** `berth serve`'s default ports (README "CLI"). */
export const GRPC_PORT = 7450
export const HTTP_PORT = 7451

/** berth as the image has it: started with node, never npx (an npx lookup at each start). */
const BERTH = ['node', 'node_modules/berth/bin/berth.mjs']

/** The ConfigMap keys the Deployments and the TriggerAuthentication read. */
export const NATS_URL_KEY = 'NATS_URL'
export const NATS_MONITORING_KEY = 'NATS_MONITORING_ENDPOINT'
export const NATS_ACCOUNT_KEY = 'NATS_ACCOUNT'

/** The front's token (`berth serve --token`, required off loopback): a Secret the user creates. */
export const TOKEN_KEY = 'BERTH_TOKEN'

/** The label GPU Feature Discovery sets on a node: the product name, spaces as '-'. */
export const GPU_PRODUCT_LABEL = 'nvidia.com/gpu.product'
export const GPU_RESOURCE = 'nvidia.com/gpu'

/**
 * Values of `nvidia.com/gpu.product` that GPU Feature Discovery reports for common data-center
 * GPUs. A `gpu` kind selects those of them it names, by berth's rule for `nvidia-smi` names
 * (crates/berth-server/src/gpu.rs `is_kind`): a word starts with the kind and the next character
 * is not a letter or digit, so `A10` selects `NVIDIA-A10` but not `NVIDIA-A100-SXM4-80GB`.
 */
export const GPU_PRODUCTS = [
  'Tesla-T4',
  'Tesla-V100-SXM2-16GB',
  'Tesla-V100-SXM2-32GB',
  'Tesla-V100-PCIE-16GB',
  'Tesla-V100-PCIE-32GB',
  'NVIDIA-A10',
  'NVIDIA-A10G',
  'NVIDIA-A40',
  'NVIDIA-A100-SXM4-40GB',
  'NVIDIA-A100-SXM4-80GB',
  'NVIDIA-A100-PCIE-40GB',
  'NVIDIA-A100-80GB-PCIe',
  'NVIDIA-L4',
  'NVIDIA-L40',
  'NVIDIA-L40S',
  'NVIDIA-H100-80GB-HBM3',
  'NVIDIA-H100-PCIe',
  'NVIDIA-H100-NVL',
  'NVIDIA-H200',
  'NVIDIA-B200',
]

/** The known product labels of a parsed kind (upper case, `ANY` for any). */
export function gpuProducts(kind: string): string[] {
  return GPU_PRODUCTS.filter((p) => {
    const upper = p.toUpperCase()
    for (let at = upper.indexOf(kind); at !== -1; at = upper.indexOf(kind, at + 1)) {
      const before = at === 0 ? '-' : upper[at - 1]
      const after = upper[at + kind.length] ?? '-'
      if (before === '-' && !/[A-Z0-9]/.test(after)) return true
    }
    return false
  })
}

/**
 * A name Kubernetes takes for a Deployment, Service or ConfigMap (an RFC 1035 label: at most 63
 * characters of a-z, 0-9 and '-', starting with a letter): lower case, anything else as '-'.
 * A name cut to fit, or asked `unique` because its plain form is taken (`Model` and `model` of
 * one app), ends in 6 hex digits of a hash of the original.
 */
export function k8sName(parts: string[], unique = false): string {
  const original = parts.join('-')
  let name = original
    .toLowerCase()
    .replace(/[^a-z0-9-]+/g, '-')
    .replace(/-+/g, '-')
    .replace(/^-|-$/g, '')
  if (!/^[a-z]/.test(name)) name = `b-${name}`
  if (!unique && name.length <= 63) return name
  const hash = createHash('sha256').update(original).digest('hex').slice(0, 6)
  return `${name.slice(0, 63 - 7).replace(/-$/, '')}-${hash}`
}

/** A Kubernetes Secret's name for a berth secret (a DNS subdomain: lower case, '-', '.'). */
export function k8sSecretName(berth: string): string {
  return berth
    .toLowerCase()
    .replace(/_/g, '-')
    .replace(/[-.]+$/, '')
    .slice(0, 253)
}

function labels(app: string, component: string, instance: string): Record<string, string> {
  return {
    'app.kubernetes.io/name': app,
    'app.kubernetes.io/instance': instance,
    'app.kubernetes.io/component': component,
    'app.kubernetes.io/managed-by': 'berth',
  }
}

function meta(name: string, l: Record<string, string>, annotations?: Record<string, string>): ObjectMeta {
  return annotations ? { name, labels: l, annotations } : { name, labels: l }
}

function deployment(
  name: string,
  l: Record<string, string>,
  pod: PodSpec,
  replicas?: number,
  annotations?: Record<string, string>,
): Deployment {
  const selector = { matchLabels: { 'app.kubernetes.io/instance': l['app.kubernetes.io/instance'] } }
  const spec: DeploymentSpec = {
    ...(replicas === undefined ? {} : { replicas }),
    selector,
    template: { metadata: { labels: l }, spec: pod },
  }
  return { apiVersion: 'apps/v1', kind: 'Deployment', metadata: meta(name, l, annotations), spec }
}

/** The NATS reference, from the ConfigMap: set in one place (README "Deploy to Kubernetes"). */
function natsEnv(configMap: string): EnvFromSource[] {
  return [{ configMapRef: { name: configMap } }]
}

/**
 * The GPU request of a pool: `nvidia.com/gpu` limits and node affinity on the product label,
 * one term per choice of the `gpu` option (any of them schedules), preferred in its order.
 */
function gpuPlacement(
  where: string,
  gpu: string[],
  binding: DeployBinding,
  warnings: string[],
): { count: number; affinity?: PodSpec['affinity']; tolerations: Toleration[] } | undefined {
  if (gpu.length === 0) return undefined
  let choices: { kind: string; count: number }[]
  try {
    choices = binding.parseGpu(gpu)
  } catch (e) {
    throw new Error(`${where}: ${(e as Error).message}`)
  }
  const counts = new Set(choices.map((c) => c.count))
  if (counts.size > 1) {
    throw new Error(
      `${where}: gpu ${JSON.stringify(gpu)} asks for different counts, but a Deployment's pods have one nvidia.com/gpu limit: ` +
        "give every choice the same count, e.g. ['L4:2', 'A10G:2'].",
    )
  }
  const tolerations: Toleration[] = [{ key: GPU_RESOURCE, operator: 'Exists', effect: 'NoSchedule' }]
  const count = choices[0].count
  if (choices.some((c) => c.kind === 'ANY')) return { count, tolerations }
  const terms: NodeSelectorTerm[] = choices.map((c) => {
    let values = gpuProducts(c.kind)
    if (values.length === 0) {
      values = [c.kind]
      warnings.push(
        `${where}: gpu '${c.kind}' is no GPU type berth knows a ${GPU_PRODUCT_LABEL} value for; the node affinity asks for '${c.kind}' as it is. ` +
          `Edit it to your nodes' value (kubectl get nodes -L ${GPU_PRODUCT_LABEL}).`,
      )
    }
    return { matchExpressions: [{ key: GPU_PRODUCT_LABEL, operator: 'In', values }] }
  })
  const affinity: PodSpec['affinity'] = {
    nodeAffinity: {
      requiredDuringSchedulingIgnoredDuringExecution: { nodeSelectorTerms: terms },
      ...(terms.length > 1
        ? {
            preferredDuringSchedulingIgnoredDuringExecution: terms.map((preference, i) => ({
              weight: Math.max(1, 100 - i * 10),
              preference,
            })),
          }
        : {}),
    },
  }
  return { count, affinity, tolerations }
}

/**
 * Pending inputs per worker KEDA aims at: what one container takes at once at its autoscaling
 * target, `targetInputs` (of `@concurrent`, else `maxInputs`; 1 without either) executions, each
 * up to the largest `maxBatchSize` of its `@batched` methods.
 */
export function lagThreshold(def: PoolDef): number {
  const batch = Math.max(1, ...def.methods.map((m) => m.batched?.maxBatchSize ?? 1))
  return def.targetInputs * batch
}

/** The objects for every pool of `apps`, loaded from `o.file`. Throws on what cannot be deployed. */
export function kubernetesPlan(loaded: DeployedApp[], o: KubernetesOptions, binding: DeployBinding): KubernetesPlan {
  // An app included in another (app.include) is deployed as part of it, not on its own.
  const apps = loaded.filter((a) => a.root() === a)
  const warnings: string[] = []
  const secrets = new Map<string, string>()
  const front = k8sName([apps[0].name])
  const configMap = `${front}-nats`
  const several = apps.length > 1

  const natsConfig: ConfigMap = {
    apiVersion: 'v1',
    kind: 'ConfigMap',
    metadata: meta(configMap, labels(front, 'nats', configMap)),
    data: { [NATS_URL_KEY]: o.natsUrl, [NATS_MONITORING_KEY]: o.natsMonitoring, [NATS_ACCOUNT_KEY]: o.natsAccount },
  }
  const auth: TriggerAuthentication = {
    apiVersion: KEDA_API_VERSION,
    kind: 'TriggerAuthentication',
    metadata: meta(configMap, labels(front, 'nats', configMap)),
    spec: {
      configMapTargetRef: [
        { parameter: 'natsServerMonitoringEndpoint', name: configMap, key: NATS_MONITORING_KEY },
        { parameter: 'account', name: configMap, key: NATS_ACCOUNT_KEY },
      ],
    },
  }

  const frontLabels = labels(front, 'front', front)
  const frontContainer: Container = {
    name: 'berth',
    image: o.image,
    command: [
      ...BERTH,
      'serve',
      o.file,
      '--broker',
      `$(${NATS_URL_KEY})`,
      '--host',
      '0.0.0.0',
      '--token',
      `$(${TOKEN_KEY})`,
      '--no-reload',
    ],
    ports: [
      { name: 'grpc', containerPort: GRPC_PORT },
      { name: 'http', containerPort: HTTP_PORT },
    ],
    envFrom: natsEnv(configMap),
    env: [{ name: TOKEN_KEY, valueFrom: { secretKeyRef: { name: `${front}-token`, key: TOKEN_KEY } } }],
    readinessProbe: { httpGet: { path: '/healthz', port: 'http' } },
  }
  const service: Service = {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: meta(front, frontLabels),
    spec: {
      selector: { 'app.kubernetes.io/instance': front },
      ports: [
        { name: 'grpc', port: GRPC_PORT, targetPort: 'grpc', appProtocol: 'kubernetes.io/h2c' },
        { name: 'http', port: HTTP_PORT, targetPort: 'http' },
      ],
    },
  }
  const files: ManifestFile[] = [
    { name: 'nats.yaml', objects: [natsConfig, auth] },
    { name: 'front.yaml', objects: [deployment(front, frontLabels, { containers: [frontContainer] }, 1), service] },
  ]

  const taken = new Set([front, configMap])
  for (const app of apps) {
    for (const { def, isClass } of app.servedDefs()) {
      const where = `${app.name}/${def.name}`
      let name = k8sName([app.name, def.name])
      if (taken.has(name)) name = k8sName([app.name, def.name], true)
      taken.add(name)
      const o2 = def.options
      const names = binding.brokerNames(app.name, def.name)
      const podLabels = labels(front, 'worker', name)

      const env: EnvVar[] = Object.entries(o2.env).map(([k, v]) => ({ name: k, value: v }))
      const envFrom = natsEnv(configMap)
      for (const s of o2.secrets) {
        const secret = k8sSecretName(s)
        secrets.set(secret, s)
        envFrom.push({ secretRef: { name: secret } })
      }
      const resources: ResourceRequirements = {}
      const requests: Record<string, string> = {}
      if (o2.cpu !== undefined) requests.cpu = String(o2.cpu)
      if (o2.memory !== undefined) requests.memory = `${o2.memory}Mi`
      if (Object.keys(requests).length > 0) resources.requests = requests
      const gpu = gpuPlacement(where, o2.gpu, binding, warnings)
      if (gpu) resources.limits = { [GPU_RESOURCE]: String(gpu.count) }

      const container: Container = {
        name: 'berth',
        image: o.image,
        command: [
          ...BERTH,
          'worker',
          o.file,
          '--broker',
          `$(${NATS_URL_KEY})`,
          ...(several ? ['--app', app.name] : []),
          '--function',
          def.name,
        ],
        envFrom,
        ...(env.length > 0 ? { env } : {}),
        ...(Object.keys(resources).length > 0 ? { resources } : {}),
      }
      const pod: PodSpec = {
        containers: [container],
        // @exit hooks get exitGracePeriod (README "API"); Kubernetes kills after this.
        terminationGracePeriodSeconds: Math.ceil(o2.exitGracePeriodMs / 1000) + 5,
      }
      if (gpu?.affinity) pod.affinity = gpu.affinity
      if (gpu) pod.tolerations = gpu.tolerations

      const annotations = {
        'berth.dev/app': app.name,
        'berth.dev/function': def.name,
        'berth.dev/kind': isClass ? 'class' : 'function',
        'berth.dev/stream': names.stream,
        'berth.dev/subject': names.subject,
        'berth.dev/consumer': names.consumer,
      }
      // Without maxContainers, `berth serve` caps a pool at max(8, minContainers) processes
      // (src/define/served.ts); the same bound here.
      const max = o2.maxContainers ?? Math.max(8, o2.minContainers)
      const scaled: ScaledObject = {
        apiVersion: KEDA_API_VERSION,
        kind: 'ScaledObject',
        metadata: meta(name, podLabels, annotations),
        spec: {
          scaleTargetRef: { name },
          minReplicaCount: o2.minContainers,
          maxReplicaCount: max,
          // scaledownWindow: how long an idle pool waits before its last replica goes
          // (cooldownPeriod) and before any replica goes (the HPA's scale-down window).
          cooldownPeriod: Math.ceil(o2.scaledownWindowMs / 1000),
          advanced: {
            horizontalPodAutoscalerConfig: {
              // The HPA takes at most an hour here.
              behavior: { scaleDown: { stabilizationWindowSeconds: Math.min(3600, Math.ceil(o2.scaledownWindowMs / 1000)) } },
            },
          },
          triggers: [
            {
              type: 'nats-jetstream',
              metadata: { stream: names.stream, consumer: names.consumer, lagThreshold: String(lagThreshold(def)) },
              authenticationRef: { name: configMap },
            },
          ],
        },
      }
      files.push({
        name: `${name}.yaml`,
        // KEDA sets the replicas; the Deployment starts at minContainers.
        objects: [deployment(name, podLabels, pod, o2.minContainers, annotations), scaled],
      })
    }
  }
  return { files, secrets: [...secrets].map(([name, berth]) => ({ name, berth })), token: `${front}-token`, warnings }
}

/** How every file `berth deploy` writes starts (how it knows its own files again). */
export const WRITTEN_BY = '# Written by `berth deploy '

/** One file's YAML: its objects as documents, under a line saying where they came from. */
export function toYaml(file: ManifestFile, source: string): string {
  const docs = file.objects.map((obj) => stringify(obj, { lineWidth: 0, aliasDuplicateObjects: false })).join('---\n')
  return `${WRITTEN_BY}${source} --target kubernetes\`; run it again after changing the app.\n${docs}`
}
