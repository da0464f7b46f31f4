// Started the way users start it: `npx berth serve app.ts` in a project that depends on berth,
// stopped the way a process manager stops it (SIGTERM to the process it started: npx).
import test from 'ava'
import { copyFileSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import grpc from '@grpc/grpc-js'

import { npxServe, processesIn, userProject } from './_project.ts'
import { Functions, cbor, invoke, root } from './_served.ts'
import { alive, until } from './_util.ts'

/** A user's project serving fixtures/served.ts as app.ts. */
const servedProject = () => userProject('berth-project-', (dir) => copyFileSync(join(root, '__test__', 'fixtures', 'served.ts'), join(dir, 'app.ts')))

test.serial('npx berth serve under a process manager: SIGTERM to npx drains the server, runs @exit, and no process outlives it', async (t) => {
  if (process.platform !== 'linux') return t.pass('reads /proc')
  const dir = servedProject()
  const marker = join(dir, 'marker')
  const { npx, out } = npxServe(t, dir, [], { MARKER: marker })
  await until(() => /serving .* on (127\.0\.0\.1:\d+)/.test(out()), 60_000, () => `berth serve to listen\n${out()}`)
  const address = /serving .* on (127\.0\.0\.1:\d+)/.exec(out())![1]
  const [server] = processesIn(dir, ['berth', 'serve', 'app.ts'])
  t.truthy(server, 'berth serve runs')
  t.not(server, npx.pid, 'npx runs berth serve as a process of its own')

  const client = new Functions(address, grpc.credentials.createInsecure())
  const embed = await invoke(client, 'Embedder', ['hi'], { method: 'embed' })
  t.deepEqual(cbor.decode(embed.result.value), [2, 'mini'])
  const container = cbor.decode((await invoke(client, 'pid', [])).result.value) as number
  client.close()
  t.true(alive(container))

  npx.kill('SIGTERM')
  await until(() => !alive(server), 30_000, () => `berth serve to exit after npx got SIGTERM\n${out()}`)
  t.false(alive(container), 'the server exits last: its containers are gone by then')
  t.deepEqual([...processesIn(dir, ['berth']), ...processesIn(dir, ['berth.mjs'])], [], 'no berth process is left')
  const log = readFileSync(marker, 'utf8')
  t.regex(log, /^exit mini$/m, 'the container ran @exit')
})
