// Volume (README "Volume"): a named directory on this machine, under BERTH_VOLUMES_DIR (default
// ~/.berth/volumes/<name>), kept the way secrets are (src/run/secrets.ts: per machine, made and
// listed with the CLI). The `volumes` option of a function or class makes it visible in its
// containers at a mount path: a symbolic link from that path to the volume's directory, which
// berth makes where nothing is and removes once no container on this machine uses it (README
// "Volume", the mount-path rule). Every container on one machine sees the same directory, so
// `commit` only makes what was written durable and `reload` has nothing to fetch; across
// machines (`--broker` workers) nothing is shared yet.
import {
  closeSync,
  constants,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  realpathSync,
  rmSync,
  statSync,
  symlinkSync,
  unlinkSync,
  writeFileSync,
  writeSync,
} from 'node:fs'
import { copyFile, lstat, mkdir, open, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { createHash } from 'node:crypto'
import { homedir } from 'node:os'
import { dirname, isAbsolute, join, resolve, sep } from 'node:path'

import { binding } from '../native.ts'
import { InvalidError, NotFoundError } from '../shared/errors.ts'

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/
/** What separates a path's segments here ('\\' too on Windows). */
const SEPARATORS = sep === '\\' ? /[\\/]+/ : /\/+/

/** Where this machine's volumes are: BERTH_VOLUMES_DIR, default ~/.berth/volumes. */
export function volumesDir(): string {
  return resolve(process.env.BERTH_VOLUMES_DIR ?? join(homedir(), '.berth', 'volumes'))
}

function checkName(name: unknown, where: string): asserts name is string {
  if (typeof name !== 'string' || !NAME.test(name)) {
    throw new InvalidError(
      `${where}: a volume name is 1 to 128 letters, digits, '-', '_' or '.', starting with a letter or digit; got ${JSON.stringify(name)}`,
    )
  }
}

function notFound(name: string): NotFoundError {
  return new NotFoundError(
    `no volume named '${name}' in ${volumesDir()}: create it with Volume.fromName('${name}', { createIfMissing: true }) ` +
      `or \`npx berth volume create ${name}\``,
  )
}

function isDir(p: string): boolean {
  try {
    return statSync(p).isDirectory()
  } catch {
    return false
  }
}

/** The options of `Volume.fromName`. */
export interface VolumeOptions {
  /** Make it if it does not exist; without it, a volume that does not exist is a NotFoundError. */
  createIfMissing?: boolean
}

/** What `listdir` gives for each entry. `path` is relative to the volume's root, with '/'. */
export interface VolumeEntry {
  path: string
  type: 'file' | 'directory' | 'symlink' | 'other'
  /** Bytes (a file's length). */
  size: number
  mtime: Date
}

/**
 * A named volume: a directory on this machine that the containers of the functions and classes
 * mounting it (`volumes: { '/data': vol }`) share; made with `Volume.fromName`. It is not an
 * argument of a call (a class instance, refused as any is): code in a container uses the
 * module's own `Volume.fromName(...)` (the module is loaded again there, and finds the same
 * directory) or the mount path.
 */
export class Volume {
  private constructor(
    readonly name: string,
    /** The volume's directory on this machine (absolute). */
    readonly path: string,
  ) {}

  /** The volume named `name`; with `createIfMissing`, made now if it does not exist. */
  static fromName(name: string, opts: VolumeOptions = {}): Volume {
    checkName(name, `Volume.fromName(${JSON.stringify(name)})`)
    const dir = join(volumesDir(), name)
    if (!isDir(dir)) {
      if (opts?.createIfMissing !== true) throw notFound(name)
      mkdirSync(dir, { recursive: true })
    }
    return new Volume(name, dir)
  }

  /**
   * Removes the volume named `name` and every file in it on this machine; false if there was
   * none (here, nor on the NATS server in broker mode). In broker mode (BERTH_BROKER_URL, set for the containers of `berth worker` and
   * `berth serve --broker`, and by `berth volume --broker`) its object store on the NATS server
   * goes too, and with it the files other machines have (their next reload removes them).
   */
  static async delete(name: string): Promise<boolean> {
    checkName(name, `Volume.delete(${JSON.stringify(name)})`)
    const dir = join(volumesDir(), name)
    const url = brokerUrl()
    const dropped = url !== undefined && (await binding().volumeDrop(url, name))
    // What this machine last synced with the broker's copy goes with it (README "Volume").
    await rm(join(volumesDir(), '.sync', name), { force: true })
    if (!isDir(dir)) return dropped
    await rm(dir, { recursive: true, force: true })
    return true
  }

  private where(method: string): string {
    return `Volume('${this.name}').${method}`
  }

  private mustExist(method: string): void {
    if (!isDir(this.path)) throw new NotFoundError(`${this.where(method)}: the volume was deleted (${this.path} is gone)`)
  }

  /**
   * The absolute path of `path` inside the volume ('/models/a.bin' and 'models/a.bin' alike).
   * A path with a '..' segment, or one that leads out through a symbolic link, is an InvalidError.
   */
  resolve(path = '/'): string {
    return this.locate(path, true)
  }

  /** `resolve`; without `followLast`, a symbolic link at the end is the entry itself (what `remove` removes). */
  private locate(path: string, followLast: boolean): string {
    if (typeof path !== 'string' || path.includes('\0')) {
      throw new InvalidError(`${this.where('resolve')}: a path in a volume is a string without NUL, e.g. '/models/a.bin'`)
    }
    const segs = path.split(SEPARATORS).filter((s) => s !== '' && s !== '.')
    if (segs.includes('..')) {
      throw new InvalidError(
        `Volume('${this.name}'): the path '${path}' leaves the volume ('..'); a path names a file inside it, e.g. '/models/a.bin'`,
      )
    }
    const full = join(this.path, ...segs)
    // What exists of it must stay inside the volume once symbolic links are followed.
    let probe = followLast || full === this.path ? full : dirname(full)
    for (;;) {
      try {
        lstatSync(probe)
        const real = realpathSync(probe)
        const root = realpathSync(this.path)
        if (real !== root && !real.startsWith(root + sep)) {
          throw new InvalidError(`Volume('${this.name}'): the path '${path}' leads out of the volume through a symbolic link (to ${real})`)
        }
        break
      } catch (e) {
        if (e instanceof InvalidError) throw e
        if (probe === this.path || dirname(probe) === probe) break
        probe = dirname(probe)
      }
    }
    return full
  }

  /**
   * Makes what was written to the volume durable (each file and directory in it is fsynced).
   * On one machine every container sees the same directory, so there is nothing else to send;
   * with `--broker`, what changed here goes to the volume's object store on the NATS server,
   * for other machines' `reload` (README "Volume").
   */
  async commit(): Promise<void> {
    this.mustExist('commit')
    await syncTree(this.path)
    await brokerSync(this.name, this.path, true)
  }

  /**
   * Sees what others committed: on one machine, the directory already shows it, so this only
   * checks that the volume still exists; with `--broker`, it fetches what other machines
   * committed (README "Volume").
   */
  async reload(): Promise<void> {
    this.mustExist('reload')
    await brokerSync(this.name, this.path, false)
  }

  /** The entries at `path` (its root by default); a file gives itself; `recursive` walks down. */
  async listdir(path = '/', opts: { recursive?: boolean } = {}): Promise<VolumeEntry[]> {
    this.mustExist('listdir')
    const full = this.resolve(path)
    let st: Awaited<ReturnType<typeof lstat>>
    try {
      st = await lstat(full)
    } catch {
      throw new NotFoundError(`${this.where('listdir')}: no '${path}' in the volume`)
    }
    const rel = (p: string) =>
      p
        .slice(this.path.length + 1)
        .split(sep)
        .join('/')
    if (!st.isDirectory()) return [entryOf(rel(full), st)]
    const out: VolumeEntry[] = []
    const walk = async (dir: string) => {
      for (const name of (await readdir(dir)).sort()) {
        const p = join(dir, name)
        const s = await lstat(p)
        out.push(entryOf(rel(p), s))
        if (opts?.recursive === true && s.isDirectory()) await walk(p)
      }
    }
    await walk(full)
    return out
  }

  /** The bytes of the file at `path`. */
  async read(path: string): Promise<Buffer> {
    this.mustExist('read')
    const full = this.resolve(path)
    try {
      return await readFile(full)
    } catch (e) {
      throw fileError(this.where('read'), path, e)
    }
  }

  /** Writes `data` (text as UTF-8) to the file at `path`, making the directories it needs. */
  async write(path: string, data: string | Uint8Array): Promise<void> {
    this.mustExist('write')
    const full = this.fileTarget(path, 'write')
    await mkdir(dirname(full), { recursive: true })
    await writeFile(full, data)
  }

  /** Copies the local file `localPath` into the volume at `path` (default: its name at the root). */
  async putFile(localPath: string, path?: string): Promise<string> {
    this.mustExist('putFile')
    const local = resolve(localPath)
    const s = await stat(local).catch(() => undefined)
    if (s === undefined || !s.isFile()) throw new NotFoundError(`${this.where('putFile')}: ${localPath} is not a file`)
    const base = local.split(sep).pop()!
    // Into a directory that exists (or a path ending in '/'): under the file's own name.
    const into = path === undefined || /[\\/]$/.test(path) || isDir(this.resolve(path))
    const full = this.fileTarget(into ? `${path ?? ''}/${base}` : path, 'putFile')
    await mkdir(dirname(full), { recursive: true })
    await copyFile(local, full)
    return full
  }

  /** Copies the file at `path` in the volume to `localPath`. */
  async getFile(path: string, localPath: string): Promise<void> {
    this.mustExist('getFile')
    const full = this.resolve(path)
    try {
      await copyFile(full, localPath)
    } catch (e) {
      throw fileError(this.where('getFile'), path, e)
    }
  }

  /** Removes the file at `path`; a directory needs `recursive`. */
  async remove(path: string, opts: { recursive?: boolean } = {}): Promise<void> {
    this.mustExist('remove')
    const full = this.locate(path, false)
    if (full === this.path)
      throw new InvalidError(`${this.where('remove')}: '${path}' is the volume itself; remove it with Volume.delete('${this.name}')`)
    const s = await lstat(full).catch(() => undefined)
    if (s === undefined) throw new NotFoundError(`${this.where('remove')}: no '${path}' in the volume`)
    if (s.isDirectory() && opts?.recursive !== true) {
      throw new InvalidError(`${this.where('remove')}: '${path}' is a directory; remove it with { recursive: true } (the CLI: -r)`)
    }
    await rm(full, { recursive: true, force: true })
  }

  private fileTarget(path: string, method: string): string {
    const full = this.resolve(path)
    if (full === this.path || isDir(full)) throw new InvalidError(`${this.where(method)}: '${path}' is a directory; name a file in it`)
    return full
  }
}

function entryOf(
  path: string,
  s: { isFile(): boolean; isDirectory(): boolean; isSymbolicLink(): boolean; size: number; mtime: Date },
): VolumeEntry {
  const type = s.isFile() ? 'file' : s.isDirectory() ? 'directory' : s.isSymbolicLink() ? 'symlink' : 'other'
  return { path, type, size: s.size, mtime: s.mtime }
}

function fileError(where: string, path: string, e: unknown): Error {
  const code = (e as NodeJS.ErrnoException).code
  if (code === 'ENOENT') return new NotFoundError(`${where}: no file '${path}' in the volume`)
  if (code === 'EISDIR') return new InvalidError(`${where}: '${path}' is a directory; name a file in it`)
  return e as Error
}

/** fsyncs every file and directory under `dir` (directories last, so new entries are recorded). */
async function syncTree(dir: string): Promise<void> {
  for (const name of await readdir(dir)) {
    const p = join(dir, name)
    const s = await lstat(p)
    if (s.isDirectory()) await syncTree(p)
    else if (s.isFile()) await syncOne(p)
  }
  await syncOne(dir)
}

async function syncOne(p: string): Promise<void> {
  let h: Awaited<ReturnType<typeof open>> | undefined
  try {
    h = await open(p, 'r')
    await h.sync()
  } catch (e) {
    // A directory cannot be opened or fsynced on some systems (Windows): its files were.
    const code = (e as NodeJS.ErrnoException).code
    if (code !== 'EISDIR' && code !== 'EPERM' && code !== 'EINVAL' && code !== 'EBADF' && code !== 'EACCES') throw e
  } finally {
    await h?.close()
  }
}

/** The volumes of this machine, by name. */
export function listVolumes(): { name: string; path: string }[] {
  const dir = volumesDir()
  if (!isDir(dir)) return []
  return readdirSync(dir)
    .filter((n) => NAME.test(n) && isDir(join(dir, n)))
    .sort()
    .map((name) => ({ name, path: join(dir, name) }))
}

/** `npx berth volume create`: false when it already existed. */
export function createVolume(name: string): boolean {
  checkName(name, `volume create ${JSON.stringify(name)}`)
  const dir = join(volumesDir(), name)
  if (isDir(dir)) return false
  mkdirSync(dir, { recursive: true })
  return true
}

// ---- Mounts (README "Volume", the mount-path rule) -----------------------------------------
//
// A mount path becomes a symbolic link to the volume's directory, made by the first container
// on this machine that needs it, if nothing is at that path and its parent directory is
// writable. Containers are processes (or, embedded, this one), so who uses a link is kept in a
// small record per mount path, BERTH_VOLUMES_DIR/.mounts/<hash>.json, changed under a lock file
// beside it: the processes using it and whether berth made it. The last of them to stop
// removes a link berth made; one that was there before is left as it was. A process killed
// outright (SIGKILL) leaves its link, which the next container adopts as berth's.

/** A mount of the `volumes` option, as the pool's options carry it (define/options.ts). */
export interface VolumeMount {
  mountPath: string
  volume: { name: string; path: string }
}

interface MountRecord {
  path: string
  target: string
  created: boolean
  users: number[]
}

/** The mounts this process holds: mount path -> the volume directory it links to. */
const held = new Map<string, string>()
let exitHook = false

function mountsDir(): string {
  return join(volumesDir(), '.mounts')
}

function recordFile(mountPath: string): string {
  return join(mountsDir(), `${createHash('sha256').update(mountPath).digest('hex').slice(0, 24)}.json`)
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM'
  }
}

