import type { ForeignGids } from "../Recovery.js"
import type { Gid } from "../TransactionId.js"

/** How many gids `ForeignGids.gids` lists at most (`count` has them all). */
export const foreignListed = 10

/**
 * Collects a recovery pass's `ForeignGids`: `add` each gid left alone as it is met (one met twice
 * counts once, and as prepared if either time was the scan's); `report` lists the participants that
 * met any, in the order of `participants`. Shared by 2PC's `Recovery.run` and 3PC's `recover`.
 */
export const foreignGids = (participants: ReadonlyArray<{ readonly name: string }>) => {
  const met = new Map<string, Map<Gid, boolean>>()
  return {
    add: (participant: string, gid: Gid, prepared: boolean): void => {
      const gids = met.get(participant) ?? new Map<Gid, boolean>()
      met.set(participant, gids)
      gids.set(gid, prepared || gids.get(gid) === true)
    },
    report: (): ReadonlyArray<ForeignGids> =>
      [...new Set(participants.map((p) => p.name))].flatMap((name) => {
        const gids = met.get(name)
        if (gids === undefined) return []
        return [
          {
            participant: name,
            count: gids.size,
            prepared: [...gids.values()].filter(Boolean).length,
            gids: [...gids.keys()].slice(0, foreignListed)
          }
        ]
      })
  }
}
