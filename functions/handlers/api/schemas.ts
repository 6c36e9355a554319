/**
 * Request schemas of the REST API. The same schemas validate requests (in the Lambda, so API
 * Gateway and the local server behave alike) and generate the OpenAPI document.
 * Objects are strict: an unknown field is an error naming that field, not something ignored.
 */
import { z } from 'zod';

const safeId = z
  .string()
  .min(1)
  .max(128)
  .regex(/^[A-Za-z0-9][A-Za-z0-9._:-]*$/, 'letters, digits, dot, underscore, colon and dash only');
const displayName = z
  .string()
  .trim()
  .min(1)
  .max(128)
  .regex(
    /^[A-Za-z0-9][A-Za-z0-9 ._()-]*$/,
    'letters, digits, space, dot, underscore, dash and parentheses only',
  );
const tag = z
  .string()
  .min(1)
  .max(64)
  .regex(/^[A-Za-z0-9][A-Za-z0-9._:=-]*$/, 'letters, digits, dot, underscore, colon, equals and dash only');
const bytes = z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER);

export const HostCreateBody = z
  .object({
    name: displayName,
    zoneId: safeId,
    clusterId: safeId,
    instanceId: z
      .string()
      .regex(
        /^(mi-[0-9a-f]{17}|i-[0-9a-f]{8,17}|local-[a-z0-9-]{1,40})$/,
        'an SSM managed-instance id (mi-… or i-…) or, in the embedded stack, local-<name>',
      ),
    hypervisor: z.enum(['kvm']).default('kvm'),
  })
  .strict();

export const HostPatchBody = z.object({ status: z.enum(['Up', 'Disabled']) }).strict();

export const ScopeSchema = z
  .object({
    type: z.enum(['zone', 'cluster', 'host']),
    zoneId: safeId,
    clusterId: safeId.optional(),
    hostId: safeId.optional(),
  })
  .strict();

export const StoreCreateBody = z
  .object({
    name: displayName,
    provider: z.string().regex(/^[a-z][a-z0-9-]{0,62}$/, 'a provider id in kebab-case'),
    role: z.enum(['primary', 'image']),
    scope: ScopeSchema,
    capacityBytes: bytes.optional(),
    overprovisioning: z.number().min(1).max(100).optional(),
    disableThreshold: z.number().gt(0).max(1).optional(),
    tags: z.array(tag).max(32).optional(),
    details: z.record(z.string().min(1).max(64), z.string().max(1024)).default({}),
  })
  .strict();

export const StorePatchBody = z
  .object({
    name: displayName.optional(),
    tags: z.array(tag).max(32).optional(),
    capacityBytes: bytes.optional(),
    overprovisioning: z.number().min(1).max(100).optional(),
    disableThreshold: z.number().gt(0).max(1).optional(),
    status: z.enum(['Up', 'Disabled']).optional(),
  })
  .strict()
  .refine((b) => Object.keys(b).length > 0, { message: 'nothing to change' });

const paging = {
  limit: z.coerce.number().int().min(1).max(100).optional(),
  cursor: z.string().max(2048).optional(),
};

export const HostListQuery = z
  .object({
    ...paging,
    zoneId: safeId.optional(),
    clusterId: safeId.optional(),
    status: z.string().max(32).optional(),
  })
  .strict();

export const StoreListQuery = z
  .object({
    ...paging,
    zoneId: safeId.optional(),
    role: z.enum(['primary', 'image']).optional(),
    status: z.string().max(32).optional(),
    provider: z.string().max(64).optional(),
  })
  .strict();

export const JobListQuery = z
  .object({
    ...paging,
    state: z.enum(['pending', 'running', 'succeeded', 'failed']).optional(),
    kind: z.string().max(64).optional(),
    targetId: safeId.optional(),
  })
  .strict();

export const SnapshotPolicyCreateBody = z
  .object({
    volumeId: safeId,
    /** `cron(<6 fields>)` or `rate(<n> <unit>)`, EventBridge Scheduler syntax (checked by the service). */
    schedule: z.string().trim().min(1).max(256),
    /** IANA zone the cron fields are read in. */
    timeZone: z.string().min(1).max(64).default('UTC'),
    keep: z.number().int().min(1).max(1000),
    backup: z.boolean().default(false),
    name: displayName.optional(),
  })
  .strict();

export const SnapshotPolicyListQuery = z.object({ ...paging, volumeId: safeId.optional() }).strict();

