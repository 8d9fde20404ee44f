/**
 * A postgres.js branch as ONE Promise: wait for a branch slot, reserve a connection, BEGIN and the
 * work, then COMMIT (one phase) or the marker and PREPARE TRANSACTION, and leave the connection
 * clean. `PgParticipant` wraps it in a single `Effect.async`.
 *
 * Why a Promise and not a chain of Effects: on the 2-core benchmark box every Effect operation costs
 * a few microseconds and a fiber hop per statement tens; a branch built from ~10 Effects per
 * statement cost more client CPU than the statements themselves. The rules are the same as before:
 *
 * - Round trips: BEGIN is answered before the work starts (`beginOn`: a statement pipelined behind a
 *   BEGIN that a cancel request fails would commit on its own); a branch whose work certainly
 *   wrote (a statement reported rows changed: the transaction has an xid) sends the marker and the
 *   PREPARE in one simple-protocol message. A pipelined work (`Pipeline`) sends its statements, the
 *   marker and the PREPARE in one write after BEGIN.
 *   Otherwise the marker is inserted only if the transaction has an xid
 *   (`pg_current_xact_id_if_assigned()`); no row means read-only: COMMIT, no PREPARE. The marker
 *   always follows a `RESET ROLE` (`RESET_ROLE`): prepared as the pool's role, whatever role the
 *   work set, so that the pool's role can commit it.
 * - A work that ends the transaction itself (COMMIT, ROLLBACK, ..., also inside a text of several
 *   statements) votes No (25000), before any marker, PREPARE or COMMIT is sent.
 * - The marker names its table with the schema found when the participant was made
 *   (`markerStatements`), so a work that moves `search_path` cannot make it miss the table or land
 *   in another schema's copy of it.
 * - Parameterised statements are named prepared statements (one round trip instead of two) unless
 *   the pool was made with `prepare: false`.
 * - Abandoned (the caller was interrupted): new statements are refused, running ones cancelled on
 *   the server, the work is waited for (bounded by `cancelTimeout`), the transaction rolled back.
 *   Abandoned while it waits for a slot or a connection, it stops at once (nothing was sent); a
 *   connection handed over later goes back to the pool.
 * - A connection that stops answering (a blocked backend, a network partitioned under it, from
 *   BEGIN on) is never returned to the pool as it is, nor lost to it (`end`): its session is
 *   terminated by pid (`pg_terminate_backend` over another connection of the pool, bounded by
 *   `cancelTimeout`, dropped if not written by then), which ends its transaction on the server,
 *   then the reserved connection is destroyed on this side (`destroy()`, which Accord's postgres.js
 *   patch adds: the socket is closed at once, what was sent on it fails, and the pool reconnects
 *   that connection on demand as a new session). That is done when the clean-up's ROLLBACK does
 *   not answer within `cancelTimeout` (BEGIN or the work did not either), and when a statement of
 *   Accord's after the work (ROLLBACK, marker, PREPARE, COMMIT) of an abandoned branch is still
 *   unanswered `cancelTimeout` after its cancel (it fails as on a lost connection: at "end", in
 *   doubt). The pid is the one postgres.js gives a statement as it writes it (the connection's key
 *   data from start-up), so it is known even when BEGIN never answered: no extra statement. On a
 *   driver without the patch the connection stays reserved until its socket closes (the server's
 *   close reaching it, or TCP keepalive), and so does a branch waiting on it. With it an abandoned
 *   branch is done at most three `cancelTimeout`s after the abandon (the work, the ROLLBACK, the
 *   terminate).
 * - A dropped connection is not released: postgres.js reconnects it on demand.
 */
import { type Participant, TransactionId } from "@accord/core"
import { Option } from "effect"
import type postgres from "postgres"
import type { BranchSession, PgWork } from "../PgParticipant.js"
import * as Pipeline from "../Pipeline.js"
import {
  Abandonment,
  cancelIfRunning,
  countOf,
  delay,
  destroyReserved,
  guardedSql,
  pidOf,
  sendOn,
  SQL_GAP,
  settle,
  statementStartingWith,
  statementWords,
  terminateBackend,
  unlessAbandoned
} from "./client.js"
import { type PgFailure, toFailure } from "./errors.js"

/** How a branch ended. */
export type Ending =
  | { readonly _tag: "WorkFailed"; readonly failure: PgFailure }
  | { readonly _tag: "ReadOnly" }
  | { readonly _tag: "Prepared" }
  | { readonly _tag: "Committed" }

/** A statement of Accord's own (not the work) failed, at `stage`. */
export interface StageFailure {
  /** `busy`: the PGlite gate stayed closed; nothing was sent. */
  readonly stage: "busy" | "begin" | "marker" | "end"
  readonly failure: PgFailure
}

