/**
 * The exported drizzle tables (`Schema`, `SagaSchema`) describe the tables Accord's DDL really
 * creates, checked on real PostgreSQL:
 *
 * - every table the DDL creates (`Migrations.participantDdl`, `Migrations.logDdl`, `sagaLogDdl`,
 *   `barrierDdl`, `PgThreePhaseParticipant.ddl`) has a drizzle table, and every drizzle table is one
 *   the DDL creates;
 * - column by column, what drizzle says (`getTableConfig`: name, `getSQLType()`, `notNull`,
 *   `hasDefault`, primary key, index and check names) equals the catalog;
 * - the drizzle definition, turned into DDL (as drizzle-kit would) and run in a second database,
 *   gives the same catalog as Accord's DDL: column types, nullability, default expressions, identity,
 *   constraints (names and definitions: primary keys, checks, foreign keys) and indexes (names,
 *   columns, partial `where`), both normalised by PostgreSQL itself;
 * - queries built with drizzle on these tables run on postgres.js (`.toSQL()`), and through the
 *   drizzle postgres-js driver, and the unfinished-decisions select can use its partial index.
 *
 * Databases `accord_t_schema_*`, dropped at the end.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { and, asc, eq, is, isNull, SQL } from "drizzle-orm"
import { type IndexedColumn, PgDialect, PgTable, getTableConfig } from "drizzle-orm/pg-core"
import { drizzle } from "drizzle-orm/postgres-js"
import postgres from "postgres"
import * as Migrations from "../src/Migrations.js"
import * as PgThreePhaseParticipant from "../src/PgThreePhaseParticipant.js"
import * as SagaSchema from "../src/SagaSchema.js"
import * as Schema from "../src/Schema.js"
import * as TestDatabase from "../src/TestDatabase.js"

const server = await TestDatabase.server()

const tables: ReadonlyArray<PgTable> = [
  ...(Object.values(Schema) as Array<unknown>),
  ...(Object.values(SagaSchema) as Array<unknown>)
].filter((v): v is PgTable => is(v, PgTable))
/** An index column: an expression, or a column (drizzle types it as a `Partial` of either). */
const indexColumn = (c: unknown): SQL | IndexedColumn => c as SQL | IndexedColumn
const byName = new Map(tables.map((t) => [getTableConfig(t).name, t]))

const dialect = new PgDialect()
const render = (s: SQL): string => {
  const q = dialect.sqlToQuery(s)
  if (q.params.length > 0) throw new Error(`parameters in schema SQL: ${q.sql}`)
  return q.sql
}
const quote = (name: string): string => `"${name.replaceAll('"', '""')}"`
const literal = (value: unknown): string => {
  if (is(value, SQL)) return render(value)
  if (typeof value === "string") return `'${value.replaceAll("'", "''")}'`
  if (typeof value === "number" || typeof value === "boolean") return String(value)
  return `'${JSON.stringify(value).replaceAll("'", "''")}'::jsonb`
}

