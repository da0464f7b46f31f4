// The target of a handle on an app defined in this process (define/app.ts): its calls go to the
// embedded runtime while the app runs in this process, and through the app's own control plane
// while it runs with process containers, and from inside one of its container processes.
import type { PoolDef } from '../run/pool.ts'
import type { Arity } from '../shared/arity.ts'
import { inContainerProcess } from '../run/context.ts'
import { encodeValue } from '../shared/cbor.ts'
import { EmbeddedTransport, type EmbeddedApp } from './embedded.ts'
import { RemoteTransport } from './remote.ts'
import type { HandleTarget, Transport } from './transport.ts'

/** What the call layer needs of an app of this process (define/app.ts App). */
export interface LocalApp extends EmbeddedApp {
  readonly name: string
  /** Set while the app runs with process containers. */
  readonly processServer: object | undefined
  /** The app it is served as part of (app.include), else itself: its calls name that app. */
  root(): { readonly name: string }
}

const apps = new Set<LocalApp>()

/** Records an app of this process (`new App()`). */
export function registerApp(app: LocalApp): void {
  apps.add(app)
}

/** Every app created in this process, in creation order. */
export function localApps(): LocalApp[] {
  return [...apps]
}

/** Whether this process runs an app now (embedded, or with process containers). */
export function runsAnApp(): boolean {
  for (const a of apps) if (a.runtimeIfRunning() !== undefined || a.processServer !== undefined) return true
  return false
}

export class AppTarget implements HandleTarget {
  private readonly embedded: EmbeddedTransport
  readonly gen: boolean
  /** The same target through the control plane, made at the first call with process containers. */
  private remote: RemoteTransport | undefined

  constructor(
    readonly app: LocalApp,
    readonly def: PoolDef,
    /** For classes: the method index in `def.methods`. */
    readonly method: number,
    readonly label: string,
    readonly arity: Arity,
    readonly local: (args: unknown[]) => Promise<unknown>,
  ) {
    this.gen = def.methods[method].gen === true
    this.embedded = new EmbeddedTransport(this)
  }

  transport(): Transport {
    return this.app.processServer === undefined && !inContainerProcess() ? this.embedded : (this.remote ??= this.viaControlPlane())
  }

  private viaControlPlane(): RemoteTransport {
    const d = this.def
    const method = d.cls ? d.methods[this.method].name : ''
    const params = d.params ? Buffer.from(encodeValue(d.params)) : Buffer.alloc(0)
    // In a container process (a method calling another function or method of its app): the
    // control plane this container attached to, with the server's token if it has one (README "API").
    const endpoint = this.app.processServer === undefined ? process.env.BERTH_ENDPOINT : undefined
    const where = endpoint === undefined ? undefined : { server: endpoint, token: process.env.BERTH_TOKEN }
    return new RemoteTransport(this.app.root().name, d.name, method, params, this.label, where)
  }
}
