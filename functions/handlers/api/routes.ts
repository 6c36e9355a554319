/**
 * The REST API's routes. Each handler is three lines of thought: parse and validate, call one
 * service, map the result. Long operations answer 202 with the job and a Location header.
 */

import type { z } from 'zod';
import { InputError } from '../../core/errors.js';
import type { Job } from '../../core/model.js';
import { SweepOptionsSchema } from '../../core/services/orphan-sweep.js';
import type { Strata } from '../../core/strata.js';
import { VerifyOptionsSchema } from '../../core/verify-options.js';
import { inputErrorFromZod } from '../http.js';
import type { Route, RouteResult } from './router.js';
import {
  HostCreateBody,
  HostListQuery,
  HostPatchBody,
  IdParam,
  JobListQuery,
  SnapshotDeleteQuery,
  SnapshotListQuery,
  SnapshotPolicyCreateBody,
  SnapshotPolicyListQuery,
  SnapshotTakeBody,
  StoreCreateBody,
  StoreListQuery,
  StorePatchBody,
  TemplateCopyBody,
  TemplateListQuery,
  TemplateRegisterBody,
  TemplateUploadBody,
  UploadCompleteBody,
  UploadIdParam,
  UploadPartsBody,
  VolumeAccessBody,
  VolumeCreateBody,
  VolumeCreateQuery,
  VolumeListQuery,
  VolumeMigrateBody,
  VolumeResizeBody,
} from './schemas.js';

export interface ApiContext {
  strata: Strata;
  body: unknown;
  query: Record<string, string>;
  /** The OpenAPI document, built once from the routes and schemas. */
  openApi: () => unknown;
  version: string;
}

/** Schemas per route, used for validation and the OpenAPI document. */
export interface RouteDoc {
  body?: z.ZodType;
  query?: z.ZodType;
  async?: boolean;
  /**
   * Only the admin caller role may call it: the reconciler's destructive and administrative actions.
   * The API's IAM roles are derived from this flag (infra/aws/constructs/api-callers.ts): GET routes
   * are read-only, every other route not flagged is the operator's.
   */
  admin?: boolean;
  /**
   * The answer holds grants (presigned URLs, in `url` fields): an Idempotency-Key record keeps it
   * with every `url` set to null and `grantsOmitted: true` (idempotency.ts), and a replay hands
   * that out, so the client asks the parts route for fresh URLs.
   */
  grants?: boolean;
}

export const routeDocs = new Map<string, RouteDoc>();

function parse<S extends z.ZodType>(schema: S, value: unknown, prefix: string): z.infer<S> {
  const r = schema.safeParse(value);
  if (!r.success) throw inputErrorFromZod(r.error, prefix);
  return r.data;
}

function id(params: Record<string, string>): string {
  return parse(IdParam, params.id, 'id');
}

const ok = (body: unknown): RouteResult => ({ status: 200, body });
const accepted = (body: { job: Job }): RouteResult => ({
  status: 202,
  body,
  headers: { location: `/jobs/${body.job.id}` },
});

function route(
  method: Route<ApiContext>['method'],
  path: string,
  summary: string,
  doc: RouteDoc,
  handle: Route<ApiContext>['handle'],
): Route<ApiContext> {
  routeDocs.set(`${method} ${path}`, doc);
  return {
    method,
    path,
    summary,
    handle: (c, p) => {
      refuseUndeclared(doc, c);
      return handle(c, p);
    },
  };
}

/**
 * What a route does not declare it takes is refused, not ignored: a query parameter of a route
 * without a query schema, or a body sent to a route without a body schema. A caller who sends one
 * believes it means something, and nothing it sends may pass unchecked.
 */
function refuseUndeclared(doc: RouteDoc, c: ApiContext): void {
  if (!doc.query) {
    const name = Object.keys(c.query)[0];
    if (name !== undefined) {
      throw new InputError(`query.${name.slice(0, 64)}: this operation takes no query parameters`, {
        field: `query.${name.slice(0, 64)}`,
      });
    }
  }
  if (!doc.body && c.body !== undefined) {
    throw new InputError('body: this operation takes no request body', { field: 'body' });
  }
}

