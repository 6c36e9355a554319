/** Settings of an S3 image store: a bucket the operator owns, and an optional key prefix inside it. */
import { z } from 'zod';

const BUCKET = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;

/**
 * True for a valid general-purpose S3 bucket name (3–63 characters, lowercase letters, digits, dots
 * and dashes, not shaped like an IP address, no `..`, none of the reserved prefixes or suffixes).
 *
 * @example
 * isValidBucketName('strata-images'); // true
 * isValidBucketName('Strata_Images'); // false
 */
export function isValidBucketName(name: string): boolean {
  return (
    BUCKET.test(name) &&
    !name.includes('..') &&
    !/^\d+\.\d+\.\d+\.\d+$/.test(name) &&
    !name.startsWith('xn--') &&
    !name.startsWith('sthree-') &&
    !name.endsWith('-s3alias') &&
    !name.endsWith('--ol-s3')
  );
}

/**
 * Turns an operator's prefix into `''` or `segment/…/segment/`: leading and doubled slashes go,
 * a trailing one is added.
 *
 * @example
 * normalizePrefix('/strata//images'); // 'strata/images/'
 */
export function normalizePrefix(prefix: string | undefined): string {
  const segments = (prefix ?? '').split('/').filter((s) => s !== '');
  return segments.length === 0 ? '' : `${segments.join('/')}/`;
}

/**
 * `details` of an `s3` store. `prefix` comes out normalised (see {@link normalizePrefix}); unknown
 * keys are refused so a typo fails when the store is added.
 *
 * @example
 * S3DetailsSchema.parse({ bucket: 'strata-images', prefix: 'zone-1' }); // { bucket, prefix: 'zone-1/' }
 */
export const S3DetailsSchema = z
  .object({
    bucket: z.string().refine(isValidBucketName, 'must be a valid S3 bucket name'),
    prefix: z
      .string()
      .max(512)
      .optional()
      .transform(normalizePrefix)
      .refine((p) => p.split('/').every((s) => s !== '.' && s !== '..'), 'must not contain . or .. segments'),
    region: z
      .string()
      .regex(/^[a-z]{2}(-[a-z]+)+-\d+$/, 'must be an AWS region name like eu-west-1')
      .optional(),
  })
  .strict();
export type S3Details = z.infer<typeof S3DetailsSchema>;
