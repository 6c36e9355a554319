/**
 * The reconciler: nothing stays stuck. An entity whose lease expired in a transitional state (its
 * worker crashed, its workflow was stopped or lost) is recovered once, and never while its holder is
 * alive: a live flow renews its leases on every turn of a host wait (the heartbeat), and recovery
 * starts with a conditional write that takes the lease only if it is still the holder's and still
 * expired. Then, in this order:
 *
 * 1. the holder's execution is stopped (StopExecution), so no later step of it runs;
 * 2. the host commands it recorded are cancelled (SSM CancelCommand) and awaited: nothing is undone
 *    while a host still works on it (a command still running defers the recovery to a later pass);
 * 3. the flow's own compensation runs — the same task its Catch runs, with the input the flow was
 *    started with — so what the flow reserved (capacity, a resize delta, a destination copy, chunk
 *    holds, a template reference) is given back as on any failure;
 * 4. an entity the compensation left in its transitional state is moved to its machine's recovery
 *    state, fenced on the lease owner, and the job is failed.
 */
import { ConflictError } from '../errors.js';
import type { EntityType, Job, Lease } from '../model.js';
import { JobState } from '../model.js';
import type { Clock, EndpointChannel, EntityKey, Repository, StatusOf, WorkflowPort } from '../ports.js';
import { systemClock } from '../ports.js';
import {
  dataStoreMachine,
  objectInStoreMachine,
  type StateMachine,
  snapshotMachine,
  volumeMachine,
} from '../state-machines.js';
import type { JobService } from './job-service.js';

const MACHINES: Partial<Record<EntityType, StateMachine<string>>> = {
  DataStore: dataStoreMachine,
  Volume: volumeMachine,
  Snapshot: snapshotMachine,
  TemplateInStore: objectInStoreMachine,
  SnapshotInStore: objectInStoreMachine,
};

/** How long a recovery holds a lease it took over (a deferred recovery is retried after it). */
export const RECOVERY_LEASE_SECONDS = 10 * 60;

export interface Recovery {
  type: EntityType;
  id: string;
  storeId?: string;
  from: string;
  /** The state it ended in; `compensated` when the flow's compensation settled it. */
  to: string;
  job: string;
}

/** What a recovery pass did with an expired lease it could not finish yet. */
export interface Deferral {
  type: EntityType;
  id: string;
  job: string;
  reason: string;
}

/**
 * Runs a flow's compensation for a job, as its Catch would: `done` when it ran to the end, `waiting`
 * when it has host work still running (run it again on a later pass), `none` when the flow has none.
 */
export type Compensate = (
  flow: string,
  input: Record<string, unknown>,
) => Promise<'done' | 'waiting' | 'none'>;

export interface ReconcilerOptions {
  clock?: Clock;
  workflows?: WorkflowPort;
  channel?: EndpointChannel;
}

export class Reconciler {
  private readonly clock: Clock;

  constructor(
    private readonly repo: Repository,
    private readonly jobs: JobService,
    private readonly options: ReconcilerOptions = {},
  ) {
    this.clock = options.clock ?? systemClock;
  }

  /** Recovers every entity whose lease expired before now. */
  async recoverExpiredLeases(compensate?: Compensate): Promise<Recovery[] & { deferred?: Deferral[] }> {
    const recovered: Recovery[] & { deferred?: Deferral[] } = [];
    const deferred: Deferral[] = [];
    let cursor: string | undefined;
    do {
      const page = await this.repo.listExpiredLeases(this.clock.now(), { cursor, limit: 50 });
      for (const entity of page.items) {
        const done = await this.recover(entity, compensate, deferred);
        if (done) recovered.push(done);
      }
      cursor = page.cursor;
    } while (cursor);
    if (deferred.length) recovered.deferred = deferred;
    return recovered;
  }

  private async recover(
    entity: object & { lease: Lease },
    compensate: Compensate | undefined,
    deferred: Deferral[],
  ): Promise<Recovery | undefined> {
    const type = (entity as { entityType?: EntityType }).entityType;
    if (type === 'Job') return this.recoverJob(entity as Job & { lease: Lease }, compensate, deferred);
    const machine = type ? MACHINES[type] : undefined;
    const status = (entity as { status?: string }).status;
    if (!type || !machine || !status) return undefined;
    const to = machine.leased[status];
    if (!to) return undefined;
    const key = keyFor(type, entity as Record<string, unknown>);
    const owner = entity.lease.owner;
    const reason = `lease of ${owner} expired at ${entity.lease.expiresAt} in ${status}`;
    const base = {
      type,
      id: key.id,
      ...(key.storeId ? { storeId: key.storeId } : {}),
      from: status,
      job: owner,
    };

    // 0. Only an expired lease, and only once: a renewed (live) or released lease is left alone.
    const now = this.clock.now();
    if (!(await this.repo.claimExpiredLease(key, owner, now, RECOVERY_LEASE_SECONDS))) return undefined;

    const job = await this.repo.get({ type: 'Job', id: owner });
    const running = job && (job.state === JobState.Pending || job.state === JobState.Running);
    if (job && running) {
      // 1. No later step of the holder's flow may run.
      if (job.executionId && this.options.workflows?.stop) {
        await this.options.workflows.stop(job.executionId, reason);
      }
      // 2. Nothing is undone under a host that still works on it.
      const busy = await this.stopHostCommands(job);
      if (busy) return this.defer(key, owner, busy, deferred);
      // 3. The flow's own compensation.
      if (compensate && job.flow) {
        const outcome = await compensate(job.flow, {
          ...(job.flowInput ?? {}),
          jobId: owner,
          error: { Error: 'LeaseExpired', Cause: reason },
        });
        if (outcome === 'waiting') {
          return this.defer(key, owner, 'its compensation has host work running', deferred);
        }
      }
    }
    // 4. Whatever the compensation left transitional goes to the machine's recovery state.
    const current = (await this.repo.get(key)) as { status?: string; lease?: Lease } | undefined;
    if (!current || current.status !== status || current.lease?.owner !== owner) {
      return { ...base, to: 'compensated' };
    }
    try {
      await this.repo.transition({
        key,
        machine: machine as StateMachine<StatusOf<EntityType>>,
        from: status as StatusOf<EntityType>,
        to: to as StatusOf<EntityType>,
        leaseOwner: owner,
        changes: { statusReason: reason } as never,
      });
    } catch (e) {
      if (e instanceof ConflictError) return undefined; // the worker finished or someone else recovered it
      throw e;
    }
    await this.jobs.fail(owner, { code: 'LeaseExpired', message: reason }).catch(() => undefined);
    return { ...base, to };
  }

