/**
 * The embedded stack's EventBridge Scheduler: the REST-JSON operations Strata uses (Create, Get,
 * Update, Delete and List schedules, Get and List schedule groups), SigV4-verified and
 * IAM-authorized, with the schedules kept in a file in the data directory and fired by timers. It
 * speaks the wire protocol @aws-sdk/client-scheduler sends, so the product's own adapter
 * (functions/adapters/aws/scheduler-schedules.ts) runs against it unchanged.
 *
 * As Scheduler does: Create and Update also need `iam:PassRole` on the target's role (for
 * scheduler.amazonaws.com), a schedule lives in a group the template created (or `default`), a
 * firing substitutes `<aws.scheduler.scheduled-time>` and friends into the target input and is
 * retried per the target's RetryPolicy, and a slot missed while the stack was stopped is not made up.
 * `cron()` fields are read in the schedule's time zone; `rate()` counts from the schedule's creation.
 *
 * Not served: `at()` one-time schedules (refused with a ValidationException that says so),
 * ActionAfterCompletion DELETE (kept and returned, never acted on), flexible windows (a FLEXIBLE
 * schedule fires at the slot itself), dead-letter queues, KMS keys, tags and idempotency tokens.
 */
import { randomUUID } from 'node:crypto';
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import type { Logger } from '../../../drivers/sdk/types.js';
import {
  checkTimeZone,
  nextFireTime,
  parseSchedule,
  type Schedule,
} from '../../../functions/core/schedule.js';
import { AwsServiceError, type LocalEndpoint, listen, type RequestTap, readBody } from './aws-server.js';
import { AccessDeniedError, type IamAuthorizer } from './iam-authorizer.js';
import type { LocalAccount, LocalCredentialStore } from './principals.js';
import { SignatureError, verifySignature } from './sigv4-verify.js';

/** A schedule's target as Scheduler keeps it (members Strata does not use are kept as given). */
export interface ScheduleTarget {
  Arn: string;
  RoleArn: string;
  Input?: string;
  RetryPolicy?: { MaximumEventAgeInSeconds?: number; MaximumRetryAttempts?: number };
  DeadLetterConfig?: { Arn?: string };
}

/** The schedule a firing comes from. */
export interface FiredSchedule {
  Arn: string;
  GroupName: string;
  Name: string;
}

/** One delivery attempt of a slot, as the service hands it to `invoke`. */
export interface SchedulerFiring {
  /** The target, its input with the context placeholders filled in (`{}` when it has none). */
  target: ScheduleTarget & { Input: string };
  /** The slot, as Scheduler writes it: `2026-12-03T13:00:00Z`. */
  scheduledTime: string;
  schedule: FiredSchedule;
  /** 1 for the first delivery of the slot, then 2, 3… for retries. */
  attempt: number;
}

interface StoredSchedule {
  Name: string;
  GroupName: string;
  ScheduleExpression: string;
  ScheduleExpressionTimezone: string;
  FlexibleTimeWindow: { Mode: 'OFF' | 'FLEXIBLE'; MaximumWindowInMinutes?: number };
  Target: ScheduleTarget;
  State: 'ENABLED' | 'DISABLED';
  Description?: string;
  ActionAfterCompletion?: 'NONE' | 'DELETE';
  KmsKeyArn?: string;
  /** ISO strings, like the two below. */
  StartDate?: string;
  EndDate?: string;
  CreationDate: string;
  LastModificationDate: string;
}

