/**
 * Whether a value survives a JSON round trip unchanged: what Accord checks before it keeps a value
 * as JSON that a later run reads back in its place (a saga step's output in the saga log, a
 * barrier's result for a duplicate). A value that would come back different (a Date as a string,
 * a bigint not at all, a Map as `{}`) is refused up front instead of being handed back altered.
 *
 * @since 0.1.0
 */
import { Effect, Schema } from "effect"

const isIdentifier = /^[A-Za-z_$][A-Za-z0-9_$]*$/
const keyPath = (path: string, key: string) =>
  isIdentifier.test(key) ? `${path}.${key}` : `${path}[${JSON.stringify(key)}]`

const kindOf = (value: object): string => {
  const name = (value as { readonly constructor?: { readonly name?: unknown } }).constructor?.name
  return typeof name === "string" && name !== "" ? `a ${name}` : "an object with a custom prototype"
}

/** A UTF-16 surrogate without its other half (e.g. an emoji cut in two by `slice`). */
const loneSurrogate = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/

/**
 * Why PostgreSQL's `jsonb` (where the logs keep Accord's JSON) cannot store `text` as a string, or
 * `undefined`: it refuses a NUL character (22P05) and a lone UTF-16 surrogate, which
 * `JSON.stringify` writes as a `\uD83D` escape (22P02).
 */
const textProblem = (text: string): string | undefined =>
  text.includes("\u0000")
    ? "a NUL character (U+0000)"
    : loneSurrogate.test(text)
      ? "a lone UTF-16 surrogate (half of a character)"
      : undefined

/**
 * Where `value` would not survive `JSON.parse(JSON.stringify(value))` unchanged (structurally), or
 * a PostgreSQL `jsonb` round trip (`textProblem`), or `undefined` if it would.
 */
const problemAt = (value: unknown, path: string, open: Set<object>): string | undefined => {
  switch (typeof value) {
    case "string": {
      const problem = textProblem(value)
      return problem === undefined
        ? undefined
        : `${path} holds ${problem}, which PostgreSQL's jsonb cannot store`
    }
    case "boolean":
      return undefined
    case "number":
      return Number.isFinite(value) ? undefined : `${path} is ${value} (JSON writes null)`
    case "bigint":
      return `${path} is a bigint (JSON cannot write it)`
    case "undefined":
      return `${path} is undefined (JSON drops it, or writes null in an array)`
    case "function":
    case "symbol":
      return `${path} is a ${typeof value} (JSON drops it)`
    case "object": {
      if (value === null) return undefined
      if (open.has(value)) return `${path} is circular`
      const proto: unknown = Object.getPrototypeOf(value)
      if (Array.isArray(value) ? proto !== Array.prototype : proto !== Object.prototype && proto !== null)
        return `${path} is ${kindOf(value)} (JSON keeps only its plain fields)`
      if (
        Object.getOwnPropertySymbols(value).some((k) => Object.prototype.propertyIsEnumerable.call(value, k))
      )
        return `${path} has a symbol key (JSON drops it)`
      open.add(value)
      try {
        if (Array.isArray(value)) {
          for (let i = 0; i < value.length; i++) {
            if (!(i in value)) return `${path}[${i}] is a hole (JSON writes null)`
            const problem = problemAt(value[i], `${path}[${i}]`, open)
            if (problem !== undefined) return problem
          }
          const extra = Object.keys(value).find((k) => !/^(0|[1-9][0-9]*)$/.test(k))
          return extra === undefined ? undefined : `${keyPath(path, extra)} is not an index (JSON drops it)`
        }
        for (const key of Object.keys(value)) {
          const inKey = textProblem(key)
          if (inKey !== undefined)
            return `${keyPath(path, key)}: its key holds ${inKey}, which PostgreSQL's jsonb cannot store`
          const problem = problemAt((value as Record<string, unknown>)[key], keyPath(path, key), open)
          if (problem !== undefined) return problem
        }
        return undefined
      } finally {
        open.delete(value)
      }
    }
  }
}

/**
 * Where `value` would not survive `JSON.parse(JSON.stringify(value))` unchanged (structurally),
 * nor PostgreSQL's `jsonb` (a string or key holding a NUL or a lone UTF-16 surrogate), named from
 * `root` (e.g. `"output.at is a Date (JSON keeps only its plain fields)"`), or `undefined` if it
 * would. Shared references are fine (they come back as equal copies); numbers
 * compare with `===`, so `-0` (read back as `0`) is accepted.
 * @since 0.1.0
 */
export const roundTripProblem = (value: unknown, root: string): string | undefined =>
  problemAt(value, root, new Set())

/**
 * `text` (a failure's reason, a stuck saga's cause, an operator's note: words for people) as the
 * logs can store it: each NUL character and lone UTF-16 surrogate replaced by U+FFFD. Such a
 * character in a reason made the log refuse the record, and the saga re-ran its step on every
 * sweep without ever compensating. Values a later run reads back are refused instead
 * (`roundTripProblem`), never altered.
 * @since 0.1.0
 */
export const text = (words: string): string =>
  textProblem(words) === undefined
    ? words
    : words.replaceAll("\u0000", "\uFFFD").replace(new RegExp(loneSurrogate.source, "g"), "\uFFFD")

/**
 * `value` as the plain JSON Accord keeps of it in place of the value (`root` names it: `"output"`,
 * `"result"`): encoded with `schema` when one is given, else `value` itself. Fails with the reason
 * when the schema rejects the value or when what would be kept is not plain JSON
 * (`roundTripProblem`). A whole `undefined` (a void step) is kept as `undefined`.
 * @since 0.1.0
 */
export const encodeKept = <A, I>(
  value: A,
  schema: Schema.Schema<A, I, never> | undefined,
  root: string
): Effect.Effect<unknown, string> => {
  const plain = (kept: unknown, why: string): Effect.Effect<unknown, string> => {
    const problem = kept === undefined ? undefined : roundTripProblem(kept, root)
    return problem === undefined ? Effect.succeed(kept) : Effect.fail(`${why}: ${problem}`)
  }
  if (schema === undefined) {
    const article = /^[aeiou]/.test(root) ? "an" : "a"
    return plain(value, `without ${article} ${root} schema the ${root} must be plain JSON`)
  }
  return Schema.encode(schema)(value).pipe(
    Effect.mapError((e) => `the ${root} schema rejected the ${root}: ${e.message}`),
    Effect.flatMap((encoded) => plain(encoded, `the ${root} schema's encoded form must be plain JSON`))
  )
}
