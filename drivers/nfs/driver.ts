/**
 * The NFS control-plane driver. It never touches the share itself: every data-plane call runs the
 * matching host operation (./host-ops.ts) on the host Strata chose, through `ctx.host`.
 */
import { ChunkSizeSchema, chunkCount } from '../sdk/backup-manifest.js';
import { BasePrimaryDataStoreDriver } from '../sdk/base-driver.js';
import { DriverInputError, UnsupportedOperationError } from '../sdk/errors.js';
import type {
  LazyRestoreProgress,
  LazyRestoreRenewOptions,
  LazyRestoreStartOptions,
} from '../sdk/lazy-restore.js';
import type {
  AccessOptions,
  AccessResult,
  BackupCapableDriver,
  ChunkRestoreOptions,
  ChunkRestoreResult,
  ChunkScanOptions,
  ChunkScanResult,
  ChunkUploadOptions,
  ChunkUploadResult,
  CopyEndpoint,
  CopyOptions,
  CreateOptions,
  CreateResult,
  DataObjectRef,
  DataStoreInfo,
  DriverCapabilities,
  DriverContext,
  ListOptions,
  ObjectOptions,
  ResizeOptions,
  SnapshotOptions,
  StoredObject,
} from '../sdk/types.js';
import { assertPositiveSize, assertRelativePath, assertSafeId } from '../sdk/validation.js';
import type { BackupScanResult, BackupUploadResult, RestoreChunksResult } from './backup-ops.js';
import { type NfsDetails, NfsDetailsSchema } from './details.js';
import type { NfsExportOptions, NfsExportPhase, NfsExportResults } from './export-ops.js';
import {
  NfsHostOperation,
  type NfsImageFormat,
  type NfsImageResult,
  type NfsListedFile,
} from './host-ops.js';
import type { NfsExtentsResult, NfsSnapshotResult } from './snapshot-ops.js';

/** Options of the NFS provider. */
export interface NfsProviderOptions {
  /** Deadline of short host operations (create, delete, info, snapshot…), default 600 s. */
  operationDeadlineSeconds?: number;
  /** Deadline of copies, default 6 h. */
  copyDeadlineSeconds?: number;
}

/**
 * Where an object lives on the share when its ref has no `path` yet:
 * `<kind>s/<id>.<ext>`, e.g. `volumes/vol-1.qcow2`, `templates/tpl-1.qcow2`, `isos/iso-1.iso`.
 *
 * @example
 * nfsObjectPath({ kind: 'volume', id: 'vol-1' }); // 'volumes/vol-1.qcow2'
 */
export function nfsObjectPath(object: DataObjectRef): string {
  if (object.path) return object.path;
  const ext = object.kind === 'iso' ? 'iso' : qemuFormatOf(object);
  return `${object.kind}s/${object.id}.${ext}`;
}

/**
 * The on-disk format qemu-img should use for an object on NFS (ISOs are raw bytes).
 *
 * @example
 * qemuFormatOf({ kind: 'iso', id: 'iso-1', format: 'iso' }); // 'raw'
 */
export function qemuFormatOf(object: DataObjectRef): NfsImageFormat {
  switch (object.format) {
    case undefined:
    case 'qcow2':
      return 'qcow2';
    case 'raw':
    case 'iso':
      return 'raw';
    default:
      throw new UnsupportedOperationError(`nfs stores hold qcow2 and raw images, not ${object.format}`, {
        context: { objectId: object.id, format: object.format },
      });
  }
}

/**
 * Parses an NFS store's details, as an input error when they are wrong.
 *
 * @example
 * const { mountPath } = nfsDetails(store);
 */
export function nfsDetails(store: DataStoreInfo): NfsDetails {
  const parsed = NfsDetailsSchema.safeParse(store.details);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new DriverInputError(`store ${store.id}: details.${issue?.path.join('.')}: ${issue?.message}`, {
      cause: parsed.error,
      context: { field: `details.${issue?.path.join('.')}` },
    });
  }
  return parsed.data;
}

/**
 * Where an external snapshot of `volume` lives on the share: its own `path` when set, else
 * `snapshots/<volume id>/<snapshot id>.qcow2` (docs/snapshots.md).
 *
 * @example
 * nfsSnapshotPath({ kind: 'volume', id: 'vol-1' }, { kind: 'snapshot', id: 's1' }); // 'snapshots/vol-1/s1.qcow2'
 */
export function nfsSnapshotPath(volume: DataObjectRef, snapshot: DataObjectRef): string {
  return snapshot.path ?? `snapshots/${volume.id}/${snapshot.id}.qcow2`;
}

// The volume a conventionally placed snapshot belongs to, when the ref names no parent.
function volumeOfSnapshotPath(path: string | undefined): DataObjectRef | undefined {
  const match = path ? /^snapshots\/([^/]+)\/[^/]+\.qcow2$/.exec(path) : null;
  return match?.[1] ? { kind: 'volume', id: match[1], format: 'qcow2' } : undefined;
}

