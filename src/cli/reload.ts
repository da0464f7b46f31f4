// `berth serve` reloading on change (README "CLI"): a saved edit of the app file, or of a local
// module it imports, is loaded in a child process (the serve process's module cache keeps the
// version it started with, and a file that fails to load must not touch what is served); its
// definitions then replace the served apps' (BindingServer.replaceApps: new containers run the
// new code, the old ones finish their inputs, run their exit hooks and stop).
import { type ChildProcess, spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import { type FSWatcher, readFileSync, watch } from 'node:fs'
import { basename, dirname, relative, resolve, sep } from 'node:path'
import { deserialize } from 'node:v8'

import type { BindingFunctionDef } from '../native.ts'

/** What the child (`berth __registry <file>`) sends on fd 3: the served registry, or why not. */
export type Loaded = { apps: string[]; functions: BindingFunctionDef[]; files: string[] } | { error: string }

/** fd 3 of `berth __registry`: where it writes its one v8-serialized `Loaded`. */
export const REGISTRY_FD = 3

/** Saves come as bursts of events (write, rename, chmod): one reload per burst. */
const DEBOUNCE_MS = 150

/**
 * The files a loaded app came from: not packages (node_modules), nor berth itself (its bundle
 * in `berthDir`, dist/, and the binding's loader beside it).
 */
export function localFiles(candidates: Iterable<string>, berthDir: string): string[] {
  const binding = resolve(berthDir, '..', 'binding.cjs')
  const out = new Set<string>()
  for (let f of candidates) {
    if (f.startsWith('file://')) f = decodeURIComponent(new URL(f).pathname)
    if (!f.startsWith('/') && !/^[A-Za-z]:[\\/]/.test(f)) continue
    f = f.replace(/\?.*$/, '')
    if (f.includes(`${sep}node_modules${sep}`) || f.startsWith(berthDir + sep) || f === binding || f.endsWith('.node')) continue
    out.add(f)
  }
  return [...out]
}

/** One line of an error, for the log: `Name: message`, its lines joined, at most 600 characters. */
export function oneLine(e: unknown): string {
  const text = e instanceof Error ? `${e.name}: ${e.message}` : String(e)
  const line = text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l.length > 0)
    .join(' ')
  return line.length > 600 ? `${line.slice(0, 597)}...` : line
}

/** A file whose import does not settle (a top-level await that never ends) is given up on. */
const LOAD_TIMEOUT_MS = 120_000

/** Loaders running now: `watchAndReload`'s `close()` ends them. */
const loading = new Set<ChildProcess>()

/** Runs `command` (berth __registry <file>), in `cwd` if given, and reads what it sends on fd 3. */
export function loadInChild(command: string[], cwd?: string): Promise<Loaded> {
  return new Promise((done) => {
    const child = spawn(command[0], command.slice(1), { cwd, stdio: ['ignore', 'ignore', 'pipe', 'pipe'] })
    loading.add(child)
    const timer = setTimeout(() => child.kill('SIGKILL'), LOAD_TIMEOUT_MS)
    const chunks: Buffer[] = []
    let stderr = ''
    child.stderr!.setEncoding('utf8').on('data', (d: string) => {
      if (stderr.length < 64 * 1024) stderr += d
    })
    ;(child.stdio[REGISTRY_FD] as NodeJS.ReadableStream).on('data', (d: Buffer) => chunks.push(d))
    child.on('error', (e) => done({ error: `cannot start ${command.join(' ')}: ${e.message}` }))
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      loading.delete(child)
      if (chunks.length > 0) {
        try {
          const loaded = deserialize(Buffer.concat(chunks)) as Loaded
          if ('functions' in loaded) {
            // Byte strings come back as Uint8Array; the binding takes Buffers.
            for (const f of loaded.functions) for (const p of f.params ?? []) if (p.default) p.default = Buffer.from(p.default)
          }
          return done(loaded)
        } catch (e) {
          return done({ error: `unreadable answer from the loader (${(e as Error).message})` })
        }
      }
      const why =
        signal === 'SIGKILL'
          ? `it did not finish loading within ${LOAD_TIMEOUT_MS / 1000} s (a top-level await that never settles?)`
          : stderr.trim().split('\n').slice(-3).join(' ') || `the loader exited with status ${code}`
      done({ error: why })
    })
  })
}

