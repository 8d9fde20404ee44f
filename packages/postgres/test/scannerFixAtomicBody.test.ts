/**
 * The transaction-control scanner (`statementStartingWith`), reviewed again (2026-12-07):
 *
 * - A SQL-standard body (`BEGIN ATOMIC ... END`) was delimited by counting CASE and END, and a
 *   column label `case` or `end` (no AS needed since PostgreSQL 14: `select 1 case`) threw the count
 *   off. One label too many left the body open past its END: the COMMIT after it, which PostgreSQL
 *   runs, went unnoticed (a branch voted ReadOnly with its row committed outside the coordinator).
 *   One the other way closed it early: the body's own END was read as a COMMIT (a needless No).
 * - A `--` comment was read to the next line feed; PostgreSQL ends it at a carriage return too, so a
 *   COMMIT or PREPARE TRANSACTION after `-- note\r` went unnoticed.
 *
 * Each text is also run on the server, in a transaction: what the scanner says must be what
 * PostgreSQL did (the transaction ended, or is still open).
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import postgres from "postgres"
import { statementStartingWith, statementWords } from "../src/internal/client.js"
import { ENDING_STATEMENT } from "../src/internal/pgBranch.js"
import * as Migrations from "../src/Migrations.js"
import * as PgParticipant from "../src/PgParticipant.js"
import * as Pipeline from "../src/Pipeline.js"
import * as TestDatabase from "../src/TestDatabase.js"
import { ctxFor, preparedIn } from "./support/pg2pc.js"

const server = await TestDatabase.server()
const DB = "fixe_scanner_fix"

/** The statement that ends the transaction in `text`, as its words (`PREPARE TRANSACTION`), if any. */
const endingIn = (text: string): string | undefined => {
  const found = statementStartingWith(text, ENDING_STATEMENT)
  return found === undefined ? undefined : statementWords(found)
}

interface Case {
  readonly text: string
  /** What ends the transaction, as PostgreSQL runs the text; `undefined`: nothing does. */
  readonly ends: string | undefined
}

/** A COMMIT the old scanner missed: a column label `case` left the body open past its END. */
const LABEL_CASE_THEN_COMMIT: Case = {
  text:
    "create function fixe_label_case() returns int language sql begin atomic select 1 case; end; " +
    "insert into t values (1); commit",
  ends: "COMMIT"
}

/** Missed by the old scanner: the transaction ended, and it said nothing did. */
const MISSED: ReadonlyArray<Case> = [
  LABEL_CASE_THEN_COMMIT,
  {
    // A later body's END made the count come out even: the COMMIT between them was still missed.
    text:
      "create function fixe_label_case_2() returns int language sql begin atomic select 1 case; end; commit; " +
      "create function fixe_after() returns int language sql begin atomic select 1; end",
    ends: "COMMIT"
  },
  {
    text:
      "create procedure fixe_label_case_3() language sql begin atomic " +
      "select x case from (select 1 as x) s; end; end",
    ends: "END"
  },
  { text: "insert into t values (2); -- note\rcommit", ends: "COMMIT" },
  {
    text: "insert into t values (3); prepare -- note\rtransaction 'fixe_scanner_cr'",
    ends: "PREPARE TRANSACTION"
  }
]

/** A needless No by the old scanner: it said the transaction ended, and it is still open. */
const NEEDLESS: ReadonlyArray<Case> = [
  {
    text: "create procedure fixe_label_end() language sql begin atomic select 1 end; select 2; end; select 3",
    ends: undefined
  },
  {
    // A CASE's END, then a column label `end`.
    text:
      "create procedure fixe_case_label() language sql begin atomic " +
      "select case when true then 1 end end; end; select 1",
    ends: undefined
  },
  {
    // A column label `end` in a subquery inside a CASE.
    text:
      "create function fixe_subquery_label() returns int language sql begin atomic " +
      "select case when exists (select 1 end) then 1 end; end; insert into t values (4)",
    ends: undefined
  }
]

/** A body whose header or BEGIN ATOMIC has a nested comment between its words went unread. */
const NESTED_COMMENT: ReadonlyArray<Case> = [
  {
    text:
      "create /* a /* b */ c */ procedure fixe_nested_1() language sql begin atomic select 1; end; " +
      "insert into t values (8)",
    ends: undefined
  },
  {
    text:
      "create or /* a /* b */ c */ replace procedure fixe_nested_2() language sql " +
      "begin /* a /* b */ c */ atomic select 1; end; select 2",
    ends: undefined
  },
  {
    text: "create procedure fixe_nested_3() language sql begin /* a /* b */ c */ atomic select 1; end; commit",
    ends: "COMMIT"
  }
]

/** Read right before and after the change. */
const KEPT: ReadonlyArray<Case> = [
  { text: "create procedure fixe_empty() language sql begin atomic end; commit", ends: "COMMIT" },
  { text: "create procedure fixe_empty_2() language sql begin atomic; end; select 1", ends: undefined },
  {
    text:
      "create procedure fixe_labels() language sql begin atomic select 1 as case; " +
      "select x.end from (select 1 as end) x; select 1. case; end; end",
    ends: "END"
  },
  {
    text:
      "create procedure fixe_cases(n int) language sql begin atomic " +
      "insert into t select case n when 1 then (case when n > 0 then n end) else 0 end; " +
      "insert into t values (n + 1); end; call fixe_cases(5)",
    ends: undefined
  },
  { text: "insert into t values (6); -- note\ncommit", ends: "COMMIT" },
  { text: "insert into t values (7); rollback -- to savepoint a\r; select 2", ends: "ROLLBACK" }
]