export type Mode = "prepare" | "onePhase"

/** Quotes an SQL identifier: in double quotes, any `"` in it doubled. */
export const quoteIdentifier = (name: string): string => `"${name.replaceAll('"', '""')}"`

/**
 * A scalar subquery: the schema of the table `name` (an SQL text expression: a parameter, or a
 * literal Accord wrote) as this session's `search_path` finds it, NULL when none does.
 */
export const schemaOf = (name: string): string =>
  `(select n.nspname from pg_class c join pg_namespace n on n.oid = c.relnamespace where c.oid = to_regclass(${name}))`

/**
 * The schema holding table `$1` as this session's `search_path` finds it (NULL when none does).
 * Run once when a participant or barrier is made, on a pool connection: Accord's statements then
 * name the table with its schema (`tableName`), so a work that moves `search_path`
 * (`SET LOCAL search_path = tenant`) cannot make the marker or barrier statements that follow it in
 * the same transaction miss the table, or land in a tenant schema's own copy of it.
 */
export const TABLE_SCHEMA_SQL = `select ${schemaOf("$1")} as nspname`

/** `table` in `schema` (as `TABLE_SCHEMA_SQL` found it), both quoted. */
export const tableName = (table: string, schema: string): string =>
  `${quoteIdentifier(schema)}.${quoteIdentifier(table)}`

/**
 * A participant's statements that name its marker table, built once when it is made (never per
 * branch: the hot path adds no string work and no round trip).
 */
export interface MarkerStatements {
  /** Inserted only when the branch already wrote (the marker itself would assign an xid). */
  readonly marker: string
  /** The start of the one-message marker insert of `markerAndPrepareSql`, up to its values. */
  readonly insertValues: string
}

/** The marker statements on `table` (as `tableName` gives it). */
export const markerStatements = (table: string): MarkerStatements => ({
  marker:
    `insert into ${table} (gid, tx_id, branch) select $1::text, $2::text, $3::text ` +
    "where pg_current_xact_id_if_assigned() is not null returning 1 as marked",
  insertValues: `insert into ${table} (gid, tx_id, branch) values (`
})

/**
 * The marker and the PREPARE as ONE simple-protocol message (one parse, one round trip), for a
 * branch that certainly wrote. `PREPARE TRANSACTION` takes a literal anyway, so the marker's three
 * values go as literals too, all taken from the gid after `parseGid` matched it against Accord's
 * pattern (no quote can pass it; `toSqlLiteral` doubles any regardless). If the insert fails, the
 * server skips the PREPARE of the same message and the transaction stays open (aborted) for the
 * rollback. `undefined` when the context is not one Accord built.
 *
 * `RESET ROLE` goes first (`RESET_ROLE`): the marker is inserted, and the transaction prepared, as
 * the pool's own role, whatever role the work set.
 * On the benchmark box this saves about 100 us of client CPU per branch (210 per two-branch
 * transaction) against a separate parameterised insert pipelined with the PREPARE
 * (docs/performance.md, change 8).
 */
export const markerAndPrepareSql = (
  statements: MarkerStatements,
  ctx: Participant.BranchContext
): string | undefined => {
  const parsed = TransactionId.parseGid(ctx.gid)
  if (Option.isNone(parsed) || parsed.value.txId !== ctx.txId || parsed.value.branch !== ctx.branch) {
    return undefined
  }
  const { gid, txId, branch } = parsed.value
  const literal = (value: string) => TransactionId.toSqlLiteral(value as TransactionId.Gid)
  return (
    `${RESET_ROLE}; ${statements.insertValues}${literal(gid)}, ${literal(txId)}, ${literal(branch)}); ` +
    `PREPARE TRANSACTION ${literal(gid)}`
  )
}

/**
 * Sent in the branch's transaction before the marker: back to the role the pool's connections log
 * in with (their user, or the `role` connection parameter), from any `SET LOCAL ROLE` the work ran
 * (a row-level-security pattern). `PREPARE TRANSACTION` records the current role as the prepared
 * transaction's owner, and only that role (or a superuser) may `COMMIT PREPARED` it: prepared as
 * the work's role, the participant's pool could neither commit nor roll it back (42501), and the
 * branch stayed prepared holding its locks. Also, the marker insert is then checked against the
 * pool role's privileges, not the work's role's.
 */
const RESET_ROLE = "RESET ROLE"

const noop = () => undefined

interface PendingQuery<T> extends Promise<T> {
  cancel(): void
}

/** The command tag and affected rows postgres.js attaches to a result. */
interface ResultTag {
  readonly command?: string
  readonly count?: number
}

