#!/usr/bin/env node
/**
 * `node apps/bench/dist/profile.js FILE.cpuprofile [top]`: summarises a V8 CPU profile written by
 * `node --cpu-prof`: self time by function and by package, so the hot path can be read without a
 * flame-graph viewer.
 *
 * @since 0.1.0
 */
import { readFileSync } from "node:fs"

interface Node {
  readonly id: number
  readonly callFrame: { readonly functionName: string; readonly url: string; readonly lineNumber: number }
  readonly children?: ReadonlyArray<number>
}

interface Profile {
  readonly nodes: ReadonlyArray<Node>
  readonly samples: ReadonlyArray<number>
  readonly timeDeltas: ReadonlyArray<number>
  readonly startTime: number
  readonly endTime: number
}

const file = process.argv[2]
if (file === undefined) {
  process.stderr.write("usage: profile.js FILE.cpuprofile [top]\n")
  process.exit(2)
}
const top = Number(process.argv[3] ?? 30)
const profile = JSON.parse(readFileSync(file, "utf8")) as Profile
const byId = new Map(profile.nodes.map((n) => [n.id, n]))
const self = new Map<number, number>()
profile.samples.forEach((id, i) => {
  self.set(id, (self.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0))
})
const total = [...self.values()].reduce((s, x) => s + x, 0)

const packageOf = (url: string): string => {
  if (url === "") return "(native/idle)"
  const pnpm = /node_modules\/\.pnpm\/([^/]+)\//.exec(url)
  if (pnpm) return pnpm[1]!.replace(/@(\d[^_]*)(_.*)?$/, "")
  const nm = /node_modules\/((@[^/]+\/)?[^/]+)\//.exec(url)
  if (nm) return nm[1]!
  const accord = /\/(packages|apps)\/([^/]+)\//.exec(url)
  if (accord) return `@accord/${accord[2]}`
  if (url.startsWith("node:")) return "node:internal"
  return url
}

const fnKey = (n: Node) =>
  `${n.callFrame.functionName || "(anonymous)"} ${n.callFrame.url.replace(/^.*node_modules\/\.pnpm\//, "").replace(/^file:\/\/.*\/(packages|apps)\//, "")}:${n.callFrame.lineNumber + 1}`

const byFunction = new Map<string, number>()
const byPackage = new Map<string, number>()
for (const [id, t] of self) {
  const n = byId.get(id)!
  byFunction.set(fnKey(n), (byFunction.get(fnKey(n)) ?? 0) + t)
  const pkg = n.callFrame.functionName === "(idle)" ? "(idle)" : packageOf(n.callFrame.url)
  byPackage.set(pkg, (byPackage.get(pkg) ?? 0) + t)
}
const pct = (t: number) => `${((t / total) * 100).toFixed(1).padStart(5)}%`
const ms = (t: number) => `${(t / 1000).toFixed(0).padStart(7)} ms`
process.stdout.write(`profile ${file}: ${(total / 1e6).toFixed(1)} s sampled\n\nself time by package\n`)
for (const [k, t] of [...byPackage].sort((a, b) => b[1] - a[1]).slice(0, 20)) {
  process.stdout.write(`${pct(t)} ${ms(t)}  ${k}\n`)
}
process.stdout.write("\nself time by function\n")
for (const [k, t] of [...byFunction].sort((a, b) => b[1] - a[1]).slice(0, top)) {
  process.stdout.write(`${pct(t)} ${ms(t)}  ${k}\n`)
}
