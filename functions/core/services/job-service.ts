/**
 * Jobs: the record behind every long operation. Workflow steps report progress here; the API and
 * CLI read it. A job only moves forward: pending → running → succeeded | failed, and a finished job
 * is never changed again (every write is conditional on the job still being open).
 */

import { ConflictError } from '../errors.js';
import { newId } from '../ids.js';
import type { Job, JobError } from '../model.js';
import { JobState } from '../model.js';
import { type ListOptions, type Page, type Repository, Write, type WriteOp } from '../ports.js';

const OPEN = [JobState.Pending, JobState.Running] as const;

/**
 * An open job holds a lease on itself, renewed by every step its flow runs (and by every heartbeat
 * of a host wait). When it runs out the flow is dead — its execution was lost, never started, or
 * ended without finishing the job — and the reconciler recovers the job as it recovers an entity.
 */
export const JOB_LEASE_SECONDS = 30 * 60;

/** The flow a job runs and its input, recorded with the job so a recovery can compensate. */
export interface Launch {
  flow: string;
  input: Record<string, unknown>;
}

export interface JobFilter {
  state?: string;
  kind?: string;
  targetId?: string;
}

/** How Step Functions hands a caught error to the compensation step. */
export interface WorkflowFailure {
  Error?: string;
  Cause?: string;
}

/**
 * A failure's human reason, as callers may see it (see publicMessage): Cause may be the JSON of the
 * Lambda error (`errorMessage`), or text. Entities record it as their statusReason, jobs as their error.
 */
export function causeMessage(error: WorkflowFailure): string {
  return publicMessage(rawCause(error));
}

function rawCause(error: WorkflowFailure): string {
  if (!error.Cause) return error.Error ?? 'unknown error';
  try {
    const parsed = JSON.parse(error.Cause) as { errorMessage?: string; message?: string };
    return parsed.errorMessage ?? parsed.message ?? error.Cause;
  } catch {
    return error.Cause;
  }
}

/**
 * What a caller may see of a failure's text: no stack frames, no source paths (the log keeps
 * those), at most 1,000 characters.
 */
export function publicMessage(text: string): string {
  const kept = text
    .split('\n')
    .filter((line) => !/^\s*at\s/.test(line))
    .join('\n')
    .replace(/(?:file:\/\/)?(?:\/[\w.@+-]+)+\/([\w.@+-]+\.(?:[cm]?[jt]s|tsx?))(?::\d+){0,2}/g, '$1')
    .trim();
  return kept.length > 1000 ? `${kept.slice(0, 999)}…` : kept;
}

export class JobService {
  constructor(private readonly repo: Repository) {}

  /**
   * Records a new job. With `launch`, the flow and its input are recorded with it, so a job whose
   * flow never started (or died) is compensated by the reconciler.
   */
  create(
    kind: string,
    target: { type: string; id: string },
    id = newId('job'),
    launch?: Launch,
  ): Promise<Job> {
    return this.repo.create('Job', this.fields(kind, target, id, launch));
  }

  /**
   * The write that records a new job, for a transaction with the change that starts its work (the
   * entity it leases, the space it reserves): both are there, or neither is.
   */
  createWrite(kind: string, target: { type: string; id: string }, id: string, launch: Launch): WriteOp {
    return Write.create('Job', this.fields(kind, target, id, launch));
  }

  /** Moves the job's own lease on (every step of its flow does, before it runs). */
  renew(id: string): Promise<boolean> {
    return this.repo.renewLease({ type: 'Job', id }, id, JOB_LEASE_SECONDS);
  }

  private fields(kind: string, target: { type: string; id: string }, id: string, launch?: Launch) {
    const expiresAt = new Date(Date.now() + JOB_LEASE_SECONDS * 1000).toISOString();
    return {
      id,
      kind,
      target,
      state: JobState.Pending,
      progress: 0,
      lease: { owner: id, expiresAt },
      ...(launch ? { flow: launch.flow, flowInput: launch.input } : {}),
    };
  }

  get(id: string): Promise<Job> {
    return this.repo.require({ type: 'Job', id });
  }

  list(filter: JobFilter, options: ListOptions = {}): Promise<Page<Job>> {
    const where: Record<string, string> = {};
    if (filter.state) where.state = filter.state;
    if (filter.kind) where.kind = filter.kind;
    if (filter.targetId) where['target.id'] = filter.targetId;
    return this.repo.list('Job', { ...options, filter: where });
  }

  started(id: string, executionId: string): Promise<Job> {
    return this.repo.updateWhere(
      { type: 'Job', id },
      { field: 'state', oneOf: OPEN },
      { state: JobState.Running, executionId },
    );
  }

  progress(id: string, percent: number, detail?: Record<string, unknown>): Promise<Job> {
    const progress = Math.max(0, Math.min(100, Math.round(percent)));
    return this.repo.updateWhere(
      { type: 'Job', id },
      { field: 'state', oneOf: OPEN },
      { state: JobState.Running, progress, ...(detail ? { progressDetail: detail } : {}) },
    );
  }

  /** Ends a job well. Again on a job that already succeeded (a step run twice) is a no-op. */
  async succeed(id: string, result: Record<string, unknown> = {}): Promise<Job> {
    try {
      return await this.repo.updateWhere(
        { type: 'Job', id },
        { field: 'state', oneOf: OPEN },
        { state: JobState.Succeeded, progress: 100, result, lease: undefined },
      );
    } catch (e) {
      if (!(e instanceof ConflictError)) throw e;
      const job = await this.get(id);
      if (job.state !== JobState.Succeeded) throw e;
      return job;
    }
  }

  /**
   * Fails a job with what a workflow caught, from its compensation step. A job already finished
   * (an earlier run of the same step) is left alone. Returns the reason, for the entity's own record.
   */
  async failFromFlow(id: string, error: WorkflowFailure, fallbackCode: string): Promise<string> {
    const message = causeMessage(error);
    await this.fail(id, { code: error.Error ?? fallbackCode, message }).catch(() => undefined);
    return message;
  }

  fail(id: string, error: JobError): Promise<Job> {
    return this.repo.updateWhere(
      { type: 'Job', id },
      { field: 'state', oneOf: OPEN },
      {
        state: JobState.Failed,
        error: { ...error, message: publicMessage(error.message) },
        lease: undefined,
      },
    );
  }
}
