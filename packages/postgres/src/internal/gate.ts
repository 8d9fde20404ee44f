/**
 * The exclusivity rule for PGlite participants.
 *
 * PGlite is one session whose lock waits never time out: a statement that waits for a row held by
 * a prepared transaction hangs the whole instance for ever. So a PGlite branch holds the gate from
 * BEGIN until its COMMIT/ROLLBACK PREPARED (or until it ends without preparing).
 *
 * The gate is owned by one *global transaction* at a time, not by one branch: the branches of the
 * owning transaction may all enter. With one plain mutex per instance, two transactions preparing
 * concurrently on two PGlite instances (T1 holds A and waits for B, T2 holds B and waits for A)
 * deadlock until a timeout; one gate shared by the process's PGlite participants cannot.
 *
 * Each held gid records its owner, and a branch enters only when every held gid is its own
 * transaction's and its own gid is not held yet on its instance:
 * - a branch whose gid is already held (a retry under the same txId while the first run's branch is
 *   still prepared, e.g. its decision write failed) waits like another transaction's: admitted, its
 *   marker insert waited inside PGlite on the prepared marker's lock, synchronously, and the whole
 *   process froze;
 * - gids held for transactions found prepared at start-up have an owner no branch has, so they
 *   close the gate even to the transaction that owned it when they were added (until 2026-12-07
 *   they joined that owner's set, and its later branches entered beside their row locks);
 * - of those, the ones no participant of the gate resolves (`holdForeign`: another participant
 *   name after a rename or on an older data directory, another namespace, prepared by hand) are
 *   kept too, since a branch beside them could wait on their locks for ever, but a branch they keep
 *   out is refused at once rather than after its wait: only a person can lift them. They keep out
 *   only the branches of their own instance: they wait for nothing, so they are in no cycle of
 *   waits across instances, and a branch on another instance cannot wait on their locks. Until
 *   2026-12-07 one closed the gate to every PGlite participant of the process.
 *
 * A gid is left per hold, not per gid (`leaveHold`, `resolving`): the same gid is held again by a
 * retry under the same txId once the earlier run's hold is gone, and a late leave of the earlier
 * run (its ROLLBACK PREPARED answered after the retry entered) freed the retry's hold.
 *
 * Holds are keyed by instance and gid (`Instance`: the PGlite instance itself, when the caller
 * gives it): two instances may each have a transaction prepared under one gid (copies of one data
 * directory), and the recovery of one must not leave the other's hold, nor a foreign hold of one
 * keep the other's own prepared gid unheld. Once a held gid's instance is closed, no
 * COMMIT/ROLLBACK PREPARED will ever leave the gid through it (an in-memory instance is gone with
 * its prepared transaction; a data directory is held again by the participant that reopens it, at
 * start-up), and a closed instance can hang nothing. Such gids are dropped when a
 * branch finds the gate held (and, while branches wait, every `CLOSED_POLL_MILLIS`); without this,
 * closing an instance with a branch prepared left the shared gate held for ever and every other
 * PGlite participant of the process busy.
 */
import { type Duration, Effect, Equal, type FiberId } from "effect"

/**
 * The instance a gid is held on (a PGlite instance: its `closed` turns true when it is closed). It
 * scopes foreign holds and keys holds; `undefined` is one instance of its own, which every foreign
 * hold keeps out.
 */
export interface Instance {
  readonly closed: boolean
}

/**
 * One hold of a gid: what its holder leaves (`leaveHold`), never a later hold of the same gid (a
 * retry under the same txId holds the same gid once the first run's hold is gone).
 */
export interface Ticket {
  readonly gid: string
}

interface Waiter {
  readonly txId: string
  readonly gid: string
  readonly instance: Instance | undefined
  readonly by: FiberId.FiberId
  readonly admit: (hold: Hold) => void
}

/** Why a gid is held: by whom (a txId, or a start-up hold), and on which instance. */
interface Hold extends Ticket {
  /** Its key in the gate (`keyOf`). */
  readonly key: string
  readonly owner: string
  readonly instance: Instance | undefined
  /** What frees a start-up hold, for the busy message. */
  reason: string | undefined
  /** The fiber whose `enter` holds it (see `leaveHeldBy`). */
  readonly by?: FiberId.FiberId
  /** Its transaction is prepared (found so at start-up, or its branch prepared it). */
  prepared: boolean
  /**
   * Found prepared at start-up, and not the transaction of any participant of this gate: nothing
   * here resolves it, a person must. Branches of its instance are refused at once; others pass it
   * (see `holdForeign`).
   */
  foreign: boolean
}

