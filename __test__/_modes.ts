// A fixture script run once per container mode (not a test file: ava only runs *.test.ts). The
// script takes `<scenario> embedded|process` and prints one line `result <json>`.
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'

const root = fileURLToPath(new URL('..', import.meta.url))
export const MODES = ['embedded', 'process'] as const

export interface Run {
  code: number | null
  stdout: string
  stderr: string
  /** stdout and stderr as they arrived. */
  out: string
  result: any
}

export function runInMode(fixture: string, scenario: string, mode: string): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', fixture, scenario, mode], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    let out = ''
    child.stdout.on('data', (d) => {
      stdout += d
      out += d
    })
    child.stderr.on('data', (d) => {
      stderr += d
      out += d
    })
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`${scenario} (${mode}) did not finish in 60 s:\n${out}`))
    }, 60_000)
    child.on('close', (code) => {
      clearTimeout(timer)
      const line = stdout.split('\n').find((l) => l.startsWith('result '))
      resolve({ code, stdout, stderr, out, result: line === undefined ? undefined : JSON.parse(line.slice('result '.length)) })
    })
  })
}

/** The scenario embedded and with container processes, in that order. */
export const inBothModes = (fixture: string, scenario: string): Promise<Run[]> => Promise.all(MODES.map((m) => runInMode(fixture, scenario, m)))
