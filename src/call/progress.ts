// A map's progress on the terminal (README "Progress"): inputs done of the total (when the
// inputs say how many they are), the rate, the time left and the failures, redrawn in place on
// stderr at most ten times a second. Only when both stdout and stderr are terminals, and not in
// container processes; BERTH_PROGRESS=0 turns it off. A map that ends within SHOW_AFTER_MS never
// draws, so quick maps leave nothing behind.

/** What `mapLoop` tells the progress line. */
export interface Progress {
  /** An input finished; `ok` false when it failed. */
  done(ok: boolean): void
  /** The map ended (every input, a break, a failure): the last state stays on its own line. */
  end(): void
}

const SHOW_AFTER_MS = 300
const EVERY_MS = 100
const WIDTH = 24

const NONE: Progress = { done() {}, end() {} }

function wanted(): boolean {
  if (process.env.BERTH_PROGRESS === '0' || process.env.BERTH_CONTAINER_ID !== undefined) return false
  return process.stdout.isTTY === true && process.stderr.isTTY === true
}

/** How many inputs `iterables` hold together (the shortest, as map zips them), if they say. */
export function countOf(iterables: unknown[]): number | undefined {
  let n: number | undefined
  for (const it of iterables) {
    const size =
      Array.isArray(it) || ArrayBuffer.isView(it)
        ? (it as { length: number }).length
        : it instanceof Set || it instanceof Map
          ? it.size
          : undefined
    if (size === undefined) return undefined
    n = n === undefined ? size : Math.min(n, size)
  }
  return n
}

export function progress(label: string, total: number | undefined): Progress {
  if (!wanted()) return NONE
  const started = performance.now()
  let done = 0
  let failed = 0
  let drawn = false
  const line = () => {
    const secs = (performance.now() - started) / 1000
    const rate = secs > 0 ? done / secs : 0
    const parts = [`${label}: ${done.toLocaleString('en-US')}${total === undefined ? '' : `/${total.toLocaleString('en-US')}`}`]
    if (total !== undefined && total > 0) {
      const filled = Math.round((WIDTH * done) / total)
      parts[0] += ` ${'█'.repeat(filled)}${'░'.repeat(WIDTH - filled)} ${Math.floor((100 * done) / total)}%`
    }
    parts.push(`${Math.round(rate).toLocaleString('en-US')}/s`)
    if (total !== undefined && rate > 0 && done < total) parts.push(`ETA ${eta((total - done) / rate)}`)
    if (failed > 0) parts.push(`${failed.toLocaleString('en-US')} failed`)
    return parts.join(' · ')
  }
  const draw = () => {
    drawn = true
    process.stderr.write(`\r\x1b[2K${line()}`)
  }
  const timer = setInterval(() => {
    if (performance.now() - started >= SHOW_AFTER_MS) draw()
  }, EVERY_MS)
  timer.unref()
  return {
    done(ok) {
      done++
      if (!ok) failed++
    },
    end() {
      clearInterval(timer)
      if (drawn) {
        draw()
        process.stderr.write('\n')
      }
    },
  }
}

function eta(seconds: number): string {
  if (seconds < 60) return `${Math.ceil(seconds)}s`
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m${String(Math.floor(seconds % 60)).padStart(2, '0')}s`
  return `${Math.floor(seconds / 3600)}h${String(Math.floor((seconds % 3600) / 60)).padStart(2, '0')}m`
}
