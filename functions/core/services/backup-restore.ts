import { type DriverContext, isBackupCapable } from '../../../drivers/sdk/types.js';
import { ConflictError, UnavailableError, UnprocessableError } from '../errors.js';
import { hostGrantSeconds } from '../grants.js';
import type { DataStore, Snapshot, Volume } from '../model.js';
import { ObjectInStoreStatus as O, VolumeStatus as V } from '../model.js';
import { forEachLimit } from '../pool.js';
import type { Repository } from '../ports.js';
import { volumeMachine } from '../state-machines.js';
import type { BackupDeps } from './backup-service.js';
import {
  type BackupStore,
  blob,
  chunkKey,
  distinct,
  type ImageStore,
  LEASE_SECONDS,
  PRESIGN_CONCURRENCY,
  planKey,
} from './backup-store.js';
import { toStoreInfo } from './datastore-service.js';

export class BackupRestore {
  constructor(
    private readonly deps: BackupDeps,
    private readonly store: BackupStore,
  ) {}

  private get repo(): Repository {
    return this.deps.repo;
  }

  /**
   * Restores a snapshot into a new volume on `pool` (volume-create). Prefers a copy from the
   * snapshot's layer on primary storage when one host mounts both stores; otherwise fetches the
   * backup's chunks, verifying each one's hash on the host.
   */
  async restoreInto(input: {
    jobId: string;
    snapshotId: string;
    volume: Volume;
    pool: DataStore;
    from?: 'auto' | 'primary' | 'backup';
  }): Promise<{ path: string; via: 'primary' | 'backup' }> {
    const snapshot = await this.repo.require({ type: 'Snapshot', id: input.snapshotId });
    const ctx = this.deps.driverContext(input.jobId, { progressRange: [10, 95] });
    const from = input.from ?? 'auto';
    if (from !== 'backup') {
      const fromPrimary = await this.tryRestoreFromPrimary(snapshot, input, ctx);
      if (fromPrimary) return { path: fromPrimary, via: 'primary' };
      if (from === 'primary') {
        throw new UnprocessableError(
          `no host reaches both the store of snapshot ${snapshot.id}'s layer and ${input.pool.id}`,
          { field: 'restoreFrom' },
        );
      }
    }
    const copy = await this.store.restorableBackup(snapshot.id);
    if (!copy) {
      throw new UnprocessableError(
        `snapshot ${snapshot.id} has no backup, and no host reaches both its store and ${input.pool.id}`,
        { field: 'fromSnapshotId' },
      );
    }
    const driver = this.deps.registry.get(input.pool.provider).driver;
    if (!isBackupCapable(driver)) {
      throw new UnprocessableError(`store ${input.pool.id} cannot restore backups`, { field: 'storeId' });
    }
    const store = await this.store.imageStore(copy.storeId);
    const manifest = await this.store.readManifest(store, copy.path ?? '', ctx);
    const hashes = distinct(manifest.chunks);
    // Held while the host fetches, so deleting the backup meanwhile cannot collect them.
    const { unstored } = await this.repo.chunks.pin(store.store.id, hashes, input.jobId);
    try {
      if (unstored.length > 0) {
        throw new ConflictError(
          `backup of ${snapshot.id} names ${unstored.length} chunks the store does not hold (missing, or found corrupt by a verify job; the next backup of a snapshot with the same data stores them again)`,
        );
      }
      const urls = new Map<string, string>();
      // One host step fetches them all: each grant covers the restored bytes (grants.ts).
      const expiresSeconds = hostGrantSeconds(this.store.logicalBytes(manifest));
      await forEachLimit(hashes, PRESIGN_CONCURRENCY, async (sha) => {
        // Pinned and stored (checked just above): no HEAD per chunk.
        const { url } = await store.driver.presignGet({
          store: toStoreInfo(store.store),
          object: blob(chunkKey(sha)),
          ctx,
          expiresSeconds,
          knownToExist: true,
        });
        urls.set(sha, url);
      });
      const list = manifest.chunks.map((sha, index) =>
        sha ? { index, sha256: sha, url: urls.get(sha) } : null,
      );
      const chunksUrl = await this.store.writeJson(store, planKey(input.jobId, 'restore'), list, ctx, true);
      const { id: hostId } = await this.deps.selectHost([input.pool.id]);
      const result = await driver.restoreChunks({
        store: toStoreInfo(input.pool),
        object: { kind: 'volume', id: input.volume.id, format: 'qcow2' },
        virtualSizeBytes: manifest.virtualSizeBytes,
        chunkSizeBytes: manifest.chunkSizeBytes,
        chunksUrl: chunksUrl ?? '',
        count: list.length,
        ctx,
        hostId,
      });
      await this.deps.jobs.progress(input.jobId, 95, {
        phase: 'restored',
        chunksFetched: result.chunksFetched,
        bytesDownloaded: result.bytesDownloaded,
        zeroChunks: result.zeroChunks,
      });
      await this.finishRestore(store, hashes, input.jobId, ctx);
      return { path: result.path, via: 'backup' };
    } catch (e) {
      // (A step that suspends while the host still restores never gets here: the holds and the
      // list stay for the run that picks the command up again.)
      await this.finishRestore(store, hashes, input.jobId, ctx);
      throw e;
    }
  }

