/**
 * The S3 image-store driver. Data never goes through a host here: objects are written by the SDK
 * (blank images), copied server-side, and handed to hosts as presigned URLs.
 */
import { Readable } from 'node:stream';
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CopyObjectCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  type HeadObjectCommandOutput,
  paginateListObjectsV2,
  type S3Client,
  UploadPartCopyCommand,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { BaseDataStoreDriver } from '../sdk/base-driver.js';
import {
  DriverConflictError,
  DriverInputError,
  ObjectNotFoundError,
  UnsupportedOperationError,
} from '../sdk/errors.js';
import type {
  AccessOptions,
  AccessResult,
  CopyEndpoint,
  CopyOptions,
  CreateOptions,
  CreateResult,
  DataStoreInfo,
  DriverCapabilities,
  DriverContext,
  ListOptions,
  ObjectOptions,
  StoredObject,
} from '../sdk/types.js';
import { mapS3Error, resolveS3Client, type S3ClientFactory, s3Details, s3ObjectPath } from './client.js';

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;
/** The largest object a single CopyObject may copy. */
export const S3_SINGLE_COPY_LIMIT = 5 * GiB;
const ZERO_CHUNK = Buffer.alloc(MiB);

/** Options of the S3 provider. */
export interface S3ProviderOptions {
  /** Used when `ctx.services.s3Client` is not injected; see {@link defaultS3ClientFactory}. */
  s3Client?: S3ClientFactory;
  /** Lifetime of presigned URLs from grantAccess, default 3600 s (at most 7 days). */
  presignExpiresSeconds?: number;
  /** Above this size copies use multipart UploadPartCopy; default (and maximum) 5 GiB. */
  multipartCopyThresholdBytes?: number;
  /** Part size of multipart copies, default 512 MiB (5 MiB minimum, S3's rule). */
  copyPartSizeBytes?: number;
  /** Part size used when streaming blank images, default 8 MiB. */
  uploadPartSizeBytes?: number;
}

interface Located {
  client: S3Client;
  bucket: string;
  prefix: string;
  path: string;
  key: string;
}

/**
 * The data plane of an `s3` image store. Object keys are `<prefix><path>` where `path` is
 * {@link s3ObjectPath}; paths returned by this driver are relative to the prefix.
 *
 * @example
 * const driver = new S3Driver({ presignExpiresSeconds: 900 });
 * const { uri } = await driver.grantAccess({ store, ctx, host, object: { kind: 'template', id: 'tpl-1', format: 'qcow2' } });
 */
export class S3Driver extends BaseDataStoreDriver {
  readonly providerName = 's3';
  readonly #options: Required<Omit<S3ProviderOptions, 's3Client'>> & { s3Client?: S3ClientFactory };

