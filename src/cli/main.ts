// The `berth` command. It loads the user's TypeScript with tsx and drives the app through the
// same module instance the user's file imports (dist/index.cjs), never a bundled copy. It runs
// as the bundle dist/cli.cjs (bin/berth.mjs): the paths it requires are relative to dist/.
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync, writeSync } from 'node:fs'
import { createRequire } from 'node:module'
import { isAbsolute, join, relative, resolve, sep } from 'node:path'
import { pathToFileURL } from 'node:url'
import { serialize } from 'node:v8'

import { arityOf, arityText, skipString } from '../shared/arity.ts'
import { containerCommand } from '../command.ts'
import { binding, type BindingFunctionDef } from '../native.ts'
import { isGeneratorFunction } from '../define/decorators.ts'
import { closest } from '../define/options.ts'
import { createSecret, listSecrets } from '../run/secrets.ts'
import { type Loaded, loadInChild, localFiles, oneLine, REGISTRY_FD, watchAndReload } from './reload.ts'
import { acceptDeploys } from './deploys.ts'
import { WORKER_HELP, worker } from './worker.ts'
import { admin, APP_HELP, CONTAINER_HELP, deployToServer, LOGS_HELP } from './admin.ts'
import { dictCommand, queueCommand } from './data.ts'
import { VOLUME_HELP, volumeCommand } from './volume.ts'
import { say, setLogFormat } from './say.ts'

type Api = typeof import('../index.ts') & { allApps(): import('../define/app.ts').App[] }

const HELP = `berth: run TypeScript classes the way Modal runs Python

Usage:
  berth run <file.ts>[::name] [--containers process|embedded] [--params JSON] [-- args...]
                                             run the local entrypoint, a function or a class method
  berth serve [<file.ts>] [--host 127.0.0.1] [--grpc-port 7450] [--http-port 7451] [--token T]
              [--no-reload] [--broker nats://host:4222]
                                             serve the app over gRPC and HTTP, containers as processes,
                                             reloading it when a file of it is saved (--broker: calls
                                             go through NATS JetStream to berth workers)
  berth worker <file.ts> --broker nats://host:4222 [--app NAME] [--function NAME]...
                                             run containers for calls a --broker front published
  berth build <file.ts>                      run @build hooks not yet cached
  berth deploy <file.ts> [--server URL]      serve the app on a running berth serve and return
  berth deploy <file.ts> --target kubernetes --image IMAGE [--out k8s/] [--nats nats://nats:4222]
                                             write Kubernetes manifests (Deployments, Service, KEDA
                                             ScaledObjects) for the app's functions and classes
  berth app list | berth app stop <app>      the apps a running server serves; stop one (it drains)
  berth container list                       a running server's containers: pid, state, inputs, uptime
  berth logs <app> [-f]                      the recent lines of an app's containers; -f follows
                                             (these three ask BERTH_SERVER or --server, with BERTH_TOKEN)
  berth dict get|put|items|len|clear|delete <name> ...
  berth queue put|get|len|clear|delete <name> ...
                                             a running server's named dicts and queues (BERTH_SERVER or --server)
  berth secret create <name> KEY=VALUE...    store a secret for the \`secrets\` option
  berth secret list                          the stored secrets and their keys (not values)
  berth volume create|list|ls|put|get|rm|delete <name> ... [--broker <url>]
                                             this machine's volumes, for the volumes option
                                             (--broker: synced through that NATS server)
  berth --version                            the installed berth's version
  berth --help | berth <command> --help

Commands:
  run    Start the app, run its localEntrypoint with the args after \`--\`, stop the app
         (exit hooks run) and exit with the entrypoint's status (a returned number, 0, or 1
         when it throws). With ::name, run that entrypoint, function or Class.method: it
         gets its arguments after \`--\`, as \`--name value\` pairs or positional values
         (JSON where it parses), a class its parameters from --params '{"name": value}'.
  serve  Keep the app up behind gRPC (default 127.0.0.1:7450) and HTTP (:7451); callers find
         it at http://127.0.0.1:7450 unless BERTH_SERVER says otherwise. A saved edit of the
         file, or of a local module it imports, is served by new containers (--no-reload: not).
  build  Run the @build hooks of every class in the file, unless a marker in the cache
         (BERTH_CACHE_DIR, default node_modules/.cache/berth) says an earlier build of the same
         class source already did. Containers skip cached builds the same way.
  deploy Serve the app on a running \`berth serve\` (BERTH_SERVER) and return, the app staying
         up; or, with --target kubernetes, write the manifests that run it on Kubernetes: a
         front (berth serve) and a worker Deployment per function and class, each scaled by
         KEDA on its NATS JetStream consumer (berth deploy --help).
`

const SERVE_HELP = `Usage: berth serve [<file.ts>] [--host 127.0.0.1] [--grpc-port 7450] [--http-port 7451] [--token T]
                   [--max-message-bytes 16777216] [--max-connections 4096] [--result-ttl 3600]
                   [--no-reload] [--broker nats://host:4222] [--log-format text|json]

Without <file.ts> it serves no app of its own, only those \`berth deploy app.ts\` brings it.
Keeps the app up until SIGTERM or Ctrl-C: the control plane serves berth.v1.Functions (and
grpc.health.v1.Health, server reflection) on --host:--grpc-port and runs each container as a
child process that loads <file.ts>. It prints each function and class method it serves, with
the gRPC FunctionRef and the HTTP path that call it. --http-port serves them as JSON:

  curl -X POST http://127.0.0.1:7451/<app>/<function> -d '[4]'                     # arguments
  curl -X POST http://127.0.0.1:7451/<app>/<Class>/<method> -d '{"args":["hi"],"params":{"model":"mini"}}'

answering 200 with the result as JSON, 500 with {"error":{name,message,stack}} when the code
throws, 400/404/413 for a malformed body, an unknown name, an oversized body. Web endpoints
(@webEndpoint) answer at the URLs the banner prints, each with its own method; web apps
(@fetchApp, @webServer, @nodeApp) every request under theirs. GET /<app>
lists what the app serves (GET /, every app); GET /healthz answers ok. Callers in Node
(Function.fromName, Cls.fromName, FunctionCall.fromId) find the server at
http://127.0.0.1:7450 unless BERTH_SERVER (or App.lookup) names another.

Reload (on unless --no-reload): when <file.ts>, or a local module it imports (not a package in
node_modules), is saved, berth loads it again in a separate process; if it loads, calls from then
on go to new containers running the new code, while the old containers finish the inputs they
took, run their @exit hooks and stop; stderr says "berth: reloaded 'app' (N functions) after a
change to FILE". If it fails to load (a syntax error, a throw at import), stderr says why in one
line and the containers running the previous version keep serving it (one that starts meanwhile
loads the file on disk, and fails until the file is fixed).

A request larger than --max-message-bytes (default 16 MiB) is refused:
RESOURCE_EXHAUSTED over gRPC, 413 over HTTP. Binding a host other than loopback requires
--token; callers then send \`authorization: Bearer <token>\` (both ports). Port 0 picks a free
port. Each port holds at most --max-connections connections (default 4096; past it a new one is
closed at once and logged); a connection that sends no request within 10 s, or sits idle with
no call open for 10 minutes, is closed, and an HTTP body that pauses 30 s, or comes slower than
500 bytes a second after its first 30 s, is answered 408.
A Map caller that stops reading results stops being read. The result of a spawned call is
kept until GetResult delivers it, or --result-ttl seconds (default 3600) after it finishes.
On SIGTERM or Ctrl-C, in-flight inputs finish and containers run their @exit hooks; a second
Ctrl-C stops at once (in-flight inputs are cancelled, exit hooks not yet run are skipped). Exits
0 after SIGTERM, 130 after Ctrl-C.

Container output: every line a container prints reaches this process's stdout or stderr (as
the container printed it) whole, behind its app, function and container id
(\`app/function#3 | line\`); a line past 64 KiB is cut there, with a note. Each container's start,
stop and crash is logged, and an @exit hook still running after 1 s. --log-format json prints
each line as one JSON object instead: {time, app, function, container, stream, level, input,
message}, \`input\` being the input the line was printed in, if any, and \`level\` the console
method's (log and info: info; warn; error; debug). \`berth logs <app>\` reads the recent lines.

With --broker, calls (.remote(), .map(), .spawn(), the HTTP RPC routes) are published to the
app's streams on that NATS JetStream server and run by \`berth worker\` processes (berth worker
--help); the server runs containers only for generators and web endpoints, and does not reload.
`

