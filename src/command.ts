// How a container process starts: this package's CLI in its container mode. One definition for
// the CLI (which prestarts the first container) and app.run() (whose server adopts it only when
// the commands are equal). Imports nothing of berth, so the CLI bundle stays free of its state.
import { resolve } from 'node:path'

export function containerCommand(): string[] {
  return [process.execPath, resolve(__dirname, '../bin/berth.mjs'), '__container']
}
