/**
 * @since 0.1.0
 */
export * as Participant from "./Participant.js"
/** @since 0.1.0 */
export * as TransactionError from "./TransactionError.js"
/** @since 0.1.0 */
export * as TransactionId from "./TransactionId.js"
/** @since 0.1.0 */
export * as TransactionLog from "./TransactionLog.js"
/** @since 0.1.0 */
export * as TwoPhaseCommit from "./TwoPhaseCommit.js"
export * as Recovery from "./Recovery.js"
export * as Coordinator from "./Coordinator.js"
export * as Saga from "./Saga.js"
export * as SagaLog from "./SagaLog.js"
export * as SagaOrchestrator from "./SagaOrchestrator.js"
export * as ThreePhaseCommit from "./ThreePhaseCommit.js"
export * as ThreePhaseCoordinator from "./ThreePhaseCoordinator.js"
export * as Json from "./Json.js"
