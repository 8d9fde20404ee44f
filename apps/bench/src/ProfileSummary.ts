/**
 * The summary `profile.js` prints: self time of V8 CPU profiles (`node --cpu-prof`) by package
 * and by function, summed over every profile given.
 *
 * @since 0.1.0
 */

interface Node {
  readonly id: number
  readonly callFrame: { readonly functionName: string; readonly url: string; readonly lineNumber: number }
  readonly children?: ReadonlyArray<number>
}

/** The parts of a `.cpuprofile` the summary reads. */
export interface Profile {
  readonly nodes: ReadonlyArray<Node>
  readonly samples: ReadonlyArray<number>
  readonly timeDeltas: ReadonlyArray<number>
}

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

/** The text of the summary of `profiles` (named `label`), listing the `top` functions. */
export const summarise = (label: string, profiles: ReadonlyArray<Profile>, top: number): string => {
  const byFunction = new Map<string, number>()
  const byPackage = new Map<string, number>()
  let total = 0
  for (const profile of profiles) {
    const byId = new Map(profile.nodes.map((n) => [n.id, n]))
    profile.samples.forEach((id, i) => {
      const t = profile.timeDeltas[i] ?? 0
      const n = byId.get(id)
      if (n === undefined) return
      total += t
      byFunction.set(fnKey(n), (byFunction.get(fnKey(n)) ?? 0) + t)
      const pkg = n.callFrame.functionName === "(idle)" ? "(idle)" : packageOf(n.callFrame.url)
      byPackage.set(pkg, (byPackage.get(pkg) ?? 0) + t)
    })
  }
  const pct = (t: number) => `${((t / (total || 1)) * 100).toFixed(1).padStart(5)}%`
  const ms = (t: number) => `${(t / 1000).toFixed(0).padStart(7)} ms`
  const lines = [`profile ${label}: ${(total / 1e6).toFixed(1)} s sampled`, "", "self time by package"]
  for (const [k, t] of [...byPackage].sort((a, b) => b[1] - a[1]).slice(0, 20))
    lines.push(`${pct(t)} ${ms(t)}  ${k}`)
  lines.push("", "self time by function")
  for (const [k, t] of [...byFunction].sort((a, b) => b[1] - a[1]).slice(0, top))
    lines.push(`${pct(t)} ${ms(t)}  ${k}`)
  return `${lines.join("\n")}\n`
}
