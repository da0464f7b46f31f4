// KEDA's custom resources that `berth deploy --target kubernetes` writes, typed from KEDA's
// documented spec (kubernetes-types has no CRDs): a ScaledObject per container pool with the
// `nats-jetstream` trigger, and the one TriggerAuthentication that reads the NATS monitoring
// endpoint and account from the app's ConfigMap (README "Deploy to Kubernetes").
import type { HorizontalPodAutoscalerBehavior } from 'kubernetes-types/autoscaling/v2.js'
import type { ObjectMeta } from 'kubernetes-types/meta/v1.js'

export const KEDA_API_VERSION = 'keda.sh/v1alpha1'

/** The workload a ScaledObject scales: a Deployment of the same namespace by default. */
export interface ScaleTargetRef {
  name: string
  apiVersion?: string
  kind?: string
  envSourceContainerName?: string
}

/**
 * The `nats-jetstream` trigger's metadata. Every value is a string, as in all KEDA trigger
 * metadata. `natsServerMonitoringEndpoint` (host:port of NATS's monitoring port, 8222, not the
 * client URL) and `account` may come from a TriggerAuthentication instead, which berth does.
 */
export interface NatsJetStreamMetadata {
  natsServerMonitoringEndpoint?: string
  account?: string
  stream: string
  consumer: string
  /** Pending messages per replica KEDA aims at. */
  lagThreshold: string
  activationLagThreshold?: string
  useHttps?: 'true' | 'false'
}

export interface NatsJetStreamTrigger {
  type: 'nats-jetstream'
  name?: string
  metadata: NatsJetStreamMetadata
  authenticationRef?: { name: string; kind?: 'TriggerAuthentication' | 'ClusterTriggerAuthentication' }
}

export interface ScaledObjectSpec {
  scaleTargetRef: ScaleTargetRef
  /** Seconds between checks of the trigger (KEDA's default 30). */
  pollingInterval?: number
  /** Seconds after the last active trigger before scaling to zero (KEDA's default 300). */
  cooldownPeriod?: number
  initialCooldownPeriod?: number
  idleReplicaCount?: number
  minReplicaCount?: number
  maxReplicaCount?: number
  advanced?: ScaledObjectAdvanced
  /** Replicas to keep when the trigger fails failureThreshold times in a row. */
  fallback?: { failureThreshold: number; replicas: number }
  triggers: NatsJetStreamTrigger[]
}

export interface ScaledObjectAdvanced {
  /** The HPA KEDA makes: its scale-up and scale-down behavior (autoscaling/v2). */
  horizontalPodAutoscalerConfig?: { name?: string; behavior?: HorizontalPodAutoscalerBehavior }
  restoreToOriginalReplicaCount?: boolean
  scalingModifiers?: { formula?: string; target?: string; activationTarget?: string; metricType?: string }
}

export interface ScaledObject {
  apiVersion: typeof KEDA_API_VERSION
  kind: 'ScaledObject'
  metadata: ObjectMeta
  spec: ScaledObjectSpec
}

/** One parameter of a trigger read from a key of a ConfigMap (KEDA's `configMapTargetRef`, KEDA 2.13+). */
export interface ConfigMapTargetRef {
  parameter: string
  name: string
  key: string
}

export interface TriggerAuthentication {
  apiVersion: typeof KEDA_API_VERSION
  kind: 'TriggerAuthentication'
  metadata: ObjectMeta
  spec: { configMapTargetRef?: ConfigMapTargetRef[]; secretTargetRef?: ConfigMapTargetRef[] }
}

/**
 * The field names and value types of a ScaledObject and its trigger, as KEDA documents them:
 * what __test__/deploy.test.ts checks the written files against (kubernetes-validate knows no
 * CRDs).
 */
export const SCALED_OBJECT_FIELDS = {
  spec: {
    scaleTargetRef: 'object',
    pollingInterval: 'number',
    cooldownPeriod: 'number',
    initialCooldownPeriod: 'number',
    idleReplicaCount: 'number',
    minReplicaCount: 'number',
    maxReplicaCount: 'number',
    advanced: 'object',
    fallback: 'object',
    triggers: 'array',
  },
  advanced: { horizontalPodAutoscalerConfig: 'object', restoreToOriginalReplicaCount: 'boolean', scalingModifiers: 'object' },
  scaleTargetRef: { name: 'string', apiVersion: 'string', kind: 'string', envSourceContainerName: 'string' },
  trigger: { type: 'string', name: 'string', metadata: 'object', authenticationRef: 'object' },
  natsJetStreamMetadata: {
    natsServerMonitoringEndpoint: 'string',
    account: 'string',
    stream: 'string',
    consumer: 'string',
    lagThreshold: 'string',
    activationLagThreshold: 'string',
    useHttps: 'string',
  },
} as const

/** True when A and B are the same set of keys. */
type SameKeys<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false

/** Compile-time: the field table above names exactly the fields of the interfaces (tsc fails otherwise). */
export const FIELDS_MATCH_TYPES: [
  SameKeys<keyof (typeof SCALED_OBJECT_FIELDS)['spec'], keyof ScaledObjectSpec>,
  SameKeys<keyof (typeof SCALED_OBJECT_FIELDS)['scaleTargetRef'], keyof ScaleTargetRef>,
  SameKeys<keyof (typeof SCALED_OBJECT_FIELDS)['advanced'], keyof ScaledObjectAdvanced>,
  SameKeys<keyof (typeof SCALED_OBJECT_FIELDS)['trigger'], keyof NatsJetStreamTrigger>,
  SameKeys<keyof (typeof SCALED_OBJECT_FIELDS)['natsJetStreamMetadata'], keyof NatsJetStreamMetadata>,
] = [true, true, true, true, true]
