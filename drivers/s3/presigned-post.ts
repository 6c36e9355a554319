/**
 * Presigned POST policies (S3's browser-upload form, signed with SigV4): one grant that lets its
 * holder create any number of objects under one key prefix until it expires, each at most
 * `maxBytes`, each carrying its own SHA-256 for S3 to verify. Backups use one per job so that a host
 * can upload the chunks it finds missing while it reads them, without a URL per chunk.
 *
 * The policy is signed as S3 documents it (sigv4-HTTPPOSTConstructPolicy): the base64 policy is
 * the string to sign, with the SigV4 signing key of the credential's date, region and `s3`.
 */
import { createHmac } from 'node:crypto';
import { PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import type { PresignedPost } from '../sdk/types.js';

export interface SignPostOptions {
  client: S3Client;
  bucket: string;
  keyPrefix: string;
  maxBytes: number;
  expiresSeconds: number;
  /** Default: now. */
  now?: Date;
}

const ALGORITHM = 'AWS4-HMAC-SHA256';

function hmac(key: Buffer | string, data: string): Buffer {
  return createHmac('sha256', key).update(data, 'utf8').digest();
}

/** SigV4's signing key for a day, region and service. */
export function signingKey(secret: string, day: string, region: string, service: string): Buffer {
  return hmac(hmac(hmac(hmac(`AWS4${secret}`, day), region), service), 'aws4_request');
}

/** `yyyymmddThhmmssZ`. */
function amzDate(date: Date): string {
  return date
    .toISOString()
    .replace(/[-:]/g, '')
    .replace(/\.\d{3}/, '');
}

/**
 * The bucket's POST endpoint as the client addresses it (path-style for a custom endpoint,
 * virtual-hosted on AWS): a presigned PUT of a probe key, with the key and query taken off.
 */
async function bucketEndpoint(client: S3Client, bucket: string): Promise<string> {
  const probe = new URL(await getSignedUrl(client, new PutObjectCommand({ Bucket: bucket, Key: 'p' }), {}));
  if (!probe.pathname.endsWith('/p')) throw new Error(`unexpected presigned URL shape for bucket ${bucket}`);
  return `${probe.origin}${probe.pathname.slice(0, -1)}`;
}

/**
 * Signs a POST policy for uploads under `keyPrefix`: each form must name `key` starting with the
 * prefix, declare `x-amz-checksum-algorithm: SHA256` and its `x-amz-checksum-sha256`, and send at
 * most `maxBytes`. Nothing else may be set by the holder.
 *
 * @example
 * const post = await signPostPolicy({ client, bucket: 'images', keyPrefix: 'backups/plans/job-1/staging/',
 *   maxBytes: 4 << 20, expiresSeconds: 900 });
 * // the host: fields + key + x-amz-checksum-* + file, as multipart/form-data, to post.url
 */
export async function signPostPolicy(options: SignPostOptions): Promise<PresignedPost> {
  const { client, bucket, keyPrefix, maxBytes } = options;
  const now = options.now ?? new Date();
  const credentials = await client.config.credentials();
  const region = await client.config.region();
  const date = amzDate(now);
  const day = date.slice(0, 8);
  const credential = `${credentials.accessKeyId}/${day}/${region}/s3/${'aws4_request'}`;
  const expiresAt = new Date(now.getTime() + options.expiresSeconds * 1000);
  const fields: Record<string, string> = {
    'x-amz-algorithm': ALGORITHM,
    'x-amz-credential': credential,
    'x-amz-date': date,
    ...(credentials.sessionToken ? { 'x-amz-security-token': credentials.sessionToken } : {}),
  };
  const policy = {
    expiration: expiresAt.toISOString(),
    conditions: [
      { bucket },
      ['starts-with', '$key', keyPrefix],
      ['content-length-range', 0, maxBytes],
      { 'x-amz-checksum-algorithm': 'SHA256' },
      ['starts-with', '$x-amz-checksum-sha256', ''],
      ...Object.entries(fields).map(([name, value]) => ({ [name]: value })),
    ],
  };
  const encoded = Buffer.from(JSON.stringify(policy), 'utf8').toString('base64');
  const signature = hmac(signingKey(credentials.secretAccessKey, day, region, 's3'), encoded).toString('hex');
  return {
    url: await bucketEndpoint(client, bucket),
    fields: { ...fields, policy: encoded, 'x-amz-signature': signature },
    keyPrefix,
    maxBytes,
    expiresAt: expiresAt.toISOString(),
  };
}
