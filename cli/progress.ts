/**
 * Waiting on a job: poll GET /jobs/{id} with backoff and show progress while doing so.
 */
import type { Job } from './api-types.js';
import { formatDuration, jobStateLabel } from './format.js';
import { CliApiError, CliConnectionError } from './http-client.js';

export interface ProgressStream {
  write(chunk: string): unknown;
  isTTY?: boolean;
  columns?: number;
}

export interface ProgressReporter {
  update(job: Job): void;
  /** Finishes the display (ends the redrawn line on a TTY). */
  finish(job: Job): void;
}

export const silentReporter: ProgressReporter = { update() {}, finish() {} };

const BAR_WIDTH = 24;

function detailText(job: Job): string {
  const detail = job.progressDetail;
  if (!detail) return '';
  for (const key of ['message', 'step', 'phase']) {
    const value = detail[key];
    if (typeof value === 'string' && value) return value;
  }
  return '';
}

function bar(progress: number): string {
  const clamped = Math.min(100, Math.max(0, progress));
  const filled = Math.round((clamped / 100) * BAR_WIDTH);
  return `[${'#'.repeat(filled)}${'-'.repeat(BAR_WIDTH - filled)}] ${String(Math.round(clamped)).padStart(3)}%`;
}

/**
 * A bar redrawn in place on a terminal; on anything else (CI logs, pipes) one plain line per change,
 * because carriage returns turn log files into a single unreadable line.
 */
export function createProgressReporter(stream: ProgressStream): ProgressReporter {
  if (stream.isTTY) {
    let drawn = false;
    const draw = (job: Job) => {
      const detail = detailText(job);
      let line = `${job.kind} ${job.id} ${bar(job.progress)} ${job.state}${detail ? ` · ${detail}` : ''}`;
      const columns = stream.columns ?? 0;
      if (columns > 10 && line.length >= columns) line = `${line.slice(0, columns - 2)}…`;
      // \r returns to column 0, \x1b[K clears what a longer previous line left behind.
      stream.write(`\r${line}\x1b[K`);
      drawn = true;
    };
    return {
      update: draw,
      finish(job) {
        draw(job);
        if (drawn) stream.write('\n');
      },
    };
  }
  let last = '';
  const print = (job: Job) => {
    const detail = detailText(job);
    const line = `job ${job.id} ${jobStateLabel(job)}${detail ? ` (${detail})` : ''}`;
    if (line !== last) stream.write(`${line}\n`);
    last = line;
  };
  return { update: print, finish: print };
}

export class JobWaitTimeoutError extends Error {
  override readonly name = 'JobWaitTimeoutError';
  constructor(
    readonly job: Job,
    readonly waitedMs: number,
  ) {
    super(
      `gave up waiting for job ${job.id} after ${formatDuration(waitedMs)}; it is still ${jobStateLabel(job)} ` +
        `and carries on server-side (follow it with: strata jobs wait ${job.id})`,
    );
  }
}

export interface PollOptions {
  initialMs: number;
  maxMs: number;
  factor: number;
}

export const DEFAULT_POLL: PollOptions = { initialMs: 500, maxMs: 5_000, factor: 1.5 };

export interface WaitOptions {
  /** 0 or undefined: no limit. */
  timeoutMs?: number;
  poll?: PollOptions;
  reporter?: ProgressReporter;
  /** A job already in hand (from the 202 answer) saves the first round trip. */
  initial?: Job;
  now?: () => number;
  sleep?: (ms: number) => Promise<void>;
}

export interface JobSource {
  getJob(id: string): Promise<Job>;
}

const TERMINAL = new Set(['succeeded', 'failed']);

// A poll that fails on its own (a dropped connection, a 5xx from a redeploying API) must not abort a
// long wait: the job runs on server-side regardless. Give up only when failures keep coming.
const MAX_CONSECUTIVE_POLL_FAILURES = 3;

function isRetryablePollError(error: unknown): boolean {
  return error instanceof CliConnectionError || (error instanceof CliApiError && error.status >= 500);
}

/** Polls until the job succeeds or fails, and returns it. Throws JobWaitTimeoutError on timeout. */
export async function waitForJob(source: JobSource, jobId: string, options: WaitOptions = {}): Promise<Job> {
  const poll = options.poll ?? DEFAULT_POLL;
  const reporter = options.reporter ?? silentReporter;
  const now = options.now ?? Date.now;
  const sleep = options.sleep ?? ((ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms)));
  const started = now();
  const deadline = options.timeoutMs ? started + options.timeoutMs : Number.POSITIVE_INFINITY;

  let job = options.initial;
  let delay = poll.initialMs;
  let failures = 0;
  for (;;) {
    if (job) {
      if (TERMINAL.has(job.state)) {
        reporter.finish(job);
        return job;
      }
      reporter.update(job);
    }
    const remaining = deadline - now();
    if (remaining <= 0) {
      const last = job ?? (await source.getJob(jobId));
      reporter.finish(last);
      throw new JobWaitTimeoutError(last, now() - started);
    }
    if (job) {
      await sleep(Math.min(delay, remaining));
      delay = Math.min(poll.maxMs, delay * poll.factor);
    }
    try {
      job = await source.getJob(jobId);
      failures = 0;
    } catch (error) {
      failures++;
      if (!isRetryablePollError(error) || failures >= MAX_CONSECUTIVE_POLL_FAILURES || !job) throw error;
    }
  }
}
