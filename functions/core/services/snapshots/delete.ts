/**
 * snapshot-delete (statemachines/flows/snapshot-delete.ts): the snapshot held in Destroying (and the
 * volume for a merge); the flow removes each targeted copy and settles the snapshot.
 */
import { isPrimaryDriver } from '../../../../drivers/sdk/types.js';
import { ConflictError, UnprocessableError } from '../../errors.js';
import { newId } from '../../ids.js';
import type { Job, Snapshot, SnapshotInStore, Volume } from '../../model.js';
import { ObjectInStoreStatus as O, SnapshotStatus as S, VolumeStatus as V } from '../../model.js';
import { allPages } from '../../paging.js';
import { FlowName } from '../../ports.js';
import { snapshotMachine, volumeMachine } from '../../state-machines.js';
import type { BackupService } from '../backup-service.js';
import { toStoreInfo } from '../datastore-service.js';
import { causeMessage, type WorkflowFailure } from '../job-service.js';
import { volumeObject } from '../volume-service.js';
import {
  type DeleteFrom,
  isImage,
  LEASE_SECONDS,
  refuseWhileInUse,
  type SnapshotDeps,
  SnapshotFlow,
  type Step,
} from './common.js';

export class SnapshotDeleteFlow extends SnapshotFlow {
  constructor(
    deps: SnapshotDeps,
    private readonly backups: BackupService,
  ) {
    super(deps);
  }

  /**
   * Deletes a snapshot from primary storage (merging its layer into whatever depends on it), from
   * the image store (its backup: chunks no other backup holds are collected), or both (`all`).
   * Removing one copy of a snapshot that has two keeps the snapshot with the other.
   *
   * What can be decided at once is: the snapshot is held in Destroying (and the volume in
   * Snapshotting when a layer is merged, after checking no backup reads it), so a conflicting
   * request gets its 409 here. The snapshot-delete flow then removes the copies.
   */
  async start(snapshotId: string, from: DeleteFrom = 'all'): Promise<{ job: Job }> {
    const snapshot = await this.repo.require({ type: 'Snapshot', id: snapshotId });
    const volume = await this.volumeOf(snapshot);
    const copies = await this.repo.listCopies('SnapshotInStore', snapshotId);
    const targets = copies.filter((c) => from === 'all' || (from === 'image') === isImage(c));
    if (from !== 'all' && targets.length === 0) {
      throw new UnprocessableError(`snapshot ${snapshotId} has no copy on ${from} storage`, {
        field: 'from',
      });
    }
    // Merging a layer rewrites the volume's chain: not under a running VM.
    if (targets.some((c) => !isImage(c))) refuseWhileInUse(volume, 'merged away');
    const jobId = newId('job');
    // The job first (with what a recovery needs), so nothing is ever held by a job that is not there.
    await this.deps.jobs.create('snapshot.delete', { type: 'snapshot', id: snapshotId }, jobId, {
      flow: FlowName.SnapshotDelete,
      input: { jobId, snapshotId, from },
    });
    try {
      await this.holdForDelete(snapshot, volume, targets, jobId);
    } catch (e) {
      await this.deps.jobs.fail(jobId, { code: 'Refused', message: (e as Error).message });
      throw e;
    }
    return this.startJob(FlowName.SnapshotDelete, jobId, { snapshotId, from }, (error) =>
      this.failDelete({ jobId, snapshotId, from, error }),
    );
  }