  /**
   * A job whose own lease ran out: no step of its flow has run for that long, so its execution was
   * lost, never started, or ended without finishing the job. Recovered like an entity — execution
   * stopped, host commands ended, the flow's compensation run — and then failed.
   */
  private async recoverJob(
    job: Job & { lease: Lease },
    compensate: Compensate | undefined,
    deferred: Deferral[],
  ): Promise<Recovery | undefined> {
    const key = { type: 'Job' as const, id: job.id };
    const reason = `job ${job.id} made no progress since ${job.lease.expiresAt}`;
    if (
      !(await this.repo.claimExpiredLease(key, job.lease.owner, this.clock.now(), RECOVERY_LEASE_SECONDS))
    ) {
      return undefined;
    }
    const base = { type: 'Job' as const, id: job.id, from: job.state, job: job.id };
    if (job.state === JobState.Pending || job.state === JobState.Running) {
      if (job.executionId && this.options.workflows?.stop) {
        await this.options.workflows.stop(job.executionId, reason);
      }
      const busy = await this.stopHostCommands(job);
      if (busy) return this.defer(key, job.lease.owner, busy, deferred);
      if (compensate && job.flow) {
        const outcome = await compensate(job.flow, {
          ...(job.flowInput ?? {}),
          jobId: job.id,
          error: { Error: 'LeaseExpired', Cause: reason },
        });
        if (outcome === 'waiting') {
          return this.defer(key, job.lease.owner, 'its compensation has host work running', deferred);
        }
      }
    }
    // Failing the job lets go of its lease; one that had ended only loses the stale lease.
    await this.jobs.fail(job.id, { code: 'LeaseExpired', message: reason }).catch(() => undefined);
    await this.repo
      .updateWhere(key, { field: 'state', oneOf: [job.state] }, { lease: undefined })
      .catch(() => undefined);
    return { ...base, to: 'failed' };
  }

  /** Hands the claim back as expired, so the next pass takes the recovery up again at once. */
  private async defer(
    key: EntityKey,
    owner: string,
    reason: string,
    deferred: Deferral[],
  ): Promise<undefined> {
    await this.repo.expireLease(key, owner, this.clock.now());
    deferred.push({ type: key.type, id: key.id, job: owner, reason });
    return undefined;
  }

  /**
   * Cancels the job's host commands that have not ended, then looks again. Returns why the recovery
   * must wait (a command still running), or undefined when every command has ended.
   */
  private async stopHostCommands(job: Job): Promise<string | undefined> {
    const channel = this.options.channel;
    const commands = Object.values(job.hostCommands ?? {}).filter((c) => !c.failed);
    if (!channel || commands.length === 0) return undefined;
    const stillRunning: string[] = [];
    for (const c of commands) {
      const host = await this.repo.get({ type: 'Host', id: c.hostId });
      if (!host) continue;
      const status = await channel.status(host, c.commandId).catch(() => undefined);
      if (!status || status.state === 'succeeded' || status.state === 'failed') continue;
      await channel.cancel?.(host, c.commandId).catch(() => undefined);
      // Give the host a moment to stop, then look again.
      for (let i = 0; i < 10; i++) {
        const after = await channel.status(host, c.commandId).catch(() => undefined);
        if (!after || after.state === 'succeeded' || after.state === 'failed') break;
        if (i === 9) stillRunning.push(`${c.commandId} on ${c.hostId}`);
        else await new Promise((r) => setTimeout(r, 200));
      }
    }
    return stillRunning.length ? `host commands still running: ${stillRunning.join(', ')}` : undefined;
  }
}

function keyFor(type: EntityType, e: Record<string, unknown>): EntityKey {
  if (type === 'TemplateInStore') return { type, id: String(e.templateId), storeId: String(e.storeId) };
  if (type === 'SnapshotInStore') return { type, id: String(e.snapshotId), storeId: String(e.storeId) };
  return { type, id: String(e.id) };
}
