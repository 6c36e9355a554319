/**
 * Lazy restore inside volume-create (`POST /volumes {fromSnapshotId, restoreFrom: 'backup', lazy:
 * true}`; docs/backup-format.md, "Lazy restore"). The createOnPool step, replayed by the host-step
 * loop until it ends:
 *
 * 1. (volume still Creating) pins the backup's chunks for the job, presigns every chunk, writes the
 *    list to the image store and runs host operation `lazyRestoreStart`: the volume exists as an
 *    overlay on the host's export and is usable; the volume becomes Hydrating (with its path, and
 *    a lease long enough for the hydration);
 * 2. runs `lazyRestoreWait`, one long host command whose progress (`phase: 'hydrating'`,
 *    `chunksHydrated`, `chunksTotal`) the job reports while the step suspends and polls;
 * 3. runs `lazyRestoreFinish` (flatten), releases the pins and the lists, and answers the path;
 *    volume-create's finishCreate then makes the volume Ready.
 *
 * A failure anywhere lands in volume-create's compensation, which calls {@link LazyRestore.abort}:
 * the daemon is stopped and the unfinished volume removed (writes made to it during hydration are
 * lost), and the volume is Error with the reason. Resuming a failed lazy restore is not offered:
 * transient failures are retried inside the host command and by the step's retries instead.
 */
import { isLazyRestoreCapable } from '../../../drivers/sdk/lazy-restore.js';
import type { DriverContext } from '../../../drivers/sdk/types.js';
import { ConflictError, UnprocessableError } from '../errors.js';
import { hostGrantSeconds } from '../grants.js';
import type { DataStore, Volume } from '../model.js';
import { VolumeStatus as V } from '../model.js';
import { forEachLimit } from '../pool.js';
import { volumeMachine } from '../state-machines.js';
import type { BackupDeps } from './backup-service.js';
import { BackupStore, blob, chunkKey, distinct, PRESIGN_CONCURRENCY, planKey } from './backup-store.js';
import { toStoreInfo } from './datastore-service.js';

/** The lease a Hydrating volume holds: as long as the host command that waits may run, four times. */
export const HYDRATING_LEASE_SECONDS = 24 * 3600;

export class LazyRestore {
  private readonly store: BackupStore;

  constructor(private readonly deps: BackupDeps) {
    this.store = new BackupStore(deps);
  }

