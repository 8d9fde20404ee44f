/** Shared steps of the Promise-facade (TwoPhaseCoordinator) suites. */
import type { OperationTriple, TwoPhaseCoordinator } from "../../src/Coordinator.js"

/** What `registerParticipant` takes: a Promise participant or an Effect one. */
type Registrable = Parameters<TwoPhaseCoordinator["registerParticipant"]>[0]

/** Registers `participants` with `coordinator`, one after the other. */
export const registerAll = async (
  coordinator: TwoPhaseCoordinator,
  ...participants: ReadonlyArray<Registrable>
): Promise<void> => {
  for (const participant of participants) await coordinator.registerParticipant(participant)
}

/** One transaction of a `debit` on `from` and a `credit` on `to` (no parameters). */
export const debitCredit = (
  coordinator: TwoPhaseCoordinator,
  from: OperationTriple[0],
  to: OperationTriple[0]
) =>
  coordinator.executeTransaction([
    [from, "debit", {}],
    [to, "credit", {}]
  ])