/** The timer functions the service uses (tests drive time with their own). */
export interface SchedulerTimers {
  setTimeout(fire: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

const realTimers: SchedulerTimers = {
  // Unreferenced: a pending schedule must not keep a process alive that is otherwise done.
  setTimeout: (fire, ms) => setTimeout(fire, ms).unref(),
  clearTimeout: (handle) => clearTimeout(handle as NodeJS.Timeout),
};
/** setTimeout's longest delay (about 24.8 days); longer waits re-arm on the way. */
const MAX_TIMER_MS = 2 ** 31 - 1;
/** Schedule and group names (Scheduler's pattern and length). */
const NAME = /^[0-9a-zA-Z-_.]{1,64}$/;
const ROLE_ARN = /^arn:aws(-[a-z]+)?:iam::\d{12}:role\/[\w+=,.@/-]+$/;
/** Scheduler's defaults when a target has no RetryPolicy. */
const DEFAULT_RETRY_ATTEMPTS = 185;
const DEFAULT_EVENT_AGE_SECONDS = 86_400;
const DEFAULT_RETRY_DELAY_MS = 1_000;
const MAX_RETRY_DELAY_MS = 5 * 60_000;

/** Options of {@link startSchedulerService}. */
/** The caller was killed as it made this request: it is not served. */
class CallerKilled extends Error {}

export interface SchedulerServiceOptions {
  account: LocalAccount;
  credentials: LocalCredentialStore;
  authorizer: IamAuthorizer;
  /** The schedule groups that exist (the template's AWS::Scheduler::ScheduleGroup names), besides `default`. */
  groups: readonly string[];
  /** Where schedules are kept across restarts (a JSON file, replaced atomically on every change). */
  stateFile: string;
  /** Delivers one attempt of a firing; a rejection is retried per the target's RetryPolicy. */
  invoke: (firing: SchedulerFiring) => Promise<void>;
  /** What "now" is for slots (requests are still signed and checked against real time). */
  clock?: { now(): Date };
  timers?: SchedulerTimers;
  /** Crash points (the crash matrix); absent in `npm start`. */
  faults?: RequestTap;
  /**
   * The first pause before retrying a failed delivery, doubled on each retry up to five minutes
   * (default one second). Tests set 0. The pauses run on `timers`.
   */
  retryDelayMs?: number;
  logger?: Logger;
  port?: number;
}

/** The service, and its test hooks. */
export interface LocalScheduler extends LocalEndpoint {
  /** When a schedule fires next; undefined when it does not exist or will not fire again. */
  nextFire(group: string, name: string): Date | undefined;
  /** The names of every schedule, as `group/name`. */
  names(): string[];
}

interface Armed {
  schedule: StoredSchedule;
  parsed: Schedule;
  next?: Date;
  handle?: unknown;
}

const epochSeconds = (iso: string) => Date.parse(iso) / 1000;

const invalid = (message: string) => new AwsServiceError('ValidationException', message, 400);
const notFound = (message: string) => new AwsServiceError('ResourceNotFoundException', message, 404);

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function optionalString(body: Record<string, unknown>, member: string, max: number): string | undefined {
  const value = body[member];
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'string' || value.length < 1 || value.length > max) {
    throw invalid(`${member} must be a string of 1 to ${max} characters`);
  }
  return value;
}

function integerIn(value: unknown, member: string, min: number, max: number): number | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw invalid(`${member} must be an integer from ${min} to ${max}`);
  }
  return value;
}

/** A timestamp member: the SDK sends epoch seconds in JSON bodies. */
function optionalDate(body: Record<string, unknown>, member: string): string | undefined {
  const value = body[member];
  if (value === undefined || value === null) return undefined;
  const ms = typeof value === 'number' ? value * 1000 : typeof value === 'string' ? Date.parse(value) : NaN;
  if (!Number.isFinite(ms)) throw invalid(`${member} is not a timestamp`);
  return new Date(ms).toISOString();
}

/** `2026-12-03T13:00:00Z`: Scheduler's form of a time in context attributes (no milliseconds). */
function schedulerTime(date: Date): string {
  return `${date.toISOString().slice(0, 19)}Z`;
}

/**
 * Starts the local Scheduler on 127.0.0.1, re-arming the schedules `stateFile` kept.
 *
 * @example
 * const scheduler = await startSchedulerService({ account, credentials, authorizer,
 *   groups: ['Strata-snapshot-policies'], stateFile: path.join(dataDir, 'scheduler', 'schedules.json'),
 *   invoke: async ({ target }) => startExecution(target.Arn, target.Input) });
 * new SchedulerClient({ endpoint: scheduler.url, region, credentials });
 */