const BUILD_HELP = `Usage: berth build <file.ts>

Runs each class's @build hooks once and records a marker keyed by the class name and a hash of
its source in BERTH_CACHE_DIR (default node_modules/.cache/berth). Edit the class to rebuild.
A file whose classes have no @build hooks has nothing to build, and says so.
`

/** Where `berth deploy` can deploy to. */
const DEPLOY_TARGETS = ['server', 'kubernetes']

const DEPLOY_HELP = `Usage: berth deploy <file.ts> [--server URL] [--token T]
       berth deploy <file.ts> --target kubernetes --image IMAGE [--out k8s/]
                    [--nats nats://nats:4222] [--nats-monitoring HOST:8222] [--nats-account '$G']

To a running \`berth serve\` (the default): the server at BERTH_SERVER (or --server), default
http://127.0.0.1:7450, with its token BERTH_TOKEN (or --token), loads <file.ts> (a path on its
machine: run the server there) and serves its apps beside the ones it serves, replacing any of
the same name (the old version's containers finish the inputs they took, run their exit hooks
and stop). Returns once they are served; they stay up after it, until the server stops, \`berth
app stop\`, or the next deploy. Containers of a deployed app start in the directory berth
deploy ran in. \`berth app list\` shows them; callers reach them as any served app.

--target kubernetes writes, into --out (default k8s/), the manifests that run every function and class of the app
file on Kubernetes, inputs going through NATS JetStream:

  nats.yaml          a ConfigMap with the NATS reference (the one place it is set) and the KEDA
                     TriggerAuthentication that reads it
  front.yaml         a Deployment and Service running \`berth serve <file> --broker\` (gRPC
                     7450, HTTP 7451)
  <app>-<name>.yaml  per function and class: a Deployment running \`berth worker <file>
                     --function <name>\` (gpu, cpu, memory, env, secrets from its options) and a
                     KEDA ScaledObject on its JetStream consumer (min/maxContainers,
                     scaledownWindow, targetInputs)

  --target           where to deploy; targets: ${DEPLOY_TARGETS.join(', ')} (default server)
  --image            the image holding the app, its package.json and node_modules (berth too),
                     with the app file at the path given here, relative to its working directory
  --nats             NATS's client URL (default nats://nats:4222, the NATS Helm chart's Service)
  --nats-monitoring  host:port of NATS's monitoring port, which KEDA reads (default: --nats's
                     host, port 8222)
  --nats-account     the JetStream account of the streams (default $G, NATS without accounts)

Each berth secret (the secrets option) is a Kubernetes Secret of the same name, lower case,
'_' as '-', which you create; so is <app>-token, key BERTH_TOKEN, the front's --token.
`

const RUN_HELP = `Usage: berth run <file.ts>[::name] [--containers embedded|process] [--params JSON] [-- args...]

  <file.ts>    a module that creates an App (new App(...)) and registers
               app.localEntrypoint(...), app.function(...) or @app.cls() classes
  ::name       the entrypoint, function or Class.method to run (default: the only local
               entrypoint)
  -- args      everything after \`--\` goes to what runs: an entrypoint gets it as argv; a
               function or method gets its arguments by name (--x 3) or in order (3), each
               value parsed as JSON where it parses (else a string), and must get as many
               as it takes:  berth run app.ts::square -- --x 3

  --containers process (default) runs each container as a child Node process behind a
               local control plane, as \`berth serve\` does; embedded runs them inside this
               process (what app.run() does in code: no control plane, no child process)
  --params     a class's @parameter values, as a JSON object, for ::Class.method:
               berth run app.ts::Model.predict --params '{"variant":"large"}' -- 'some text'

Ctrl-C stops the app gracefully (in-flight inputs finish, @exit hooks run); a second Ctrl-C
stops at once (in-flight inputs are cancelled, exit hooks not yet run are skipped). Exits with
the entrypoint's status, or 130 after a Ctrl-C (one or two, in either container mode), 143 after
SIGTERM.
`

export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv
  if (cmd === 'help' && rest.length > 0 && rest[0] in COMMAND_HELP) {
    process.stdout.write(COMMAND_HELP[rest[0]])
    return 0
  }
  if (cmd === undefined || cmd === '--help' || cmd === '-h' || cmd === 'help') {
    process.stdout.write(HELP)
    return cmd === undefined ? 1 : 0
  }
  if (cmd === '--version' || cmd === '-v' || cmd === 'version') {
    console.log(`berth ${createRequire(__filename)('../package.json').version}`)
    return 0
  }
  if (cmd === 'run') return run(rest)
  if (cmd === 'build') return build(rest)
  if (cmd === 'serve') return serve(rest)
  if (cmd === 'worker')
    return worker(rest, {
      loadApps,
      registryOf: (apps) => api().__berthRegistryOf(apps as import('../define/app.ts').App[]) as BindingFunctionDef[],
      stopSignals,
      watchParent,
    })
  if (cmd === 'secret') return secret(rest)
  if (cmd === 'app' || cmd === 'container' || cmd === 'logs') return admin(cmd, rest)
  if (cmd === 'dict') return dictCommand(rest, api())
  if (cmd === 'queue') return queueCommand(rest, api())
  if (cmd === 'volume') return volumeCommand(rest)
  if (cmd === 'deploy') return deploy(rest)
  if (cmd === '__container') return container()
  if (cmd === '__registry') return registry(rest[0])
  process.stderr.write(`berth: unknown command '${cmd}'.\n\n${HELP}`)
  return 2
}

/**
 * Starts the first container process while this one still loads the user's file (both take
 * a few hundred ms): the control plane started next adopts it, so the first call does not wait
 * for a Node start.
 */
function prestartContainer(file: string, logFormat?: string): void {
  binding().prestartContainer(containerCommand(), resolve(file), logFormat)
}

