/**
 * The embedded stack's EventBridge Scheduler: the REST-JSON operations Strata uses (Create, Get,
 * Update, Delete and List schedules, Get schedule group), SigV4-verified and IAM-authorized, with the
 * schedules kept in a file in the data directory and fired by timers.
 *
 * As Scheduler does: Create and Update also need `iam:PassRole` on the target's role (for
 * scheduler.amazonaws.com), a schedule lives in a group the template created (or `default`), a
 * firing substitutes `<aws.scheduler.scheduled-time>` and friends into the target input and is
 * retried per the target's RetryPolicy, and a slot missed while the stack was stopped is not made up.
 * `cron()` fields are read in the schedule's time zone; `rate()` counts from the schedule's creation.
 * `at()` one-time schedules are refused as not served locally.
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
import { AwsServiceError, type LocalEndpoint, listen, readBody } from './aws-server.js';
import { AccessDeniedError, type IamAuthorizer } from './iam-authorizer.js';
import type { LocalAccount, LocalCredentialStore } from './principals.js';
import { SignatureError, verifySignature } from './sigv4-verify.js';

/** A schedule's target as Scheduler keeps it. */
export interface ScheduleTarget {
  Arn: string;
  RoleArn: string;
  Input?: string;
  RetryPolicy?: { MaximumEventAgeInSeconds?: number; MaximumRetryAttempts?: number };
}

interface StoredSchedule {
  Name: string;
  GroupName: string;
  ScheduleExpression: string;
  ScheduleExpressionTimezone: string;
  FlexibleTimeWindow: { Mode: string; MaximumWindowInMinutes?: number };
  Target: ScheduleTarget;
  State: 'ENABLED' | 'DISABLED';
  Description?: string;
  ActionAfterCompletion?: string;
  /** ISO strings. */
  CreationDate: string;
  LastModificationDate: string;
}

