/**
 * The NFS control-plane driver. It never touches the share itself: every data-plane call runs the
 * matching host operation (./host-ops.ts) on the host Strata chose, through `ctx.host`.
 */
import { BasePrimaryDataStoreDriver } from '../sdk/base-driver.js';
import { DriverInputError, UnsupportedOperationError } from '../sdk/errors.js';
import type {
  AccessOptions,
  AccessResult,
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
import { type NfsDetails, NfsDetailsSchema } from './details.js';
import {
  NfsHostOperation,
  type NfsImageFormat,
  type NfsImageResult,
  type NfsListedFile,
} from './host-ops.js';

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

// A snapshot's locator is `<image path>@<snapshot id>` (an internal qcow2 snapshot).
function splitSnapshotPath(path: string): { imagePath: string; snapshotId: string } | undefined {
  const at = path.lastIndexOf('@');
  if (at <= 0 || at === path.length - 1) return undefined;
  return { imagePath: path.slice(0, at), snapshotId: path.slice(at + 1) };
}

/**
 * The data plane of an `nfs` primary store.
 *
 * @example
 * const driver = new NfsDriver();
 * await driver.createAsync({ store, ctx, hostId: 'host-1', object: { kind: 'volume', id: 'vol-1' }, sizeBytes: 1 << 30 });
 */
export class NfsDriver extends BasePrimaryDataStoreDriver {
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

  /** Deletes an image file, or an internal snapshot when the path is `<image>@<snapshot>`. */
  protected async doDelete({ store, object, hostId, ctx }: ObjectOptions): Promise<void> {
    const { mountPath } = nfsDetails(store);
    if (object.kind === 'snapshot') {
      const located = object.path
        ? splitSnapshotPath(object.path)
        : object.parent && { imagePath: nfsObjectPath(object.parent), snapshotId: object.id };
      if (!located) {
        throw new DriverInputError('a snapshot needs a path `<image>@<id>` or a parent', {
          context: { field: 'object.path' },
        });
      }
      await this.#run(ctx, hostId!, NfsHostOperation.DeleteSnapshot, {
        mountPath,
        path: located.imagePath,
        snapshotId: located.snapshotId,
      });
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

  /** Internal qcow2 snapshot named by `snapshot.id`; the result path is `<image path>@<snapshot id>`. */
  protected async doTakeSnapshot({
    store,
    object,
    snapshot,
    hostId,
    ctx,
  }: SnapshotOptions): Promise<CreateResult> {
    this.#requireQcow2(object);
    const args = {
      mountPath: nfsDetails(store).mountPath,
      path: nfsObjectPath(object),
      snapshotId: snapshot.id,
    };
    const result = await this.#run<NfsImageResult>(ctx, hostId!, NfsHostOperation.Snapshot, args);
    return {
      path: result.path,
      sizeBytes: result.sizeBytes,
      virtualSizeBytes: result.virtualSizeBytes,
      format: 'qcow2',
    };
  }

  protected async doRevertSnapshot({ store, object, snapshot, hostId, ctx }: SnapshotOptions): Promise<void> {
    this.#requireQcow2(object);
    const args = {
      mountPath: nfsDetails(store).mountPath,
      path: nfsObjectPath(object),
      snapshotId: snapshot.id,
    };
    await this.#run(ctx, hostId!, NfsHostOperation.Revert, args);
  }

  #requireQcow2(object: DataObjectRef): void {
    if (qemuFormatOf(object) !== 'qcow2') {
      throw new UnsupportedOperationError('storage snapshots on nfs need qcow2 images', {
        context: { objectId: object.id },
      });
    }
  }

  #run<T = unknown>(
    ctx: DriverContext,
    hostId: string,
    operation: NfsHostOperation,
    args: Record<string, unknown>,
    deadlineSeconds = this.#shortDeadline,
  ): Promise<T> {
    return ctx.host.run<T>(hostId, {
      provider: this.providerName,
      operation,
      args,
      jobId: ctx.jobId,
      deadlineSeconds,
    });
  }
}