// A legacy snapshot's locator is `<image path>@<snapshot id>` (an internal qcow2 snapshot).
function splitSnapshotPath(path: string): { imagePath: string; snapshotId: string } | undefined {
  const at = path.lastIndexOf('@');
  if (at <= 0 || at === path.length - 1) return undefined;
  return { imagePath: path.slice(0, at), snapshotId: path.slice(at + 1) };
}

// A presigned http(s) URL, short enough for a host request.
function assertPresignedUrl(url: unknown, field: string): asserts url is string {
  let protocol: string | undefined;
  try {
    protocol = typeof url === 'string' && url.length <= 8192 ? new URL(url).protocol : undefined;
  } catch {
    protocol = undefined;
  }
  if (protocol !== 'https:' && protocol !== 'http:') {
    throw new DriverInputError(`${field} must be an http(s) URL`, { context: { field } });
  }
}

function assertChunkSize(size: unknown): asserts size is number {
  if (!ChunkSizeSchema.safeParse(size).success) {
    throw new DriverInputError('chunkSizeBytes must be a positive multiple of 64 KiB, at most 32 MiB', {
      context: { field: 'chunkSizeBytes', value: size },
    });
  }
}

function assertCount(count: unknown, field: string): asserts count is number {
  if (typeof count !== 'number' || !Number.isSafeInteger(count) || count < 0) {
    throw new DriverInputError(`${field} must be a non-negative integer`, {
      context: { field, value: count },
    });
  }
}

/**
 * The data plane of an `nfs` primary store.
 *
 * @example
 * const driver = new NfsDriver();
 * await driver.createAsync({ store, ctx, hostId: 'host-1', object: { kind: 'volume', id: 'vol-1' }, sizeBytes: 1 << 30 });
 */
export class NfsDriver extends BasePrimaryDataStoreDriver implements BackupCapableDriver {
  readonly providerName = 'nfs';
  readonly #shortDeadline: number;
  readonly #copyDeadline: number;

  constructor(options: NfsProviderOptions = {}) {
    super();
    this.#shortDeadline = options.operationDeadlineSeconds ?? 600;
    this.#copyDeadline = options.copyDeadlineSeconds ?? 6 * 3600;
  }

  getCapabilities(): DriverCapabilities {
    return { snapshots: true, linkedClones: true, serverSideCopy: false, needsHost: true };
  }

  /** Both ends on NFS: one host that mounts both shares copies with qemu-img. */
  override canCopy(src: CopyEndpoint, dst: CopyEndpoint): boolean {
    return src.store.provider === this.providerName && dst.store.provider === this.providerName;
  }

  /**
   * Creates a blank image, or a linked clone when `object.parent` is set (the parent must be a
   * qcow2 or raw image on the same store, typically the pool's template cache entry).
   */
  protected async doCreate({ store, object, sizeBytes, hostId, ctx }: CreateOptions): Promise<CreateResult> {
    if (object.kind === 'snapshot') {
      throw new DriverInputError('snapshots are made with takeSnapshot, not createAsync', {
        context: { field: 'object.kind' },
      });
    }
    const { mountPath } = nfsDetails(store);
    const format = qemuFormatOf(object);
    const parent = object.parent;
    const args: Record<string, unknown> = { mountPath, path: nfsObjectPath(object), format };
    if (sizeBytes !== undefined) args.sizeBytes = sizeBytes;
    if (parent) {
      args.backingPath = nfsObjectPath(parent);
      args.backingFormat = qemuFormatOf(parent);
    }
    return this.#run<NfsImageResult>(ctx, hostId!, NfsHostOperation.Create, args);
  }

