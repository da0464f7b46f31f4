// The `berth` command. It loads the user's TypeScript with tsx and drives the app through the
// same module instance the user's file imports (dist/index.cjs), never a bundled copy.
import { createRequire } from 'node:module'
import { resolve } from 'node:path'
import { pathToFileURL } from 'node:url'

type Api = typeof import('./index.ts') & { allApps(): import('./app.ts').App[] }

const HELP = `berth: run TypeScript classes the way Modal runs Python

Usage:
  berth run <file.ts>[::name] [-- args...]   run the file's local entrypoint (or one function)
  berth build <file.ts>                      run @build hooks not yet cached
  berth --help | berth <command> --help

Commands:
  run    Start the app, run its localEntrypoint with the args after \`--\`, stop the app
         (exit hooks run) and exit with the entrypoint's status (a returned number, 0, or 1
         when it throws). With ::name, run that entrypoint or function; a function gets
         its arguments from \`--name value\` pairs or positional values (JSON where it parses).
  build  Run the @build hooks of every class in the file, unless a marker in the cache
         (BERTH_CACHE_DIR, default node_modules/.cache/berth) says an earlier build of the same
         class source already did. Containers skip cached builds the same way.
`

const BUILD_HELP = `Usage: berth build <file.ts>

Runs each class's @build hooks once and records a marker keyed by the class name and a hash of
its source in BERTH_CACHE_DIR (default node_modules/.cache/berth). Edit the class to rebuild.
`

const RUN_HELP = `Usage: berth run <file.ts>[::name] [-- args...]

  <file.ts>    a module that creates an App (new App(...)) and registers
               app.localEntrypoint(...), app.function(...) or @app.cls() classes
  ::name       the entrypoint or function to run (default: the only local entrypoint)
  -- args      passed to the entrypoint as argv, or as the function's arguments

Containers run inside this process. Ctrl-C stops the app gracefully (in-flight inputs finish,
@exit hooks run); a second Ctrl-C stops at once.
`

export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv
  if (cmd === undefined || cmd === '--help' || cmd === '-h' || cmd === 'help') {
    process.stdout.write(HELP)
    return cmd === undefined ? 1 : 0
  }
  if (cmd === 'run') return run(rest)
  if (cmd === 'build') return build(rest)
  process.stderr.write(`berth: unknown command '${cmd}'.\n\n${HELP}`)
  return 2
}

function api(): Api {
  return createRequire(__filename)('./index.cjs')
}

/** Loads the user's file with tsx; returns its apps, or an exit status after printing why not. */
async function loadApps(cmd: string, file: string): Promise<import('./app.ts').App[] | number> {
  const berth = api()
  // A global registration, not tsImport: tsImport namespaces every module it loads, and the
  // user's `import 'berth'` must reach this very instance.
  // Both hooks, as the tsx CLI does: a .ts file in a "commonjs" package goes through require().
  const { register } = await import('tsx/esm/api')
  register()
  createRequire(__filename)('tsx/cjs/api').register()
  try {
    await import(pathToFileURL(resolve(file)).href)
  } catch (e) {
    process.stderr.write(`berth ${cmd}: could not load ${file}:\n${(e as Error)?.stack ?? String(e)}\n`)
    return 1
  }
  const apps = berth.allApps()
  if (apps.length === 0) {
    process.stderr.write(`berth ${cmd}: ${file} creates no App. Add: export const app = new App('name')\n`)
    return 2
  }
  return apps
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
  try {
    for (const app of apps) {
      for (const r of await app.runBuilds()) {
        if (r.status === 'built') console.log(`${app.name}/${r.name}: built`)
        else if (r.status === 'cached') console.log(`${app.name}/${r.name}: cached, skipped`)
      }
    }
  } catch (e) {
    process.stderr.write(`berth build: a @build hook failed:\n${formatError(e)}\n`)
    return 1
  }
  return 0
}

