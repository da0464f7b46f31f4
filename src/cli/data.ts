// `berth dict get|put|items|len|clear|delete` and `berth queue put|get|len|clear|delete`: a
// running server's named dicts and queues (README "Dict", "Queue"), through the same classes
// callers use (the package's runtime, handed in by main.ts: the CLI bundle carries no copy of the
// call layer). The server is BERTH_SERVER or --server, with BERTH_TOKEN or --token.
import { DEFAULT_SERVER } from './admin.ts'

type DictApi = { Dict: typeof import('../data/dict.ts').Dict }
type QueueApi = { Queue: typeof import('../data/queue.ts').Queue }

export const DICT_HELP = `Usage: berth dict get <name> <key>            the value at a key (JSON)
       berth dict put <name> <key> <value>    set a key (the value is JSON where it parses, else text)
       berth dict items <name>                every entry, one JSON object a line: {"key", "value"}
       berth dict len <name>                  how many entries
       berth dict clear <name>                remove every entry
       berth dict delete <name>               remove the dict
  [--server URL] [--token T]: the server, else BERTH_SERVER (default http://127.0.0.1:7450),
  and its token, else BERTH_TOKEN. Keys are text here. \`put\` creates the dict if it is missing.
`

/** JSON of what a dict holds: bigints as numbers' text, Maps as objects, Sets as arrays. */
function json(v: unknown): string {
  return JSON.stringify(v, (_, x) =>
    typeof x === 'bigint' ? x.toString() : x instanceof Map ? Object.fromEntries(x) : x instanceof Set ? [...x] : x,
  )
}

/**
 * The words and flags of a `berth dict|queue` command line, and the server they ask (--server,
 * else BERTH_SERVER, else the default; --token, else BERTH_TOKEN); a number is the exit status of
 * a mistake.
 */
function parseArgs(
  cmd: string,
  args: string[],
  known: string[],
  help: string,
): { positional: string[]; flags: Record<string, string>; opts: { server: string; token: string | undefined } } | number {
  if (args.includes('--help') || args.includes('-h') || args.length === 0) {
    process.stdout.write(help)
    return args.length === 0 ? 2 : 0
  }
  const positional: string[] = []
  const flags: Record<string, string> = {}
  for (let i = 0; i < args.length; i++) {
    const a = args[i]
    if (known.includes(a)) {
      const v = args[++i]
      if (v === undefined) {
        process.stderr.write(`berth ${cmd}: ${a} needs a value\n`)
        return 2
      }
      flags[a.slice(2)] = v
    } else if (a.startsWith('--')) {
      process.stderr.write(`berth ${cmd}: unknown flag ${a}; known: ${known.join(', ')}\n\n${help}`)
      return 2
    } else positional.push(a)
  }
  const opts = { server: flags.server ?? process.env.BERTH_SERVER ?? DEFAULT_SERVER, token: flags.token ?? process.env.BERTH_TOKEN }
  return { positional, flags, opts }
}

/** What `berth dict|queue delete` prints and exits with. */
function deleted(kind: string, name: string, found: boolean): number {
  process.stdout.write(found ? `deleted ${kind} '${name}'\n` : `no ${kind} named '${name}'\n`)
  return found ? 0 : 1
}

/** A value given on the command line: JSON where it parses, else the text. */
function valueOf(text: string): unknown {
  try {
    return JSON.parse(text)
  } catch {
    return text
  }
}

export async function dictCommand(args: string[], api: DictApi): Promise<number> {
  const parsed = parseArgs('dict', args, ['--server', '--token'], DICT_HELP)
  if (typeof parsed === 'number') return parsed
  const { positional, opts } = parsed
  const [op, name, ...rest] = positional
  const arity: Record<string, number> = { get: 1, put: 2, items: 0, len: 0, clear: 0, delete: 0 }
  if (!(op in arity) || name === undefined || rest.length !== arity[op]) {
    process.stderr.write(
      `berth dict: ${op in arity ? `${op} takes ${arity[op] === 0 ? 'a dict name' : arity[op] === 1 ? 'a dict name and a key' : 'a dict name, a key and a value'}` : `unknown command '${op}'`}\n\n${DICT_HELP}`,
    )
    return 2
  }
  try {
    if (op === 'delete') return deleted('dict', name, await api.Dict.delete(name, opts))
    const d = api.Dict.fromName(name, { ...opts, createIfMissing: op === 'put' })
    if (op === 'get') {
      const missing = Symbol('missing')
      const v = await d.get(rest[0], missing as never)
      if (v === missing) {
        process.stderr.write(`berth dict: '${name}' has no key '${rest[0]}'\n`)
        return 1
      }
      process.stdout.write(`${json(v)}\n`)
    } else if (op === 'put') {
      await d.put(rest[0], valueOf(rest[1]))
    } else if (op === 'items') {
      for (const [k, v] of await d.items()) process.stdout.write(`${json({ key: k, value: v })}\n`)
    } else if (op === 'len') process.stdout.write(`${await d.len()}\n`)
    else if (op === 'clear') await d.clear()
    return 0
  } catch (e) {
    process.stderr.write(`berth dict ${op}: ${(e as Error).message}\n`)
    return 1
  }
}

export const QUEUE_HELP = `Usage: berth queue put <name> <value>...     append values (JSON where it parses, else text)
       berth queue get <name> [--timeout S]   take the item at the front (JSON); waits up to S
                                              seconds for one with --timeout, else exits 1 when empty
       berth queue len <name>                 how many items
       berth queue clear <name>               remove the items
       berth queue delete <name>              remove the queue
  [--partition P] for a partition's items (len and clear: --partition, else all of them);
  [--server URL] [--token T]: the server, else BERTH_SERVER (default http://127.0.0.1:7450), and
  its token, else BERTH_TOKEN. \`put\` creates the queue if it is missing.
`

export async function queueCommand(args: string[], api: QueueApi): Promise<number> {
  const parsed = parseArgs('queue', args, ['--server', '--token', '--partition', '--timeout'], QUEUE_HELP)
  if (typeof parsed === 'number') return parsed
  const { positional, flags, opts } = parsed
  const [op, name, ...rest] = positional
  const ok = { put: rest.length >= 1, get: rest.length === 0, len: rest.length === 0, clear: rest.length === 0, delete: rest.length === 0 }
  if (!(op in ok) || name === undefined || !ok[op as keyof typeof ok]) {
    process.stderr.write(`berth queue: ${op in ok ? `${op}: see the usage` : `unknown command '${op}'`}\n\n${QUEUE_HELP}`)
    return 2
  }
  const partition = flags.partition
  try {
    if (op === 'delete') return deleted('queue', name, await api.Queue.delete(name, opts))
    const q = api.Queue.fromName(name, { ...opts, createIfMissing: op === 'put' })
    if (op === 'put') await q.putMany(rest.map(valueOf), { partition })
    else if (op === 'get') {
      const timeout = flags.timeout === undefined ? undefined : Number(flags.timeout)
      const items = await q.getMany(1, { partition, block: timeout !== undefined, timeout })
      if (items.length === 0) {
        process.stderr.write(`berth queue: '${name}' is empty\n`)
        return 1
      }
      process.stdout.write(`${json(items[0])}\n`)
    } else if (op === 'len') process.stdout.write(`${await q.len(partition === undefined ? { total: true } : { partition })}\n`)
    else await q.clear(partition === undefined ? { all: true } : { partition })
    return 0
  } catch (e) {
    process.stderr.write(`berth queue ${op}: ${(e as Error).message}\n`)
    return 1
  }
}