  /** Holds the snapshot in Destroying (and the volume, for a merge); refused as a whole or not at all. */
  private async holdForDelete(
    snapshot: Snapshot,
    volume: Volume,
    targets: SnapshotInStore[],
    jobId: string,
  ): Promise<void> {
    const snapshotId = snapshot.id;
    await this.repo.transition({
      key: { type: 'Snapshot', id: snapshotId },
      machine: snapshotMachine,
      from: [S.CreatedOnPrimary, S.BackedUp, S.Error, S.Allocated],
      to: S.Destroying,
      expectedVersion: snapshot.version,
      lease: { owner: jobId, ttlSeconds: LEASE_SECONDS },
      // Where the snapshot goes back to if this delete is refused before it removes anything.
      changes: { statusBeforeDelete: snapshot.status },
    });
    const giveBack = (reason: string) => this.giveBack(snapshotId, jobId, reason);
    // A backup inheriting chunk holds from this one announces it before it checks this snapshot is
    // still BackedUp; Destroying is written above, so either it sees that or this sees it.
    for (const copy of targets.filter(isImage)) {
      const running = (await this.backups.inheritors(snapshot, copy.storeId)).find(
        (c) => c.status !== O.Ready,
      );
      if (running) {
        await giveBack(`not deleted: the backup of snapshot ${running.snapshotId} builds on it`);
        throw new ConflictError(
          `the backup of snapshot ${running.snapshotId} inherits from this backup and is in progress; retry after it`,
          { state: running.status },
        );
      }
    }
    // The merge rewrites the volume's chain: no other operation on the volume meanwhile.
    if (targets.some((c) => !isImage(c))) {
      await this.repo
        .transition({
          key: { type: 'Volume', id: volume.id },
          machine: volumeMachine,
          from: V.Ready,
          to: V.Snapshotting,
          expectedVersion: volume.version,
          lease: { owner: jobId, ttlSeconds: LEASE_SECONDS },
        })
        .catch(async (e: unknown) => {
          await giveBack(`not deleted: ${(e as Error).message}`);
          throw e;
        });
      // A backup reads layers the merge rewrites: if one started, back off (see BackupService.prepare).
      const siblings = await allPages((cursor) =>
        this.repo.list('Snapshot', { cursor, limit: 100, filter: { volumeId: volume.id } }),
      );
      const backingUp = siblings.find((x) => x.status === S.BackingUp);
      if (backingUp) {
        await this.releaseVolume(volume, jobId, V.Snapshotting);
        await giveBack(`not deleted: snapshot ${backingUp.id} is being backed up`);
        throw new ConflictError(`snapshot ${backingUp.id} of the volume is being backed up; retry after it`, {
          state: S.BackingUp,
        });
      }
    }
  }

  /** snapshot-delete: removes each targeted copy, then settles the snapshot (kept or destroyed). */
  async deleteCopies(input: Step & { from: DeleteFrom }): Promise<{ snapshotId: string; removed: string[] }> {
    const snapshot = await this.repo.get({ type: 'Snapshot', id: input.snapshotId });
    // An earlier run destroyed it and died before (or while) removing the row: finish that run's work.
    if (!snapshot || snapshot.status === S.Destroyed)
      return this.finishDestroyed(input.snapshotId, input.jobId);
    if (snapshot.status !== S.Destroying || snapshot.lease?.owner !== input.jobId) {
      throw new ConflictError(`snapshot ${snapshot.id} is ${snapshot.status}, not held by ${input.jobId}`, {
        state: snapshot.status,
      });
    }
    const volume = await this.volumeOf(snapshot);
    const copies = await this.repo.listCopies('SnapshotInStore', snapshot.id);
    const targets = copies.filter((c) => input.from === 'all' || (input.from === 'image') === isImage(c));
    const kept = copies.filter((c) => !targets.includes(c));
    const removed: string[] = [];
    for (const copy of targets) {
      const store = await this.repo.require({ type: 'DataStore', id: copy.storeId });
      const driver = this.deps.registry.get(store.provider).driver;
      if (isImage(copy)) {
        await this.backups.removeBackup(snapshot, copy, input.jobId);
      } else if (store.role === 'primary' && isPrimaryDriver(driver) && driver.deleteSnapshot) {
        const { id: hostId } = await this.deps.selectHost([store.id]);
        await driver.deleteSnapshot({
          store: toStoreInfo(store),
          object: volumeObject(volume),
          snapshot: { kind: 'snapshot', id: snapshot.id, format: 'qcow2', path: copy.path },
          ctx: this.deps.driverContext(input.jobId),
          hostId,
        });
      }
      await this.repo.delete({ type: 'SnapshotInStore', id: snapshot.id, storeId: copy.storeId });
      removed.push(copy.storeId);
    }
    // Only a merge held the volume (a backup-only snapshot may have outlived its volume).
    if (targets.some((c) => !isImage(c))) await this.releaseVolume(volume, input.jobId, V.Snapshotting);
    // What the snapshot is once the targets are gone (none: it is destroyed).
    const after = kept.some(isImage) ? S.BackedUp : kept.length > 0 ? S.CreatedOnPrimary : undefined;
    if (after) {
      await this.repo.transition({
        key: { type: 'Snapshot', id: snapshot.id },
        machine: snapshotMachine,
        from: S.Destroying,
        to: after,
        leaseOwner: input.jobId,
        changes: { statusReason: undefined, statusBeforeDelete: undefined },
      });
    } else {
      await this.repo.transition({
        key: { type: 'Snapshot', id: snapshot.id },
        machine: snapshotMachine,
        from: S.Destroying,
        to: S.Destroyed,
        leaseOwner: input.jobId,
      });
      await this.repo.delete({ type: 'Snapshot', id: snapshot.id });
    }
    const result = { snapshotId: snapshot.id, removed };
    await this.deps.jobs.succeed(input.jobId, result);
    return result;
  }

