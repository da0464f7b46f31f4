// Container output (README "Process containers"): every line a container process writes reaches
// the server's stdout or stderr whole, behind the name of its container; a line past 64 KiB is
// cut, not buffered whole.
import test from 'ava'
import { join } from 'node:path'

import { berth, root } from './_cli.ts'

test('berth run: container lines carry app/function#container, stdout and stderr apart; a 200 KiB line is cut at 64 KiB', async (t) => {
  const r = await berth(['run', join(root, '__test__/fixtures/logs.ts')])
  t.is(r.code, 0, r.stderr)
  t.regex(r.stdout, /^logs\/shout#\d+ \| hello world$/m)
  t.regex(r.stderr, /^logs\/shout#\d+ \| warning about world$/m)
  t.regex(r.stdout, /^length 5$/m, 'the caller’s own output is not prefixed')
  const long = r.stdout.split('\n').find((l) => l.includes('xxxx'))
  t.truthy(long)
  t.regex(long!, /^logs\/shout#\d+ \| x{65536} \[berth: line cut at 65536 bytes\]$/)
  t.false(r.stdout.includes(' end'), 'the rest of the cut line is dropped')
})