const pause = new Int32Array(new SharedArrayBuffer(4))

/** Runs `fn` holding `file`.lock (one process at a time); a lock left by a dead process is taken over. */
function locked<T>(file: string, fn: () => T): T {
  const lock = `${file}.lock`
  mkdirSync(dirname(file), { recursive: true })
  const end = Date.now() + 10_000
  for (;;) {
    let fd: number | undefined
    try {
      fd = openSync(lock, constants.O_CREAT | constants.O_EXCL | constants.O_WRONLY, 0o644)
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e
    }
    if (fd !== undefined) {
      try {
        writeSync(fd, String(process.pid))
      } finally {
        closeSync(fd)
      }
      try {
        return fn()
      } finally {
        rmSync(lock, { force: true })
      }
    }
    let owner = Number.NaN
    try {
      owner = Number(readFileSync(lock, 'utf8'))
    } catch {
      // just released
    }
    if (Number.isInteger(owner) && owner > 0 && !alive(owner)) rmSync(lock, { force: true })
    else if (Date.now() > end) throw new InvalidError(`the volume mount record ${lock} stayed locked for 10 s; if no berth runs, remove it`)
    else Atomics.wait(pause, 0, 0, 5)
  }
}

function readRecord(file: string): MountRecord | undefined {
  try {
    return JSON.parse(readFileSync(file, 'utf8')) as MountRecord
  } catch {
    return undefined
  }
}