/** The timer functions the service uses (tests drive time with their own). */
export interface SchedulerTimers {
  setTimeout(fire: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

const realTimers: SchedulerTimers = {
  setTimeout: (fire, ms) => setTimeout(fire, ms).unref(),
  clearTimeout: (handle) => clearTimeout(handle as NodeJS.Timeout),
};
/** setTimeout's longest delay (about 24.8 days); longer waits re-arm on the way. */
const MAX_TIMER_MS = 2 ** 31 - 1;
const NAME = /^[0-9a-zA-Z-_.]{1,64}$/;

export interface SchedulerServiceOptions {
  account: LocalAccount;
  credentials: LocalCredentialStore;
  authorizer: IamAuthorizer;
  /** The schedule groups that exist (the template's), besides `default`. */
  groups: readonly string[];
  /** Where schedules are kept across restarts. */
  stateFile: string;
  /** Delivers a firing: the target, its input with the placeholders filled in, the slot's time. */
  invoke: (firing: {
    target: ScheduleTarget & { Input: string };
    scheduledTime: string;
    scheduleArn: string;
  }) => Promise<void>;
  clock?: { now(): Date };
  timers?: SchedulerTimers;
  /** Pause before retrying a failed delivery (Scheduler backs off for minutes; tests shrink it). */
  retryDelayMs?: number;
  logger?: Logger;
  port?: number;
}

/** The service, and its test hooks. */
export interface LocalScheduler extends LocalEndpoint {
  /** When a schedule fires next; undefined when it does not exist or never fires again. */
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

const epoch = (iso: string) => Date.parse(iso) / 1000;

export async function startSchedulerService(options: SchedulerServiceOptions): Promise<LocalScheduler> {
  const clock = options.clock ?? { now: () => new Date() };
  const timers = options.timers ?? realTimers;
  const groups = new Set(['default', ...options.groups]);
  const armed = new Map<string, Armed>();
  let stopped = false;
  let saving = Promise.resolve();

  const key = (group: string, name: string) => `${group}/${name}`;
  const arnOf = (group: string, name: string) =>
    `arn:aws:scheduler:${options.account.region}:${options.account.accountId}:schedule/${group}/${name}`;

  const save = () => {
    const snapshot = [...armed.values()].map((a) => a.schedule);
    saving = saving.then(async () => {
      await mkdir(path.dirname(options.stateFile), { recursive: true });
      const temp = `${options.stateFile}.${process.pid}.tmp`;
      await writeFile(temp, `${JSON.stringify(snapshot, null, 2)}\n`);
      await rename(temp, options.stateFile);
    });
    return saving;
  };

  const disarm = (id: string) => {
    const entry = armed.get(id);
    if (entry?.handle !== undefined) timers.clearTimeout(entry.handle);
    armed.delete(id);
  };

  const deliver = async (entry: Armed, at: Date) => {
    const { schedule } = entry;
    const scheduledTime = `${at.toISOString().slice(0, 19)}Z`;
    const scheduleArn = arnOf(schedule.GroupName, schedule.Name);
    const input = (schedule.Target.Input ?? '{}')
      .replaceAll('<aws.scheduler.scheduled-time>', scheduledTime)
      .replaceAll('<aws.scheduler.schedule-arn>', scheduleArn)
      .replaceAll('<aws.scheduler.execution-id>', randomUUID())
      .replaceAll('<aws.scheduler.attempt-number>', '1');
    const attempts = 1 + (schedule.Target.RetryPolicy?.MaximumRetryAttempts ?? 185);
    const maxAgeMs = (schedule.Target.RetryPolicy?.MaximumEventAgeInSeconds ?? 86_400) * 1000;
    for (let attempt = 1; attempt <= attempts; attempt++) {
      try {
        await options.invoke({ target: { ...schedule.Target, Input: input }, scheduledTime, scheduleArn });
        return;
      } catch (error) {
        const late = clock.now().getTime() - at.getTime() > maxAgeMs;
        options.logger?.warn('schedule target not invoked', {
          schedule: scheduleArn,
          attempt,
          error: (error as Error).message,
        });
        if (attempt === attempts || late || stopped) return;
        await new Promise((r) => setTimeout(r, options.retryDelayMs ?? 5_000 * attempt));
      }
    }
  };

  const arm = (entry: Armed, after: Date) => {
    const id = key(entry.schedule.GroupName, entry.schedule.Name);
    entry.handle = undefined;
    entry.next =
      entry.schedule.State === 'ENABLED'
        ? nextFireTime(entry.parsed, {
            after,
            timeZone: entry.schedule.ScheduleExpressionTimezone,
            anchor: new Date(entry.schedule.CreationDate),
          })
        : undefined;
    const next = entry.next;
    if (!next) return;
    const delay = next.getTime() - clock.now().getTime();
    entry.handle = timers.setTimeout(
      () => {
        if (armed.get(id) !== entry || stopped) return; // replaced or removed
        if (delay > MAX_TIMER_MS) {
          arm(entry, after);
          return;
        }
        void deliver(entry, next).finally(() => {
          if (armed.get(id) !== entry || stopped) return;
          const now = clock.now();
          arm(entry, new Date(Math.max(now.getTime(), next.getTime())));
        });
      },
      Math.max(0, Math.min(delay, MAX_TIMER_MS)),
    );
  };

  const put = (schedule: StoredSchedule) => {
    const id = key(schedule.GroupName, schedule.Name);
    disarm(id);
    const entry: Armed = { schedule, parsed: parseSchedule(schedule.ScheduleExpression) };
    armed.set(id, entry);
    arm(entry, clock.now());
  };

  // Schedules kept by an earlier run.
  try {
    const kept = JSON.parse(await readFile(options.stateFile, 'utf8')) as StoredSchedule[];
    for (const schedule of kept) {
      try {
        put(schedule);
      } catch (error) {
        options.logger?.error('kept schedule not armed', {
          name: schedule.Name,
          error: (error as Error).message,
        });
      }
    }
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
  }

  const validate = (name: string, body: Record<string, unknown>, group: string): StoredSchedule => {
    if (!NAME.test(name)) throw new AwsServiceError('ValidationException', `Name ${name} is not valid`);
    const expression = String(body.ScheduleExpression ?? '');
    if (expression.startsWith('at(')) {
      throw new AwsServiceError('ValidationException', 'at() schedules are not served by the embedded stack');
    }
    try {
      parseSchedule(expression);
    } catch (error) {
      throw new AwsServiceError(
        'ValidationException',
        `Invalid Schedule Expression ${expression}: ${(error as Error).message}`,
      );
    }
    const timeZone = String(body.ScheduleExpressionTimezone ?? 'UTC');
    try {
      checkTimeZone(timeZone);
    } catch {
      throw new AwsServiceError('ValidationException', `Invalid ScheduleExpressionTimezone ${timeZone}`);
    }
    const window = body.FlexibleTimeWindow as StoredSchedule['FlexibleTimeWindow'] | undefined;
    if (!window?.Mode) throw new AwsServiceError('ValidationException', 'FlexibleTimeWindow is required');
    const targetIn = body.Target as ScheduleTarget | undefined;
    if (!targetIn?.Arn || !targetIn.RoleArn) {
      throw new AwsServiceError('ValidationException', 'Target.Arn and Target.RoleArn are required');
    }
    const state = (body.State ?? 'ENABLED') as string;
    if (state !== 'ENABLED' && state !== 'DISABLED') {
      throw new AwsServiceError('ValidationException', `State ${state} is not ENABLED or DISABLED`);
    }
    const now = clock.now().toISOString();
    return {
      Name: name,
      GroupName: group,
      ScheduleExpression: expression,
      ScheduleExpressionTimezone: timeZone,
      FlexibleTimeWindow: window,
      Target: targetIn,
      State: state,
      ...(typeof body.Description === 'string' ? { Description: body.Description } : {}),
      ...(typeof body.ActionAfterCompletion === 'string'
        ? { ActionAfterCompletion: body.ActionAfterCompletion }
        : {}),
      CreationDate: now,
      LastModificationDate: now,
    };
  };

  const describe = (s: StoredSchedule) => ({
    Arn: arnOf(s.GroupName, s.Name),
    GroupName: s.GroupName,
    Name: s.Name,
    ScheduleExpression: s.ScheduleExpression,
    ScheduleExpressionTimezone: s.ScheduleExpressionTimezone,
    FlexibleTimeWindow: s.FlexibleTimeWindow,
    Target: s.Target,
    State: s.State,
    ...(s.Description ? { Description: s.Description } : {}),
    ...(s.ActionAfterCompletion ? { ActionAfterCompletion: s.ActionAfterCompletion } : {}),
    CreationDate: epoch(s.CreationDate),
    LastModificationDate: epoch(s.LastModificationDate),
  });

  const handle = async (
    req: http.IncomingMessage,
    body: Buffer,
  ): Promise<{ status: number; body: unknown }> => {
    const method = (req.method ?? 'GET').toUpperCase();
    const caller = verifySignature(
      { method, url: req.url ?? '/', headers: req.headers, body },
      options.credentials,
      {
        service: 'scheduler',
      },
    );
    const url = new URL(req.url ?? '/', 'http://local');
    const parts = url.pathname.split('/').filter(Boolean).map(decodeURIComponent);
    const json = body.length ? (JSON.parse(body.toString('utf8')) as Record<string, unknown>) : {};
    const authorize = (action: string, resource: string, context?: Record<string, string>) =>
      options.authorizer.authorize({
        principal: caller.principal,
        action,
        resource,
        ...(context ? { context } : {}),
      });
    const groupOf = (given: unknown) => {
      const group = typeof given === 'string' && given ? given : 'default';
      if (!groups.has(group))
        throw new AwsServiceError(
          'ResourceNotFoundException',
          `Schedule group ${group} does not exist.`,
          404,
        );
      return group;
    };

    if (parts[0] === 'schedule-groups' && parts.length === 2 && method === 'GET') {
      const name = parts[1]!;
      await authorize(
        'scheduler:GetScheduleGroup',
        `arn:aws:scheduler:${options.account.region}:${options.account.accountId}:schedule-group/${name}`,
      );
      if (!groups.has(name))
        throw new AwsServiceError('ResourceNotFoundException', `Schedule group ${name} does not exist.`, 404);
      return {
        status: 200,
        body: {
          Arn: `arn:aws:scheduler:${options.account.region}:${options.account.accountId}:schedule-group/${name}`,
          Name: name,
          State: 'ACTIVE',
        },
      };
    }
    if (parts[0] !== 'schedules')
      throw new AwsServiceError('UnknownOperationException', `no operation at ${url.pathname}`, 404);

    if (parts.length === 1 && method === 'GET') {
      await authorize('scheduler:ListSchedules', '*');
      const group = url.searchParams.get('ScheduleGroup');
      const prefix = url.searchParams.get('NamePrefix') ?? '';
      const schedules = [...armed.values()]
        .map((a) => a.schedule)
        .filter((s) => (!group || s.GroupName === group) && s.Name.startsWith(prefix))
        .map((s) => ({
          Arn: arnOf(s.GroupName, s.Name),
          GroupName: s.GroupName,
          Name: s.Name,
          State: s.State,
          CreationDate: epoch(s.CreationDate),
          LastModificationDate: epoch(s.LastModificationDate),
          Target: { Arn: s.Target.Arn },
        }));
      return { status: 200, body: { Schedules: schedules } };
    }
    if (parts.length !== 2)
      throw new AwsServiceError('UnknownOperationException', `no operation at ${url.pathname}`, 404);
    const name = parts[1]!;

    switch (method) {
      case 'POST':
      case 'PUT': {
        const group = groupOf(json.GroupName);
        const id = key(group, name);
        await authorize(
          method === 'POST' ? 'scheduler:CreateSchedule' : 'scheduler:UpdateSchedule',
          arnOf(group, name),
        );
        const schedule = validate(name, json, group);
        await authorize('iam:PassRole', schedule.Target.RoleArn, {
          'iam:PassedToService': 'scheduler.amazonaws.com',
        });
        const existing = armed.get(id);
        if (method === 'POST' && existing) {
          throw new AwsServiceError('ConflictException', `Schedule ${name} already exists.`, 409);
        }
        if (method === 'PUT' && !existing) {
          throw new AwsServiceError('ResourceNotFoundException', `Schedule ${name} does not exist.`, 404);
        }
        // An update keeps the creation date, which anchors rate() schedules.
        if (existing) schedule.CreationDate = existing.schedule.CreationDate;
        put(schedule);
        await save();
        return { status: 200, body: { ScheduleArn: arnOf(group, name) } };
      }
      case 'GET': {
        const group = groupOf(url.searchParams.get('groupName'));
        await authorize('scheduler:GetSchedule', arnOf(group, name));
        const entry = armed.get(key(group, name));
        if (!entry)
          throw new AwsServiceError('ResourceNotFoundException', `Schedule ${name} does not exist.`, 404);
        return { status: 200, body: describe(entry.schedule) };
      }
      case 'DELETE': {
        const group = groupOf(url.searchParams.get('groupName'));
        await authorize('scheduler:DeleteSchedule', arnOf(group, name));
        if (!armed.has(key(group, name))) {
          throw new AwsServiceError('ResourceNotFoundException', `Schedule ${name} does not exist.`, 404);
        }
        disarm(key(group, name));
        await save();
        return { status: 200, body: {} };
      }
      default:
        throw new AwsServiceError(
          'UnknownOperationException',
          `${method} ${url.pathname} is not an operation`,
          404,
        );
    }
  };

  const server = http.createServer((req, res) => {
    void (async () => {
      let status: number;
      let body: unknown;
      const headers: Record<string, string> = { 'content-type': 'application/json' };
      try {
        ({ status, body } = await handle(req, await readBody(req)));
      } catch (error) {
        const [code, message, httpStatus] =
          error instanceof AwsServiceError
            ? [error.code, error.message, error.status]
            : error instanceof AccessDeniedError
              ? ['AccessDeniedException', error.message, 403]
              : error instanceof SignatureError
                ? [
                    error.code === 'MissingAuthenticationToken' ? 'UnauthorizedException' : error.code,
                    error.message,
                    403,
                  ]
                : error instanceof SyntaxError
                  ? ['ValidationException', 'the request body is not JSON', 400]
                  : ['InternalServerException', (error as Error).message, 500];
        status = httpStatus;
        body = { Message: message };
        headers['x-amzn-errortype'] = code;
        if (status >= 500) options.logger?.error('local Scheduler failed', { error: message });
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
      for (const id of [...armed.keys()]) {
        const entry = armed.get(id);
        if (entry?.handle !== undefined) timers.clearTimeout(entry.handle);
      }
      await saving;
      await endpoint.close();
    },
    nextFire: (group, name) => armed.get(key(group, name))?.next,
    names: () => [...armed.keys()],
  };
}