/** The DDL drizzle's definition of `table` stands for (as drizzle-kit would write it). */
const drizzleDdl = (table: PgTable): { create: string; after: Array<string> } => {
  const config = getTableConfig(table)
  const parts = config.columns.map((c) => {
    let def = `${quote(c.name)} ${c.getSQLType()}`
    if (c.primary) def += " primary key"
    else if (c.notNull) def += " not null"
    if (c.default !== undefined) def += ` default ${literal(c.default)}`
    const identity = c.generatedIdentity
    if (identity !== undefined) {
      const o = identity.sequenceOptions ?? {}
      const options = [
        o.startWith !== undefined ? `start with ${o.startWith}` : "",
        o.increment !== undefined ? `increment by ${o.increment}` : "",
        o.minValue !== undefined ? `minvalue ${o.minValue}` : "",
        o.maxValue !== undefined ? `maxvalue ${o.maxValue}` : "",
        o.cache !== undefined ? `cache ${o.cache}` : "",
        o.cycle ? "cycle" : ""
      ].filter((s) => s !== "")
      def += ` generated ${identity.type === "always" ? "always" : "by default"} as identity`
      if (options.length > 0) def += ` (${options.join(" ")})`
    }
    return def
  })
  for (const pk of config.primaryKeys) {
    parts.push(
      `constraint ${quote(pk.getName())} primary key (${pk.columns.map((c) => quote(c.name)).join(", ")})`
    )
  }
  for (const u of config.uniqueConstraints) {
    parts.push(`constraint ${quote(u.getName()!)} unique (${u.columns.map((c) => quote(c.name)).join(", ")})`)
  }
  for (const check of config.checks)
    parts.push(`constraint ${quote(check.name)} check (${render(check.value)})`)
  const after: Array<string> = []
  for (const fk of config.foreignKeys) {
    const ref = fk.reference()
    after.push(
      `alter table ${quote(config.name)} add constraint ${quote(fk.getName())} foreign key (${ref.columns
        .map((c) => quote(c.name))
        .join(", ")}) references ${quote(getTableConfig(ref.foreignTable).name)} (${ref.foreignColumns
        .map((c) => quote(c.name))
        .join(", ")}) on delete ${fk.onDelete ?? "no action"} on update ${fk.onUpdate ?? "no action"}`
    )
  }
  for (const index of config.indexes) {
    const ix = index.config
    if (ix.name === undefined) throw new Error(`an unnamed index on ${config.name}`)
    const columns = ix.columns
      .map(indexColumn)
      .map((c) =>
        is(c, SQL)
          ? `(${render(c)})`
          : `${quote(c.name ?? "")}${c.indexConfig?.order === "desc" ? " desc" : ""}${c.indexConfig?.nulls ? ` nulls ${c.indexConfig.nulls}` : ""}`
      )
    after.push(
      `create ${ix.unique ? "unique " : ""}index ${quote(ix.name)} on ${quote(config.name)} using ${ix.method ?? "btree"} (${columns.join(", ")})${ix.where ? ` where ${render(ix.where)}` : ""}`
    )
  }
  return { create: `create table ${quote(config.name)} (\n  ${parts.join(",\n  ")}\n)`, after }
}

/** What the catalog says of table `name`, in a form both databases can be compared on. */
const catalog = async (sql: postgres.Sql, name: string) => {
  const columns = await sql`
    select a.attname as name, format_type(a.atttypid, a.atttypmod) as type, a.attnotnull as not_null,
           pg_get_expr(d.adbin, d.adrelid) as default, a.attidentity as identity, a.attgenerated as generated
    from pg_attribute a left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
    where a.attrelid = ${`public.${name}`}::regclass and a.attnum > 0 and not a.attisdropped
    order by a.attname`
  const identities = await sql`
    select column_name, identity_generation, identity_start, identity_increment, identity_maximum,
           identity_minimum, identity_cycle
    from information_schema.columns
    where table_schema = 'public' and table_name = ${name} and is_identity = 'YES' order by column_name`
  const constraints = await sql`
    select conname as name, contype as type, pg_get_constraintdef(oid) as definition
    from pg_constraint where conrelid = ${`public.${name}`}::regclass order by conname`
  const indexes = await sql`
    select indexname as name, indexdef as definition
    from pg_indexes where schemaname = 'public' and tablename = ${name} order by indexname`
  return {
    columns: [...columns],
    identities: [...identities],
    constraints: [...constraints],
    indexes: [...indexes]
  }
}

const suffix = `${process.pid}`
const ddlDb = `accord_t_schema_ddl_${suffix}`
const drizzleDb = `accord_t_schema_drizzle_${suffix}`

