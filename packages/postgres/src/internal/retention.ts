/**
 * Deleting what has outlived its retention, in batches: `Barrier.purge` (barrier rows) and
 * `PgSagaLog.purge` (ended sagas). Each batch is its own short autocommitted statement, so a large
 * backlog never holds many row locks at once.
 */
import { Duration, Option } from "effect"
import type { Client } from "./client.js"

/**
 * `input` as a finite duration of zero or more, or `None`: a number, bigint or `[seconds, nanos]`
 * that is NaN, negative or infinite, a string that is not a duration or is negative, or an
 * infinite `Duration`. Checked before decoding, because Effect's `Duration.decode` turns NaN and
 * negative numbers into zero, which to a garbage collector means "everything, at once".
 */
export const finiteDuration = (input: unknown): Option.Option<Duration.Duration> => {
  const negative =
    (typeof input === "number" && !(input >= 0)) ||
    (typeof input === "bigint" && input < 0n) ||
    (typeof input === "string" && input.trimStart().startsWith("-")) ||
    (Array.isArray(input) && input.some((part) => typeof part !== "number" || !(part >= 0)))
  if (negative) return Option.none()
  return Option.filter(Duration.decodeUnknown(input), Duration.isFinite)
}

/** How old and how many per statement. */
export interface Retention {
  readonly olderThan: Duration.DurationInput
  readonly batch?: number
}

/**
 * The retention in seconds and the batch size (default 1,000); throws `RangeError` (naming `what`)
 * for a retention that is not a positive, finite duration or a batch that is not a positive integer.
 */
export const checkRetention = (what: string, options: Retention): { seconds: number; batch: number } => {
  const olderThan = Duration.decodeUnknown(options.olderThan)
  if (
    Option.isNone(olderThan) ||
    !Duration.isFinite(olderThan.value) ||
    Duration.toMillis(olderThan.value) <= 0
  ) {
    throw new RangeError(
      `${what}: olderThan must be a positive, finite duration (got ${String(options.olderThan)})`
    )
  }
  const batch = options.batch ?? 1000
  if (!Number.isInteger(batch) || batch < 1) {
    throw new RangeError(`${what}: batch must be a positive integer (got ${String(options.batch)})`)
  }
  return { seconds: Duration.toMillis(olderThan.value) / 1000, batch }
}

/**
 * Runs `sql` (parameters: the retention in seconds, the batch size; it deletes at most a batch and
 * answers one row whose first column is how many it deleted) until a batch comes back short;
 * resolves with the total.
 */
export const deleteInBatches = async (
  client: Client,
  sql: string,
  retention: { readonly seconds: number; readonly batch: number }
): Promise<number> => {
  let total = 0
  for (;;) {
    const rows = await client.query<object>(sql, [retention.seconds, retention.batch])
    const n = Number(rows[0] === undefined ? 0 : (Object.values(rows[0])[0] ?? 0))
    total += n
    if (n < retention.batch) return total
  }
}

/**
 * `deleteInBatches` after `checkRetention`: a retention or batch that is not valid rejects with its
 * `RangeError` before anything is sent.
 */
export const purgeWith = (what: string, client: Client, sql: string, options: Retention): Promise<number> => {
  let retention: { seconds: number; batch: number }
  try {
    retention = checkRetention(what, options)
  } catch (error) {
    return Promise.reject(error)
  }
  return deleteInBatches(client, sql, retention)
}
