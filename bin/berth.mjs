#!/usr/bin/env node
import { createRequire } from 'node:module'
const require = createRequire(import.meta.url)
require('../dist/cli.cjs').main(process.argv.slice(2)).then(
  (code) => { process.exitCode = code },
  (err) => { console.error(err?.stack ?? String(err)); process.exitCode = 1 },
)