/** A postgres.js answer as a `Pipeline.Result`. */
const resultOf = (rows: Array<Record<string, unknown>>): Pipeline.Result => ({ rows, count: countOf(rows) })

/** What a statement gets after the branch's connection was lost (read as connection lost). */
const lostError = () =>
  Object.assign(new Error("the branch's connection was lost; no further statement is sent on it"), {
    code: "CONNECTION_CLOSED"
  })

const WRITE_COMMANDS = new Set(["INSERT", "UPDATE", "DELETE", "MERGE", "COPY"])

/**
 * Command tags of statements that end the transaction (COMMIT and END: COMMIT; ROLLBACK and ABORT:
 * ROLLBACK). A work that sends one leaves the branch outside its transaction: what it wrote before
 * is committed or gone, what it writes after is autocommitted, and the marker and PREPARE that
 * followed prepared an implicit transaction holding the marker alone: a Prepared vote.
 */
const ENDING_COMMANDS = new Set(["COMMIT", "ROLLBACK", "PREPARE TRANSACTION"])

/**
 * The start of a statement that ends the transaction (`ROLLBACK [WORK | TRANSACTION] TO` ends
 * nothing, comments between its words or not), for `statementStartingWith`: a parameterless
 * statement goes over the simple protocol, which runs several statements separated by `;`, and
 * postgres.js then reports one command tag at most (the last one's, or none when several returned
 * rows): `insert ...; commit; begin` was tagged BEGIN.
 */
export const ENDING_STATEMENT = new RegExp(
  `(?:commit|end|abort|prepare${SQL_GAP}+transaction|rollback(?!(?:${SQL_GAP}+(?:work|transaction))?${SQL_GAP}+to\\b))\\b`,
  "iy"
)

/** The No of a branch whose work ended its transaction itself (`endedBy`), after `then` if it failed. */
const endedByWork = (endedBy: string, then?: PgFailure): PgFailure => ({
  sqlState: "25000",
  connectionLost: false,
  message:
    `the work ended the branch's transaction itself (${endedBy}): a branch's work must not BEGIN, COMMIT, ROLLBACK or PREPARE; what it wrote before that is not under the coordinator's decision` +
    (then === undefined ? "" : `; then it failed: ${then.message}`)
})

/**
 * `COMMIT` of a transaction that an error had aborted succeeds with the command tag `ROLLBACK`: the
 * work caught a failed statement (25P02 from then on) and returned normally. Nothing committed.
 */
const rolledBackInstead = (result: unknown): boolean => (result as ResultTag).command === "ROLLBACK"

const abortedByWork: PgFailure = {
  sqlState: "25P02",
  connectionLost: false,
  message: "the transaction was aborted by a statement error that the work caught; COMMIT rolled it back"
}

const interrupted: PgFailure = {
  sqlState: undefined,
  connectionLost: false,
  message: "the branch was interrupted"
}

/** The branch-slot limiter (at most `max` branches hold a connection at once). */
export class Slots {
  private free: number
  private readonly waiting: Array<() => void> = []
  constructor(max: number) {
    this.free = max
  }
  /** Resolves when a slot is taken; `false` when `control` was abandoned while waiting. */
  acquire(control: Control): Promise<boolean> | boolean {
    if (this.free > 0) {
      this.free--
      return true
    }
    return new Promise<boolean>((resolve) => {
      const take = () => resolve(true)
      this.waiting.push(take)
      control.onAbandon = () => {
        const i = this.waiting.indexOf(take)
        if (i >= 0) {
          this.waiting.splice(i, 1)
          resolve(false)
        }
      }
    })
  }
  release(): void {
    const next = this.waiting.shift()
    if (next !== undefined) next()
    else this.free++
  }
}

/**
 * How an interrupted caller reaches a running branch: `onAbandon` is what stops the branch's current
 * step (leave the slot queue, cancel the statements), replaced as the branch moves on.
 */
export class Control extends Abandonment {
  onAbandon: () => void = noop
  constructor() {
    super()
    this.listen(() => this.onAbandon())
  }
}

