/**
 * @since 0.1.0
 */
export * as TestDatabase from "./TestDatabase.js"
/** @since 0.1.0 */
export * as Migrations from "./Migrations.js"
/** @since 0.1.0 */
export * as PgParticipant from "./PgParticipant.js"
/** @since 0.1.0 */
export * as PgTransactionLog from "./PgTransactionLog.js"
/** @since 0.1.0 */
export * as Schema from "./Schema.js"
export * as Barrier from "./Barrier.js"
export * as PgSagaLog from "./PgSagaLog.js"
export * as SagaSchema from "./SagaSchema.js"
/** @since 0.1.0 */
export * as PgRecovery from "./PgRecovery.js"
export * as PgThreePhaseParticipant from "./PgThreePhaseParticipant.js"
/** @since 0.1.0 */
export * as Pipeline from "./Pipeline.js"