  constructor(options: S3ProviderOptions = {}) {
    super();
    const presign = options.presignExpiresSeconds ?? 3600;
    if (!Number.isInteger(presign) || presign < 1 || presign > 604_800) {
      throw new DriverInputError('presignExpiresSeconds must be between 1 and 604800');
    }
    const partSize = options.copyPartSizeBytes ?? 512 * MiB;
    if (partSize < 5 * MiB || partSize > S3_SINGLE_COPY_LIMIT) {
      throw new DriverInputError('copyPartSizeBytes must be between 5 MiB and 5 GiB');
    }
    this.#options = {
      s3Client: options.s3Client,
      presignExpiresSeconds: presign,
      multipartCopyThresholdBytes: Math.min(
        options.multipartCopyThresholdBytes ?? S3_SINGLE_COPY_LIMIT,
        S3_SINGLE_COPY_LIMIT,
      ),
      copyPartSizeBytes: partSize,
      uploadPartSizeBytes: Math.max(options.uploadPartSizeBytes ?? 8 * MiB, 5 * MiB),
    };
  }

  getCapabilities(): DriverCapabilities {
    return {
      snapshots: false,
      linkedClones: false,
      serverSideCopy: true,
      needsHost: false,
      maxObjectBytes: 5 * 1024 * GiB,
    };
  }

  /** Both ends in S3 (any buckets the injected clients reach): a server-side copy. */
  override canCopy(src: CopyEndpoint, dst: CopyEndpoint): boolean {
    return src.store.provider === this.providerName && dst.store.provider === this.providerName;
  }

  /**
   * Writes a blank raw image of `sizeBytes` zero bytes, streamed in parts so memory stays bounded
   * whatever the size. An existing object of the same size is the result (idempotent); of another
   * size, a conflict.
   */
  protected async doCreate({ store, object, sizeBytes, ctx }: CreateOptions): Promise<CreateResult> {
    if (object.format !== undefined && object.format !== 'raw') {
      throw new UnsupportedOperationError(`s3 creates blank raw images only, not ${object.format}`, {
        context: { objectId: object.id },
      });
    }
    const size = sizeBytes ?? object.sizeBytes;
    if (size === undefined)
      throw new DriverInputError('sizeBytes is required', { context: { field: 'sizeBytes' } });
    const at = this.#locate(ctx, store, s3ObjectPath({ ...object, format: 'raw' }));
    const existing = await this.#head(at);
    if (existing) {
      if (existing.ContentLength !== size) {
        throw new DriverConflictError(`${at.path} exists with ${existing.ContentLength} bytes, not ${size}`, {
          context: { key: at.key },
        });
      }
      return { path: at.path, sizeBytes: size, virtualSizeBytes: size, format: 'raw' };
    }
    const upload = new Upload({
      client: at.client,
      params: {
        Bucket: at.bucket,
        Key: at.key,
        Body: zeroStream(size),
        ContentType: 'application/octet-stream',
        Metadata: { 'strata-object-id': object.id, 'strata-job-id': ctx.jobId },
      },
      partSize: this.#options.uploadPartSizeBytes,
      queueSize: 2,
      leavePartsOnError: false,
    });
    upload.on('httpUploadProgress', ({ loaded }) => {
      if (loaded !== undefined) void ctx.progress(Math.floor((loaded / size) * 100)).catch(() => undefined);
    });
    try {
      await upload.done();
    } catch (error) {
      throw mapS3Error(error, 'upload blank image', { key: at.key });
    }
    return { path: at.path, sizeBytes: size, virtualSizeBytes: size, format: 'raw' };
  }

  /** Deletes the key. S3 answers success for a missing key, so this is idempotent by nature. */
  protected async doDelete({ store, object, ctx }: ObjectOptions): Promise<void> {
    const at = this.#locate(ctx, store, s3ObjectPath(object));
    try {
      await at.client.send(new DeleteObjectCommand({ Bucket: at.bucket, Key: at.key }));
    } catch (error) {
      throw mapS3Error(error, 'delete object', { key: at.key });
    }
  }

  /** Server-side copy: CopyObject up to the threshold, multipart UploadPartCopy above it. */
  protected async doCopy({ src, dst, ctx }: CopyOptions): Promise<CreateResult> {
    if (!this.canCopy(src, dst)) {
      throw new UnsupportedOperationError(
        'the s3 driver copies between s3 stores only; use a data motion strategy',
        {
          context: { src: src.store.provider, dst: dst.store.provider },
        },
      );
    }
    const from = this.#locate(ctx, src.store, s3ObjectPath(src.object));
    const format = dst.object.format ?? src.object.format;
    const to = this.#locate(ctx, dst.store, s3ObjectPath({ ...dst.object, format }));
    if (from.bucket === to.bucket && from.key === to.key) {
      throw new DriverInputError('source and destination are the same object');
    }
    const source = await this.#head(from);
    if (!source)
      throw new ObjectNotFoundError(`${from.path} not found in store ${src.store.id}`, {
        context: { key: from.key },
      });
    const size = source.ContentLength ?? 0;
    const existing = await this.#head(to);
    if (existing && existing.ContentLength === size && sameEtag(existing, source)) {
      return { path: to.path, sizeBytes: size, ...(format ? { format } : {}) };
    }
    try {
      if (size > this.#options.multipartCopyThresholdBytes) await this.#multipartCopy(from, to, size, ctx);
      else {
        await to.client.send(
          new CopyObjectCommand({
            Bucket: to.bucket,
            Key: to.key,
            CopySource: copySource(from),
            MetadataDirective: 'COPY',
          }),
        );
      }
    } catch (error) {
      throw mapS3Error(error, 'copy object', { from: from.key, to: to.key });
    }
    return { path: to.path, sizeBytes: size, ...(format ? { format } : {}) };
  }

  /** Lists keys under the store prefix (and `prefix`), paginated; paths are relative to the store prefix. */
  protected async doListObjects({ store, prefix, ctx }: ListOptions): Promise<StoredObject[]> {
    const at = this.#locate(ctx, store, '');
    const objects: StoredObject[] = [];
    try {
      for await (const page of paginateListObjectsV2(
        { client: at.client, pageSize: 1000 },
        { Bucket: at.bucket, Prefix: `${at.prefix}${prefix ?? ''}` },
      )) {
        for (const item of page.Contents ?? []) {
          if (!item.Key || item.Key.endsWith('/')) continue;
          const path = item.Key.slice(at.prefix.length);
          if (path.split('/').some((s) => s.startsWith('.strata-'))) continue;
          objects.push({
            path,
            sizeBytes: item.Size ?? 0,
            ...(item.LastModified ? { modifiedAt: item.LastModified.toISOString() } : {}),
          });
        }
      }
    } catch (error) {
      throw mapS3Error(error, 'list objects', { bucket: at.bucket, prefix: at.prefix });
    }
    return objects;
  }

  /** Checks the object exists, then returns a presigned GET URL valid for `presignExpiresSeconds`. */
  protected async doGrantAccess({ store, object, ctx }: AccessOptions): Promise<AccessResult> {
    const at = this.#locate(ctx, store, s3ObjectPath(object));
    if (!(await this.#head(at))) {
      throw new ObjectNotFoundError(`${at.path} not found in store ${store.id}`, {
        context: { key: at.key },
      });
    }
    const expiresIn = this.#options.presignExpiresSeconds;
    const expiresAt = new Date(Date.now() + expiresIn * 1000).toISOString();
    try {
      const uri = await getSignedUrl(at.client, new GetObjectCommand({ Bucket: at.bucket, Key: at.key }), {
        expiresIn,
      });
      return { uri, expiresAt };
    } catch (error) {
      throw mapS3Error(error, 'presign', { key: at.key });
    }
  }

  /**
   * A no-op: a presigned URL cannot be withdrawn, it expires at `expiresAt`. Keep the expiry short
   * (`presignExpiresSeconds`) rather than relying on revocation.
   */
  protected async doRevokeAccess(): Promise<void> {}

  #locate(ctx: DriverContext, store: DataStoreInfo, path: string): Located {
    const { bucket, prefix } = s3Details(store);
    return {
      client: resolveS3Client(ctx, store, this.#options.s3Client),
      bucket,
      prefix,
      path,
      key: `${prefix}${path}`,
    };
  }

  async #head(at: Located): Promise<HeadObjectCommandOutput | undefined> {
    try {
      return await at.client.send(new HeadObjectCommand({ Bucket: at.bucket, Key: at.key }));
    } catch (error) {
      const mapped = mapS3Error(error, 'head object', { key: at.key });
      if (mapped instanceof ObjectNotFoundError) return undefined;
      throw mapped;
    }
  }

  async #multipartCopy(from: Located, to: Located, size: number, ctx: DriverContext): Promise<void> {
    const { UploadId } = await to.client.send(
      new CreateMultipartUploadCommand({
        Bucket: to.bucket,
        Key: to.key,
        ContentType: 'application/octet-stream',
      }),
    );
    if (!UploadId) throw new DriverInputError('S3 returned no upload id');
    const partSize = Math.max(this.#options.copyPartSizeBytes, Math.ceil(size / 10_000));
    const count = Math.ceil(size / partSize);
    const etags: string[] = new Array(count);
    let next = 0;
    let done = 0;
    const worker = async () => {
      while (next < count) {
        const index = next++;
        const start = index * partSize;
        const end = Math.min(size, start + partSize) - 1;
        const { CopyPartResult } = await to.client.send(
          new UploadPartCopyCommand({
            Bucket: to.bucket,
            Key: to.key,
            UploadId,
            PartNumber: index + 1,
            CopySource: copySource(from),
            CopySourceRange: `bytes=${start}-${end}`,
          }),
        );
        etags[index] = CopyPartResult?.ETag ?? '';
        done++;
        await ctx.progress(Math.floor((done / count) * 100)).catch(() => undefined);
      }
    };
    try {
      await Promise.all(Array.from({ length: Math.min(4, count) }, worker));
      await to.client.send(
        new CompleteMultipartUploadCommand({
          Bucket: to.bucket,
          Key: to.key,
          UploadId,
          MultipartUpload: { Parts: etags.map((ETag, i) => ({ ETag, PartNumber: i + 1 })) },
        }),
      );
    } catch (error) {
      // Abandoned parts cost money; the reconciler also sweeps them, but clean up when we can.
      await to.client
        .send(new AbortMultipartUploadCommand({ Bucket: to.bucket, Key: to.key, UploadId }))
        .catch(() => undefined);
      throw error;
    }
  }
}

// S3 wants CopySource URL-encoded; '/' separators stay as they are.
function copySource(at: Located): string {
  return `${at.bucket}/${at.key.split('/').map(encodeURIComponent).join('/')}`;
}

// A multipart copy gets a different ETag than its source, so sizes alone decide then.
function sameEtag(a: HeadObjectCommandOutput, b: HeadObjectCommandOutput): boolean {
  const multipart = (e?: string) => e?.includes('-') ?? false;
  return a.ETag === b.ETag || multipart(a.ETag) || multipart(b.ETag);
}

function zeroStream(size: number): Readable {
  let remaining = size;
  return new Readable({
    read() {
      if (remaining === 0) {
        this.push(null);
        return;
      }
      const n = Math.min(remaining, ZERO_CHUNK.length);
      remaining -= n;
      // Subarrays share the one zero buffer; nothing writes into it.
      this.push(n === ZERO_CHUNK.length ? ZERO_CHUNK : ZERO_CHUNK.subarray(0, n));
    },
  });
}
