// `berth app list|stop`, `berth container list`, `berth logs`: questions to a running `berth
// serve` (README "CLI"). They go where callers' calls go, BERTH_SERVER or --server (default
// http://127.0.0.1:7450, the gRPC port), with BERTH_TOKEN or --token, as plain HTTP/2 requests
// to the server's JSON routes under /_berth/ (crates/berth-server/src/http/admin.rs), which the
// gRPC port serves beside berth.v1.Functions (and the HTTP port too, for curl).
import { AdminError, answerOf, ask, DEFAULT_SERVER, request } from '../shared/admin-request.ts'

export { DEFAULT_SERVER }

export const APP_HELP = `Usage: berth app list [--server URL] [--token T]
       berth app stop <app> [--server URL] [--token T]

  list   the apps the server serves: each function and class, its state (serving, or
         stopping after \`berth app stop\`), how many containers it has, and its app's tags
         (new App(name, { tags })) when an app has some
  stop   stops an app: it takes no new calls (callers are told it was stopped), its inputs
         in flight finish, its containers run their @exit hooks, then it is gone; returns then

The server is BERTH_SERVER (or --server), default ${DEFAULT_SERVER}, as for callers; its token
BERTH_TOKEN (or --token).
`

export const CONTAINER_HELP = `Usage: berth container list [--server URL] [--token T]

Lists the server's containers: id, process id, app, function, state (starting, serving,
draining, exiting), inputs in flight and uptime. The server is BERTH_SERVER (or --server),
default ${DEFAULT_SERVER}; its token BERTH_TOKEN (or --token).
`

export const LOGS_HELP = `Usage: berth logs <app> [-f] [--lines N] [--json] [--server URL] [--token T]

Prints the recent lines of the app's containers (the last 100, or --lines N) as \`berth serve\`
printed them (app/function#container | line), from the lines the server keeps (the last 10,000
of all its containers, 8 MiB at most). -f (--follow) then prints each new line as it comes,
until Ctrl-C. --json prints each line as the JSON object of \`berth serve --log-format json\`.
The server is BERTH_SERVER (or --server), default ${DEFAULT_SERVER}; its token BERTH_TOKEN
(or --token).
`

/** The flags these commands share, and the rest. */
function parse(
  args: string[],
  flags: string[],
  switches: string[],
): { positional: string[]; values: Map<string, string>; on: Set<string> } {
  const positional: string[] = []
  const values = new Map<string, string>()
  const on = new Set<string>()
  for (let i = 0; i < args.length; i++) {
    const a = args[i]
    if (switches.includes(a)) {
      on.add(a)
      continue
    }
    if (!a.startsWith('--')) {
      positional.push(a)
      continue
    }
    const eq = a.indexOf('=')
    const name = eq === -1 ? a.slice(2) : a.slice(2, eq)
    if (!flags.includes(name)) throw new Error(`unknown flag --${name}; known: ${[...flags.map((f) => `--${f}`), ...switches].join(', ')}`)
    const value = eq === -1 ? args[++i] : a.slice(eq + 1)
    if (value === undefined || value === '') throw new Error(`--${name} needs a value`)
    values.set(name, value)
  }
  return { positional, values, on }
}

function table(rows: string[][]): string {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)))
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]))).join('  ')).join('\n')
}

function uptime(s: number | null): string {
  if (s === null || s === undefined) return '-'
  if (s < 60) return `${Math.floor(s)}s`
  if (s < 3600) return `${Math.floor(s / 60)}m${Math.floor(s % 60)}s`
  return `${Math.floor(s / 3600)}h${Math.floor((s % 3600) / 60)}m`
}

/**
 * `berth deploy app.ts` to a running `berth serve` (README "Deploy to a running server"): the
 * server loads the file, a path on its machine, and serves its apps beside the ones it serves,
 * replacing those of the same names (their containers finish what they took, then drain). The
 * command returns once the server serves them; they stay up after it.
 */
export async function deployToServer(file: string, values: Map<string, string>): Promise<number> {
  const server = values.get('server') ?? (process.env.BERTH_SERVER || DEFAULT_SERVER)
  const token = values.get('token') ?? process.env.BERTH_TOKEN
  const query = `file=${encodeURIComponent(file)}&cwd=${encodeURIComponent(process.cwd())}`
  try {
    const done = await ask(server, token, 'POST', `/_berth/deploy?${query}`)
    for (const app of done.apps as { app: string; functions: string[]; replaced: boolean }[]) {
      const how = app.replaced ? ' (it replaces the version served before, whose containers drain)' : ''
      console.log(`berth: deployed '${app.app}' to ${server}: ${app.functions.join(', ') || 'nothing to serve'}${how}`)
    }
    return 0
  } catch (e) {
    if (!(e instanceof AdminError)) throw e
    process.stderr.write(`${e.message.replace(/^berth: /, 'berth deploy: ')}\n`)
    return 1
  }
}

