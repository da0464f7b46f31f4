// What a container process prints under `berth serve` and `berth worker`, whose control plane
// relays its stdout and stderr line by line (crates/berth-server/src/supervisor/output.rs,
// README "Observability"): each line printed inside an input, or by a console method other
// than the stream's own (console.warn on stderr, console.debug on stdout), starts with a tag
// the relay reads and strips, `\x1e<level><input id>\x1f`, so that `--log-format json` can say
// which input printed it and at what level. Nothing is added to lines printed outside inputs
// at the stream's own level, and nothing at all under `berth run` (BERTH_LOG_TAGS unset), whose
// containers print to the terminal as they are. Only printing pays for this, never an input.
import { currentInputId } from './context.ts'

/** The tag's level letter per console method (the relay's `untag`). */
const LEVELS: Record<string, string> = { debug: 'd', trace: 'd', info: 'i', log: 'i', warn: 'w', error: 'e' }

/** The level of the console method printing right now, if any. */
let level: string | undefined

let installed = false

/** Tags this process's stdout (`info` by default) and stderr (`error`) lines; once. */
export function installLogTags(): void {
  if (installed) return
  installed = true
  const c = console as unknown as Record<string, (...args: unknown[]) => void>
  for (const [method, code] of Object.entries(LEVELS)) {
    const original = c[method]
    c[method] = function (this: unknown, ...args: unknown[]) {
      const outer = level
      level = code
      try {
        original.apply(this, args)
      } finally {
        level = outer
      }
    }
  }
  tag(process.stdout, 'i')
  tag(process.stderr, 'e')
}

function tag(stream: NodeJS.WriteStream, own: string): void {
  // Called as Node calls it: (chunk, encoding?, callback?).
  const write = stream.write as unknown as (this: NodeJS.WriteStream, ...args: unknown[]) => boolean
  // Whether the next byte written starts a line.
  let atStart = true
  stream.write = function (this: NodeJS.WriteStream, chunk: unknown, ...rest: unknown[]): boolean {
    const input = currentInputId()
    const lv = level ?? own
    if (input === undefined && lv === own) {
      const n = typeof chunk === 'string' || chunk instanceof Uint8Array ? chunk.length : 0
      if (n > 0) atStart = typeof chunk === 'string' ? chunk.endsWith('\n') : (chunk as Uint8Array)[n - 1] === 10
      return write.call(this, chunk, ...rest)
    }
    let text: string
    if (typeof chunk === 'string') {
      const encoding = typeof rest[0] === 'string' ? (rest[0] as BufferEncoding) : undefined
      text = encoding === undefined || encoding === 'utf8' || encoding === 'utf-8' ? chunk : Buffer.from(chunk, encoding).toString()
    } else if (chunk instanceof Uint8Array) {
      text = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength).toString()
    } else {
      return write.call(this, chunk, ...rest)
    }
    if (text.length === 0) return write.call(this, chunk, ...rest)
    const mark = `\x1e${lv}${input ?? ''}\x1f`
    // A tag at the start of each line this write begins.
    const body = text.slice(0, -1).replaceAll('\n', `\n${mark}`) + text.slice(-1)
    const tagged = atStart ? mark + body : body
    atStart = text.endsWith('\n')
    const cb = rest.find((r) => typeof r === 'function')
    return write.call(this, tagged, 'utf8', cb)
  } as NodeJS.WriteStream['write']
}
