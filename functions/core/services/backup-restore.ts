import type { BackupManifest } from '../../../drivers/sdk/backup-manifest.js';
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

/** Non-zero chunks per page of a restore list (the host refuses pages of more than 4,096). */
export const RESTORE_PAGE_ENTRIES = 256;

/** Key of page `k` of a restore job's list; the index is `planKey(jobId, 'restore')`. */
export function restorePageKey(jobId: string, k: number): string {
  return planKey(jobId, `restore-${k}`);
}

/**
 * A manifest's non-zero chunks as restore list pages: `{ index, sha256, url }` in index order,
 * {@link RESTORE_PAGE_ENTRIES} to a page; zero chunks are in no page.
 *
 * @example
 * restorePages(['ab…', null, 'ab…'], urls); // [[{ index: 0, … }, { index: 2, … }]]
 */
export function restorePages(
  chunks: ReadonlyArray<string | null>,
  urls: ReadonlyMap<string, string>,
): Array<Array<{ index: number; sha256: string; url: string }>> {
  const pages: Array<Array<{ index: number; sha256: string; url: string }>> = [];
  let page: Array<{ index: number; sha256: string; url: string }> = [];
  chunks.forEach((sha256, index) => {
    if (sha256 === null) return;
    const url = urls.get(sha256);
    if (url === undefined) throw new Error(`no URL for chunk ${sha256}`);
    page.push({ index, sha256, url });
    if (page.length === RESTORE_PAGE_ENTRIES) {
      pages.push(page);
      page = [];
    }
  });
  if (page.length > 0) pages.push(page);
  return pages;
}

function nonZeroChunks(manifest: BackupManifest): number {
  return manifest.chunks.reduce((n, c) => (c === null ? n : n + 1), 0);
}

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
      const chunkPagesUrl = await this.writeRestorePages(
        store,
        input.jobId,
        manifest,
        urls,
        expiresSeconds,
        ctx,
      );
      const { id: hostId } = await this.deps.selectHost([input.pool.id]);
      const result = await driver.restoreChunks({
        store: toStoreInfo(input.pool),
        object: { kind: 'volume', id: input.volume.id, format: 'qcow2' },
        virtualSizeBytes: manifest.virtualSizeBytes,
        chunkSizeBytes: manifest.chunkSizeBytes,
        chunkPagesUrl,
        count: manifest.chunks.length,
        ctx,
        hostId,
      });
      await this.deps.jobs.progress(input.jobId, 95, {
        phase: 'restored',
        chunksFetched: result.chunksFetched,
        bytesDownloaded: result.bytesDownloaded,
        zeroChunks: result.zeroChunks,
        ...(result.transferMs !== undefined ? { transferMs: result.transferMs } : {}),
      });
      await this.finishRestore(store, manifest, hashes, input.jobId, ctx);
      return { path: result.path, via: 'backup' };
    } catch (e) {
      // (A step that suspends while the host still restores never gets here: the holds and the
      // list stay for the run that picks the command up again.)
      await this.finishRestore(store, manifest, hashes, input.jobId, ctx);
      throw e;
    }
  }

  /**
   * Writes the restore list as pages of {@link RESTORE_PAGE_ENTRIES} non-zero chunks
   * (`backups/plans/<job>/restore-<k>.json`, in index order) and an index naming them
   * (`backups/plans/<job>/restore.json`: `{ version: 1, entries, pages }`), and returns a presigned
   * GET of the index. The host request then carries one URL whatever the disk's size, and the host
   * holds a page or two, never the whole list. The host reads the pages while it restores, up to
   * its end, so their grants live as long as the chunks' (`expiresSeconds`); the index is read when
   * the step starts and gets the base lifetime.
   */
  private async writeRestorePages(
    store: ImageStore,
    jobId: string,
    manifest: BackupManifest,
    urls: Map<string, string>,
    expiresSeconds: number,
    ctx: DriverContext,
  ): Promise<string> {
    const pages = restorePages(manifest.chunks, urls);
    const pageUrls: string[] = new Array(pages.length);
    await forEachLimit(pages, PRESIGN_CONCURRENCY, async (page, k) => {
      const path = restorePageKey(jobId, k);
      await this.store.writeJson(store, path, page, ctx);
      pageUrls[k] = (
        await store.driver.presignGet({
          store: toStoreInfo(store.store),
          object: blob(path),
          ctx,
          expiresSeconds,
          knownToExist: true,
        })
      ).url;
    });
    const entries = pages.reduce((n, page) => n + page.length, 0);
    const index = { version: 1, entries, pages: pageUrls };
    return (await this.store.writeJson(store, planKey(jobId, 'restore'), index, ctx, true)) ?? '';
  }

  private async finishRestore(
    store: ImageStore,
    manifest: BackupManifest,
    hashes: string[],
    jobId: string,
    ctx: DriverContext,
  ) {
    // The holds (chunk index) and the list (image store) are independent: both go at once.
    const pages = Math.ceil(nonZeroChunks(manifest) / RESTORE_PAGE_ENTRIES);
    await Promise.all([
      this.repo.chunks.release(store.store.id, hashes, jobId, { collect: false }),
      this.store.removePlans(store, jobId, ctx).catch(() => undefined),
      forEachLimit(
        Array.from({ length: pages }, (_, k) => k),
        PRESIGN_CONCURRENCY,
        async (k) => this.store.deleteObject(store, restorePageKey(jobId, k), ctx).catch(() => undefined),
      ),
    ]);
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