/** Runs `berth app|container|logs ...`; resolves with the exit status. */
export async function admin(cmd: 'app' | 'container' | 'logs', args: string[]): Promise<number> {
  const help = cmd === 'app' ? APP_HELP : cmd === 'container' ? CONTAINER_HELP : LOGS_HELP
  if (args.includes('--help') || args.includes('-h')) {
    process.stdout.write(help)
    return 0
  }
  let parsed
  try {
    parsed = parse(
      args,
      cmd === 'logs' ? ['server', 'token', 'lines'] : ['server', 'token'],
      cmd === 'logs' ? ['-f', '--follow', '--json'] : [],
    )
  } catch (e) {
    process.stderr.write(`berth ${cmd}: ${(e as Error).message}\n\n${help}`)
    return 2
  }
  const { positional, values, on } = parsed
  const server = values.get('server') ?? (process.env.BERTH_SERVER || DEFAULT_SERVER)
  const token = values.get('token') ?? process.env.BERTH_TOKEN
  const usage = (what: string) => {
    process.stderr.write(`berth ${cmd}: ${what}\n\n${help}`)
    return 2
  }
  try {
    if (cmd === 'app' && positional[0] === 'list' && positional.length === 1) {
      const { apps } = await ask(server, token, 'GET', '/_berth/apps')
      if (apps.length === 0) {
        console.log('no apps are served')
        return 0
      }
      // Tags (new App(name, { tags })) in a column of their own when an app has some.
      const tagsOf = (a: { tags?: Record<string, string> }) =>
        Object.entries(a.tags ?? {})
          .map(([k, v]) => `${k}=${v}`)
          .join(',')
      const tagged = apps.some((a: { tags?: Record<string, string> }) => tagsOf(a) !== '')
      const rows = [['APP', 'STATE', 'FUNCTION', 'METHODS', 'CONTAINERS', ...(tagged ? ['TAGS'] : [])]]
      for (const a of apps)
        for (const f of a.functions)
          rows.push([
            a.app,
            a.state,
            f.function,
            f.methods.length ? f.methods.join(',') : '-',
            String(f.containers),
            ...(tagged ? [tagsOf(a) || '-'] : []),
          ])
      console.log(table(rows))
      return 0
    }
    if (cmd === 'app' && positional[0] === 'stop') {
      if (positional.length !== 2) return usage('name the app to stop: berth app stop <app>')
      const app = positional[1]
      process.stderr.write(`berth: stopping '${app}': inputs in flight finish, then its containers run their @exit hooks\n`)
      await ask(server, token, 'POST', `/_berth/apps/${encodeURIComponent(app)}/stop`)
      console.log(`berth: app '${app}' stopped`)
      return 0
    }
    if (cmd === 'app')
      return usage(
        positional.length === 0 ? 'say what to do: list or stop <app>' : `unknown: ${positional.join(' ')}; use list or stop <app>`,
      )
    if (cmd === 'container') {
      if (positional[0] !== 'list' || positional.length !== 1) return usage('the container command is: berth container list')
      const { containers } = await ask(server, token, 'GET', '/_berth/containers')
      if (containers.length === 0) {
        console.log('no containers are running')
        return 0
      }
      const rows = [['CONTAINER', 'PID', 'APP', 'FUNCTION', 'STATE', 'IN-FLIGHT', 'UPTIME']]
      for (const c of containers)
        rows.push([
          String(c.container),
          c.pid === null ? '-' : String(c.pid),
          c.app,
          c.function,
          c.state,
          String(c.inFlight),
          uptime(c.uptimeSeconds),
        ])
      console.log(table(rows))
      return 0
    }
    // logs
    if (positional.length !== 1) return usage('name the app: berth logs <app> [-f]')
    const lines = values.get('lines')
    if (lines !== undefined && !/^\d+$/.test(lines)) return usage(`--lines ${lines}: a whole number of lines, e.g. --lines 500`)
    const follow = on.has('-f') || on.has('--follow')
    const json = on.has('--json')
    const query = `app=${encodeURIComponent(positional[0])}${lines === undefined ? '' : `&lines=${lines}`}${follow ? '&follow=1' : ''}`
    const print = (line: string) => {
      if (line === '') return
      if (json) return void process.stdout.write(`${line}\n`)
      const l = JSON.parse(line)
      const text = l.stream === 'berth' ? l.message : `${l.app}/${l.function}#${l.container} | ${l.message}`
      ;(l.stream === 'stdout' ? process.stdout : process.stderr).write(`${text}\n`)
    }
    const { status, body } = await request(server, token, 'GET', `/_berth/logs?${query}`, print)
    if (status !== 200) answerOf(status, body)
    return 0
  } catch (e) {
    if (!(e instanceof AdminError)) throw e
    process.stderr.write(`${e.message}\n`)
    return 1
  }
}
