/**
 * The simulated participant keeps a commit marker for `markerGrace` after `forget`, as
 * `PgParticipant` does. Without it, a prepare delivered again after recovery completed the
 * transaction (seed 6073 of the 2PC simulation once recovery wrote completions page by page)
 * prepared the committed branch anew, and a duplicated commit applied it twice.
 */
import { TransactionId } from "@accord/core"
import { Duration, Effect } from "effect"
import { describe, expect, it } from "vitest"
import * as SimParticipant from "../src/SimParticipant.js"

const branch = "p0" as TransactionId.BranchName

describe("SimParticipant markers", () => {
  const setup = (grace?: Duration.DurationInput) => {
    let clock = 0
    const sim = SimParticipant.make("p0", () => clock, grace)
    const txId = Effect.runSync(TransactionId.make)
    const ctx = { txId, branch, gid: TransactionId.gid(txId, branch) }
    const work = { vote: "yes", millis: 0 } as const
    const advance = (ms: number) => {
      clock += ms
    }
    return { sim, ctx, work, advance }
  }

  it("a prepare delivered again after forget, within the grace, is refused", async () => {
    const { sim, ctx, work, advance } = setup()
    const p = sim.participant
    expect((await Effect.runPromise(p.prepare(ctx, work)))._tag).toBe("Prepared")
    expect(await Effect.runPromise(p.commit(ctx))).toBe("Committed")
    advance(100)
    await Effect.runPromise(p.forget([ctx]))
    advance(2_000)
    expect((await Effect.runPromise(p.prepare(ctx, work)))._tag).toBe("No")
    expect(await Effect.runPromise(p.commit(ctx))).toBe("Committed")
    expect(sim.applied).toHaveLength(1)
  })

  it("forget removes a marker older than the grace", async () => {
    const { sim, ctx, work, advance } = setup(Duration.seconds(1))
    const p = sim.participant
    await Effect.runPromise(p.prepare(ctx, work))
    await Effect.runPromise(p.commit(ctx))
    advance(1_000)
    await Effect.runPromise(p.forget([ctx]))
    expect(await Effect.runPromise(p.state(ctx))).toBe("aborted")
  })
})