/** A session on a reserved connection whose statements are tracked (cancellable, writes noticed). */
class Session {
  readonly inflight = new Set<PendingQuery<unknown>>()
  closed = false
  /** A statement of this session failed with the connection lost. */
  lost = false
  wrote = false
  /** A work statement ended the branch's transaction (COMMIT, ROLLBACK, PREPARE TRANSACTION). */
  endedBy: string | undefined = undefined
  /** The branch's BEGIN, once sent: nothing is cancelled before it has answered (`cancelAll`). */
  begin: Promise<unknown> | undefined = undefined
  /** A cancel request was sent for this session: its connection is closed, never given back (`cleanUp`). */
  cancelSent = false
  /** The work called `sql.notify()`, which a branch refuses (`refuseNotify`); it votes No even if it caught that. */
  notifyRefused: Error | undefined = undefined
  readonly session: BranchSession
  constructor(
    readonly conn: postgres.ReservedSql,
    readonly prepare: boolean
  ) {
    // Built on first use: most works never touch `session.sql`, and every branch makes a session.
    let guardedSql: postgres.Sql | undefined
    const guard = () => {
      guardedSql ??= this.guarded(conn)
      return guardedSql
    }
    this.session = {
      query: (text, params) => this.work(text, params),
      statement: (text, params) => this.work<Record<string, unknown>>(text, params).then(resultOf),
      execute: (q) => {
        const { sql, params } = q.toSQL()
        return this.work(sql, params)
      },
      get sql() {
        return guard()
      }
    }
  }
  /** Why a work statement may not be sent any more (the work's time is over, or its connection was lost). */
  private refusal(): Error | undefined {
    if (this.closed) return new Error("the branch has ended; its session is closed")
    if (this.lost) return lostError()
    return undefined
  }
  /**
   * `conn` as the work sees it: each statement it runs (tagged template, `unsafe`, `file`) is refused
   * once the work's time is over or the connection was lost, and tracked like `query`'s. Without
   * this, a statement run after the work returned went to the connection once it was released
   * (another branch's transaction, perhaps), and a lost connection that the work caught went
   * unnoticed: the marker and PREPARE then ran on the reconnected session, outside any transaction,
   * and the branch voted ReadOnly or Prepared for work the server had rolled back. Fragments (a
   * query nested in another) are never run, so never seen here.
   */
  private guarded(conn: postgres.ReservedSql): postgres.Sql {
    return guardedSql(
      conn,
      (q) => {
        const refused = this.refusal()
        if (refused !== undefined) return refused
        const text = () => (q as { strings?: ReadonlyArray<string> }).strings?.join(" ") ?? ""
        this.track(q as PendingQuery<unknown>).then(
          (rows) => this.notice(text(), rows),
          () => this.noticeFailed(text())
        )
        return undefined
      },
      this.refuseNotify
    )
  }
  /**
   * `sql.notify()` in a branch. postgres.js sends it through the pool, on another connection,
   * committed at once: a branch that then rolled back had still notified. Sent on the branch's own
   * connection instead, PostgreSQL refuses to `PREPARE` a transaction that ran NOTIFY (0A000), and
   * in a branch that wrote nothing (read-only: committed at once) it would go out before the
   * coordinator decided. So it is refused, at once (thrown, never a Promise left unhandled), and the
   * branch votes No even if the work caught it: notify once the transaction has committed, or
   * write an outbox row in the branch.
   */
  private readonly refuseNotify = (channel: string): never => {
    this.notifyRefused ??= new Error(
      `sql.notify(${JSON.stringify(channel)}) is refused in a branch: PostgreSQL cannot PREPARE a transaction that ran NOTIFY, and postgres.js would send it on another connection, outside the branch, at once; notify after the transaction committed, or write an outbox row in the branch`
    )
    throw this.notifyRefused
  }
  /** Keeps `pending` cancellable until it settles. */
  private track<A>(pending: PendingQuery<A>): PendingQuery<A> {
    this.inflight.add(pending)
    const forget = () => this.inflight.delete(pending)
    pending.then(forget, (error: unknown) => {
      forget()
      // postgres.js reconnects a dead reserved connection on demand, possibly for another
      // branch's reserve(), and this session's handle would still run statements on it: none
      // more goes through here once the connection is lost.
      if (toFailure(error).connectionLost) this.lost = true
    })
    return pending
  }
  /** Sends a statement, tracked for cancellation. */
  send<T>(text: string, params?: ReadonlyArray<unknown>): Promise<Array<T>> {
    if (this.lost) return Promise.reject(lostError())
    return this.track(sendOn(this.conn, this.prepare, text, params) as unknown as PendingQuery<Array<T>>)
  }
  /** A multi-statement script (simple protocol, no parameters), tracked for cancellation. */
  sendScript(text: string): Promise<unknown> {
    return this.track(this.conn.unsafe(text).simple() as unknown as PendingQuery<unknown>)
  }
  /** A statement of the work: refused once the work's time is over; notices certain writes. */
  work<T>(text: string, params: ReadonlyArray<unknown> | undefined): Promise<Array<T>> {
    const refused = this.refusal()
    if (refused !== undefined) return Promise.reject(refused)
    return this.send<T>(text, params).then(
      (rows) => {
        this.notice(text, rows)
        return rows
      },
      (error: unknown) => {
        this.noticeFailed(text)
        throw error
      }
    )
  }
  /**
   * What a work statement tells: a certain write (its command tag), or the transaction ended by the
   * work (its command tag, or, for a text of several statements, one of them: read from the text).
   */
  private notice(text: string, rows: unknown): void {
    // Only a text with a `;` can hold several statements (a scan of the text, not on most
    // statements). The simple protocol stopped at the first failing one, so all of them ran.
    if (this.endedBy === undefined && text.includes(";")) this.noticeEnding(text)
    const tag = rows as ResultTag
    if (tag.command === undefined) {
      // Several statements, some returning rows: postgres.js answers with one result per row set.
      if (Array.isArray(rows)) for (const r of rows) if (Array.isArray(r)) this.noticeWrite(r as ResultTag)
      return
    }
    this.noticeWrite(tag)
    // `ROLLBACK TO SAVEPOINT` has the tag ROLLBACK too, and ends nothing.
    if (ENDING_COMMANDS.has(tag.command) && !(tag.command === "ROLLBACK" && /\bto\b/i.test(text)))
      this.endedBy ??= tag.command
  }
  /**
   * What a failed work statement tells: the transaction ended by one of its statements, with no
   * command tag to show it. The simple protocol ran a text's statements up to the failing one, so a
   * COMMIT before it took effect (`insert ...; commit; select 1/0` committed the insert, and the
   * work could catch the error and return); a COMMIT or PREPARE TRANSACTION that fails (a deferred
   * constraint, a gid in use) ends the transaction too. Read from the text, whatever the error:
   * a text that the server could not parse ran nothing, and then reads as ended all the same (a
   * No, never a vote for writes gone out of the transaction).
   */
  private noticeFailed(text: string): void {
    if (this.endedBy === undefined) this.noticeEnding(text)
  }
  private noticeEnding(text: string): void {
    const ended = statementStartingWith(text, ENDING_STATEMENT)
    if (ended !== undefined) this.endedBy = statementWords(ended)
  }
  private noticeWrite(tag: ResultTag): void {
    if (tag.command !== undefined && (tag.count ?? 0) > 0 && WRITE_COMMANDS.has(tag.command))
      this.wrote = true
  }
  /**
   * Cancels the statement the server is running for this session (`cancelIfRunning`: only that
   * one), once BEGIN has answered.
   *
   * - Not before BEGIN has answered (`beginOn` sends nothing behind it before then, and stops at an
   *   abandon once it has): BEGIN itself is never the statement cancelled.
   */
  cancelAll(): void {
    this.closed = true
    const begin = this.begin
    if (begin !== undefined && this.inflight.has(begin as PendingQuery<unknown>)) {
      begin.then(() => this.cancelRunning(), noop)
    } else this.cancelRunning()
  }
  private cancelRunning(): void {
    for (const q of this.inflight) if (cancelIfRunning(q)) this.cancelSent = true
  }
}

