/**
 * How the S3 provider gets its client, where its objects live, and how S3's errors become driver
 * errors. Shared by the driver and the lifecycle.
 */
import { S3Client, type S3ServiceException } from '@aws-sdk/client-s3';
import { toDriverError } from '../sdk/base-driver.js';
import {
  DriverError,
  type DriverErrorContext,
  DriverInputError,
  DriverUnavailableError,
  ObjectNotFoundError,
  UnsupportedOperationError,
} from '../sdk/errors.js';
import type { DataObjectRef, DataStoreInfo, DriverContext } from '../sdk/types.js';
import { type S3Details, S3DetailsSchema } from './details.js';

/**
 * Returns the S3 client to use for a store. Strata injects one as `ctx.services.s3Client`; the
 * client must send checksums only when required (`requestChecksumCalculation` and
 * `responseChecksumValidation` set to `WHEN_REQUIRED`), which presigned URLs and S3 emulators need.
 *
 * @example
 * const services = { [S3_CLIENT_SERVICE]: ((store) => s3) satisfies S3ClientFactory };
 */
export type S3ClientFactory = (store: DataStoreInfo) => S3Client;

/**
 * The `ctx.services` key under which Strata injects the {@link S3ClientFactory}.
 *
 * @example
 * const ctx: DriverContext = { ...base, services: { [S3_CLIENT_SERVICE]: () => s3 } };
 */
export const S3_CLIENT_SERVICE = 's3Client';

/**
 * Picks the client factory: the injected one from `ctx.services`, else the provider's own
 * `fallback`. Throws {@link DriverInputError} when there is neither.
 */
export function resolveS3Client(
  ctx: DriverContext,
  store: DataStoreInfo,
  fallback?: S3ClientFactory,
): S3Client {
  const injected = ctx.services?.[S3_CLIENT_SERVICE];
  if (injected !== undefined && typeof injected !== 'function') {
    throw new DriverInputError(`ctx.services.${S3_CLIENT_SERVICE} must be a function (store) => S3Client`);
  }
  const factory = (injected as S3ClientFactory | undefined) ?? fallback;
  if (!factory) throw new DriverInputError(`no S3 client: inject ctx.services.${S3_CLIENT_SERVICE}`);
  return factory(store);
}

/**
 * A factory that builds one client per region on first use (never at import time), with the
 * checksum settings Strata needs. The safe default when nothing is injected.
 *
 * @example
 * const provider = createS3Provider({ s3Client: defaultS3ClientFactory() });
 */
export function defaultS3ClientFactory(): S3ClientFactory {
  const clients = new Map<string, S3Client>();
  return (store) => {
    const region = store.details.region ?? process.env.AWS_REGION ?? 'us-east-1';
    let client = clients.get(region);
    if (!client) {
      client = new S3Client({
        region,
        requestChecksumCalculation: 'WHEN_REQUIRED',
        responseChecksumValidation: 'WHEN_REQUIRED',
      });
      clients.set(region, client);
    }
    return client;
  };
}

/**
 * Parses an S3 store's details, as an input error when they are wrong.
 *
 * @example
 * const { bucket, prefix } = s3Details(store);
 */
export function s3Details(store: DataStoreInfo): S3Details {
  const parsed = S3DetailsSchema.safeParse(store.details);
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
 * An object's path inside the store (relative to the store prefix) when its ref has none yet:
 * `<kind>s/<id>/<id>.<format or raw>`, e.g. `templates/tpl-1/tpl-1.qcow2`. One folder per object
 * leaves room for side files (checksums, chunk manifests) next to it. The full key is
 * `<prefix><path>`.
 *
 * @example
 * s3ObjectPath({ kind: 'template', id: 'tpl-1', format: 'qcow2' }); // 'templates/tpl-1/tpl-1.qcow2'
 */
export function s3ObjectPath(object: DataObjectRef): string {
  return object.path ?? `${object.kind}s/${object.id}/${object.id}.${object.format ?? 'raw'}`;
}

// Answers that mean the request itself was wrong (a range past the end, parts that are too small,
// out of order or unknown): the caller must change it, so they are input errors, not failures.
const CLIENT_MISTAKES = new Set([
  'InvalidRange',
  'InvalidPart',
  'InvalidPartOrder',
  'EntityTooSmall',
  'EntityTooLarge',
]);

/**
 * Maps an S3 SDK error: missing key or upload → {@link ObjectNotFoundError}, a malformed range or
 * part list → {@link DriverInputError}, `NotImplemented` → {@link UnsupportedOperationError},
 * missing bucket and throttling or 5xx → {@link DriverUnavailableError}, access denied →
 * non-retryable `AccessDenied`.
 *
 * @example
 * try { await s3.send(new HeadObjectCommand(input)); } catch (e) { throw mapS3Error(e, 'head', { key }); }
 */
export function mapS3Error(error: unknown, operation: string, context: DriverErrorContext = {}): DriverError {
  if (error instanceof DriverError) return error;
  const name = (error as { name?: unknown })?.name;
  const status = (error as S3ServiceException)?.$metadata?.httpStatusCode;
  const message = error instanceof Error ? error.message || String(name) : String(error);
  if (name === 'NoSuchKey' || name === 'NotFound' || (status === 404 && name !== 'NoSuchBucket')) {
    return new ObjectNotFoundError(`${operation}: object not found`, { cause: error, context });
  }
  if (typeof name === 'string' && CLIENT_MISTAKES.has(name)) {
    return new DriverInputError(`${operation}: ${name}: ${message}`, { cause: error, context });
  }
  // 501 says the endpoint lacks the feature (s3rver has no ListMultipartUploads): retrying won't help.
  if (name === 'NotImplemented' || status === 501) {
    return new UnsupportedOperationError(`${operation}: not implemented by this S3 endpoint`, {
      cause: error,
      context,
    });
  }
  if (name === 'NoSuchBucket') {
    return new DriverUnavailableError(`${operation}: bucket not found`, { cause: error, context });
  }
  if (name === 'AccessDenied' || status === 403) {
    return new DriverError(`${operation}: access denied: ${message}`, {
      code: 'AccessDenied',
      cause: error,
      context,
    });
  }
  return toDriverError(error, operation, context);
}