function linkTarget(p: string): string | undefined {
  try {
    return readlinkSync(p)
  } catch {
    return undefined
  }
}

function what(p: string): string {
  const s = lstatSync(p)
  if (s.isSymbolicLink()) return `a symbolic link to ${linkTarget(p)}`
  return s.isDirectory() ? 'a directory' : s.isFile() ? 'a file' : 'something other than a link'
}

const FIX =
  'Use a mount path that does not exist yet, in a directory this user can write (e.g. join(tmpdir(), "data") or a path under your project), ' +
  'or leave the mount out and read vol.path, the volume\'s own directory (README "Volume")'

/** Makes `mountPath` a link to `target` for this process, as the record says; throws why not. */
function acquire(who: string, name: string, mountPath: string, target: string): void {
  const file = recordFile(mountPath)
  locked(file, () => {
    const old = readRecord(file)
    const rec: MountRecord =
      old !== undefined && old.target === target
        ? { ...old, users: old.users.filter((p) => p !== process.pid && alive(p)) }
        : { path: mountPath, target, created: false, users: [] }
    const at = `${who}: volume '${name}' cannot be mounted at ${mountPath}`
    let exists = true
    try {
      lstatSync(mountPath)
    } catch {
      exists = false
    }
    if (!exists) {
      try {
        symlinkSync(target, mountPath, process.platform === 'win32' ? 'junction' : 'dir')
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code
        const parent = dirname(mountPath)
        const why =
          code === 'ENOENT'
            ? `its parent directory ${parent} does not exist`
            : code === 'EACCES' || code === 'EPERM' || code === 'EROFS'
              ? `this user cannot write its parent directory ${parent} (${code})`
              : `making a link there failed (${(e as Error).message})`
        throw new InvalidError(`${at}: ${why}. berth mounts a volume as a symbolic link to ${target}. ${FIX}`)
      }
      rec.created = true
    } else if (linkTarget(mountPath) !== target) {
      throw new InvalidError(
        `${at}: it already exists (${what(mountPath)}), and berth mounts a volume only where nothing is, as a symbolic link to ${target}. ${FIX}`,
      )
    } else if (old === undefined || old.target !== target) {
      // The link was there before berth used it: someone's own; it stays.
      rec.created = false
    }
    rec.users.push(process.pid)
    writeFileSync(file, JSON.stringify(rec))
  })
}

