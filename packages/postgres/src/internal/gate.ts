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
 */
import { type Duration, Effect } from "effect"

interface Waiter {
  readonly txId: string
  readonly gid: string
  readonly admit: () => void
}

// The owner of a gate held for transactions found prepared when a participant started.
const PREPARED_BEFORE_START = "(prepared before start)"

/** Owned by one transaction at a time; entered per branch gid, left per branch gid. */
export class Gate {
  private owner: string | undefined = undefined
  private readonly gids = new Set<string>()
  private waiters: Array<Waiter> = []
  private reason: string | undefined = undefined

  private tryEnter(txId: string, gid: string): boolean {
    if (this.owner !== undefined && this.owner !== txId) return false
    this.owner = txId
    this.gids.add(gid)
    return true
  }

  /** Waits (up to `timeout`) until the gate is free or owned by `txId`, then holds it for `gid`. */
  enter(txId: string, gid: string, timeout: Duration.Duration): Effect.Effect<boolean> {
    return Effect.async<boolean>((resume) => {
      if (this.tryEnter(txId, gid)) {
        resume(Effect.succeed(true))
        return
      }
      const waiter: Waiter = { txId, gid, admit: () => resume(Effect.succeed(true)) }
      this.waiters.push(waiter)
      return Effect.sync(() => {
        this.waiters = this.waiters.filter((w) => w !== waiter)
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
    if (!this.gids.delete(gid) || this.gids.size > 0) return
    this.owner = undefined
    this.reason = undefined
    // FIFO: the first waiter takes the gate, and every waiter of the same transaction follows it.
    const pending = this.waiters
    this.waiters = []
    for (const w of pending) {
      if (this.tryEnter(w.txId, w.gid)) w.admit()
      else this.waiters.push(w)
    }
  }

  /**
   * Holds the gate for transactions found prepared at start-up until they are resolved; `reason`
   * (what they are and what frees them) goes into the busy message while they hold it.
   */
  holdFor(gids: ReadonlyArray<string>, reason?: string): void {
    if (gids.length === 0) return
    if (this.owner === undefined) {
      this.owner = PREPARED_BEFORE_START
      this.reason = reason
    }
    for (const gid of gids) this.gids.add(gid)
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
