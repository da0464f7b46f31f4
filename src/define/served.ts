// What the control plane serves (`berth serve`, `app.run({ containers: 'process' })`): each
// function and class of the apps, with its pool settings, environment, arity and parameters,
// as crates/berth-node's `BindingFunctionDef` takes them.
import type { BindingFunctionDef, BindingParam } from '../native.ts'
import { encodeValue } from '../shared/cbor.ts'
import { InvalidError } from '../shared/errors.ts'
import { bindingSpec, type PoolDef } from '../run/pool.ts'
import { containerEnv } from '../run/secrets.ts'
import type { ClassDef } from './class-def.ts'
import { getParamSpecs } from './decorators.ts'

/** What is served of an app (define/app.ts App). */
export interface ServedApp {
  readonly name: string
  /** Every function and class of the app (a class with no parameters set), its included apps' too. */
  servedDefs(): { def: PoolDef; isClass: boolean }[]
  servedClass(name: string): ClassDef | undefined
  getTags(): Record<string, string>
  /** The app it is served as part of (app.include), else itself: only those are served on their own. */
  root(): ServedApp
}

/**
 * A class's @parameter() fields, for the control plane to check callers' parameters with
 * (crates/berth-server/src/params.rs, the same rules as validateParams) and fill in defaults.
 */
function paramsOf(cls: new () => unknown): BindingParam[] {
  return [...getParamSpecs(cls)].map(([name, spec]) =>
    spec.required ? { name, kind: spec.type } : { name, kind: spec.type, default: Buffer.from(encodeValue(spec.default)) },
  )
}

/** What the control plane runs: a function, or a class with its method table (`BindingFunctionDef`s). */
export function registryOf(apps: ServedApp[]): object[] {
  return servedFunctions(apps)
}

export function servedFunctions(apps: ServedApp[]): BindingFunctionDef[] {
  const defs = apps
    .filter((app) => app.root() === app)
    .flatMap((app) =>
      app.servedDefs().map(({ def, isClass }) => {
        checkFixedPorts(def)
        return {
          app: app.name,
          name: def.name,
          methods: def.methods.map((m) => m.name),
          isClass,
          // Process containers scale out by default, as Modal's do; maxContainers caps them.
          spec: bindingSpec(def, def.options.maxContainers ?? Math.max(8, def.options.minContainers)),
          env: containerEnv(def.name, def.options.secrets, def.options.env),
          gpu: def.options.gpu,
          arity: def.methods.map((m) => m.arity),
          generators: def.methods.map((m) => m.gen === true),
          // The web endpoints among the methods, by index (crates/berth-server/src/web.rs routes them).
          web: def.methods.flatMap((m, index) =>
            m.web
              ? [
                  {
                    index,
                    method: m.web.method,
                    label: m.web.label,
                    requiresAuth: m.web.requiresAuth,
                    takesRequest: m.web.takesRequest,
                    app: m.web.app,
                  },
                ]
              : [],
          ),
          params: isClass ? paramsOf(def.cls!) : [],
          // Called at each tick by `berth serve` (crates/berth-server/src/schedule.rs).
          schedule: def.options.schedule,
          // Shown by `berth app list` (crates/berth-server/src/http/admin.rs).
          tags: app.getTags(),
          // What a call naming a hook, a parameter or an undecorated method is told.
          notCallable: isClass
            ? [
                ...app
                  .servedClass(def.name)!
                  .notCallable(
                    (n) => `with the class parameters (Cls.fromName('${app.name}', '${def.name}', { ${n}: ... }), or "params" over HTTP)`,
                  ),
              ].map(([name, what]) => ({ name, what }))
            : [],
        }
      }),
    )
  checkWebPaths(defs)
  return defs
}

/** A @webServer on a fixed port serves from one container: two would both listen on it. */
function checkFixedPorts(def: PoolDef): void {
  for (const m of def.methods) {
    if (m.web?.port === undefined || def.options.maxContainers === 1) continue
    throw new InvalidError(
      `@webServer({ port: ${m.web.port} }) on ${def.name}.${m.name}: every container would listen on port ${m.web.port}. ` +
        `Set maxContainers: 1 on ${def.name}, or leave port out: each container then gets a free port of its own.`,
    )
  }
}

/** Two web endpoints at one path: refused at start, naming both (README "API", web endpoints). */
function checkWebPaths(defs: BindingFunctionDef[]): void {
  const seen = new Map<string, string>()
  for (const d of defs) {
    for (const w of d.web ?? []) {
      const member = d.isClass ? `${d.name}.${d.methods[w.index]}` : d.name
      const path = `/${d.app}/${w.label ?? (d.isClass ? `${d.name}/${d.methods[w.index]}` : d.name)}`
      const other = seen.get(path)
      if (other !== undefined) {
        throw new InvalidError(`web endpoints ${other} and ${member} are both at ${path}: give one of them another label`)
      }
      seen.set(path, member)
    }
  }
}