async function run(args: string[]): Promise<number> {
  const dash = args.indexOf('--')
  const own = dash === -1 ? args : args.slice(0, dash)
  const passed = dash === -1 ? [] : args.slice(dash + 1)
  if (own.includes('--help') || own.includes('-h')) {
    process.stdout.write(RUN_HELP)
    return 0
  }
  if (own.length !== 1) {
    process.stderr.write(`berth run: expected one file, got ${own.length === 0 ? 'none' : own.join(' ')}.\n\n${RUN_HELP}`)
    return 2
  }
  const [spec] = own
  const sep = spec.lastIndexOf('::')
  const file = sep === -1 ? spec : spec.slice(0, sep)
  const name = sep === -1 ? undefined : spec.slice(sep + 2)

  const apps = await loadApps('run', file)
  if (typeof apps === 'number') return apps
  let target: { app: (typeof apps)[number]; call: () => Promise<unknown> } | undefined
  const entrypoints = apps.flatMap((app) => app.entrypoints.map((fn) => ({ app, fn })))
  if (name === undefined) {
    if (entrypoints.length !== 1) {
      const fns = apps.flatMap((a) => [...a.functions.keys()])
      process.stderr.write(
        `berth run: ${file} has ${entrypoints.length} local entrypoints; ` +
          (entrypoints.length === 0 ? 'add app.localEntrypoint(async (argv) => { ... })' : 'name one') +
          (fns.length ? ` or run a function: ${fns.map((f) => `${file}::${f}`).join(', ')}` : '') + '\n',
      )
      return 2
    }
    const { app, fn } = entrypoints[0]
    target = { app, call: async () => fn(passed) }
  } else {
    const ep = entrypoints.find((e) => e.fn.name === name)
    const fnApp = apps.find((a) => a.functions.has(name))
    if (ep) {
      target = { app: ep.app, call: async () => ep.fn(passed) }
    } else if (fnApp) {
      const handle = fnApp.functions.get(name)!
      const callArgs = parseFunctionArgs(handle.fn, passed)
      target = {
        app: fnApp,
        call: async () => {
          const out = await handle.remote(...callArgs)
          if (out !== undefined) console.log(typeof out === 'string' ? out : JSON.stringify(out, jsonReplacer))
        },
      }
    } else {
      const known = [...entrypoints.map((e) => e.fn.name).filter(Boolean), ...apps.flatMap((a) => [...a.functions.keys()])]
      process.stderr.write(`berth run: no entrypoint or function named '${name}' in ${file}. Known: ${known.join(', ') || 'none'}\n`)
      return 2
    }
  }

  const { app, call } = target
  const running = await app.run()
  let interrupts = 0
  const onSignal = () => {
    interrupts++
    if (interrupts === 1) {
      process.stderr.write('berth: stopping (in-flight inputs finish, exit hooks run); interrupt again to stop now\n')
      void running.stop()
    } else {
      process.stderr.write('berth: stopping now\n')
      process.exit(130)
    }
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)
  let code = 0
  try {
    const out = await call()
    if (typeof out === 'number' && Number.isInteger(out)) code = out
  } catch (e) {
    process.stderr.write(`${formatError(e)}\n`)
    code = 1
  } finally {
    await running.stop()
    process.off('SIGINT', onSignal)
    process.off('SIGTERM', onSignal)
  }
  return interrupts > 0 && code === 0 ? 130 : code
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

/** Parameter names, read from the function's source (as Modal reads Python signatures). */
function paramNames(fn: Function): string[] {
  const src = fn.toString()
  const open = src.indexOf('(')
  const close = src.indexOf(')', open)
  if (open === -1 || close === -1) return []
  return src
    .slice(open + 1, close)
    .split(',')
    .map((p) => p.replace(/[=:].*$/s, '').replace(/\/\*.*?\*\//g, '').trim())
    .filter((p) => /^[A-Za-z_$][\w$]*$/.test(p))
}

function parseValue(s: string): unknown {
  try {
    return JSON.parse(s)
  } catch {
    return s
  }
}

function parseFunctionArgs(fn: Function, argv: string[]): unknown[] {
  const names = paramNames(fn)
  const named = new Map<string, unknown>()
  const positional: unknown[] = []
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    if (a.startsWith('--')) {
      const eq = a.indexOf('=')
      const key = eq === -1 ? a.slice(2) : a.slice(2, eq)
      const val = eq === -1 ? argv[++i] : a.slice(eq + 1)
      if (!names.includes(key)) {
        throw new Error(`berth run: ${fn.name} has no parameter '${key}'; its parameters: ${names.join(', ') || 'none'}`)
      }
      named.set(key, val === undefined ? true : parseValue(val))
    } else {
      positional.push(parseValue(a))
    }
  }
  const out = [...positional]
  names.forEach((n, i) => {
    if (named.has(n)) out[i] = named.get(n)
  })
  return out
}
