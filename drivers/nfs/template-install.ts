/**
 * How templates become volumes on an NFS pool: the template is fetched once per pool into
 * `templates/<templateId>.qcow2` by a host that mounts the share (`fetchImage`, from a presigned
 * image-store URL), then every volume is a linked clone of that cache entry (or a full copy) made
 * by the `clone` host operation.
 */
import { toDriverError } from '../sdk/base-driver.js';
import { DriverInputError, UnsupportedOperationError } from '../sdk/errors.js';
import type {
  CreateResult,
  DataStoreInfo,
  DriverContext,
  TemplateInstallOptions,
  TemplateInstallStrategy,
  TemplateVolumeOptions,
} from '../sdk/types.js';
import { assertSafeId } from '../sdk/validation.js';
import { nfsDetails, nfsObjectPath, qemuFormatOf } from './driver.js';
import { NfsHostOperation, type NfsImageResult, NfsSourceFormatSchema } from './host-ops.js';

/** Name of the NFS template install strategy. */
export const NFS_TEMPLATE_INSTALL_STRATEGY = 'nfs-cache-then-clone';

/** Options of {@link createNfsTemplateInstallStrategy}. */
export interface NfsTemplateInstallOptions {
  /** Deadline of a template download (and conversion), default 6 h. */
  fetchDeadlineSeconds?: number;
  /** Deadline of a full copy, default 6 h; linked clones use `operationDeadlineSeconds`. */
  copyDeadlineSeconds?: number;
  /** Deadline of a linked clone, default 600 s. */
  operationDeadlineSeconds?: number;
  /** A download with no byte for this long fails (retryable), default 60 s. */
  stallTimeoutSeconds?: number;
}

/**
 * Where a template's cache entry lives on a pool.
 *
 * @example
 * nfsTemplateCachePath('tpl-1'); // 'templates/tpl-1.qcow2'
 */
export function nfsTemplateCachePath(templateId: string): string {
  assertSafeId(templateId, 'template.object.id');
  return `templates/${templateId}.qcow2`;
}

/**
 * The `nfs-cache-then-clone` strategy.
 *
 * - `install` needs `sourceUrl` (an http(s) URL the host can GET, e.g. a presigned image-store
 *   URL): it runs `fetchImage` on `hostId` (parallel ranged GETs for large objects, pinned to
 *   `sourceEtag` when given), converting to qcow2 when the template is raw/vhd, and verifying
 *   `expectedSha256` when given: hashed on the host, unless `sourceVerified` says the image store
 *   proved it. Idempotent: an installed entry is returned as is.
 * - `createVolume` runs `clone` on `hostId`: `mode: 'linked'` (default) makes a qcow2 overlay whose
 *   backing path is relative to the volume (`../templates/<id>.qcow2`), `'full'` a standalone copy;
 *   either is grown to `sizeBytes` (which may not be below the template's virtual size).
 *
 * @example
 * const strategy = createNfsTemplateInstallStrategy();
 * const { url } = await imageDriver.presignGet({ store: imageStore, object: template, ctx });
 * const cache = await strategy.install({
 *   template: { store: imageStore, object: template }, pool, ctx, hostId,
 *   sourceUrl: url, sourceFormat: 'qcow2', expectedSha256,
 * });
 * await strategy.createVolume({
 *   cache: { store: pool, object: { ...template, path: cache.path } },
 *   volume: { kind: 'volume', id: 'vol-1', format: 'qcow2' }, sizeBytes: 20 << 30, ctx, hostId,
 * });
 */
