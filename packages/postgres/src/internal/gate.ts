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
 * A gid may be held with its instance's `isOpen` (PGlite's `closed`, negated): once that instance
 * is closed, no COMMIT/ROLLBACK PREPARED will ever leave the gid through it (an in-memory instance
 * is gone with its prepared transaction; a data directory is held again by the participant that
 * reopens it, at start-up), and a closed instance can hang nothing. Such gids are dropped when a
 * branch finds the gate held (and, while branches wait, every `CLOSED_POLL_MILLIS`); without this,
 * closing an instance with a branch prepared left the shared gate held for ever and every other
 * PGlite participant of the process busy.
 */
import { type Duration, Effect } from "effect"

interface Waiter {
  readonly txId: string
  readonly gid: string
  readonly isOpen: IsOpen | undefined
  readonly admit: () => void
}

// The owner of a gate held for transactions found prepared when a participant started.
const PREPARED_BEFORE_START = "(prepared before start)"

/** How often waiting branches look for gids of closed instances (PGlite tells no close event). */
const CLOSED_POLL_MILLIS = 50

/** Whether the instance a gid was prepared on is still open. */
export type IsOpen = () => boolean

/** Owned by one transaction at a time; entered per branch gid, left per branch gid. */
export class Gate {
  private owner: string | undefined = undefined
  private readonly gids = new Set<string>()
  /** The `isOpen` of the held gids that have one. */
  private readonly openness = new Map<string, IsOpen>()
  private waiters: Array<Waiter> = []
  private reason: string | undefined = undefined
  private poll: ReturnType<typeof setInterval> | undefined = undefined

  private hold(gid: string, isOpen: IsOpen | undefined): void {
    this.gids.add(gid)
    if (isOpen !== undefined) this.openness.set(gid, isOpen)
  }

  private tryEnter(txId: string, gid: string, isOpen: IsOpen | undefined): boolean {
    if (this.owner !== undefined && this.owner !== txId) return false
    this.owner = txId
    this.hold(gid, isOpen)
    return true
  }

  /** Drops the held gids whose instance was closed; the gate opens if none is left. */
  private dropClosed(): void {
    let dropped = false
    for (const [gid, isOpen] of this.openness) {
      if (isOpen()) continue
      this.openness.delete(gid)
      this.gids.delete(gid)
      dropped = true
    }
    if (dropped && this.gids.size === 0) this.open()
  }

  /** Waits (up to `timeout`) until the gate is free or owned by `txId`, then holds it for `gid`. */
  enter(txId: string, gid: string, timeout: Duration.Duration, isOpen?: IsOpen): Effect.Effect<boolean> {
    return Effect.async<boolean>((resume) => {
      if (this.owner !== undefined && this.owner !== txId) this.dropClosed()
      if (this.tryEnter(txId, gid, isOpen)) {
        resume(Effect.succeed(true))
        return
      }
      const waiter: Waiter = { txId, gid, isOpen, admit: () => resume(Effect.succeed(true)) }
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
      Effect.catchTag("TimeoutException", () => Effect.succeed(false)),
      // Interrupted after `leave` admitted it but before the caller saw the admission (in the
      // same tick, or inside the timeout's race): the gate would be held for `gid` by nobody.
      // Leaving a gid the gate does not hold changes nothing.
      Effect.onInterrupt(() => Effect.sync(() => this.leave(gid)))
    )
  }

  /** Releases `gid`; the gate opens when its owner holds no gid any more. Idempotent. */
  leave(gid: string): void {
    this.openness.delete(gid)
    if (!this.gids.delete(gid) || this.gids.size > 0) return
    this.open()
  }

  /** No gid is held any more: the gate opens to its waiters. */
  private open(): void {
    this.owner = undefined
    this.reason = undefined
    // FIFO: the first waiter takes the gate, and every waiter of the same transaction follows it.
    const pending = this.waiters
    this.waiters = []
    for (const w of pending) {
      if (this.tryEnter(w.txId, w.gid, w.isOpen)) w.admit()
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
   * (what they are and what frees them) goes into the busy message while they hold it.
   */
  holdFor(gids: ReadonlyArray<string>, reason?: string, isOpen?: IsOpen): void {
    if (gids.length === 0) return
    if (this.owner === undefined) {
      this.owner = PREPARED_BEFORE_START
      this.reason = reason
    }
    for (const gid of gids) this.hold(gid, isOpen)
  }

  /** The transaction holding the gate, if any (for diagnostics). */
  get holder(): string | undefined {
    return this.owner
  }

  /** Who holds the gate and what frees it, for the busy message. */
  get holderDescription(): string {
    if (this.owner === undefined) return "nobody any more"
    if (this.owner !== PREPARED_BEFORE_START)
      return `transaction ${this.owner} (prepared, awaiting its decision; run recovery if its coordinator is gone)`
    return (
      this.reason ??
      "branches found prepared at start-up (run recovery, e.g. PgRecovery.run, to resolve them)"
    )
  }
}

/** The gate shared by every PGlite participant of this process unless one is given. */
export const shared = new Gate()