interface ConnState {
  /** A transaction is open on the connection and must be rolled back before release. */
  open: boolean
  /** The connection dropped: it is not released (postgres.js reconnects it on demand). */
  broken: boolean
  /** The session's backend pid, for terminating it when it is stuck (see `end`). */
  pid: number | undefined
  /** Set once `end` has started: the connection is being ended, never released. */
  ending: Promise<void> | undefined
  /** Abandoned during Accord's own statements: ends the connection if they stay unanswered. */
  stuck: ReturnType<typeof setTimeout> | undefined
}

const fail = (stage: StageFailure["stage"], state: ConnState, failure: PgFailure): StageFailure => {
  if (failure.connectionLost) state.broken = true
  // COMMIT or PREPARE that the server refused has ended the transaction.
  if (stage === "end" && failure.sqlState !== undefined) state.open = false
  return { stage, failure }
}

const body = async (
  sql: postgres.Sql,
  statements: MarkerStatements,
  s: Session,
  state: ConnState,
  control: Control,
  ctx: Participant.BranchContext,
  mode: Mode,
  work: PgWork,
  cancelMs: number
): Promise<Ending> => {
  // Checked before anything is sent: the gid, txId and branch reach SQL as literals.
  const script = mode === "prepare" ? markerAndPrepareSql(statements, ctx) : undefined
  if (mode === "prepare" && script === undefined) {
    throw fail("begin", state, {
      sqlState: undefined,
      connectionLost: false,
      message: `refused gid ${JSON.stringify(ctx.gid)}: not the gid Accord builds for transaction ${JSON.stringify(ctx.txId)}, branch ${JSON.stringify(ctx.branch)}`
    })
  }
  const steps = script === undefined ? undefined : Pipeline.statementsOf(work)
  if (steps !== undefined && script !== undefined) {
    return preparePipelined(sql, s, state, control, ctx, steps, script, cancelMs)
  }
  await beginOn(s, state, control, cancelMs)
  let worked: Promise<unknown>
  try {
    worked = Promise.resolve(work(s.session))
  } catch (error) {
    worked = Promise.reject(error)
  }
  const w = await unlessAbandoned(settle(worked), control, cancelMs, () => "timeout" as const)
  s.closed = true
  if (w === "timeout") throw fail("end", state, interrupted)
  // From here on the statements are Accord's own (ROLLBACK, marker, PREPARE, COMMIT), which the
  // work's bound does not cover: abandoned, they are cancelled, and if one is still unanswered
  // `cancelMs` later the connection is ended, which fails it (a lost connection: at "end", in doubt).
  control.onAbandon = () => {
    s.cancelAll()
    state.stuck = setTimeout(() => void end(sql, s, state, cancelMs), cancelMs)
  }
  if (!w.ok) {
    // Only this session's own statements tell that its connection dropped: the work may throw an
    // error carrying a network code from elsewhere (an HTTP call's ECONNRESET), and the transaction
    // is still open on a live connection that must be rolled back and released.
    if (s.lost) state.broken = true
    else if (!control.abandoned) {
      const rolledBack = await settle(s.send("ROLLBACK"))
      if (rolledBack.ok) state.open = false
    }
    // A work that ended the transaction and then failed: the failure says what escaped it.
    return {
      _tag: "WorkFailed",
      failure: s.endedBy !== undefined && !s.lost ? endedByWork(s.endedBy, w.failure) : w.failure
    }
  }
  if (s.lost) {
    // The work went on after its connection was lost (it caught the failure): the server ended
    // the transaction with the session, and nothing of Accord's (marker, PREPARE, COMMIT) was sent.
    state.broken = true
    return {
      _tag: "WorkFailed",
      failure: {
        sqlState: undefined,
        connectionLost: true,
        message: "the branch's connection was lost during its work (the work caught the failure)"
      }
    }
  }
  if (s.notifyRefused !== undefined) {
    // The work caught the refusal and went on: still a No (see `refuseNotify`).
    return {
      _tag: "WorkFailed",
      failure: { sqlState: undefined, connectionLost: false, message: s.notifyRefused.message }
    }
  }
  if (s.endedBy !== undefined) {
    // In both modes: a one-phase COMMIT after it commits nothing of the branch (a warning) and
    // would be reported Committed for work that was rolled back or autocommitted piecemeal.
    // The clean-up's ROLLBACK finds no transaction (a warning) and the connection is released.
    return { _tag: "WorkFailed", failure: endedByWork(s.endedBy) }
  }
  if (control.abandoned) throw fail("end", state, interrupted)
  if (mode === "onePhase") {
    const committed = await settle(s.send("COMMIT"))
    if (!committed.ok) throw fail("end", state, committed.failure)
    state.open = false
    if (rolledBackInstead(committed.value)) return { _tag: "WorkFailed", failure: abortedByWork }
    return { _tag: "Committed" }
  }
  if (s.wrote && script !== undefined) {
    // Certainly a writer: marker and PREPARE in one message. Refused (by the insert, which
    // leaves the transaction aborted and skips the PREPARE, or by the PREPARE, which ends it): the
    // transaction may still be open, so the clean-up sends ROLLBACK (a warning if none is open).
    // A lost connection may have prepared: "end", in doubt.
    const done = await settle(s.sendScript(script))
    if (!done.ok) throw fail(done.failure.connectionLost ? "end" : "marker", state, done.failure)
    state.open = false
    return { _tag: "Prepared" }
  }
  // RESET ROLE before the marker (see `RESET_ROLE`), written with it: one round trip. Refused, the
  // transaction is aborted and the marker fails behind it: the first failure is the one reported.
  const reset = settle(s.send(RESET_ROLE))
  const marked = await settle(s.send<{ marked: number }>(statements.marker, [ctx.gid, ctx.txId, ctx.branch]))
  const wasReset = await reset
  if (!wasReset.ok) throw fail("marker", state, wasReset.failure)
  if (!marked.ok) throw fail("marker", state, marked.failure)
  if (control.abandoned) throw fail("end", state, interrupted)
  if (marked.value.length === 0) {
    const committed = await settle(s.send("COMMIT"))
    if (!committed.ok) throw fail("end", state, committed.failure)
    state.open = false
    if (rolledBackInstead(committed.value)) return { _tag: "WorkFailed", failure: abortedByWork }
    return { _tag: "ReadOnly" }
  }
  const prepared = await settle(s.send(`PREPARE TRANSACTION ${TransactionId.toSqlLiteral(ctx.gid)}`))
  if (!prepared.ok) throw fail("end", state, prepared.failure)
  state.open = false
  return { _tag: "Prepared" }
}