// The owner of gids held for transactions found prepared when a participant started: no branch's.
const PREPARED_BEFORE_START = "(prepared before start)"

/** How often waiting branches look for gids of closed instances (PGlite tells no close event). */
const CLOSED_POLL_MILLIS = 50

/** The key of `instance`'s holds (its number, 0 for `undefined`): gids are unique per instance only. */
const instanceIds = new WeakMap<Instance, number>()
let lastInstanceId = 0
const keyOf = (instance: Instance | undefined, gid: string): string => {
  if (instance === undefined) return `0 ${gid}`
  let id = instanceIds.get(instance)
  if (id === undefined) {
    id = ++lastInstanceId
    instanceIds.set(instance, id)
  }
  return `${id} ${gid}`
}

/**
 * Whether the foreign hold `hold` keeps out the branches of `instance`: those of its own instance;
 * and where either instance is unknown, every branch.
 */
const keepsOut = (hold: Hold, instance: Instance | undefined): boolean =>
  hold.foreign && (instance === undefined || hold.instance === undefined || hold.instance === instance)

/** Owned by one transaction at a time; entered per branch gid, left per hold. */
export class Gate {
  /** By `keyOf(instance, gid)`. */
  private readonly held = new Map<string, Hold>()
  /** How many held gids each owner has (a branch enters when all of them are its transaction's). */
  private readonly counts = new Map<string, number>()
  private waiters: Array<Waiter> = []
  private poll: ReturnType<typeof setInterval> | undefined = undefined

  /** Holds `gid` on its instance, unless it is held there already; the new hold. */
  private hold(gid: string, hold: Omit<Hold, "gid" | "key">): Hold | undefined {
    const key = keyOf(hold.instance, gid)
    if (this.held.has(key)) return undefined
    const made: Hold = { gid, key, ...hold }
    this.held.set(key, made)
    this.counts.set(hold.owner, (this.counts.get(hold.owner) ?? 0) + 1)
    return made
  }

  /** Lets go of the hold under `key` if it is `hold` (any, when undefined); whether it did. */
  private release(key: string, hold?: Hold): boolean {
    const current = this.held.get(key)
    if (current === undefined || (hold !== undefined && current !== hold)) return false
    this.held.delete(key)
    const left = (this.counts.get(current.owner) ?? 1) - 1
    if (left === 0) this.counts.delete(current.owner)
    else this.counts.set(current.owner, left)
    return true
  }

  /**
   * Free, or held only by `txId`'s other branches and by foreign holds of other instances, and
   * `gid` not held on `instance`.
   */
  private admits(txId: string, gid: string, instance: Instance | undefined): boolean {
    if (this.held.has(keyOf(instance, gid))) return false
    let others = this.held.size - (this.counts.get(txId) ?? 0)
    if (others === 0) return true
    for (const hold of this.held.values()) if (hold.foreign && !keepsOut(hold, instance)) others--
    return others === 0
  }

  private tryEnter(
    txId: string,
    gid: string,
    instance: Instance | undefined,
    by?: FiberId.FiberId
  ): Hold | undefined {
    if (!this.admits(txId, gid, instance)) return undefined
    return this.hold(gid, { owner: txId, instance, reason: undefined, by, prepared: false, foreign: false })
  }

  /** Drops the held gids whose instance was closed, and admits whom that lets in. */
  private dropClosed(): void {
    let dropped = false
    for (const [key, hold] of this.held) {
      if (hold.instance === undefined || !hold.instance.closed) continue
      this.release(key)
      dropped = true
    }
    if (dropped) this.admitWaiting()
  }

  /**
   * Whether a foreign hold (`holdForeign`) closes the gate to the branches of `instance`: one on
   * that instance (or on an unknown one; for an unknown `instance`, any).
   */
  closedByForeign(instance?: Instance): boolean {
    for (const hold of this.held.values()) if (keepsOut(hold, instance)) return true
    return false
  }

  /** `enterHold`, telling only whether it entered. */
  enter(txId: string, gid: string, timeout: Duration.Duration, instance?: Instance): Effect.Effect<boolean> {
    return Effect.map(this.enterHold(txId, gid, timeout, instance), (ticket) => ticket !== undefined)
  }

