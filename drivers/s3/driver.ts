/**
 * The S3 image-store driver. Data never goes through a host here: objects are streamed in by the
 * SDK (ingest, blank images) or PUT by clients to presigned part URLs, copied server-side, and
 * handed to hosts as presigned URLs.
 */
import { pipeline, Readable, Transform, type TransformCallback } from 'node:stream';
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CopyObjectCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  DeleteObjectsCommand,
  type DeleteObjectsCommandOutput,
  GetObjectCommand,
  HeadObjectCommand,
  type HeadObjectCommandOutput,
  ListMultipartUploadsCommand,
  type ListMultipartUploadsCommandOutput,
  PutObjectCommand,
  paginateListObjectsV2,
  type S3Client,
  UploadPartCommand,
  UploadPartCopyCommand,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { getSignedUrl, S3RequestPresigner } from '@aws-sdk/s3-request-presigner';
import { sha256Base64, sha256Hex } from '../sdk/backup-manifest.js';
import { BaseDataStoreDriver } from '../sdk/base-driver.js';
import {
  DriverConflictError,
  DriverError,
  DriverInputError,
  DriverUnavailableError,
  ObjectNotFoundError,
  UnsupportedOperationError,
} from '../sdk/errors.js';
import type {
  AbortUploadOptions,
  AccessOptions,
  AccessResult,
  CompleteUploadOptions,
  CopyEndpoint,
  CopyOptions,
  CreateOptions,
  CreateResult,
  CreateUploadOptions,
  CreateUploadResult,
  DataStoreInfo,
  DeleteObjectsOptions,
  DriverCapabilities,
  DriverContext,
  ImageStoreDriver,
  ListOptions,
  ListUploadsOptions,
  ObjectOptions,
  ObjectStat,
  PendingUpload,
  PresignedPost,
  PresignedUrl,
  PresignOptions,
  PresignPostOptions,
  PresignUploadPartsOptions,
  ReadStreamOptions,
  ReadStreamResult,
  StatObjectOptions,
  StoredObject,
  UploadPartUrl,
  WriteStreamOptions,
} from '../sdk/types.js';
import { assertSafeId } from '../sdk/validation.js';
import { mapS3Error, resolveS3Client, type S3ClientFactory, s3Details, s3ObjectPath } from './client.js';
import {
  assertObjectSize,
  assertUploadId,
  multipartEtag,
  planParts,
  planStreamUpload,
  S3_LIMITS,
  uploadPartSize,
  validateCompletedParts,
} from './multipart.js';
import { signPostPolicy } from './presigned-post.js';

/** S3 DeleteObjects takes at most this many keys a request. */
const DELETE_OBJECTS_MAX_KEYS = 1000;
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
  /**
   * Smallest part size of streamed writes (blank images, `writeStream`), default 8 MiB (5 MiB
   * minimum); grown for large `contentLength`s so that parts stay within 10,000.
   */
  uploadPartSizeBytes?: number;
  /** Memory a streamed write may hold in parts, default 256 MiB; bounds its concurrency (1–4). */
  streamMemoryBytes?: number;
  /** Default part size of presigned client uploads (`createUpload`), default 64 MiB. */
  presignedPartSizeBytes?: number;
  /**
   * The buckets the control plane may use (it holds IAM grants for these): a store in any other
   * bucket is refused when it is added. Default: any bucket.
   */
  allowedBuckets?: readonly string[];
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
 * {@link s3ObjectPath} (`templates/<id>/<id>.<format>`, `isos/<id>/<id>.iso`, …); paths returned by
 * this driver are relative to the prefix. Implements {@link ImageStoreDriver}: streamed writes and
 * reads, presigned multipart uploads for clients, presigned GET/PUT URLs.
 *
 * The client (see `S3ClientFactory`) must use checksums only when required: presigned URLs made
 * by a client with `WHEN_SUPPORTED` carry checksum parameters that plain PUTs cannot satisfy.
 *
 * @example
 * const driver = new S3Driver({ presignExpiresSeconds: 900 });
 * const { uri } = await driver.grantAccess({ store, ctx, host, object: { kind: 'template', id: 'tpl-1', format: 'qcow2' } });
 *
 * @example
 * const { path, sizeBytes } = await driver.writeStream({ store, ctx, object, body: createReadStream(file), contentLength });
 */
