import * as TestDatabase from "@accord/postgres/TestDatabase"
import * as Server from "../../src/Server.js"

/** Drops the three databases a test's `Server.setup(adminUrl, prefix)` created. */
export const dropSetup = async (adminUrl: string, prefix: string): Promise<void> => {
  for (const name of Object.values(Server.databaseNames(prefix)))
    await TestDatabase.dropDatabase(adminUrl, name)
}