/** `--log-format`'s values (`berth serve`, `berth worker`). */
export const LOG_FORMATS = ['text', 'json']

// Who started this process, read before anything else could take long.
const startParent = process.ppid

/**
 * Stops this process (as SIGTERM would: drain, exit hooks) when the process that started it
 * goes away. Under a process manager, `npx berth serve` gets SIGTERM in npm, whose `sh -c`
 * child dies without passing it on; without this, `berth serve` and its containers would keep
 * running with nobody to stop them. Linux: the kernel's parent-death signal; elsewhere a poll.
 */
function watchParent(): void {
  if (binding().watchParent(startParent)) return
  const parent = startParent
  setInterval(() => {
    if (process.ppid !== parent) process.kill(process.pid, 'SIGTERM')
  }, 1000).unref()
}

const DRAINING = 'berth: stopping (in-flight inputs finish, exit hooks run); interrupt again to stop now\n'
const FORCED = "berth: stopping now: in-flight inputs are cancelled and the containers' exit hooks that have not run are skipped\n"

/**
 * How `berth run` and `berth serve` take signals (README "CLI"). The first SIGINT or SIGTERM
 * asks for a graceful stop (`drain`: in-flight inputs finish, exit hooks run); a SIGINT after it
 * stops at once (`force`) and exits 130; a further SIGTERM changes nothing (a process manager,
 * or watchParent's poll, may send it again). Once the app has stopped (`finished()`), what keeps
 * the process is the user's open handles: a signal ends it at once, 130 for SIGINT and
 * `sigtermStatus` for SIGTERM, instead of killing it by the signal (which a parent sees as no
 * exit status at all).
 */
function stopSignals(
  sigtermStatus: number,
  drain: () => void,
): { readonly interrupted: boolean; readonly terminated: boolean; force: () => void; finished(): void } {
  let stopping = false
  let done = false
  const state = {
    interrupted: false,
    terminated: false,
    /** Set by the caller once there is something to force (containers to kill). */
    force: () => {},
    finished: () => {
      done = true
    },
  }
  const on = (signal: 'SIGINT' | 'SIGTERM') => {
    if (signal === 'SIGINT') state.interrupted = true
    else state.terminated = true
    if (done) process.exit(signal === 'SIGINT' ? 130 : sigtermStatus)
    if (!stopping) {
      stopping = true
      drain()
    } else if (signal === 'SIGINT') {
      say(process.stderr, FORCED, 'warn')
      state.force()
      process.exit(130)
    }
  }
  process.on('SIGINT', () => on('SIGINT'))
  process.on('SIGTERM', () => on('SIGTERM'))
  return state
}

function api(): Api {
  return createRequire(__filename)('./index.cjs')
}

let tsxRegistered = false
/** Every module tsx's ESM hooks loaded: with require.cache, the files the user's app came from. */
const imported = new Set<string>()

/**
 * A global registration, not tsImport: tsImport namespaces every module it loads, and the
 * user's `import 'berth'` must reach this very instance. Both hooks, as the tsx CLI does: a .ts
 * file in a "commonjs" package goes through require().
 */
async function registerTsx(): Promise<void> {
  if (tsxRegistered) return
  tsxRegistered = true
  const { register } = await import('tsx/esm/api')
  register({ onImport: (url) => imported.add(url) })
  createRequire(__filename)('tsx/cjs/api').register()
}

/** Loads the user's file with tsx; returns its apps, or an exit status after printing why not. */
async function loadApps(cmd: string, file: string): Promise<import('../define/app.ts').App[] | number> {
  const berth = api()
  await registerTsx()
  try {
    await import(pathToFileURL(resolve(file)).href)
  } catch (e) {
    say(process.stderr, `berth ${cmd}: could not load ${file}:\n${(e as Error)?.stack ?? String(e)}`, 'error', true)
    return 1
  }
  const apps = berth.allApps()
  if (apps.length === 0) {
    say(process.stderr, `berth ${cmd}: ${file} creates no App. Add: export const app = new App('name')`, 'error')
    return 2
  }
  return apps
}

/** The local files the loaded app came from (what `berth serve` watches to reload). */
function appFiles(file: string): string[] {
  return localFiles([resolve(file), ...imported, ...Object.keys(createRequire(__filename).cache)], __dirname)
}

/**
 * `berth __registry <file>`, started by `berth serve` to reload: loads the file in this fresh
 * process and sends what it serves (or why it could not) on fd 3 (src/cli/reload.ts).
 */
async function registry(file: string | undefined): Promise<never> {
  const send: (v: Loaded) => never = (v) => {
    try {
      writeSync(REGISTRY_FD, serialize(v))
    } catch {
      process.stderr.write('berth __registry is started by `berth serve` to reload, not by hand\n')
    }
    // The user's module may hold the process open (timers, sockets): this one is done.
    process.exit(0)
  }
  if (!file) return send({ error: 'no file named' })
  // Gone with the server that started it, even mid-load.
  watchParent()
  const berth = api()
  await registerTsx()
  try {
    await import(pathToFileURL(resolve(file)).href)
  } catch (e) {
    send({ error: oneLine(e) })
  }
  const apps = berth.allApps()
  if (apps.length === 0) send({ error: `${file} creates no App. Add: export const app = new App('name')` })
  let functions: BindingFunctionDef[]
  try {
    functions = berth.__berthRegistryOf(apps) as BindingFunctionDef[]
  } catch (e) {
    send({ error: oneLine(e) })
  }
  return send({ apps: apps.map((a) => a.name), functions, files: appFiles(file) })
}

/** `--name value` and `--name=value` flags; the rest are positional. */
function flags(args: string[], known: string[]): { positional: string[]; values: Map<string, string> } {
  const positional: string[] = []
  const values = new Map<string, string>()
  for (let i = 0; i < args.length; i++) {
    const a = args[i]
    if (!a.startsWith('--')) {
      positional.push(a)
      continue
    }
    const eq = a.indexOf('=')
    const name = eq === -1 ? a.slice(2) : a.slice(2, eq)
    if (!known.includes(name)) throw new Error(`unknown flag --${name}; known: ${known.map((k) => `--${k}`).join(', ')}`)
    const value = eq === -1 ? args[++i] : a.slice(eq + 1)
    if (value === undefined) throw new Error(`--${name} needs a value`)
    values.set(name, value)
  }
  return { positional, values }
}

