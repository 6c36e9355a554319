/**
 * snapshot-take (statemachines/flows/snapshot-take.ts): the volume held in Snapshotting, the new
 * snapshot and the job in one write; a host freezes the layer; with `backup` the same job goes on to
 * snapshot-backup. A policy's take names its slot's snapshot, so a repeat delivery takes nothing twice.
 */
import { isPrimaryDriver } from '../../../../drivers/sdk/types.js';
import { ConflictError, UnprocessableError } from '../../errors.js';
import { newId } from '../../ids.js';
import type { Job, Snapshot } from '../../model.js';
import { JobState, ObjectInStoreStatus as O, SnapshotStatus as S, VolumeStatus as V } from '../../model.js';
import { FlowName, Write } from '../../ports.js';
import { snapshotMachine, volumeMachine } from '../../state-machines.js';
import type { BackupService } from '../backup-service.js';
import { toStoreInfo } from '../datastore-service.js';
import { causeMessage, type WorkflowFailure } from '../job-service.js';
import { volumeObject } from '../volume-service.js';
import {
  LEASE_SECONDS,
  refuseWhileInUse,
  type SnapshotDeps,
  SnapshotFlow,
  type Step,
  type TakeOptions,
} from './common.js';

export class SnapshotTakeFlow extends SnapshotFlow {
  constructor(
    deps: SnapshotDeps,
    private readonly backups: BackupService,
  ) {
    super(deps);
  }

  /**
   * Starts snapshot-take: the volume is held in Snapshotting until the layer is frozen. With
   * `backup`, the same job goes on to back the snapshot up to the image store.
   *
   * `id` makes the call idempotent (policies pass one per slot): a snapshot with that id that
   * already exists is returned as it is, with the job that took it, and nothing new starts.
   */
  async start(
    volumeId: string,
    name: string,
    options: TakeOptions = {},
  ): Promise<{ snapshot: Snapshot; job: Job; existing?: boolean }> {
    if (options.id) {
      const existing = await this.repo.get({ type: 'Snapshot', id: options.id });
      if (existing) {
        const again = await this.takenBefore(existing);
        if (again) return again;
      }
    }
    const volume = await this.repo.require({ type: 'Volume', id: volumeId });
    const pool = volume.storeId ? await this.repo.get({ type: 'DataStore', id: volume.storeId }) : undefined;
    if (!pool || !isPrimaryDriver(this.deps.registry.get(pool.provider).driver)) {
      throw new UnprocessableError(`volume ${volumeId} is not on a store that takes snapshots`, {
        field: 'volumeId',
      });
    }
    refuseWhileInUse(volume, 'taken');
    const jobId = newId('job');
    const lease = { owner: jobId, ttlSeconds: LEASE_SECONDS };
    const id = options.id ?? newId('snap');
    const launch = { flow: FlowName.SnapshotTake, input: { jobId, snapshotId: id } };
    // The volume held, the new snapshot and the job are one write (a race for the same id loses all).
    await this.repo.transact([
      Write.transition({
        key: { type: 'Volume', id: volumeId },
        machine: volumeMachine,
        from: V.Ready,
        to: V.Snapshotting,
        expectedVersion: volume.version,
        lease,
      }),
      Write.create('Snapshot', {
        id,
        name,
        volumeId,
        status: S.Creating,
        sizeBytes: volume.sizeBytes,
        ...(options.backup ? { backupRequested: true } : {}),
        ...(options.policyId ? { policyId: options.policyId } : {}),
        ...(options.slot ? { slot: options.slot } : {}),
        takenByJobId: jobId,
        lease: { owner: jobId, expiresAt: new Date(Date.now() + LEASE_SECONDS * 1000).toISOString() },
      }),
      this.deps.jobs.createWrite('snapshot.take', { type: 'snapshot', id }, jobId, launch),
    ]);
    const snapshot = await this.repo.require({ type: 'Snapshot', id });
    const { executionId } = await this.deps.workflows.start(launch.flow, jobId, launch.input);
    return { snapshot, job: await this.deps.jobs.started(jobId, executionId) };
  }

