// The package a user installs, as `npm pack` writes it (package.json's prepack and postpack run
// this; `npm run release` publishes). Two manifests:
// - the repository's package.json builds everything at `npm install` (`prepare`:
//   scripts/build.mjs, which needs Rust) and carries the test and release scripts;
// - the published one carries no scripts: npm 11 counts `prepare` as an install script, and
//   scripts/ is not shipped. A user gets the native core from the package of their platform
//   (npm/<platform>, an optionalDependency of berth), never from a build.
//
//   node scripts/pack.mjs prepack    checks the build and the platform packages, then puts the
//                                    publish manifest in package.json (the repository's waits
//                                    in package.json.prepack)
//   node scripts/pack.mjs postpack   puts the repository's package.json back
//   node scripts/pack.mjs restore    the same, by hand, after a pack that died in between
//   node scripts/pack.mjs publish    (prepublishOnly) refuses `npm publish` from the directory
import { existsSync, readdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const manifestPath = join(root, 'package.json')
const backupPath = join(root, 'package.json.prepack')

/** Fields of the repository's package.json that mean nothing in an installed package. */
const REPOSITORY_ONLY = ['scripts', 'ava', 'allowScripts']

function fail(message) {
  console.error(`scripts/pack.mjs: ${message}`)
  process.exit(1)
}

/** The files the package's JavaScript needs, built by scripts/build.mjs (`npm run build`). */
function checkBuild() {
  const built = ['binding.cjs', 'binding.d.ts', 'dist/index.cjs', 'dist/index.cjs.map', 'dist/index.mjs',
    'dist/cli.cjs', 'dist/cli.cjs.map', 'dist/types/index.d.ts']
  const missing = built.filter((f) => !existsSync(join(root, f)))
  if (missing.length > 0) fail(`${missing.join(', ')} not built: run \`npm run build\` first`)
  const builtAt = statSync(join(root, 'dist/index.cjs')).mtimeMs
  const newer = readdirSync(join(root, 'src'), { recursive: true }).filter((f) => statSync(join(root, 'src', f)).mtimeMs > builtAt)
  if (newer.length > 0) fail(`src/${newer[0]} is newer than dist/index.cjs: run \`npm run build\` first`)
}

/**
 * The napi-rs layout: one npm/<platform> package per target in package.json's napi.targets,
 * each named berth-<platform> at berth's version and listed in optionalDependencies at that
 * version (`npm version` runs `napi version` for npm/*; `napi pre-publish` rewrites
 * optionalDependencies at release).
 */
function checkPlatformPackages(pkg) {
  const dirs = readdirSync(join(root, 'npm')).filter((d) => existsSync(join(root, 'npm', d, 'package.json')))
  const want = {}
  for (const d of dirs) {
    const p = JSON.parse(readFileSync(join(root, 'npm', d, 'package.json'), 'utf8'))
    if (p.name !== `${pkg.name}-${d}`) fail(`npm/${d}/package.json is named ${p.name}; it must be ${pkg.name}-${d}`)
    if (p.version !== pkg.version) {
      fail(`npm/${d}/package.json is version ${p.version}, berth is ${pkg.version}: run \`npx napi version\``)
    }
    const node = `${pkg.napi.binaryName}.${d}.node`
    if (p.main !== node || JSON.stringify(p.files) !== JSON.stringify([node])) {
      fail(`npm/${d}/package.json must have "main": "${node}" and "files": ["${node}"]`)
    }
    want[p.name] = pkg.version
  }
  if (dirs.length !== pkg.napi.targets.length) {
    fail(`package.json's napi.targets has ${pkg.napi.targets.length} targets, npm/ has ${dirs.length} packages ` +
      `(${dirs.join(', ')}): run \`npx napi create-npm-dirs\``)
  }
  const have = pkg.optionalDependencies ?? {}
  const sorted = (o) => JSON.stringify(Object.entries(o).sort(([a], [b]) => a.localeCompare(b)))
  if (sorted(have) !== sorted(want)) {
    fail(`package.json's optionalDependencies must be ${JSON.stringify(want)} (the npm/ packages at berth's ` +
      `version), not ${JSON.stringify(have)}`)
  }
}

function restore() {
  if (!existsSync(backupPath)) return false
  renameSync(backupPath, manifestPath)
  return true
}

switch (process.argv[2]) {
  case 'prepack': {
    if (existsSync(backupPath)) {
      fail('package.json.prepack is left from a pack that did not finish, and package.json may be the publish ' +
        'manifest: run `node scripts/pack.mjs restore`, then pack again')
    }
    const text = readFileSync(manifestPath, 'utf8')
    const pkg = JSON.parse(text)
    checkBuild()
    checkPlatformPackages(pkg)
    const published = Object.fromEntries(Object.entries(pkg).filter(([k]) => !REPOSITORY_ONLY.includes(k)))
    writeFileSync(backupPath, text)
    // Replaced in one rename: a process reading package.json meanwhile (tsx, a test) sees one of
    // the two whole files.
    writeFileSync(`${manifestPath}.publish`, JSON.stringify(published, null, 2) + '\n')
    renameSync(`${manifestPath}.publish`, manifestPath)
    break
  }
  case 'postpack':
  case 'restore':
    restore()
    break
  case 'publish':
    fail('`npm publish` from the directory would send the repository\'s package.json (its `prepare` ' +
      'needs Rust) as the registry\'s metadata, and not the platform packages: run `npm run release`')
    break
  default:
    fail(`unknown step ${JSON.stringify(process.argv[2])}: prepack, postpack, restore or publish`)
}