  /**
   * Waits (up to `timeout`) until the gate is free or held only by `txId`'s other branches (and by
   * foreign holds of other instances), and `gid` is not held on `instance`; then holds `gid` there.
   * The hold it took, for `leaveHold` and `markPrepared`; undefined after `timeout`, or at once when
   * a foreign hold (`holdForeign`) closes the gate to `instance`: nothing in this process will open
   * it, so waiting would only make every branch late for the same refusal.
   */
  enterHold(
    txId: string,
    gid: string,
    timeout: Duration.Duration,
    instance?: Instance
  ): Effect.Effect<Ticket | undefined> {
    // The entering fiber, read outside the timeout (which runs the wait in a fiber of its own).
    return Effect.flatMap(Effect.fiberId, (by) => {
      // The hold the gate gave this call: only it may be left on its behalf (a caller waiting
      // behind its own gid, held by an earlier run, must not free that run's hold).
      let admitted: Hold | undefined
      return Effect.async<Ticket | undefined>((resume) => {
        // Held by others (even foreign holds of other instances, which let it in: one of a closed
        // instance is gone with it), or its own gid held: the holds of closed instances go first.
        if (this.held.size !== (this.counts.get(txId) ?? 0) || !this.admits(txId, gid, instance)) {
          this.dropClosed()
        }
        admitted = this.tryEnter(txId, gid, instance, by)
        if (admitted !== undefined || this.closedByForeign(instance)) {
          resume(Effect.succeed(admitted))
          return
        }
        const waiter: Waiter = {
          txId,
          gid,
          instance,
          by,
          admit: (hold) => {
            admitted = hold
            resume(Effect.succeed(hold))
          }
        }
        this.waiters.push(waiter)
        if (this.poll === undefined) {
          this.poll = setInterval(() => this.dropClosed(), CLOSED_POLL_MILLIS)
          // The waits' own timeouts keep the process alive, not this.
          this.poll.unref()
        }
        return Effect.sync(() => {
          this.waiters = this.waiters.filter((w) => w !== waiter)
          this.stopPolling()
        })
      }).pipe(
        Effect.timeout(timeout),
        Effect.catchTag("TimeoutException", () =>
          Effect.sync(() => {
            // Admitted in the same tick as the timeout: nobody would leave it.
            if (admitted !== undefined) this.leaveHold(admitted)
            return undefined
          })
        ),
        // Interrupted after a `leaveHold` admitted it but before the caller saw the admission (in the
        // same tick, or inside the timeout's race): the gate would be held for `gid` by nobody.
        Effect.onInterrupt(() =>
          Effect.sync(() => {
            if (admitted !== undefined) this.leaveHold(admitted)
          })
        )
      )
    })
  }

  /** Releases the hold `ticket` if it is still held, and admits the waiters that lets in. */
  leaveHold(ticket: Ticket): void {
    if (this.release((ticket as Hold).key, ticket as Hold)) this.admitWaiting()
  }

  /**
   * Records that the hold's transaction is prepared (its branch's PREPARE succeeded): from now on a
   * COMMIT/ROLLBACK PREPARED of its gid is what leaves it (`resolving`).
   */
  markPrepared(ticket: Ticket): void {
    if (this.held.get((ticket as Hold).key) === ticket) (ticket as Hold).prepared = true
  }

  /**
   * Called as a statement that ends a prepared `gid` on `instance` (COMMIT/ROLLBACK PREPARED) is
   * sent, or a scan of its prepared transactions is; the function it returns is called with what
   * the answer found: `true`, the statement ended the prepared gid; `false`, the gid was not
   * prepared (gone).
   *
   * Only the hold that answer is about is left. The gate was left by gid until 2026-12-07: run 1 of
   * a txId aborted while its branch's work ran, its ROLLBACK PREPARED waited behind that
   * transaction in PGlite and found the gid gone; meanwhile the caller's retry had entered the gate
   * for the same gid, and the late leave freed the retry's hold, open or prepared, and the next
   * branch to touch its rows would wait on a PGlite lock for ever.
   * - Ended: the hold held when it was sent (its branch's transaction ran before the statement, which
   *   waited behind it, and prepared), or the prepared hold held now.
   * - Gone: the hold held when it was sent, if it was prepared then. A hold not prepared then (a
   *   branch entered or running) is its branch's to leave: if it prepares, that gid is still prepared.
   */
  resolving(gid: string, instance?: Instance): (ended: boolean) => void {
    const key = keyOf(instance, gid)
    const sent = this.held.get(key)
    const sentPrepared = sent?.prepared === true
    return (ended) => {
      const now = this.held.get(key)
      if (now === undefined) return
      const left = ended ? now === sent || now.prepared : now === sent && sentPrepared
      if (left && this.release(key, now)) this.admitWaiting()
    }
  }

