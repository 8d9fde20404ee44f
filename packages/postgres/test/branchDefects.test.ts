/**
 * Defects of a postgres.js branch found by a review (2026-12-07), each on a real server:
 *
 * - an ordinary ERROR carrying a connection-class SQLSTATE (08xxx, 57P0x) was read as a lost
 *   connection, and the branch's connection was neither rolled back nor released;
 * - a work's `SET LOCAL ROLE` made the prepared transaction the other role's, which the
 *   participant's pool could not commit;
 * - a work ending its transaction inside a text of several statements went unnoticed;
 * - a branch abandoned while it waited for a connection made its caller wait for the clean-up
 *   bounds although it had sent nothing;
 * - `sql.notify()` in a branch went out on the pool, outside the branch.
 *
 * And by a review of those fixes (2026-12-07, the statement scanner):
 *
 * - a SQL-standard body (`CREATE FUNCTION|PROCEDURE ... BEGIN ATOMIC ...; END`) was read as
 *   statements, its closing END as one that ends the transaction;
 * - `ROLLBACK /* comment *\/ TO SAVEPOINT` was read as a ROLLBACK;
 * - a COMMIT in a text whose later statement failed went unnoticed when the work caught the error.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect, Either } from "effect"
import postgres from "postgres"
import { statementStartingWith, statementWords } from "../src/internal/client.js"
import { toFailure } from "../src/internal/errors.js"
import { ENDING_STATEMENT } from "../src/internal/pgBranch.js"
import * as Migrations from "../src/Migrations.js"
import * as PgParticipant from "../src/PgParticipant.js"
import * as Pipeline from "../src/Pipeline.js"
import * as TestDatabase from "../src/TestDatabase.js"
import { ctxFor, preparedIn } from "./support/pg2pc.js"

const server = await TestDatabase.server()
const DB = "accord_t_branch_defects"
/** Roles are the cluster's: named for this file, dropped at its end. */
const APP_ROLE = "accord_t_branch_defects_app"
const RLS_ROLE = "accord_t_branch_defects_rls"

/** The sessions of `DB` left idle inside a transaction (a connection given back, or kept, unclean). */
const idleInTransaction = (admin: postgres.Sql) =>
  admin<{ state: string }[]>`
    select state from pg_stat_activity
    where datname = ${DB} and state like 'idle in transaction%'`

const rowsOf = async (sql: postgres.Sql) =>
  (await sql<{ id: number }[]>`select id from t order by id`).map((r) => r.id)