export interface ReloadOptions {
  /** The served file, absolute, and as the user named it (for the log). */
  file: string
  shown: string
  /** The apps served now, and the local files they came from. */
  apps: string[]
  files: string[]
  /** Loads the file afresh, in another process. */
  load(): Promise<Loaded>
  /**
   * Replaces `apps` with `functions` in the control plane; returns what to print after the
   * reload's line (what is served, when that changed).
   */
  replace(apps: string[], functions: BindingFunctionDef[]): string | undefined
  /** Where the reload lines go (stderr). */
  log(line: string, level?: 'info' | 'warn'): void
}

/**
 * Watches the app's files and reloads after each saved change; `close()` stops. Directories are
 * watched, not files: an editor that saves by writing a temporary file and renaming it over the
 * original replaces the file a watch would follow.
 */
export function watchAndReload(o: ReloadOptions): { close(): void } {
  let apps = o.apps
  let files = new Set(o.files.concat(o.file))
  let dirs = new Map<string, FSWatcher>()
  let last = digest(files)
  let timer: NodeJS.Timeout | undefined
  let changed: string | undefined
  let running = false
  let again = false
  let closed = false

  const rewatch = () => {
    const want = new Set([...files].map((f) => dirname(f)))
    for (const [dir, w] of dirs) {
      if (!want.has(dir)) {
        w.close()
        dirs.delete(dir)
      }
    }
    for (const dir of want) {
      if (dirs.has(dir)) continue
      try {
        const w = watch(dir, (_event, name) => {
          if (name === null) return
          const path = resolve(dir, name.toString())
          if (files.has(path)) schedule(path)
        })
        w.on('error', () => {})
        dirs.set(dir, w)
      } catch {
        // A directory gone: nothing there to watch.
      }
    }
  }

  const schedule = (path: string) => {
    if (closed) return
    changed ??= path
    clearTimeout(timer)
    timer = setTimeout(() => void reload(), DEBOUNCE_MS)
  }

  const reload = async () => {
    if (running) {
      again = true
      return
    }
    running = true
    const path = changed ?? o.file
    changed = undefined
    try {
      const now = digest(files)
      if (now === last) return
      const shown = relative(process.cwd(), path) || basename(path)
      const loaded = await o.load()
      if (closed) return
      if ('error' in loaded) {
        o.log(`berth: ${o.shown} failed to load, still serving the previous version: ${loaded.error}`, 'warn')
        // Fixing the file (or the module that broke it) reloads: keep watching what was.
        last = now
        return
      }
      const replaced = [...new Set([...apps, ...loaded.apps])]
      let more: string | undefined
      try {
        more = o.replace(replaced, loaded.functions)
      } catch (e) {
        o.log(`berth: ${o.shown} failed to load, still serving the previous version: ${oneLine(e)}`, 'warn')
        last = now
        return
      }
      apps = loaded.apps
      files = new Set(loaded.files.concat(o.file))
      last = digest(files)
      rewatch()
      const n = loaded.functions.length
      o.log(
        `berth: reloaded ${loaded.apps.map((a) => `'${a}'`).join(', ')} (${n} function${n === 1 ? '' : 's'}) after a change to ${shown}` +
          (more === undefined ? '' : `\n${more}`),
      )
    } finally {
      running = false
      if (again && !closed) {
        again = false
        schedule(path)
      }
    }
  }

  rewatch()
  return {
    close() {
      closed = true
      clearTimeout(timer)
      for (const w of dirs.values()) w.close()
      for (const child of loading) child.kill('SIGKILL')
      dirs = new Map()
    },
  }
}

/** What the files hold now: a save that changes nothing (touch, an editor's autosave) reloads nothing. */
function digest(files: Set<string>): string {
  const h = createHash('sha256')
  for (const f of [...files].sort()) {
    h.update(f).update('\0')
    try {
      h.update(readFileSync(f))
    } catch {
      h.update('(missing)')
    }
    h.update('\0')
  }
  return h.digest('hex')
}
