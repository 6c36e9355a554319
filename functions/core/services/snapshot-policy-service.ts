/**
 * Snapshot policies: a volume, a schedule (cron or rate, in a time zone), how many of the policy's
 * snapshots to keep, and whether to back each one up. A policy is a row plus a schedule (the
 * SchedulerPort: EventBridge Scheduler on AWS, an in-process timer locally); each firing starts the
 * snapshot-policy flow, whose steps are {@link SnapshotPolicyService.runPolicy},
 * {@link SnapshotPolicyService.policyJobStatus} and {@link SnapshotPolicyService.applyRetention}.
 *
 * One snapshot per policy and slot: the slot is the scheduled time truncated to the minute and the
 * snapshot id is derived from (policy, slot), so a schedule delivered twice (Scheduler delivers at
 * least once) finds the snapshot the first delivery took. Retention deletes only the policy's own
 * snapshots, through SnapshotService.delete (which merges and never orphans a child).
 */
import type { Logger } from '../../../drivers/sdk/types.js';
import {
  ConflictError,
  InputError,
  NotFoundError,
  StrataError,
  UnavailableError,
  UnprocessableError,
} from '../errors.js';
import { newId } from '../ids.js';
import type { Snapshot, SnapshotPolicy } from '../model.js';
import { JobState, SnapshotStatus as S, VolumeStatus as V } from '../model.js';
import { allPages } from '../paging.js';
import type { Clock, ListOptions, Page, Repository, SchedulerPort } from '../ports.js';
import { checkTimeZone, nextFireTime, parseSchedule, slotOf } from '../schedule.js';
import type { JobService, WorkflowFailure } from './job-service.js';
import { causeMessage } from './job-service.js';
import type { SnapshotService } from './snapshot-service.js';

export const MAX_KEEP = 1000;

export interface SnapshotPolicyDeps {
  repo: Repository;
  snapshots: Pick<SnapshotService, 'take' | 'get' | 'list' | 'delete'>;
  jobs: Pick<JobService, 'get'>;
  scheduler: SchedulerPort;
  logger: Logger;
  clock: Clock;
}

export interface PolicyCreateInput {
  volumeId: string;
  schedule: string;
  /** IANA zone the cron fields are read in. Default UTC. */
  timeZone?: string;
  keep: number;
  backup?: boolean;
  name?: string;
}

/** A policy run that cannot go on (its snapshot job failed, or never finished). Not retried. */
export class PolicyRunError extends StrataError {
  readonly code = 'PolicyRunFailed';
}

/** Snapshot states retention leaves alone for now: an operation holds them. */
const TRANSITIONAL: ReadonlySet<string> = new Set([S.Creating, S.BackingUp, S.Destroying]);
/** Snapshots that hold restorable data: only these count towards `keep`. */
const GOOD: ReadonlySet<string> = new Set([S.CreatedOnPrimary, S.BackingUp, S.BackedUp]);

export interface RetentionReport {
  policyId: string;
  kept: string[];
  /** Snapshots whose delete job started (snapshot-delete runs on its own), with their jobs. */
  deleting: { snapshotId: string; jobId: string }[];
  skipped: { snapshotId: string; status: string; reason: string }[];
}

export class SnapshotPolicyService {
  constructor(private readonly deps: SnapshotPolicyDeps) {}

  private get repo(): Repository {
    return this.deps.repo;
  }

