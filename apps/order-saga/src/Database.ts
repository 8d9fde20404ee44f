/**
 * One database connection for a service, the saga log or the invariant checker, over PGlite (a data
 * folder) or PostgreSQL (postgres.js), with the same small surface: parameterised queries and local
 * transactions.
 *
 * @since 0.1.0
 */
import { cpSync, existsSync, mkdirSync, readdirSync, renameSync, rmSync } from "node:fs"
import { dirname, join } from "node:path"
import { PGlite } from "@electric-sql/pglite"
import type { PgDatabase, PgQueryResultHKT } from "drizzle-orm/pg-core"
import { drizzle as drizzlePglite } from "drizzle-orm/pglite"
import { drizzle as drizzlePostgres } from "drizzle-orm/postgres-js"
import postgres from "postgres"
import type { DbTarget } from "./Config.js"

/**
 * A connection inside a local transaction (or outside one).
 * @since 0.1.0
 */
export interface Queryable {
  readonly query: <T = Record<string, unknown>>(text: string, params?: ReadonlyArray<unknown>) => Promise<T[]>
}

/**
 * An open database.
 * @since 0.1.0
 */
export interface Db extends Queryable {
  readonly target: DbTarget
  readonly driver:
    | { readonly kind: "pglite"; readonly db: PGlite }
    | { readonly kind: "postgres"; readonly sql: postgres.Sql }
  readonly transaction: <A>(work: (tx: Queryable) => Promise<A>) => Promise<A>
  /** Runs several statements (DDL) without parameters. */
  readonly exec: (text: string) => Promise<void>
  readonly close: () => Promise<void>
}

const ident = (name: string): string => {
  if (!/^[a-z_][a-z0-9_]{0,62}$/.test(name)) throw new Error(`bad database name ${name}`)
  return `"${name}"`
}

/**
 * The URL of database `name` on the server of `url`.
 * @since 0.1.0
 */
export const urlFor = (url: string, name: string): string => {
  const u = new URL(url)
  u.pathname = `/${name}`
  return u.toString()
}

/**
 * Creates the database of a target if missing (PostgreSQL), or its folder (PGlite); with `fresh`,
 * drops it first.
 * @since 0.1.0
 */
export const ensure = async (target: DbTarget, fresh: boolean): Promise<void> => {
  if (target.kind === "pglite") {
    if (fresh) rmSync(target.dataDir, { recursive: true, force: true })
    if (existsSync(target.dataDir) && readdirSync(target.dataDir).length > 0) return
    // initdb inside PGlite takes seconds; copying a pristine data folder takes milliseconds.
    // Kept inside the data root (`<--data-dir>/.pglite-template`): nothing is written outside it.
    const template = await templateOf(join(dirname(target.dataDir), ".pglite-template"))
    mkdirSync(dirname(target.dataDir), { recursive: true })
    cpSync(template, target.dataDir, { recursive: true })
    return
  }
  const admin = postgres(target.url, { max: 1, onnotice: () => {}, connect_timeout: 5 })
  try {
    if (fresh) await admin.unsafe(`drop database if exists ${ident(target.database)} with (force)`)
    const exists = await admin`select 1 from pg_database where datname = ${target.database}`
    if (exists.length === 0) {
      try {
        await admin.unsafe(`create database ${ident(target.database)}`)
      } catch (error) {
        // Another process created it meanwhile (42P04 duplicate_database; 23505 on the catalogue).
        const code = sqlState(error)
        if (code !== "42P04" && code !== "23505") throw error
      }
    }
  } finally {
    await admin.end({ timeout: 5 })
  }
}

const templates = new Map<string, Promise<string>>()

/** A pristine PGlite data folder (created once per data root, inside it). */
const templateOf = (dir: string): Promise<string> => {
  let made = templates.get(dir)
  if (made === undefined) {
    made = (async () => {
      if (existsSync(join(dir, "PG_VERSION"))) return dir
      rmSync(dir, { recursive: true, force: true })
      const building = `${dir}.${process.pid}`
      rmSync(building, { recursive: true, force: true })
      mkdirSync(dirname(dir), { recursive: true })
      const db = await PGlite.create(building)
      await db.close()
      try {
        renameSync(building, dir)
      } catch (error) {
        // Another process made it first.
        rmSync(building, { recursive: true, force: true })
        if (!existsSync(join(dir, "PG_VERSION"))) throw error
      }
      return dir
    })()
    templates.set(dir, made)
  }
  return made
}

/**
 * The SQLSTATE of a driver error (postgres.js and PGlite both expose `code`).
 * @since 0.1.0
 */
export const sqlState = (error: unknown): string | undefined => {
  if (typeof error === "object" && error !== null && "code" in error) {
    const code = (error as { code: unknown }).code
    return typeof code === "string" ? code : undefined
  }
  return undefined
}

/**
 * Opens a target (which must exist: see `ensure`).
 * @since 0.1.0
 */
export const open = async (target: DbTarget, options?: { readonly max?: number }): Promise<Db> => {
  if (target.kind === "pglite") {
    const db = await PGlite.create(target.dataDir)
    const on = (q: { query: PGlite["query"] }): Queryable => ({
      query: async <T>(text: string, params?: ReadonlyArray<unknown>) =>
        (await q.query<T>(text, params === undefined ? [] : [...params])).rows
    })
    return {
      target,
      driver: { kind: "pglite", db },
      ...on(db),
      transaction: (work) => db.transaction((tx) => work(on(tx))),
      exec: async (text) => {
        await db.exec(text)
      },
      close: () => db.close()
    }
  }
  const sql = postgres(urlFor(target.url, target.database), {
    max: options?.max ?? 10,
    onnotice: () => {},
    connect_timeout: 5
  })
  const on = (q: postgres.Sql | postgres.TransactionSql): Queryable => ({
    query: async <T>(text: string, params?: ReadonlyArray<unknown>) =>
      (await q.unsafe(text, (params ?? []) as postgres.ParameterOrJSON<never>[])) as unknown as T[]
  })
  return {
    target,
    driver: { kind: "postgres", sql },
    ...on(sql),
    transaction: async <A>(work: (tx: Queryable) => Promise<A>) =>
      (await sql.begin((tx) => work(on(tx)))) as A,
    exec: async (text) => {
      await sql.unsafe(text)
    },
    close: () => sql.end({ timeout: 5 })
  }
}

/**
 * A drizzle handle on the same connection, for typed reads outside the barrier (the invariant checks).
 * @since 0.1.0
 */
export const drizzleOf = (db: Db): PgDatabase<PgQueryResultHKT> =>
  db.driver.kind === "pglite" ? drizzlePglite(db.driver.db) : drizzlePostgres(db.driver.sql)
