// `berth dict get|put|items|len|clear|delete`: a running server's named dicts (README "Dict"),
// through the same Dict class callers use (the package's runtime, handed in by main.ts: the CLI
// bundle carries no copy of the call layer). The server is BERTH_SERVER or --server, with
// BERTH_TOKEN or --token.
type DictApi = { Dict: typeof import('../data/dict.ts').Dict }

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

export async function dictCommand(args: string[], api: DictApi): Promise<number> {
  if (args.includes('--help') || args.includes('-h') || args.length === 0) {
    process.stdout.write(DICT_HELP)
    return args.length === 0 ? 2 : 0
  }
  const positional: string[] = []
  const flags: Record<string, string> = {}
  for (let i = 0; i < args.length; i++) {
    const a = args[i]
    if (a === '--server' || a === '--token') {
      const v = args[++i]
      if (v === undefined) {
        process.stderr.write(`berth dict: ${a} needs a value\n`)
        return 2
      }
      flags[a.slice(2)] = v
    } else if (a.startsWith('--')) {
      process.stderr.write(`berth dict: unknown flag ${a}; known: --server, --token\n\n${DICT_HELP}`)
      return 2
    } else positional.push(a)
  }
  const [op, name, ...rest] = positional
  const arity: Record<string, number> = { get: 1, put: 2, items: 0, len: 0, clear: 0, delete: 0 }
  if (!(op in arity) || name === undefined || rest.length !== arity[op]) {
    process.stderr.write(
      `berth dict: ${op in arity ? `${op} takes ${arity[op] === 0 ? 'a dict name' : arity[op] === 1 ? 'a dict name and a key' : 'a dict name, a key and a value'}` : `unknown command '${op}'`}\n\n${DICT_HELP}`,
    )
    return 2
  }
  const opts = {
    server: flags.server ?? process.env.BERTH_SERVER ?? 'http://127.0.0.1:7450',
    token: flags.token ?? process.env.BERTH_TOKEN,
  }
  try {
    if (op === 'delete') {
      const found = await api.Dict.delete(name, opts)
      process.stdout.write(found ? `deleted dict '${name}'\n` : `no dict named '${name}'\n`)
      return found ? 0 : 1
    }
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
      let value: unknown
      try {
        value = JSON.parse(rest[1])
      } catch {
        value = rest[1]
      }
      await d.put(rest[0], value)
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
