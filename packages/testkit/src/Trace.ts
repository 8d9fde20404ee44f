/**
 * The trace of one simulated run: every scheduled fault and every protocol step, stamped with
 * virtual time, so that a failing seed reads as a story and replays exactly.
 *
 * @since 0.1.0
 */

/**
 * A trace being recorded.
 * @since 0.1.0
 */
export interface Trace {
  /** Records one line at the current virtual time. */
  readonly add: (who: string, what: string) => void
  /** The lines so far. */
  readonly lines: ReadonlyArray<string>
}

/**
 * A trace reading time from `now` (virtual milliseconds), relative to `start`.
 * @since 0.1.0
 */
export const make = (now: () => number, start: number): Trace => {
  const lines: Array<string> = []
  return {
    add: (who, what) => {
      lines.push(`${String(Math.round(now() - start)).padStart(6)}ms  ${who.padEnd(12)} ${what}`)
    },
    lines
  }
}
