// `berth deploy app.ts` to a running `berth serve` (README "Deploy to a running server"), on the
// server's side: the control plane hands each deploy to this process (BindingServer
// watchDeploys, takeDeploys); the file is loaded in a child process as a reload is
// (src/cli/reload.ts), and its apps then replace those of the same names, or join the served
// ones (BindingServer.replaceApps: a replaced app's containers finish what they took and drain).
// Their containers load the deployed file and start in the deploying command's directory: the
// function's env names both (BERTH_APP_FILE, BERTH_CWD; src/cli/main.ts `container`).
import { realpathSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname } from 'node:path'

import type { BindingFunctionDef } from '../native.ts'
import { type Loaded, oneLine } from './reload.ts'

/** What of `berth serve`'s BindingServer a deploy uses. */
export interface DeployServer {
  watchDeploys(doorbell: () => void): void
  takeDeploys(): { id: number; file: string; cwd: string }[]
  answerDeploy(id: number, served?: string | null, error?: string | null): void
  replaceApps(apps: string[], functions: BindingFunctionDef[]): number
}

export interface DeployOptions {
  /** This berth's package directory: a deployed file must import this very berth. */
  berthRoot: string
  /** Loads `file` in a child process started in `cwd` (src/cli/reload.ts loadInChild). */
  load(file: string, cwd: string): Promise<Loaded>
  /** After each deploy: the definitions now served for these apps (to print the endpoints). */
  deployed(apps: string[], functions: BindingFunctionDef[], file: string): void
  log(line: string, level: 'info' | 'warn' | 'error'): void
}

/**
 * Why `file` cannot run under this server's berth, or undefined when it can: the file's `import
 * 'berth'` must reach the same install (its App registry is that module's), not another copy.
 */
export function otherBerth(file: string, berthRoot: string): string | undefined {
  let theirs: string
  try {
    theirs = realpathSync(dirname(createRequire(file).resolve('berth/package.json')))
  } catch {
    return `${file} cannot import berth from its directory: install berth in the app's project (npm install berth)`
  }
  const ours = realpathSync(berthRoot)
  if (theirs === ours) return undefined
  return (
    `${file} imports berth from ${theirs}, and this server runs berth from ${ours}: a deployed app must use ` +
    "the server's install. Serve it with that project's `npx berth serve`, or start the server from the app's project"
  )
}

/** Carries out the deploys asked of `server`, one at a time, in the order they came. */
export function acceptDeploys(server: DeployServer, opts: DeployOptions): void {
  let queue = Promise.resolve()
  server.watchDeploys(() => {
    for (const ask of server.takeDeploys()) {
      // A deploy that fails unexpectedly is answered so, and the next ones still run.
      queue = queue.then(() =>
        deployOne(server, opts, ask).catch((e: unknown) => {
          opts.log(`berth: deploy of ${ask.file} failed: ${oneLine(e)}`, 'error')
          server.answerDeploy(ask.id, null, oneLine(e))
        }),
      )
    }
  })
}

async function deployOne(server: DeployServer, opts: DeployOptions, ask: { id: number; file: string; cwd: string }) {
  const refuse = (why: string) => {
    opts.log(`berth: deploy of ${ask.file} refused: ${why}`, 'warn')
    server.answerDeploy(ask.id, null, why)
  }
  const other = otherBerth(ask.file, opts.berthRoot)
  if (other !== undefined) return refuse(other)
  const loaded = await opts.load(ask.file, ask.cwd || dirname(ask.file))
  if ('error' in loaded) return refuse(`${ask.file} did not load: ${loaded.error}`)
  for (const f of loaded.functions) {
    f.env = { ...f.env, BERTH_APP_FILE: ask.file, ...(ask.cwd ? { BERTH_CWD: ask.cwd } : {}) }
  }
  try {
    server.replaceApps(loaded.apps, loaded.functions)
  } catch (e) {
    return refuse(oneLine(e))
  }
  // An app included in another (app.include) is served under the includer's name: not listed.
  const apps = loaded.apps
    .map((app) => ({ app, functions: loaded.functions.filter((f) => f.app === app).map((f) => f.name) }))
    .filter((a) => a.functions.length > 0)
  opts.log(`berth: deployed ${apps.map((a) => `'${a.app}' (${a.functions.length} functions)`).join(', ')} from ${ask.file}`, 'info')
  opts.deployed(loaded.apps, loaded.functions, ask.file)
  server.answerDeploy(ask.id, JSON.stringify({ apps }), null)
}
