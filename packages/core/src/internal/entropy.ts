import { Effect } from "effect"

/**
 * Where Accord's identifiers (transaction ids, saga owners and sweep tokens) draw their randomness.
 *
 * Effect's built-in `Random` is a PCG generator seeded with 32 bits from `Math.random()` when the
 * process starts: every identifier a process makes is a function of those 32 bits, so two
 * coordinators that drew the same seed make the same sequence of "random" parts, and one id seen
 * predicts the next. Under that built-in service the random part comes from the platform's CSPRNG
 * (`crypto.getRandomValues`) instead. A `Random` the caller provides (`Effect.withRandom`, the
 * simulator's seeded one) is used as given, so a seeded run still makes the same ids every time.
 */

/** Effect's built-in `Random` service: one instance, shared by every runtime of this `effect` copy. */
const builtInRandom = Effect.runSync(Effect.random)

/** Crockford's base32 alphabet (ULID's). */
export const CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

/** Bytes drawn from the CSPRNG per refill; an identifier takes 16. */
const POOL_BYTES = 4096
let pool = new Uint8Array(0)
let used = 0

/** `n` base32 characters, 5 uniform bits each, from the platform's CSPRNG. */
export const secureChars = (n: number): string => {
  if (used + n > pool.length) {
    pool = globalThis.crypto.getRandomValues(new Uint8Array(Math.max(POOL_BYTES, n)))
    used = 0
  }
  let out = ""
  // 256 is a multiple of 32: the low five bits of a uniform byte are uniform.
  for (let i = 0; i < n; i++) out += CROCKFORD[pool[used + i]! & 31]
  used += n
  return out
}

/**
 * `4 * draws` base32 characters: from the CSPRNG under Effect's built-in `Random`, otherwise
 * `draws` 20-bit draws of the fiber's `Random` (four characters each), as a seeded run expects.
 */
export const randomChars = (draws: number): Effect.Effect<string> =>
  Effect.randomWith((random) => {
    if (random === builtInRandom) return Effect.sync(() => secureChars(4 * draws))
    return Effect.gen(function* () {
      let out = ""
      for (let i = 0; i < draws; i++) {
        let draw = yield* random.nextIntBetween(0, 1 << 20)
        for (let j = 0; j < 4; j++) {
          out += CROCKFORD[draw & 31]
          draw >>>= 5
        }
      }
      return out
    })
  })
