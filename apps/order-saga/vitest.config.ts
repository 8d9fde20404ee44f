import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    globalSetup: ["./test/support/build.ts"],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // The end-to-end runs start processes and databases: one file at a time on a 2-core machine.
    fileParallelism: false
  }
})