export class S3Driver extends BaseDataStoreDriver implements ImageStoreDriver {
  readonly providerName = 's3';
  readonly #options: Required<Omit<S3ProviderOptions, 's3Client' | 'allowedBuckets'>> & {
    s3Client?: S3ClientFactory;
  };

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
      streamMemoryBytes: Math.max(options.streamMemoryBytes ?? 256 * MiB, 5 * MiB),
      presignedPartSizeBytes: Math.max(options.presignedPartSizeBytes ?? 64 * MiB, 5 * MiB),
    };
  }

  getCapabilities(): DriverCapabilities {
    return {
      snapshots: false,
      linkedClones: false,
      serverSideCopy: true,
      needsHost: false,
      maxObjectBytes: S3_LIMITS.maxObjectBytes,
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

  // ---- ImageStoreDriver -------------------------------------------------------------------------

  /**
   * Streams `body` into the object with lib-storage's multipart `Upload`: parts of at least
   * `uploadPartSizeBytes` (grown so that `contentLength` fits in 10,000 parts), at most four in
   * flight and about `streamMemoryBytes` held. A body shorter or longer than `contentLength`, a
   * source error, a failed part or `signal` aborting all end the same way: the multipart upload is
   * aborted (parts deleted), no object is written, the body is destroyed.
   */
  async writeStream(options: WriteStreamOptions): Promise<CreateResult> {
    return this.runOperation(options, 'writeStream', { contentLength: options?.contentLength }, async () => {
      try {
        this.validateObjectOptions(options);
        if (typeof options.body?.pipe !== 'function') {
          throw new DriverInputError('body must be a Readable', { context: { field: 'body' } });
        }
        if (options.contentLength !== undefined) assertObjectSize(options.contentLength, 'contentLength');
        throwIfAborted(options.signal);
      } catch (error) {
        options?.body?.destroy?.();
        throw error;
      }
      return this.#writeStream(options);
    });
  }

  async #writeStream({ store, object, body, contentLength, signal, onProgress, ctx }: WriteStreamOptions) {
    const at = this.#locate(ctx, store, s3ObjectPath(object));
    const { partSize, queueSize } = planStreamUpload(
      contentLength,
      this.#options.uploadPartSizeBytes,
      this.#options.streamMemoryBytes,
    );
    const counted = new ByteCounter(contentLength);
    let readError: unknown;
    counted.on('error', (error) => {
      readError ??= error;
    });
    // A broken source destroys `counted` with its error, which lib-storage then reads as a failure.
    pipeline(body, counted, () => undefined);
    // Aborting through the body (not lib-storage's abortController) makes done() settle only after
    // the parts in flight finished and AbortMultipartUpload was sent: nothing is uploaded afterwards.
    const onAbort = () => counted.destroy(abortError(signal));
    signal?.addEventListener('abort', onAbort, { once: true });
    const upload = new Upload({
      client: at.client,
      params: {
        Bucket: at.bucket,
        Key: at.key,
        Body: counted,
        ...(contentLength === undefined ? {} : { ContentLength: contentLength }),
        ContentType: 'application/octet-stream',
        Metadata: { 'strata-object-id': object.id, 'strata-job-id': ctx.jobId },
      },
      partSize,
      queueSize,
      leavePartsOnError: false,
    });
    upload.on('httpUploadProgress', ({ loaded }) => {
      if (loaded === undefined) return;
      try {
        onProgress?.(loaded);
      } catch {
        // A caller's progress callback must not break the upload.
      }
      if (contentLength) void ctx.progress(Math.floor((loaded / contentLength) * 100)).catch(() => undefined);
    });
    try {
      await upload.done();
    } catch (error) {
      counted.destroy();
      // lib-storage aborted already; when that abort itself failed, its error replaced the cause, and
      // S3 documents that a part in flight during an abort may survive it: abort once more.
      if (upload.uploadId) await this.#abortQuietly(at, upload.uploadId, ctx);
      const cause = readError ?? error;
      if (cause instanceof DriverError) throw cause;
      throw mapS3Error(cause, 'write stream', { key: at.key, uploadId: upload.uploadId });
    } finally {
      signal?.removeEventListener('abort', onAbort);
    }
    if (signal?.aborted) {
      // The abort came after the last part: the object is complete, but the caller asked for none.
      await at.client
        .send(new DeleteObjectCommand({ Bucket: at.bucket, Key: at.key }))
        .catch(() => undefined);
      throw abortError(signal);
    }
    return { path: at.path, sizeBytes: counted.bytes, ...(object.format ? { format: object.format } : {}) };
  }

  /** GetObject, with `Range: bytes=start-end` for a range; the body is the SDK's response stream. */
  async readStream(options: ReadStreamOptions): Promise<ReadStreamResult> {
    return this.runOperation(options, 'readStream', { range: options?.range }, async () => {
      this.validateObjectOptions(options);
      const { store, object, range, signal, ctx } = options;
      if (range !== undefined) {
        if (
          !Number.isSafeInteger(range?.start) ||
          !Number.isSafeInteger(range?.end) ||
          range.start < 0 ||
          range.end < range.start
        ) {
          throw new DriverInputError('range must be { start, end } integers with 0 <= start <= end', {
            context: { field: 'range' },
          });
        }
      }
      const at = this.#locate(ctx, store, s3ObjectPath(object));
      try {
        const out = await at.client.send(
          new GetObjectCommand({
            Bucket: at.bucket,
            Key: at.key,
            ...(range ? { Range: `bytes=${range.start}-${range.end}` } : {}),
          }),
          signal ? { abortSignal: signal } : {},
        );
        const body = out.Body;
        if (!(body instanceof Readable)) throw new DriverError('S3 returned no readable body');
        const sizeBytes = out.ContentLength ?? 0;
        const total = /\/(\d+)$/.exec(out.ContentRange ?? '')?.[1];
        return { body, sizeBytes, totalSizeBytes: total === undefined ? sizeBytes : Number(total) };
      } catch (error) {
        throw mapS3Error(error, 'read object', { key: at.key });
      }
    });
  }

  /**
   * HeadObject: size, ETag and modification time, or `undefined` for a missing key. With
   * `checksum`, HeadObject asks for `ChecksumMode: ENABLED` and the stored full-object SHA-256 is
   * returned (hex) when the object has one.
   */
  async statObject(options: StatObjectOptions): Promise<ObjectStat | undefined> {
    return this.runOperation(options, 'statObject', {}, async () => {
      this.validateObjectOptions(options);
      const at = this.#locate(options.ctx, options.store, s3ObjectPath(options.object));
      const head = await this.#head(at, options.checksum === true);
      if (!head) return undefined;
      const checksumSha256 = options.checksum ? sha256Hex(head.ChecksumSHA256) : undefined;
      return {
        sizeBytes: head.ContentLength ?? 0,
        ...(head.ETag ? { etag: head.ETag } : {}),
        ...(head.LastModified ? { modifiedAt: head.LastModified.toISOString() } : {}),
        ...(checksumSha256 ? { checksumSha256 } : {}),
      };
    });
  }

  /**
   * CreateMultipartUpload, then one presigned UploadPart URL per part. The part size is
   * `partSizeBytes` (default `presignedPartSizeBytes`) grown to fit 10,000 parts. The upload is
   * aborted again if presigning fails, so a failed call leaves nothing pending.
   */
  async createUpload(options: CreateUploadOptions): Promise<CreateUploadResult> {
    const extra = { sizeBytes: options?.sizeBytes, partSizeBytes: options?.partSizeBytes };
    return this.runOperation(options, 'createUpload', extra, async () => {
      this.validateObjectOptions(options);
      assertObjectSize(options.sizeBytes, 'sizeBytes', false);
      const partSize = uploadPartSize(
        options.sizeBytes,
        options.partSizeBytes ?? this.#options.presignedPartSizeBytes,
      );
      const plan = planParts(options.sizeBytes, partSize);
      const expiresIn = this.#expires(options.expiresSeconds);
      const at = this.#locate(options.ctx, options.store, s3ObjectPath(options.object));
      let uploadId: string | undefined;
      try {
        const created = await at.client.send(
          new CreateMultipartUploadCommand({
            Bucket: at.bucket,
            Key: at.key,
            ContentType: 'application/octet-stream',
            Metadata: { 'strata-object-id': options.object.id, 'strata-job-id': options.ctx.jobId },
          }),
        );
        uploadId = created.UploadId;
        if (!uploadId) throw new DriverError('S3 returned no upload id');
        const parts = await this.#presignParts(at, uploadId, plan, expiresIn);
        return {
          uploadId,
          path: at.path,
          partSizeBytes: partSize,
          parts,
          expiresAt: new Date(Date.now() + expiresIn * 1000).toISOString(),
        };
      } catch (error) {
        if (uploadId) await this.#abortQuietly(at, uploadId, options.ctx);
        throw mapS3Error(error, 'create upload', { key: at.key });
      }
    });
  }

  /** Presigns UploadPart URLs again for `partNumbers` of an upload made by {@link createUpload}. */
  async presignUploadParts(options: PresignUploadPartsOptions): Promise<UploadPartUrl[]> {
    return this.runOperation(options, 'presignUploadParts', { uploadId: options?.uploadId }, async () => {
      this.validateObjectOptions(options);
      assertUploadId(options.uploadId);
      assertObjectSize(options.sizeBytes, 'sizeBytes', false);
      const plan = planParts(options.sizeBytes, uploadPartSize(options.sizeBytes, options.partSizeBytes));
      if (!Array.isArray(options.partNumbers) || options.partNumbers.length === 0) {
        throw new DriverInputError('partNumbers must be a non-empty array', {
          context: { field: 'partNumbers' },
        });
      }
      const wanted = options.partNumbers.map((n) => {
        const part = Number.isSafeInteger(n) ? plan[n - 1] : undefined;
        if (!part) {
          throw new DriverInputError(`partNumbers: ${n} is not a part of 1..${plan.length}`, {
            context: { field: 'partNumbers' },
          });
        }
        return part;
      });
      const at = this.#locate(options.ctx, options.store, s3ObjectPath(options.object));
      try {
        return await this.#presignParts(at, options.uploadId, wanted, this.#expires(options.expiresSeconds));
      } catch (error) {
        throw mapS3Error(error, 'presign upload parts', { key: at.key });
      }
    });
  }

  /**
   * CompleteMultipartUpload with the parts sorted, then HeadObject for the size. A retry whose first
   * attempt did complete finds the upload gone (`NoSuchUpload`): when the object's ETag is the one
   * these parts produce, that object is the result. With `sizeBytes`, an object of another size is
   * deleted and refused with {@link DriverConflictError}.
   */
  async completeUpload(options: CompleteUploadOptions): Promise<CreateResult> {
    return this.runOperation(options, 'completeUpload', { uploadId: options?.uploadId }, async () => {
      this.validateObjectOptions(options);
      assertUploadId(options.uploadId);
      const parts = validateCompletedParts(options.parts);
      if (options.sizeBytes !== undefined) assertObjectSize(options.sizeBytes, 'sizeBytes');
      const at = this.#locate(options.ctx, options.store, s3ObjectPath(options.object));
      try {
        await at.client.send(
          new CompleteMultipartUploadCommand({
            Bucket: at.bucket,
            Key: at.key,
            UploadId: options.uploadId,
            MultipartUpload: { Parts: parts.map((p) => ({ PartNumber: p.partNumber, ETag: p.etag })) },
          }),
        );
      } catch (error) {
        const mapped = mapS3Error(error, 'complete upload', { key: at.key, uploadId: options.uploadId });
        if (!(mapped instanceof ObjectNotFoundError)) throw mapped;
        const existing = await this.#head(at);
        const expected = multipartEtag(parts.map((p) => p.etag));
        if (!existing || expected === undefined || existing.ETag !== expected) {
          throw new ObjectNotFoundError(
            `upload ${options.uploadId} not found (aborted, expired or completed)`,
            {
              cause: error,
              context: { key: at.key, uploadId: options.uploadId },
            },
          );
        }
        options.ctx.logger.info('upload was already completed with these parts', { key: at.key });
      }
      const head = await this.#head(at);
      if (!head) throw new ObjectNotFoundError(`${at.path} is missing after completing its upload`);
      const sizeBytes = head.ContentLength ?? 0;
      if (options.sizeBytes !== undefined && sizeBytes !== options.sizeBytes) {
        await at.client.send(new DeleteObjectCommand({ Bucket: at.bucket, Key: at.key }));
        throw new DriverConflictError(
          `upload produced ${sizeBytes} bytes, not ${options.sizeBytes}; deleted`,
          {
            context: { key: at.key },
          },
        );
      }
      const format = options.object.format;
      return { path: at.path, sizeBytes, ...(format ? { format } : {}) };
    });
  }

  /** AbortMultipartUpload; an upload S3 no longer knows (`NoSuchUpload`) counts as aborted. */
  async abortUpload(options: AbortUploadOptions): Promise<void> {
    return this.runOperation(options, 'abortUpload', { uploadId: options?.uploadId }, async () => {
      this.validateObjectOptions(options);
      assertUploadId(options.uploadId);
      const at = this.#locate(options.ctx, options.store, s3ObjectPath(options.object));
      try {
        await at.client.send(
          new AbortMultipartUploadCommand({ Bucket: at.bucket, Key: at.key, UploadId: options.uploadId }),
        );
      } catch (error) {
        const mapped = mapMultipartError(error, 'abort upload', { key: at.key, uploadId: options.uploadId });
        if (mapped instanceof ObjectNotFoundError) return;
        throw mapped;
      }
    });
  }

  /**
   * ListMultipartUploads under the store prefix, every page (by key and upload-id markers), keeping
   * those initiated before `olderThan`.
   */
  async listUploads(options: ListUploadsOptions): Promise<PendingUpload[]> {
    const olderThan = options?.olderThan;
    const fields = {
      storeId: options?.store?.id,
      olderThan: olderThan instanceof Date ? String(olderThan) : undefined,
    };
    const asObject = { ...options, object: { kind: 'template', id: 'uploads' } } as ObjectOptions;
    return this.runOperation(asObject, 'listUploads', fields, async () => {
      this.#validateStoreOptions(options);
      if (
        options.olderThan !== undefined &&
        !(options.olderThan instanceof Date && !Number.isNaN(+options.olderThan))
      ) {
        throw new DriverInputError('olderThan must be a valid Date', { context: { field: 'olderThan' } });
      }
      const at = this.#locate(options.ctx, options.store, '');
      const uploads: PendingUpload[] = [];
      let markers: { KeyMarker?: string; UploadIdMarker?: string } = {};
      try {
        for (;;) {
          const page: ListMultipartUploadsCommandOutput = await at.client.send(
            new ListMultipartUploadsCommand({
              Bucket: at.bucket,
              Prefix: at.prefix,
              MaxUploads: 1000,
              ...markers,
            }),
          );
          for (const u of page.Uploads ?? []) {
            if (!u.Key?.startsWith(at.prefix) || !u.UploadId) continue;
            if (options.olderThan && u.Initiated && u.Initiated >= options.olderThan) continue;
            uploads.push({
              path: u.Key.slice(at.prefix.length),
              uploadId: u.UploadId,
              initiatedAt: (u.Initiated ?? new Date(0)).toISOString(),
            });
          }
          if (!page.IsTruncated) break;
          const next = { KeyMarker: page.NextKeyMarker, UploadIdMarker: page.NextUploadIdMarker };
          // A truncated page without markers would loop forever; S3 always sends them.
          if (!next.KeyMarker && !next.UploadIdMarker) break;
          markers = next;
        }
      } catch (error) {
        throw mapMultipartError(error, 'list uploads', { bucket: at.bucket, prefix: at.prefix });
      }
      return uploads;
    });
  }

  /** Checks the object exists, then presigns a GET valid for `expiresSeconds`. */
  async presignGet(options: PresignOptions): Promise<PresignedUrl> {
    return this.runOperation(options, 'presignGet', {}, async () => {
      this.validateObjectOptions(options);
      const at = this.#locate(options.ctx, options.store, s3ObjectPath(options.object));
      if (!options.knownToExist && !(await this.#head(at))) {
        throw new ObjectNotFoundError(`${at.path} not found in store ${options.store.id}`, {
          context: { key: at.key },
        });
      }
      const expiresIn = this.#expires(options.expiresSeconds);
      return this.#presign(at, new GetObjectCommand({ Bucket: at.bucket, Key: at.key }), expiresIn);
    });
  }

  /**
   * Presigns a single PUT of the whole object (up to 5 GiB; meant for small files such as
   * manifests and backup chunks). The client sends the bytes as the request body. With
   * `checksumSha256`, the URL signs `x-amz-checksum-sha256` (base64) as a header the client must
   * send with exactly that value, so S3 verifies the body against it and records it.
   */
  async presignPut(options: PresignOptions): Promise<PresignedUrl> {
    return this.runOperation(options, 'presignPut', {}, async () => {
      this.validateObjectOptions(options);
      const sha = options.checksumSha256;
      if (sha !== undefined && !/^[0-9a-f]{64}$/.test(sha)) {
        throw new DriverInputError('checksumSha256 must be a lower-case hex sha256', {
          context: { field: 'checksumSha256' },
        });
      }
      const at = this.#locate(options.ctx, options.store, s3ObjectPath(options.object));
      const expiresIn = this.#expires(options.expiresSeconds);
      const command = new PutObjectCommand({
        Bucket: at.bucket,
        Key: at.key,
        ...(sha ? { ChecksumSHA256: sha256Base64(sha) } : {}),
      });
      // The presigner hoists x-amz-* headers into the query by default, and S3 ignores a checksum
      // given there: kept as a signed header, the checksum cannot be dropped or changed by the client.
      return this.#presign(at, command, expiresIn, sha ? ['x-amz-checksum-sha256'] : []);
    });
  }

  /**
   * Deletes many objects with S3 DeleteObjects, up to 1000 keys a request, instead of one request
   * each. Objects already gone are not an error (as with `deleteAsync`); any other per-key error
   * fails the call as retryable, after the rest of its request was deleted (running it again is safe).
   */
  async deleteObjects(options: DeleteObjectsOptions): Promise<void> {
    const asObject = { ...options, object: { kind: 'template', id: 'batch' } } as ObjectOptions;
    return this.runOperation(asObject, 'deleteObjects', { count: options?.objects?.length }, async () => {
      this.#validateStoreOptions(options);
      if (!Array.isArray(options.objects)) {
        throw new DriverInputError('objects must be an array', { context: { field: 'objects' } });
      }
      const located = options.objects.map((object) =>
        this.#locate(options.ctx, options.store, s3ObjectPath(object)),
      );
      for (let i = 0; i < located.length; i += DELETE_OBJECTS_MAX_KEYS) {
        const batch = located.slice(i, i + DELETE_OBJECTS_MAX_KEYS);
        const first = batch[0]!;
        let answer: DeleteObjectsCommandOutput;
        try {
          answer = await first.client.send(
            new DeleteObjectsCommand({
              Bucket: first.bucket,
              Delete: { Objects: batch.map((at) => ({ Key: at.key })), Quiet: true },
            }),
          );
        } catch (error) {
          throw mapS3Error(error, 'delete objects', { key: first.key });
        }
        const failed = (answer.Errors ?? []).filter((e) => e.Code !== 'NoSuchKey');
        if (failed.length > 0) {
          throw new DriverUnavailableError(
            `${failed.length} of ${batch.length} objects were not deleted; the first, ${failed[0]!.Key}: ${failed[0]!.Code} ${failed[0]!.Message ?? ''}`.trim(),
            { context: { key: failed[0]!.Key, code: failed[0]!.Code } },
          );
        }
      }
    });
  }

  /**
   * Signs a POST policy for uploads under `prefix` (relative to the store's prefix): each upload
   * names its own key under it, at most `maxBytes`, with its SHA-256 for S3 to verify and keep.
   */
  async presignPost(options: PresignPostOptions): Promise<PresignedPost> {
    const asObject = { ...options, object: { kind: 'template', id: 'staging' } } as ObjectOptions;
    return this.runOperation(asObject, 'presignPost', { prefix: options?.prefix }, async () => {
      this.#validateStoreOptions(options);
      const { prefix, maxBytes } = options;
      if (
        typeof prefix !== 'string' ||
        !/^([A-Za-z0-9._-]+\/)+$/.test(prefix) ||
        /(^|\/)\.{1,2}\//.test(prefix)
      ) {
        throw new DriverInputError('prefix must be relative path segments ending in /', {
          context: { field: 'prefix' },
        });
      }
      if (!Number.isSafeInteger(maxBytes) || maxBytes <= 0 || maxBytes > 5 * 1024 ** 3) {
        throw new DriverInputError('maxBytes must be a positive integer up to 5 GiB', {
          context: { field: 'maxBytes' },
        });
      }
      const at = this.#locate(options.ctx, options.store, prefix);
      try {
        return await signPostPolicy({
          client: at.client,
          bucket: at.bucket,
          keyPrefix: at.key,
          maxBytes,
          expiresSeconds: this.#expires(options.expiresSeconds),
        });
      } catch (error) {
        throw mapS3Error(error, 'presign post', { key: at.key });
      }
    });
  }

  async #presign(
    at: Located,
    command: GetObjectCommand | PutObjectCommand,
    expiresIn: number,
    signedHeaders: string[] = [],
  ): Promise<PresignedUrl> {
    try {
      const url = await getSignedUrl(at.client, command, {
        expiresIn,
        ...(signedHeaders.length ? { unhoistableHeaders: new Set(signedHeaders) } : {}),
      });
      return { url, expiresAt: new Date(Date.now() + expiresIn * 1000).toISOString(), path: at.path };
    } catch (error) {
      throw mapS3Error(error, 'presign', { key: at.key });
    }
  }

  async #presignParts(
    at: Located,
    uploadId: string,
    parts: { partNumber: number; offset: number; sizeBytes: number }[],
    expiresIn: number,
  ): Promise<UploadPartUrl[]> {
    // getSignedUrl runs the whole middleware stack (endpoint rules included): ~1.2 ms a URL, 12 s
    // for 10,000 parts. The first part goes that way; the others reuse its URL as a template and are
    // only signed (~0.15 ms), with the same signing date so every URL expires together.
    const signingDate = new Date();
    const sdkUrl = (partNumber: number) =>
      getSignedUrl(
        at.client,
        new UploadPartCommand({ Bucket: at.bucket, Key: at.key, UploadId: uploadId, PartNumber: partNumber }),
        { expiresIn, signingDate },
      );
    const [first, ...rest] = parts;
    if (!first) return [];
    const firstUrl = await sdkUrl(first.partNumber);
    const fast = templateSigner(at.client, firstUrl, expiresIn, signingDate);
    // Self-check: if signing the template does not reproduce the SDK's own URL (an SDK change),
    // every part goes the slow, certain way.
    const sign = sameUrl(await fast(first.partNumber), firstUrl) ? fast : sdkUrl;
    const urls: UploadPartUrl[] = [{ ...first, url: firstUrl }];
    for (const part of rest) urls.push({ ...part, url: await sign(part.partNumber) });
    return urls;
  }

  #expires(expiresSeconds: number | undefined): number {
    const value = expiresSeconds ?? this.#options.presignExpiresSeconds;
    if (!Number.isSafeInteger(value) || value < 1 || value > 604_800) {
      throw new DriverInputError('expiresSeconds must be an integer from 1 to 604800 (7 days)', {
        context: { field: 'expiresSeconds' },
      });
    }
    return value;
  }

  async #abortQuietly(at: Located, uploadId: string, ctx: DriverContext): Promise<void> {
    try {
      await at.client.send(
        new AbortMultipartUploadCommand({ Bucket: at.bucket, Key: at.key, UploadId: uploadId }),
      );
    } catch (error) {
      const mapped = mapMultipartError(error, 'abort upload', { key: at.key, uploadId });
      if (mapped instanceof ObjectNotFoundError) return;
      // Parts left behind cost storage until a reconciler (listUploads + abortUpload) sweeps them.
      ctx.logger.warn('could not abort multipart upload', { key: at.key, uploadId, error: mapped.message });
    }
  }

  #validateStoreOptions(options: ListUploadsOptions): void {
    const { store, ctx } = options ?? {};
    if (!ctx || typeof ctx.jobId !== 'string' || !ctx.logger) {
      throw new DriverInputError('ctx with jobId and logger is required', { context: { field: 'ctx' } });
    }
    if (!store || typeof store !== 'object')
      throw new DriverInputError('store is required', { context: { field: 'store' } });
    assertSafeId(store.id, 'store.id');
    if (store.provider !== this.providerName) {
      throw new DriverInputError(`store ${store.id} belongs to provider '${store.provider}', not 's3'`, {
        context: { field: 'store.provider' },
      });
    }
  }

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

  async #head(at: Located, checksum = false): Promise<HeadObjectCommandOutput | undefined> {
    try {
      return await at.client.send(
        new HeadObjectCommand({
          Bucket: at.bucket,
          Key: at.key,
          ...(checksum ? { ChecksumMode: 'ENABLED' as const } : {}),
        }),
      );
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

/**
 * Counts the bytes going through and, when the length was announced, fails a body that is longer
 * (as soon as it is) or shorter (at its end, before lib-storage can send the last part): a wrong
 * length must not become a complete but different object.
 */
class ByteCounter extends Transform {
  bytes = 0;
  readonly #expected: number | undefined;

  constructor(expected: number | undefined) {
    super();
    this.#expected = expected;
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.bytes += chunk.length;
    if (this.#expected !== undefined && this.bytes > this.#expected) {
      callback(new DriverInputError(`body is longer than contentLength ${this.#expected}`));
      return;
    }
    callback(null, chunk);
  }

  override _flush(callback: TransformCallback): void {
    if (this.#expected !== undefined && this.bytes !== this.#expected) {
      callback(
        new DriverInputError(`body ended after ${this.bytes} bytes, contentLength is ${this.#expected}`),
      );
      return;
    }
    callback();
  }
}

function abortError(signal: AbortSignal | undefined): DriverError {
  const reason =
    signal?.reason instanceof Error ? signal.reason.message : String(signal?.reason ?? 'aborted');
  return new DriverError(`write aborted: ${reason}`, { code: 'Aborted', cause: signal?.reason });
}

function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw abortError(signal);
}

