import type { DataStoreProvider } from '../sdk/types.js';
import { S3DetailsSchema } from './details.js';
import { S3Driver, type S3ProviderOptions } from './driver.js';
import { S3LifeCycle } from './lifecycle.js';

/**
 * Builds the `s3` provider: an image store (templates, ISOs, snapshot backups) in an S3 bucket.
 * The S3 client comes from `ctx.services.s3Client` at call time, else from `options.s3Client`.
 * With `options.allowedBuckets`, a store in another bucket is refused when it is added.
 *
 * @example
 * const registry = new ProviderRegistry().register(createS3Provider({ presignExpiresSeconds: 900 }));
 */
export function createS3Provider(options: S3ProviderOptions = {}): DataStoreProvider {
  return {
    name: 's3',
    roles: ['image'],
    detailsSchema: S3DetailsSchema,
    admit(details) {
      const allowed = options.allowedBuckets;
      if (!allowed || allowed.includes(details.bucket ?? '')) return undefined;
      return {
        field: 'bucket',
        message:
          `bucket ${details.bucket} is not one this deployment can reach (${allowed.join(', ')}); ` +
          'grant it in the stack (extraImageBuckets) first',
      };
    },
    lifecycle: new S3LifeCycle({ s3Client: options.s3Client }),
    driver: new S3Driver(options),
  };
}
