import { isPrimaryDriver } from '../../../drivers/sdk/types.js';
import { ConflictError, UnavailableError, UnprocessableError } from '../errors.js';
import { newId } from '../ids.js';
import type { Job, Snapshot, SnapshotInStore, Volume } from '../model.js';
import { JobState, ObjectInStoreStatus as O, SnapshotStatus as S, VolumeStatus as V } from '../model.js';
import { allPages } from '../paging.js';
import type { ListOptions, Page, Repository } from '../ports.js';
import { FlowName, Write } from '../ports.js';
import { snapshotMachine, volumeMachine } from '../state-machines.js';
import { type BackupDeps, BackupService } from './backup-service.js';
import { toStoreInfo } from './datastore-service.js';
import { causeMessage, type WorkflowFailure } from './job-service.js';
import { volumeObject } from './volume-service.js';

const LEASE_SECONDS = 30 * 60;

/** Which copies a snapshot delete removes. */
export type DeleteFrom = 'all' | 'primary' | 'image';

const isImage = (c: SnapshotInStore) => c.storeRole === 'image';

/** What SnapshotService needs: the same as its BackupService. */
export type SnapshotDeps = BackupDeps;

export interface SnapshotView extends Snapshot {
  copies: SnapshotInStore[];
}

interface Step {
  jobId: string;
  snapshotId: string;
}

/** Options of {@link SnapshotService.take}. */
export interface TakeOptions {
  /** Back the snapshot up to the zone's image store right after taking it (same job). */
  backup?: boolean;
  /** A caller-chosen id: taking an id that exists returns that snapshot (idempotent). */
  id?: string;
  policyId?: string;
  slot?: string;
}

export class SnapshotService {
  /** Backup to the image store, restore and backup removal. */
  readonly backups: BackupService;

  constructor(private readonly deps: SnapshotDeps) {
    this.backups = new BackupService(deps);
  }

  private get repo(): Repository {
    return this.deps.repo;
  }

  async get(id: string): Promise<SnapshotView> {
    const snapshot = await this.repo.require({ type: 'Snapshot', id });
    return { ...snapshot, copies: await this.repo.listCopies('SnapshotInStore', id) };
  }

  /**
   * Ids of the snapshots that keep a volume from being deleted or moved: every snapshot with a
   * layer on primary storage, or in any state but BackedUp. A backup-only snapshot outlives its volume.
   */
  async holdingVolume(volumeId: string): Promise<string[]> {
    const all = await allPages((cursor) => this.repo.list('Snapshot', { cursor, filter: { volumeId } }));
    const held: string[] = [];
    for (const snapshot of all) {
      const copies = await this.repo.listCopies('SnapshotInStore', snapshot.id);
      if (snapshot.status !== S.BackedUp || copies.some((c) => c.storeRole !== 'image'))
        held.push(snapshot.id);
    }
    return held;
  }

  async list(volumeId: string | undefined, options: ListOptions = {}): Promise<Page<Snapshot>> {
    return this.repo.list('Snapshot', { ...options, filter: volumeId ? { volumeId } : {} });
  }

  /**
   * Starts snapshot-take: the volume is held in Snapshotting until the layer is frozen. With
   * `backup`, the same job goes on to back the snapshot up to the image store.
   *
   * `id` makes the call idempotent (policies pass one per slot): a snapshot with that id that
   * already exists is returned as it is, with the job that took it, and nothing new starts.
   */
  async take(
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

  /**
   * Returns the volume to any of its snapshots (not only the latest): the volume is held in
   * RevertSnapshotting at once (so of two racing requests one wins), and the snapshot-revert flow
   * swaps the layers on a host.
   */
  async revert(snapshotId: string): Promise<{ job: Job }> {
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

  /**
   * Deletes a snapshot from primary storage (merging its layer into whatever depends on it), from
   * the image store (its backup: chunks no other backup holds are collected), or both (`all`).
   * Removing one copy of a snapshot that has two keeps the snapshot with the other.
   *
   * What can be decided at once is: the snapshot is held in Destroying (and the volume in
   * Snapshotting when a layer is merged, after checking no backup reads it), so a conflicting
   * request gets its 409 here. The snapshot-delete flow then removes the copies.
   */
  async delete(snapshotId: string, from: DeleteFrom = 'all'): Promise<{ job: Job }> {
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

  /** Starts a job's flow; when the start fails, the job's own compensation runs and the caller gets 503. */
  private async startJob(
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

  /** A backup outlives its volume: a stand-in for a volume that is gone (only image copies remain). */
  private async volumeOf(snapshot: Snapshot): Promise<Volume> {
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

  private async leased(input: Step, status: S): Promise<{ snapshot: Snapshot; volume: Volume }> {
    const snapshot = await this.repo.require({ type: 'Snapshot', id: input.snapshotId });
    if (snapshot.status !== status || snapshot.lease?.owner !== input.jobId) {
      throw new ConflictError(`snapshot ${snapshot.id} is ${snapshot.status}, not held by ${input.jobId}`, {
        state: snapshot.status,
      });
    }
    return { snapshot, volume: await this.repo.require({ type: 'Volume', id: snapshot.volumeId }) };
  }

  private async releaseVolume(volume: Volume, owner: string, from: V): Promise<void> {
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
function refuseWhileInUse(volume: Volume, what: string): void {
  if (volume.accessHostIds.length === 0) return;
  throw new ConflictError(
    `volume ${volume.id} is in use by host ${volume.accessHostIds.join(', ')}: a snapshot cannot be ${what} ` +
      'while a host has access; revoke access (stop the VM) first',
    { state: volume.status, hostId: volume.accessHostIds[0] },
  );
}
