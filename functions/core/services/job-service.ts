/**
 * Jobs: the record behind every long operation. Workflow steps report progress here; the API and
 * CLI read it. A job only moves forward: pending → running → succeeded | failed, and a finished job
 * is never changed again (every write is conditional on the job still being open).
 */

import { newId } from '../ids.js';
import type { Job, JobError } from '../model.js';
import { JobState } from '../model.js';
import type { ListOptions, Page, Repository } from '../ports.js';

const OPEN = [JobState.Pending, JobState.Running] as const;

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

/** A failure's human reason: Cause may be the JSON of the Lambda error (`errorMessage`), or text. */
export function causeMessage(error: WorkflowFailure): string {
  if (!error.Cause) return error.Error ?? 'unknown error';
  try {
    const parsed = JSON.parse(error.Cause) as { errorMessage?: string; message?: string };
    return parsed.errorMessage ?? parsed.message ?? error.Cause;
  } catch {
    return error.Cause;
  }
}

export class JobService {
  constructor(private readonly repo: Repository) {}

  create(kind: string, target: { type: string; id: string }, id = newId('job')): Promise<Job> {
    return this.repo.create('Job', { id, kind, target, state: JobState.Pending, progress: 0 });
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

  succeed(id: string, result: Record<string, unknown> = {}): Promise<Job> {
    return this.repo.updateWhere(
      { type: 'Job', id },
      { field: 'state', oneOf: OPEN },
      { state: JobState.Succeeded, progress: 100, result },
    );
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
      { state: JobState.Failed, error },
    );
  }
}
