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
 * transaction's and its own gid is not held yet:
 * - a branch whose gid is already held (a retry under the same txId while the first run's branch is
 *   still prepared, e.g. its decision write failed) waits like another transaction's: admitted, its
 *   marker insert waited inside PGlite on the prepared marker's lock, synchronously, and the whole
 *   process froze;
 * - gids held for transactions found prepared at start-up have an owner no branch has, so they
 *   close the gate even to the transaction that owned it when they were added (until 2026-12-07
 *   they joined that owner's set, and its later branches entered beside their row locks).
 *
 * A gid may be held with its instance's `isOpen` (PGlite's `closed`, negated): once that instance
 * is closed, no COMMIT/ROLLBACK PREPARED will ever leave the gid through it (an in-memory instance
 * is gone with its prepared transaction; a data directory is held again by the participant that
 * reopens it, at start-up), and a closed instance can hang nothing. Such gids are dropped when a
 * branch finds the gate held (and, while branches wait, every `CLOSED_POLL_MILLIS`); without this,
 * closing an instance with a branch prepared left the shared gate held for ever and every other
 * PGlite participant of the process busy.
 */
import { type Duration, Effect, Equal, type FiberId } from "effect"

interface Waiter {
  readonly txId: string
  readonly gid: string
  readonly isOpen: IsOpen | undefined
  readonly by: FiberId.FiberId
  readonly admit: () => void
}

/** Why a gid is held: by whom (a txId, or a start-up hold), and its instance's openness. */
interface Hold {
  readonly owner: string
  readonly isOpen: IsOpen | undefined
  /** What frees a start-up hold, for the busy message. */
  readonly reason: string | undefined
  /** The fiber whose `enter` holds it (see `leaveHeldBy`). */
  readonly by?: FiberId.FiberId
}

// The owner of gids held for transactions found prepared when a participant started: no branch's.
const PREPARED_BEFORE_START = "(prepared before start)"

/** How often waiting branches look for gids of closed instances (PGlite tells no close event). */
const CLOSED_POLL_MILLIS = 50

/** Whether the instance a gid was prepared on is still open. */
export type IsOpen = () => boolean

/** Owned by one transaction at a time; entered per branch gid, left per branch gid. */
export class Gate {
  private readonly held = new Map<string, Hold>()
  /** How many held gids each owner has (a branch enters when all of them are its transaction's). */
  private readonly counts = new Map<string, number>()
  private waiters: Array<Waiter> = []
  private poll: ReturnType<typeof setInterval> | undefined = undefined

  private hold(gid: string, hold: Hold): void {
    if (this.held.has(gid)) return
    this.held.set(gid, hold)
    this.counts.set(hold.owner, (this.counts.get(hold.owner) ?? 0) + 1)
  }

  /** Lets go of `gid`; whether it was held. */
  private release(gid: string): boolean {
    const hold = this.held.get(gid)
    if (hold === undefined) return false
    this.held.delete(gid)
    const left = (this.counts.get(hold.owner) ?? 1) - 1
    if (left === 0) this.counts.delete(hold.owner)
    else this.counts.set(hold.owner, left)
    return true
  }

  /** Free, or held only by `txId`'s other branches. */
  private admits(txId: string, gid: string): boolean {
    return !this.held.has(gid) && (this.counts.get(txId) ?? 0) === this.held.size
  }

  private tryEnter(txId: string, gid: string, isOpen: IsOpen | undefined, by?: FiberId.FiberId): boolean {
    if (!this.admits(txId, gid)) return false
    this.hold(gid, { owner: txId, isOpen, reason: undefined, by })
    return true
  }

  /** Drops the held gids whose instance was closed, and admits whom that lets in. */
  private dropClosed(): void {
    let dropped = false
    for (const [gid, hold] of this.held) {
      if (hold.isOpen === undefined || hold.isOpen()) continue
      this.release(gid)
      dropped = true
    }
    if (dropped) this.admitWaiting()
  }

  /**
   * Waits (up to `timeout`) until the gate is free or held only by `txId`'s other branches, and
   * `gid` is not held; then holds it for `gid`.
   */
  enter(txId: string, gid: string, timeout: Duration.Duration, isOpen?: IsOpen): Effect.Effect<boolean> {
    // The entering fiber, read outside the timeout (which runs the wait in a fiber of its own).
    return Effect.flatMap(Effect.fiberId, (by) => {
      // Whether the gate now holds `gid` for this call: only then may it be left on its behalf (a
      // caller waiting behind its own gid, held by an earlier run, must not free that run's hold).
      let admitted = false
      return Effect.async<boolean>((resume) => {
        if (!this.admits(txId, gid)) this.dropClosed()
        if (this.tryEnter(txId, gid, isOpen, by)) {
          admitted = true
          resume(Effect.succeed(true))
          return
        }
        const waiter: Waiter = {
          txId,
          gid,
          isOpen,
          by,
          admit: () => {
            admitted = true
            resume(Effect.succeed(true))
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
            if (admitted) this.leave(gid)
            return false
          })
        ),
        // Interrupted after `leave` admitted it but before the caller saw the admission (in the
        // same tick, or inside the timeout's race): the gate would be held for `gid` by nobody.
        Effect.onInterrupt(() =>
          Effect.sync(() => {
            if (admitted) this.leave(gid)
          })
        )
      )
    })
  }

  /** Releases `gid` and admits the waiters that lets in. Idempotent. */
  leave(gid: string): void {
    if (this.release(gid)) this.admitWaiting()
  }

  /**
   * Releases `gid` if the fiber `by` holds it through `enter`: for a caller interrupted around its
   * admission, which cannot tell whether it was admitted, and must not release a hold of an
   * earlier run of the same gid that it was still waiting behind.
   */
  leaveHeldBy(gid: string, by: FiberId.FiberId): void {
    const hold = this.held.get(gid)
    if (hold?.by !== undefined && Equal.equals(hold.by, by)) this.leave(gid)
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
      if (this.tryEnter(w.txId, w.gid, w.isOpen, w.by)) w.admit()
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
   * Holds the gate for transactions found prepared at start-up until they are resolved; `reason`
   * (what they are and what frees them) goes into the busy message while they hold it. They are
   * nobody's branches (`owner` unset): no branch enters beside them, not even one of the
   * transaction that holds the gate now. `owner` = a txId holds them for that transaction instead
   * (a branch prepared after its caller gave up). A gid already held stays as it is.
   */
  holdFor(gids: ReadonlyArray<string>, reason?: string, isOpen?: IsOpen, owner?: string): void {
    for (const gid of gids) this.hold(gid, { owner: owner ?? PREPARED_BEFORE_START, isOpen, reason })
  }

  /** The transaction holding the gate (its first held gid's owner), if any (for diagnostics). */
  get holder(): string | undefined {
    for (const hold of this.held.values()) return hold.owner
    return undefined
  }

  /** Who holds the gate and what frees it, for the busy message. */
  get holderDescription(): string {
    if (this.held.size === 0) return "nobody any more"
    const parts = new Set<string>()
    for (const hold of this.held.values()) {
      parts.add(
        hold.owner !== PREPARED_BEFORE_START
          ? `transaction ${hold.owner} (prepared, awaiting its decision; run recovery if its coordinator is gone)`
          : (hold.reason ??
              "branches found prepared at start-up (run recovery, e.g. PgRecovery.run, to resolve them)")
      )
    }
    return [...parts].join("; and ")
  }
}

/** The gate shared by every PGlite participant of this process unless one is given. */
export const shared = new Gate()
