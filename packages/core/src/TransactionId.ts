/**
 * Identities of global transactions and of their branches.
 *
 * A global transaction id is a ULID: 26 Crockford base32 characters, time-sortable, made from the
 * Effect `Clock` and `Random` services so that a seeded simulation produces the same ids each run.
 * A branch gid is `accord[-<namespace>]_<txId>_<branch>`. Postgres keeps gids unique per *server*,
 * so each branch of one transaction needs its own gid; `PREPARE TRANSACTION` takes a literal, so a
 * gid reaches SQL only after `Gid.validate` (here, the one place gids are built and checked).
 *
 * @since 0.1.0
 */
import { type Brand, Effect, Either, Option } from "effect"
import { CROCKFORD, randomChars } from "./internal/entropy.js"
import { InvalidTransactionError } from "./TransactionError.js"

/**
 * A global transaction id (ULID).
 * @since 0.1.0
 */
export type TransactionId = string & Brand.Brand<"@accord/core/TransactionId">

/**
 * A branch (participant) name: 1-64 characters of `[A-Za-z0-9.-]`.
 * @since 0.1.0
 */
export type BranchName = string & Brand.Brand<"@accord/core/BranchName">

/**
 * A validated branch gid, safe to embed in `PREPARE TRANSACTION '<gid>'`.
 * @since 0.1.0
 */
export type Gid = string & Brand.Brand<"@accord/core/Gid">

/** @since 0.1.0 */
export const transactionIdPattern = /^[0-9A-HJKMNP-TV-Z]{26}$/
/** @since 0.1.0 */
export const branchNamePattern = /^[A-Za-z0-9.-]{1,64}$/
/** @since 0.1.0 */
export const namespacePattern = /^[a-z0-9]{1,16}$/
/**
 * Every gid Accord builds matches this pattern; recovery touches nothing else.
 * @since 0.1.0
 */
export const gidPattern = /^accord(-[a-z0-9]{1,16})?_([0-9A-HJKMNP-TV-Z]{26})_([A-Za-z0-9.-]{1,64})$/

/**
 * The SQL `LIKE` pattern matching Accord's gids in `pg_prepared_xacts`: those of `namespace`, or
 * without one, those built without a namespace (never another deployment's `accord-<ns>_...`).
 * @since 0.1.0
 */
export const gidLikePattern = (namespace?: string): string =>
  // `_` is a LIKE wildcard: escaped, so that without a namespace `accord-<ns>_...` does not match.
  namespace === undefined ? "accord\\_%" : `accord-${namespace}\\_%`

const encodeTime = (millis: number): string => {
  let out = ""
  let rest = millis
  for (let i = 0; i < 10; i++) {
    out = CROCKFORD[rest % 32] + out
    rest = Math.floor(rest / 32)
  }
  return out
}

/**
 * A fresh transaction id: the `Clock`'s milliseconds and 80 random bits. Under Effect's built-in
 * `Random` (a PCG seeded with 32 bits per process) the bits come from `crypto.getRandomValues`;
 * a provided `Random` (a seeded simulation) is used as given, so its ids repeat run after run.
 * @since 0.1.0
 */
export const make: Effect.Effect<TransactionId> = Effect.clockWith((clock) =>
  Effect.map(
    randomChars(4),
    (random) => (encodeTime(clock.unsafeCurrentTimeMillis()) + random) as TransactionId
  )
)

/**
 * Checks a transaction id supplied from outside.
 * @since 0.1.0
 */
export const parseTransactionId = (input: string): Either.Either<TransactionId, InvalidTransactionError> =>
  transactionIdPattern.test(input)
    ? Either.right(input as TransactionId)
    : Either.left(
        new InvalidTransactionError({ reason: `not a transaction id (26-char ULID): ${describe(input)}` })
      )

/**
 * Checks a branch name.
 * @since 0.1.0
 */
export const parseBranchName = (input: string): Either.Either<BranchName, InvalidTransactionError> =>
  typeof input === "string" && branchNamePattern.test(input)
    ? Either.right(input as BranchName)
    : Either.left(
        new InvalidTransactionError({
          reason: `invalid participant name ${describe(input)}: use 1-64 characters of [A-Za-z0-9.-]`
        })
      )

/**
 * Builds the gid of one branch of one transaction.
 * @since 0.1.0
 */
export const gid = (txId: TransactionId, branch: BranchName, namespace?: string): Gid => {
  const candidate =
    namespace === undefined ? `accord_${txId}_${branch}` : `accord-${namespace}_${txId}_${branch}`
  return Either.getOrThrowWith(validateGid(candidate), (e) => new Error(e.reason))
}

/**
 * Validates a gid before it is embedded in SQL: the fixed pattern and fewer than 200 bytes.
 * @since 0.1.0
 */
export const validateGid = (input: string): Either.Either<Gid, InvalidTransactionError> =>
  typeof input === "string" && input.length < 200 && gidPattern.test(input)
    ? Either.right(input as Gid)
    : Either.left(
        new InvalidTransactionError({ reason: `refused gid ${describe(input)}: not an Accord gid` })
      )

/**
 * Splits an Accord gid into its parts; `None` for any gid Accord did not build.
 * @since 0.1.0
 */
export const parseGid = (
  input: string
): Option.Option<{
  readonly gid: Gid
  readonly txId: TransactionId
  readonly branch: BranchName
  readonly namespace?: string
}> => {
  const match = typeof input === "string" && input.length < 200 ? gidPattern.exec(input) : null
  if (match === null) return Option.none()
  const namespace = match[1]?.slice(1)
  return Option.some({
    gid: input as Gid,
    txId: match[2] as TransactionId,
    branch: match[3] as BranchName,
    ...(namespace === undefined ? {} : { namespace })
  })
}

/**
 * Quotes a validated gid as a SQL string literal. Validation already excludes quotes and
 * backslashes; doubling quotes anyway keeps the literal safe should the pattern ever widen.
 * @since 0.1.0
 */
export const toSqlLiteral = (value: Gid): string => `'${value.replaceAll("'", "''")}'`

const describe = (input: unknown): string => {
  const text = typeof input === "string" ? input : String(input)
  return JSON.stringify(text.length > 80 ? `${text.slice(0, 80)}…` : text)
}
