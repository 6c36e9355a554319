/**
 * Settings of an NFS primary store. Strata does not mount anything: the operator mounts
 * `server:export` at `mountPath` on every host of the store's scope, and Strata checks it.
 */
import { isIP } from 'node:net';
import { posix } from 'node:path';
import { z } from 'zod';
import { AbsolutePathSchema } from '../sdk/validation.js';

const HOSTNAME =
  /^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;

/**
 * `details` of an `nfs` store. Unknown keys are refused so a typo (`mountpath`) fails at creation
 * instead of later on a host. Trailing slashes are dropped from paths.
 *
 * @example
 * NfsDetailsSchema.parse({ server: '10.0.0.5', export: '/srv/nfs', mountPath: '/mnt/strata/ds-1' });
 */
export const NfsDetailsSchema = z
  .object({
    server: z
      .string()
      .refine((v) => isIP(v) !== 0 || HOSTNAME.test(v), 'must be a host name or an IP address'),
    export: AbsolutePathSchema.transform(normalize),
    mountPath: AbsolutePathSchema.transform(normalize).refine((p) => p !== '/', 'must not be /'),
  })
  .strict();
export type NfsDetails = z.infer<typeof NfsDetailsSchema>;

function normalize(path: string): string {
  const normalized = posix.normalize(path);
  return normalized.length > 1 ? normalized.replace(/\/+$/, '') : normalized;
}
