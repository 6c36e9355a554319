import { Readable } from 'node:stream';
import {
  type BackupManifest,
  chunkExtent,
  chunkObjectKey,
  parseManifest,
} from '../../../drivers/sdk/backup-manifest.js';
import {
  type DataObjectRef,
  type DriverContext,
  type ImageStoreDriver,
  isImageStoreDriver,
} from '../../../drivers/sdk/types.js';
import { UnprocessableError } from '../errors.js';
import { hostGrantSeconds } from '../grants.js';
import type { DataStore, SnapshotInStore } from '../model.js';
import { ObjectInStoreStatus as O } from '../model.js';
import { allPages } from '../paging.js';
import { forEachLimit } from '../pool.js';
import type { Repository } from '../ports.js';
import type { BackupDeps } from './backup-service.js';
import { toStoreInfo } from './datastore-service.js';

export const LEASE_SECONDS = 60 * 60;
export const PRESIGN_CONCURRENCY = 16;

export type ImageStore = { store: DataStore; driver: ImageStoreDriver };

export function manifestKey(volumeId: string, snapshotId: string): string {
  return `backups/manifests/${volumeId}/${snapshotId}.json`;
}

export function chunkKey(sha256: string): string {
  return chunkObjectKey('backups/chunks', sha256);
}

export function planKey(jobId: string, name: string): string {
  return `backups/plans/${jobId}/${name}.json`;
}

/** Where a backup job's host uploads the chunks it finds missing (removed with the job's plans). */
export function stagingPrefix(jobId: string): string {
  return `backups/plans/${jobId}/staging/`;
}

export function blob(path: string): DataObjectRef {
  const id =
    path
      .split('/')
      .pop()
      ?.replace(/\.json$/, '') ?? 'object';
  return { kind: 'snapshot', id, format: 'raw', path };
}

export function distinct(chunks: Array<string | null>): string[] {
  return [...new Set(chunks.filter((c): c is string => c !== null))];
}

/** Finds a backup's image store and reads and writes the objects of backups in it. */
export class BackupStore {
  constructor(private readonly deps: Pick<BackupDeps, 'repo' | 'registry'>) {}

  private get repo(): Repository {
    return this.deps.repo;
  }

  /** The image copy a restore would read, or why it cannot (for volume placement). */
  async restorableBackup(snapshotId: string): Promise<SnapshotInStore | undefined> {
    const copy = await this.imageCopy(snapshotId);
    return copy?.status === O.Ready ? copy : undefined;
  }

  async imageCopy(snapshotId: string): Promise<SnapshotInStore | undefined> {
    return (await this.repo.listCopies('SnapshotInStore', snapshotId)).find((c) => c.storeRole === 'image');
  }

  async imageStore(storeId: string): Promise<ImageStore> {
    const store = await this.repo.require({ type: 'DataStore', id: storeId });
    const driver = this.deps.registry.get(store.provider).driver;
    if (!isImageStoreDriver(driver)) throw new UnprocessableError(`store ${storeId} is not an image store`);
    return { store, driver };
  }

  async zoneImageStore(zoneId: string, field: string): Promise<ImageStore> {
    const images = await allPages((cursor) =>
      this.repo.list('DataStore', {
        cursor,
        filter: { role: 'image', status: 'Up', 'scope.zoneId': zoneId },
      }),
    );
    const store = images.find((s) => isImageStoreDriver(this.deps.registry.get(s.provider).driver));
    if (!store)
      throw new UnprocessableError(`zone ${zoneId} has no image store that is Up to back up to`, { field });
    return { store, driver: this.deps.registry.get(store.provider).driver as ImageStoreDriver };
  }

  /** Bytes of the non-zero chunks a manifest names (its logical size in the store). */
  logicalBytes(m: BackupManifest): number {
    let total = 0;
    for (let i = 0; i < m.chunks.length; i++) {
      if (m.chunks[i] !== null) total += chunkExtent(i, m.virtualSizeBytes, m.chunkSizeBytes).length;
    }
    return total;
  }