/** Stops using `mountPath`; the last user removes a link berth made. */
function release(mountPath: string): void {
  const file = recordFile(mountPath)
  try {
    locked(file, () => {
      const rec = readRecord(file)
      if (rec === undefined) return
      rec.users = rec.users.filter((p) => p !== process.pid && alive(p))
      if (rec.users.length > 0) {
        writeFileSync(file, JSON.stringify(rec))
        return
      }
      if (rec.created && linkTarget(mountPath) === rec.target) unlinkSync(mountPath)
      rmSync(file, { force: true })
    })
  } catch {
    // At exit, or the volumes directory is gone: the link stays, and the next container adopts it.
  }
}

/**
 * @internal A container's start (both container modes, before its first hook runs): each mount
 * of its `volumes` option is made, or kept (README "Volume"). Throws an InvalidError naming the
 * path, why and the fix: the container fails to start, and its inputs with InitError.
 */
export function mountVolumes(who: string, mounts: readonly VolumeMount[] | undefined): void {
  for (const { mountPath, volume } of mounts ?? []) {
    if (!isDir(volume.path)) throw new InvalidError(`${who}: ${notFound(volume.name).message}`)
    if (held.get(mountPath) === volume.path && linkTarget(mountPath) === volume.path) continue
    if (held.has(mountPath) && held.get(mountPath) !== volume.path) {
      throw new InvalidError(
        `${who}: ${mountPath} is already where another volume (${held.get(mountPath)}) is mounted in this process; use another mount path`,
      )
    }
    acquire(who, volume.name, mountPath, volume.path)
    held.set(mountPath, volume.path)
    if (!exitHook) {
      exitHook = true
      process.once('exit', () => releaseMounts())
    }
  }
}