  private async finishRestore(store: ImageStore, hashes: string[], jobId: string, ctx: DriverContext) {
    await this.repo.chunks.release(store.store.id, hashes, jobId, { collect: false });
    await this.store.removePlans(store, jobId, ctx).catch(() => undefined);
  }

  private async tryRestoreFromPrimary(
    snapshot: Snapshot,
    input: { jobId: string; volume: Volume; pool: DataStore },
    ctx: DriverContext,
  ): Promise<string | undefined> {
    const copies = await this.repo.listCopies('SnapshotInStore', snapshot.id);
    const primary = copies.find((c) => c.storeRole !== 'image' && c.status === O.Ready && c.path);
    if (!primary) return undefined;
    const source = await this.repo.get({ type: 'DataStore', id: primary.storeId });
    if (source?.role !== 'primary') return undefined;
    const driver = this.deps.registry.get(input.pool.provider).driver;
    const dst = {
      store: toStoreInfo(input.pool),
      object: { kind: 'volume' as const, id: input.volume.id, format: 'qcow2' as const },
    };
    const src = {
      store: toStoreInfo(source),
      object: { kind: 'snapshot' as const, id: snapshot.id, format: 'qcow2' as const, path: primary.path },
    };
    if (!driver.canCopy(src, dst)) return undefined;
    const host = await this.deps.selectHost([source.id, input.pool.id]).catch(() => undefined);
    if (!host) return undefined;
    // The layer must not be merged away while it is read: hold its volume like a snapshot does.
    const owner = input.jobId;
    const origin = await this.repo.require({ type: 'Volume', id: snapshot.volumeId });
    const resumed = origin.status === V.Snapshotting && origin.lease?.owner === owner;
    if (origin.status !== V.Ready && !resumed) {
      throw new UnavailableError(`volume ${origin.id} is ${origin.status}; the restore will retry`, {
        state: origin.status,
      });
    }
    if (!resumed) {
      await this.repo.transition({
        key: { type: 'Volume', id: origin.id },
        machine: volumeMachine,
        from: V.Ready,
        to: V.Snapshotting,
        expectedVersion: origin.version,
        lease: { owner, ttlSeconds: LEASE_SECONDS },
      });
    }
    // A step that suspends while the host still copies never reaches the finally: the volume stays
    // held for the run that picks the copy up again.
    try {
      const result = await driver.copyAsync({ src, dst, ctx, hostId: host.id });
      return result.path;
    } finally {
      await this.repo
        .transition({
          key: { type: 'Volume', id: origin.id },
          machine: volumeMachine,
          from: V.Snapshotting,
          to: V.Ready,
          leaseOwner: owner,
        })
        .catch(() => undefined);
    }
  }
}
