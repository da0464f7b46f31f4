// What the CLI itself prints while `berth serve` or `berth worker` runs (its banner, reloads,
// stopping): text, or under `--log-format json` one JSON object a line with the fields of the
// control plane's own lines (`time`, `stream: "berth"`, `level`, `message`;
// crates/berth-server/src/supervisor/output.rs `server_json`), so that a log collector reading
// the process's output reads only JSON (README "Observability").

let json = false

/** `--log-format`'s value: what `say` prints from here on. */
export function setLogFormat(format: string): void {
  json = format === 'json'
}

/**
 * Prints `text` (one line or several) on `stream`: as it is, or under json each line as an
 * object of its own, at `level` (`whole`: one object, its lines in its message, as for a stack).
 */
export function say(stream: NodeJS.WritableStream, text: string, level: 'info' | 'warn' | 'error' = 'info', whole = false): void {
  if (!json) {
    stream.write(text.endsWith('\n') ? text : `${text}\n`)
    return
  }
  let out = ''
  for (const line of whole ? [text.trimEnd()] : text.split('\n')) {
    if (line.trim() === '') continue
    out += `${JSON.stringify({ time: new Date().toISOString(), stream: 'berth', level, message: line })}\n`
  }
  stream.write(out)
}