async function serve(args: string[]): Promise<number> {
  if (args.includes('--help') || args.includes('-h')) {
    process.stdout.write(SERVE_HELP)
    return 0
  }
  // The one flag without a value.
  let reload = !args.includes('--no-reload')
  args = args.filter((a) => a !== '--no-reload')
  let parsed
  try {
    parsed = flags(args, [
      'host',
      'grpc-port',
      'http-port',
      'token',
      'max-message-bytes',
      'max-connections',
      'result-ttl',
      'broker',
      'log-format',
    ])
  } catch (e) {
    process.stderr.write(`berth serve: ${(e as Error).message}\n\n${SERVE_HELP}`)
    return 2
  }
  const { positional, values } = parsed
  if (positional.length > 1) {
    process.stderr.write(`berth serve: expected one file, got ${positional.join(' ')}.\n\n${SERVE_HELP}`)
    return 2
  }
  // Without a file: a server that serves what `berth deploy` brings it (README "Deploy to a running server").
  const file = positional.length === 1 ? resolve(positional[0]) : ''
  const broker = values.get('broker')
  if (file === '' && broker !== undefined) {
    process.stderr.write(`berth serve: --broker needs the app file its workers run: berth serve app.ts --broker ${broker}\n`)
    return 2
  }
  if (file === '') reload = false
  const logFormat = values.get('log-format') ?? 'text'
  if (!LOG_FORMATS.includes(logFormat)) {
    process.stderr.write(
      `berth serve: --log-format ${logFormat}: use text (the default: app/function#container | line) or json (one object per line)\n`,
    )
    return 2
  }
  setLogFormat(logFormat)
  // A front's pools are verified against the workers' definition (their streams carry its
  // fingerprint): a reloaded definition would be refused, so a front serves what it started with.
  if (broker !== undefined) reload = false
  // Containers inherit it: their volumes sync through the NATS server (README "Volume").
  if (broker !== undefined) process.env.BERTH_BROKER_URL = broker
  // Before the server listens there is nothing to drain: a signal ends the process.
  let drain = (): void => process.exit(signals.interrupted ? 130 : 0)
  const signals = stopSignals(0, () => drain())
  watchParent()
  // Containers inherit it: their calls to the app's functions (Cls.of(...) in a method) pass the token.
  const token = values.get('token')
  if (token) process.env.BERTH_TOKEN = token
  // A front's calls run on workers: no container waits here for them.
  if (broker === undefined) prestartContainer(file, logFormat)
  const port = Number(values.get('grpc-port') ?? 7450)
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    process.stderr.write(`berth serve: --grpc-port must be a port number (0 picks a free one)\n`)
    return 2
  }
  const maxMessageBytes = values.has('max-message-bytes') ? Number(values.get('max-message-bytes')) : undefined
  if (maxMessageBytes !== undefined && (!Number.isInteger(maxMessageBytes) || maxMessageBytes < 1024 || maxMessageBytes > 2 ** 31 - 1)) {
    process.stderr.write(`berth serve: --max-message-bytes must be a whole number of bytes from 1024 up, e.g. 67108864 for 64 MiB\n`)
    return 2
  }
  const maxConnections = values.has('max-connections') ? Number(values.get('max-connections')) : undefined
  if (maxConnections !== undefined && (!Number.isInteger(maxConnections) || maxConnections < 1 || maxConnections > 2 ** 31 - 1)) {
    process.stderr.write(
      `berth serve: --max-connections must be a whole number from 1 up, e.g. 16384 (raise the open-file limit, ulimit -n, to match)\n`,
    )
    return 2
  }
  const resultTtl = values.has('result-ttl') ? Number(values.get('result-ttl')) : undefined
  if (resultTtl !== undefined && !(resultTtl > 0 && resultTtl <= 7 * 86400)) {
    process.stderr.write(`berth serve: --result-ttl is how many seconds a spawned call's result is kept, from 1 up to 604800 (7 days)\n`)
    return 2
  }
  const httpPort = Number(values.get('http-port') ?? 7451)
  if (!Number.isInteger(httpPort) || httpPort < 0 || httpPort > 65535) {
    process.stderr.write(`berth serve: --http-port must be a port number (0 picks a free one)\n`)
    return 2
  }
  const apps = file === '' ? [] : await loadApps('serve', positional[0])
  if (typeof apps === 'number') return apps
  let server
  let served: BindingFunctionDef[]
  try {
    served = api().__berthRegistryOf(apps) as BindingFunctionDef[]
    server = binding().BindingServer.start(served, {
      host: values.get('host') ?? '127.0.0.1',
      grpcPort: port,
      httpPort,
      token,
      maxMessageBytes,
      maxConnections,
      resultTtlSeconds: resultTtl,
      containerCommand: containerCommand(),
      appFile: file,
      broker,
      logFormat,
      // Scheduled functions run under `berth serve` only (README "Schedules").
      schedules: true,
    })
  } catch (e) {
    say(process.stderr, (e as Error).message, 'error', true)
    return 2
  }
  let listed = endpoints(served, `http://${server.httpAddress}`)
  const names = apps.filter((a) => a.root() === a).map((a) => `'${a.name}'`)
  say(
    process.stdout,
    `berth: serving ${names.length > 0 ? names.join(', ') : 'no app yet'} on ${server.address} (gRPC berth.v1.Functions) ` +
      `and http://${server.httpAddress}/<app>/<function> (HTTP, JSON); Ctrl-C or SIGTERM stops\n` +
      (file === '' ? '  deploy apps to it: npx berth deploy app.ts (BERTH_SERVER=http://' + server.address + ')' : listed),
  )
  say(process.stdout, `berth: dashboard at http://${server.httpAddress}/dashboard${token ? '?token=<token>' : ''}`)
  const keepAlive = setInterval(() => {}, 1 << 30)
  signals.force = () => server.kill()
  const watcher = reload
    ? watchAndReload({
        file,
        shown: positional[0],
        apps: apps.map((a) => a.name),
        files: appFiles(file),
        load: () => loadInChild([process.execPath, resolve(__dirname, '../bin/berth.mjs'), '__registry', file]),
        replace: (names, functions) => {
          server.replaceApps(names, functions)
          // What is served, printed again when a function or endpoint came or went.
          const now = endpoints(functions, `http://${server.httpAddress}`)
          if (now === listed) return undefined
          listed = now
          return now
        },
        log: (line, level) => say(process.stderr, line, level),
      })
    : undefined
  // `berth deploy app.ts` to this server (src/cli/deploys.ts); a front's apps are its workers'.
  if (broker === undefined) {
    acceptDeploys(server, {
      berthRoot: resolve(__dirname, '..'),
      load: (f, cwd) => loadInChild([process.execPath, resolve(__dirname, '../bin/berth.mjs'), '__registry', f], cwd),
      deployed: (_, functions) => say(process.stdout, endpoints(functions, `http://${server.httpAddress}`)),
      log: (line, level) => say(process.stderr, line, level),
    })
  }
  await new Promise<void>((stop) => {
    drain = () => {
      say(process.stderr, DRAINING)
      stop()
    }
  })
  watcher?.close()
  await server.shutdown()
  signals.finished()
  clearInterval(keepAlive)
  // Stopped by Ctrl-C: 130, as an interrupted command exits; drained after SIGTERM, the normal
  // way to stop a server: 0.
  return signals.interrupted ? 130 : 0
}

/** One entry of what `berth serve` serves (src/define/served.ts registryOf). */
interface Served {
  app: string
  name: string
  methods: string[]
  isClass: boolean
  /** The web endpoints and web apps among `methods`, by index. */
  web?: { index: number; method: string; label?: string; requiresAuth: boolean; app?: string | null }[]
}

/** Past this many endpoints the banner stops listing; GET /<app> lists them all. */
const BANNER_ENDPOINTS = 20

/**
 * The banner's list of what is served: each function and class method with the gRPC function
 * reference (`berth.v1.FunctionRef`) and the HTTP path that call it.
 */
