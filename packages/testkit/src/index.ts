/**
 * @since 0.1.0
 */
export * as Broken from "./Broken.js"
/** @since 0.1.0 */
export * as Faults from "./Faults.js"
/** @since 0.1.0 */
export * as Invariants from "./Invariants.js"
/** @since 0.1.0 */
export * as Rng from "./Rng.js"
/** @since 0.1.0 */
export * as SimLog from "./SimLog.js"
/** @since 0.1.0 */
export * as SimNetwork from "./SimNetwork.js"
/** @since 0.1.0 */
export * as SimParticipant from "./SimParticipant.js"
/** @since 0.1.0 */
export * as SimRuntime from "./SimRuntime.js"
/** @since 0.1.0 */
export * as Simulator from "./Simulator.js"
/** @since 0.1.0 */
export * as Trace from "./Trace.js"
