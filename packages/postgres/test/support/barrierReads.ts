/**
 * Reads shared by the barrier tests that run the same work on PostgreSQL and PGlite: rows of a
 * query on either, a row count by key, a gid's barrier ops, and how a run's failure is read.
 */
import type { PGlite } from "@electric-sql/pglite"
import { Effect, Either } from "effect"
import type postgres from "postgres"
import * as Barrier from "../../src/Barrier.js"

export type Conn = postgres.Sql | PGlite

export const rowsOf = async <T>(conn: Conn, text: string, params: Array<unknown>): Promise<Array<T>> =>
  typeof conn === "function"
    ? await conn.unsafe<Array<T>>(text, params as never)
    : (await conn.query<T>(text, params)).rows

/** Rows of `table` (a name the test made) whose `k` is `k`. */
export const countIn = (conn: Conn, table: string, k: string) =>
  Effect.promise(
    async () =>
      (await rowsOf<{ n: number }>(conn, `select count(*)::int as n from ${table} where k = $1`, [k]))[0]!.n
  )

export const barrierOps = (conn: Conn, gid: string) =>
  Effect.promise(async () =>
    (
      await rowsOf<{ op: string }>(conn, "select op from accord_saga_barrier where gid = $1 order by op", [
        gid
      ])
    ).map((r) => r.op)
  )

/** How the failure is read (plain, so that a mismatch prints). */
export const readOf = (run: Either.Either<unknown, Barrier.BarrierError>) =>
  Either.isLeft(run) && run.left._tag === "BarrierWorkError"
    ? {
        sqlState: run.left.sqlState,
        action: Barrier.toStepError(run.left)._tag,
        compensation: Barrier.toCompensationStepError(run.left)._tag
      }
    : { run: Either.isLeft(run) ? run.left._tag : (run.right as { _tag: string })._tag }
