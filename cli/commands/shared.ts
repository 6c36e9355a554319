/**
 * Pieces several commands share: paging through lists and following an asynchronous job.
 */
import type { Job, Page } from '../api-types.js';
import {
  type CommandContext,
  ExitCode,
  type OptionSpec,
  optFlag,
  optString,
  parseFlag,
  UsageError,
} from '../command.js';
import { parseDuration } from '../format.js';
import type { Query } from '../http-client.js';
import { JobWaitTimeoutError, waitForJob } from '../progress.js';

export const PAGE_OPTIONS: Record<string, OptionSpec> = {
  limit: { type: 'string', valueName: '<n>', description: 'at most n items per page' },
  cursor: { type: 'string', valueName: '<cursor>', description: 'continue from a previous page' },
  all: { type: 'boolean', description: 'follow cursors and fetch every page' },
};

export const WAIT_OPTIONS: Record<string, OptionSpec> = {
  'no-wait': { type: 'boolean', description: 'return at once, printing the job id' },
  timeout: {
    type: 'string',
    valueName: '<duration>',
    description: 'stop waiting after this long, e.g. 90s, 10m (default 30m; 0 waits forever)',
  },
};

const DEFAULT_WAIT_TIMEOUT_MS = 30 * 60_000;
const MAX_JOB_ERROR_CHARS = 500;

function parseLimit(text: string): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1) throw new Error(`'${text}' is not a positive whole number`);
  return n;
}

/**
 * Fetches one page (or all of them with --all). Returns what to print: with --all a single merged
 * page without a cursor.
 */
export async function fetchList<T>(
  ctx: CommandContext,
  command: string,
  filters: Query,
  fetchPage: (query: Query) => Promise<Page<T>>,
): Promise<Page<T>> {
  const limit = parseFlag(ctx.values, 'limit', command, parseLimit);
  let cursor = optString(ctx.values, 'cursor');
  if (!optFlag(ctx.values, 'all')) return fetchPage({ ...filters, limit, cursor });
  const items: T[] = [];
  const seen = new Set<string>();
  for (;;) {
    const page = await fetchPage({ ...filters, limit, cursor });
    items.push(...page.items);
    // A server that hands back a cursor it already gave would otherwise keep us here forever.
    if (!page.cursor || seen.has(page.cursor)) return { items };
    seen.add(page.cursor);
    cursor = page.cursor;
  }
}

/** Prints a page: JSON as received, else the rendered table (or ids with --quiet). */
export function printList<T extends object>(
  ctx: CommandContext,
  page: Page<T>,
  noun: string,
  render: (items: T[]) => string,
  idOf: (item: T) => string,
): void {
  const { out } = ctx;
  if (out.json) {
    out.data(page);
  } else if (out.quiet) {
    for (const item of page.items) out.print(idOf(item));
  } else if (page.items.length === 0) {
    out.note(`No ${noun} found.`);
  } else {
    out.print(render(page.items));
  }
  if (page.cursor && !out.json) {
    out.note(`More ${noun}: add --cursor ${page.cursor} (or --all).`);
  }
}

export function waitTimeout(ctx: CommandContext, command: string): number {
  return parseFlag(ctx.values, 'timeout', command, parseDuration) ?? DEFAULT_WAIT_TIMEOUT_MS;
}

export interface FollowResult {
  job: Job;
  exitCode: number;
}

/**
 * Waits for a job with the progress display, and reports a failure or timeout on stderr.
 * The caller prints the success result. `timeoutMs` comes from {@link waitTimeout}, called before
 * the request that started the job so that a bad flag cannot leave a job behind.
 */
export async function followJob(ctx: CommandContext, job: Job, timeoutMs: number): Promise<FollowResult> {
  try {
    const final = await waitForJob(ctx.client, job.id, {
      initial: job,
      timeoutMs,
      reporter: ctx.out.progress(),
      ...(ctx.poll ? { poll: ctx.poll } : {}),
      ...(ctx.sleep ? { sleep: ctx.sleep } : {}),
    });
    if (final.state === 'failed') {
      const message = final.error?.message ?? '';
      // Workflow errors can carry whole nested traces; the full text stays one command away.
      const shown =
        message.length > MAX_JOB_ERROR_CHARS ? `${message.slice(0, MAX_JOB_ERROR_CHARS)}…` : message;
      const reason = final.error ? `${final.error.code}: ${shown}` : 'no error details';
      ctx.out.error(`Error: job ${final.id} (${final.kind}) failed: ${reason}`);
      if (shown !== message) ctx.out.error(`Hint: the full error is in: strata jobs get ${final.id} --json`);
      return { job: final, exitCode: ExitCode.Failure };
    }
    return { job: final, exitCode: ExitCode.Ok };
  } catch (error) {
    if (error instanceof JobWaitTimeoutError) {
      ctx.out.error(`Error: ${error.message}`);
      return { job: error.job, exitCode: ExitCode.Timeout };
    }
    throw error;
  }
}

export function oneOf<T extends string>(allowed: readonly T[]) {
  return (text: string): T => {
    if ((allowed as readonly string[]).includes(text)) return text as T;
    throw new Error(`'${text}' is not one of ${allowed.join(', ')}`);
  };
}

export function rejectUnless(condition: boolean, message: string, command: string): void {
  if (!condition) throw new UsageError(message, command);
}

/** The entity an asynchronous command answered with, and how to read it again once the job ends. */
export interface AcceptedEntity<T extends { id: string; name: string }> {
  /** The JSON key it is printed under, e.g. `store` in `{ store, job }`. */
  key: string;
  /** The human word for it, e.g. `Store`. */
  noun: string;
  entity: T;
  refetch: (id: string) => Promise<T>;
}

/**
 * The shared tail of every asynchronous command that answers with an entity and a job: print the
 * job at once with --no-wait, otherwise follow it and show the entity as it ended up.
 */
export async function finishAccepted<T extends { id: string; name: string }>(
  ctx: CommandContext,
  timeoutMs: number,
  accepted: { job: Job },
  what: AcceptedEntity<T>,
  done: (entity: T) => string,
): Promise<number> {
  const { out } = ctx;
  if (optFlag(ctx.values, 'no-wait')) {
    if (out.json) out.data(accepted);
    else if (out.quiet) out.print(accepted.job.id);
    else {
      out.print(
        `${what.noun} ${what.entity.name} (${what.entity.id}): job ${accepted.job.id} ${accepted.job.state}.`,
      );
      out.note(`Follow it with: strata jobs wait ${accepted.job.id}`);
    }
    return ExitCode.Ok;
  }
  const { job, exitCode } = await followJob(ctx, accepted.job, timeoutMs);
  const entity = await what.refetch(what.entity.id).catch(() => what.entity);
  if (out.json) out.data({ [what.key]: entity, job });
  else if (exitCode === ExitCode.Ok) {
    if (out.quiet) out.print(entity.id);
    else out.print(done(entity));
  }
  return exitCode;
}
