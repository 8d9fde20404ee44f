/**
 * A branch's work given as a fixed list of statements, so that a postgres.js participant can send
 * the rest of the first phase in one message once BEGIN has answered: the statements, the marker
 * and `PREPARE TRANSACTION`, written together and answered in one round trip. A work written as a
 * function (`PgWork`) may wait for one statement's answer before it sends the next, so its
 * participant can send the PREPARE only after the work returned: a round trip more at least.
 *
 * What it costs: the statements cannot depend on each other's results, and a check on a result
 * (`expectRows`) is read once the branch is already prepared; a check that fails then rolls the
 * prepared branch back (`ROLLBACK PREPARED`) and the branch votes No. The branch is prepared even
 * when nothing was written (no read-only vote).
 *
 * Anywhere else (a lone branch, PGlite, a saga barrier's session) the same value is an ordinary
 * work that sends all its statements before it reads the first answer (postgres.js pipelines them;
 * PGlite runs them one after another), then checks the answers: the same rules, and the COMMIT or
 * the PREPARE only after the answers.
 * @since 0.1.0
 */
import { SQL_GAP, statementStartingWith, statementWords } from "./internal/client.js"
import type { BranchSession, PgWork } from "./PgParticipant.js"

/**
 * What a statement answered: its rows, and how many rows it affected (INSERT, UPDATE, DELETE,
 * MERGE) or returned.
 * @since 0.1.0
 */
export interface Result {
  readonly rows: ReadonlyArray<Record<string, unknown>>
  readonly count: number
}

/**
 * Reads a statement's answer: a message fails the branch's work (the branch votes No), `undefined`
 * accepts it.
 * @since 0.1.0
 */
export type Check = (result: Result) => string | undefined

/** Anything with drizzle's `toSQL()`. */
interface Built {
  toSQL(): { sql: string; params: ReadonlyArray<unknown> }
}

/**
 * One statement: SQL text with `$1`-style parameters, or a drizzle query builder; with an optional
 * check of its answer.
 * @since 0.1.0
 */
export type Statement =
  | { readonly text: string; readonly params?: ReadonlyArray<unknown>; readonly check?: Check }
  | { readonly query: Built; readonly check?: Check }
  | Built

/**
 * A statement as the participant sends it.
 * @since 0.1.0
 */
export interface Prepared {
  readonly text: string
  readonly params: ReadonlyArray<unknown>
  readonly check: Check | undefined
}

const STATEMENTS = Symbol.for("@accord/postgres/Pipeline/statements")

/**
 * A pipelined work: a `PgWork` that also carries its statements.
 * @since 0.1.0
 */
export interface Pipeline extends PgWork {
  readonly [STATEMENTS]: ReadonlyArray<Prepared>
}

/**
 * Thrown by a pipelined work run as a function when a check refuses an answer (the branch votes No
 * with this message).
 * @since 0.1.0
 */
export class CheckFailed extends Error {
  readonly statement: number
  constructor(statement: number, reason: string) {
    super(`statement ${statement + 1} of the pipelined work: ${reason}`)
    this.name = "CheckFailed"
    this.statement = statement
  }
}

/**
 * Statements that end or replace the branch's transaction. Refused when the work is made: sent
 * between Accord's BEGIN and PREPARE, what came before them would be committed or lost outside the
 * coordinator's decision. Looked for at the start of every statement of a text: a parameterless
 * text goes over the simple protocol, which runs several statements separated by `;`
 * (`insert ...; commit; begin` committed its insert at once and the branch still voted Prepared,
 * until 2026-12-07 when only the text's start was read). Comments and quoted text are skipped
 * (`statementStartingWith`). (A postgres.js participant also reads every answer, for one that
 * slips past this.)
 */
const TRANSACTION_CONTROL = new RegExp(
  `(?:begin|start${SQL_GAP}+transaction|commit|end|rollback|abort|prepare${SQL_GAP}+transaction)\\b`,
  "iy"
)

const toPrepared = (statement: Statement, index: number): Prepared => {
  const prepared: Prepared =
    "text" in statement
      ? { text: statement.text, params: statement.params ?? [], check: statement.check }
      : "query" in statement
        ? { ...fromBuilt(statement.query), check: statement.check }
        : { ...fromBuilt(statement), check: undefined }
  const control = statementStartingWith(prepared.text, TRANSACTION_CONTROL)
  if (control !== undefined) {
    throw new TypeError(
      `statement ${index + 1} of a pipelined work controls the transaction (${statementWords(control)}): Accord begins, prepares and ends the branch's transaction`
    )
  }
  return prepared
}

const fromBuilt = (query: Built) => {
  const built = query.toSQL()
  return { text: built.sql, params: built.params }
}

/**
 * The first message of a check that refuses a statement's answer, or `undefined`.
 * @since 0.1.0
 */
export const verify = (
  statements: ReadonlyArray<Prepared>,
  results: ReadonlyArray<Result>
): CheckFailed | undefined => {
  for (let i = 0; i < statements.length; i++) {
    const check = statements[i]!.check
    const refused = check === undefined ? undefined : check(results[i]!)
    if (refused !== undefined) return new CheckFailed(i, refused)
  }
  return undefined
}

/**
 * A work made of `statements`, sent in order on the branch's transaction. Drizzle builders are
 * turned into SQL here, once. Throws a `TypeError` for an empty list or a statement that controls
 * the transaction (BEGIN, COMMIT, ROLLBACK, PREPARE TRANSACTION, ...).
 * @since 0.1.0
 */
export const make = (statements: ReadonlyArray<Statement>): Pipeline => {
  if (statements.length === 0) throw new TypeError("a pipelined work needs at least one statement")
  const prepared = statements.map(toPrepared)
  // All sent before the first answer is read: a postgres.js branch pipelines them behind its BEGIN
  // (PGlite runs them one after another). A failed statement rejects first; the rest then fail
  // inside the aborted transaction, which the participant rolls back.
  const work = async (session: BranchSession) => {
    const results = await Promise.all(prepared.map((p) => session.statement(p.text, p.params)))
    const refused = verify(prepared, results)
    if (refused !== undefined) throw refused
  }
  return Object.assign(work, { [STATEMENTS]: prepared })
}

/**
 * The statements of a pipelined work; `undefined` for any other work.
 * @since 0.1.0
 */
export const statementsOf = (work: PgWork): ReadonlyArray<Prepared> | undefined =>
  (work as Partial<Pipeline>)[STATEMENTS]

/**
 * A check: the statement affected (or returned) exactly `n` rows.
 * @since 0.1.0
 */
export const expectRows =
  (n: number): Check =>
  (result) =>
    result.count === n ? undefined : `expected ${n} row${n === 1 ? "" : "s"}, got ${result.count}`