  /** Restores `snapshotId`'s backup into `volume` lazily (see the file comment); answers its path. */
  async restoreInto(input: {
    jobId: string;
    snapshotId: string;
    volume: Volume;
    pool: DataStore;
  }): Promise<{ path: string }> {
    const { repo } = this.deps;
    const driver = this.deps.registry.get(input.pool.provider).driver;
    if (!isLazyRestoreCapable(driver)) {
      throw new UnprocessableError(`store ${input.pool.id} cannot restore lazily`, { field: 'lazy' });
    }
    const ctx = this.deps.driverContext(input.jobId, { progressRange: [10, 95] });
    const copy = await this.store.restorableBackup(input.snapshotId);
    if (!copy) {
      throw new UnprocessableError(`snapshot ${input.snapshotId} has no backup to restore lazily`, {
        field: 'fromSnapshotId',
      });
    }
    const image = await this.store.imageStore(copy.storeId);
    const manifest = await this.store.readManifest(image, copy.path ?? '', ctx);
    const hashes = distinct(manifest.chunks);
    const target = {
      store: toStoreInfo(input.pool),
      object: { kind: 'volume' as const, id: input.volume.id, format: 'qcow2' as const },
      ctx,
    };
    const current = await repo.require({ type: 'Volume', id: input.volume.id });
    // The export is a unix socket on one host: once chosen, every call goes there.
    let hostId = current.hydrationHostId ?? (await this.deps.selectHost([input.pool.id])).id;
    if (current.status === V.Creating) {
      // Held until the flatten: a backup deleted meanwhile cannot collect what the export reads.
      const { unstored } = await repo.chunks.pin(image.store.id, hashes, input.jobId);
      if (unstored.length > 0) {
        throw new ConflictError(
          `backup of ${input.snapshotId} names ${unstored.length} chunks the store does not hold`,
        );
      }
      const urls = new Map<string, string>();
      const expiresSeconds = hostGrantSeconds(this.store.logicalBytes(manifest));
      await forEachLimit(hashes, PRESIGN_CONCURRENCY, async (sha) => {
        const { url } = await image.driver.presignGet({
          store: toStoreInfo(image.store),
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
      const chunksUrl = await this.store.writeJson(image, planKey(input.jobId, 'lazy'), list, ctx, true);
      const started = await driver.lazyRestoreStart({
        ...target,
        hostId,
        virtualSizeBytes: manifest.virtualSizeBytes,
        chunkSizeBytes: manifest.chunkSizeBytes,
        chunksUrl: chunksUrl ?? '',
        count: list.length,
      });
      // Usable from here on: the volume file exists, backed by the host's export. (A replay finds
      // the start recorded on the host it first went to, which may not be this run's choice.)
      hostId = started.hostId;
      await repo.transition({
        key: { type: 'Volume', id: input.volume.id },
        machine: volumeMachine,
        from: V.Creating,
        to: V.Hydrating,
        leaseOwner: input.jobId,
        lease: { owner: input.jobId, ttlSeconds: HYDRATING_LEASE_SECONDS },
        changes: { path: started.path, statusReason: undefined, hydrationHostId: hostId },
      });
      await this.deps.jobs.progress(input.jobId, 10, {
        phase: 'hydrating',
        chunksHydrated: started.chunksHydrated,
        chunksTotal: started.chunksTotal,
        hostId,
      });
    } else if (current.status !== V.Hydrating || current.lease?.owner !== input.jobId) {
      throw new ConflictError(
        `volume ${current.id} is ${current.status}, not being restored by ${input.jobId}`,
        {
          state: current.status,
        },
      );
    }
    await driver.lazyRestoreWait({ ...target, hostId });
    const finished = await driver.lazyRestoreFinish({ ...target, hostId });
    await this.release(image.store.id, hashes, input.jobId, ctx, image);
    return { path: finished.path };
  }

  /**
   * Compensation of a lazy restore: stops the host's export and removes the unfinished volume and
   * the restore's state, then gives back the chunk pins and the job's lists. Safe to repeat.
   */
  async abort(input: { jobId: string; volume: Volume; pool: DataStore }): Promise<void> {
    const driver = this.deps.registry.get(input.pool.provider).driver;
    const ctx = this.deps.driverContext(input.jobId);
    if (isLazyRestoreCapable(driver)) {
      const current = await this.deps.repo.get({ type: 'Volume', id: input.volume.id });
      const hostId = current?.hydrationHostId ?? (await this.deps.selectHost([input.pool.id])).id;
      await driver.lazyRestoreAbort({
        store: toStoreInfo(input.pool),
        object: { kind: 'volume', id: input.volume.id, format: 'qcow2' },
        ctx,
        hostId,
      });
    }
    const copy = input.volume.sourceSnapshotId
      ? await this.store.restorableBackup(input.volume.sourceSnapshotId)
      : undefined;
    if (!copy) return;
    const image = await this.store.imageStore(copy.storeId);
    const manifest = await this.store.readManifest(image, copy.path ?? '', ctx).catch(() => undefined);
    if (manifest) await this.release(image.store.id, distinct(manifest.chunks), input.jobId, ctx, image);
  }

  private async release(
    storeId: string,
    hashes: string[],
    jobId: string,
    ctx: DriverContext,
    image: Awaited<ReturnType<BackupStore['imageStore']>>,
  ): Promise<void> {
    await this.deps.repo.chunks.release(storeId, hashes, jobId, { collect: false });
    await this.store.removePlans(image, jobId, ctx).catch(() => undefined);
  }
}