  /**
   * Validates, writes the row, then creates the schedule; when the scheduler refuses, the row is
   * removed again, so a failed create leaves nothing behind.
   */
  async create(input: PolicyCreateInput): Promise<SnapshotPolicy> {
    const schedule = parseSchedule(input.schedule);
    const timeZone = checkTimeZone(input.timeZone ?? 'UTC');
    if (!Number.isInteger(input.keep) || input.keep < 1 || input.keep > MAX_KEEP) {
      throw new InputError(`keep: a whole number from 1 to ${MAX_KEEP}`, { field: 'keep' });
    }
    if (!nextFireTime(schedule, { after: this.deps.clock.now(), timeZone })) {
      throw new InputError('schedule: never fires again (its years are past)', { field: 'schedule' });
    }
    const volume = await this.repo.get({ type: 'Volume', id: input.volumeId });
    if (!volume || volume.status === V.Destroying || volume.status === V.Destroyed) {
      throw new UnprocessableError(`volume ${input.volumeId} does not exist`, { field: 'volumeId' });
    }
    const policy = await this.repo.create('SnapshotPolicy', {
      id: newId('policy'),
      volumeId: volume.id,
      schedule: schedule.expression,
      timeZone,
      keep: input.keep,
      backup: input.backup ?? false,
      ...(input.name ? { name: input.name } : {}),
    });
    try {
      await this.deps.scheduler.upsert(policy);
    } catch (e) {
      await this.repo.delete({ type: 'SnapshotPolicy', id: policy.id }).catch((cleanup: unknown) =>
        this.deps.logger.error('policy row left after its schedule failed', {
          policyId: policy.id,
          error: (cleanup as Error).message,
        }),
      );
      throw e;
    }
    return policy;
  }

  get(id: string): Promise<SnapshotPolicy> {
    return this.repo.require({ type: 'SnapshotPolicy', id });
  }

  list(volumeId: string | undefined, options: ListOptions = {}): Promise<Page<SnapshotPolicy>> {
    return this.repo.list('SnapshotPolicy', { ...options, filter: volumeId ? { volumeId } : {} });
  }

  /** Every policy (the embedded scheduler loads them at start). */
  all(): Promise<SnapshotPolicy[]> {
    return allPages((cursor) => this.repo.list('SnapshotPolicy', { cursor }));
  }

  /** Removes the schedule, then the row. The policy's snapshots stay (as manual ones, in effect). */
  async delete(id: string): Promise<void> {
    await this.get(id);
    await this.deps.scheduler.remove(id);
    await this.repo.delete({ type: 'SnapshotPolicy', id });
  }

  /**
   * snapshot-policy, step 1: take the slot's snapshot. Idempotent per (policy, slot): a repeat
   * returns the snapshot and job of the first. A busy volume is UnavailableError, so the flow
   * retries with backoff. A policy deleted meanwhile makes the run a no-op.
   */
  async runPolicy(input: { policyId: string; scheduledTime: string }): Promise<{
    skipped: boolean;
    reason: string | null;
    snapshotId: string | null;
    jobId: string | null;
    slot: string;
  }> {
    const slot = slotOf(input.scheduledTime);
    const policy = await this.repo.get({ type: 'SnapshotPolicy', id: input.policyId });
    if (!policy) {
      this.deps.logger.info('policy run skipped: the policy was deleted', { policyId: input.policyId, slot });
      return { skipped: true, reason: 'policy deleted', snapshotId: null, jobId: null, slot };
    }
    const id = policySnapshotId(policy.id, slot);
    try {
      const { snapshot, job } = await this.deps.snapshots.take(
        policy.volumeId,
        policySnapshotName(policy, slot),
        {
          id,
          policyId: policy.id,
          slot,
          backup: policy.backup,
        },
      );
      return { skipped: false, reason: null, snapshotId: snapshot.id, jobId: job.id, slot };
    } catch (e) {
      if (!(e instanceof ConflictError)) throw e;
      // Lost the volume to another operation, or to a concurrent delivery of this slot: either
      // way trying again later settles it (the retry finds the snapshot, or a free volume).
      throw new UnavailableError(
        `volume ${policy.volumeId} is busy: ${e.message}`,
        {
          policyId: policy.id,
          slot,
          state: e.context.state,
        },
        { cause: e },
      );
    }
  }

  /**
   * snapshot-policy, step 2 (polled): whether the snapshot job has finished. A failed job, or one
   * still open after `maxPolls`, fails the run (PolicyRunError, caught by the flow).
   */
  async policyJobStatus(input: { jobId: string; polls: number; maxPolls: number }): Promise<{
    done: boolean;
    state: string;
    polls: number;
  }> {
    const job = await this.deps.jobs.get(input.jobId);
    const polls = input.polls + 1;
    if (job.state === JobState.Succeeded) return { done: true, state: job.state, polls };
    if (job.state === JobState.Failed) {
      throw new PolicyRunError(`snapshot job ${job.id} failed: ${job.error?.message ?? 'no reason given'}`, {
        jobId: job.id,
      });
    }
    if (polls >= input.maxPolls) {
      throw new PolicyRunError(`snapshot job ${job.id} is still ${job.state} after ${polls} checks`, {
        jobId: job.id,
      });
    }
    return { done: false, state: job.state, polls };
  }