/**
 * @internal The NATS server of broker mode, where volumes are shared across machines: `berth worker` and
 * `berth serve --broker` set BERTH_BROKER_URL for their containers (src/cli/worker.ts, main.ts).
 */
export function brokerUrl(): string | undefined {
  return process.env.BERTH_BROKER_URL || undefined
}

/** @internal Broker mode: the volumes with an object store on the NATS server; none otherwise. */
export async function brokerVolumes(): Promise<string[]> {
  const url = brokerUrl()
  return url === undefined ? [] : await binding().volumeNames(url)
}

/**
 * Broker mode: syncs volume `name` (at `path`) with its object store; nothing otherwise. A store
 * this machine synced with and that is gone was deleted elsewhere: a NotFoundError naming the
 * fixes (crates/berth-nats/src/volumes.rs), the copy here kept as it was.
 */
async function brokerSync(name: string, path: string, commit: boolean): Promise<void> {
  const url = brokerUrl()
  if (url === undefined) return
  try {
    await binding().volumeSync(url, name, path, join(volumesDir(), '.sync', name), commit)
  } catch (e) {
    const message = (e as Error).message ?? String(e)
    if (!message.includes(DELETED_ON_BROKER)) throw e
    const why = message.replace(/^berth: volume '[^']*': /, '')
    throw new NotFoundError(`Volume('${name}').${commit ? 'commit' : 'reload'}: ${why}`)
  }
}

