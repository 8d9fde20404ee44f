import { Participant, TransactionLog, TwoPhaseCommit } from "@accord/core"
import { Effect, Layer, ManagedRuntime, Supervisor } from "effect"
import { describe, expect, it } from "vitest"
import * as CoreOverhead from "../src/CoreOverhead.js"

/** Counts the fibers started under it (the root fiber of each `runPromise` included). */
class ForkCounter extends Supervisor.AbstractSupervisor<void> {
  started = 0
  get value() {
    return Effect.void
  }
  override onStart() {
    this.started++
  }
}

describe("the coordinator-only measurement", () => {
  it("takes the path PostgreSQL runs take: the decision through the log's direct decide, no fiber but the root", async () => {
    const counter = new ForkCounter()
    const runtime = ManagedRuntime.make(
      Layer.merge(
        Layer.succeed(TransactionLog.TransactionLog, CoreOverhead.nullLog),
        Supervisor.addSupervisor(counter)
      )
    )
    const participant = (name: string) =>
      CoreOverhead.promiseParticipant(name, (value) => Promise.resolve(value))
    const [a, b] = [participant("a"), participant("b")]
    await runtime.runPromise(Effect.void)
    counter.started = 0
    const outcomes = []
    for (let i = 0; i < 10; i++) {
      outcomes.push(
        await runtime.runPromise(
          TwoPhaseCommit.run([Participant.branch(a, null), Participant.branch(b, null)])
        )
      )
    }
    await runtime.dispose()
    expect(outcomes.map((o) => o._tag)).toEqual(Array(10).fill("Committed"))
    // One root fiber per transaction; a log without `direct` added a fork for the decision.
    expect(counter.started).toBe(10)
  })

  it("measures every shape", async () => {
    const rows = await CoreOverhead.measure(50)
    expect(rows.map((r) => r.shape)).toEqual([
      "Effect.runPromise(Effect.void)",
      "TwoPhaseCommit.run, 1 branch (one-phase)",
      "TwoPhaseCommit.run, 2 branches"
    ])
    for (const r of rows) {
      expect(r.transactions).toBe(50)
      expect(Number.isFinite(r.cpuMicrosPerTx) && Number.isFinite(r.wallMicrosPerTx)).toBe(true)
    }
  })
})
