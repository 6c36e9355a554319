/**
 * The reconciler: nothing stays stuck. An entity whose lease expired in a transitional state (its
 * worker crashed, its workflow was stopped) is moved to the state its machine names for recovery,
 * and the job that held the lease is failed. The move is fenced on the lease owner, so a worker
 * that is merely slow and finishes first wins, and the reconciler then leaves the entity alone.
 */
import { ConflictError } from '../errors.js';
import type { EntityType, Lease } from '../model.js';
import type { Clock, EntityKey, Repository, StatusOf } from '../ports.js';
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

export interface Recovery {
  type: EntityType;
  id: string;
  storeId?: string;
  from: string;
  to: string;
  job: string;
}

/**
 * A recovery that does more than move one entity: it runs the flow's own compensation (e.g. a backup
 * whose workflow was lost releases its chunk holds and removes its image copy). Keyed by
 * `<type>:<status>`; returns false to fall back to the plain move.
 */
export type RecoveryHook = (
  entity: Record<string, unknown> & { lease: Lease },
  reason: string,
) => Promise<boolean>;

export class Reconciler {
  constructor(
    private readonly repo: Repository,
    private readonly jobs: JobService,
    private readonly clock: Clock = systemClock,
    private readonly hooks: Record<string, RecoveryHook> = {},
  ) {}

  /** Recovers every entity whose lease expired before now. */
  async recoverExpiredLeases(): Promise<Recovery[]> {
    const recovered: Recovery[] = [];
    let cursor: string | undefined;
    do {
      const page = await this.repo.listExpiredLeases(this.clock.now(), { cursor, limit: 50 });
      for (const entity of page.items) {
        const done = await this.recover(entity);
        if (done) recovered.push(done);
      }
      cursor = page.cursor;
    } while (cursor);
    return recovered;
  }

  private async recover(entity: object & { lease: Lease }): Promise<Recovery | undefined> {
    const type = (entity as { entityType?: EntityType }).entityType;
    const machine = type ? MACHINES[type] : undefined;
    const status = (entity as { status?: string }).status;
    if (!type || !machine || !status) return undefined;
    const to = machine.leased[status];
    if (!to) return undefined;
    const key = keyFor(type, entity as Record<string, unknown>);
    const reason = `lease of ${entity.lease.owner} expired at ${entity.lease.expiresAt} in ${status}`;
    const hook = this.hooks[`${type}:${status}`];
    if (hook && (await hook(entity as Record<string, unknown> & { lease: Lease }, reason))) {
      return {
        type,
        id: key.id,
        ...(key.storeId ? { storeId: key.storeId } : {}),
        from: status,
        to: 'compensated',
        job: entity.lease.owner,
      };
    }
    try {
      await this.repo.transition({
        key,
        machine: machine as StateMachine<StatusOf<EntityType>>,
        from: status as StatusOf<EntityType>,
        to: to as StatusOf<EntityType>,
        leaseOwner: entity.lease.owner,
        changes: { statusReason: reason } as never,
      });
    } catch (e) {
      if (e instanceof ConflictError) return undefined; // the worker finished or someone else recovered it
      throw e;
    }
    await this.jobs
      .fail(entity.lease.owner, { code: 'LeaseExpired', message: reason })
      .catch(() => undefined);
    return {
      type,
      id: key.id,
      ...(key.storeId ? { storeId: key.storeId } : {}),
      from: status,
      to,
      job: entity.lease.owner,
    };
  }
}

function keyFor(type: EntityType, e: Record<string, unknown>): EntityKey {
  if (type === 'TemplateInStore') return { type, id: String(e.templateId), storeId: String(e.storeId) };
  if (type === 'SnapshotInStore') return { type, id: String(e.snapshotId), storeId: String(e.storeId) };
  return { type, id: String(e.id) };
}