  /**
   * A delete that failed part-way: the snapshot is Error with the reason (deleting it again retries
   * what is left), the volume is released, the job failed.
   */
  async failDelete(input: Step & { from: DeleteFrom; error: WorkflowFailure }): Promise<void> {
    const reason = causeMessage(input.error);
    const snapshot = await this.repo.get({ type: 'Snapshot', id: input.snapshotId });
    // Every copy was already removed (the run died after destroying it): the delete is done, not failed.
    if (snapshot?.status === S.Destroyed) {
      await this.finishDestroyed(snapshot.id, input.jobId);
      return;
    }
    if (snapshot?.status === S.Destroying && snapshot.lease?.owner === input.jobId) {
      await this.repo
        .transition({
          key: { type: 'Snapshot', id: snapshot.id },
          machine: snapshotMachine,
          from: S.Destroying,
          to: S.Error,
          leaseOwner: input.jobId,
          changes: { statusReason: `delete failed (retry it): ${reason}`, statusBeforeDelete: undefined },
        })
        .catch(() => undefined);
    }
    if (snapshot) {
      const volume = await this.repo.get({ type: 'Volume', id: snapshot.volumeId });
      if (volume?.lease?.owner === input.jobId) await this.releaseVolume(volume, input.jobId, V.Snapshotting);
    }
    await this.deps.jobs.failFromFlow(input.jobId, input.error, 'SnapshotDeleteFailed');
  }

  /** The last steps of a delete whose copies are all gone: the row removed, the job succeeded. */
  private async finishDestroyed(
    snapshotId: string,
    jobId: string,
  ): Promise<{ snapshotId: string; removed: string[] }> {
    await this.repo.delete({ type: 'Snapshot', id: snapshotId });
    const result = { snapshotId, removed: [] as string[] };
    await this.deps.jobs.succeed(jobId, result);
    return result;
  }

  /** Back to the state it had before a refused delete. */
  private async giveBack(snapshotId: string, owner: string, reason: string): Promise<void> {
    const now = await this.repo.require({ type: 'Snapshot', id: snapshotId });
    const before = now.statusBeforeDelete;
    await this.repo.transition({
      key: { type: 'Snapshot', id: snapshotId },
      machine: snapshotMachine,
      from: S.Destroying,
      to: before === S.Error || before === S.Allocated || !before ? S.Error : before,
      leaseOwner: owner,
      changes: { statusReason: reason, statusBeforeDelete: undefined },
    });
  }
}
