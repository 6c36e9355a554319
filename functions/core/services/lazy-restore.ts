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
 *    `chunksHydrated`, `chunksTotal`) the job reports while the step suspends and polls; each run
 *    of the step first renews the list's URLs once it is half its lifetime old
 *    (`lazyRestoreRenew`, recorded on the volume as `hydrationUrls`), so no hydration outlives them;
 * 3. runs `lazyRestoreFinish` (flatten), releases the pins and the lists, and answers the path;
 *    volume-create's finishCreate then makes the volume Ready.
 *
 * A failure anywhere lands in volume-create's compensation, which calls {@link LazyRestore.abort}:
 * the daemon is stopped and the unfinished volume removed (writes made to it during hydration are
 * lost), and the volume is Error with the reason. Resuming a failed lazy restore is not offered:
 * transient failures are retried inside the host command and by the step's retries instead.
 */

import type { BackupManifest } from '../../../drivers/sdk/backup-manifest.js';
import { isLazyRestoreCapable, type LazyRestoreCapableDriver } from '../../../drivers/sdk/lazy-restore.js';
import type { DriverContext, ObjectOptions } from '../../../drivers/sdk/types.js';
import { ConflictError, UnprocessableError } from '../errors.js';
import { hostGrantSeconds, lazyRenewAfterSeconds } from '../grants.js';
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
      const list = await this.writeList(image, manifest, hashes, input.jobId, ctx);
      const started = await driver.lazyRestoreStart({
        ...target,
        hostId,
        virtualSizeBytes: manifest.virtualSizeBytes,
        chunkSizeBytes: manifest.chunkSizeBytes,
        chunksUrl: list.url,
        count: list.count,
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
        changes: {
          path: started.path,
          statusReason: undefined,
          hydrationHostId: hostId,
          hydrationUrls: { issuedAt: list.issuedAt, expiresAt: list.expiresAt, renewals: 0 },
        },
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
    } else {
      await this.renewIfDue({ ...input, volume: current }, image, manifest, hashes, driver, {
        ...target,
        hostId,
      });
    }
    await driver.lazyRestoreWait({ ...target, hostId });
    const finished = await driver.lazyRestoreFinish({ ...target, hostId });
    await this.release(image.store.id, hashes, input.jobId, ctx, image);
    return { path: finished.path };
  }

  /**
   * Presigns every chunk of the backup and writes the list (`{index, sha256, url}` or null per
   * chunk) to the job's plans, answering a presigned GET of it and when its URLs expire.
   */
  private async writeList(
    image: Awaited<ReturnType<BackupStore['imageStore']>>,
    manifest: BackupManifest,
    hashes: string[],
    jobId: string,
    ctx: DriverContext,
  ): Promise<{ url: string; count: number; issuedAt: string; expiresAt: string }> {
    const issued = Date.now();
    const expiresSeconds = hostGrantSeconds(this.store.logicalBytes(manifest));
    const urls = new Map<string, string>();
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
    const url = await this.store.writeJson(image, planKey(jobId, 'lazy'), list, ctx, true);
    return {
      url: url ?? '',
      count: list.length,
      issuedAt: new Date(issued).toISOString(),
      expiresAt: new Date(issued + expiresSeconds * 1000).toISOString(),
    };
  }

  /**
   * Hands the export fresh URLs once its list is older than {@link lazyRenewAfterSeconds} of its
   * lifetime: the hydration of a large disk can outlast any one presigned URL. The renewal is one
   * short host call, named by its number so a replayed step polls the same one, and then recorded on
   * the volume (only while this job still holds it Hydrating).
   */
  private async renewIfDue(
    input: { jobId: string; volume: Volume },
    image: Awaited<ReturnType<BackupStore['imageStore']>>,
    manifest: BackupManifest,
    hashes: string[],
    driver: LazyRestoreCapableDriver,
    target: ObjectOptions,
  ): Promise<void> {
    const urls = input.volume.hydrationUrls;
    if (!urls) return;
    const issued = Date.parse(urls.issuedAt);
    const lifetime = (Date.parse(urls.expiresAt) - issued) / 1000;
    if ((Date.now() - issued) / 1000 < lazyRenewAfterSeconds(lifetime)) return;
    const renewals = urls.renewals + 1;
    const list = await this.writeList(image, manifest, hashes, input.jobId, target.ctx);
    await driver.lazyRestoreRenew({ ...target, chunksUrl: list.url, count: list.count, renewal: renewals });
    const hydrationUrls = { issuedAt: list.issuedAt, expiresAt: list.expiresAt, renewals };
    for (let attempt = 0; ; attempt++) {
      const current = await this.deps.repo.require({ type: 'Volume', id: input.volume.id });
      if (current.status !== V.Hydrating || current.lease?.owner !== input.jobId) return;
      if ((current.hydrationUrls?.renewals ?? 0) >= renewals) return;
      try {
        await this.deps.repo.update({ type: 'Volume', id: current.id }, current.version, { hydrationUrls });
        target.ctx.logger.info('lazy restore URLs renewed', { volumeId: current.id, renewals });
        return;
      } catch (error) {
        // Another writer (an access grant, a lease renewal) came first: read again.
        if (!(error instanceof ConflictError) || attempt >= 4) throw error;
      }
    }
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