/**
 * BEGIN, answered before any other statement is sent on the branch's connection. A statement sent
 * behind a BEGIN that fails runs outside any transaction and commits at once: a cancel request
 * that reaches the session while it runs BEGIN (one sent late for a statement of the connection's
 * previous user, or by anyone with the session's key or `pg_cancel_backend`) did exactly that. On
 * the benchmark box, BEGIN pipelined with a `select` under a storm of `pg_cancel_backend` calls
 * failed 321 times in 71,558, each time with the `select` run outside the transaction. Waiting
 * costs a round trip per branch (about 8% at c = 1 in the benchmark, nothing measurable at c = 8).
 */
const beginOn = async (s: Session, state: ConnState, control: Control, cancelMs: number): Promise<void> => {
  state.open = true
  const begin = s.send<unknown>("BEGIN")
  s.begin = begin
  const begun = await unlessAbandoned(settle(begin), control, cancelMs, () => "timeout" as const)
  if (begun === "timeout") {
    // BEGIN unanswered still: the session it was written to has not closed (a close fails every
    // statement written on it), so its pid is this session's.
    if (s.inflight.has(begin as PendingQuery<unknown>)) state.pid = pidOf(begin)
    throw fail("end", state, interrupted)
  }
  if (!begun.ok) throw fail("begin", state, begun.failure)
  // Read as BEGIN answers: the connection could close and reconnect as another session later, its
  // key data with it.
  state.pid = pidOf(begin)
  if (control.abandoned) throw fail("end", state, interrupted)
}

