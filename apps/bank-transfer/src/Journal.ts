/**
 * The transfer journal (`--journal FILE`): one JSON line when a transfer is about to start and one
 * when its outcome is told. Written synchronously, so a line is in the file before the transfer
 * starts; a SIGKILL loses at most outcomes of transfers still in flight, whose fate the databases
 * decide (recovery finishes them).
 *
 * @since 0.1.0
 */
import { closeSync, openSync, writeSync } from "node:fs"

/**
 * What a journal line says.
 * @since 0.1.0
 */
export type Entry =
  | {
      readonly event: "intent"
      readonly txId: string
      readonly protocol: string
      readonly from: { readonly bank: "a" | "b"; readonly account: number }
      readonly to: { readonly bank: "a" | "b"; readonly account: number }
      readonly amount: number
    }
  | {
      readonly event: "outcome"
      readonly txId: string
      /** `Unknown`: the call failed without an outcome (in doubt); the databases and recovery decide. */
      readonly outcome: "Committed" | "Aborted" | "CommitPending" | "Unknown"
      readonly reason?: string
    }

/**
 * An open journal.
 * @since 0.1.0
 */
export interface Journal {
  readonly write: (entry: Entry) => void
  readonly close: () => void
}

/** A journal that writes nothing. @since 0.1.0 */
export const none: Journal = { write: () => {}, close: () => {} }

/**
 * Opens `path` for appending.
 * @since 0.1.0
 */
export const open = (path: string): Journal => {
  const fd = openSync(path, "a")
  return {
    write: (entry) => {
      writeSync(fd, `${JSON.stringify(entry)}\n`)
    },
    close: () => closeSync(fd)
  }
}
