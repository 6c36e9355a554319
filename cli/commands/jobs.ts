import type { Job } from '../api-types.js';
import { type CommandSpec, ExitCode, optString, parseFlag } from '../command.js';
import { jobStateLabel, relativeTime, renderDetails, renderTable, timestamp } from '../format.js';
import {
  fetchList,
  followJob,
  oneOf,
  PAGE_OPTIONS,
  printList,
  printResult,
  WAIT_OPTIONS,
  waitTimeout,
} from './shared.js';

const parseJobState = oneOf(['pending', 'running', 'succeeded', 'failed'] as const);

function jobTable(jobs: Job[], now: Date): string {
  return renderTable(jobs, [
    { header: 'ID', value: (j) => j.id },
    { header: 'KIND', value: (j) => j.kind },
    { header: 'TARGET', value: (j) => `${j.target.type} ${j.target.id}` },
    { header: 'STATE', value: (j) => jobStateLabel(j) },
    { header: 'STARTED', value: (j) => relativeTime(j.createdAt, now) },
    { header: 'UPDATED', value: (j) => relativeTime(j.updatedAt, now) },
  ]);
}

function compact(value: Record<string, unknown> | undefined): string | undefined {
  return value && Object.keys(value).length ? JSON.stringify(value) : undefined;
}

function jobDetails(job: Job, now: Date): string {
  return renderDetails([
    ['ID', job.id],
    ['Kind', job.kind],
    ['Target', `${job.target.type} ${job.target.id}`],
    ['State', jobStateLabel(job)],
    ['Progress', `${Math.round(job.progress)}%`],
    ['Detail', compact(job.progressDetail)],
    ['Error', job.error ? `${job.error.code}: ${job.error.message}` : undefined],
    ['Result', compact(job.result)],
    ['Execution', job.executionId],
    ['Created', timestamp(job.createdAt, now)],
    ['Updated', timestamp(job.updatedAt, now)],
  ]);
}

export const jobCommands: CommandSpec[] = [
  {
    path: ['jobs', 'list'],
    summary: 'List asynchronous jobs.',
    options: {
      state: { type: 'string', valueName: '<state>', description: 'pending, running, succeeded or failed' },
      kind: { type: 'string', valueName: '<kind>', description: 'e.g. store.add, store.maintain' },
      target: { type: 'string', valueName: '<id>', description: 'only jobs on this entity' },
      ...PAGE_OPTIONS,
    },
    examples: ['strata jobs list --state running', 'strata jobs list --target st-123 --json'],
    async run(ctx) {
      const command = 'jobs list';
      const filters = {
        state: parseFlag(ctx.values, 'state', command, parseJobState),
        kind: optString(ctx.values, 'kind'),
        targetId: optString(ctx.values, 'target'),
      };
      const page = await fetchList(ctx, command, filters, (q) => ctx.client.listJobs(q));
      printList(ctx, page, 'jobs', jobTable, (j) => j.id);
      return ExitCode.Ok;
    },
  },
  {
    path: ['jobs', 'get'],
    summary: 'Show one job.',
    args: ['id'],
    async run(ctx) {
      const job = await ctx.client.getJob(ctx.args[0]!);
      printResult(ctx, job, job.id, () => jobDetails(job, ctx.now));
      return ExitCode.Ok;
    },
  },
  {
    path: ['jobs', 'wait'],
    summary: 'Wait for a job to finish; exits 1 if it failed, 3 if the wait timed out.',
    args: ['id'],
    options: { timeout: WAIT_OPTIONS['timeout']! },
    examples: ['strata jobs wait job-123 --timeout 10m'],
    async run(ctx) {
      const timeoutMs = waitTimeout(ctx, 'jobs wait');
      const first = await ctx.client.getJob(ctx.args[0]!);
      const { job, exitCode } = await followJob(ctx, first, timeoutMs);
      printResult(ctx, job, job.id, `Job ${job.id} (${job.kind}) succeeded.`, exitCode);
      return exitCode;
    },
  },
];