/**
 * A pipelined work's first phase (`Pipeline`): BEGIN (answered first, `beginOn`), then its
 * statements, the marker and the PREPARE sent before any of their answers is read (one write, one
 * round trip), then the answers read in order.
 *
 * - Everything answered: Prepared, unless a check refuses an answer.
 * - The marker or PREPARE refused without a lost connection (a statement failed before it, so the
 *   server found the transaction aborted, or 42710): nothing is prepared; the transaction is still
 *   open and the clean-up rolls it back. The first failed statement is the work's failure.
 * - Prepared although the branch must vote No (a check refused an answer; a statement failed on
 *   this side, never sent, and the server prepared the rest; a statement ended the transaction):
 *   `ROLLBACK PREPARED` here, then a No. If that fails, the branch is in doubt (at "end") and the
 *   coordinator rolls the gid back, or recovery does (no decision: presumed abort).
 * - The PREPARE's answer lost with the connection: in doubt.
 * - Abandoned: the running statement is cancelled and the ones behind it fail in the aborted
 *   transaction; still unanswered `cancelMs` later, the connection is ended (the same rule as for
 *   Accord's own statements after a work).
 */
const preparePipelined = async (
  sql: postgres.Sql,
  s: Session,
  state: ConnState,
  control: Control,
  ctx: Participant.BranchContext,
  steps: ReadonlyArray<Pipeline.Prepared>,
  script: string,
  cancelMs: number
): Promise<Ending> => {
  await beginOn(s, state, control, cancelMs)
  const answers = steps.map((step) =>
    settle(s.work<Record<string, unknown>>(step.text, step.params).then(resultOf))
  )
  const prepared = settle(s.sendScript(script))
  s.closed = true
  control.onAbandon = () => {
    s.cancelAll()
    state.stuck = setTimeout(() => void end(sql, s, state, cancelMs), cancelMs)
  }
  const [results, p] = await Promise.all([Promise.all(answers), prepared])
  const firstFailure = (): PgFailure | undefined => {
    for (const r of results) if (!r.ok) return r.failure
    return undefined
  }
  if (!p.ok) {
    if (p.failure.connectionLost || s.lost) throw fail("end", state, { ...p.failure, connectionLost: true })
    const failed = firstFailure()
    if (failed !== undefined) return { _tag: "WorkFailed", failure: failed }
    throw fail("marker", state, p.failure)
  }
  state.open = false
  const refused: PgFailure | undefined =
    firstFailure() ??
    (s.endedBy === undefined
      ? undefined
      : {
          sqlState: "25000",
          connectionLost: false,
          message: `a statement of the pipelined work ended the branch's transaction itself (${s.endedBy})`
        }) ??
    (() => {
      const check = Pipeline.verify(
        steps,
        results.map((r) => (r.ok ? r.value : { rows: [], count: 0 }))
      )
      return check === undefined
        ? undefined
        : { sqlState: undefined, connectionLost: false, message: check.message }
    })()
  if (refused === undefined) return { _tag: "Prepared" }
  const rolledBack = await settle(s.send(`ROLLBACK PREPARED ${TransactionId.toSqlLiteral(ctx.gid)}`))
  if (rolledBack.ok) return { _tag: "WorkFailed", failure: refused }
  // Prepared and not rolled back: in doubt (no sqlState), so that the coordinator rolls it back.
  throw fail("end", state, {
    sqlState: undefined,
    connectionLost: rolledBack.failure.connectionLost,
    message: `prepared although ${refused.message}; its ROLLBACK PREPARED failed: ${rolledBack.failure.message}`
  })
}