  /**
   * A take of an id that exists: the snapshot and the job that took it. A job whose flow never
   * started (its starter died after the write) is started now, under its own name, so a repeat
   * delivery finishes what the first began. A take that failed and left nothing (Error, no lease,
   * no copy) is forgotten: `undefined`, and the caller takes the id anew.
   */
  private async takenBefore(
    existing: Snapshot,
  ): Promise<{ snapshot: Snapshot; job: Job; existing: true } | undefined> {
    let job = await this.jobOf(existing);
    if (existing.status === S.Error && !existing.lease && job.state === JobState.Failed) {
      const copies = await this.repo.listCopies('SnapshotInStore', existing.id);
      if (copies.length === 0) {
        await this.repo.delete({ type: 'Snapshot', id: existing.id }, existing.version);
        return undefined;
      }
    }
    if (job.state === JobState.Pending && !job.executionId && job.flow && job.flowInput) {
      const { executionId } = await this.deps.workflows.start(job.flow as FlowName, job.id, job.flowInput);
      job = await this.deps.jobs.started(job.id, executionId);
    }
    return { snapshot: existing, job, existing: true };
  }

  private async jobOf(snapshot: Snapshot): Promise<Job> {
    const jobId = snapshot.takenByJobId;
    const job = jobId ? await this.repo.get({ type: 'Job', id: jobId }) : undefined;
    if (!job) throw new ConflictError(`snapshot ${snapshot.id} already exists`, { state: snapshot.status });
    return job;
  }

  /** snapshot-take: freeze the volume's current layer on a host (the driver's takeSnapshot). */
  async takeOnPool(input: Step): Promise<{ path: string; sizeBytes: number }> {
    const { snapshot, volume } = await this.leased(input, S.Creating);
    const pool = await this.repo.require({ type: 'DataStore', id: volume.storeId ?? '' });
    const driver = this.deps.registry.get(pool.provider).driver;
    if (!isPrimaryDriver(driver)) throw new UnprocessableError(`store ${pool.id} takes no snapshots`);
    const { id: hostId } = await this.deps.selectHost([pool.id]);
    const result = await driver.takeSnapshot({
      store: toStoreInfo(pool),
      object: volumeObject(volume),
      snapshot: { kind: 'snapshot', id: snapshot.id, format: 'qcow2' },
      ctx: this.deps.driverContext(input.jobId),
      hostId,
    });
    return { path: result.path, sizeBytes: result.sizeBytes };
  }

  async finishTake(input: Step & { path: string; sizeBytes: number }): Promise<void> {
    const snapshot = await this.repo.require({ type: 'Snapshot', id: input.snapshotId });
    const volume = await this.repo.require({ type: 'Volume', id: snapshot.volumeId });
    const existing = await this.repo.get({
      type: 'SnapshotInStore',
      id: snapshot.id,
      storeId: volume.storeId ?? '',
    });
    if (!existing) {
      await this.repo.create('SnapshotInStore', {
        snapshotId: snapshot.id,
        storeId: volume.storeId ?? '',
        storeRole: 'primary',
        status: O.Ready,
        path: input.path,
        sizeBytes: input.sizeBytes,
      });
    }
    if (snapshot.status === S.Creating) {
      await this.repo.transition({
        key: { type: 'Snapshot', id: snapshot.id },
        machine: snapshotMachine,
        from: S.Creating,
        to: S.CreatedOnPrimary,
        leaseOwner: input.jobId,
      });
    }
    await this.releaseVolume(volume, input.jobId, V.Snapshotting);
    if (snapshot.backupRequested) {
      // The same job goes on with the backup (snapshot-backup finishes it).
      const now = await this.repo.require({ type: 'Snapshot', id: snapshot.id });
      if (now.status === S.CreatedOnPrimary) {
        try {
          await this.backups.continueAfterTake(snapshot.id, input.jobId);
          return;
        } catch (e) {
          await this.deps.jobs.fail(input.jobId, {
            code: 'BackupNotStarted',
            message: `snapshot ${snapshot.id} was taken, but its backup did not start: ${(e as Error).message}`,
          });
          return;
        }
      }
      return; // an earlier run of this step started the backup
    }
    await this.deps.jobs.succeed(input.jobId, {
      snapshotId: snapshot.id,
      volumeId: volume.id,
      path: input.path,
    });
  }

  async failTake(input: Step & { error: WorkflowFailure }): Promise<void> {
    const reason = causeMessage(input.error);
    const snapshot = await this.repo.get({ type: 'Snapshot', id: input.snapshotId });
    if (snapshot?.status === S.Creating && snapshot.lease?.owner === input.jobId) {
      await this.repo.transition({
        key: { type: 'Snapshot', id: snapshot.id },
        machine: snapshotMachine,
        from: S.Creating,
        to: S.Error,
        leaseOwner: input.jobId,
        changes: { statusReason: reason },
      });
    }
    if (snapshot) {
      const volume = await this.repo.get({ type: 'Volume', id: snapshot.volumeId });
      if (volume) await this.releaseVolume(volume, input.jobId, V.Snapshotting);
    }
    await this.deps.jobs.failFromFlow(input.jobId, input.error, 'SnapshotFailed');
  }
}
