/**
 * The payment service under duplicate delivery: the same charge request delivered twice (at once,
 * and again later, and after a dropped response) charges the card once. Runs the real service over
 * HTTP, on PGlite and on real PostgreSQL.
 */
import { TestDatabase } from "@accord/postgres"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { dbTarget, type RunConfig } from "../src/Config.js"
import * as Database from "../src/Database.js"
import * as Services from "../src/Services.js"
import { dropDatabases, testConfig } from "./support/config.js"

const server = await TestDatabase.server()

interface Answer {
  readonly status: number
  readonly body: { status?: string; error?: string; result?: unknown }
}

const suite = (backend: "pglite" | "postgres") => {
  let config: RunConfig
  let service: Services.RunningService
  const post = async (op: string, body: Record<string, unknown>): Promise<Answer> => {
    const res = await fetch(`http://127.0.0.1:${service.port}/${op}`, {
      method: "POST",
      body: JSON.stringify(body)
    })
    return { status: res.status, body: (await res.json()) as Answer["body"] }
  }
  const chargesOf = async (orderId: string) => ({
    charges: await service.db.query<{ status: string }>("select status from charges where order_id = $1", [
      orderId
    ]),
    events: await service.db.query<{ kind: string }>(
      "select kind from payment_events where order_id = $1 order by id",
      [orderId]
    )
  })

  beforeAll(async () => {
    config = testConfig({
      name: "pay",
      ...(backend === "postgres" ? { pgUrl: server!.adminUrl } : {}),
      faults: { declineRate: 0.25, slowRate: 0, slowMillis: 0, duplicateRate: 0, dropRate: 0 }
    })
    await Database.ensure(dbTarget(config, "payment"), true)
    service = await Services.start("payment", config)
  })
  afterAll(async () => {
    await service?.close()
    await dropDatabases(config)
  })

  it("duplicate HTTP delivery does not double-charge", async () => {
    const charge = {
      sagaId: "S1",
      step: "charge-payment",
      orderId: "O1",
      customerId: "C0001",
      amountCents: 1250
    }
    // Delivered twice at the same time, then once more later (a retry after a lost answer).
    const both = await Promise.all([post("charge", charge), post("charge", charge)])
    const again = await post("charge", charge)
    for (const answer of [...both, again]) expect(answer.status).toBe(200)
    expect(both.map((a) => a.body.status).sort()).toEqual(["applied", "duplicate"])
    expect(again.body.status).toBe("duplicate")
    expect(again.body.result).toMatchObject({ orderId: "O1", amountCents: 1250, status: "authorized" })

    expect(await chargesOf("O1")).toEqual({
      charges: [{ status: "authorized" }],
      events: [{ kind: "charge" }]
    })
  })

  it("a refund delivered twice refunds once", async () => {
    const refund = { sagaId: "S1", step: "charge-payment", orderId: "O1" }
    const answers = await Promise.all([post("refund", refund), post("refund", refund)])
    expect(answers.map((a) => a.body.status).sort()).toEqual(["applied", "duplicate"])
    expect(await chargesOf("O1")).toEqual({
      charges: [{ status: "refunded" }],
      events: [{ kind: "charge" }, { kind: "refund" }]
    })
  })

  it("a refund before its charge is a null compensation and the late charge is refused", async () => {
    const refund = await post("refund", { sagaId: "S2", step: "charge-payment", orderId: "O2" })
    expect(refund).toMatchObject({ status: 200, body: { status: "null-compensation" } })
    const late = await post("charge", {
      sagaId: "S2",
      step: "charge-payment",
      orderId: "O2",
      customerId: "C0001",
      amountCents: 900
    })
    expect(late).toMatchObject({ status: 409, body: { error: "refused" } })
    expect(await chargesOf("O2")).toEqual({ charges: [], events: [] })
  })

  it("a declined card is a definite refusal that leaves nothing behind, and stays declined on retry", async () => {
    const declined = Services.worldOf(config).customers.find((c) => c.declined)!
    const charge = {
      sagaId: "S3",
      step: "charge-payment",
      orderId: "O3",
      customerId: declined.id,
      amountCents: 500
    }
    for (const answer of [await post("charge", charge), await post("charge", charge)])
      expect(answer).toMatchObject({ status: 409, body: { error: "card_declined" } })
    expect(await chargesOf("O3")).toEqual({ charges: [], events: [] })
    // The refusal rolled the barrier row back: the compensation finds no action.
    expect(await post("refund", { sagaId: "S3", step: "charge-payment", orderId: "O3" })).toMatchObject({
      body: { status: "null-compensation" }
    })
  })
}

describe("payment service on PGlite", () => suite("pglite"))
describe.skipIf(server === undefined)("payment service on real PostgreSQL", () => suite("postgres"))
