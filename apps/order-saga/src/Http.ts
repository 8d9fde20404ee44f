/**
 * The HTTP layer between the orchestrator and the services: a small JSON server (node:http) with the
 * "dropped response" fault, and a client that classifies what happened to a call, with the
 * "duplicate delivery" fault.
 *
 * A call ends in one of three ways, and the saga treats them differently:
 * - the service answered 2xx: the step took effect (or had already);
 * - the service answered 409: a definite business refusal (out of stock, card declined): compensate;
 * - the service answered 5xx with `rolledBack: true` (`rolledBack`): its database refused the work
 *   and rolled it back; the step did not act; retrying is safe;
 * - any other 5xx (`inDoubt`, 503: the service lost its database connection with the COMMIT
 *   possibly sent, or a handler failed after acting; or a 5xx from anything that does not say it
 *   rolled back): in doubt, like no answer;
 * - no answer (connection lost, timeout): in doubt, the service may have acted: retry, the barrier
 *   makes the retry harmless, and if the step is given up its compensation must survive both cases.
 *
 * @since 0.1.0
 */
import { createServer, type IncomingMessage, type ServerResponse } from "node:http"
import type { AddressInfo } from "node:net"
import { Effect, Schema } from "effect"

/**
 * A service's reply.
 * @since 0.1.0
 */
export interface Reply {
  readonly status: number
  readonly body: unknown
}

/**
 * A handler of `POST /<op>`.
 * @since 0.1.0
 */
export type Handler = (body: Record<string, unknown>) => Promise<Reply>

/**
 * A running server.
 * @since 0.1.0
 */
export interface Server {
  readonly port: number
  readonly close: () => Promise<void>
}

/**
 * The reply of a service whose database answered a failure: the local transaction, barrier row
 * included, rolled back; the step did not act (HTTP 500, `rolledBack: true`).
 * @since 0.1.0
 */
export const rolledBack = (message: string): Reply => ({
  status: 500,
  body: { error: "rolled_back", rolledBack: true, message }
})

/**
 * The reply of a service that cannot tell whether the step took effect (it lost its database
 * connection with the COMMIT possibly sent, or failed after acting): HTTP 503, `inDoubt: true`.
 * @since 0.1.0
 */
export const inDoubt = (message: string): Reply => ({
  status: 503,
  body: { error: "in_doubt", inDoubt: true, message }
})

const readBody = (req: IncomingMessage): Promise<string> =>
  new Promise((resolve, reject) => {
    let data = ""
    req.setEncoding("utf8")
    req.on("data", (chunk: string) => {
      data += chunk
    })
    req.on("end", () => resolve(data))
    req.on("error", reject)
  })

const send = (res: ServerResponse, reply: Reply): void => {
  const text = JSON.stringify(reply.body)
  res.writeHead(reply.status, {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(text)
  })
  res.end(text)
}

/**
 * Serves `handlers` on 127.0.0.1 (port 0 = any free port). After a handler has acted, a share
 * `dropRate` of responses is dropped: the socket is destroyed without an answer.
 * @since 0.1.0
 */
export const serve = (options: {
  readonly handlers: Readonly<Record<string, Handler>>
  readonly dropRate: number
  readonly random: () => number
  readonly port?: number
  readonly onDrop?: (op: string) => void
}): Promise<Server> =>
  new Promise((resolve, reject) => {
    const server = createServer((req, res) => {
      const op = (req.url ?? "/").slice(1)
      if (req.method === "GET" && op === "health") return send(res, { status: 200, body: { ok: true } })
      const handler = req.method === "POST" ? options.handlers[op] : undefined
      if (handler === undefined) return send(res, { status: 404, body: { error: "not_found", message: op } })
      readBody(req)
        .then((text) => handler(JSON.parse(text === "" ? "{}" : text) as Record<string, unknown>))
        .then(
          (reply) => {
            if (options.dropRate > 0 && options.random() < options.dropRate) {
              options.onDrop?.(op)
              res.socket?.destroy()
              return
            }
            send(res, reply)
          },
          // A handler that threw may have acted: it did not say it rolled back.
          (error: unknown) => send(res, inDoubt(String((error as Error)?.message ?? error)))
        )
    })
    // Closing must not wait for the orchestrator's idle keep-alive sockets.
    server.keepAliveTimeout = 2000
    server.on("error", reject)
    server.listen(options.port ?? 0, "127.0.0.1", () => {
      const port = (server.address() as AddressInfo).port
      resolve({
        port,
        close: () =>
          new Promise<void>((done) => {
            server.close(() => done())
            server.closeAllConnections()
          })
      })
    })
  })

/**
 * The service refused the request for good (a business rule): compensate, do not retry.
 * @since 0.1.0
 */
export class ServiceRejectedError extends Schema.TaggedError<ServiceRejectedError>()("ServiceRejectedError", {
  service: Schema.String,
  op: Schema.String,
  code: Schema.String,
  reason: Schema.String
}) {
  override get message(): string {
    return `${this.service}/${this.op}: ${this.code}: ${this.reason}`
  }
}

/**
 * The service answered that it did not act (a 5xx saying it rolled back, or a 4xx other than 409
 * such as an unknown operation): retrying is safe.
 * @since 0.1.0
 */
export class ServiceUnavailableError extends Schema.TaggedError<ServiceUnavailableError>()(
  "ServiceUnavailableError",
  { service: Schema.String, op: Schema.String, status: Schema.Number, reason: Schema.String }
) {
  override get message(): string {
    return `${this.service}/${this.op}: HTTP ${this.status}: ${this.reason}`
  }
}