  /**
   * snapshot-policy, step 3: keep the newest `keep` snapshots of this policy that hold data, and
   * delete the policy's snapshots older than the oldest of those. Snapshots in Error do not count
   * towards `keep`; snapshots in a transitional state are skipped (a later run gets them); manual
   * snapshots and other policies' snapshots are never looked at.
   */
  async applyRetention(input: { policyId: string }): Promise<RetentionReport> {
    const report: RetentionReport = { policyId: input.policyId, kept: [], deleting: [], skipped: [] };
    const policy = await this.repo.get({ type: 'SnapshotPolicy', id: input.policyId });
    if (!policy) return report;
    const own = (await allPages((cursor) => this.deps.snapshots.list(policy.volumeId, { cursor }))).filter(
      (s) => s.policyId === policy.id && s.volumeId === policy.volumeId && s.status !== S.Destroyed,
    );
    const newestFirst = own.sort(bySlot).reverse();
    const keep: Snapshot[] = [];
    for (const s of newestFirst) {
      if (keep.length === policy.keep) break;
      if (GOOD.has(s.status)) keep.push(s);
    }
    report.kept = keep.map((s) => s.id);
    if (keep.length < policy.keep) return report;
    const cutoff = keep[keep.length - 1]!;
    const expired = newestFirst.filter((s) => bySlot(s, cutoff) < 0).reverse();
    for (const s of expired) {
      if (TRANSITIONAL.has(s.status)) {
        report.skipped.push({ snapshotId: s.id, status: s.status, reason: 'an operation holds it' });
        continue;
      }
      try {
        const { job } = await this.deps.snapshots.delete(s.id);
        report.deleting.push({ snapshotId: s.id, jobId: job.id });
      } catch (e) {
        if (e instanceof NotFoundError) continue; // a concurrent run deleted it
        if (!(e instanceof ConflictError)) throw e;
        report.skipped.push({ snapshotId: s.id, status: s.status, reason: e.message });
      }
    }
    if (report.deleting.length || report.skipped.length) {
      this.deps.logger.info('snapshot policy retention', { ...report });
    }
    return report;
  }

  /** snapshot-policy compensation: record why the run failed (the flow then fails). */
  async failPolicyRun(input: {
    policyId: string;
    scheduledTime: string;
    error: WorkflowFailure;
  }): Promise<{ policyId: string; reason: string }> {
    const reason = causeMessage(input.error);
    this.deps.logger.error('snapshot policy run failed', {
      policyId: input.policyId,
      scheduledTime: input.scheduledTime,
      error: input.error.Error,
      reason,
    });
    return { policyId: input.policyId, reason };
  }
}

/**
 * The snapshot id of a policy's slot, e.g. `snap-<policy uuid>-20240501T0300`: the same for every
 * delivery of the slot, and within the id alphabet (SafeIdSchema).
 */
export function policySnapshotId(policyId: string, slot: string): string {
  return `snap-${policyId.replace(/^policy-/, '')}-${compactSlot(slot)}`;
}

function policySnapshotName(policy: SnapshotPolicy, slot: string): string {
  return `${policy.name ?? 'policy'} ${compactSlot(slot)}`;
}

/** `2024-05-01T03:00:00.000Z` → `20240501T0300`. */
function compactSlot(slot: string): string {
  return slot.replace(/[-:]/g, '').slice(0, 13);
}

function bySlot(a: Snapshot, b: Snapshot): number {
  const x = `${a.slot ?? ''}|${a.createdAt}`;
  const y = `${b.slot ?? ''}|${b.createdAt}`;
  return x < y ? -1 : x > y ? 1 : 0;
}
