/**
 * Pieces several commands share: paging through lists, printing an answer, following an
 * asynchronous job, and hints on refused requests.
 */
import type { Job, JobAccepted, Page } from '../api-types.js';
import {
  addHint,
  type CommandContext,
  ExitCode,
  type OptionSpec,
  optFlag,
  optString,
  parseFlag,
  UsageError,
} from '../command.js';
import { parseDuration } from '../format.js';
import { CliApiError, type Query } from '../http-client.js';
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

/**
 * Prints a page: JSON as received, else the rendered table (or ids with --quiet). `render` gets the
 * command's clock for tables that show ages.
 */
export function printList<T extends object>(
  ctx: CommandContext,
  page: Page<T>,
  noun: string,
  render: (items: T[], now: Date) => string,
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
    out.print(render(page.items, ctx.now));
  }
  if (page.cursor && !out.json) {
    out.note(`More ${noun}: add --cursor ${page.cursor} (or --all).`);
  }
}

/**
 * Prints what a command answers: `data` as JSON with --json; otherwise, if it succeeded, `id` alone
 * with --quiet, else the sentence. After a failure (a failed or timed-out job, already reported on
 * stderr) only the JSON is printed. A `sentence` function is called only when the sentence is shown.
 */
export function printResult(
  ctx: CommandContext,
  data: unknown,
  id: string,
  sentence: string | (() => string),
  exitCode: number = ExitCode.Ok,
): void {
  const { out } = ctx;
  if (out.json) out.data(data);
  else if (exitCode !== ExitCode.Ok) return;
  else if (out.quiet) out.print(id);
  else out.print(typeof sentence === 'function' ? sentence() : sentence);
}

/**
 * The answer of an asynchronous command run with --no-wait: the accepted body with --json, the job
 * id with --quiet, else `<subject>: job <id> <state>.` and how to follow the job.
 */
export function printStarted(ctx: CommandContext, accepted: { job: Job }, subject: string): number {
  const { out } = ctx;
  if (out.json) out.data(accepted);
  else if (out.quiet) out.print(accepted.job.id);
  else {
    out.print(`${subject}: job ${accepted.job.id} ${accepted.job.state}.`);
    out.note(`Follow it with: strata jobs wait ${accepted.job.id}`);
  }
  return ExitCode.Ok;
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

/** What {@link finishJob} prints about a command that answers with a bare job. */
export interface JobOutcome {
  /** The id the command acted on, printed alone with --quiet. */
  id: string;
  /** The subject of the --no-wait line, e.g. `Deleting volume vol-1`. */
  started: string;
  /** The sentence once the job has succeeded. */
  done: (job: Job) => string;
  /** Return at once instead of following the job (default: the --no-wait flag). */
  noWait?: boolean;
}

/**
 * The tail of an asynchronous command that answers with a bare job (`{ job }`): print it at once
 * with --no-wait ({@link printStarted}), otherwise follow it and print `{ job }` with --json, the
 * id with --quiet, or the sentence.
 */
export async function finishJob(
  ctx: CommandContext,
  timeoutMs: number,
  accepted: { job: Job },
  what: JobOutcome,
): Promise<number> {
  if (what.noWait ?? optFlag(ctx.values, 'no-wait')) return printStarted(ctx, accepted, what.started);
  const { job, exitCode } = await followJob(ctx, accepted.job, timeoutMs);
  printResult(ctx, { job }, what.id, () => what.done(job), exitCode);
  return exitCode;
}

/**
 * A finished job's result as the shape its kind documents. Partial: the CLI reads what a server sent
 * and must not crash on a field an older or newer one leaves out.
 */
export function resultAs<T>(job: Job): Partial<T> {
  return (job.result ?? {}) as Partial<T>;
}

/** What {@link followForResult} hands back: the result only when the job succeeded. */
export interface JobResult<T> {
  exitCode: number;
  result?: Partial<T>;
}

/**
 * The first half of an asynchronous command whose job's result is what the command asked for (a
 * URI, an inventory, a probe report): print the job at once with --no-wait ({@link printStarted}),
 * otherwise follow it. When the job fails or the wait times out it is reported on stderr and, with
 * --json, printed as `{ job }` so that scripts see its error; the caller prints a result only when
 * one comes back.
 */
export async function followForResult<T>(
  ctx: CommandContext,
  timeoutMs: number,
  accepted: JobAccepted,
  started: string,
): Promise<JobResult<T>> {
  if (optFlag(ctx.values, 'no-wait')) return { exitCode: printStarted(ctx, accepted, started) };
  const { job, exitCode } = await followJob(ctx, accepted.job, timeoutMs);
  if (exitCode === ExitCode.Ok) return { exitCode, result: resultAs<T>(job) };
  if (ctx.out.json) ctx.out.data({ job });
  return { exitCode };
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
 * job at once with --no-wait, otherwise follow it and show the entity as it ended up. `done` gets
 * the finished job too, for commands that report what it did.
 */
export async function finishAccepted<T extends { id: string; name: string }>(
  ctx: CommandContext,
  timeoutMs: number,
  accepted: { job: Job },
  what: AcceptedEntity<T>,
  done: (entity: T, job: Job) => string,
): Promise<number> {
  if (optFlag(ctx.values, 'no-wait')) {
    return printStarted(ctx, accepted, `${what.noun} ${what.entity.name} (${what.entity.id})`);
  }
  const { job, exitCode } = await followJob(ctx, accepted.job, timeoutMs);
  const entity = await what.refetch(what.entity.id).catch(() => what.entity);
  printResult(ctx, { [what.key]: entity, job }, entity.id, () => done(entity, job), exitCode);
  return exitCode;
}

/**
 * Runs an API request and, when the API refuses it with an error for which `hint` has advice,
 * attaches that advice (printed under the error) before passing the error on.
 */
export async function withHint<T>(
  request: () => Promise<T>,
  hint: (error: CliApiError) => string | undefined,
): Promise<T> {
  try {
    return await request();
  } catch (error) {
    if (error instanceof CliApiError) {
      const advice = hint(error);
      if (advice !== undefined) addHint(error, advice);
    }
    throw error;
  }
}

/** The state a 409 answer says the entity is in, if it says one. */
export function conflictState(error: CliApiError): string | undefined {
  const state = error.status === 409 ? error.extra['state'] : undefined;
  return typeof state === 'string' ? state : undefined;
}

/** How to find the job that holds an entity. */
export function runningJobs(id: string): string {
  return `strata jobs list --target ${id} --state running`;
}

/**
 * Makes the guard for requests against one kind of entity: when the API refuses a request because
 * the entity is in the middle of something (409 with one of the `busy` states), the hint says so
 * and how to find the job it waits for.
 */
export function busyGuard(noun: string, busy: ReadonlySet<string>) {
  return <T>(id: string, request: () => Promise<T>): Promise<T> =>
    withHint(request, (error) => {
      const state = conflictState(error);
      return state !== undefined && busy.has(state)
        ? `${noun} ${id} is ${state}; try again when its job ends (${runningJobs(id)})`
        : undefined;
    });
}