function endpoints(served: Served[], http: string, webOnly = false): string {
  const all = served.flatMap((d) =>
    (d.isClass ? d.methods : [undefined]).map((m, i) => {
      // A web endpoint is reached at its own path, with its own method (src/define/web.ts).
      const web = d.web?.find((w) => w.index === i)
      const segments = web?.label !== undefined ? [d.app, web.label] : [d.app, d.name, ...(m === undefined ? [] : [m])]
      return {
        app: d.app,
        label: m === undefined ? d.name : `${d.name}.${m}`,
        grpc: `{app: '${d.app}', function: '${d.name}'${m === undefined ? '' : `, method: '${m}'`}}`,
        // A web endpoint's whole URL, to open or curl as it is; the RPC routes' paths follow the
        // address in the line above.
        // A web app answers every path under its own, with any method.
        path:
          web?.app != null
            ? `ANY ${http}/${segments.map(encodeURIComponent).join('/')}/...`
            : `${web?.method ?? 'POST'} ${web ? http : ''}/${segments.map(encodeURIComponent).join('/')}`,
        web:
          web === undefined ? '' : `  ${web.app == null ? 'web endpoint' : `@${web.app}()`}${web.requiresAuth ? ', token required' : ''}`,
      }
    }),
  )
  const rows = webOnly ? all.filter((r) => r.web !== '') : all
  if (rows.length === 0) return '  nothing yet: add app.function(...) or an @app.cls() class with @method()s'
  const shown = rows.length > BANNER_ENDPOINTS ? rows.slice(0, BANNER_ENDPOINTS - 1) : rows
  const w1 = Math.max(...shown.map((r) => r.label.length))
  const w2 = Math.max(...shown.map((r) => r.grpc.length))
  const lines = shown.map((r) => `  ${r.label.padEnd(w1)}  gRPC ${r.grpc.padEnd(w2)}  ${r.path}${r.web}`)
  if (shown.length < rows.length) {
    const apps = [...new Set(rows.map((r) => r.app))]
    lines.push(
      `  … and ${rows.length - shown.length} more: GET ${apps.map((a) => `${http}/${encodeURIComponent(a)}`).join(', ')} lists them all`,
    )
  }
  return lines.join('\n')
}

/** A container process, started by `berth serve` with its identity in the environment. */
async function container(): Promise<number> {
  // Set, possibly empty (a `berth serve` without a file: its identity names a deployed one).
  if (process.env.BERTH_APP_FILE === undefined) {
    process.stderr.write('berth __container is started by `berth serve`, not by hand\n')
    return 2
  }
  // Started ahead of need (the control plane keeps one spare): load what every container
  // needs, then wait for who we are, set it in the environment, and only then load the user's
  // module, so that its top level and native libraries (CUDA_VISIBLE_DEVICES) see it.
  api()
  binding()
  await registerTsx()
  const identity = await readIdentity()
  if (identity === null) process.exit(0) // the control plane stopped before it needed us
  Object.assign(process.env, identity)
  // The identity may name another file and directory: a deployed app's (src/cli/deploys.ts).
  const file = process.env.BERTH_APP_FILE
  if (!file) {
    process.stderr.write('berth __container: no app file to load (its server serves none of its own, and none was deployed to it)\n')
    return 2
  }
  if (process.env.BERTH_CWD) process.chdir(process.env.BERTH_CWD)
  const apps = await loadApps('container', file)
  if (typeof apps === 'number') return apps
  const code = await api().__berthContainerMain(apps)
  // Stopped (or the control plane is gone): whatever user code still runs has no one to
  // answer to, so it must not hold the process open.
  process.exit(code)
}

/** One JSON line on stdin: the container's identity and environment; null at end of input. */
function readIdentity(): Promise<Record<string, string> | null> {
  return new Promise((resolveLine) => {
    let buf = ''
    const done = (v: Record<string, string> | null) => {
      process.stdin.off('data', onData).off('end', onEnd).off('error', onEnd)
      process.stdin.destroy()
      resolveLine(v)
    }
    const onData = (d: string) => {
      buf += d
      const nl = buf.indexOf('\n')
      if (nl !== -1) done(JSON.parse(buf.slice(0, nl)))
    }
    const onEnd = () => done(null)
    process.stdin.setEncoding('utf8').on('data', onData).on('end', onEnd).on('error', onEnd)
  })
}

const SECRET_HELP = `Usage: berth secret create <name> KEY=VALUE [KEY=VALUE...]
       berth secret list

Stores a named secret on this machine (BERTH_SECRETS_DIR, default ~/.berth/secrets, one file
per secret readable by its owner only). A function or class with \`secrets: ['<name>']\` gets
its keys as environment variables in each container process.
`

/** `berth help <command>`. */
const COMMAND_HELP: Record<string, string> = {
  run: RUN_HELP,
  serve: SERVE_HELP,
  worker: WORKER_HELP,
  app: APP_HELP,
  container: CONTAINER_HELP,
  logs: LOGS_HELP,
  build: BUILD_HELP,
  deploy: DEPLOY_HELP,
  secret: SECRET_HELP,
  volume: VOLUME_HELP,
}

async function secret(args: string[]): Promise<number> {
  const [sub, name, ...pairs] = args
  // Every subcommand answers --help, wherever it stands (`berth secret create --help`).
  if (sub === undefined || args.includes('--help') || args.includes('-h')) {
    process.stdout.write(SECRET_HELP)
    return sub === undefined ? 2 : 0
  }
  try {
    if (sub === 'create' && name !== undefined) {
      const file = createSecret(name, pairs)
      console.log(`berth: secret '${name}' (${pairs.length} key${pairs.length === 1 ? '' : 's'}) saved in ${file}`)
      return 0
    }
    if (sub === 'list' && name === undefined) {
      for (const s of listSecrets()) console.log(`${s.name}\t${s.keys.join(', ')}`)
      return 0
    }
  } catch (e) {
    process.stderr.write(`berth secret: ${(e as Error).message}\n`)
    return 2
  }
  process.stderr.write(`berth secret: expected 'create <name> KEY=VALUE...' or 'list'.\n\n${SECRET_HELP}`)
  return 2
}

async function build(args: string[]): Promise<number> {
  if (args.includes('--help') || args.includes('-h')) {
    process.stdout.write(BUILD_HELP)
    return 0
  }
  if (args.length !== 1) {
    process.stderr.write(`berth build: expected one file, got ${args.length === 0 ? 'none' : args.join(' ')}.\n\n${BUILD_HELP}`)
    return 2
  }
  const apps = await loadApps('build', args[0])
  if (typeof apps === 'number') return apps
  let hooks = 0
  try {
    for (const app of apps) {
      for (const r of await app.runBuilds()) {
        if (r.status === 'built') console.log(`${app.name}/${r.name}: built`)
        else if (r.status === 'cached') console.log(`${app.name}/${r.name}: cached, skipped`)
        if (r.status !== 'none') hooks++
      }
    }
  } catch (e) {
    process.stderr.write(`berth build: a @build hook failed:\n${formatError(e)}\n`)
    return 1
  }
  if (hooks === 0) console.log(`berth build: no @build hooks in ${args[0]}: nothing to build (a class method marked @build() runs here)`)
  return 0
}

