/**
 * The transaction-control scanner against PostgreSQL itself: generated texts of several statements
 * (SQL-standard bodies with column labels `case` and `end`, CASE expressions, subqueries, comments
 * of every kind between words, COMMIT, END, ROLLBACK, ABORT) are run on the server inside a
 * transaction, and the scanner must say a statement ended it exactly when the server's transaction
 * did end. Texts the server refuses (a syntax error: none of their statements ran) are left out.
 * Before the body's END was read by its place (2026-12-07), about one text in twenty-five was a
 * missed end and one in seven a needless one.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import postgres from "postgres"
import { statementStartingWith } from "../src/internal/client.js"
import { ENDING_STATEMENT } from "../src/internal/pgBranch.js"
import * as TestDatabase from "../src/TestDatabase.js"

const server = await TestDatabase.server()
const DB = "fixe_scanner_differential"
const TEXTS = 1500

/** A seeded generator (mulberry32): the same texts on every run. */
const generator = (seed: number) => {
  let state = seed >>> 0
  const next = () => {
    state = (state + 0x6d2b79f5) >>> 0
    let t = state
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
  const pick = <T>(choices: ReadonlyArray<T>): T => choices[Math.floor(next() * choices.length)] as T
  const gap = () => pick([" ", " ", " ", "/* c */", " /* a /* b */ c */ ", "-- c\n", "-- c\r", "\n", "\t"])
  const label = () => pick(["", "", " case", " end", " as case", " as end", " x"])
  const expression = (depth: number): string =>
    depth > 2
      ? "1"
      : pick([
          "1",
          "2",
          `case when true then ${expression(depth + 1)} end`,
          `case 1 when 1 then ${expression(depth + 1)} else ${expression(depth + 1)} end`,
          `(select ${expression(depth + 1)}${label()})`,
          `exists (select 1${label()})`,
          "1."
        ])
  const target = () => `${expression(0)}${label()}`
  const select = () =>
    `select${gap()}${target()}${pick(["", `,${gap()}${target()}`])}${pick(["", ` from (select 1${label()}) s`])}`
  let routines = 0
  const routine = (statements: number) => {
    const body = Array.from({ length: statements }, () => `${select()};${gap()}`).join("")
    return `create${gap()}${pick(["", `or${gap()}replace${gap()}`])}procedure fixe_p${routines++}() language sql begin${gap()}atomic${gap()}${pick(["", ";", " "])}${body}end`
  }
  const statement = (): string =>
    pick([
      () => `insert into t values (${Math.floor(next() * 100)})`,
      () => pick(["commit", "end", "rollback", "abort"]),
      select,
      () => "",
      () => routine(Math.floor(next() * 3)),
      () => routine(1 + Math.floor(next() * 2))
    ])()
  return () => Array.from({ length: 1 + Math.floor(next() * 4) }, statement).join(`;${gap()}`)
}

describe.skipIf(server === undefined)("the transaction-control scanner, against PostgreSQL", () => {
  const adminUrl = server?.adminUrl ?? ""
  let sql: postgres.Sql
  beforeAll(async () => {
    const url = await TestDatabase.createDatabase(adminUrl, DB)
    sql = postgres(url, { max: 1, onnotice: () => {} })
    await sql.unsafe("create table t (id int)")
  }, 60_000)
  afterAll(async () => {
    await sql?.end({ timeout: 5 })
    await TestDatabase.dropDatabase(adminUrl, DB)
  }, 60_000)

  it(`says a statement ended the transaction exactly when it did, in ${TEXTS} generated texts`, async () => {
    const text = generator(20261207)
    const conn = await sql.reserve()
    const missed: Array<string> = []
    const needless: Array<string> = []
    let ran = 0
    try {
      for (let k = 0; k < TEXTS; k++) {
        const t = text()
        await conn.unsafe("begin")
        const accepted = await conn.unsafe(t).then(
          () => true,
          () => false
        )
        if (!accepted) {
          await conn.unsafe("rollback")
          continue
        }
        ran++
        // A SAVEPOINT outside a transaction fails (25P01): the text ended it.
        const ended = await conn.unsafe("savepoint fixe_probe").then(
          () => false,
          () => true
        )
        if (!ended) await conn.unsafe("rollback")
        const found = statementStartingWith(t, ENDING_STATEMENT) !== undefined
        if (ended && !found) missed.push(t)
        if (found && !ended) needless.push(t)
      }
    } finally {
      conn.release()
    }
    // Most texts are valid: the comparison is not vacuous.
    expect(ran).toBeGreaterThan(TEXTS * 0.8)
    expect(missed.slice(0, 3)).toEqual([])
    expect(needless.slice(0, 3)).toEqual([])
  }, 120_000)
})
