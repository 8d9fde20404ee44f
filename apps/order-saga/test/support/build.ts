/**
 * The end-to-end tests fork the compiled service and orchestrator entry points (dist/bin): compile
 * first when any source is newer than its output.
 */
import { execFileSync } from "node:child_process"
import { existsSync, readdirSync, statSync } from "node:fs"
import { createRequire } from "node:module"
import { join } from "node:path"

const root = join(import.meta.dirname, "..", "..")

const newest = (dir: string): number =>
  readdirSync(dir, { withFileTypes: true }).reduce((acc, entry) => {
    const path = join(dir, entry.name)
    return Math.max(acc, entry.isDirectory() ? newest(path) : statSync(path).mtimeMs)
  }, 0)

export default function setup(): void {
  const marker = join(root, "dist", "bin", "orchestrator.js")
  if (existsSync(marker) && statSync(marker).mtimeMs >= newest(join(root, "src"))) return
  const tsc = createRequire(join(root, "package.json")).resolve("typescript/bin/tsc")
  execFileSync(process.execPath, [tsc, "-p", "tsconfig.build.json"], { cwd: root, stdio: "inherit" })
}