export const IdParam = safeId;
export const IdempotencyKeyHeader = z
  .string()
  .regex(/^[A-Za-z0-9_-]{1,128}$/, 'up to 128 letters, digits, _ or -');

const imageFormat = z.enum(['qcow2', 'raw', 'vhd', 'vmdk', 'iso']);
const checksum = z.string().min(32).max(160);
const templateName = displayName;

export const TemplateRegisterBody = z
  .object({
    name: templateName,
    url: z.string().min(1).max(8192),
    format: imageFormat,
    type: z.enum(['template', 'iso']).default('template'),
    checksum: checksum.optional(),
    zoneId: safeId.optional(),
    storeId: safeId.optional(),
  })
  .strict();

export const TemplateUploadBody = z
  .object({
    name: templateName,
    format: imageFormat,
    type: z.enum(['template', 'iso']).default('template'),
    sizeBytes: z.number().int().positive().max(Number.MAX_SAFE_INTEGER),
    checksum: checksum.optional(),
    zoneId: safeId.optional(),
    storeId: safeId.optional(),
  })
  .strict();

export const UploadCompleteBody = z
  .object({
    parts: z
      .array(
        z
          .object({
            partNumber: z.number().int().min(1).max(10_000),
            etag: z.string().min(1).max(256),
          })
          .strict(),
      )
      .min(1)
      .max(10_000),
  })
  .strict();

/** Renewing part URLs of an open upload: at most 1000 parts a call (a batch the CLI asks for). */
export const UploadPartsBody = z
  .object({
    partNumbers: z.array(z.number().int().min(1).max(10_000)).min(1).max(1000),
  })
  .strict();

export const TemplateCopyBody = z.object({ storeId: safeId }).strict();

export const TemplateListQuery = z
  .object({
    ...paging,
    name: z.string().max(128).optional(),
    type: z.enum(['template', 'iso']).optional(),
    state: z.string().max(32).optional(),
    zoneId: safeId.optional(),
  })
  .strict();

export const UploadIdParam = z
  .string()
  .min(1)
  .max(1024)
  .regex(/^[A-Za-z0-9._~+/=-]+$/, 'an upload id');

export const VolumeCreateBody = z
  .object({
    name: displayName,
    zoneId: safeId,
    sizeBytes: z.number().int().positive().max(Number.MAX_SAFE_INTEGER).optional(),
    templateId: safeId.optional(),
    storeId: safeId.optional(),
    clusterId: safeId.optional(),
    tags: z.array(tag).max(32).optional(),
    mode: z.enum(['linked', 'full']).optional(),
    /** Restore this snapshot (its backup, or its layer on primary storage) into the new volume. */
    fromSnapshotId: safeId.optional(),
    /** Which copy a restore reads: `auto` prefers the primary layer when a host reaches it. */
    restoreFrom: z.enum(['auto', 'primary', 'backup']).optional(),
    /** With `restoreFrom: 'backup'`: usable at once, Hydrating until every chunk has arrived. */
    lazy: z.boolean().optional(),
  })
  .strict()
  .refine((b) => !(b.fromSnapshotId && b.templateId), {
    message: 'give either templateId or fromSnapshotId, not both',
    path: ['fromSnapshotId'],
  })
  .refine((b) => b.lazy !== true || (b.fromSnapshotId !== undefined && b.restoreFrom === 'backup'), {
    message: "lazy needs fromSnapshotId and restoreFrom: 'backup'",
    path: ['lazy'],
  });

export const VolumeCreateQuery = z.object({ dryRun: z.enum(['true', 'false']).optional() }).strict();

export const VolumeListQuery = z
  .object({
    ...paging,
    zoneId: safeId.optional(),
    storeId: safeId.optional(),
    status: z.string().max(32).optional(),
    templateId: safeId.optional(),
  })
  .strict();

export const VolumeAccessBody = z.object({ hostId: safeId }).strict();

export const VolumeResizeBody = z
  .object({
    sizeBytes: z.number().int().positive().max(Number.MAX_SAFE_INTEGER),
    allowShrink: z.boolean().default(false),
  })
  .strict();

export const VolumeMigrateBody = z.object({ storeId: safeId }).strict();

export const SnapshotTakeBody = z.object({ name: displayName, backup: z.boolean().default(false) }).strict();
export const SnapshotDeleteQuery = z
  .object({ from: z.enum(['all', 'primary', 'image']).default('all') })
  .strict();
export const SnapshotListQuery = z.object({ ...paging, volumeId: safeId.optional() }).strict();