/**
 * Ends a connection that is stuck (see the module doc): its session is terminated by pid on the
 * server, then the reserved connection destroyed on this side. Never released. Once per branch.
 */
const end = (sql: postgres.Sql, s: Session, state: ConnState, cancelMs: number): Promise<void> => {
  state.ending ??= (async () => {
    await terminateBackend(sql, state.pid, cancelMs)
    // Never reused as it is, and not lost to the pool.
    destroyReserved(s.conn)
  })()
  return state.ending
}

/**
 * Leaves the connection clean, then releases it; one that cannot be rolled back is ended instead
 * (see `end`).
 */
const cleanUp = async (sql: postgres.Sql, s: Session, state: ConnState, cancelMs: number) => {
  if (state.stuck !== undefined) clearTimeout(state.stuck)
  if (state.ending !== undefined) return state.ending
  if (state.broken) return
  if (state.open) {
    const rolledBack = await Promise.race([settle(s.conn.unsafe("ROLLBACK")), delay(cancelMs)])
    if (rolledBack === "timeout" || !rolledBack.ok) {
      // Dropped: postgres.js has closed it and reconnects it on demand.
      if (rolledBack !== "timeout" && rolledBack.failure.connectionLost) return
      return end(sql, s, state, cancelMs)
    }
  }
  // A cancel request travels on a connection of its own and may reach the session after the
  // statement it was meant for: given back, the connection would carry the next user's statement
  // into it, which the late request would fail. Closed instead; the pool opens a new session on
  // demand.
  if (s.cancelSent) return destroyReserved(s.conn)
  s.conn.release()
}

/**
 * Runs one branch. The promise resolves with the ending or rejects with a `StageFailure`;
 * `control.abandon()` stops it (see the module doc).
 */
export const run = async (
  sql: postgres.Sql,
  statements: MarkerStatements,
  prepare: boolean,
  slots: Slots,
  control: Control,
  ctx: Participant.BranchContext,
  mode: Mode,
  work: PgWork,
  cancelMs: number
): Promise<Ending> => {
  const acquired = slots.acquire(control)
  if (acquired !== true && !(await acquired))
    throw { stage: "begin", failure: interrupted } satisfies StageFailure
  try {
    if (control.abandoned) throw { stage: "begin", failure: interrupted } satisfies StageFailure
    // The wait for a connection (every one busy: the application's queries share the pool) ends at
    // an abandon: nothing was sent, so there is nothing to cancel or roll back. A connection that
    // arrives after that goes back to the pool. (Until 2026-12-07 the abandoned branch waited for
    // it, and its caller up to three `cancelTimeout`s.)
    const reserving = sql.reserve()
    let conn: postgres.ReservedSql | undefined
    try {
      conn = await new Promise<postgres.ReservedSql | undefined>((resolve, reject) => {
        control.onAbandon = () => resolve(undefined)
        reserving.then(resolve, reject)
      })
    } catch (error) {
      throw { stage: "begin", failure: toFailure(error) } satisfies StageFailure
    }
    if (conn === undefined) {
      reserving.then((late) => late.release(), noop)
      throw { stage: "begin", failure: interrupted } satisfies StageFailure
    }
    if (control.abandoned) {
      conn.release()
      throw { stage: "begin", failure: interrupted } satisfies StageFailure
    }
    const s = new Session(conn, prepare)
    control.onAbandon = () => s.cancelAll()
    const state: ConnState = {
      open: false,
      broken: false,
      pid: undefined,
      ending: undefined,
      stuck: undefined
    }
    try {
      return await body(sql, statements, s, state, control, ctx, mode, work, cancelMs)
    } catch (error) {
      throw error !== null && typeof error === "object" && "stage" in error
        ? error
        : ({ stage: "end", failure: toFailure(error) } satisfies StageFailure)
    } finally {
      // An abandon from now on has nothing to stop (and must not end a connection once released).
      control.onAbandon = noop
      await cleanUp(sql, s, state, cancelMs)
    }
  } finally {
    slots.release()
  }
}
