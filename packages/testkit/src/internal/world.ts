import { Effect } from "effect"
import * as Faults from "../Faults.js"
import * as Rng from "../Rng.js"
import * as SimNetwork from "../SimNetwork.js"
import type { VirtualClock } from "../SimRuntime.js"
import * as Trace from "../Trace.js"

/** Everything one simulated run shares. */
export interface World {
  readonly seed: number
  readonly rng: Rng.Rng
  readonly trace: Trace.Trace
  readonly injector: Faults.Injector
  readonly net: SimNetwork.Network
  readonly now: () => number
  readonly violations: Array<string>
  readonly notes: Array<string>
}

export const make = (
  seed: number,
  clock: VirtualClock,
  options: { readonly crashOnly?: boolean; readonly partitions?: boolean } = {}
): World => {
  const rng = Rng.make(seed)
  const start = clock.unsafeCurrentTimeMillis()
  const now = () => clock.unsafeCurrentTimeMillis()
  const trace = Trace.make(now, start)
  const drawn = Faults.draw(rng, options)
  const injector = new Faults.Injector(drawn, rng.fork(), trace)
  const net = new SimNetwork.Network(injector, trace)
  trace.add("sim", `seed ${seed}, faults ${describeProfile(drawn)}`)
  return { seed, rng, trace, injector, net, now, violations: [], notes: [] }
}

const describeProfile = (p: Faults.Profile): string =>
  Object.entries(p)
    .filter(([, v]) => v > 0)
    .map(([k, v]) => `${k}=${v.toFixed(3)}`)
    .join(" ") || "none"

/** Schedules a crash (and restart) of each node the profile picks. */
export const scheduleNodeCrashes = (world: World, nodes: ReadonlyArray<SimNetwork.Node>) =>
  Effect.forEach(
    nodes,
    (node) => {
      if (!world.injector.roll("participantCrash")) return Effect.void
      const at = world.injector.rng.int(0, 400)
      const down = world.injector.rng.int(1, 600)
      world.trace.add("sim", `schedule: ${node.name} crashes at +${at}ms for ${down}ms`)
      return Effect.forkDaemon(Effect.sleep(at).pipe(Effect.andThen(world.net.crash(node, down))))
    },
    { discard: true }
  )

/** Ends the fault phase: no more faults, every node back up, every message delivered. */
export const heal = (world: World, nodes: ReadonlyArray<SimNetwork.Node>) =>
  Effect.gen(function* () {
    world.injector.healed = true
    world.trace.add("sim", "heal: faults off, nodes restarted, draining the network")
    world.net.healPartition()
    yield* Effect.forEach(nodes, (n) => world.net.restart(n), { discard: true })
    yield* world.net.drained
  })
