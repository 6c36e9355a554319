/**
 * What the snapshot flows share: their dependencies, the fencing check, the volume release, how a
 * flow starts, and the refusal to touch the files of a volume a host has access to.
 */
import { ConflictError, UnavailableError } from '../../errors.js';
import type { Job, Snapshot, SnapshotInStore, Volume } from '../../model.js';
import { type SnapshotStatus as S, VolumeStatus as V } from '../../model.js';
import type { FlowName, Repository } from '../../ports.js';
import { volumeMachine } from '../../state-machines.js';
import type { BackupDeps } from '../backup-service.js';
import type { WorkflowFailure } from '../job-service.js';

export const LEASE_SECONDS = 30 * 60;

/** Which copies a snapshot delete removes. */
export type DeleteFrom = 'all' | 'primary' | 'image';

export const isImage = (c: SnapshotInStore) => c.storeRole === 'image';

/** What the snapshot flows need: the same as BackupService. */
export type SnapshotDeps = BackupDeps;

export interface Step {
  jobId: string;
  snapshotId: string;
}

/** Options of a take. */
export interface TakeOptions {
  /** Back the snapshot up to the zone's image store right after taking it (same job). */
  backup?: boolean;
  /** A caller-chosen id: taking an id that exists returns that snapshot (idempotent). */
  id?: string;
  policyId?: string;
  slot?: string;
}

export abstract class SnapshotFlow {
  constructor(protected readonly deps: SnapshotDeps) {}

  protected get repo(): Repository {
    return this.deps.repo;
  }

  /** Starts a job's flow; when the start fails, the job's own compensation runs and the caller gets 503. */
  protected async startJob(
    flow: FlowName,
    jobId: string,
    input: Record<string, unknown>,
    compensate: (error: WorkflowFailure) => Promise<void>,
  ): Promise<{ job: Job }> {
    try {
      const { executionId } = await this.deps.workflows.start(flow, jobId, { jobId, ...input });
      return { job: await this.deps.jobs.started(jobId, executionId) };
    } catch (e) {
      await compensate({ Error: 'WorkflowStartFailed', Cause: (e as Error).message });
      throw new UnavailableError(`could not start ${flow}: ${(e as Error).message}`, { jobId }, { cause: e });
    }
  }

  /** A backup outlives its volume: a stand-in for a volume that is gone (only image copies remain). */
  protected async volumeOf(snapshot: Snapshot): Promise<Volume> {
    return (
      (await this.repo.get({ type: 'Volume', id: snapshot.volumeId })) ??
      ({
        id: snapshot.volumeId,
        version: 0,
        format: 'qcow2' as const,
        status: V.Destroyed,
      } as Volume)
    );
  }

  protected async leased(input: Step, status: S): Promise<{ snapshot: Snapshot; volume: Volume }> {
    const snapshot = await this.repo.require({ type: 'Snapshot', id: input.snapshotId });
    if (snapshot.status !== status || snapshot.lease?.owner !== input.jobId) {
      throw new ConflictError(`snapshot ${snapshot.id} is ${snapshot.status}, not held by ${input.jobId}`, {
        state: snapshot.status,
      });
    }
    return { snapshot, volume: await this.repo.require({ type: 'Volume', id: snapshot.volumeId }) };
  }

  protected async releaseVolume(volume: Volume, owner: string, from: V): Promise<void> {
    await this.repo
      .transition({
        key: { type: 'Volume', id: volume.id },
        machine: volumeMachine,
        from,
        to: V.Ready,
        leaseOwner: owner,
      })
      .catch((e: unknown) => {
        if (!(e instanceof ConflictError)) throw e;
      });
  }
}

/**
 * Take, revert and a merging delete rename or rewrite the volume's files; a host with access (a
 * running VM) would keep writing into the old file. Strata does not coordinate with the hypervisor
 * (no libvirt external snapshot or block-commit yet), so it refuses: 409 naming the host. The
 * volume's version is checked by the transition that follows, so a grant that lands between this
 * check and that write makes the request lose the race instead of slipping past.
 */
export function refuseWhileInUse(volume: Volume, what: string): void {
  if (volume.accessHostIds.length === 0) return;
  throw new ConflictError(
    `volume ${volume.id} is in use by host ${volume.accessHostIds.join(', ')}: a snapshot cannot be ${what} ` +
      'while a host has access; revoke access (stop the VM) first',
    { state: volume.status, hostId: volume.accessHostIds[0] },
  );
}
