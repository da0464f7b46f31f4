// `berth serve` run as a user runs it, for the tests that talk to it from outside (not a test
// file: ava only runs *.test.ts). A gRPC client that is not berth's code: @grpc/grpc-js with
// @grpc/proto-loader reading proto/ only.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import grpc from '@grpc/grpc-js'
import loader from '@grpc/proto-loader'
import { Encoder } from 'cbor-x'

export const root = fileURLToPath(new URL('..', import.meta.url))
export const cbor = new Encoder({ useRecords: false, mapsAsObjects: true, tagUint8Array: false })
const proto = loader.loadSync('berth/v1/functions.proto', { includeDirs: [join(root, 'proto')], defaults: true })
export const Functions = (grpc.loadPackageDefinition(proto) as any).berth.v1.Functions

export interface Served {
  child: ChildProcess
  address: string
  /** host:port of the HTTP ingress. */
  http: string
  marker: string
  stdout: () => string
  exited: Promise<number | null>
}

/** The marker folders of this test process, removed as it exits (tests read them up to their end). */
const markers: string[] = []
process.once('exit', () => {
  for (const d of markers) rmSync(d, { recursive: true, force: true })
})

export async function serve(extra: string[] = [], env: Record<string, string> = {}, fixture = 'served.ts'): Promise<Served> {
  const folder = mkdtempSync(join(tmpdir(), 'berth-serve-'))
  markers.push(folder)
  const marker = join(folder, 'marker')
  const child = spawn(process.execPath, [join(root, 'bin/berth.mjs'), 'serve', join(root, `__test__/fixtures/${fixture}`), '--grpc-port', '0', '--http-port', '0', ...extra], {
    env: { ...process.env, MARKER: marker, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let out = ''
  let err = ''
  child.stdout!.on('data', (d) => (out += d))
  child.stderr!.on('data', (d) => (err += d))
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)))
  const [address, http] = await new Promise<[string, string]>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`berth serve did not start in 20 s\n${out}\n${err}`)), 20_000)
    const check = () => {
      const m = /serving .* on (127\.0\.0\.1:\d+) .* http:\/\/(127\.0\.0\.1:\d+)\//.exec(out)
      if (m) {
        clearTimeout(timer)
        resolve([m[1], m[2]])
      }
    }
    child.stdout!.on('data', check)
    child.on('exit', () => reject(new Error(`berth serve exited\n${out}\n${err}`)))
  })
  return { child, address, http, marker, stdout: () => out + err, exited }
}

export const deadline = () => ({ deadline: Date.now() + 30_000 })

/** SIGTERM: the server drains, runs exit hooks and exits 0. */
export async function stopsCleanly(t: { is(a: unknown, b: unknown, m?: string): void }, s: Served): Promise<void> {
  s.child.kill('SIGTERM')
  t.is(await exitOf(s), 0, s.stdout())
}

export function invoke(client: any, fn: string, args: unknown[], extra: Record<string, unknown> = {}): Promise<any> {
  return new Promise((resolve, reject) =>
    client.Invoke({ function: { app: 'served', function: fn, ...extra }, args: cbor.encode(args) }, deadline(), (e: unknown, r: unknown) => (e ? reject(e) : resolve(r))),
  )
}

/** The exit status of `berth serve` after a signal, or a failure that shows its output. */
export async function exitOf(s: Served): Promise<number | null> {
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      let children = ''
      try {
        children = execFileSync('ps', ['--ppid', String(s.child.pid), '-o', 'pid,stat,etime,args']).toString()
      } catch {
        children = '(no children)'
      }
      reject(new Error(`berth serve did not exit within 30 s\n${s.stdout()}\nits processes:\n${children}`))
    }, 30_000)
  })
  // Cleared once it exits: a pending timer would hold the test process open for the rest of 30 s.
  return Promise.race([s.exited, late]).finally(() => clearTimeout(timer))
}