// S3 answers an unsupported multipart call with 501 NotImplemented, s3rver 3.7 answers
// AbortMultipartUpload and ListParts with 405 MethodNotAllowed: both mean "this endpoint can't".
function mapMultipartError(error: unknown, operation: string, context: Record<string, unknown>): DriverError {
  const name = (error as { name?: unknown })?.name;
  if (name === 'MethodNotAllowed' || name === 'NotImplemented') {
    return new UnsupportedOperationError(
      `${operation}: this S3 endpoint does not implement it (${String(name)})`,
      {
        cause: error,
        context,
      },
    );
  }
  return mapS3Error(error, operation, context);
}

/**
 * Signs UploadPart URLs that differ from `templateUrl` (made by getSignedUrl) only in `partNumber`:
 * same endpoint, path and unsigned query, signed by the presigner the SDK itself uses.
 */
function templateSigner(
  client: S3Client,
  templateUrl: string,
  expiresIn: number,
  signingDate: Date,
): (partNumber: number) => Promise<string> {
  const base = new URL(templateUrl);
  const query: Record<string, string> = {};
  for (const [name, value] of base.searchParams) if (!/^x-amz-/i.test(name)) query[name] = value;
  const presigner = new S3RequestPresigner({ ...client.config } as ConstructorParameters<
    typeof S3RequestPresigner
  >[0]);
  return async (partNumber) => {
    const signed = await presigner.presign(
      {
        method: 'PUT',
        protocol: base.protocol,
        hostname: base.hostname,
        ...(base.port ? { port: Number(base.port) } : {}),
        path: base.pathname,
        query: { ...query, partNumber: String(partNumber) },
        headers: { host: base.host },
      },
      { expiresIn, signingDate },
    );
    const search = Object.entries(signed.query ?? {})
      .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(String(v))}`)
      .join('&');
    return `${base.protocol}//${base.host}${signed.path}?${search}`;
  };
}

// Equal URLs up to the order of query parameters.
function sameUrl(a: string, b: string): boolean {
  const norm = (u: string) => {
    const url = new URL(u);
    const params = [...url.searchParams].map(([k, v]) => `${k}=${v}`).sort();
    return `${url.origin}${url.pathname}?${params.join('&')}`;
  };
  return norm(a) === norm(b);
}
