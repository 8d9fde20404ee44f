/**
 * The results: ratios to baselines, a markdown table, an SVG chart of tps by concurrency, and the
 * target checks of issue 6.
 *
 * @since 0.1.0
 */
import type { Cell } from "./Runner.js"

/**
 * Fills each cell's ratio to its baseline at the same concurrency.
 * @since 0.1.0
 */
export const withRatios = (
  cells: ReadonlyArray<Cell>,
  baselines: ReadonlyMap<string, string>
): ReadonlyArray<Cell> =>
  cells.map((c) => {
    const baseline = baselines.get(c.mode)
    if (baseline === undefined) return c
    const base = cells.find((b) => b.mode === baseline && b.concurrency === c.concurrency)
    if (base === undefined || base.tps === 0) return { ...c, baseline }
    return {
      ...c,
      baseline,
      ratio: Math.round((c.tps / base.tps) * 1000) / 1000,
      p50DeltaMs: Math.round((c.p50Ms - base.p50Ms) * 1000) / 1000
    }
  })

/**
 * One target of issue 6 and whether this run met it.
 * @since 0.1.0
 */
export interface Target {
  readonly target: string
  readonly measured: string
  readonly met: boolean | null
}

const at = (cells: ReadonlyArray<Cell>, mode: string, c: number) =>
  cells.find((x) => x.mode === mode && x.concurrency === c)

/**
 * Checks the targets that this run measured.
 * @since 0.1.0
 */
export const targets = (cells: ReadonlyArray<Cell>): ReadonlyArray<Target> => {
  const out: Array<Target> = []
  // The issue's targets for accord2pc, and the same for the same transfer as a pipelined work.
  for (const mode of ["accord2pc", "accord2pc-pipelined"]) {
    for (const c of [1, 8, 32]) {
      const x = at(cells, mode, c)
      if (x?.ratio !== undefined) {
        out.push({ target: `${mode} >= 0.95x raw2pc at ${c}`, measured: `${x.ratio}x`, met: x.ratio >= 0.95 })
      }
    }
    const first = at(cells, mode, 1)
    if (first?.p50DeltaMs !== undefined) {
      out.push({
        target: `${mode} p50 at 1 <= raw2pc p50 + 0.3 ms`,
        measured: `${first.p50DeltaMs >= 0 ? "+" : ""}${first.p50DeltaMs} ms`,
        met: first.p50DeltaMs <= 0.3
      })
    }
  }
  const p1 = at(cells, "accord2pc", 1)
  const g32 = at(cells, "accord2pc-group", 32)
  if (g32?.ratio !== undefined) {
    out.push({
      target: "accord2pc-group >= 1.3x raw2pc at 32",
      measured: `${g32.ratio}x`,
      met: g32.ratio >= 1.3
    })
  }
  const g1 = at(cells, "accord2pc-group", 1)
  if (g1 !== undefined && p1 !== undefined) {
    out.push({
      target: "accord2pc-group not below accord2pc at 1",
      measured: `${g1.tps} vs ${p1.tps} tps`,
      met: g1.tps >= p1.tps
    })
  }
  for (const c of [1, 8, 32]) {
    const x = at(cells, "accord1pc", c)
    if (x?.ratio !== undefined) {
      out.push({ target: `accord1pc >= 0.95x local at ${c}`, measured: `${x.ratio}x`, met: x.ratio >= 0.95 })
    }
  }
  const one = cells.filter((x) => x.mode === "accord1pc")
  if (one.length > 0) {
    const prepares = Math.max(...one.map((x) => x.preparesPerTx ?? 0))
    out.push({
      target: "accord1pc sends no PREPARE",
      measured: `${prepares} PREPARE/tx`,
      met: prepares === 0
    })
  }
  const ro = cells.filter((x) => x.mode === "accord-readonly")
  if (ro.length > 0) {
    // Counted on the read-only branch's own database: the writer's PREPARE is not in these.
    const counted = ro.map((x) => x.readOnlyBranch)
    const known = counted.every((x) => x !== undefined && x.transactions > 0)
    const sumOf = (f: (x: NonNullable<Cell["readOnlyBranch"]>) => number) =>
      counted.reduce((acc, x) => acc + (x === undefined ? 0 : f(x)), 0)
    const prepares = sumOf((x) => x.prepares)
    const phase2 = sumOf((x) => x.phase2)
    out.push({
      target: "read-only branch: 0 PREPAREs (and no phase-2 statement)",
      measured: known
        ? `${prepares} PREPARE, ${phase2} COMMIT/ROLLBACK PREPARED on the read-only branch in ${sumOf((x) => x.transactions)} transactions`
        : "not counted",
      met: known ? prepares === 0 && phase2 === 0 : null
    })
  }
  return out
}

/**
 * What a reader must not miss about a run: failed transactions (a cell's numbers then count only
 * what succeeded) and transactions left prepared.
 * @since 0.1.0
 */
export const warnings = (cells: ReadonlyArray<Cell>, preparedLeft: number): ReadonlyArray<string> => {
  const out: Array<string> = []
  const failed = cells.filter((c) => c.errors > 0)
  if (failed.length > 0) {
    const total = failed.reduce((acc, c) => acc + c.errors, 0)
    out.push(
      `${total} failed transactions in ${failed.length} cells (${failed.map((c) => `${c.mode} c=${c.concurrency}: ${c.errors}, first: ${c.firstError ?? "?"}`).join("; ")})`
    )
  }
  if (preparedLeft > 0) {
    out.push(
      `${preparedLeft} transactions were left prepared in the benchmark's databases (rolled back after the run)`
    )
  }
  return out
}

/** A table cell's text: no line breaks, pipes escaped. */
const cellText = (s: string) => s.replace(/\s+/g, " ").replace(/\|/g, "\\|")

