// Test "hosts" on one machine: Linux network namespaces joined by a bridge, each with an address
// of its own, for tests of what crosses a network (a host cut off mid-run). Needs root and
// iproute2 (`ip`). Not a test file: ava only runs *.test.ts.
import { execFileSync, spawnSync } from 'node:child_process'

/** Why hosts cannot be made here, or undefined when they can. */
export function hostsUnavailable(): string | undefined {
  if (process.platform !== 'linux') return 'network namespaces are Linux only'
  if (process.getuid?.() !== 0) return 'making network namespaces takes root'
  const ip = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' })
  if (ip.error !== undefined || ip.status !== 0) return `\`ip netns\` does not work here (${ip.error?.message ?? ip.stderr.trim()}): install iproute2`
  return undefined
}

export interface Hosts {
  /** Host `name`'s address. */
  address(name: string): string
  /** The argv prefix that runs a command on host `name`. */
  exec(name: string): string[]
  /** Cuts host `name` off the network (its link down), as a pulled cable would. */
  cut(name: string): void
  /** Removes the namespaces and the bridge; each step is tried, also after a failed one. */
  remove(): void
}

const ip = (...args: string[]) => execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] })

/**
 * Hosts `names`, each a namespace `berth<id>-<name>` on the bridge `bb<id>` (10.<a>.<b>.1/24),
 * with addresses .10, .11, ... in order. `id` keeps concurrent runs apart (interface names are
 * at most 15 bytes). Remove them with `remove()`, also when the test fails.
 */
export function makeHosts(id: number, names: string[]): Hosts {
  const net = `10.213.${id % 250}`
  const bridge = `bb${id}`
  const ns = (name: string) => `berth${id}-${name}`
  const made: string[] = []
  const hosts: Hosts = {
    address: (name) => `${net}.${10 + names.indexOf(name)}`,
    exec: (name) => ['ip', 'netns', 'exec', ns(name)],
    cut: (name) => ip('-n', ns(name), 'link', 'set', 'eth0', 'down'),
    remove() {
      for (const n of made) {
        try {
          ip('netns', 'del', n)
        } catch {
          // gone already
        }
      }
      try {
        ip('link', 'del', bridge)
      } catch {
        // gone already
      }
    },
  }
  try {
    ip('link', 'add', bridge, 'type', 'bridge')
    ip('addr', 'add', `${net}.1/24`, 'dev', bridge)
    ip('link', 'set', bridge, 'up')
    for (const [i, name] of names.entries()) {
      const outside = `bv${id}x${i}`
      const inside = `bv${id}y${i}`
      ip('netns', 'add', ns(name))
      made.push(ns(name))
      ip('link', 'add', outside, 'type', 'veth', 'peer', 'name', inside)
      ip('link', 'set', inside, 'netns', ns(name))
      ip('-n', ns(name), 'link', 'set', inside, 'name', 'eth0')
      ip('-n', ns(name), 'addr', 'add', `${hosts.address(name)}/24`, 'dev', 'eth0')
      ip('-n', ns(name), 'link', 'set', 'eth0', 'up')
      ip('-n', ns(name), 'link', 'set', 'lo', 'up')
      ip('link', 'set', outside, 'master', bridge)
      ip('link', 'set', outside, 'up')
    }
  } catch (e) {
    hosts.remove()
    throw e
  }
  return hosts
}
