/**
 * The README's main snippets, read from README.md itself so that they cannot rot: the Effect 2PC
 * transfer, the Promise 2PC facade and the saga are typechecked as written (only the names the
 * reader supplies, such as the saga's service clients, are declared around them), and on
 * PostgreSQL the 2PC transfer and the saga run as written, with only their connection URLs pointed
 * at throw-away databases.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import * as Core from "@accord/core"
import { Effect } from "effect"
import * as EffectModule from "effect"
import postgres from "postgres"
import ts from "typescript"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as AccordPostgres from "../src/index.js"
import * as TestDatabase from "../src/TestDatabase.js"

const server = await TestDatabase.server()

const here = path.dirname(fileURLToPath(import.meta.url))
const packageDir = path.resolve(here, "..")
const readme = fs.readFileSync(path.resolve(packageDir, "../../README.md"), "utf8")

/** Every ```ts block of the README. */
const blocks = [...readme.matchAll(/^```ts\n([\s\S]*?)^```$/gm)].map((m) => m[1]!)
const block = (what: string, marker: string): string => {
  const found = blocks.filter((b) => b.includes(marker))
  if (found.length !== 1)
    throw new Error(`README: expected one ts block with ${marker} (${what}), found ${found.length}`)
  return found[0]!
}
const twoPhase = block("Effect 2PC", "TwoPhaseCommit.run(")
const facade = block("Promise 2PC", "new TwoPhaseCoordinator(")
const saga = block("saga", "Saga.make(")

/** What the reader supplies, as global declarations. */
const prelude = `
declare const urlA: string
declare const coordinatorUrl: string
declare const bankB: import("@accord/postgres").PgParticipant.PgParticipant
type ServiceCall = (key: string, input?: unknown) => import("effect").Effect.Effect<unknown, import("@accord/core").Saga.StepError>
declare const sql: import("postgres").Sql
declare const orders: { create: ServiceCall; cancel: ServiceCall }
declare const stock: { reserve: ServiceCall; release: ServiceCall }
declare const payments: { charge: ServiceCall; refund: ServiceCall }
declare const shipping: { schedule: ServiceCall }
`

/** Type errors of the given modules (virtual files in this folder), each as `name:line: message`. */
const typeErrors = (files: Record<string, string>): Array<string> => {
  const config = ts.getParsedCommandLineOfConfigFile(
    path.join(packageDir, "tsconfig.json"),
    {},
    {
      ...ts.sys,
      onUnRecoverableConfigFileDiagnostic: (d) => {
        throw new Error(ts.flattenDiagnosticMessageText(d.messageText, "\n"))
      }
    }
  )
  if (config === undefined) throw new Error("cannot read tsconfig.json")
  const options: ts.CompilerOptions = {
    ...config.options,
    noEmit: true,
    declaration: false,
    declarationMap: false,
    // The package's own source, not its (possibly stale) dist.
    paths: {
      "@accord/postgres": [path.join(packageDir, "src/index.ts")],
      "@accord/postgres/*": [path.join(packageDir, "src/*.ts")]
    }
  }
  const virtual = new Map(Object.entries(files).map(([name, text]) => [path.join(here, name), text]))
  const host = ts.createCompilerHost(options)
  const { fileExists, readFile, getSourceFile } = host
  host.fileExists = (f) => virtual.has(f) || fileExists.call(host, f)
  host.readFile = (f) => virtual.get(f) ?? readFile.call(host, f)
  host.getSourceFile = (f, language, onError, create) => {
    const text = virtual.get(f)
    return text === undefined
      ? getSourceFile.call(host, f, language, onError, create)
      : ts.createSourceFile(f, text, language, true)
  }
  const program = ts.createProgram([...virtual.keys()], options, host)
  return [...virtual.keys()].flatMap((f) =>
    ts.getPreEmitDiagnostics(program, program.getSourceFile(f)).map((d) => {
      const line =
        d.file && d.start !== undefined ? d.file.getLineAndCharacterOfPosition(d.start).line + 1 : 0
      return `${path.basename(d.file?.fileName ?? f)}:${line}: ${ts.flattenDiagnosticMessageText(d.messageText, " ")}`
    })
  )
}

describe("README snippets", () => {
  it("typecheck as written", { timeout: 60_000 }, () => {
    expect(
      typeErrors({
        "readme-prelude.d.ts": prelude,
        "readme-2pc.ts": twoPhase,
        "readme-facade.ts": facade,
        "readme-saga.ts": saga
      })
    ).toEqual([])
  })
})

/**
 * Runs `source` (TypeScript, ESM) with the packages the README imports; `globals` are the names
 * the reader supplies. Returns the module's exports.
 */
const runModule = async (
  source: string,
  globals: Record<string, unknown>
): Promise<Record<string, unknown>> => {
  const js = ts.transpileModule(source, {
    compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022, esModuleInterop: true }
  }).outputText
  const modules: Record<string, unknown> = {
    "@accord/core": Core,
    "@accord/core/Coordinator": Core.Coordinator,
    "@accord/postgres": AccordPostgres,
    effect: EffectModule,
    postgres: { __esModule: true, default: postgres }
  }
  const require = (name: string) => {
    if (!(name in modules))
      throw new Error(`README snippet imports ${name}, which this test does not provide`)
    return modules[name]
  }
  const exports: Record<string, unknown> = {}
  const AsyncFunction = Object.getPrototypeOf(async () => {}).constructor as new (
    ...args: Array<string>
  ) => (...args: Array<unknown>) => Promise<void>
  const names = Object.keys(globals)
  await new AsyncFunction("require", "exports", ...names, js)(
    require,
    exports,
    ...names.map((n) => globals[n])
  )
  return exports
}

