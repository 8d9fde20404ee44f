/**
 * The transport's duplicate delivery: two copies of one request can get different answers (the
 * first refused for lack of stock, the second applied after another order released some). The call
 * must report what happened to the effect: applied if a copy applied, in doubt if a copy's answer
 * was lost, a refusal only when every copy was refused. And a 5xx is "did not act" (transient) only
 * when the service says it rolled back; any other 5xx is in doubt. Real HTTP on loopback.
 */
import { Effect, Either } from "effect"
import { afterEach, describe, expect, it } from "vitest"
import * as Http from "../src/Http.js"
import * as OrderSaga from "../src/OrderSaga.js"

const servers: Http.Server[] = []
afterEach(async () => {
  for (const s of servers.splice(0)) await s.close()
})

const applied: Http.Reply = { status: 200, body: { status: "applied", result: { ok: 1 } } }
const refused: Http.Reply = { status: 409, body: { error: "out_of_stock", message: "not enough" } }

/** A service answering its n-th request with `script[n]` (after `delayMs[n]`). */
const scripted = async (
  script: ReadonlyArray<Http.Reply>,
  options: { readonly delayMs?: ReadonlyArray<number>; readonly drops?: ReadonlyArray<boolean> } = {}
) => {
  let calls = 0
  let replies = 0
  const server = await Http.serve({
    handlers: {
      reserve: async () => {
        const n = calls++
        await new Promise((r) => setTimeout(r, options.delayMs?.[n] ?? 0))
        return script[n]!
      }
    },
    dropRate: options.drops === undefined ? 0 : 0.5,
    // Called once per reply, in the order the replies are ready: drop the ones marked.
    random: () => (options.drops?.[replies++] === true ? 0 : 0.99)
  })
  servers.push(server)
  return { server, calls: () => calls }
}

const callTwice = (port: number) =>
  Effect.runPromise(
    Effect.either(
      Http.call({
        endpoint: { service: "inventory", baseUrl: `http://127.0.0.1:${port}` },
        op: "reserve",
        body: { sagaId: "S1", step: "reserve-stock" },
        idempotencyKey: "S1/reserve-stock",
        duplicateRate: 1,
        random: () => 0.5
      })
    )
  )

describe("duplicate delivery", () => {
  it("a refused copy and an applied copy: the step took effect", async () => {
    // The refusal arrives first (no delay), the application 30 ms later.
    const { server, calls } = await scripted([refused, applied], { delayMs: [0, 30] })
    const result = await callTwice(server.port)
    expect(calls()).toBe(2)
    expect(result).toEqual(Either.right({ ok: 1 }))
  })

  it("a refused copy and a copy whose answer was lost: in doubt, not a refusal", async () => {
    const { server, calls } = await scripted([refused, applied], { delayMs: [0, 30], drops: [false, true] })
    const result = await callTwice(server.port)
    expect(calls()).toBe(2)
    expect(Either.isLeft(result) && result.left._tag).toBe("ServiceInDoubtError")
  })

  it("both copies refused: a definite refusal", async () => {
    const { server } = await scripted([refused, refused])
    const result = await callTwice(server.port)
    expect(Either.isLeft(result) && result.left._tag).toBe("ServiceRejectedError")
  })

  it("mergeCopies prefers an applied answer, then a lost or in-doubt one, then the first", () => {
    const ok = { ok: true, status: 200, body: {} } as const
    const no = { ok: true, status: 409, body: {} } as const
    // A 5xx that does not say it rolled back: the copy may have acted.
    const down = { ok: true, status: 503, body: {} } as const
    const rolledBack = { ok: true, status: 500, body: { rolledBack: true } } as const
    const lost = { ok: false, reason: "ECONNRESET" } as const
    expect(Http.mergeCopies([no, ok])).toBe(ok)
    expect(Http.mergeCopies([lost, ok])).toBe(ok)
    expect(Http.mergeCopies([no, lost])).toBe(lost)
    expect(Http.mergeCopies([down, no])).toBe(down)
    expect(Http.mergeCopies([no, down])).toBe(down)
    expect(Http.mergeCopies([rolledBack, no])).toBe(rolledBack)
    expect(Http.mergeCopies([no, rolledBack])).toBe(no)
  })
})

const callOnce = (port: number) =>
  Effect.runPromise(
    Effect.either(
      Http.call({
        endpoint: { service: "inventory", baseUrl: `http://127.0.0.1:${port}` },
        op: "reserve",
        body: { sagaId: "S1", step: "reserve-stock" },
        idempotencyKey: "S1/reserve-stock",
        duplicateRate: 0,
        random: () => 0.5
      })
    )
  )

describe("a 5xx answer", () => {
  // The service lost its database with the COMMIT possibly sent: the step may have taken effect.
  // Read as "rolled back" (transient), the saga would give the step up without compensating it.
  it("saying in doubt (503) is in doubt, and the saga reads it as a step in doubt", async () => {
    const { server } = await scripted([
      { status: 503, body: { error: "in_doubt", inDoubt: true, message: "CONNECTION_CLOSED" } }
    ])
    const result = await callOnce(server.port)
    expect(Either.isLeft(result) && result.left._tag).toBe("ServiceInDoubtError")
    if (Either.isLeft(result)) expect(OrderSaga.toStepError(result.left)._tag).toBe("StepInDoubtError")
  })

  it("that does not say it rolled back (a bare 500) is in doubt", async () => {
    const { server } = await scripted([{ status: 500, body: { error: "internal", message: "boom" } }])
    const result = await callOnce(server.port)
    expect(Either.isLeft(result) && result.left._tag).toBe("ServiceInDoubtError")
  })

  it("saying it rolled back (500, rolledBack) is transient: the step did not act", async () => {
    const { server } = await scripted([
      { status: 500, body: { error: "rolled_back", rolledBack: true, message: "40001 could not serialize" } }
    ])
    const result = await callOnce(server.port)
    expect(Either.isLeft(result) && result.left._tag).toBe("ServiceUnavailableError")
    if (Either.isLeft(result)) expect(OrderSaga.toStepError(result.left)._tag).toBe("StepTransientError")
  })

  it("from a handler that threw (it may have acted) is in doubt", async () => {
    const server = await Http.serve({
      handlers: {
        reserve: async () => {
          throw new Error("failed after acting")
        }
      },
      dropRate: 0,
      random: () => 0.99
    })
    servers.push(server)
    const result = await callOnce(server.port)
    expect(Either.isLeft(result) && result.left._tag).toBe("ServiceInDoubtError")
  })
})