export const routes: Route<ApiContext>[] = [
  route('GET', '/health', 'Liveness', {}, async (c) => ok({ status: 'ok', version: c.version })),
  route('GET', '/openapi.json', 'This API as OpenAPI 3.1', {}, async (c) => ok(c.openApi())),

  route(
    'POST',
    '/hosts',
    'Register a hypervisor host; it is probed (probeJobId) and attached to the stores in its scope (attachJobIds)',
    { body: HostCreateBody },
    async (c) => {
      const input = parse(HostCreateBody, c.body, '');
      const host = await c.strata.hosts.register(input);
      const jobs = await c.strata.stores.attachJoiningHost(host);
      const probe = await c.strata.probes.probe(host.id);
      return {
        status: 201,
        body: { ...host, attachJobIds: jobs.map((j) => j.id), probeJobId: probe.job.id },
      };
    },
  ),
  route('GET', '/hosts', 'List hosts', { query: HostListQuery }, async (c) => {
    const { limit, cursor, ...filter } = parse(HostListQuery, c.query, 'query');
    return ok(await c.strata.hosts.list(filter, { limit, cursor }));
  }),
  route('GET', '/hosts/{id}', 'Get a host', {}, async (c, p) => ok(await c.strata.hosts.get(id(p)))),
  route('PATCH', '/hosts/{id}', 'Enable or disable a host', { body: HostPatchBody }, async (c, p) => {
    const input = parse(HostPatchBody, c.body, '');
    return ok(await c.strata.hosts.setStatus(id(p), input.status));
  }),
  route('DELETE', '/hosts/{id}', 'Remove a disabled host', {}, async (c, p) => {
    await c.strata.hosts.remove(id(p));
    return { status: 204 };
  }),
  route(
    'POST',
    '/hosts/{id}/probe',
    "Ask the host's runtime for its build and prerequisites (async; recorded on the host)",
    { async: true },
    async (c, p) => accepted(await c.strata.probes.probe(id(p))),
  ),

  route(
    'POST',
    '/stores',
    'Add a data store (async: initializes and attaches hosts)',
    { body: StoreCreateBody, async: true },
    async (c) => {
      const input = parse(StoreCreateBody, c.body, '');
      return accepted(await c.strata.stores.add(input));
    },
  ),
  route('GET', '/stores', 'List data stores with capacity', { query: StoreListQuery }, async (c) => {
    const { limit, cursor, ...filter } = parse(StoreListQuery, c.query, 'query');
    return ok(await c.strata.stores.list(filter, { limit, cursor }));
  }),
  route('GET', '/stores/{id}', 'Get a data store', {}, async (c, p) => ok(await c.strata.stores.get(id(p)))),
  route(
    'PATCH',
    '/stores/{id}',
    'Change settings; enable or disable',
    { body: StorePatchBody },
    async (c, p) => {
      const input = parse(StorePatchBody, c.body, '');
      return ok(await c.strata.stores.update(id(p), input));
    },
  ),
  route('DELETE', '/stores/{id}', 'Delete an empty data store', {}, async (c, p) => {
    await c.strata.stores.delete(id(p));
    return { status: 204 };
  }),
  route('POST', '/stores/{id}/maintenance', 'Enter maintenance (async)', { async: true }, async (c, p) =>
    accepted(await c.strata.stores.enterMaintenance(id(p))),
  ),
  route('DELETE', '/stores/{id}/maintenance', 'Cancel maintenance (async)', { async: true }, async (c, p) =>
    accepted(await c.strata.stores.cancelMaintenance(id(p))),
  ),
  route(
    'POST',
    '/stores/{id}/inventory',
    'List what the storage holds, each object with the row that owns it (async; the job result)',
    { async: true },
    async (c, p) => accepted(await c.strata.stores.inventory(id(p))),
  ),
  route(
    'POST',
    '/stores/{id}/verify',
    "Verify the image store's backup chunks: read all of them or a sample, re-hash each, mark corrupt or missing ones so the next backup uploads them again (async; the job result has the counts, the damaged chunks and the affected snapshots)",
    { body: VerifyOptionsSchema, async: true },
    async (c, p) =>
      accepted(
        await c.strata.verify.start(
          id(p),
          parse(VerifyOptionsSchema, c.body === undefined ? {} : c.body, ''),
        ),
      ),
  ),

  route(
    'POST',
    '/sweeps',
    'Find (dryRun) or remove what nothing owns on the stores: objects no row records, abandoned uploads, unheld chunks, stale claims (async; the job result lists the findings)',
    { body: SweepOptionsSchema, async: true, admin: true },
    async (c) =>
      accepted(await c.strata.sweep.start(parse(SweepOptionsSchema, c.body === undefined ? {} : c.body, ''))),
  ),

  route(
    'POST',
    '/templates',
    'Register a template or ISO from a URL (async)',
    { body: TemplateRegisterBody, async: true },
    async (c) => {
      const input = parse(TemplateRegisterBody, c.body, '');
      return accepted(await c.strata.images.register(input));
    },
  ),
  route(
    'POST',
    '/templates/uploads',
    "Start an upload from the operator's machine: part URLs valid 1 h (renew them with .../parts)",
    { body: TemplateUploadBody, grants: true },
    async (c) => {
      const input = parse(TemplateUploadBody, c.body, '');
      return { status: 201, body: await c.strata.images.createUpload(input) };
    },
  ),
  route('GET', '/templates', 'List templates with their copies', { query: TemplateListQuery }, async (c) => {
    const { limit, cursor, ...filter } = parse(TemplateListQuery, c.query, 'query');
    return ok(await c.strata.images.list(filter, { limit, cursor }));
  }),
  route('GET', '/templates/{id}', 'Get a template with every copy', {}, async (c, p) =>
    ok(await c.strata.images.get(id(p))),
  ),
  route(
    'DELETE',
    '/templates/{id}',
    'Delete a template and every copy (409 while volumes use it)',
    {},
    async (c, p) => {
      await c.strata.images.delete(id(p));
      return { status: 204 };
    },
  ),
  route(
    'POST',
    '/templates/{id}/uploads/{uploadId}/complete',
    'Finish an upload; verification runs as a job',
    { body: UploadCompleteBody, async: true },
    async (c, p) => {
      const input = parse(UploadCompleteBody, c.body, '');
      return accepted(
        await c.strata.images.completeUpload(
          id(p),
          parse(UploadIdParam, p.uploadId, 'uploadId'),
          input.parts,
        ),
      );
    },
  ),
  route(
    'POST',
    '/templates/{id}/uploads/{uploadId}/parts',
    'Fresh part URLs (valid 1 h) for parts of an open upload; 409 unless the upload is open',
    { body: UploadPartsBody, grants: true },
    async (c, p) => {
      const input = parse(UploadPartsBody, c.body, '');
      return ok(
        await c.strata.images.presignUploadParts(
          id(p),
          parse(UploadIdParam, p.uploadId, 'uploadId'),
          input.partNumbers,
        ),
      );
    },
  ),
  route('DELETE', '/templates/{id}/uploads/{uploadId}', 'Abort an upload', {}, async (c, p) => {
    await c.strata.images.abortUpload(id(p), parse(UploadIdParam, p.uploadId, 'uploadId'));
    return { status: 204 };
  }),
  route(
    'POST',
    '/templates/{id}/copies',
    'Copy a Ready template to another image store (async)',
    { body: TemplateCopyBody, async: true },
    async (c, p) => {
      const input = parse(TemplateCopyBody, c.body, '');
      return accepted(await c.strata.images.copy(id(p), input.storeId));
    },
  ),

  route(
    'POST',
    '/volumes',
    'Create a volume, blank or from a template (async); ?dryRun=true explains the placement',
    { body: VolumeCreateBody, query: VolumeCreateQuery, async: true },
    async (c) => {
      const input = parse(VolumeCreateBody, c.body, '');
      const { dryRun } = parse(VolumeCreateQuery, c.query, 'query');
      if (dryRun === 'true') return ok(await c.strata.volumes.explain(input));
      return accepted(await c.strata.volumes.create(input));
    },
  ),
  route('GET', '/volumes', 'List volumes', { query: VolumeListQuery }, async (c) => {
    const { limit, cursor, ...filter } = parse(VolumeListQuery, c.query, 'query');
    return ok(await c.strata.volumes.list(filter, { limit, cursor }));
  }),
  route('GET', '/volumes/{id}', 'Get a volume', {}, async (c, p) => ok(await c.strata.volumes.get(id(p)))),
  route('DELETE', '/volumes/{id}', 'Delete a volume (async)', { async: true }, async (c, p) =>
    accepted(await c.strata.volumes.delete(id(p))),
  ),
  route(
    'POST',
    '/volumes/{id}/resize',
    'Grow (or, with allowShrink, shrink) a volume (async)',
    { body: VolumeResizeBody, async: true },
    async (c, p) => {
      const input = parse(VolumeResizeBody, c.body, '');
      return accepted(await c.strata.volumes.resize(id(p), input.sizeBytes, input.allowShrink));
    },
  ),
  route(
    'POST',
    '/volumes/{id}/migrate',
    'Move a volume to another primary store, keeping its id (async)',
    { body: VolumeMigrateBody, async: true },
    async (c, p) => {
      const input = parse(VolumeMigrateBody, c.body, '');
      return accepted(await c.strata.volumes.migrate(id(p), input.storeId));
    },
  ),
  route(
    'POST',
    '/volumes/{id}/access',
    'Grant a host access (async; the job result says how the host reaches the volume)',
    { body: VolumeAccessBody, async: true },
    async (c, p) => {
      const input = parse(VolumeAccessBody, c.body, '');
      return accepted(await c.strata.volumes.grantAccess(id(p), input.hostId));
    },
  ),
  route(
    'DELETE',
    '/volumes/{id}/access/{hostId}',
    "Revoke a host's access (async)",
    { async: true },
    async (c, p) => accepted(await c.strata.volumes.revokeAccess(id(p), parse(IdParam, p.hostId, 'hostId'))),
  ),

  route(
    'POST',
    '/volumes/{id}/snapshots',
    'Take a snapshot on primary storage (async)',
    { body: SnapshotTakeBody, async: true },
    async (c, p) => {
      const input = parse(SnapshotTakeBody, c.body, '');
      return accepted(await c.strata.snapshots.take(id(p), input.name, { backup: input.backup }));
    },
  ),
  route('GET', '/snapshots', 'List snapshots (of a volume)', { query: SnapshotListQuery }, async (c) => {
    const { limit, cursor, volumeId } = parse(SnapshotListQuery, c.query, 'query');
    return ok(await c.strata.snapshots.list(volumeId, { limit, cursor }));
  }),
  route('GET', '/snapshots/{id}', 'Get a snapshot with its copies', {}, async (c, p) =>
    ok(await c.strata.snapshots.get(id(p))),
  ),
  route(
    'POST',
    '/snapshots/{id}/backup',
    'Back the snapshot up to the image store: changed chunks only, every backup restorable alone (async)',
    { async: true },
    async (c, p) => accepted(await c.strata.snapshots.backups.backup(id(p))),
  ),
  route(
    'POST',
    '/snapshots/{id}/revert',
    'Return the volume to this snapshot, any snapshot, not only the latest (async)',
    { async: true },
    async (c, p) => accepted(await c.strata.snapshots.revert(id(p))),
  ),
  route(
    'DELETE',
    '/snapshots/{id}',
    'Delete a snapshot from primary storage (merged into what depends on it), its backup, or both (?from=; async)',
    { query: SnapshotDeleteQuery, async: true },
    async (c, p) => {
      const { from } = parse(SnapshotDeleteQuery, c.query, 'query');
      return accepted(await c.strata.snapshots.delete(id(p), from));
    },
  ),

  route(
    'POST',
    '/snapshot-policies',
    'Create a snapshot policy: a volume, a schedule (cron or rate, in a time zone), keep N, backup or not',
    { body: SnapshotPolicyCreateBody },
    async (c) => {
      const input = parse(SnapshotPolicyCreateBody, c.body, '');
      return { status: 201, body: await c.strata.policies.create(input) };
    },
  ),
  route(
    'GET',
    '/snapshot-policies',
    'List snapshot policies (of a volume)',
    { query: SnapshotPolicyListQuery },
    async (c) => {
      const { limit, cursor, volumeId } = parse(SnapshotPolicyListQuery, c.query, 'query');
      return ok(await c.strata.policies.list(volumeId, { limit, cursor }));
    },
  ),
  route('GET', '/snapshot-policies/{id}', 'Get a snapshot policy', {}, async (c, p) =>
    ok(await c.strata.policies.get(id(p))),
  ),
  route(
    'DELETE',
    '/snapshot-policies/{id}',
    'Delete a snapshot policy and its schedule (its snapshots stay)',
    {},
    async (c, p) => {
      await c.strata.policies.delete(id(p));
      return { status: 204 };
    },
  ),

  route('GET', '/jobs', 'List jobs', { query: JobListQuery }, async (c) => {
    const { limit, cursor, ...filter } = parse(JobListQuery, c.query, 'query');
    return ok(await c.strata.jobs.list(filter, { limit, cursor }));
  }),
  route('GET', '/jobs/{id}', 'Get a job', {}, async (c, p) => ok(await c.strata.jobs.get(id(p)))),
];