export async function startSchedulerService(options: SchedulerServiceOptions): Promise<LocalScheduler> {
  const clock = options.clock ?? { now: () => new Date() };
  const timers = options.timers ?? realTimers;
  const { region, accountId } = options.account;
  const groups = new Set(['default', ...options.groups]);
  const armed = new Map<string, Armed>();
  /** Retry pauses under way, so close() can end them at once. */
  const pauses = new Map<unknown, () => void>();
  const deliveries = new Set<Promise<void>>();
  let stopped = false;
  let saving: Promise<void> = Promise.resolve();

  const key = (group: string, name: string) => `${group}/${name}`;
  const arnOf = (group: string, name: string) =>
    `arn:aws:scheduler:${region}:${accountId}:schedule/${group}/${name}`;
  const groupArnOf = (group: string) => `arn:aws:scheduler:${region}:${accountId}:schedule-group/${group}`;

  /** Writes every schedule; writes are queued so an older snapshot never lands after a newer one. */
  const save = (): Promise<void> => {
    const snapshot = [...armed.values()].map((a) => a.schedule);
    // A failed write must not poison the queue: the next change writes the whole state again.
    const write = saving
      .catch(() => undefined)
      .then(async () => {
        await mkdir(path.dirname(options.stateFile), { recursive: true });
        const temp = `${options.stateFile}.${process.pid}.tmp`;
        await writeFile(temp, `${JSON.stringify(snapshot, null, 2)}\n`);
        // rename() replaces the file in one step: a crash leaves the old state or the new, never half.
        await rename(temp, options.stateFile);
      });
    saving = write;
    return write;
  };

  const disarm = (id: string) => {
    const entry = armed.get(id);
    if (entry?.handle !== undefined) timers.clearTimeout(entry.handle);
    armed.delete(id);
  };

  const pause = (ms: number) =>
    new Promise<void>((resolve) => {
      const handle = timers.setTimeout(() => {
        pauses.delete(handle);
        resolve();
      }, ms);
      pauses.set(handle, resolve);
    });

  /** Delivers one slot, retrying as the target's RetryPolicy allows, then gives up with a log. */
  const deliver = async (schedule: StoredSchedule, at: Date) => {
    const scheduledTime = schedulerTime(at);
    const fired: FiredSchedule = {
      Arn: arnOf(schedule.GroupName, schedule.Name),
      GroupName: schedule.GroupName,
      Name: schedule.Name,
    };
    const policy = schedule.Target.RetryPolicy;
    const attempts = 1 + (policy?.MaximumRetryAttempts ?? DEFAULT_RETRY_ATTEMPTS);
    const maxAgeMs = (policy?.MaximumEventAgeInSeconds ?? DEFAULT_EVENT_AGE_SECONDS) * 1000;
    const baseDelay = options.retryDelayMs ?? DEFAULT_RETRY_DELAY_MS;
    for (let attempt = 1; ; attempt++) {
      // Each attempt is its own invocation: its own execution id and attempt number, the same slot.
      const input = (schedule.Target.Input ?? '{}')
        .replaceAll('<aws.scheduler.scheduled-time>', scheduledTime)
        .replaceAll('<aws.scheduler.schedule-arn>', fired.Arn)
        .replaceAll('<aws.scheduler.execution-id>', randomUUID())
        .replaceAll('<aws.scheduler.attempt-number>', String(attempt));
      try {
        await options.invoke({
          target: { ...schedule.Target, Input: input },
          scheduledTime,
          schedule: fired,
          attempt,
        });
        return;
      } catch (error) {
        const delay = Math.min(baseDelay * 2 ** (attempt - 1), MAX_RETRY_DELAY_MS);
        const age = clock.now().getTime() - at.getTime();
        const giveUp = attempt >= attempts || age + delay > maxAgeMs || stopped;
        const fields = {
          schedule: fired.Arn,
          scheduledTime,
          attempt,
          error: (error as Error)?.message ?? String(error),
        };
        if (giveUp) {
          options.logger?.error('schedule target not invoked: the firing is dropped', fields);
          return;
        }
        options.logger?.warn('schedule target not invoked: retrying', fields);
        await pause(delay);
        if (stopped) return;
      }
    }
  };

  const nextSlot = (entry: Armed, after: Date): Date | undefined => {
    const { schedule } = entry;
    if (schedule.State !== 'ENABLED') return undefined;
    // StartDate is inclusive: a slot at StartDate itself fires.
    const start = schedule.StartDate ? Date.parse(schedule.StartDate) - 1 : -Infinity;
    const next = nextFireTime(entry.parsed, {
      after: new Date(Math.max(after.getTime(), start)),
      timeZone: schedule.ScheduleExpressionTimezone,
      anchor: new Date(schedule.CreationDate),
    });
    if (next && schedule.EndDate && next.getTime() > Date.parse(schedule.EndDate)) return undefined;
    return next;
  };

  /** Sets the timer for the first slot strictly after `after` (none when disabled or finished). */
  const arm = (entry: Armed, after: Date) => {
    const id = key(entry.schedule.GroupName, entry.schedule.Name);
    entry.handle = undefined;
    entry.next = nextSlot(entry, after);
    const next = entry.next;
    if (!next) return;
    const wait = () => {
      const delay = next.getTime() - clock.now().getTime();
      entry.handle = timers.setTimeout(
        () => {
          entry.handle = undefined;
          if (armed.get(id) !== entry || stopped) return; // replaced or removed meanwhile
          // A wait longer than one timer allows is made of several.
          if (delay > MAX_TIMER_MS) {
            wait();
            return;
          }
          // The next slot is armed before this one is delivered: slots are independent firings, and
          // a delivery still retrying must not hold the next slot back. A timer that fired late (the
          // machine slept) skips the slots it slept through rather than firing them in a burst.
          arm(entry, new Date(Math.max(clock.now().getTime(), next.getTime())));
          const delivery = deliver(entry.schedule, next).catch((error: unknown) => {
            options.logger?.error('schedule delivery failed', { error: (error as Error)?.message });
          });
          deliveries.add(delivery);
          void delivery.finally(() => deliveries.delete(delivery));
        },
        Math.max(0, Math.min(delay, MAX_TIMER_MS)),
      );
    };
    wait();
  };

  const put = (schedule: StoredSchedule) => {
    const id = key(schedule.GroupName, schedule.Name);
    const entry: Armed = { schedule, parsed: parseSchedule(schedule.ScheduleExpression) };
    disarm(id);
    armed.set(id, entry);
    // Armed from now: a slot that passed while the service was stopped is not made up.
    arm(entry, clock.now());
  };

  // Schedules kept by an earlier run.
  let kept: StoredSchedule[] = [];
  try {
    const text = await readFile(options.stateFile, 'utf8');
    try {
      kept = JSON.parse(text) as StoredSchedule[];
    } catch (error) {
      throw new Error(`${options.stateFile} is not the local Scheduler's state: ${(error as Error).message}`);
    }
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
  }
  let dropped = false;
  for (const schedule of Array.isArray(kept) ? kept : []) {
    if (!groups.has(schedule.GroupName)) {
      // Deleting a schedule group deletes its schedules: the template no longer has this one.
      options.logger?.warn('kept schedule dropped: its group no longer exists', {
        group: schedule.GroupName,
        name: schedule.Name,
      });
      dropped = true;
      continue;
    }
    try {
      put(schedule);
    } catch (error) {
      options.logger?.error('kept schedule not armed', {
        name: schedule.Name,
        error: (error as Error).message,
      });
    }
  }
  if (dropped) await save();

  /** A Create or Update body as Scheduler validates it. */
  const definition = (name: string, group: string, body: Record<string, unknown>): StoredSchedule => {
    const expression = body.ScheduleExpression;
    if (typeof expression !== 'string' || expression.length < 1 || expression.length > 256) {
      throw invalid('ScheduleExpression is required: a string of 1 to 256 characters');
    }
    if (expression.trim().startsWith('at(')) {
      throw invalid(
        `Invalid Schedule Expression ${expression}: one-time at() schedules are not supported by the local Scheduler`,
      );
    }
    try {
      parseSchedule(expression);
    } catch (error) {
      throw invalid(`Invalid Schedule Expression ${expression}: ${(error as Error).message}`);
    }
    const timeZone = optionalString(body, 'ScheduleExpressionTimezone', 50) ?? 'UTC';
    try {
      checkTimeZone(timeZone);
    } catch {
      throw invalid(`Invalid ScheduleExpressionTimezone ${timeZone}: not an IANA time zone`);
    }

    const window = body.FlexibleTimeWindow;
    if (!isObject(window)) throw invalid('FlexibleTimeWindow is required');
    if (window.Mode !== 'OFF' && window.Mode !== 'FLEXIBLE') {
      throw invalid('FlexibleTimeWindow.Mode must be OFF or FLEXIBLE');
    }
    const windowMinutes = integerIn(
      window.MaximumWindowInMinutes,
      'FlexibleTimeWindow.MaximumWindowInMinutes',
      1,
      1440,
    );
    if (window.Mode === 'FLEXIBLE' && windowMinutes === undefined) {
      throw invalid('FlexibleTimeWindow.MaximumWindowInMinutes is required when Mode is FLEXIBLE');
    }

    const target = body.Target;
    if (!isObject(target)) throw invalid('Target is required');
    if (typeof target.Arn !== 'string' || target.Arn.length < 1 || target.Arn.length > 1600) {
      throw invalid('Target.Arn is required: a string of 1 to 1600 characters');
    }
    if (typeof target.RoleArn !== 'string' || !ROLE_ARN.test(target.RoleArn)) {
      throw invalid('Target.RoleArn is required: the ARN of an IAM role');
    }
    if (target.Input !== undefined && (typeof target.Input !== 'string' || target.Input.length < 1)) {
      throw invalid('Target.Input must be a non-empty string');
    }
    if (target.RetryPolicy !== undefined) {
      if (!isObject(target.RetryPolicy)) throw invalid('Target.RetryPolicy must be an object');
      integerIn(
        target.RetryPolicy.MaximumEventAgeInSeconds,
        'Target.RetryPolicy.MaximumEventAgeInSeconds',
        60,
        86_400,
      );
      integerIn(target.RetryPolicy.MaximumRetryAttempts, 'Target.RetryPolicy.MaximumRetryAttempts', 0, 185);
    }

    const state = body.State ?? 'ENABLED';
    if (state !== 'ENABLED' && state !== 'DISABLED') throw invalid('State must be ENABLED or DISABLED');
    const after = body.ActionAfterCompletion;
    if (after !== undefined && after !== null && after !== 'NONE' && after !== 'DELETE') {
      throw invalid('ActionAfterCompletion must be NONE or DELETE');
    }
    const description = body.Description;
    if (description !== undefined && (typeof description !== 'string' || description.length > 512)) {
      throw invalid('Description must be a string of at most 512 characters');
    }
    const kmsKeyArn = optionalString(body, 'KmsKeyArn', 2048);
    const startDate = optionalDate(body, 'StartDate');
    const endDate = optionalDate(body, 'EndDate');
    const now = clock.now();
    if (endDate && Date.parse(endDate) <= now.getTime()) throw invalid('EndDate must be in the future');
    if (startDate && endDate && Date.parse(startDate) >= Date.parse(endDate)) {
      throw invalid('StartDate must be before EndDate');
    }
    return {
      Name: name,
      GroupName: group,
      ScheduleExpression: expression,
      ScheduleExpressionTimezone: timeZone,
      FlexibleTimeWindow: {
        Mode: window.Mode,
        ...(windowMinutes !== undefined ? { MaximumWindowInMinutes: windowMinutes } : {}),
      },
      Target: target as unknown as ScheduleTarget,
      State: state,
      ...(typeof description === 'string' ? { Description: description } : {}),
      ...(after === 'NONE' || after === 'DELETE' ? { ActionAfterCompletion: after } : {}),
      ...(kmsKeyArn ? { KmsKeyArn: kmsKeyArn } : {}),
      ...(startDate ? { StartDate: startDate } : {}),
      ...(endDate ? { EndDate: endDate } : {}),
      CreationDate: now.toISOString(),
      LastModificationDate: now.toISOString(),
    };
  };

  /** GetSchedule's answer: timestamps in epoch seconds, as REST-JSON bodies carry them. */
  const describe = (s: StoredSchedule) => ({
    Arn: arnOf(s.GroupName, s.Name),
    GroupName: s.GroupName,
    Name: s.Name,
    ScheduleExpression: s.ScheduleExpression,
    ScheduleExpressionTimezone: s.ScheduleExpressionTimezone,
    FlexibleTimeWindow: s.FlexibleTimeWindow,
    Target: s.Target,
    State: s.State,
    ...(s.Description !== undefined ? { Description: s.Description } : {}),
    ...(s.ActionAfterCompletion ? { ActionAfterCompletion: s.ActionAfterCompletion } : {}),
    ...(s.KmsKeyArn ? { KmsKeyArn: s.KmsKeyArn } : {}),
    ...(s.StartDate ? { StartDate: epochSeconds(s.StartDate) } : {}),
    ...(s.EndDate ? { EndDate: epochSeconds(s.EndDate) } : {}),
    CreationDate: epochSeconds(s.CreationDate),
    LastModificationDate: epochSeconds(s.LastModificationDate),
  });

  /** The page of `items` after `token` (an item's sort key, opaque to the caller), `max` long. */
  const page = <T>(items: T[], keyOf: (item: T) => string, token: string | null, max: string | null) => {
    let limit = 100;
    if (max !== null) {
      limit = Number(max);
      if (!Number.isInteger(limit) || limit < 1 || limit > 100) {
        throw invalid('MaxResults must be an integer from 1 to 100');
      }
    }
    let from = 0;
    if (token !== null) {
      const last = Buffer.from(token, 'base64url').toString('utf8');
      from = items.findIndex((item) => keyOf(item) > last);
      if (from < 0) from = items.length;
    }
    const slice = items.slice(from, from + limit);
    const lastItem = slice.at(-1);
    const more = from + limit < items.length && lastItem !== undefined;
    return {
      slice,
      ...(more ? { NextToken: Buffer.from(keyOf(lastItem), 'utf8').toString('base64url') } : {}),
    };
  };

  const handle = async (
    req: http.IncomingMessage,
    body: Buffer,
  ): Promise<{ status: number; body: unknown }> => {
    const method = (req.method ?? 'GET').toUpperCase();
    // Signed with the real time: the SDK signs with it whatever the schedules' clock says.
    const caller = verifySignature(
      { method, url: req.url ?? '/', headers: req.headers, body },
      options.credentials,
      { service: 'scheduler' },
    );
    const url = new URL(req.url ?? '/', 'http://local');
    const operation = `${method === 'GET' ? 'Get' : method === 'DELETE' ? 'Delete' : 'Put'}Schedule`;
    if (await options.faults?.onRequest(caller.principal, 'scheduler', operation, caller.presigned)) {
      throw new CallerKilled();
    }
    let parts: string[];
    try {
      parts = url.pathname.split('/').filter(Boolean).map(decodeURIComponent);
    } catch {
      throw invalid('malformed percent-encoding in the path');
    }
    let json: Record<string, unknown> = {};
    if (body.length) {
      const parsed: unknown = JSON.parse(body.toString('utf8'));
      if (!isObject(parsed)) throw invalid('the request body must be a JSON object');
      json = parsed;
    }
    const authorize = (action: string, resource: string, context?: Record<string, string>) =>
      options.authorizer.authorize({
        principal: caller.principal,
        action,
        resource,
        ...(context ? { context } : {}),
      });
    const checkName = (what: string, value: string) => {
      if (!NAME.test(value)) {
        throw invalid(`${what} ${value} must be 1 to 64 characters of 0-9, a-z, A-Z, -, _ and .`);
      }
      return value;
    };
    const groupOf = (given: unknown) =>
      checkName('GroupName', typeof given === 'string' && given ? given : 'default');
    const requireGroup = (group: string) => {
      if (!groups.has(group)) throw notFound(`Schedule group ${group} does not exist.`);
    };
    const unknownOperation = () =>
      new AwsServiceError('UnknownOperationException', `${method} ${url.pathname} is not an operation`, 404);

    if (parts[0] === 'schedule-groups') {
      if (parts.length === 1 && method === 'GET') {
        await authorize('scheduler:ListScheduleGroups', '*');
        const prefix = url.searchParams.get('NamePrefix') ?? '';
        const names = [...groups].filter((g) => g.startsWith(prefix)).sort();
        const { slice, ...rest } = page(
          names,
          (g) => g,
          url.searchParams.get('NextToken'),
          url.searchParams.get('MaxResults'),
        );
        return {
          status: 200,
          body: {
            ScheduleGroups: slice.map((g) => ({ Arn: groupArnOf(g), Name: g, State: 'ACTIVE' })),
            ...rest,
          },
        };
      }
      if (parts.length === 2 && method === 'GET') {
        const name = checkName('Name', parts[1]!);
        await authorize('scheduler:GetScheduleGroup', groupArnOf(name));
        requireGroup(name);
        return { status: 200, body: { Arn: groupArnOf(name), Name: name, State: 'ACTIVE' } };
      }
      throw unknownOperation();
    }
    if (parts[0] !== 'schedules') throw unknownOperation();

    if (parts.length === 1 && method === 'GET') {
      // ListSchedules has no resource-level permissions: it is authorized on `*`.
      await authorize('scheduler:ListSchedules', '*');
      const group = url.searchParams.get('ScheduleGroup');
      const prefix = url.searchParams.get('NamePrefix') ?? '';
      const state = url.searchParams.get('State');
      if (state !== null && state !== 'ENABLED' && state !== 'DISABLED') {
        throw invalid('State must be ENABLED or DISABLED');
      }
      const schedules = [...armed.values()]
        .map((a) => a.schedule)
        .filter(
          (s) =>
            (!group || s.GroupName === group) && s.Name.startsWith(prefix) && (!state || s.State === state),
        )
        .sort((a, b) => {
          const ka = key(a.GroupName, a.Name);
          const kb = key(b.GroupName, b.Name);
          return ka < kb ? -1 : ka > kb ? 1 : 0;
        });
      const { slice, ...rest } = page(
        schedules,
        (s) => key(s.GroupName, s.Name),
        url.searchParams.get('NextToken'),
        url.searchParams.get('MaxResults'),
      );
      return {
        status: 200,
        body: {
          Schedules: slice.map((s) => ({
            Arn: arnOf(s.GroupName, s.Name),
            GroupName: s.GroupName,
            Name: s.Name,
            State: s.State,
            CreationDate: epochSeconds(s.CreationDate),
            LastModificationDate: epochSeconds(s.LastModificationDate),
            Target: { Arn: s.Target.Arn },
          })),
          ...rest,
        },
      };
    }
    if (parts.length !== 2) throw unknownOperation();
    const name = checkName('Name', parts[1]!);

    switch (method) {
      case 'POST':
      case 'PUT': {
        const creating = method === 'POST';
        const group = groupOf(json.GroupName);
        // The caller's permission comes first, as on AWS: a refused caller learns nothing else.
        await authorize(
          creating ? 'scheduler:CreateSchedule' : 'scheduler:UpdateSchedule',
          arnOf(group, name),
        );
        const schedule = definition(name, group, json);
        await authorize('iam:PassRole', schedule.Target.RoleArn, {
          'iam:PassedToService': 'scheduler.amazonaws.com',
        });
        requireGroup(group);
        const existing = armed.get(key(group, name));
        if (creating && existing)
          throw new AwsServiceError('ConflictException', `Schedule ${name} already exists.`, 409);
        if (!creating && !existing) throw notFound(`Schedule ${name} does not exist.`);
        // An update keeps the creation date, which anchors rate() schedules.
        if (existing) schedule.CreationDate = existing.schedule.CreationDate;
        put(schedule);
        await save();
        return { status: 200, body: { ScheduleArn: arnOf(group, name) } };
      }
      case 'GET': {
        const group = groupOf(url.searchParams.get('groupName'));
        await authorize('scheduler:GetSchedule', arnOf(group, name));
        requireGroup(group);
        const entry = armed.get(key(group, name));
        if (!entry) throw notFound(`Schedule ${name} does not exist.`);
        return { status: 200, body: describe(entry.schedule) };
      }
      case 'DELETE': {
        const group = groupOf(url.searchParams.get('groupName'));
        await authorize('scheduler:DeleteSchedule', arnOf(group, name));
        requireGroup(group);
        if (!armed.has(key(group, name))) throw notFound(`Schedule ${name} does not exist.`);
        disarm(key(group, name));
        await save();
        return { status: 200, body: {} };
      }
      default:
        throw unknownOperation();
    }
  };

  /** A failure as REST-JSON answers it: the code in `x-amzn-errortype`, `{ Message }` in the body. */
  const errorOf = (error: unknown): { status: number; code: string; message: string } => {
    if (error instanceof AwsServiceError)
      return { status: error.status, code: error.code, message: error.message };
    if (error instanceof AccessDeniedError) {
      return { status: 403, code: 'AccessDeniedException', message: error.message };
    }
    if (error instanceof SignatureError) {
      const code =
        error.code === 'MissingAuthenticationToken' ? 'MissingAuthenticationTokenException' : error.code;
      return { status: 403, code, message: error.message };
    }
    if (error instanceof SyntaxError) {
      return { status: 400, code: 'ValidationException', message: 'the request body is not JSON' };
    }
    return {
      status: 500,
      code: 'InternalServerException',
      message: (error as Error)?.message ?? 'internal error',
    };
  };

  const server = http.createServer((req, res) => {
    void (async () => {
      let status: number;
      let body: unknown;
      const headers: Record<string, string> = { 'content-type': 'application/json' };
      try {
        ({ status, body } = await handle(req, await readBody(req)));
      } catch (error) {
        if (error instanceof CallerKilled) {
          res.destroy();
          return;
        }
        const failure = errorOf(error);
        status = failure.status;
        body = { Message: failure.message };
        headers['x-amzn-errortype'] = failure.code;
        if (status >= 500) options.logger?.error('local Scheduler failed', { error: failure.message });
      }
      const text = JSON.stringify(body);
      res.writeHead(status, { ...headers, 'content-length': String(Buffer.byteLength(text)) });
      res.end(text);
    })();
  });
  const endpoint = await listen(server, options.port);
  return {
    url: endpoint.url,
    close: async () => {
      stopped = true;
      for (const entry of armed.values()) {
        if (entry.handle !== undefined) timers.clearTimeout(entry.handle);
        entry.handle = undefined;
      }
      // Retries end now; a delivery already calling its target is let finish.
      for (const [handle, resolve] of pauses) {
        timers.clearTimeout(handle);
        resolve();
      }
      pauses.clear();
      await Promise.all([...deliveries]);
      await saving.catch(() => undefined);
      await endpoint.close();
    },
    nextFire: (group, name) => armed.get(key(group, name))?.next,
    names: () => [...armed.keys()],
  };
}
