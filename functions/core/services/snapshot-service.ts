import { isPrimaryDriver } from '../../../drivers/sdk/types.js';
import { ConflictError, UnprocessableError } from '../errors.js';
import { newId } from '../ids.js';
import type { Job, Snapshot, SnapshotInStore, Volume } from '../model.js';
import { ObjectInStoreStatus as O, SnapshotStatus as S, VolumeStatus as V } from '../model.js';
import { allPages } from '../paging.js';
import type { ListOptions, Page, Repository } from '../ports.js';
import { FlowName } from '../ports.js';
import { snapshotMachine, volumeMachine } from '../state-machines.js';
import { type BackupDeps, BackupService, MERGE_OWNER_PREFIX } from './backup-service.js';
import { toStoreInfo } from './datastore-service.js';
import { causeMessage, type WorkflowFailure } from './job-service.js';
import { volumeObject } from './volume-service.js';

const LEASE_SECONDS = 30 * 60;

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
      if (existing) return { snapshot: existing, job: await this.jobOf(existing), existing: true };
    }
    const volume = await this.repo.require({ type: 'Volume', id: volumeId });
    const pool = volume.storeId ? await this.repo.get({ type: 'DataStore', id: volume.storeId }) : undefined;
    if (!pool || !isPrimaryDriver(this.deps.registry.get(pool.provider).driver)) {
      throw new UnprocessableError(`volume ${volumeId} is not on a store that takes snapshots`, {
        field: 'volumeId',
      });
    }
    const jobId = newId('job');
    const lease = { owner: jobId, ttlSeconds: LEASE_SECONDS };
    await this.repo.transition({
      key: { type: 'Volume', id: volumeId },
      machine: volumeMachine,
      from: V.Ready,
      to: V.Snapshotting,
      expectedVersion: volume.version,
      lease,
    });
    const id = options.id ?? newId('snap');
    const snapshot = await this.repo
      .create('Snapshot', {
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
      })
      .catch(async (e: unknown) => {
        // Lost a race for the same id: give the volume back.
        await this.releaseVolume({ ...volume, status: V.Snapshotting }, jobId, V.Snapshotting);
        throw e;
      });
    await this.deps.jobs.create('snapshot.take', { type: 'snapshot', id }, jobId);
    const { executionId } = await this.deps.workflows.start(FlowName.SnapshotTake, jobId, {
      jobId,
      snapshotId: id,
    });
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

  /** Returns the volume to any of its snapshots (not only the latest). */
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
        {
          field: 'snapshotId',
        },
      );
    }
    const jobId = newId('job');
    await this.repo.transition({
      key: { type: 'Volume', id: volume.id },
      machine: volumeMachine,
      from: V.Ready,
      to: V.RevertSnapshotting,
      expectedVersion: volume.version,
      lease: { owner: jobId, ttlSeconds: LEASE_SECONDS },
    });
    await this.deps.jobs.create('snapshot.revert', { type: 'snapshot', id: snapshotId }, jobId);
    try {
      const pool = await this.repo.require({ type: 'DataStore', id: volume.storeId ?? '' });
      const driver = this.deps.registry.get(pool.provider).driver;
      if (!isPrimaryDriver(driver)) throw new UnprocessableError(`store ${pool.id} cannot revert snapshots`);
      const { id: hostId } = await this.deps.selectHost([pool.id]);
      await driver.revertSnapshot({
        store: toStoreInfo(pool),
        object: volumeObject(volume),
        snapshot: { kind: 'snapshot', id: snapshotId, format: 'qcow2', path: copy.path },
        ctx: this.deps.driverContext(jobId),
        hostId,
      });
    } catch (e) {
      // The driver replaces the active layer atomically: on failure the volume is as it was.
      await this.releaseVolume(volume, jobId, V.RevertSnapshotting);
      await this.deps.jobs.fail(jobId, { code: 'RevertFailed', message: (e as Error).message });
      throw e;
    }
    await this.releaseVolume(volume, jobId, V.RevertSnapshotting);
    return { job: await this.deps.jobs.succeed(jobId, { snapshotId, volumeId: volume.id }) };
  }

  /**
   * Deletes a snapshot from primary storage (merging its layer into whatever depends on it), from
   * the image store (its backup: chunks no other backup holds are collected), or both (`all`).
   * Removing one copy of a snapshot that has two keeps the snapshot with the other.
   */
  async delete(snapshotId: string, from: 'all' | 'primary' | 'image' = 'all'): Promise<void> {
    const snapshot = await this.repo.require({ type: 'Snapshot', id: snapshotId });
    // A backup outlives its volume: only a layer on primary storage needs the volume.
    const volume: Volume =
      (await this.repo.get({ type: 'Volume', id: snapshot.volumeId })) ??
      ({
        id: snapshot.volumeId,
        version: 0,
        format: 'qcow2' as const,
        status: V.Destroyed,
      } as Volume);
    const copies = await this.repo.listCopies('SnapshotInStore', snapshotId);
    const isImage = (c: SnapshotInStore) => c.storeRole === 'image';
    const targets = copies.filter((c) => from === 'all' || (from === 'image') === isImage(c));
    const kept = copies.filter((c) => !targets.includes(c));
    if (from !== 'all' && targets.length === 0) {
      throw new UnprocessableError(`snapshot ${snapshotId} has no copy on ${from} storage`, {
        field: 'from',
      });
    }
    // What the snapshot is once the targets are gone (none: it is destroyed).
    const after = kept.some(isImage) ? S.BackedUp : kept.length > 0 ? S.CreatedOnPrimary : undefined;
    const owner = newId(MERGE_OWNER_PREFIX.slice(0, -1));
    await this.repo.transition({
      key: { type: 'Snapshot', id: snapshotId },
      machine: snapshotMachine,
      from: [S.CreatedOnPrimary, S.BackedUp, S.Error, S.Allocated],
      to: S.Destroying,
      expectedVersion: snapshot.version,
      lease: { owner, ttlSeconds: LEASE_SECONDS },
    });
    const giveBack = async (reason: string) =>
      this.repo.transition({
        key: { type: 'Snapshot', id: snapshotId },
        machine: snapshotMachine,
        from: S.Destroying,
        to: snapshot.status === S.Error || snapshot.status === S.Allocated ? S.Error : snapshot.status,
        leaseOwner: owner,
        changes: { statusReason: reason },
      });
    // The merge rewrites the volume's chain: no other operation on the volume meanwhile.
    const mergesLayer = targets.some((c) => !isImage(c));
    if (mergesLayer) {
      await this.repo
        .transition({
          key: { type: 'Volume', id: volume.id },
          machine: volumeMachine,
          from: V.Ready,
          to: V.Snapshotting,
          expectedVersion: volume.version,
          lease: { owner, ttlSeconds: LEASE_SECONDS },
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
        await this.releaseVolume(volume, owner, V.Snapshotting);
        await giveBack(`not deleted: snapshot ${backingUp.id} is being backed up`);
        throw new ConflictError(`snapshot ${backingUp.id} of the volume is being backed up; retry after it`, {
          state: S.BackingUp,
        });
      }
    }
    try {
      for (const copy of targets) {
        const store = await this.repo.require({ type: 'DataStore', id: copy.storeId });
        const driver = this.deps.registry.get(store.provider).driver;
        if (isImage(copy)) {
          await this.backups.removeBackup(snapshot, copy, owner);
        } else if (store.role === 'primary' && isPrimaryDriver(driver) && driver.deleteSnapshot) {
          const { id: hostId } = await this.deps.selectHost([store.id]);
          await driver.deleteSnapshot({
            store: toStoreInfo(store),
            object: volumeObject(volume),
            snapshot: { kind: 'snapshot', id: snapshotId, format: 'qcow2', path: copy.path },
            ctx: this.deps.driverContext(owner),
            hostId,
          });
        }
        await this.repo.delete({ type: 'SnapshotInStore', id: snapshotId, storeId: copy.storeId });
      }
    } catch (e) {
      await this.repo
        .transition({
          key: { type: 'Snapshot', id: snapshotId },
          machine: snapshotMachine,
          from: S.Destroying,
          to: S.Error,
          leaseOwner: owner,
          changes: { statusReason: `delete failed (retry it): ${(e as Error).message}` },
        })
        .catch(() => undefined);
      throw e;
    } finally {
      if (mergesLayer) await this.releaseVolume(volume, owner, V.Snapshotting);
    }
    if (after) {
      await this.repo.transition({
        key: { type: 'Snapshot', id: snapshotId },
        machine: snapshotMachine,
        from: S.Destroying,
        to: after,
        leaseOwner: owner,
        changes: { statusReason: undefined },
      });
      return;
    }
    await this.repo.transition({
      key: { type: 'Snapshot', id: snapshotId },
      machine: snapshotMachine,
      from: S.Destroying,
      to: S.Destroyed,
      leaseOwner: owner,
    });
    await this.repo.delete({ type: 'Snapshot', id: snapshotId });
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