/** `nats://host:port` (or tls://; the first of a comma-separated list): host:8222, NATS's monitoring port. */
function natsMonitoring(url: string): string | undefined {
  try {
    const u = new URL(url.split(',')[0].trim())
    if (!['nats:', 'tls:', 'ws:', 'wss:'].includes(u.protocol) || u.hostname === '') return undefined
    return `${u.hostname}:8222`
  } catch {
    return undefined
  }
}

async function deploy(args: string[]): Promise<number> {
  if (args.includes('--help') || args.includes('-h')) {
    process.stdout.write(DEPLOY_HELP)
    return 0
  }
  const fail = (message: string, status = 2): number => {
    process.stderr.write(`berth deploy: ${message}\n`)
    return status
  }
  let parsed
  try {
    parsed = flags(args, ['target', 'server', 'token', 'out', 'image', 'nats', 'nats-monitoring', 'nats-account'])
  } catch (e) {
    process.stderr.write(`berth deploy: ${(e as Error).message}\n\n${DEPLOY_HELP}`)
    return 2
  }
  const { positional, values } = parsed
  if (positional.length !== 1) {
    process.stderr.write(
      `berth deploy: expected one file, got ${positional.length === 0 ? 'none' : positional.join(' ')}.\n\n${DEPLOY_HELP}`,
    )
    return 2
  }
  const target = values.get('target') ?? 'server'
  if (!DEPLOY_TARGETS.includes(target)) return fail(`unknown target '${target}'; targets: ${DEPLOY_TARGETS.join(', ')}`)
  const only = (flags: string[]) => [...values.keys()].find((k) => k !== 'target' && !flags.includes(k))
  if (target === 'server') {
    const stray = only(['server', 'token'])
    if (stray !== undefined) return fail(`--${stray} is for --target kubernetes; a deploy to a running server takes --server and --token`)
    const file = resolve(positional[0])
    if (!existsSync(file)) return fail(`no file ${positional[0]}`)
    return deployToServer(file, values)
  }
  const stray = only(['out', 'image', 'nats', 'nats-monitoring', 'nats-account'])
  if (stray !== undefined) return fail(`--${stray} is for a deploy to a running server (no --target), not --target ${target}`)
  // Required: a placeholder would apply, and fail later in the cluster (ImagePullBackOff).
  const image = values.get('image')
  if (image === undefined || image.trim() === '') {
    return fail(
      '--image is required: the image with your app file, package.json and node_modules (berth included), ' +
        'e.g. --image registry.example.com/my-app:1.0 (README "Deploy to Kubernetes" has a Dockerfile)',
    )
  }
  const natsUrl = values.get('nats') ?? 'nats://nats:4222'
  const monitoring = values.get('nats-monitoring') ?? natsMonitoring(natsUrl)
  if (monitoring === undefined) {
    return fail(`--nats takes NATS's client URL, e.g. nats://nats.default.svc:4222; got ${natsUrl}`)
  }
  if (!/^[^\s/:]+:[0-9]+$/.test(monitoring)) {
    return fail(`--nats-monitoring takes host:port of NATS's monitoring port, e.g. nats.default.svc:8222; got ${monitoring}`)
  }
  const file = positional[0]
  if (!existsSync(file)) return fail(`no file ${file}`)
  // The path the containers load, relative to the image's working directory ('/' separated).
  const shown = relative(process.cwd(), resolve(file)).split(sep).join('/')
  if (shown.startsWith('../') || isAbsolute(shown)) {
    return fail(
      `${file} is outside this directory, so the image's working directory cannot hold it at that path: ` +
        'run berth deploy from the directory the image copies (its WORKDIR), naming the file from there',
    )
  }
  const apps = await loadApps('deploy', file)
  if (typeof apps === 'number') return apps
  // Loaded here: the YAML writer is for this command only.
  const { kubernetesPlan, toYaml, WRITTEN_BY } = await import('../deploy/kubernetes.ts')
  let plan
  try {
    plan = kubernetesPlan(
      apps,
      { file: shown, image, natsUrl, natsMonitoring: monitoring, natsAccount: values.get('nats-account') ?? '$G' },
      binding(),
    )
  } catch (e) {
    return fail((e as Error).message)
  }
  const out = values.get('out') ?? 'k8s'
  const written: string[] = []
  try {
    mkdirSync(out, { recursive: true })
    for (const f of plan.files) {
      writeFileSync(join(out, f.name), toYaml(f, shown))
      written.push(join(out, f.name))
    }
  } catch (e) {
    return fail(`cannot write the manifests to ${out}: ${(e as Error).message}`, 1)
  }
  for (const w of plan.warnings) process.stderr.write(`berth deploy: ${w}\n`)
  // Files an earlier run wrote for pools the app no longer has: kubectl apply would keep them.
  const names = new Set(plan.files.map((f) => f.name))
  for (const f of readdirSync(out)) {
    if (names.has(f) || !f.endsWith('.yaml')) continue
    let head = ''
    try {
      head = readFileSync(join(out, f), 'utf8').slice(0, WRITTEN_BY.length)
    } catch {}
    if (head === WRITTEN_BY) {
      process.stderr.write(
        `berth deploy: ${join(out, f)} was written by an earlier berth deploy for something the app no longer has: ` +
          `kubectl delete -f ${join(out, f)}, then delete the file\n`,
      )
    }
  }
  console.log(`berth deploy: wrote ${written.join(', ')}`)
  console.log(
    `Before kubectl apply -f ${out}: NATS with JetStream, KEDA 2.13 or later, and these Secrets:\n` +
      `  kubectl create secret generic ${plan.token} --from-literal=BERTH_TOKEN=<a token callers send>\n` +
      plan.secrets
        .map((s) => `  kubectl create secret generic ${s.name} --from-literal=KEY=VALUE ...   # berth secret '${s.berth}'`)
        .join('\n'),
  )
  return 0
}

/** `berth run`'s own flags; everything for what runs goes after `--`. */
const RUN_FLAGS = ['containers', 'params']