describe.skipIf(server === undefined)("postgres.js branch defects", () => {
  const adminUrl = server?.adminUrl ?? ""
  let url: string
  let admin: postgres.Sql
  const pools: Array<postgres.Sql> = []
  const pool = (options: postgres.Options<Record<string, postgres.PostgresType>> = {}) => {
    const sql = postgres(url, { max: 3, onnotice: () => {}, ...options })
    pools.push(sql)
    return sql
  }

  beforeAll(async () => {
    url = await TestDatabase.createDatabase(adminUrl, DB)
    admin = postgres(url, { max: 2, onnotice: () => {} })
    await admin.unsafe("create table t (id int primary key)")
    await Effect.runPromise(Migrations.participant(admin))
    await admin.unsafe(`drop role if exists ${RLS_ROLE}`)
    await admin.unsafe(`drop role if exists ${APP_ROLE}`)
    await admin.unsafe(`create role ${APP_ROLE} nologin`)
    await admin.unsafe(`create role ${RLS_ROLE} nologin`)
    await admin.unsafe(`grant ${RLS_ROLE} to ${APP_ROLE}`)
    await admin.unsafe(`grant select, insert, delete on t, accord_branch to ${APP_ROLE}`)
    // The work's role may write the marker table too: prepared as that role, the branch was its.
    await admin.unsafe(`grant select, insert on t, accord_branch to ${RLS_ROLE}`)
    // A write that no command tag shows (a function called by a SELECT): the marker probe's path.
    await admin.unsafe(
      "create function add_row(n int) returns int language sql as $$ insert into t values (n) returning n $$"
    )
    await admin.unsafe(`grant execute on function add_row(int) to ${APP_ROLE}, ${RLS_ROLE}`)
  }, 60_000)

  afterAll(async () => {
    for (const sql of pools) await sql.end({ timeout: 5 })
    const left = await preparedIn(adminUrl, [DB])
    // Left by a failing run (the old code): rolled back as the superuser, then the check fails.
    for (const p of left) await admin.unsafe(`ROLLBACK PREPARED '${p.gid}'`)
    await admin.unsafe(`drop owned by ${APP_ROLE}, ${RLS_ROLE}`)
    await admin.end({ timeout: 5 })
    await TestDatabase.dropDatabase(adminUrl, DB)
    const root = postgres(adminUrl, { max: 1, onnotice: () => {} })
    await root.unsafe(`drop role if exists ${RLS_ROLE}`)
    await root.unsafe(`drop role if exists ${APP_ROLE}`)
    await root.end({ timeout: 5 })
    expect(left).toEqual([])
  }, 60_000)

  describe("a connection-class SQLSTATE on a healthy session", () => {
    it("is a lost connection only when the server ends the session (FATAL), or the driver lost it", async () => {
      const sql = pool({ max: 1 })
      const raised = await sql
        .unsafe("do $$ begin raise exception 'remote down' using errcode = '08006'; end $$")
        .catch((e: unknown) => e)
      expect((raised as { severity?: string }).severity).toBe("ERROR")
      expect(toFailure(raised)).toMatchObject({ sqlState: "08006", connectionLost: false })
      expect(toFailure(Object.assign(new Error("gone"), { code: "57P01", severity: "FATAL" }))).toMatchObject(
        {
          connectionLost: true
        }
      )
      expect(
        toFailure(Object.assign(new Error("gone"), { code: "08006", severity: "ERROR" })).connectionLost
      ).toBe(false)
      expect(toFailure(Object.assign(new Error("reset"), { code: "ECONNRESET" })).connectionLost).toBe(true)
      expect(
        toFailure(Object.assign(new Error("closed"), { code: "CONNECTION_CLOSED" })).connectionLost
      ).toBe(true)
    })

    it.live("votes No, and the branch's connection is rolled back and given back to the pool", () =>
      Effect.gen(function* () {
        const sql = pool({ max: 2 })
        const p = yield* PgParticipant.make({ name: "a", sql, migrate: false })
        // As dblink_connect to a server that is down does (08001), on a session that is fine.
        const failing = (id: number) => (s: PgParticipant.BranchSession) =>
          s
            .query(`insert into t values (${id})`)
            .then(() => s.query("do $$ begin raise exception 'remote down' using errcode = '08006'; end $$"))
        for (const id of [101, 102]) {
          const vote = yield* p.prepare(yield* ctxFor("a"), failing(id))
          expect(vote._tag).toBe("No")
          if (vote._tag === "No") expect(vote.sqlState).toBe("08006")
        }
        expect(yield* Effect.promise(() => idleInTransaction(admin))).toEqual([])
        // Both connections still serve the pool: two reserved at once.
        const both = yield* Effect.promise(() => Promise.all([sql.reserve(), sql.reserve()])).pipe(
          Effect.timeout("3 seconds")
        )
        for (const c of both) c.release()
        expect(yield* Effect.promise(() => rowsOf(admin))).not.toContain(101)
      })
    )
  })

  describe("a work that sets another role", () => {
    const roleWorks: ReadonlyArray<readonly [string, (id: number) => PgParticipant.PgWork]> = [
      [
        "a function work that wrote (marker and PREPARE in one message)",
        (id) => async (s) => {
          await s.query(`set local role ${RLS_ROLE}`)
          await s.query("insert into t values ($1)", [id])
        }
      ],
      [
        "a function work whose write no tag shows (the marker probe)",
        (id) => async (s) => {
          await s.query(`set local role ${RLS_ROLE}`)
          await s.query("select add_row($1)", [id])
        }
      ],
      [
        "a pipelined work",
        (id) =>
          Pipeline.make([
            { text: `set local role ${RLS_ROLE}` },
            { text: "insert into t values ($1)", params: [id] }
          ])
      ]
    ]
    for (const [[kind, work], i] of roleWorks.map((w, i) => [w, i] as const)) {
      it.live(`${kind}: the branch is prepared as the pool's role, which then commits it`, () =>
        Effect.gen(function* () {
          const sql = pool({ connection: { role: APP_ROLE } })
          const p = yield* PgParticipant.make({ name: "a", sql, migrate: false })
          const ctx = yield* ctxFor("a")
          const id = 201 + i
          expect((yield* p.prepare(ctx, work(id)))._tag).toBe("Prepared")
          const owners = yield* Effect.promise(
            () => admin<{ owner: string }[]>`select owner from pg_prepared_xacts where gid = ${ctx.gid}`
          )
          expect(owners.map((o) => o.owner)).toEqual([APP_ROLE])
          expect(yield* p.commit(ctx)).toBe("Committed")
          expect(yield* Effect.promise(() => rowsOf(admin))).toContain(id)
          // The session's role after the branch is the pool's again.
          const [who] = yield* Effect.promise(() => sql<{ who: string }[]>`select current_user as who`)
          expect(who!.who).toBe(APP_ROLE)
        })
      )
    }
  })

  describe("a work that ends its transaction inside a text of several statements", () => {
    it.live("`insert; commit; begin` votes No (25000), not ReadOnly", () =>
      Effect.gen(function* () {
        const p = yield* PgParticipant.make({ name: "a", sql: pool(), migrate: false })
        const vote = yield* p.prepare(yield* ctxFor("a"), (s) =>
          s.query("insert into t values (301); commit; begin")
        )
        expect(vote._tag).toBe("No")
        if (vote._tag === "No") {
          expect(vote.sqlState).toBe("25000")
          expect(vote.reason).toContain("COMMIT")
        }
        expect(yield* Effect.promise(() => idleInTransaction(admin))).toEqual([])
      })
    )

    it.live("`insert; commit; insert` votes No (25000), not Prepared, and leaves nothing prepared", () =>
      Effect.gen(function* () {
        const p = yield* PgParticipant.make({ name: "a", sql: pool(), migrate: false })
        const ctx = yield* ctxFor("a")
        const vote = yield* p.prepare(ctx, (s) =>
          s.query("insert into t values (302); commit; insert into t values (303)")
        )
        expect(vote._tag).toBe("No")
        if (vote._tag === "No") expect(vote.sqlState).toBe("25000")
        expect(yield* Effect.promise(() => preparedIn(adminUrl, [DB]))).toEqual([])
      })
    )

    it.live("a one-phase branch does not commit after it either", () =>
      Effect.gen(function* () {
        const p = yield* PgParticipant.make({ name: "a", sql: pool(), migrate: false })
        const result = yield* p.commitOnePhase(yield* ctxFor("a"), (s) =>
          s.query("insert into t values (304); rollback; insert into t values (305)")
        )
        // The work's own ROLLBACK took 304 back, and 305 was committed by the server at the end of
        // the text (an implicit transaction): the branch reports it, it does not say Committed.
        expect(result._tag).toBe("No")
        if (result._tag === "No") expect(result.sqlState).toBe("25000")
      })
    )

    it.live("COMMIT, ROLLBACK or BEGIN in quotes, comments or a DO block ends nothing", () =>
      Effect.gen(function* () {
        const p = yield* PgParticipant.make({ name: "a", sql: pool(), migrate: false })
        const ctx = yield* ctxFor("a")
        const vote = yield* p.prepare(ctx, (s) =>
          s.query(
            'insert into t values (306); select \'x; commit\' as a, $q$; rollback$q$ as b, "c;commit".x from (select 1 as x) "c;commit"; ' +
              "/* ; commit */ do $$ begin perform 1; end $$; -- ; commit\n" +
              "savepoint s1; rollback to savepoint s1; select E'\\'; commit' as d"
          )
        )
        expect(vote._tag).toBe("Prepared")
        expect(yield* p.rollback(ctx)).toBe("RolledBack")
      })
    )

    it("the start of every statement is read, and nothing inside quotes, comments or bodies", () => {
      const ending = /(?:commit|end|abort|rollback(?!\s+to\b))\b/iy
      const cases: ReadonlyArray<readonly [string, string | undefined]> = [
        ["commit", "commit"],
        ["insert into t values (1); COMMIT; begin", "COMMIT"],
        ["select 1;\n-- note\n/* a /* nested */ comment */ end", "end"],
        ["select 1; rollback to savepoint a", undefined],
        ["select 'a;'';commit' ; select 2", undefined],
        ["select E'\\'; commit' as x", undefined],
        ["select e'\\';' ; abort", "abort"],
        ['select 1 as "x;commit"', undefined],
        ["do $body$ begin commit; end $body$; select 1", undefined],
        ["select $$;commit$$, a$b$c from (select 1 as a$b$c) q; rollback", "rollback"],
        ["select 1 /* ; commit */", undefined],
        ["select 1 -- ; commit", undefined],
        ["select committed from t; endless()", undefined]
      ]
      for (const [text, found] of cases) expect(statementStartingWith(text, ending), text).toBe(found)
    })

    it("Pipeline.make refuses transaction control in any statement of a text", () => {
      expect(() => Pipeline.make([{ text: "insert into t values (307); commit; begin" }])).toThrow(
        /controls the transaction \(COMMIT\)/
      )
      expect(() => Pipeline.make([{ text: "select 1;\n  /* then */ rollback" }])).toThrow(/\(ROLLBACK\)/)
      expect(() =>
        Pipeline.make([{ text: "select 'a; commit'; do $$ begin perform 1; end $$" }])
      ).not.toThrow()
    })
  })

  it.live("a branch abandoned while it waits for a connection returns at once, and the pool keeps it", () =>
    Effect.gen(function* () {
      const sql = pool({ max: 2 })
      const p = yield* PgParticipant.make({ name: "a", sql, migrate: false, cancelTimeout: "1 second" })
      // The application holds both connections of the pool.
      const held = [sql`select pg_sleep(2.5)`.then(noop), sql`select pg_sleep(2.5)`.then(noop)]
      yield* Effect.promise(async () => {
        for (let i = 0; i < 200; i++) {
          const busy =
            await admin`select 1 from pg_stat_activity where datname = ${DB} and query like 'select pg_sleep%'`
          if (busy.length >= 2) return
          await new Promise((resolve) => setTimeout(resolve, 10))
        }
      })
      const started = Date.now()
      const result = yield* Effect.either(
        p.prepare(yield* ctxFor("a"), (s) => s.query("select 1")).pipe(Effect.timeout("200 millis"))
      )
      const elapsed = Date.now() - started
      expect(Either.isLeft(result)).toBe(true)
      // Was 200 ms + up to three cancelTimeouts (here until the application's statements ended).
      expect(elapsed).toBeLessThan(800)
      yield* Effect.promise(() => Promise.all(held))
      // The connection handed to the abandoned reserve() went back: both can be reserved at once.
      const both = yield* Effect.promise(() => Promise.all([sql.reserve(), sql.reserve()])).pipe(
        Effect.timeout("3 seconds")
      )
      for (const c of both) c.release()
      const vote = yield* p.prepare(yield* ctxFor("a"), (s) => s.query("select 1"))
      expect(vote._tag).toBe("ReadOnly")
    })
  )

  describe("sql.notify() in a branch", () => {
    const listen = (channel: string) =>
      Effect.promise(async () => {
        const listener = pool({ max: 1 })
        const got: Array<string> = []
        const waiters: Array<() => void> = []
        await listener.listen(channel, (payload) => {
          got.push(payload)
          for (const w of waiters.splice(0)) w()
        })
        /** Waits for `payload` to arrive (sent by the test after the branch: notifications keep commit order). */
        const until = (payload: string) =>
          new Promise<void>((resolve) => {
            const check = () => (got.includes(payload) ? resolve() : waiters.push(check))
            check()
          })
        return { got, until }
      })

    it.live("is refused: the branch votes No and nothing is notified", () =>
      Effect.gen(function* () {
        const sql = pool()
        const { got, until } = yield* listen("orders")
        const p = yield* PgParticipant.make({ name: "a", sql, migrate: false })
        const ctx = yield* ctxFor("a")
        const vote = yield* p.prepare(ctx, async (s) => {
          await s.sql!`insert into t values (401)`
          await s.sql!.notify("orders", "order 401 placed")
        })
        expect(vote._tag).toBe("No")
        if (vote._tag === "No") expect(vote.reason).toMatch(/notify.*refused in a branch/)
        yield* p.rollback(ctx)
        yield* Effect.promise(() => sql.notify("orders", "after"))
        yield* Effect.promise(() => until("after"))
        expect(got).toEqual(["after"])
      })
    )

    it.live("a work that catches the refusal still votes No", () =>
      Effect.gen(function* () {
        const p = yield* PgParticipant.make({ name: "a", sql: pool(), migrate: false })
        const vote = yield* p.prepare(yield* ctxFor("a"), async (s) => {
          await s.sql!`insert into t values (402)`
          try {
            await s.sql!.notify("orders", "order 402 placed")
          } catch {
            // ignored by the work
          }
        })
        expect(vote._tag).toBe("No")
        expect(yield* Effect.promise(() => rowsOf(admin))).not.toContain(402)
      })
    )
  })

  describe("the statement scanner, reviewed", () => {
    const endingIn = (text: string) => statementStartingWith(text, ENDING_STATEMENT)

    it("a SQL-standard body (BEGIN ATOMIC ... END, CASE ... END inside) is one statement", () => {
      const cases: ReadonlyArray<readonly [string, string | undefined]> = [
        ["CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END", undefined],
        [
          "create or replace procedure p(n int) language sql begin atomic " +
            "insert into t select case when n > 0 then n else 0 end; insert into t values (n + 1); end; select 1",
          undefined
        ],
        [
          "create function f() returns int language sql begin atomic select x.end from (select 1 as end) x; " +
            "select case 1 when 1 then (case when true then 1 end) end; end",
          undefined
        ],
        ["create function f() returns int language sql BEGIN /* c */ ATOMIC END; select 1", undefined],
        ["create /* c */ function f() returns int language sql begin atomic select 1; end; commit", "commit"],
        ["create function f() returns int language sql begin atomic select 1; end; end", "end"],
        ["create function f() returns int language sql as $$ begin; end $$; rollback", "rollback"],
        // BEGIN outside a routine's header opens no body.
        ["select begin from (select 1 as begin) q; end", "end"],
        [
          "insert into t values (1); commit; create function f() returns int language sql begin atomic select 1; end",
          "commit"
        ]
      ]
      for (const [text, found] of cases) expect(endingIn(text), text).toBe(found)
      expect(() =>
        Pipeline.make([
          { text: "create function f() returns int language sql begin atomic select 1; end" },
          {
            text: "create procedure p(n int) language sql begin atomic select case when n > 0 then 1 end; select 2; end"
          }
        ])
      ).not.toThrow()
    })

    it.live("a branch that creates and calls a procedure with a SQL-standard body is prepared", () =>
      Effect.gen(function* () {
        const p = yield* PgParticipant.make({ name: "a", sql: pool(), migrate: false })
        const ctx = yield* ctxFor("a")
        const vote = yield* p.prepare(ctx, (s) =>
          s.query(
            "create procedure bd_add(n int) language sql begin atomic " +
              "insert into t select case when n > 0 then n else 0 end; insert into t values (n + 1); end; " +
              "call bd_add(501)"
          )
        )
        expect(vote._tag).toBe("Prepared")
        expect(yield* p.commit(ctx)).toBe("Committed")
        expect(yield* Effect.promise(() => rowsOf(admin))).toEqual(expect.arrayContaining([501, 502]))
      })
    )

    it("ROLLBACK [WORK | TRANSACTION] TO with comments between its words ends nothing", () => {
      const cases: ReadonlyArray<readonly [string, string | undefined]> = [
        ["select 1; rollback /* undo */ to savepoint a", undefined],
        ["select 1; rollback -- undo\n to savepoint a", undefined],
        ["select 1; ROLLBACK WORK /* c */ TO a", undefined],
        ["select 1; rollback transaction\n-- c\nto savepoint a", undefined],
        // A nested comment there is read as a plain ROLLBACK: a needless No, never a missed one
        // (matching nested comments backtracked exponentially, see the cost test below).
        ["select 1; rollback /* a /* nested */ b */ to a", "rollback"],
        ["select 1; rollback/**/to a", undefined],
        ["select 1; rollback /* to */; select 2", "rollback"],
        ["select 1; rollback -- to savepoint a\n; select 2", "rollback"],
        ["select 1; rollback work; select 2", "rollback"]
      ]
      for (const [text, found] of cases) expect(endingIn(text), text).toBe(found)
      const prepared = endingIn("select 1; prepare /* c */ transaction 'x'")
      expect(prepared === undefined ? undefined : statementWords(prepared)).toBe("PREPARE TRANSACTION")
    })

    it.live("a branch that rolls back to a savepoint with a comment in it is prepared", () =>
      Effect.gen(function* () {
        const p = yield* PgParticipant.make({ name: "a", sql: pool(), migrate: false })
        const ctx = yield* ctxFor("a")
        const vote = yield* p.prepare(ctx, (s) =>
          s.query(
            "insert into t values (511); savepoint a; insert into t values (512); rollback /* undo */ to savepoint a"
          )
        )
        expect(vote._tag).toBe("Prepared")
        expect(yield* p.commit(ctx)).toBe("Committed")
        const rows = yield* Effect.promise(() => rowsOf(admin))
        expect(rows).toContain(511)
        expect(rows).not.toContain(512)
      })
    )

    describe("a COMMIT in a text whose later statement fails", () => {
      const failing = (id: number) => `insert into t values (${id}); commit; select 1/0`
      const works: ReadonlyArray<readonly [string, (id: number) => PgParticipant.PgWork]> = [
        ["session.query", (id) => (s) => s.query(failing(id)).catch(noop)],
        ["session.sql.unsafe", (id) => (s) => s.sql!.unsafe(failing(id)).then(noop, noop)]
      ]
      for (const [[via, work], i] of works.map((w, i) => [w, i] as const)) {
        it.live(`caught by the work (${via}): votes No (25000), not ReadOnly`, () =>
          Effect.gen(function* () {
            const p = yield* PgParticipant.make({ name: "a", sql: pool(), migrate: false })
            const id = 521 + i
            const vote = yield* p.prepare(yield* ctxFor("a"), work(id))
            expect(vote._tag).toBe("No")
            if (vote._tag === "No") {
              expect(vote.sqlState).toBe("25000")
              expect(vote.reason).toContain("COMMIT")
            }
            // The server ran the text up to the failing statement: the COMMIT took effect.
            expect(yield* Effect.promise(() => rowsOf(admin))).toContain(id)
            expect(yield* Effect.promise(() => idleInTransaction(admin))).toEqual([])
          })
        )
      }

      it.live("not caught: votes No (25000), and the reason names the failure too", () =>
        Effect.gen(function* () {
          const p = yield* PgParticipant.make({ name: "a", sql: pool(), migrate: false })
          const vote = yield* p.prepare(yield* ctxFor("a"), (s) => s.query(failing(525)))
          expect(vote._tag).toBe("No")
          if (vote._tag === "No") {
            expect(vote.sqlState).toBe("25000")
            expect(vote.reason).toMatch(/COMMIT.*division by zero/)
          }
        })
      )

      it.live("a COMMIT that fails (a deferred constraint) ended the transaction too: No (25000)", () =>
        Effect.gen(function* () {
          yield* Effect.promise(() =>
            admin.unsafe(
              "create table if not exists bd_parent (id int primary key); " +
                "create table if not exists bd_child (p int references bd_parent deferrable initially deferred)"
            )
          )
          const p = yield* PgParticipant.make({ name: "a", sql: pool(), migrate: false })
          const ctx = yield* ctxFor("a")
          const vote = yield* p.prepare(ctx, async (s) => {
            await s.query("insert into bd_child values (1)")
            await s.query("commit").catch(noop)
            // Outside any transaction now: autocommitted.
            await s.query("insert into t values (531)")
          })
          expect(vote._tag).toBe("No")
          if (vote._tag === "No") expect(vote.sqlState).toBe("25000")
          expect(yield* Effect.promise(() => preparedIn(adminUrl, [DB]))).toEqual([])
        })
      )
    })
  })
})

const noop = () => undefined

describe("the transaction-control scan's cost", () => {
  it("is linear in comments between ROLLBACK and TO (nested ones backtracked for seconds)", () => {
    const text = `insert into t values (1); rollback /* notes${" /* a */".repeat(40)} */`
    const started = performance.now()
    statementStartingWith(text, ENDING_STATEMENT)
    expect(performance.now() - started).toBeLessThan(200)
  })
})
