#!/usr/bin/env node
/**
 * `node apps/bench/dist/profile.js FILE.cpuprofile... [top]`: summarises V8 CPU profiles written by
 * `node --cpu-prof`: self time by function and by package, so the hot path can be read without a
 * flame-graph viewer.
 *
 * @since 0.1.0
 */
import { readFileSync } from "node:fs"
import { type Profile, summarise } from "./ProfileSummary.js"

// Every argument that is not a number is a profile; their samples are summed (a run under
// `--cpu-prof` writes one file per thread). A number sets how many functions to list.
const args = process.argv.slice(2)
const files = args.filter((a) => !/^\d+$/.test(a))
const topArg = args.find((a) => /^\d+$/.test(a))
if (files.length === 0) {
  process.stderr.write("usage: profile.js FILE.cpuprofile... [top]\n")
  process.exit(2)
}
const profiles = files.map((file) => JSON.parse(readFileSync(file, "utf8")) as Profile)
process.stdout.write(summarise(files.join(", "), profiles, Number(topArg ?? 30)))