export function createNfsTemplateInstallStrategy(
  options: NfsTemplateInstallOptions = {},
): TemplateInstallStrategy {
  const fetchDeadline = options.fetchDeadlineSeconds ?? 6 * 3600;
  const copyDeadline = options.copyDeadlineSeconds ?? 6 * 3600;
  const shortDeadline = options.operationDeadlineSeconds ?? 600;
  const stallTimeoutSeconds = options.stallTimeoutSeconds ?? 60;

  return {
    name: NFS_TEMPLATE_INSTALL_STRATEGY,

    async install({
      template,
      pool,
      ctx,
      hostId,
      sourceUrl,
      sourceFormat,
      expectedSha256,
      sourceSizeBytes,
      sourceEtag,
      sourceVerified,
    }: TemplateInstallOptions): Promise<CreateResult> {
      requireNfs(pool);
      if (!sourceUrl) {
        throw new DriverInputError('installing a template on nfs needs sourceUrl (a presigned GET URL)', {
          context: { field: 'sourceUrl' },
        });
      }
      const format = NfsSourceFormatSchema.safeParse(sourceFormat ?? template.object.format ?? 'qcow2');
      if (!format.success) {
        throw new UnsupportedOperationError(
          `nfs installs qcow2, raw, vhd and iso templates, not ${sourceFormat ?? template.object.format}`,
          { context: { templateId: template.object.id } },
        );
      }
      const args: Record<string, unknown> = {
        mountPath: nfsDetails(pool).mountPath,
        path: nfsTemplateCachePath(template.object.id),
        url: sourceUrl,
        sourceFormat: format.data,
        targetFormat: 'qcow2',
        stallTimeoutSeconds,
      };
      if (expectedSha256 !== undefined) args.expectedSha256 = expectedSha256;
      if (sourceSizeBytes !== undefined) args.sizeBytes = sourceSizeBytes;
      if (sourceEtag !== undefined) args.etag = sourceEtag;
      if (sourceVerified) {
        if (expectedSha256 === undefined || sourceEtag === undefined) {
          throw new DriverInputError('sourceVerified needs expectedSha256 and sourceEtag', {
            context: { field: 'sourceVerified' },
          });
        }
        args.sourceVerified = true;
      }
      const result = await run<NfsImageResult>(ctx, hostId, NfsHostOperation.FetchImage, args, fetchDeadline);
      return toCreateResult(result);
    },

    async createVolume({
      cache,
      volume,
      sizeBytes,
      ctx,
      hostId,
      mode = 'linked',
    }: TemplateVolumeOptions): Promise<CreateResult> {
      requireNfs(cache.store);
      if (qemuFormatOf(volume) !== 'qcow2') {
        throw new UnsupportedOperationError('volumes made from templates on nfs are qcow2', {
          context: { volumeId: volume.id, format: volume.format },
        });
      }
      const args = {
        mountPath: nfsDetails(cache.store).mountPath,
        path: nfsObjectPath(volume),
        sourcePath: nfsObjectPath(cache.object),
        sourceFormat: qemuFormatOf(cache.object),
        mode,
        sizeBytes,
      };
      const deadline = mode === 'full' ? copyDeadline : shortDeadline;
      return toCreateResult(await run<NfsImageResult>(ctx, hostId, NfsHostOperation.Clone, args, deadline));
    },
  };
}

function requireNfs(store: DataStoreInfo): void {
  if (store.provider !== 'nfs') {
    throw new UnsupportedOperationError(
      `${NFS_TEMPLATE_INSTALL_STRATEGY} serves nfs pools, not ${store.provider}`,
      {
        context: { storeId: store.id },
      },
    );
  }
}

function toCreateResult(result: NfsImageResult): CreateResult {
  return {
    path: result.path,
    sizeBytes: result.sizeBytes,
    virtualSizeBytes: result.virtualSizeBytes,
    format: result.format,
  };
}

function run<T>(
  ctx: DriverContext,
  hostId: string,
  operation: NfsHostOperation,
  args: Record<string, unknown>,
  deadlineSeconds: number,
): Promise<T> {
  // Typed errors (ObjectNotFoundError, DriverInputError…) come back as they do from the driver;
  // codes the SDK has no class for (ChecksumMismatch) stay a HostOperationError with that code.
  return ctx.host
    .run<T>(hostId, { provider: 'nfs', operation, args, jobId: ctx.jobId, deadlineSeconds })
    .catch((error: unknown) => {
      throw toDriverError(error, `${NFS_TEMPLATE_INSTALL_STRATEGY} ${operation}`, { hostId, operation });
    });
}
