// `berth volume create|list|ls|put|get|rm|delete`: this machine's volumes (README "Volume"),
// directories under BERTH_VOLUMES_DIR (default ~/.berth/volumes), as `berth secret` keeps
// secrets. No berth server is asked: the files are on this machine. With `--broker URL` (or
// BERTH_BROKER_URL) the volume is also synced with its object store on that NATS server, as a
// container's is in broker mode: reloaded before, committed after a change.
import { existsSync, statSync } from 'node:fs'
import { basename, join, resolve } from 'node:path'

import { brokerUrl, brokerVolumes, createVolume, listVolumes, Volume, volumesDir } from '../data/volume.ts'
import { BerthError } from '../shared/errors.ts'

export const VOLUME_HELP = `Usage: berth volume create <name>                     make a volume
       berth volume list                              every volume on this machine, and its directory
       berth volume ls <name> [path]                  what is at path (default the root), a line each:
                                                      path (a directory ends in /), bytes, modified
       berth volume put <name> <local-file> [path]    copy a file in (default: its name at the root;
                                                      a path ending in / or naming a directory: in it)
       berth volume get <name> <path> [local|-]       copy a file out (default: its name, here; - prints
                                                      it to stdout); --force replaces a local file
       berth volume rm <name> <path> [-r]             remove a file (-r: a directory and what it holds)
       berth volume delete <name>                     remove the volume and every file in it

A volume is a directory on this machine, in BERTH_VOLUMES_DIR (default ~/.berth/volumes/<name>). A
function or class with \`volumes: { '/data': Volume.fromName('<name>') }\` sees it at /data in its
containers (README "Volume"). Paths are inside the volume ('/a/b' or 'a/b'); '..' is refused.

--broker <url>    (or BERTH_BROKER_URL) broker mode: the volume is shared through that NATS server's
                  object store, as workers share it: ls and get fetch what changed there first,
                  put and rm send the change, list adds the volumes there, delete removes it there too
`

/** The arity of each subcommand: [least, most] words after the subcommand. */
const WORDS: Record<string, [number, number]> = {
  create: [1, 1],
  list: [0, 0],
  ls: [1, 2],
  put: [2, 3],
  get: [2, 3],
  rm: [2, 2],
  delete: [1, 1],
}

export async function volumeCommand(argv: string[]): Promise<number> {
  let args = argv
  if (args.length === 0 || args.includes('--help') || args.includes('-h')) {
    process.stdout.write(VOLUME_HELP)
    return args.length === 0 ? 2 : 0
  }
  const at = args.indexOf('--broker')
  if (at >= 0) {
    const url = args[at + 1]
    if (url === undefined || url.startsWith('-')) {
      process.stderr.write(`berth volume: --broker needs the NATS server's URL, e.g. --broker nats://127.0.0.1:4222\n`)
      return 2
    }
    process.env.BERTH_BROKER_URL = url
    args = [...args.slice(0, at), ...args.slice(at + 2)]
  }
  const broker = brokerUrl() !== undefined
  const flags = new Set<string>(args.filter((a) => a === '-r' || a === '--recursive' || a === '--force'))
  const unknown = args.find((a) => a.startsWith('-') && a !== '-' && !flags.has(a))
  if (unknown !== undefined) {
    process.stderr.write(`berth volume: unknown flag ${unknown}; known: -r (rm), --force (get), --broker <url>\n\n${VOLUME_HELP}`)
    return 2
  }
  const [op, ...words] = args.filter((a) => !flags.has(a))
  const range = WORDS[op]
  if (range === undefined || words.length < range[0] || words.length > range[1]) {
    process.stderr.write(`berth volume: ${range === undefined ? `unknown command '${op}'` : `${op}: see the usage`}\n\n${VOLUME_HELP}`)
    return 2
  }
  const [name, a, b] = words
  try {
    if (op === 'list') {
      const here = listVolumes()
      for (const v of here) process.stdout.write(`${v.name}\t${v.path}\n`)
      for (const n of await brokerVolumes()) {
        if (!here.some((v) => v.name === n)) process.stdout.write(`${n}\t(on the broker only: ls or get fetches it)\n`)
      }
      return 0
    }
    if (op === 'create') {
      const made = createVolume(name)
      if (broker) await Volume.fromName(name).commit()
      process.stdout.write(made ? `created volume '${name}' in ${join(volumesDir(), name)}\n` : `volume '${name}' already exists\n`)
      return made ? 0 : 1
    }
    if (op === 'delete') {
      const found = await Volume.delete(name)
      process.stdout.write(found ? `deleted volume '${name}'\n` : `no volume named '${name}'\n`)
      return found ? 0 : 1
    }
    // Broker mode: a volume only the broker has yet is made here, then filled by the reload.
    const vol = Volume.fromName(name, { createIfMissing: broker && (await brokerVolumes()).includes(name) })
    if (broker) await vol.reload()
    if (op === 'ls') {
      for (const e of await vol.listdir(a ?? '/')) {
        process.stdout.write(`${e.path}${e.type === 'directory' ? '/' : ''}\t${e.size}\t${e.mtime.toISOString()}\n`)
      }
    } else if (op === 'put') {
      const at = await vol.putFile(a, b)
      process.stdout.write(
        `${a} -> ${name}:/${at
          .slice(vol.path.length + 1)
          .split(/[\\/]/)
          .join('/')}\n`,
      )
    } else if (op === 'get') {
      if (b === '-') {
        process.stdout.write(await vol.read(a))
        return 0
      }
      let local = resolve(b ?? basename(vol.resolve(a)))
      if (existsSync(local) && statSync(local).isDirectory()) local = join(local, basename(vol.resolve(a)))
      if (existsSync(local) && !flags.has('--force')) {
        process.stderr.write(`berth volume get: ${local} exists; pass --force to replace it\n`)
        return 1
      }
      await vol.getFile(a, local)
      process.stdout.write(`${name}:${a} -> ${local}\n`)
    } else if (op === 'rm') {
      await vol.remove(a, { recursive: flags.has('-r') || flags.has('--recursive') })
    }
    if (broker && (op === 'put' || op === 'rm')) await vol.commit()
    return 0
  } catch (e) {
    process.stderr.write(`berth volume ${op}: ${e instanceof BerthError ? e.message : ((e as Error)?.message ?? String(e))}\n`)
    return 1
  }
}
