/**
 * The S3 image store's management plane. The bucket belongs to the operator: Strata checks it can
 * use it, never creates or deletes it.
 */
import { DeleteObjectCommand, HeadBucketCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { BaseDataStoreLifeCycle } from '../sdk/base-driver.js';
import { DriverError, DriverInputError } from '../sdk/errors.js';
import type { InitializeResult, StoreOptions } from '../sdk/types.js';
import { mapS3Error, resolveS3Client, type S3ClientFactory, s3Details } from './client.js';
import { S3DetailsSchema } from './details.js';

/**
 * Lifecycle of an `s3` store. `initialize` proves the bucket exists and that Strata can write under
 * the prefix (a probe object is put and deleted). Attaching needs nothing on hosts, because hosts
 * reach image stores through presigned URLs. `deleteDataStore` leaves the bucket and its objects
 * alone; which objects must be gone first is the core's rule to enforce.
 *
 * @example
 * const { details } = await new S3LifeCycle().initialize({ store, ctx });
 */
export class S3LifeCycle extends BaseDataStoreLifeCycle {
  readonly #fallback: S3ClientFactory | undefined;

  constructor(options: { s3Client?: S3ClientFactory } = {}) {
    super('s3', S3DetailsSchema);
    this.#fallback = options.s3Client;
  }

  protected override async onInitialize({ store, ctx }: StoreOptions): Promise<InitializeResult> {
    const { bucket, prefix } = s3Details(store);
    const client = resolveS3Client(ctx, store, this.#fallback);
    try {
      await client.send(new HeadBucketCommand({ Bucket: bucket }));
    } catch (error) {
      const mapped = mapS3Error(error, 'head bucket', { bucket });
      if (
        mapped.code === 'ObjectNotFound' ||
        mapped.code === 'Unavailable' ||
        mapped.code === 'AccessDenied'
      ) {
        throw new DriverInputError(
          `bucket ${bucket} does not exist or Strata may not use it (${mapped.code})`,
          {
            cause: mapped,
            context: { field: 'details.bucket', bucket },
          },
        );
      }
      throw mapped;
    }
    // A probe named after the job: two initialisations racing never delete each other's probe.
    const key = `${prefix}.strata-probe-${ctx.jobId}`;
    try {
      await client.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: 'strata write probe\n' }));
      await client.send(new DeleteObjectCommand({ Bucket: bucket, Key: key }));
    } catch (error) {
      const mapped = mapS3Error(error, 'write probe', { bucket, key });
      throw new DriverError(`bucket ${bucket} is not writable under '${prefix}': ${mapped.message}`, {
        code: mapped.code === 'AccessDenied' ? 'InvalidInput' : mapped.code,
        retryable: mapped.retryable,
        cause: mapped,
        context: { bucket, prefix },
      });
    }
    return {};
  }
}
