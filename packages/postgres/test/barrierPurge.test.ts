/**
 * `Barrier.purge`: barrier rows older than the retention are deleted in batches, younger ones kept,
 * on real PostgreSQL (postgres.js) and on PGlite; a retention that is not a positive duration is refused.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import type postgres from "postgres"
import * as Barrier from "../src/Barrier.js"
import * as TestDatabase from "../src/TestDatabase.js"
import { onPostgresAndPGlite } from "./support/backends.js"

const server = await TestDatabase.server()

const suite = (
  label: string,
  open: () => Promise<{ conn: Barrier.Connection; close: () => Promise<void> }>
) =>
  describe(`Barrier.purge on ${label}`, () => {
    let conn: Barrier.Connection
    let close: () => Promise<void>
    beforeAll(async () => {
      ;({ conn, close } = await open())
      await Barrier.migrate(conn)
    }, 60_000)
    afterAll(async () => {
      await close?.()
    }, 60_000)

    const query = async <T>(text: string, params: Array<unknown> = []): Promise<Array<T>> =>
      typeof conn === "function"
        ? ((await conn.unsafe(text, params as Array<postgres.ParameterOrJSON<never>>)) as unknown as Array<T>)
        : (await conn.query<T>(text, params)).rows
    const gids = async () =>
      (
        await query<{ gid: string; op: string }>("select gid, op from accord_saga_barrier order by gid, op")
      ).map((r) => `${r.gid}:${r.op}`)

    it("deletes only the rows older than the retention, in batches, and a purged step loses its protection", async () => {
      // Five old steps (action + compensation each: 10 rows) and two recent ones.
      for (let i = 0; i < 5; i++) {
        const target = { gid: `old-${i}`, branch: "reserve" }
        await Barrier.runPromise(conn, { ...target, op: "action" }, async () => i)
        await Barrier.runPromise(conn, { ...target, op: "compensation" }, async () => undefined)
      }
      for (let i = 0; i < 2; i++) {
        await Barrier.runPromise(conn, { gid: `new-${i}`, branch: "reserve", op: "action" }, async () => i)
      }
      await query(
        "update accord_saga_barrier set created_at = now() - interval '3 days' where gid like 'old-%'"
      )

      // Nothing is older than a week.
      expect(await Barrier.purge(conn, { olderThan: "7 days" })).toBe(0)
      expect(await gids()).toHaveLength(12)

      // Batches of 3: 10 rows in four statements, all of them gone, the recent ones kept.
      expect(await Barrier.purge(conn, { olderThan: "1 day", batch: 3 })).toBe(10)
      expect(await gids()).toEqual(["new-0:action", "new-1:action"])
      expect(await Barrier.purge(conn, { olderThan: "1 day", batch: 3 })).toBe(0)

      // What the retention rule warns about: a purged action, delivered again, runs again.
      const again = await Barrier.runPromise(
        conn,
        { gid: "old-0", branch: "reserve", op: "action" },
        async () => 42
      )
      expect(again).toMatchObject({ _tag: "Applied" })
      // A kept one is still a duplicate.
      const dup = await Barrier.runPromise(
        conn,
        { gid: "new-0", branch: "reserve", op: "action" },
        async () => 7
      )
      expect(dup).toMatchObject({ _tag: "Duplicate" })
    })

    it("refuses a retention or batch that is not positive", async () => {
      for (const olderThan of [0, -1, "0 millis", Number.NaN, Number.POSITIVE_INFINITY, "soon"]) {
        await expect(
          Barrier.purge(conn, { olderThan: olderThan as Parameters<typeof Barrier.purge>[1]["olderThan"] })
        ).rejects.toThrow(RangeError)
      }
      await expect(Barrier.purge(conn, { olderThan: "1 day", batch: 0 })).rejects.toThrow(RangeError)
      await expect(Barrier.purge(conn, { olderThan: "1 day", batch: 1.5 })).rejects.toThrow(RangeError)
    })
  })

onPostgresAndPGlite(
  server,
  { db: "accord_t_barrier_purge", max: 4, skipped: "Barrier.purge on PostgreSQL (no server)" },
  suite
)