const fmt = (x: number | null | undefined, digits = 2) =>
  x === null || x === undefined ? "" : String(Math.round(x * 10 ** digits) / 10 ** digits)

/**
 * The markdown table of a run.
 * @since 0.1.0
 */
export const markdown = (
  cells: ReadonlyArray<Cell>,
  meta: Record<string, string>,
  run: { readonly preparedLeft: number } = { preparedLeft: 0 }
): string => {
  const header =
    "| mode | backend | c | tps | p50 ms | p99 ms | WAL syncs/tx | stmts/tx | PREPARE/tx | ratio | vs | errors |\n" +
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|\n"
  const rows = cells
    .map(
      (c) =>
        `| ${c.mode} | ${c.backend} | ${c.concurrency} | ${fmt(c.tps, 0)} | ${fmt(c.p50Ms)} | ${fmt(c.p99Ms)} | ${fmt(c.walSyncsPerTx)} | ${fmt(c.statementsPerTx, 1)} | ${fmt(c.preparesPerTx)} | ${c.ratio === undefined ? "" : `${fmt(c.ratio)}x`} | ${c.baseline ?? ""} | ${c.errors > 0 ? `**${c.errors}** (${cellText(c.firstError ?? "?")})` : "0"} |`
    )
    .join("\n")
  const metaLines = Object.entries(meta)
    .map(([k, v]) => `- ${k}: ${v}`)
    .join("\n")
  const t = targets(cells)
  const targetLines =
    t.length === 0
      ? ""
      : `\n\n| target | measured | met |\n|---|---|---|\n${t.map((x) => `| ${x.target} | ${x.measured} | ${x.met === null ? "?" : x.met ? "yes" : "NO"} |`).join("\n")}`
  const warned = warnings(cells, run.preparedLeft)
  const warningLines = warned.map((w) => `**WARNING: ${w}**\n\n`).join("")
  return `${warningLines}${metaLines}\n\n${header}${rows}${targetLines}\n`
}

const palette = [
  "#1f77b4",
  "#d62728",
  "#2ca02c",
  "#ff7f0e",
  "#9467bd",
  "#8c564b",
  "#e377c2",
  "#7f7f7f",
  "#17becf"
]

const escapeXml = (s: string) => s.replace(/[<>&"]/g, (ch) => `&#${ch.charCodeAt(0)};`)

/**
 * An SVG line chart of tps by concurrency, one line per mode.
 * @since 0.1.0
 */
export const svg = (cells: ReadonlyArray<Cell>, title: string): string => {
  const modes = [...new Set(cells.map((c) => c.mode))]
  const levels = [...new Set(cells.map((c) => c.concurrency))].sort((a, b) => a - b)
  const width = 860
  const height = 420
  const left = 70
  const right = 300
  const top = 40
  const bottom = 50
  const plotW = width - left - right
  const plotH = height - top - bottom
  const maxTps = Math.max(1, ...cells.map((c) => c.tps))
  const step = 10 ** Math.floor(Math.log10(maxTps))
  const yMax = Math.ceil(maxTps / step) * step
  const x = (c: number) =>
    left + (levels.length === 1 ? plotW / 2 : (levels.indexOf(c) / (levels.length - 1)) * plotW)
  const y = (tps: number) => top + plotH - (tps / yMax) * plotH
  const parts: Array<string> = []
  parts.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="12">`
  )
  parts.push(`<rect width="${width}" height="${height}" fill="white"/>`)
  parts.push(`<text x="${left}" y="22" font-size="15">${escapeXml(title)}</text>`)
  for (let i = 0; i <= 5; i++) {
    const v = (yMax / 5) * i
    parts.push(`<line x1="${left}" x2="${left + plotW}" y1="${y(v)}" y2="${y(v)}" stroke="#ddd"/>`)
    parts.push(`<text x="${left - 8}" y="${y(v) + 4}" text-anchor="end">${Math.round(v)}</text>`)
  }
  for (const c of levels) {
    parts.push(`<text x="${x(c)}" y="${top + plotH + 20}" text-anchor="middle">${c}</text>`)
  }
  parts.push(
    `<text x="${left + plotW / 2}" y="${height - 10}" text-anchor="middle">concurrent clients</text>`
  )
  parts.push(
    `<text x="18" y="${top + plotH / 2}" text-anchor="middle" transform="rotate(-90 18 ${top + plotH / 2})">transactions / s</text>`
  )
  modes.forEach((mode, i) => {
    const color = palette[i % palette.length]!
    const dash = mode.endsWith("-pglite") ? ' stroke-dasharray="5,4"' : ""
    const points = levels
      .map((c) => cells.find((k) => k.mode === mode && k.concurrency === c))
      .filter((k): k is Cell => k !== undefined)
    parts.push(
      `<polyline fill="none" stroke="${color}" stroke-width="2"${dash} points="${points.map((p) => `${x(p.concurrency)},${y(p.tps)}`).join(" ")}"/>`
    )
    for (const p of points)
      parts.push(`<circle cx="${x(p.concurrency)}" cy="${y(p.tps)}" r="3" fill="${color}"/>`)
    const ly = top + 10 + i * 18
    parts.push(
      `<line x1="${left + plotW + 20}" x2="${left + plotW + 40}" y1="${ly}" y2="${ly}" stroke="${color}" stroke-width="2"${dash}/>`
    )
    const pglite = cells.some((k) => k.mode === mode && k.backend === "pglite")
    parts.push(
      `<text x="${left + plotW + 46}" y="${ly + 4}">${escapeXml(pglite ? `${mode} (PGlite, fsync off)` : mode)}</text>`
    )
  })
  parts.push("</svg>")
  return `${parts.join("\n")}\n`
}
