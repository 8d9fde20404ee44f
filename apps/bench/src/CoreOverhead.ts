/**
 * What the coordinator itself costs, without any database: `TwoPhaseCommit.run` over participants
 * whose Promises resolve at once (with direct calls, as PgParticipant's) and a log that records nothing
 * (with a direct decide, as PgTransactionLog's), one transaction after another. The CPU time
 * per transaction is the floor Accord adds to every real transaction on this machine.
 *
 * @since 0.1.0
 */
import { Participant, TransactionLog, TwoPhaseCommit } from "@accord/core"
import { Effect, Either, Layer, ManagedRuntime, Option } from "effect"

/**
 * A participant whose calls are Promises answered by `answer`, with Promise-level calls
 * (`Participant.direct`) and Effect twins over them, as PgParticipant has for postgres.js.
 * @since 0.1.0
 */
export const promiseParticipant = (
  name: string,
  answer: <A>(value: A) => Promise<A>
): Participant.Participant<null> => {
  const started = <A>(value: A): Participant.Started<A, never> => ({
    result: answer(value).then(Either.right),
    abandon: () => undefined
  })
  const direct = {
    prepare: () => started(Participant.Vote.Prepared()),
    commitOnePhase: () => started(Participant.OnePhaseResult.Committed()),
    commit: () => started("Committed" as const)
  }
  const twins = {
    prepare: () => Participant.fromStarted(direct.prepare),
    commitOnePhase: () => Participant.fromStarted(direct.commitOnePhase),
    commit: () => Participant.fromStarted(direct.commit)
  }
  return {
    name: name as Participant.Participant["name"],
    verify: Effect.void,
    ...twins,
    rollback: () => Effect.promise(() => answer("RolledBack" as const)),
    state: () => Effect.promise(() => answer("committed" as const)),
    inDoubt: Effect.succeed([]),
    forget: () => Effect.void,
    direct: { ...direct, twins }
  }
}

const instant = (name: string) => promiseParticipant(name, (value) => Promise.resolve(value))

const startDecide = (
  record: TransactionLog.DecisionRecord
): Participant.Started<TransactionLog.DecisionRecord, never> => ({
  result: Promise.resolve(Either.right(record)),
  abandon: () => undefined
})
const decide = (record: TransactionLog.DecisionRecord) => Participant.fromStarted(() => startDecide(record))
const completed: Participant.Started<void, never> = {
  result: Promise.resolve(Either.void),
  abandon: () => undefined
}
const startComplete = () => completed
const complete = () => Participant.fromStarted(startComplete)

/**
 * A log that records nothing. Its `decide` and `complete` are the Effect twins of started Promises
 * (`direct`), as `PgTransactionLog`'s are, so the coordinator takes the same fiber-free path as against
 * PostgreSQL (a log without `direct` costs one fork per decision and per completion, a path no
 * PostgreSQL run takes).
 * @since 0.1.0
 */
export const nullLog: TransactionLog.TransactionLog["Type"] = {
  decide,
  direct: { decide: startDecide, complete: startComplete, twins: { decide, complete } },
  decision: () => Effect.succeed(Option.none()),
  complete,
  unfinished: () => Effect.succeed([]),
  recordHeuristic: () => Effect.void,
  heuristics: Effect.succeed([])
}

/**
 * One measurement.
 * @since 0.1.0
 */
export interface Overhead {
  readonly shape: string
  readonly transactions: number
  readonly wallMicrosPerTx: number
  readonly cpuMicrosPerTx: number
}

/**
 * Measures `n` sequential transactions of each shape (after as many for warm-up).
 * @since 0.1.0
 */
export const measure = async (n = 2000): Promise<ReadonlyArray<Overhead>> => {
  const runtime = ManagedRuntime.make(Layer.succeed(TransactionLog.TransactionLog, nullLog))
  const a = instant("a")
  const b = instant("b")
  const shapes: ReadonlyArray<[string, () => Promise<unknown>]> = [
    ["Effect.runPromise(Effect.void)", () => runtime.runPromise(Effect.void)],
    [
      "TwoPhaseCommit.run, 1 branch (one-phase)",
      () => runtime.runPromise(TwoPhaseCommit.run([Participant.branch(a, null)]))
    ],
    [
      "TwoPhaseCommit.run, 2 branches",
      () => runtime.runPromise(TwoPhaseCommit.run([Participant.branch(a, null), Participant.branch(b, null)]))
    ]
  ]
  const out: Array<Overhead> = []
  try {
    for (const [shape, tx] of shapes) {
      for (let i = 0; i < n; i++) await tx()
      const cpu0 = process.cpuUsage()
      const t0 = performance.now()
      for (let i = 0; i < n; i++) await tx()
      const cpu = process.cpuUsage(cpu0)
      out.push({
        shape,
        transactions: n,
        wallMicrosPerTx: Math.round(((performance.now() - t0) * 1000) / n),
        cpuMicrosPerTx: Math.round((cpu.user + cpu.system) / n)
      })
    }
  } finally {
    await runtime.dispose()
  }
  return out
}
