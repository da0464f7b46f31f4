// A nats-server of a test's own (Debian's `nats-server`): JetStream, a store of its own, a port
// of its own; for the broker tests that restart it or put it in a network namespace.
import { type ChildProcess, spawn, spawnSync } from 'node:child_process'
import { createServer } from 'node:net'

import { until } from './_util.ts'

/** Debian's nats-server, or undefined. */
export function natsServer(): string | undefined {
  for (const p of ['nats-server', '/usr/sbin/nats-server', '/usr/bin/nats-server']) {
    if (spawnSync(p, ['--version']).status === 0) return p
  }
  return undefined
}

/** A TCP port nothing listens on now. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer()
      .once('error', reject)
      .listen(0, '127.0.0.1', () => {
        const port = (s.address() as { port: number }).port
        s.close(() => resolve(port))
      })
  })
}

/** `bin -a 127.0.0.1 -p port -js -sd store`, in a process group of its own; resolves once it is ready. */
export async function startNats(bin: string, port: number, store: string): Promise<{ child: ChildProcess; out: () => string }> {
  const child = spawn(bin, ['-a', '127.0.0.1', '-p', String(port), '-js', '-sd', store], { stdio: ['ignore', 'pipe', 'pipe'], detached: true })
  let out = ''
  child.stdout!.on('data', (d) => (out += d))
  child.stderr!.on('data', (d) => (out += d))
  await until(() => /Server is ready/.test(out) || child.exitCode !== null, 30_000, `nats-server on ${port} to start`)
  if (child.exitCode !== null) throw new Error(`nats-server on ${port} exited ${child.exitCode}:\n${out}`)
  return { child, out: () => out }
}
