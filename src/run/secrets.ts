// Named secrets for container processes, kept on this machine: one JSON file of string values
// per secret in BERTH_SECRETS_DIR (default ~/.berth/secrets), readable by the owner only.
// `npx berth secret create NAME KEY=VALUE...` writes one; the `secrets` option of a function or
// class sets its keys in the environment of that function's containers.
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { homedir } from 'node:os'
import { join } from 'node:path'

import { InvalidError } from '../shared/errors.ts'

const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/
const KEY = /^[A-Za-z_][A-Za-z0-9_]*$/

export function secretsDir(): string {
  return process.env.BERTH_SECRETS_DIR ?? join(homedir(), '.berth', 'secrets')
}

function fileOf(name: string): string {
  if (!NAME.test(name)) {
    throw new InvalidError(`secret name '${name}' must be letters, digits, '_', '.', '-' (not starting with a symbol), e.g. 'huggingface'`)
  }
  return join(secretsDir(), `${name}.json`)
}

/** Writes (or replaces) a secret from `KEY=VALUE` pairs. */
export function createSecret(name: string, pairs: string[]): string {
  const file = fileOf(name)
  if (pairs.length === 0) throw new InvalidError(`secret '${name}' needs at least one KEY=VALUE, e.g. HF_TOKEN=hf_abc`)
  const values: Record<string, string> = {}
  for (const p of pairs) {
    const eq = p.indexOf('=')
    const key = eq === -1 ? p : p.slice(0, eq)
    if (eq === -1 || !KEY.test(key)) {
      throw new InvalidError(`'${p}' is not KEY=VALUE with KEY an environment variable name (letters, digits, '_'), e.g. HF_TOKEN=hf_abc`)
    }
    values[key] = p.slice(eq + 1)
  }
  mkdirSync(secretsDir(), { recursive: true, mode: 0o700 })
  writeFileSync(file, JSON.stringify(values), { mode: 0o600 })
  chmodSync(file, 0o600)
  return file
}

export function listSecrets(): { name: string; keys: string[] }[] {
  if (!existsSync(secretsDir())) return []
  return readdirSync(secretsDir())
    .filter((f) => f.endsWith('.json'))
    .sort()
    .map((f) => ({ name: f.slice(0, -5), keys: Object.keys(readSecretFile(join(secretsDir(), f), f.slice(0, -5))) }))
}

function readSecretFile(file: string, name: string): Record<string, string> {
  let parsed: unknown
  try {
    parsed = JSON.parse(readFileSync(file, 'utf8'))
  } catch (e) {
    throw new InvalidError(
      `secret '${name}' (${file}) is not readable JSON (${(e as Error).message}); write it again with: npx berth secret create ${name} KEY=VALUE`,
    )
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed) || Object.values(parsed).some((v) => typeof v !== 'string')) {
    throw new InvalidError(
      `secret '${name}' (${file}) must be a JSON object of strings; write it again with: npx berth secret create ${name} KEY=VALUE`,
    )
  }
  return parsed as Record<string, string>
}

/**
 * The environment of a function's containers: its secrets in the order given, then its `env`
 * (an explicit `env` value wins over a secret's key of the same name).
 */
export function containerEnv(who: string, secrets: string[], env: Record<string, string>): Record<string, string> {
  const out: Record<string, string> = {}
  for (const name of secrets) {
    const file = fileOf(name)
    if (!existsSync(file)) {
      throw new InvalidError(
        `${who} uses secret '${name}', which does not exist in ${secretsDir()}; create it with: npx berth secret create ${name} KEY=VALUE`,
      )
    }
    Object.assign(out, readSecretFile(file, name))
  }
  return Object.assign(out, env)
}
