/**
 * Progress of a byte transfer (hashing or uploading a file), as opposed to a server-side job's.
 */
import { formatBytes } from './format.js';
import type { ProgressStream } from './progress.js';

export interface ByteProgress {
  /** Counts bytes done; negative when a failed attempt's bytes have to be sent again. */
  add(bytes: number): void;
  /** Draws the final state (and ends the redrawn line on a TTY). */
  finish(): void;
}

export const silentByteProgress: ByteProgress = { add() {}, finish() {} };

const BAR_WIDTH = 24;
// Chunks arrive every 64 KiB; redrawing for each would flood a slow terminal for no visible gain.
const REDRAW_EVERY_MS = 100;
// Plain output gets one line per tenth, so a CI log shows movement without thousands of lines.
const PLAIN_STEPS = 10;

function bar(fraction: number): string {
  const filled = Math.round(fraction * BAR_WIDTH);
  return `[${'#'.repeat(filled)}${'-'.repeat(BAR_WIDTH - filled)}] ${String(Math.floor(fraction * 100)).padStart(3)}%`;
}

/**
 * One bar redrawn in place on a terminal; elsewhere a plain line at every tenth reached (never
 * repeated when a retried part makes the count go back), like the job display.
 */
export function createByteProgress(
  stream: ProgressStream,
  label: string,
  totalBytes: number,
  now: () => number = Date.now,
): ByteProgress {
  let done = 0;
  const fraction = () => (totalBytes > 0 ? Math.min(1, Math.max(0, done / totalBytes)) : 1);
  const amounts = () => `${formatBytes(done)} of ${formatBytes(totalBytes)}`;
  if (stream.isTTY) {
    let lastDraw = Number.NEGATIVE_INFINITY;
    const draw = () => {
      let line = `${label} ${bar(fraction())} ${amounts()}`;
      const columns = stream.columns ?? 0;
      if (columns > 10 && line.length >= columns) line = `${line.slice(0, columns - 2)}…`;
      stream.write(`\r${line}\x1b[K`);
      lastDraw = now();
    };
    return {
      add(bytes) {
        done += bytes;
        if (now() - lastDraw >= REDRAW_EVERY_MS) draw();
      },
      finish() {
        draw();
        stream.write('\n');
      },
    };
  }
  let printedStep = 0;
  return {
    add(bytes) {
      done += bytes;
      const step = Math.floor(fraction() * PLAIN_STEPS);
      if (step > printedStep && step < PLAIN_STEPS) {
        printedStep = step;
        stream.write(`${label} ${step * (100 / PLAIN_STEPS)}% (${amounts()})\n`);
      }
    },
    finish() {
      // The last line is always printed once, at the end, so it also says how far a failed run got.
      stream.write(`${label} ${Math.floor(fraction() * 100)}% (${amounts()})\n`);
    },
  };
}
