// `berth worker <file> --broker nats://…`: runs containers for the app's functions and classes,
// taking their inputs from NATS JetStream, where `berth serve <file> --broker …` fronts put them
// (ARCHITECTURE.md, "A broker"). The command's helpers (loading the file, signals) are main.ts's,
// passed in: main.ts imports this module, not the other way round.
import { resolve } from 'node:path'

import { containerCommand } from '../command.ts'
import { binding, type BindingFunctionDef } from '../native.ts'
import { say, setLogFormat } from './say.ts'

export const WORKER_HELP = `Usage: berth worker <file.ts> --broker nats://host:4222 [--app NAME] [--function NAME]...
                    [--log-format text|json]

Runs containers for the app's functions and classes (all of them, or each --function named;
--app picks one app of a file that defines several) and takes their inputs from the NATS
JetStream server at --broker, where \`berth serve <file.ts> --broker …\` fronts publish the
calls they get. Start any number, on any machines that reach the NATS server: each pulls what
its containers have room for and a read ahead (one round of that room, more while inputs
finish fast), sends each result to the caller's front and acknowledges the input once that
front confirmed it. An input whose worker dies is run by another once its ack deadline (the
function's timeout plus 5 s) passes. Generators and web endpoints do not go
through the broker yet: the front runs them.

Container output is line-prefixed (app/function#container | line), or one JSON object per line
with --log-format json, as under \`berth serve\` (berth serve --help).

SIGTERM or Ctrl-C stops pulling, gives back at once the inputs it read ahead and had not
started, lets the running ones finish, runs exit hooks and exits; a
second Ctrl-C stops at once (inputs it held go to other workers after their ack deadline).
`

export interface WorkerDeps {
  loadApps(cmd: string, file: string): Promise<{ name: string }[] | number>
  registryOf(apps: { name: string }[]): BindingFunctionDef[]
  stopSignals(sigtermStatus: number, drain: () => void): { readonly interrupted: boolean; force: () => void; finished(): void }
  watchParent(): void
}

/** Its flags: `--function` may come several times. */
function parse(args: string[]): { file: string[]; broker?: string; app?: string; functions: string[]; logFormat?: string } {
  const out: { file: string[]; broker?: string; app?: string; functions: string[]; logFormat?: string } = { file: [], functions: [] }
  for (let i = 0; i < args.length; i++) {
    const a = args[i]
    if (!a.startsWith('--')) {
      out.file.push(a)
      continue
    }
    const eq = a.indexOf('=')
    const name = eq === -1 ? a.slice(2) : a.slice(2, eq)
    const value = eq === -1 ? args[++i] : a.slice(eq + 1)
    if (!['broker', 'app', 'function', 'log-format'].includes(name))
      throw new Error(`unknown flag --${name}; known: --broker, --app, --function, --log-format`)
    if (value === undefined || value === '') throw new Error(`--${name} needs a value`)
    if (name === 'function') out.functions.push(value)
    else if (name === 'broker') out.broker = value
    else if (name === 'log-format') {
      if (value !== 'text' && value !== 'json')
        throw new Error(`--log-format ${value}: use text (the default: app/function#container | line) or json (one object per line)`)
      out.logFormat = value
    } else out.app = value
  }
  return out
}

export async function worker(args: string[], deps: WorkerDeps): Promise<number> {
  if (args.includes('--help') || args.includes('-h')) {
    process.stdout.write(WORKER_HELP)
    return 0
  }
  let parsed
  try {
    parsed = parse(args)
  } catch (e) {
    process.stderr.write(`berth worker: ${(e as Error).message}\n\n${WORKER_HELP}`)
    return 2
  }
  if (parsed.file.length !== 1) {
    process.stderr.write(
      `berth worker: expected one file, got ${parsed.file.length === 0 ? 'none' : parsed.file.join(' ')}.\n\n${WORKER_HELP}`,
    )
    return 2
  }
  if (parsed.broker === undefined) {
    process.stderr.write(`berth worker: --broker is required: the NATS server the fronts publish to, e.g. --broker nats://127.0.0.1:4222\n`)
    return 2
  }
  setLogFormat(parsed.logFormat ?? 'text')
  // Containers inherit it: their volumes sync through the NATS server (README "Volume").
  process.env.BERTH_BROKER_URL = parsed.broker
  const file = resolve(parsed.file[0])
  let drain = (): void => process.exit(signals.interrupted ? 130 : 0)
  const signals = deps.stopSignals(0, () => drain())
  deps.watchParent()
  const loaded = await deps.loadApps('worker', parsed.file[0])
  if (typeof loaded === 'number') return loaded
  let apps = loaded
  if (parsed.app !== undefined) {
    apps = loaded.filter((a) => a.name === parsed.app)
    if (apps.length === 0) {
      process.stderr.write(
        `berth worker: --app ${parsed.app}: ${parsed.file[0]} has no such app; it has: ${loaded.map((a) => a.name).join(', ')}\n`,
      )
      return 2
    }
  }
  let running
  try {
    running = binding().BindingWorker.start(deps.registryOf(apps), {
      broker: parsed.broker,
      functions: parsed.functions,
      containerCommand: containerCommand(),
      appFile: file,
      logFormat: parsed.logFormat ?? 'text',
    })
  } catch (e) {
    say(process.stderr, (e as Error).message, 'error', true)
    return 2
  }
  say(
    process.stdout,
    `berth: worker for ${apps.map((a) => `'${a.name}'`).join(', ')} pulling from ${running.pools.join(', ')} on ${parsed.broker}; Ctrl-C or SIGTERM stops`,
  )
  const keepAlive = setInterval(() => {}, 1 << 30)
  signals.force = () => running.kill()
  await new Promise<void>((stop) => {
    drain = () => {
      say(process.stderr, 'berth: stopping (inputs taken finish, exit hooks run); interrupt again to stop now')
      stop()
    }
  })
  await running.shutdown()
  signals.finished()
  clearInterval(keepAlive)
  return signals.interrupted ? 130 : 0
}
