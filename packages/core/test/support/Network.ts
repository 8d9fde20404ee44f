import { Effect, Ref } from "effect"
import type * as ThreePhaseCommit from "../../src/ThreePhaseCommit.js"

/** A network whose partitions the test changes; members in different groups cannot talk. */
export const make = Effect.gen(function* () {
  const groups = yield* Ref.make<ReadonlyArray<ReadonlyArray<string>> | undefined>(undefined)
  const reachable: ThreePhaseCommit.Reachability = (from, to) =>
    Ref.get(groups).pipe(
      Effect.map((g) => g === undefined || g.some((group) => group.includes(from) && group.includes(to)))
    )
  return {
    reachable,
    split: (...g: ReadonlyArray<ReadonlyArray<string>>) => Ref.set(groups, g),
    heal: Ref.set(groups, undefined)
  }
})
