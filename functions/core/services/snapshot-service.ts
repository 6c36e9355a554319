/**
 * SnapshotService: snapshots of volumes. Each flow is one module under ./snapshots/ holding the
 * request that starts it and its steps: take.ts (snapshot-take), revert.ts (snapshot-revert) and
 * delete.ts (snapshot-delete); backups, restores and backup removal are BackupService's. This class
 * is what the API and the policies call.
 */
import type { Job, Snapshot, SnapshotInStore } from '../model.js';
import { SnapshotStatus as S } from '../model.js';
import { allPages } from '../paging.js';
import type { ListOptions, Page } from '../ports.js';
import { BackupService } from './backup-service.js';
import type { DeleteFrom, SnapshotDeps, TakeOptions } from './snapshots/common.js';
import { SnapshotDeleteFlow } from './snapshots/delete.js';
import { SnapshotRevertFlow } from './snapshots/revert.js';
import { SnapshotTakeFlow } from './snapshots/take.js';

export type { DeleteFrom, SnapshotDeps, TakeOptions };

export interface SnapshotView extends Snapshot {
  copies: SnapshotInStore[];
}

export class SnapshotService {
  /** Backup to the image store, restore and backup removal. */
  readonly backups: BackupService;
  readonly taking: SnapshotTakeFlow;
  readonly reverting: SnapshotRevertFlow;
  readonly deleting: SnapshotDeleteFlow;

  constructor(private readonly deps: SnapshotDeps) {
    this.backups = new BackupService(deps);
    this.taking = new SnapshotTakeFlow(deps, this.backups);
    this.reverting = new SnapshotRevertFlow(deps);
    this.deleting = new SnapshotDeleteFlow(deps, this.backups);
  }

  private get repo() {
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

  /** Starts snapshot-take (see SnapshotTakeFlow.start). */
  take(
    volumeId: string,
    name: string,
    options: TakeOptions = {},
  ): Promise<{ snapshot: Snapshot; job: Job; existing?: boolean }> {
    return this.taking.start(volumeId, name, options);
  }

  /** Starts snapshot-revert (see SnapshotRevertFlow.start). */
  revert(snapshotId: string): Promise<{ job: Job }> {
    return this.reverting.start(snapshotId);
  }

  /** Starts snapshot-delete (see SnapshotDeleteFlow.start). */
  delete(snapshotId: string, from: DeleteFrom = 'all'): Promise<{ job: Job }> {
    return this.deleting.start(snapshotId, from);
  }
}