/** How volumes.rs words a store deleted elsewhere. */
const DELETED_ON_BROKER = 'was deleted on the NATS server'

let reloadedMounts = false

/**
 * @internal Broker mode: a container's volumes are reloaded as it starts (once, before its hooks)
 * and committed when it stops, so it starts with what other machines committed and what it
 * wrote reaches them, as Modal's containers do (README "Volume").
 */
export async function syncMounts(mounts: readonly VolumeMount[] | undefined, commit: boolean): Promise<void> {
  if (brokerUrl() === undefined || (mounts?.length ?? 0) === 0) return
  if (!commit) {
    if (reloadedMounts) return
    reloadedMounts = true
  }
  for (const { volume } of mounts ?? []) await brokerSync(volume.name, volume.path, commit)
}

/** @internal This process stops using the mounts at `paths` (all it holds by default): an embedded app's stop, a container's exit. */
export function releaseMounts(paths?: readonly string[]): void {
  for (const p of paths ?? [...held.keys()]) {
    if (!held.delete(p)) continue
    release(p)
  }
}

/**
 * @internal The `volumes` option (define/options.ts): each key an absolute path without '..'
 * (normalized: no trailing '/'), each value a Volume, no mount inside another. `where` starts
 * each error, e.g. "app.function('f')".
 */
export function normalizeMounts(where: string, value: unknown): VolumeMount[] {
  if (value === undefined) return []
  const example = "{ '/data': Volume.fromName('data') }"
  if (typeof value !== 'object' || value === null || Array.isArray(value) || value instanceof Volume) {
    throw new InvalidError(`${where}: volumes must be an object of mount paths to volumes, e.g. ${example}, got ${shown(value)}.`)
  }
  const out: VolumeMount[] = []
  for (const [key, vol] of Object.entries(value)) {
    if (!isAbsolute(key)) {
      throw new InvalidError(
        `${where}: the volume mount path '${key}' must be absolute, e.g. '/data' or join(tmpdir(), 'data') (README "Volume")`,
      )
    }
    if (key.split(SEPARATORS).includes('..')) throw new InvalidError(`${where}: the volume mount path '${key}' must not contain '..'`)
    const mountPath = resolve(key)
    if (dirname(mountPath) === mountPath)
      throw new InvalidError(`${where}: a volume cannot be mounted at the root '${key}'; use e.g. '/data'`)
    if (!(vol instanceof Volume)) {
      throw new InvalidError(`${where}: volumes['${key}'] must be a Volume (Volume.fromName('name')), got ${shown(vol)}.`)
    }
    for (const o of out) {
      const [a, b] = o.mountPath.length < mountPath.length ? [o.mountPath, mountPath] : [mountPath, o.mountPath]
      if (a === b || b.startsWith(a + sep))
        throw new InvalidError(`${where}: the volume mount paths '${a}' and '${b}' overlap; mount each at a path of its own`)
    }
    out.push({ mountPath, volume: vol })
  }
  return out
}

function shown(v: unknown): string {
  if (v === null || v === undefined) return String(v)
  if (typeof v === 'string') return JSON.stringify(v)
  if (typeof v !== 'object') return typeof v === 'function' ? 'a function' : `${typeof v} ${String(v)}`
  if (Array.isArray(v)) return 'an array'
  const proto = Object.getPrototypeOf(v)
  if (proto === Object.prototype || proto === null) return 'a plain object'
  // A bundle may rename a class `_Name` (dist/index.cjs): the user knows it as `Name`.
  return `an instance of ${((v as object).constructor?.name || 'a class').replace(/^_(?=[A-Z])/, '')}`
}
