/**
 * snapshot-revert (statemachines/flows/snapshot-revert.ts): the volume held in RevertSnapshotting
 * with its job in one write; a host makes the snapshot the base of a fresh active layer.
 */
import { isPrimaryDriver } from '../../../../drivers/sdk/types.js';
import { ConflictError, UnprocessableError } from '../../errors.js';
import { newId } from '../../ids.js';
import type { Job } from '../../model.js';
import { SnapshotStatus as S, VolumeStatus as V } from '../../model.js';
import { FlowName, Write } from '../../ports.js';
import { volumeMachine } from '../../state-machines.js';
import { toStoreInfo } from '../datastore-service.js';
import type { WorkflowFailure } from '../job-service.js';
import { volumeObject } from '../volume-service.js';
import { LEASE_SECONDS, refuseWhileInUse, SnapshotFlow, type Step } from './common.js';

export class SnapshotRevertFlow extends SnapshotFlow {
  /**
   * Returns the volume to any of its snapshots (not only the latest): the volume is held in
   * RevertSnapshotting at once (so of two racing requests one wins), and the snapshot-revert flow
   * swaps the layers on a host.
   */
  async start(snapshotId: string): Promise<{ job: Job }> {
    const snapshot = await this.repo.require({ type: 'Snapshot', id: snapshotId });
    if (snapshot.status !== S.CreatedOnPrimary && snapshot.status !== S.BackedUp) {
      throw new ConflictError(`snapshot ${snapshotId} is ${snapshot.status}`, { state: snapshot.status });
    }
    const volume = await this.repo.require({ type: 'Volume', id: snapshot.volumeId });
    const copy = await this.repo.get({
      type: 'SnapshotInStore',
      id: snapshotId,
      storeId: volume.storeId ?? '',
    });
    if (!copy) {
      throw new UnprocessableError(
        `snapshot ${snapshotId} has no copy on the volume's store ${volume.storeId}`,
        { field: 'snapshotId' },
      );
    }
    const pool = await this.repo.require({ type: 'DataStore', id: volume.storeId ?? '' });
    if (!isPrimaryDriver(this.deps.registry.get(pool.provider).driver)) {
      throw new UnprocessableError(`store ${pool.id} cannot revert snapshots`, { field: 'snapshotId' });
    }
    refuseWhileInUse(volume, 'reverted');
    const jobId = newId('job');
    await this.repo.transact([
      Write.transition({
        key: { type: 'Volume', id: volume.id },
        machine: volumeMachine,
        from: V.Ready,
        to: V.RevertSnapshotting,
        expectedVersion: volume.version,
        lease: { owner: jobId, ttlSeconds: LEASE_SECONDS },
      }),
      this.deps.jobs.createWrite('snapshot.revert', { type: 'snapshot', id: snapshotId }, jobId, {
        flow: FlowName.SnapshotRevert,
        input: { jobId, snapshotId },
      }),
    ]);
    return this.startJob(FlowName.SnapshotRevert, jobId, { snapshotId }, (error) =>
      this.failRevert({ jobId, snapshotId, error }),
    );
  }

  /** snapshot-revert: the driver makes the snapshot the base of a fresh active layer, on a host. */
  async revertOnPool(input: Step): Promise<{ snapshotId: string; volumeId: string }> {
    const snapshot = await this.repo.require({ type: 'Snapshot', id: input.snapshotId });
    const volume = await this.repo.require({ type: 'Volume', id: snapshot.volumeId });
    if (volume.status !== V.RevertSnapshotting || volume.lease?.owner !== input.jobId) {
      throw new ConflictError(`volume ${volume.id} is ${volume.status}, not held by ${input.jobId}`, {
        state: volume.status,
      });
    }
    const copy = await this.repo.require({
      type: 'SnapshotInStore',
      id: snapshot.id,
      storeId: volume.storeId ?? '',
    });
    const pool = await this.repo.require({ type: 'DataStore', id: volume.storeId ?? '' });
    const driver = this.deps.registry.get(pool.provider).driver;
    if (!isPrimaryDriver(driver)) throw new UnprocessableError(`store ${pool.id} cannot revert snapshots`);
    const { id: hostId } = await this.deps.selectHost([pool.id]);
    await driver.revertSnapshot({
      store: toStoreInfo(pool),
      object: volumeObject(volume),
      snapshot: { kind: 'snapshot', id: snapshot.id, format: 'qcow2', path: copy.path },
      ctx: this.deps.driverContext(input.jobId),
      hostId,
    });
    await this.releaseVolume(volume, input.jobId, V.RevertSnapshotting);
    const result = { snapshotId: snapshot.id, volumeId: volume.id };
    await this.deps.jobs.succeed(input.jobId, result);
    return result;
  }

  /** The driver swaps layers atomically: on failure the volume is as it was, and is released. */
  async failRevert(input: Step & { error: WorkflowFailure }): Promise<void> {
    const snapshot = await this.repo.get({ type: 'Snapshot', id: input.snapshotId });
    const volume = snapshot ? await this.repo.get({ type: 'Volume', id: snapshot.volumeId }) : undefined;
    if (volume) await this.releaseVolume(volume, input.jobId, V.RevertSnapshotting);
    await this.deps.jobs.failFromFlow(input.jobId, input.error, 'RevertFailed');
  }
}