  /**
   * Deletes an image file; a snapshot goes through {@link NfsDriver.deleteSnapshot} semantics (an
   * internal one when its path is `<image>@<snapshot>`, else an external layer merged into its
   * children). An external snapshot needs `parent` (its volume) unless its path follows
   * `snapshots/<volume id>/<snapshot id>.qcow2`, from which the volume is `volumes/<volume id>.qcow2`.
   */
  protected async doDelete({ store, object, hostId, ctx }: ObjectOptions): Promise<void> {
    const { mountPath } = nfsDetails(store);
    if (object.kind === 'snapshot') {
      const legacy = object.path ? splitSnapshotPath(object.path) : undefined;
      if (legacy) {
        await this.#run(ctx, hostId!, NfsHostOperation.DeleteSnapshot, {
          mountPath,
          path: legacy.imagePath,
          snapshotId: legacy.snapshotId,
        });
        return;
      }
      const volume = object.parent ?? volumeOfSnapshotPath(object.path);
      if (!volume) {
        throw new DriverInputError(
          'a snapshot needs a parent volume or a path snapshots/<volume>/<id>.qcow2',
          {
            context: { field: 'object.parent' },
          },
        );
      }
      await this.#run(
        ctx,
        hostId!,
        NfsHostOperation.DeleteChainSnapshot,
        { mountPath, volumePath: nfsObjectPath(volume), snapshotPath: nfsSnapshotPath(volume, object) },
        this.#copyDeadline,
      );
      return;
    }
    await this.#run(ctx, hostId!, NfsHostOperation.Delete, { mountPath, path: nfsObjectPath(object) });
  }

  protected async doCopy({ src, dst, hostId, ctx }: CopyOptions): Promise<CreateResult> {
    if (!this.canCopy(src, dst)) {
      throw new UnsupportedOperationError(
        'the nfs driver copies between nfs stores only; use a data motion strategy',
        {
          context: { src: src.store.provider, dst: dst.store.provider },
        },
      );
    }
    const args = {
      src: {
        mountPath: nfsDetails(src.store).mountPath,
        path: nfsObjectPath(src.object),
        format: qemuFormatOf(src.object),
      },
      dst: {
        mountPath: nfsDetails(dst.store).mountPath,
        path: nfsObjectPath(dst.object),
        format: qemuFormatOf(dst.object),
      },
    };
    return this.#run<NfsImageResult>(ctx, hostId!, NfsHostOperation.Copy, args, this.#copyDeadline);
  }

  /**
   * Compares two images with `qemu-img compare` on a host that mounts both stores (content only:
   * a flattened copy of a linked clone compares identical to it).
   *
   * @example
   * const { identical } = await driver.compareAsync({ src, dst, ctx, hostId });
   */
  async compareAsync({ src, dst, hostId, ctx }: CopyOptions): Promise<{ identical: boolean }> {
    if (!hostId) throw new DriverInputError('compareAsync needs a hostId that mounts both stores');
    const side = (e: CopyOptions['src']) => ({
      mountPath: nfsDetails(e.store).mountPath,
      path: nfsObjectPath(e.object),
      format: qemuFormatOf(e.object),
    });
    return this.#run<{ identical: boolean }>(ctx, hostId, NfsHostOperation.Compare, {
      a: side(src),
      b: side(dst),
    });
  }

  protected override async doResize({
    store,
    object,
    newSizeBytes,
    allowShrink,
    hostId,
    ctx,
  }: ResizeOptions) {
    const args = {
      mountPath: nfsDetails(store).mountPath,
      path: nfsObjectPath(object),
      format: qemuFormatOf(object),
      sizeBytes: newSizeBytes,
      allowShrink: allowShrink ?? false,
    };
    return this.#run<NfsImageResult>(ctx, hostId!, NfsHostOperation.Resize, args);
  }

  protected async doListObjects({ store, prefix, hostId, ctx }: ListOptions): Promise<StoredObject[]> {
    const args: Record<string, unknown> = { mountPath: nfsDetails(store).mountPath };
    if (prefix) args.prefix = prefix.replace(/\/$/, '');
    const { objects } = await this.#run<{ objects: NfsListedFile[] }>(
      ctx,
      hostId!,
      NfsHostOperation.List,
      args,
    );
    return objects;
  }

  /**
   * Checks the file exists as seen from `host` and returns its `file://` URI under the mount path
   * (the same on every host of the cluster).
   */
  protected async doGrantAccess({ store, object, host, ctx }: AccessOptions): Promise<AccessResult> {
    const { mountPath } = nfsDetails(store);
    const path = nfsObjectPath(object);
    await this.#run(ctx, host.id, NfsHostOperation.Info, { mountPath, path, format: qemuFormatOf(object) });
    return { uri: `file://${encodeURI(`${mountPath}/${path}`)}` };
  }

  /**
   * Nothing to withdraw: every host of the cluster mounts the whole share, so access is governed by
   * the NFS export's own rules, not per object. Kept so callers can pair every grant with a revoke.
   */
  protected async doRevokeAccess(): Promise<void> {}

  /**
   * External snapshot (docs/snapshots.md): the active layer is frozen as
   * `snapshots/<volume id>/<snapshot id>.qcow2` (the result path) and a new empty overlay on top of
   * it becomes the volume's file, at the same path. Repeating it returns the existing snapshot.
   */
  protected async doTakeSnapshot({
    store,
    object,
    snapshot,
    hostId,
    ctx,
  }: SnapshotOptions): Promise<CreateResult> {
    this.#requireQcow2(object);
    const result = await this.#run<NfsSnapshotResult>(
      ctx,
      hostId!,
      NfsHostOperation.TakeChainSnapshot,
      this.#chainArgs(store, object, snapshot),
    );
    return {
      path: result.path,
      sizeBytes: result.sizeBytes,
      virtualSizeBytes: result.virtualSizeBytes,
      format: 'qcow2',
    };
  }

  /**
   * Puts a new empty overlay on top of the snapshot in place of the active layer: any snapshot of
   * the volume, not only the latest. A legacy internal snapshot (`<image>@<id>` path) is applied in
   * place as before.
   */
  protected async doRevertSnapshot({ store, object, snapshot, hostId, ctx }: SnapshotOptions): Promise<void> {
    this.#requireQcow2(object);
    const legacy = snapshot.path ? splitSnapshotPath(snapshot.path) : undefined;
    if (legacy) {
      await this.#run(ctx, hostId!, NfsHostOperation.Revert, {
        mountPath: nfsDetails(store).mountPath,
        path: legacy.imagePath,
        snapshotId: legacy.snapshotId,
      });
      return;
    }
    await this.#run(
      ctx,
      hostId!,
      NfsHostOperation.RevertChainSnapshot,
      this.#chainArgs(store, object, snapshot),
    );
  }

  /**
   * Deletes a snapshot of `object` without breaking the volume or its other snapshots: each layer
   * backed by the snapshot is rebased onto the snapshot's own base (its data merged in) before the
   * file goes. Idempotent; the volume must be offline. A legacy `<image>@<id>` snapshot is deleted
   * from the image.
   *
   * @example
   * await driver.deleteSnapshot({ store, ctx, hostId, object: volumeRef, snapshot: { kind: 'snapshot', id: 's2' } });
   */
  async deleteSnapshot(options: SnapshotOptions): Promise<{ deleted: boolean; rebased: string[] }> {
    return this.runOperation(options, 'deleteSnapshot', { snapshotId: options?.snapshot?.id }, async () => {
      this.#validateSnapshotOptions(options);
      const { store, object, snapshot, hostId, ctx } = options;
      const legacy = snapshot.path ? splitSnapshotPath(snapshot.path) : undefined;
      if (legacy) {
        const { deleted } = await this.#run<{ deleted: boolean }>(
          ctx,
          hostId!,
          NfsHostOperation.DeleteSnapshot,
          { mountPath: nfsDetails(store).mountPath, path: legacy.imagePath, snapshotId: legacy.snapshotId },
        );
        return { deleted, rebased: [] };
      }
      return this.#run<{ deleted: boolean; rebased: string[] }>(
        ctx,
        hostId!,
        NfsHostOperation.DeleteChainSnapshot,
        this.#chainArgs(store, object, snapshot),
        this.#copyDeadline,
      );
    });
  }

  /**
   * The guest ranges written between the snapshot's base (the previous snapshot) and the snapshot:
   * what an incremental backup of it copies. `backingPath` names the base they are relative to.
   *
   * @example
   * const { extents } = await driver.snapshotChanges({ store, ctx, hostId, object: volumeRef, snapshot: snapRef });
   */
  async snapshotChanges(options: SnapshotOptions): Promise<NfsExtentsResult> {
    return this.runOperation(options, 'snapshotChanges', { snapshotId: options?.snapshot?.id }, async () => {
      this.#validateSnapshotOptions(options);
      const { store, object, snapshot, hostId, ctx } = options;
      return this.#run<NfsExtentsResult>(ctx, hostId!, NfsHostOperation.SnapshotChanges, {
        mountPath: nfsDetails(store).mountPath,
        snapshotPath: nfsSnapshotPath(object, snapshot),
      });
    });
  }

  /**
   * Every range holding data in the snapshot as a whole (through its chain, zeros left out): what
   * a full first backup copies when there is no previous snapshot to be incremental from.
   *
   * @example
   * const { extents } = await driver.snapshotAllocatedExtents({ store, ctx, hostId, object: volumeRef, snapshot: snapRef });
   */
  async snapshotAllocatedExtents(options: SnapshotOptions): Promise<NfsExtentsResult> {
    return this.runOperation(
      options,
      'snapshotAllocatedExtents',
      { snapshotId: options?.snapshot?.id },
      async () => {
        this.#validateSnapshotOptions(options);
        const { store, object, snapshot, hostId, ctx } = options;
        return this.#run<NfsExtentsResult>(ctx, hostId!, NfsHostOperation.AllocatedExtents, {
          mountPath: nfsDetails(store).mountPath,
          path: nfsSnapshotPath(object, snapshot),
          format: 'qcow2',
        });
      },
    );
  }

  /**
   * First half of a chunked backup of a snapshot (docs/backup-format.md): host operation
   * `backupChunks` phase `scan` reads the snapshot layer through its chain with qemu-nbd and hashes
   * it in `chunkSizeBytes` chunks. With `previous` (the volume's last backup), the host fetches that
   * manifest from `previous.manifestUrl` and, when the snapshot's base is that backup's snapshot
   * layer (so the layer holds exactly the writes since it), reads only the changed chunks and
   * carries every other one over (`incremental: true`); any other base (the previous snapshot was
   * deleted, the volume reverted) or a manifest of other sizes makes it a full scan. `computed` lists
   * each distinct non-zero hash the scan read once: the control plane checks them against its chunk
   * index and presigns PUTs for the missing ones.
   *
   * @example
   * const scan = await driver.scanSnapshotChunks({ store, ctx, hostId, object: volumeRef,
   *   snapshot: { kind: 'snapshot', id: 'snap-2' }, chunkSizeBytes: 4 << 20,
   *   previous: { snapshotId: 'snap-1', manifestUrl: presignGet(manifestKey('snap-1')) } });
   */
  async scanSnapshotChunks(options: ChunkScanOptions): Promise<ChunkScanResult> {
    return this.runOperation(
      options,
      'scanSnapshotChunks',
      { snapshotId: options?.snapshot?.id, previousSnapshotId: options?.previous?.snapshotId },
      async () => {
        this.#validateBackupOptions(options);
        const { store, object, snapshot, hostId, ctx, previous } = options;
        const args: Record<string, unknown> = {
          phase: 'scan',
          mountPath: nfsDetails(store).mountPath,
          path: nfsSnapshotPath(object, snapshot),
          format: 'qcow2',
          chunkSizeBytes: options.chunkSizeBytes,
        };
        if (previous !== undefined) {
          if (typeof previous !== 'object' || previous === null) {
            throw new DriverInputError('previous must be { snapshotId, manifestUrl }', {
              context: { field: 'previous' },
            });
          }
          assertSafeId(previous.snapshotId, 'previous.snapshotId');
          assertPresignedUrl(previous.manifestUrl, 'previous.manifestUrl');
          args.previousManifestUrl = previous.manifestUrl;
          args.changesSinceBackingPath = nfsSnapshotPath(object, {
            kind: 'snapshot',
            id: previous.snapshotId,
            format: 'qcow2',
          });
        }
        if (options.staging !== undefined) {
          const { url, fields, keyPrefix, maxBytes } = options.staging ?? {};
          assertPresignedUrl(url, 'staging.url');
          args.staging = { url, fields, keyPrefix, maxBytes };
        }
        const scan = await this.#run<BackupScanResult>(
          ctx,
          hostId!,
          NfsHostOperation.BackupChunks,
          args,
          this.#copyDeadline,
        );
        const seen = new Set<string>();
        const computed: ChunkScanResult['computed'] = [];
        for (const { index, sha256 } of scan.computed) {
          if (sha256 === null || seen.has(sha256)) continue;
          seen.add(sha256);
          computed.push({ index, sha256 });
        }
        return {
          virtualSizeBytes: scan.virtualSizeBytes,
          chunkSizeBytes: scan.chunkSizeBytes,
          chunks: scan.chunks,
          computed,
          incremental: scan.incremental,
          ...(options.staging !== undefined ? { staged: scan.staged } : {}),
          counters: scan.counters,
        };
      },
    );
  }

  /**
   * Second half of a chunked backup: host operation `backupChunks` phase `upload` re-reads each
   * chunk named in the JSON list at `uploadsUrl` (`[{ index, sha256, url }]`, `count` entries),
   * checks it still hashes as scanned (else `Conflict`: the snapshot changed) and PUTs it to its
   * presigned URL. Repeating it is harmless: chunk keys are content hashes.
   *
   * @example
   * const { chunksUploaded } = await driver.uploadSnapshotChunks({ store, ctx, hostId, object: volumeRef,
   *   snapshot: { kind: 'snapshot', id: 'snap-2' }, chunkSizeBytes: 4 << 20, uploadsUrl: presignGet(planKey), count: plan.length });
   */
  async uploadSnapshotChunks(options: ChunkUploadOptions): Promise<ChunkUploadResult> {
    return this.runOperation(
      options,
      'uploadSnapshotChunks',
      { snapshotId: options?.snapshot?.id, count: options?.count },
      async () => {
        this.#validateBackupOptions(options);
        assertPresignedUrl(options.uploadsUrl, 'uploadsUrl');
        assertCount(options.count, 'count');
        const { store, object, snapshot, hostId, ctx } = options;
        const result = await this.#run<BackupUploadResult>(
          ctx,
          hostId!,
          NfsHostOperation.BackupChunks,
          {
            phase: 'upload',
            mountPath: nfsDetails(store).mountPath,
            path: nfsSnapshotPath(object, snapshot),
            format: 'qcow2',
            chunkSizeBytes: options.chunkSizeBytes,
            uploadsUrl: options.uploadsUrl,
            count: options.count,
          },
          this.#copyDeadline,
        );
        return {
          chunksUploaded: result.chunksUploaded,
          bytesRead: result.bytesRead,
          bytesUploaded: result.bytesUploaded,
        };
      },
    );
  }

  /**
   * Restores a backup into a new qcow2 at `object`'s path (`object.path`, else
   * `volumes/<id>.qcow2`): host operation `restoreChunks` reads the paged list behind
   * `chunkPagesUrl` (an index of pages of `{ index, sha256, url }` for the non-zero chunks; or the
   * whole list at `chunksUrl`, one entry per chunk index, null for a zero chunk), downloads and
   * verifies every non-zero chunk (8 in flight; `ChecksumMismatch` names a bad one), writes it
   * through qemu-nbd into a temporary file and renames it into place. Repeating it once the volume
   * exists returns `restored: false`.
   *
   * @example
   * const restored = await driver.restoreChunks({ store, ctx, hostId, object: { kind: 'volume', id: 'vol-9', format: 'qcow2' },
   *   virtualSizeBytes: m.virtualSizeBytes, chunkSizeBytes: m.chunkSizeBytes, chunkPagesUrl: presignGet(restoreIndexKey), count: m.chunks.length });
   */
  async restoreChunks(options: ChunkRestoreOptions): Promise<ChunkRestoreResult> {
    return this.runOperation(options, 'restoreChunks', {}, async () => {
      this.validateObjectOptions(options);
      const { store, object, hostId, ctx } = options;
      if (object.kind !== 'volume' && object.kind !== 'template') {
        throw new DriverInputError(`a backup restores into a volume or a template, not a ${object.kind}`, {
          context: { field: 'object.kind' },
        });
      }
      if (qemuFormatOf(object) !== 'qcow2') {
        throw new DriverInputError('a backup restores into a qcow2 image', {
          context: { field: 'object.format' },
        });
      }
      assertPositiveSize(options.virtualSizeBytes, 'virtualSizeBytes');
      assertChunkSize(options.chunkSizeBytes);
      if ((options.chunkPagesUrl === undefined) === (options.chunksUrl === undefined)) {
        throw new DriverInputError('give exactly one of chunkPagesUrl (paged) or chunksUrl (one list)', {
          context: { field: 'chunkPagesUrl' },
        });
      }
      if (options.chunkPagesUrl !== undefined) assertPresignedUrl(options.chunkPagesUrl, 'chunkPagesUrl');
      else assertPresignedUrl(options.chunksUrl, 'chunksUrl');
      assertCount(options.count, 'count');
      const chunks = chunkCount(options.virtualSizeBytes, options.chunkSizeBytes);
      if (options.count !== chunks) {
        throw new DriverInputError(
          `count must be the number of chunk indexes of the disk (${chunks}), not ${options.count}`,
          { context: { field: 'count' } },
        );
      }
      const result = await this.#run<RestoreChunksResult>(
        ctx,
        hostId!,
        NfsHostOperation.RestoreChunks,
        {
          mountPath: nfsDetails(store).mountPath,
          path: nfsObjectPath(object),
          virtualSizeBytes: options.virtualSizeBytes,
          chunkSizeBytes: options.chunkSizeBytes,
          ...(options.chunkPagesUrl !== undefined
            ? { chunkPagesUrl: options.chunkPagesUrl }
            : { chunksUrl: options.chunksUrl }),
          count: options.count,
        },
        this.#copyDeadline,
      );
      return {
        path: result.path,
        sizeBytes: result.sizeBytes,
        virtualSizeBytes: result.virtualSizeBytes,
        format: 'qcow2',
        restored: result.restored,
        chunksFetched: result.chunksFetched,
        bytesDownloaded: result.bytesDownloaded,
        zeroChunks: result.zeroChunks,
        ...(result.transferMs !== undefined ? { transferMs: result.transferMs } : {}),
      };
    });
  }

  /**
   * Pulls an image from a presigned URL into this store at the object's path (the other half of a
   * move staged through the image store), verifying its sha256 on the way when given.
   *
   * @example
   * await driver.importAsync({ store, object: { kind: 'volume', id, format: 'qcow2' }, hostId, ctx,
   *   sourceUrl: url, sourceFormat: 'qcow2', expectedSha256: sha256 });
   */
  async importAsync(
    options: ObjectOptions & { sourceUrl: string; sourceFormat: 'qcow2' | 'raw'; expectedSha256?: string },
  ): Promise<CreateResult> {
    return this.runOperation(options, 'import', {}, async () => {
      this.validateObjectOptions(options);
      if (!options.hostId) {
        throw new DriverInputError('importAsync needs a hostId that mounts the store', {
          context: { field: 'hostId' },
        });
      }
      const args: Record<string, unknown> = {
        mountPath: nfsDetails(options.store).mountPath,
        path: nfsObjectPath(options.object),
        url: options.sourceUrl,
        sourceFormat: options.sourceFormat,
        targetFormat: 'qcow2',
      };
      if (options.expectedSha256) args.expectedSha256 = options.expectedSha256;
      const result = await this.#run<NfsImageResult>(
        options.ctx,
        options.hostId,
        NfsHostOperation.FetchImage,
        args,
        this.#copyDeadline,
      );
      return {
        path: result.path,
        sizeBytes: result.sizeBytes,
        virtualSizeBytes: result.virtualSizeBytes,
        format: 'qcow2',
      };
    });
  }

  /**
   * Exports an image to the image store for a migration staged through it (no host mounts both
   * primary stores), running host operation `exportImage` on `hostId` (./export-ops.ts):
   * - `prepare` flattens the object (a linked clone reads through its backing chain) into a
   *   standalone qcow2 temporary on the same share and returns its `tempPath`, `sizeBytes` and
   *   `sha256`: create the multipart upload with that size;
   * - `upload` PUTs `tempPath`'s byte ranges to the presigned parts and returns `{ partNumber, etag }`
   *   for `completeUpload`;
   * - `cleanup` removes the temporary (idempotent); run it whether the upload succeeded or not.
   *
   * @example
   * const base = { store, object: { kind: 'volume', id: 'vol-1' }, hostId: 'host-1', ctx } as const;
   * const prep = await driver.exportAsync({ ...base, phase: 'prepare' });
   * const up = await imageStore.createUpload({ store: staging, object: staged, sizeBytes: prep.sizeBytes, ctx });
   * try {
   *   const { parts } = await driver.exportAsync({ ...base, phase: 'upload', tempPath: prep.tempPath, totalBytes: prep.sizeBytes, parts: up.parts });
   *   await imageStore.completeUpload({ store: staging, object: staged, uploadId: up.uploadId, parts, sizeBytes: prep.sizeBytes, ctx });
   * } finally {
   *   await driver.exportAsync({ ...base, phase: 'cleanup', tempPath: prep.tempPath });
   * }
   */
  async exportAsync<P extends NfsExportPhase>(options: NfsExportOptions<P>): Promise<NfsExportResults[P]> {
    return this.runOperation(options, 'export', { phase: options?.phase }, async () => {
      this.validateObjectOptions(options);
      if (!options.hostId) {
        throw new DriverInputError('exportAsync needs a hostId that mounts the store', {
          context: { field: 'hostId' },
        });
      }
      if (options.object.kind === 'snapshot') {
        throw new UnsupportedOperationError('export a volume or a template, not a snapshot', {
          context: { field: 'object.kind' },
        });
      }
      const { store, object, hostId, ctx } = options;
      const mountPath = nfsDetails(store).mountPath;
      // Narrowed by hand: TypeScript does not narrow a generic's indexed option type by `phase`.
      const o = options as NfsExportOptions;
      let args: Record<string, unknown>;
      let deadline = this.#copyDeadline;
      switch (o.phase) {
        case 'prepare':
          args = { phase: o.phase, mountPath, path: nfsObjectPath(object), format: qemuFormatOf(object) };
          break;
        case 'upload':
          assertRelativePath(o.tempPath, 'tempPath');
          args = {
            phase: o.phase,
            mountPath,
            tempPath: o.tempPath,
            totalBytes: o.totalBytes,
            // Only the fields the host operation accepts (it is strict), whatever else a caller passes.
            parts: (o.parts ?? []).map(({ partNumber, url, offset, sizeBytes }) => ({
              partNumber,
              url,
              offset,
              sizeBytes,
            })),
            ...(o.stallTimeoutSeconds !== undefined ? { stallTimeoutSeconds: o.stallTimeoutSeconds } : {}),
          };
          break;
        case 'cleanup':
          assertRelativePath(o.tempPath, 'tempPath');
          args = { phase: o.phase, mountPath, tempPath: o.tempPath };
          deadline = this.#shortDeadline;
          break;
        default:
          throw new DriverInputError("phase must be 'prepare', 'upload' or 'cleanup'", {
            context: { field: 'phase' },
          });
      }
      return this.#run<NfsExportResults[P]>(ctx, hostId, NfsHostOperation.ExportImage, args, deadline);
    });
  }

  #chainArgs(store: DataStoreInfo, object: DataObjectRef, snapshot: DataObjectRef) {
    return {
      mountPath: nfsDetails(store).mountPath,
      volumePath: nfsObjectPath(object),
      snapshotPath: nfsSnapshotPath(object, snapshot),
    };
  }

  #validateSnapshotOptions(options: SnapshotOptions): void {
    this.validateObjectOptions(options);
    if (options.snapshot?.kind !== 'snapshot') {
      throw new DriverInputError("snapshot.kind must be 'snapshot'", { context: { field: 'snapshot.kind' } });
    }
    assertSafeId(options.snapshot.id, 'snapshot.id');
    if (options.snapshot.path !== undefined) assertRelativePath(options.snapshot.path, 'snapshot.path');
    this.#requireQcow2(options.object);
  }

  // A scan or upload reads an external snapshot layer: a legacy internal one (`<image>@<id>`) is
  // not a file qemu-nbd can serve.
  #validateBackupOptions(options: ChunkScanOptions | ChunkUploadOptions): void {
    this.#validateSnapshotOptions(options);
    if (options.snapshot.path !== undefined && splitSnapshotPath(options.snapshot.path)) {
      throw new UnsupportedOperationError(
        'internal (`<image>@<id>`) snapshots cannot be backed up in chunks',
        {
          context: { field: 'snapshot.path' },
        },
      );
    }
    assertChunkSize(options.chunkSizeBytes);
  }

  #requireQcow2(object: DataObjectRef): void {
    if (qemuFormatOf(object) !== 'qcow2') {
      throw new UnsupportedOperationError('storage snapshots on nfs need qcow2 images', {
        context: { objectId: object.id },
      });
    }
  }

  // ------------------------------------------------------------- lazy restore (./lazy-restore.ts)

  /**
   * Lazy restore of a backup into a new volume at `object`'s path: host operation
   * `lazyRestoreStart` starts the volume's lazy-restore daemon and creates the volume as a qcow2
   * overlay on its NBD export, usable as soon as this resolves. Same list contract as
   * {@link restoreChunks}.
   *
   * @example
   * await driver.lazyRestoreStart({ store, ctx, hostId, object: { kind: 'volume', id: 'vol-9', format: 'qcow2' },
   *   virtualSizeBytes, chunkSizeBytes, chunksUrl, count });
   */
  async lazyRestoreStart(options: LazyRestoreStartOptions): Promise<LazyRestoreProgress> {
    return this.runOperation(options, 'lazyRestoreStart', {}, async () => {
      this.#validateLazy(options);
      assertPositiveSize(options.virtualSizeBytes, 'virtualSizeBytes');
      assertChunkSize(options.chunkSizeBytes);
      assertPresignedUrl(options.chunksUrl, 'chunksUrl');
      assertCount(options.count, 'count');
      return this.#run<LazyRestoreProgress>(options.ctx, options.hostId!, NfsHostOperation.LazyRestoreStart, {
        ...this.#lazyTarget(options),
        virtualSizeBytes: options.virtualSizeBytes,
        chunkSizeBytes: options.chunkSizeBytes,
        chunksUrl: options.chunksUrl,
        count: options.count,
      });
    });
  }

  /**
   * Host operation `lazyRestoreStatus` with a fresh list: the host checks it names the same chunks
   * and replaces the stored one, which the daemon re-reads before its next fetch.
   */
  async lazyRestoreRenew(options: LazyRestoreRenewOptions): Promise<LazyRestoreProgress> {
    return this.runOperation(options, 'lazyRestoreRenew', {}, async () => {
      this.#validateLazy(options);
      assertPresignedUrl(options.chunksUrl, 'chunksUrl');
      assertCount(options.count, 'count');
      if (!Number.isSafeInteger(options.renewal) || options.renewal < 1) {
        throw new DriverInputError('renewal must be a whole number from 1', {
          context: { field: 'renewal' },
        });
      }
      return this.#run<LazyRestoreProgress>(
        options.ctx,
        options.hostId!,
        NfsHostOperation.LazyRestoreStatus,
        { ...this.#lazyTarget(options), chunksUrl: options.chunksUrl },
        this.#shortDeadline,
        `renewal-${options.renewal}`,
      );
    });
  }

  /** Host operation `lazyRestoreWait`: resolves once every chunk is hydrated (a long command). */
  async lazyRestoreWait(options: ObjectOptions): Promise<LazyRestoreProgress> {
    return this.runOperation(options, 'lazyRestoreWait', {}, async () => {
      this.#validateLazy(options);
      return this.#run<LazyRestoreProgress>(
        options.ctx,
        options.hostId!,
        NfsHostOperation.LazyRestoreWait,
        this.#lazyTarget(options),
        this.#copyDeadline,
      );
    });
  }

  /** Host operation `lazyRestoreFinish`: flattens the hydrated volume and removes the restore's state. */
  async lazyRestoreFinish(options: ObjectOptions): Promise<{ path: string; sizeBytes: number }> {
    return this.runOperation(options, 'lazyRestoreFinish', {}, async () => {
      this.#validateLazy(options);
      const result = await this.#run<{ path: string; sizeBytes: number }>(
        options.ctx,
        options.hostId!,
        NfsHostOperation.LazyRestoreFinish,
        this.#lazyTarget(options),
        this.#copyDeadline,
      );
      return { path: result.path, sizeBytes: result.sizeBytes };
    });
  }

  /** Host operation `lazyRestoreAbort`: stops the daemon, removes the unfinished volume and the state. */
  async lazyRestoreAbort(options: ObjectOptions): Promise<{ removedVolume: boolean }> {
    return this.runOperation(options, 'lazyRestoreAbort', {}, async () => {
      this.#validateLazy(options);
      const result = await this.#run<{ removedVolume: boolean }>(
        options.ctx,
        options.hostId!,
        NfsHostOperation.LazyRestoreAbort,
        this.#lazyTarget(options),
      );
      return { removedVolume: result.removedVolume };
    });
  }

  #validateLazy(options: ObjectOptions): void {
    this.validateObjectOptions(options);
    if (options.object.kind !== 'volume' || qemuFormatOf(options.object) !== 'qcow2') {
      throw new DriverInputError('a lazy restore makes a qcow2 volume', { context: { field: 'object' } });
    }
  }

  #lazyTarget(options: ObjectOptions): Record<string, unknown> {
    return {
      mountPath: nfsDetails(options.store).mountPath,
      volumeId: options.object.id,
      path: nfsObjectPath(options.object),
    };
  }

  #run<T = unknown>(
    ctx: DriverContext,
    hostId: string,
    operation: NfsHostOperation,
    args: Record<string, unknown>,
    deadlineSeconds = this.#shortDeadline,
    callKey?: string,
  ): Promise<T> {
    return ctx.host.run<T>(hostId, {
      provider: this.providerName,
      operation,
      args,
      jobId: ctx.jobId,
      deadlineSeconds,
      ...(callKey !== undefined ? { callKey } : {}),
    });
  }
}