/**
 * No answer, or a 5xx that does not say the service rolled back: the service may or may not have
 * acted.
 * @since 0.1.0
 */
export class ServiceInDoubtError extends Schema.TaggedError<ServiceInDoubtError>()("ServiceInDoubtError", {
  service: Schema.String,
  op: Schema.String,
  reason: Schema.String
}) {
  override get message(): string {
    return `${this.service}/${this.op}: in doubt (${this.reason})`
  }
}

/**
 * The errors of a call.
 * @since 0.1.0
 */
export type CallError = ServiceRejectedError | ServiceUnavailableError | ServiceInDoubtError

/**
 * A service's base URL and name.
 * @since 0.1.0
 */
export interface Endpoint {
  readonly service: string
  readonly baseUrl: string
}

/**
 * One copy's answer as the client saw it: an HTTP status and body, or no answer.
 * @since 0.1.0
 */
export type Raw =
  | { readonly ok: true; readonly status: number; readonly body: unknown }
  | { readonly ok: false; readonly reason: string }

const post = async (url: string, body: unknown, key: string, signal: AbortSignal): Promise<Raw> => {
  try {
    const res = await fetch(url, {
      method: "POST",
      headers: { "content-type": "application/json", "idempotency-key": key },
      body: JSON.stringify(body),
      signal
    })
    const text = await res.text()
    return { ok: true, status: res.status, body: text === "" ? {} : JSON.parse(text) }
  } catch (error) {
    const cause = (error as { cause?: { code?: string; message?: string } }).cause
    return { ok: false, reason: cause?.code ?? cause?.message ?? (error as Error).message ?? String(error) }
  }
}

/**
 * An answer that leaves the effect in doubt: no answer, or a 5xx that does not say `rolledBack: true`.
 * @since 0.1.0
 */
export const isInDoubt = (raw: Raw): boolean =>
  !raw.ok ||
  (raw.status >= 500 &&
    (typeof raw.body !== "object" ||
      raw.body === null ||
      (raw.body as { rolledBack?: unknown }).rolledBack !== true))

/**
 * What two concurrent copies of one request say together. The copies ran one after the other behind
 * the service's barrier, and the world may have changed in between (stock released by another
 * order), so they can disagree; the answer must describe the effect, not the first copy:
 * - a copy answered 2xx: the step took effect (the other copy was a duplicate, or refused before
 *   the one that applied): success;
 * - otherwise a copy's answer was lost or in doubt (`isInDoubt`): that copy may have applied after
 *   the other was refused: in doubt, never a definite refusal (which would leave the step
 *   uncompensated);
 * - otherwise both answered: the first answer (both refusals or failures are definite for the
 *   request, since no copy of it is left in flight).
 * @since 0.1.0
 */
export const mergeCopies = (copies: readonly [Raw, Raw]): Raw =>
  copies.find((r) => r.ok && r.status >= 200 && r.status < 300) ?? copies.find(isInDoubt) ?? copies[0]

/**
 * Calls `POST <baseUrl>/<op>`. With probability `duplicateRate` the same request is delivered twice,
 * concurrently (the transport's duplicate); both answers are awaited and read together
 * (`mergeCopies`). Interrupting the effect (a step timeout) aborts the request: the call is then in
 * doubt.
 * @since 0.1.0
 */
export const call = (options: {
  readonly endpoint: Endpoint
  readonly op: string
  readonly body: Record<string, unknown>
  readonly idempotencyKey: string
  readonly duplicateRate: number
  readonly random: () => number
  readonly onDuplicate?: () => void
}): Effect.Effect<unknown, CallError> =>
  Effect.tryPromise({
    try: async (signal) => {
      const url = `${options.endpoint.baseUrl}/${options.op}`
      const twice = options.duplicateRate > 0 && options.random() < options.duplicateRate
      if (!twice) return post(url, options.body, options.idempotencyKey, signal)
      options.onDuplicate?.()
      return mergeCopies(
        await Promise.all([
          post(url, options.body, options.idempotencyKey, signal),
          post(url, options.body, options.idempotencyKey, signal)
        ])
      )
    },
    catch: (error) =>
      new ServiceInDoubtError({ service: options.endpoint.service, op: options.op, reason: String(error) })
  }).pipe(
    Effect.flatMap((raw): Effect.Effect<unknown, CallError> => {
      const { service } = options.endpoint
      if (!raw.ok)
        return Effect.fail(new ServiceInDoubtError({ service, op: options.op, reason: raw.reason }))
      const body = (typeof raw.body === "object" && raw.body !== null ? raw.body : {}) as {
        error?: string
        message?: string
        result?: unknown
      }
      if (raw.status >= 200 && raw.status < 300) return Effect.succeed(body.result)
      if (raw.status === 409)
        return Effect.fail(
          new ServiceRejectedError({
            service,
            op: options.op,
            code: body.error ?? "rejected",
            reason: body.message ?? ""
          })
        )
      if (isInDoubt(raw))
        return Effect.fail(
          new ServiceInDoubtError({
            service,
            op: options.op,
            reason: `HTTP ${raw.status}: ${body.message ?? body.error ?? "no reason given"}`
          })
        )
      return Effect.fail(
        new ServiceUnavailableError({
          service,
          op: options.op,
          status: raw.status,
          reason: body.message ?? ""
        })
      )
    })
  )