describe("the scanner reads a SQL-standard body's END by its place, not by counting CASE and END", () => {
  it("finds the COMMIT after a body with a column label `case` (it was missed)", () => {
    for (const { text, ends } of MISSED.slice(0, 3)) expect(endingIn(text), text).toBe(ends)
  })

  it("finds nothing in a body with a column label `end` (its own END was read as a COMMIT)", () => {
    for (const { text, ends } of NEEDLESS) expect(endingIn(text), text).toBe(ends)
  })

  it("reads a body with nested comments between the words of its header and BEGIN ATOMIC (its END was read as a COMMIT)", () => {
    for (const { text, ends } of NESTED_COMMENT) expect(endingIn(text), text).toBe(ends)
  })

  it("still reads empty bodies, labels after AS and `.`, and nested CASE as before", () => {
    for (const { text, ends } of KEPT) expect(endingIn(text), text).toBe(ends)
  })

  it("a pipelined statement with such a body is refused for its COMMIT, not let through", () => {
    expect(() => Pipeline.make([{ text: LABEL_CASE_THEN_COMMIT.text }])).toThrow(/COMMIT/)
    expect(() => Pipeline.make([{ text: NEEDLESS[0]?.text ?? "" }])).not.toThrow()
  })
})

describe("a body that, as the scanner reads it, never ends", () => {
  // PostgreSQL refuses such a text whole (a syntax error: none of its statements runs), unless it
  // lexed the text otherwise than the scanner did. Unsure where the body ended, the scanner reads
  // every `;` after its start as one that may start a statement: a needless No, never a miss.
  it("is read as if any `;` after its start may start a statement", () => {
    const open = "create procedure p() language sql begin atomic select 1; commit; select 2"
    expect(endingIn(open)).toBe("COMMIT")
    expect(endingIn("create procedure p() language sql begin atomic select 1; select 2")).toBeUndefined()
    expect(endingIn("create procedure p() language sql begin atomic select 1; end; select 2")).toBeUndefined()
  })
})

describe("the scanner ends a `--` comment at a carriage return, as PostgreSQL does", () => {
  it("finds a COMMIT or PREPARE TRANSACTION on the line after `-- note\\r` (they were missed)", () => {
    for (const { text, ends } of MISSED.slice(3)) expect(endingIn(text), text).toBe(ends)
  })
})

describe("the scanner's cost", () => {
  it("is linear in a body's statements and labels", () => {
    const body = "select 1 case, 2 end, case when true then 3 end end; ".repeat(20_000)
    const text = `create procedure p() language sql begin atomic ${body}end; commit`
    const started = performance.now()
    expect(endingIn(text)).toBe("COMMIT")
    expect(performance.now() - started).toBeLessThan(500)
  })
})

describe.skipIf(server === undefined)("what PostgreSQL does with those texts", () => {
  const adminUrl = server?.adminUrl ?? ""
  let url: string
  let admin: postgres.Sql
  let sql: postgres.Sql

  beforeAll(async () => {
    url = await TestDatabase.createDatabase(adminUrl, DB)
    admin = postgres(url, { max: 1, onnotice: () => {} })
    sql = postgres(url, { max: 2, onnotice: () => {} })
    await admin.unsafe("create table t (id int)")
    await Effect.runPromise(Migrations.participant(admin))
  }, 60_000)

  afterAll(async () => {
    const left = await preparedIn(adminUrl, [DB])
    await sql?.end({ timeout: 5 })
    await admin?.end({ timeout: 5 })
    await TestDatabase.dropDatabase(adminUrl, DB)
    // The PREPARE TRANSACTION case is resolved by its test; anything else left is a failure.
    expect(left).toEqual([])
  }, 60_000)

  /**
   * Runs `text` (the simple protocol, as a branch's work sends a text without parameters) inside a
   * transaction, and tells whether that transaction ended: a SAVEPOINT outside one fails (25P01).
   */
  const endedOnServer = async (text: string): Promise<boolean> => {
    const conn = await sql.reserve()
    try {
      await conn.unsafe("begin")
      await conn.unsafe(text)
      const probe = await conn.unsafe("savepoint fixe_probe").then(
        () => undefined,
        (error: unknown) => (error as { code?: string }).code
      )
      if (probe === undefined) await conn.unsafe("rollback")
      else expect(probe).toBe("25P01")
      return probe !== undefined
    } finally {
      conn.release()
    }
  }

  it("ends the transaction exactly where the scanner says", async () => {
    for (const { text, ends } of [...MISSED, ...NEEDLESS, ...NESTED_COMMENT, ...KEPT]) {
      expect(await endedOnServer(text), text).toBe(ends !== undefined)
      expect(endingIn(text), text).toBe(ends)
    }
    await admin.unsafe("rollback prepared 'fixe_scanner_cr'")
  })

  it.live("a branch whose text commits after such a body votes No (25000), not ReadOnly", () =>
    Effect.gen(function* () {
      const p = yield* PgParticipant.make({ name: "a", sql, migrate: false })
      const text =
        "create function fixe_branch_label() returns int language sql begin atomic select 1 case; end; " +
        "insert into t values (101); commit; select 1"
      const vote = yield* p.prepare(yield* ctxFor("a"), (s) => s.query(text))
      expect(vote._tag).toBe("No")
      if (vote._tag === "No") {
        expect(vote.sqlState).toBe("25000")
        expect(vote.reason).toContain("COMMIT")
      }
      // The server ran the whole text: the row was committed by the work's COMMIT, which the No
      // reports. (A COMMIT as the text's last statement was caught by its command tag already.)
      const rows = yield* Effect.promise(() => admin<{ id: number }[]>`select id from t where id = 101`)
      expect(rows).toHaveLength(1)
      expect(yield* Effect.promise(() => preparedIn(adminUrl, [DB]))).toEqual([])
    })
  )
})