  /**
   * Releases `gid` on `instance` if the fiber `by` holds it through `enterHold`: for a caller
   * interrupted around its admission, which cannot tell whether it was admitted (the hold
   * `enterHold` returned may never have reached it), and must not release a hold of an earlier run
   * of the same gid that it was still waiting behind.
   */
  leaveHeldBy(gid: string, by: FiberId.FiberId, instance?: Instance): void {
    const hold = this.held.get(keyOf(instance, gid))
    if (hold?.by !== undefined && Equal.equals(hold.by, by)) this.leaveHold(hold)
  }

  /**
   * FIFO: once the gate is free the first waiter takes it and every waiter of the same transaction
   * follows it; while it is held, a waiter of the owning transaction whose own gid was just left
   * (a retry behind its earlier run) enters.
   */
  private admitWaiting(): void {
    if (this.waiters.length === 0) return
    const pending = this.waiters
    this.waiters = []
    for (const w of pending) {
      const hold = this.tryEnter(w.txId, w.gid, w.instance, w.by)
      if (hold !== undefined) w.admit(hold)
      else this.waiters.push(w)
    }
    this.stopPolling()
  }

  private stopPolling(): void {
    if (this.waiters.length > 0 || this.poll === undefined) return
    clearInterval(this.poll)
    this.poll = undefined
  }

  /**
   * Holds the gate for transactions found prepared on `instance` at start-up until they are
   * resolved; `reason` (what they are and what frees them) goes into the busy message while they
   * hold it. They are nobody's branches (`owner` unset): no branch enters beside them, not even one
   * of the transaction that holds the gate now. `owner` = a txId holds them for that transaction
   * instead. A gid already held on `instance` stays as it is, except a foreign one (`holdForeign`):
   * a participant that will resolve it (one of the name it was prepared under, made for recovery
   * on that instance) takes it over, and branches wait for that recovery again instead of being
   * refused at once.
   */
  holdFor(gids: ReadonlyArray<string>, reason?: string, instance?: Instance, owner?: string): void {
    for (const gid of gids) {
      const current = this.held.get(keyOf(instance, gid))
      if (current?.foreign === true) {
        current.foreign = false
        current.reason = reason
        continue
      }
      this.hold(gid, {
        owner: owner ?? PREPARED_BEFORE_START,
        instance,
        reason,
        prepared: true,
        foreign: false
      })
    }
  }

  /**
   * Holds the gate for a transaction found prepared on `instance` at start-up that no participant
   * of this gate resolves (another participant name or namespace, or not Accord's); `reason` names
   * it and what resolves it. It keeps out the branches of `instance` (one beside it could wait for
   * ever on its row locks, and PGlite would freeze the process), and refuses them at once with
   * `reason`: until 2026-12-07 each waited `lockTimeout` for a refusal that only a person could
   * lift. Branches of other instances pass it: they cannot wait on its locks, and it waits for
   * nothing (until 2026-12-07 it refused them too). Given no `instance`, it keeps out every
   * branch. A gid already held on `instance` stays as it is.
   */
  holdForeign(gid: string, reason: string, instance?: Instance): void {
    this.hold(gid, { owner: PREPARED_BEFORE_START, instance, reason, prepared: true, foreign: true })
  }

  /** Whether `gid` is held on `instance` as foreign now (`holdForeign`; not taken over since). */
  heldForeign(gid: string, instance?: Instance): boolean {
    return this.held.get(keyOf(instance, gid))?.foreign === true
  }

  /** The transaction holding the gate (its first held gid's owner), if any (for diagnostics). */
  get holder(): string | undefined {
    for (const hold of this.held.values()) return hold.owner
    return undefined
  }

  /** Who holds the gate and what frees it, for the busy message. */
  get holderDescription(): string {
    return this.holderDescriptionFor(undefined)
  }

  /**
   * Who keeps the branches of `instance` out and what frees it, for their busy message: as
   * `holderDescription`, without the foreign holds of other instances.
   */
  holderDescriptionFor(instance: Instance | undefined): string {
    const parts = new Set<string>()
    for (const hold of this.held.values()) {
      if (hold.foreign && !keepsOut(hold, instance)) continue
      parts.add(
        hold.owner !== PREPARED_BEFORE_START
          ? `transaction ${hold.owner} (prepared, awaiting its decision; run recovery if its coordinator is gone)`
          : (hold.reason ??
              "branches found prepared at start-up (run recovery, e.g. PgRecovery.run, to resolve them)")
      )
    }
    return parts.size === 0 ? "nobody any more" : [...parts].join("; and ")
  }
}

/** The gate shared by every PGlite participant of this process unless one is given. */
export const shared = new Gate()