describe.skipIf(server === undefined)("the drizzle schemas match Accord's DDL on PostgreSQL", () => {
  const adminUrl = server?.adminUrl ?? ""
  let ddlSql: postgres.Sql
  let drizzleSql: postgres.Sql
  let drizzleDdlError: unknown

  beforeAll(async () => {
    ddlSql = postgres(await TestDatabase.createDatabase(adminUrl, ddlDb), { max: 2, onnotice: () => {} })
    drizzleSql = postgres(await TestDatabase.createDatabase(adminUrl, drizzleDb), {
      max: 2,
      onnotice: () => {}
    })
    for (const ddl of [
      Migrations.participantDdl,
      Migrations.logDdl,
      SagaSchema.sagaLogDdl,
      SagaSchema.barrierDdl,
      PgThreePhaseParticipant.ddl
    ]) {
      await ddlSql.unsafe(ddl).simple()
    }
    // Every table first, then foreign keys and indexes (a foreign key may point at a later table).
    try {
      const all = tables.map(drizzleDdl)
      for (const { create } of all) await drizzleSql.unsafe(create)
      for (const { after } of all) for (const statement of after) await drizzleSql.unsafe(statement)
    } catch (error) {
      drizzleDdlError = error
    }
  }, 60_000)

  afterAll(async () => {
    await ddlSql?.end({ timeout: 5 })
    await drizzleSql?.end({ timeout: 5 })
    await TestDatabase.dropDatabase(adminUrl, ddlDb)
    await TestDatabase.dropDatabase(adminUrl, drizzleDb)
  }, 60_000)

  it("every table the DDL creates has a drizzle table, and no drizzle table is missing from the DDL", async () => {
    const rows = await ddlSql<{ name: string }[]>`
      select table_name as name from information_schema.tables
      where table_schema = 'public' and table_type = 'BASE TABLE' order by table_name`
    expect([...byName.keys()].sort()).toEqual(rows.map((r) => r.name))
  })

  it("drizzle's definitions are valid DDL", () => {
    expect(drizzleDdlError).toBeUndefined()
  })

  describe.each([...byName.keys()].sort())("%s", (name) => {
    const table = byName.get(name)!

    it("columns, types, nullability, defaults, primary key, check and index names: as getTableConfig says", async () => {
      const config = getTableConfig(table)
      const columns = await ddlSql<{ name: string; type: string; notNull: boolean; hasDefault: boolean }[]>`
        select column_name as name, data_type as type, is_nullable = 'NO' as "notNull",
               (column_default is not null or is_identity = 'YES' or is_generated = 'ALWAYS') as "hasDefault"
        from information_schema.columns
        where table_schema = 'public' and table_name = ${name} order by column_name`
      expect(
        config.columns
          .map((c) => ({ name: c.name, type: c.getSQLType(), notNull: c.notNull, hasDefault: c.hasDefault }))
          .sort((a, b) => a.name.localeCompare(b.name))
      ).toEqual(columns.map((c) => ({ ...c })))

      const [pk] = await ddlSql<{ columns: Array<string> }[]>`
        select array(select a.attname from unnest(c.conkey) with ordinality k(n, i)
                     join pg_attribute a on a.attrelid = c.conrelid and a.attnum = k.n order by k.i) as columns
        from pg_constraint c where c.conrelid = ${`public.${name}`}::regclass and c.contype = 'p'`
      const drizzlePk = [
        ...config.columns.filter((c) => c.primary).map((c) => [c.name]),
        ...config.primaryKeys.map((p) => p.columns.map((c) => c.name))
      ]
      expect(drizzlePk).toEqual(pk === undefined ? [] : [pk.columns])

      const checks = await ddlSql<{ name: string }[]>`
        select conname as name from pg_constraint
        where conrelid = ${`public.${name}`}::regclass and contype = 'c' order by conname`
      expect(config.checks.map((c) => c.name).sort()).toEqual(checks.map((c) => c.name))

      const indexes = await ddlSql<
        { name: string; unique: boolean; columns: Array<string>; partial: boolean }[]
      >`
        select i.relname as name, x.indisunique as unique, x.indpred is not null as partial,
               -- Each key column as PostgreSQL prints it: a column's name, or an expression.
               array(select pg_get_indexdef(x.indexrelid, k.o::int, true)
                     from generate_series(1, x.indnkeyatts) k(o) order by k.o) as columns
        from pg_index x join pg_class i on i.oid = x.indexrelid
        where x.indrelid = ${`public.${name}`}::regclass
          and not exists (select 1 from pg_constraint c where c.conindid = x.indexrelid)
        order by i.relname`
      expect(
        config.indexes
          .map((i) => ({
            name: i.config.name,
            unique: i.config.unique,
            partial: i.config.where !== undefined,
            columns: i.config.columns.map(indexColumn).map((c) => (is(c, SQL) ? render(c) : c.name))
          }))
          .sort((a, b) => (a.name ?? "").localeCompare(b.name ?? ""))
      ).toEqual(indexes.map((i) => ({ ...i })))
    })

    it("the catalog of drizzle's definition equals the catalog of Accord's DDL (defaults, constraints, indexes)", async () => {
      expect(drizzleDdlError).toBeUndefined()
      expect(await catalog(drizzleSql, name)).toEqual(await catalog(ddlSql, name))
    })
  })

  it("queries built with drizzle on these tables run on postgres.js", async () => {
    const builder = drizzle(ddlSql)
    const run = async (query: { toSQL: () => { sql: string; params: Array<unknown> } }) => {
      const q = query.toSQL()
      return [...(await ddlSql.unsafe(q.sql, q.params as Array<postgres.ParameterOrJSON<never>>))]
    }
    const decidedAt = new Date("2024-01-02T03:04:05.000Z")
    await run(
      builder.insert(Schema.accordDecision).values([
        { txId: "t-open", decision: "commit", branches: [{ branch: "a", gid: "g-a" }], decidedAt },
        { txId: "t-done", decision: "abort", branches: [], decidedAt, completedAt: decidedAt }
      ])
    )
    const unfinished = builder
      .select({ txId: Schema.accordDecision.txId, decision: Schema.accordDecision.decision })
      .from(Schema.accordDecision)
      .where(isNull(Schema.accordDecision.completedAt))
      .orderBy(asc(Schema.accordDecision.decidedAt))
    // Raw rows: drizzle maps columns by position, the SQL does not alias them.
    expect(await run(unfinished)).toEqual([{ tx_id: "t-open", decision: "commit" }])

    // The select can use the partial index drizzle declares.
    const { sql: text, params } = unfinished.toSQL()
    const plan = await ddlSql.begin(async (tx) => {
      await tx.unsafe("set local enable_seqscan = off")
      return tx.unsafe(`explain ${text}`, params as Array<postgres.ParameterOrJSON<never>>)
    })
    expect(plan.map((r) => Object.values(r)[0]).join("\n")).toContain("accord_decision_unfinished")

    await run(
      builder.insert(Schema.accordHeuristic).values({
        txId: "t-open",
        branch: "a",
        gid: "g-a",
        decision: "commit",
        detail: "rolled back by hand"
      })
    )
    await run(builder.insert(Schema.accordBranch).values({ gid: "g-a", txId: "t-open", branch: "a" }))
    await run(
      builder
        .insert(SagaSchema.accordSaga)
        .values({ sagaId: "s1", sagaType: "order", status: "running", nextSeq: 1 })
    )
    await run(
      builder
        .insert(SagaSchema.accordSagaRecord)
        .values({ sagaId: "s1", seq: 0, kind: "started", payload: { input: 1 } })
    )
    await run(
      builder
        .insert(SagaSchema.accordSagaBarrier)
        .values({ gid: "s1", branch: "a", op: "action", reason: "action", result: { ok: true } })
    )
    await run(
      builder
        .insert(Schema.accord3pcState)
        .values({ gid: "g-3", txId: "t-3", branch: "a", state: "uncertain" })
    )
    const running = await run(
      builder
        .select({ sagaId: SagaSchema.accordSaga.sagaId, kind: SagaSchema.accordSagaRecord.kind })
        .from(SagaSchema.accordSaga)
        .innerJoin(
          SagaSchema.accordSagaRecord,
          eq(SagaSchema.accordSagaRecord.sagaId, SagaSchema.accordSaga.sagaId)
        )
        .where(and(eq(SagaSchema.accordSaga.status, "running"), eq(SagaSchema.accordSagaRecord.seq, 0)))
    )
    expect(running).toEqual([{ saga_id: "s1", kind: "started" }])

    // Through the drizzle driver (its own client: drizzle changes the client's type parsers).
    const client = postgres(TestDatabase.urlFor(adminUrl, ddlDb), { max: 1, onnotice: () => {} })
    try {
      const db = drizzle(client)
      const decisions = await db
        .select()
        .from(Schema.accordDecision)
        .where(isNull(Schema.accordDecision.completedAt))
      expect(decisions).toEqual([
        {
          txId: "t-open",
          decision: "commit",
          branches: [{ branch: "a", gid: "g-a" }],
          decidedAt,
          completedAt: null
        }
      ])
      const [heuristic] = await db.select().from(Schema.accordHeuristic)
      expect(typeof heuristic?.id).toBe("number")
      expect(heuristic?.recordedAt).toBeInstanceOf(Date)
      const states = await db
        .select({ state: Schema.accord3pcState.state, members: Schema.accord3pcState.members })
        .from(Schema.accord3pcState)
        .where(eq(Schema.accord3pcState.txId, "t-3"))
      expect(states).toEqual([{ state: "uncertain", members: "" }])
      const [barrier] = await db.select().from(SagaSchema.accordSagaBarrier)
      expect(barrier?.result).toEqual({ ok: true })
      // A check drizzle declares is the one the DDL enforces.
      await expect(
        client.unsafe(
          "insert into accord_saga (saga_id, saga_type, status, next_seq) values ('s2', 't', 'paused', 1)"
        )
      ).rejects.toThrow(/accord_saga_status_check/)
    } finally {
      await client.end({ timeout: 5 })
    }
  })
})
