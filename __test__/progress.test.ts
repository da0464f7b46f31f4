// A map's progress line (README "Progress"): drawn on the terminal (a pseudo-terminal made by
// util-linux `script`), with done/total, the rate, the time left and the failures; nothing at
// all when the output is a pipe.
import test from 'ava'
import { spawnSync } from 'node:child_process'
import { join } from 'node:path'

import { berth, root } from './_cli.ts'

const FIXTURE = join(root, '__test__/fixtures/progress.ts')
const hasScript = spawnSync('script', ['--version']).status === 0

;(hasScript ? test : test.skip)('berth run on a terminal: .map() draws done/total, rate, ETA and failures, then leaves its last state on a line of its own', (t) => {
  // `script` runs the command on a pseudo-terminal (stdout and stderr) and copies what it wrote.
  const cmd = `${JSON.stringify(process.execPath)} ${JSON.stringify(join(root, 'bin/berth.mjs'))} run ${JSON.stringify(FIXTURE)}`
  const env: NodeJS.ProcessEnv = { ...process.env, NODE_OPTIONS: '' }
  delete env.BERTH_PROGRESS
  const r = spawnSync('script', ['-qec', cmd, '/dev/null'], { cwd: root, encoding: 'utf8', timeout: 60_000, env })
  t.is(r.status, 0, r.stdout + r.stderr)
  const out = r.stdout
  t.regex(out, /mapped 90 ok/)
  const redraws = out.split('\r\x1b[2K').slice(1)
  t.true(redraws.length >= 2, `redrawn in place: ${JSON.stringify(out.slice(0, 2000))}`)
  const last = redraws[redraws.length - 1].split(/\r?\n/)[0]
  t.regex(last, /^slow\.map\(\): 100\/100 █{24} 100% · [\d,]+\/s · 10 failed$/, last)
  t.true(redraws.some((l) => /ETA \d+s/.test(l)), 'the time left while it runs')
  t.true(redraws.some((l) => /^slow\.map\(\): \d+\/100 █*░+ \d+%/.test(l)), 'a line before the end')
})

test('berth run on pipes: no progress line, only the program output', async (t) => {
  const r = await berth(['run', FIXTURE], { BERTH_PROGRESS: undefined })
  t.is(r.code, 0, r.stderr)
  t.regex(r.stdout, /mapped 90 ok/)
  t.false((r.stdout + r.stderr).includes('slow.map()'), r.stdout + r.stderr)
  t.false((r.stdout + r.stderr).includes('\x1b[2K'))
})