async function run(args: string[]): Promise<number> {
  const dash = args.indexOf('--')
  const own = dash === -1 ? args : args.slice(0, dash)
  const passed = dash === -1 ? [] : args.slice(dash + 1)
  if (own.includes('--help') || own.includes('-h')) {
    process.stdout.write(RUN_HELP)
    return 0
  }
  // A flag berth run does not know is most likely the function's argument, put before `--`:
  // say so with the command that works.
  let stray = -1
  for (let i = 0; i < own.length && stray === -1; i++) {
    if (!own[i].startsWith('--')) continue
    if (!RUN_FLAGS.includes(flagName(own[i]))) stray = i
    else if (!own[i].includes('=')) i++ // its value
  }
  if (stray !== -1) {
    const fixed = ['berth', 'run', ...own.slice(0, stray), '--', ...own.slice(stray), ...passed].map(shellWord).join(' ')
    process.stderr.write(
      `berth run: unknown flag ${own[stray].split('=')[0]}; known: ${RUN_FLAGS.map((k) => `--${k}`).join(', ')}. ` +
        `Arguments for the entrypoint or function go after \`--\`: ${fixed}\n`,
    )
    return 2
  }
  let parsed
  try {
    parsed = flags(own, RUN_FLAGS)
  } catch (e) {
    process.stderr.write(`berth run: ${(e as Error).message}\n\n${RUN_HELP}`)
    return 2
  }
  const containers = parsed.values.get('containers') ?? 'process'
  if (containers !== 'embedded' && containers !== 'process') {
    process.stderr.write(`berth run: --containers is 'process' (child processes, the default) or 'embedded' (in this process)\n`)
    return 2
  }
  if (parsed.positional.length !== 1) {
    process.stderr.write(
      `berth run: expected one file, got ${parsed.positional.length === 0 ? 'none' : parsed.positional.join(' ')}.\n\n${RUN_HELP}`,
    )
    return 2
  }
  const [spec] = parsed.positional
  const sep = spec.lastIndexOf('::')
  const file = sep === -1 ? spec : spec.slice(0, sep)
  const name = sep === -1 ? undefined : spec.slice(sep + 2)
  let params: Record<string, unknown> | undefined
  if (parsed.values.has('params')) {
    const text = parsed.values.get('params')!
    try {
      params = JSON.parse(text)
    } catch {
      // not JSON: said below
    }
    if (params === null || typeof params !== 'object' || Array.isArray(params)) {
      process.stderr.write(
        `berth run: --params takes a JSON object of the class's @parameter values, e.g. --params '{"variant":"large"}'; got ${text}\n`,
      )
      return 2
    }
  }

  // Until the app runs there is nothing to drain: a signal ends the process.
  let running: import('../define/app.ts').AppRun | undefined
  const signals = stopSignals(143, () => {
    if (running === undefined) process.exit(signals.interrupted ? 130 : 143)
    process.stderr.write(DRAINING)
    void running.stop()
  })
  watchParent()
  if (containers === 'process') prestartContainer(file)
  const apps = await loadApps('run', file)
  if (typeof apps === 'number') return apps
  const found = findTarget(apps, file, name, passed, params)
  if (typeof found === 'string') {
    process.stderr.write(`berth run: ${found}\n`)
    return 2
  }
  const { app, call } = found
  if (containers === 'process') app.sourceFile = resolve(file)
  let started: import('../define/app.ts').AppRun
  try {
    started = await app.run({ containers })
  } catch (e) {
    // A refusal to start (a missing secret, too few GPUs, a bad option) names its fix; the
    // stack would only bury it.
    process.stderr.write(`berth run: ${(e as Error)?.message ?? String(e)}\n`)
    return 2
  }
  running = started
  // Web endpoints are served while the entrypoint runs (with process containers): say where.
  const http = app.processServer?.httpAddress
  // Not from the served registry: that resolves secrets, which embedded containers never use.
  const hasWeb = () => apps.some((a) => a.servedDefs().some(({ def }) => def.methods.some((m) => m.web !== undefined)))
  if (containers === 'embedded' && hasWeb()) {
    process.stderr.write('berth run: web endpoints are served over HTTP with process containers (the default) or by berth serve\n')
  }
  if (http) {
    const web = endpoints(api().__berthRegistryOf(apps) as BindingFunctionDef[], `http://${http}`, true)
    process.stderr.write(`berth: web endpoints while this runs:\n${web}\n`)
  }
  // Embedded, the process exiting is the forced stop; with process containers they go first.
  signals.force = () => app.processServer?.kill()
  let code = 0
  try {
    const out = await call()
    if (typeof out === 'number' && Number.isInteger(out)) code = out
  } catch (e) {
    process.stderr.write(`${formatError(e)}\n`)
    code = 1
  } finally {
    await started.stop()
    signals.finished()
  }
  // One rule for both container modes, however many interrupts (README "CLI"): a run that got
  // a Ctrl-C exits 130, one stopped by SIGTERM 143 (128 + the signal), whatever the entrypoint
  // did meanwhile.
  return signals.interrupted ? 130 : signals.terminated ? 143 : code
}

type Apps = import('../define/app.ts').App[]

/** What `berth run file.ts[::name]` runs, its arguments checked; or why not, in one line. */
function findTarget(
  apps: Apps,
  file: string,
  name: string | undefined,
  passed: string[],
  params: Record<string, unknown> | undefined,
): { app: Apps[number]; call: () => Promise<unknown> } | string {
  const entrypoints = apps.flatMap((app) => app.entrypoints.map((fn) => ({ app, fn })))
  const runnable = runnableNames(apps)
  const noParams = (what: string) => `--params sets a class's @parameter values; ${what} is not a class method (run ${file}::Class.method)`
  if (name === undefined) {
    if (entrypoints.length !== 1) {
      return (
        `${file} has ${entrypoints.length} local entrypoints; ` +
        (entrypoints.length === 0 ? 'add app.localEntrypoint(async (argv) => { ... })' : 'name one') +
        (runnable.length ? ` or run one of: ${runnable.map((f) => `${file}::${f}`).join(', ')}` : '')
      )
    }
    if (params !== undefined) return noParams('the local entrypoint')
    const { app, fn } = entrypoints[0]
    return { app: app.root(), call: async () => fn(passed) }
  }
  const ep = entrypoints.find((e) => e.fn.name === name)
  if (ep) {
    if (params !== undefined) return noParams(`the entrypoint ${name}`)
    return { app: ep.app.root(), call: async () => ep.fn(passed) }
  }
  const fnApp = apps.find((a) => a.functions.has(name))
  if (fnApp) {
    if (params !== undefined) return noParams(`${name}, a function,`)
    const handle = fnApp.functions.get(name)!
    const args = functionArgs(handle.fn, name, passed, `${file}::${name}`)
    if (typeof args === 'string') return args
    return { app: fnApp.root(), call: () => printCall(handle, isGeneratorFunction(handle.fn), args) }
  }
  const dot = name.indexOf('.')
  const className = dot === -1 ? name : name.slice(0, dot)
  const clsApp = apps.find((a) => a.classes.has(className))
  if (clsApp) {
    const def = clsApp.classes.get(className)!
    const methods = methodNames(def)
    const methodName = dot === -1 ? undefined : name.slice(dot + 1)
    if (methodName === undefined || !methods.includes(methodName)) {
      const list = methods.map((m) => `${file}::${className}.${m}`).join(', ') || `none (mark one @method())`
      if (methodName === undefined) return `${className} is a class: run one of its methods: ${list}`
      const guess = closest(methodName, methods)
      return `${className} has no method '${methodName}'.${guess ? ` Did you mean '${guess}'?` : ''} Its methods: ${list}`
    }
    let cls
    try {
      cls = api().Cls.of(def.cls, params) as unknown as Record<string, Callable>
    } catch (e) {
      return `${(e as Error).message} (class parameters come from --params '{"name": value}')`
    }
    const args = functionArgs(def.cls.prototype[methodName], `${className}.${methodName}`, passed, `${file}::${name}`)
    if (typeof args === 'string') return args
    const handle = cls[methodName]
    return { app: clsApp.root(), call: () => printCall(handle, isGeneratorFunction(def.cls.prototype[methodName]), args) }
  }
  const guess = closest(name, runnable)
  return (
    `no entrypoint, function or class method named '${name}' in ${file}.${guess ? ` Did you mean '${guess}'?` : ''} ` +
    `Known: ${runnable.join(', ') || 'none'}`
  )
}