const DBS = {
  accord_bank_a: "accord_t_doc_bank_a",
  accord_bank_b: "accord_t_doc_bank_b",
  accord_coordinator: "accord_t_doc_coordinator"
}

describe.skipIf(server === undefined)("README snippets on PostgreSQL", () => {
  const adminUrl = server?.adminUrl ?? ""
  const urls: Record<string, string> = {}

  beforeAll(async () => {
    for (const [readmeName, name] of Object.entries(DBS))
      urls[readmeName] = await TestDatabase.createDatabase(adminUrl, name)
    for (const name of ["accord_bank_a", "accord_bank_b"]) {
      const sql = postgres(urls[name]!, { max: 1, onnotice: () => {} })
      await sql.unsafe(
        "create table accounts (id int primary key, balance int not null check (balance >= 0)); insert into accounts select g, 100 from generate_series(1, 10) g"
      )
      await sql.end()
    }
  }, 60_000)

  afterAll(async () => {
    for (const name of Object.values(DBS)) await TestDatabase.dropDatabase(adminUrl, name)
  }, 60_000)

  it(
    "the Effect 2PC transfer moves money and refuses an overdraft with its SQLSTATE",
    { timeout: 60_000 },
    async () => {
      let replaced = 0
      const source = twoPhase.replace(/"postgres:\/\/[^"]*\/(accord_\w+)"/g, (whole, name: string) => {
        replaced++
        return urls[name] === undefined ? whole : JSON.stringify(urls[name])
      })
      expect(replaced).toBe(3)
      const { run } = await runModule(
        `${source}
export const run = async () => {
  try {
    return [await Effect.runPromise(transfer(1, 2, 10)), await Effect.runPromise(transfer(3, 4, 1_000))]
  } finally {
    await Promise.all([bankA.end(), bankB.end(), coordinator.end()])
  }
}`,
        {}
      )
      const [moved, refused] = (await (run as () => Promise<Array<string>>)()) as [string, string]
      expect(moved).toBe("moved")
      expect(refused).toMatch(/^refused: bank-a: 23514 .*violates check constraint "accounts_balance_check"/)
      const a = postgres(urls.accord_bank_a!, { max: 1 })
      const b = postgres(urls.accord_bank_b!, { max: 1 })
      try {
        expect(
          (await a`select balance from accounts where id in (1, 3) order by id`).map((r) => r.balance)
        ).toEqual([90, 100])
        expect(
          (await b`select balance from accounts where id in (2, 4) order by id`).map((r) => r.balance)
        ).toEqual([110, 100])
        const mine = new Set(Object.values(DBS))
        expect((await TestDatabase.preparedOnServer(adminUrl)).filter((p) => mine.has(p.database))).toEqual(
          []
        )
      } finally {
        await Promise.all([a.end(), b.end()])
      }
    }
  )

  it(
    "the Promise 2PC facade commits its transfer, then ends its pools (the process can exit)",
    { timeout: 60_000 },
    async () => {
      const sqlB = postgres(urls.accord_bank_b!, { max: 2, onnotice: () => {} })
      const a = postgres(urls.accord_bank_a!, { max: 1 })
      try {
        const bankB = await AccordPostgres.PgParticipant.makePromise({
          name: "bank-b",
          sql: sqlB,
          operations: {
            credit: (s, p: { account: number; amount: number }) =>
              s.query("update accounts set balance = balance + $1 where id = $2", [p.amount, p.account])
          }
        })
        const balanceA1 = async () =>
          (await a`select balance from accounts where id = 1`)[0]!.balance as number
        const before = await balanceA1()
        const { result, sqlA, sqlCoordinator } = await runModule(
          `${facade}\nexport { result, sqlA, sqlCoordinator }`,
          { urlA: urls.accord_bank_a, coordinatorUrl: urls.accord_coordinator, bankB }
        )
        expect((result as { committed: boolean }).committed).toBe(true)
        expect(await balanceA1()).toBe(before - 11)
        // The snippet ended the pools it made: a statement on them now fails at once.
        for (const pool of [sqlA, sqlCoordinator] as Array<postgres.Sql>) {
          await expect(pool`select 1`).rejects.toMatchObject({ code: "CONNECTION_ENDED" })
        }
      } finally {
        await Promise.all([sqlB.end(), a.end()])
      }
    }
  )

  it("the saga runs its steps in order on PgSagaLog and completes", { timeout: 60_000 }, async () => {
    const calls: Array<string> = []
    const call = (what: string) => (key: string) =>
      Effect.sync(() => {
        calls.push(`${what} ${key.split("/")[1]}`)
        return what
      })
    const sql = postgres(urls.accord_coordinator!, { max: 4, onnotice: () => {} })
    try {
      const { outcome } = await runModule(`${saga}\nexport { outcome }`, {
        sql,
        orders: { create: call("create"), cancel: call("cancel") },
        stock: { reserve: call("reserve"), release: call("release") },
        payments: { charge: call("charge"), refund: call("refund") },
        shipping: { schedule: call("schedule") }
      })
      expect((outcome as Core.Saga.Outcome)._tag).toBe("Completed")
      expect(calls[0]).toBe("create create-order")
      expect([...calls.slice(1, 3)].sort()).toEqual(["charge charge", "reserve reserve"])
      expect(calls[3]).toBe("schedule ship")
    } finally {
      await sql.end()
    }
  })
})