  /** Writes JSON to the image store; with `presign`, returns a presigned GET of it. */
  async writeJson(
    image: ImageStore,
    path: string,
    value: unknown,
    ctx: DriverContext,
    presign = false,
  ): Promise<string | undefined> {
    const body = Buffer.from(JSON.stringify(value));
    const store = toStoreInfo(image.store);
    // A plan or manifest is not the job's payload: its upload must not move the job's progress.
    await image.driver.writeStream({
      store,
      object: blob(path),
      ctx: { ...ctx, progress: async () => undefined },
      body: Readable.from([body]),
      contentLength: body.length,
    });
    if (!presign) return undefined;
    // A plan the host reads when its step starts: the base lifetime only (grants.ts).
    return (
      await image.driver.presignGet({ store, object: blob(path), ctx, expiresSeconds: hostGrantSeconds() })
    ).url;
  }

  async readText(image: ImageStore, path: string, ctx: DriverContext): Promise<string> {
    const { body } = await image.driver.readStream({
      store: toStoreInfo(image.store),
      object: blob(path),
      ctx,
    });
    const parts: Buffer[] = [];
    for await (const part of body) parts.push(Buffer.from(part as Buffer));
    return Buffer.concat(parts).toString('utf8');
  }

  async readManifest(image: ImageStore, path: string, ctx: DriverContext): Promise<BackupManifest> {
    return parseManifest(await this.readText(image, path, ctx));
  }

  async deleteObject(image: ImageStore, path: string, ctx: DriverContext): Promise<void> {
    await image.driver.deleteAsync({ store: toStoreInfo(image.store), object: blob(path), ctx });
  }

  /** Deletes everything under a job's plans prefix: its lists and what its host staged. */
  async removePlans(image: ImageStore, jobId: string, ctx: DriverContext): Promise<void> {
    await this.removeUnder(image, `backups/plans/${jobId}/`, ctx);
  }

  /** Deletes whatever a job's host left under its staging prefix. */
  async removeStaging(image: ImageStore, jobId: string, ctx: DriverContext): Promise<void> {
    await this.removeUnder(image, stagingPrefix(jobId), ctx);
  }

  // One DeleteObjects request per 1000 objects where the store has it, else one delete each.
  private async removeUnder(image: ImageStore, prefix: string, ctx: DriverContext): Promise<void> {
    const store = toStoreInfo(image.store);
    const left = await image.driver.listObjects({ store, prefix, ctx });
    if (left.length === 0) return;
    if (image.driver.deleteObjects) {
      await image.driver.deleteObjects({ store, objects: left.map((o) => blob(o.path)), ctx });
      return;
    }
    await forEachLimit(left, PRESIGN_CONCURRENCY, (o) => this.deleteObject(image, o.path, ctx));
  }

  /**
   * Moves chunks a host uploaded to a job's staging prefix under their content address: each is
   * taken only when the store holds it with the SHA-256 its name claims (the store computed that
   * checksum from the bytes it received) and the chunk's length, then copied server-side (the copy
   * keeps the checksum). Answers the hashes now stored under `backups/chunks/`. A staged object
   * that is missing or does not match is left out (the caller uploads that chunk another way).
   */
  async promoteStaged(
    image: ImageStore,
    jobId: string,
    staged: Array<{ sha256: string; length: number }>,
    ctx: DriverContext,
  ): Promise<string[]> {
    const store = toStoreInfo(image.store);
    const promoted: string[] = [];
    await forEachLimit(staged, PRESIGN_CONCURRENCY, async ({ sha256, length }) => {
      const from = blob(`${stagingPrefix(jobId)}${sha256}`);
      const stat = await image.driver.statObject({ store, object: from, ctx, checksum: true });
      if (stat?.sizeBytes !== length || stat.checksumSha256 !== sha256) return;
      await image.driver.copyAsync({
        src: { store, object: from },
        dst: { store, object: blob(chunkKey(sha256)) },
        ctx: { ...ctx, progress: async () => undefined },
      });
      promoted.push(sha256);
    });
    return promoted;
  }
}