/** What `::name` can name: entrypoints, functions, and each class's methods as `Class.method`. */
function runnableNames(apps: Apps): string[] {
  return apps.flatMap((a) => [
    ...a.entrypoints.map((fn) => fn.name).filter(Boolean),
    ...a.functions.keys(),
    ...[...a.classes.values()].flatMap((c) => methodNames(c).map((m) => `${c.name}.${m}`)),
  ])
}

function methodNames(def: { classMeta: { methods: { name: string }[] } }): string[] {
  try {
    return def.classMeta.methods.map((m) => m.name)
  } catch {
    return [] // no @method(): the class says so when it runs
  }
}

interface Callable {
  remote(...a: unknown[]): Promise<unknown>
  remoteGen(...a: unknown[]): AsyncIterable<unknown>
}

/** Prints a call's result, or a generator's items, one line each as they come. */
async function printCall(handle: Callable, gen: boolean, args: unknown[]): Promise<void> {
  if (!gen) return printValue(await handle.remote(...args))
  for await (const item of handle.remoteGen(...args)) printValue(item)
}

function printValue(out: unknown): void {
  if (out !== undefined) console.log(typeof out === 'string' ? out : JSON.stringify(out, jsonReplacer))
}

function flagName(a: string): string {
  if (!a.startsWith('--')) return ''
  const eq = a.indexOf('=')
  return eq === -1 ? a.slice(2) : a.slice(2, eq)
}

/** A word as a POSIX shell reads it back. */
function shellWord(w: string): string {
  return /^[\w@%+=:,./-]+$/.test(w) ? w : `'${w.replace(/'/g, `'\\''`)}'`
}

function formatError(e: unknown): string {
  if (e instanceof Error) {
    const remote = (e as { remoteStack?: string }).remoteStack
    return (e.stack ?? `${e.name}: ${e.message}`) + (remote ? `\nRemote stack:\n${remote}` : '')
  }
  return String(e)
}

function jsonReplacer(_k: string, v: unknown): unknown {
  return typeof v === 'bigint' ? v.toString() : v instanceof Map ? Object.fromEntries(v) : v instanceof Set ? [...v] : v
}

/**
 * Parameter names, read from the function's source (as Modal reads Python signatures): a
 * rest parameter as `...xs`, a destructured one as `argN` (it can only be passed in order).
 */
function paramNames(fn: Function): string[] {
  let src: string
  try {
    src = Function.prototype.toString.call(fn)
  } catch {
    return []
  }
  const bare = /^(?:async\s+)?([A-Za-z_$][\w$]*)\s*=>/.exec(src)
  if (bare) return [bare[1]]
  const open = src.indexOf('(')
  if (open === -1) return []
  const raw: string[] = []
  let depth = 0
  let cur = ''
  for (let i = open; i < src.length; i++) {
    const c = src[i]
    if (c === '"' || c === "'" || c === '`') {
      const end = skipString(src, i)
      cur += src.slice(i, end + 1)
      i = end
      continue
    }
    if (c === '(' || c === '[' || c === '{') {
      if (++depth === 1) continue
    } else if (c === ')' || c === ']' || c === '}') {
      if (--depth === 0) {
        raw.push(cur)
        break
      }
    } else if (c === ',' && depth === 1) {
      raw.push(cur)
      cur = ''
      continue
    }
    cur += c
  }
  return raw
    .map((p) =>
      p
        .replace(/\/\*[^]*?\*\//g, '')
        .replace(/\/\/.*$/gm, '')
        .trim(),
    )
    .filter((p) => p.length > 0)
    .map((p, i) => {
      const m = /^(\.\.\.)?\s*([A-Za-z_$][\w$]*)/.exec(p)
      return m ? `${m[1] ?? ''}${m[2]}` : `arg${i + 1}`
    })
}

function parseValue(s: string): unknown {
  try {
    return JSON.parse(s)
  } catch {
    return s
  }
}

/**
 * The arguments after `--` for a function or method: `--name value` pairs and positional
 * values, JSON where they parse. Checked as a call is (src/shared/arity.ts: as many as it takes, no
 * unknown names) before anything starts; returns the one-line reason when they do not fit.
 */
function functionArgs(fn: Function, label: string, argv: string[], target: string): unknown[] | string {
  const params = paramNames(fn)
  const names = params.map((p) => p.replace(/^\.\.\./, ''))
  const restAt = params.findIndex((p) => p.startsWith('...'))
  const arity = arityOf(fn)
  const listed = params.length ? params.join(', ') : 'none'
  const example = (n: number) =>
    `berth run ${shellWord(target)} -- ${names
      .slice(0, n)
      .map((p) => `--${p} <${p}>`)
      .join(' ')}` +
    (n > 0
      ? ` (or in order: -- ${names
          .slice(0, n)
          .map((p) => `<${p}>`)
          .join(' ')})`
      : '')
  const named = new Map<number, unknown>()
  const positional: unknown[] = []
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    if (!a.startsWith('--') || a.length === 2) {
      positional.push(parseValue(a))
      continue
    }
    const eq = a.indexOf('=')
    const key = eq === -1 ? a.slice(2) : a.slice(2, eq)
    const at = names.indexOf(key)
    if (at === -1 || at === restAt) {
      const guess = closest(
        key,
        names.filter((_, j) => j !== restAt),
      )
      return (
        `${label} has no parameter '${key}'.${guess ? ` Did you mean --${guess}?` : ''} Its parameters: ${listed}. ` +
        `Pass arguments after \`--\` by name or in order: ${example(Math.max(arity.min, 1))}`
      )
    }
    if (named.has(at)) return `${label}: --${key} is given twice`
    let value: unknown = true // `--flag` alone
    if (eq !== -1) value = parseValue(a.slice(eq + 1))
    else if (i + 1 < argv.length && !argv[i + 1].startsWith('--')) value = parseValue(argv[++i])
    named.set(at, value)
  }
  const out: unknown[] = [...positional]
  for (const [at, value] of named) {
    if (at < positional.length) return `${label}: '${names[at]}' is given both in order (argument ${at + 1}) and by name (--${names[at]})`
    while (out.length < at) out.push(undefined) // a parameter left out before a named one: its default
    out[at] = value
  }
  const missing = names.findIndex((_, j) => j < arity.min && j >= positional.length && !named.has(j))
  if (missing !== -1 && missing < out.length) {
    return `${label} needs '${names[missing]}' (it has no default). Pass it after \`--\`: ${example(arity.min)}`
  }
  if (out.length < arity.min) {
    return (
      `${label} takes ${arityText(arity)} (${listed}); got ${out.length}. ` +
      `Pass ${arity.min === 1 ? 'it' : 'them'} after \`--\`, by name or in order: ${example(arity.min)}`
    )
  }
  if (arity.max !== undefined && out.length > arity.max) {
    return `${label} takes ${arityText(arity)} (${listed}); got ${out.length}: ${argv.map(shellWord).join(' ')}`
  }
  return out
}
