/**
 * What the template flows share: their dependencies, the view of a template over its copies, the
 * choice of image store, the rows a new copy moves through, and how a flow starts.
 */
import { Transform } from 'node:stream';
import { formatChecksum, MultiHasher, parseChecksum } from '../../../../drivers/sdk/checksum.js';
import { assertSafeImage, ImageInspector } from '../../../../drivers/sdk/image-inspect.js';
import type { ProviderRegistry } from '../../../../drivers/sdk/registry.js';
import {
  type DataObjectRef,
  type DriverContext,
  type ImageFormat,
  type ImageStoreDriver,
  isImageStoreDriver,
} from '../../../../drivers/sdk/types.js';
import { ConflictError, InputError, NotAllowedError, UnprocessableError } from '../../errors.js';
import { newId } from '../../ids.js';
import type { DataStore, Job, Template, TemplateInStore } from '../../model.js';
import { DataStoreStatus, ObjectInStoreStatus as O } from '../../model.js';
import { allPages } from '../../paging.js';
import type { Clock, Repository, UrlFetcher, WorkflowPort } from '../../ports.js';
import { type FlowName, systemClock } from '../../ports.js';
import { objectInStoreMachine } from '../../state-machines.js';
import type { DataMotionService } from '../data-motion.js';
import { toStoreInfo } from '../datastore-service.js';
import { causeMessage, type JobService, type WorkflowFailure } from '../job-service.js';

/** A template copy being created may hold its lease this long before the reconciler recovers it. */
export const INGEST_LEASE_SECONDS = 2 * 60 * 60;
/** Presigned upload URLs (and the upload's lease) last this long. */
export const UPLOAD_EXPIRY_SECONDS = 24 * 60 * 60;
/** Largest image accepted, by URL or upload. */
export const MAX_IMAGE_BYTES = 2 * 2 ** 40;

export interface TemplateView extends Template {
  /** Ready when any copy is Ready; otherwise the most advanced state among the copies. */
  status: string;
  copies: TemplateInStore[];
}

export interface RegisterInput {
  name: string;
  url: string;
  format: ImageFormat;
  type: 'template' | 'iso';
  checksum?: string;
  zoneId?: string;
  storeId?: string;
}

export interface UploadInput {
  name: string;
  format: ImageFormat;
  type: 'template' | 'iso';
  sizeBytes: number;
  checksum?: string;
  zoneId?: string;
  storeId?: string;
}

export interface TemplateFilter {
  name?: string;
  type?: string;
  state?: string;
  zoneId?: string;
}

export interface ImageDeps {
  repo: Repository;
  registry: ProviderRegistry;
  workflows: WorkflowPort;
  jobs: JobService;
  motion: DataMotionService;
  fetcher: UrlFetcher;
  driverContext: (jobId: string) => DriverContext;
  /** Selects a host with the given stores attached (to delete primary-storage cache copies). */
  selectHost: (storeIds: string[]) => Promise<{ id: string }>;
  clock?: Clock;
}

/** What ingest and verify hand to finish: the facts measured on the bytes themselves. */
export interface IngestResult {
  path: string;
  sizeBytes: number;
  checksum: string;
  virtualSizeBytes: number;
}

export const STATUS_RANK: Record<string, number> = {
  [O.Ready]: 6,
  [O.Copying]: 5,
  [O.Creating]: 4,
  [O.Allocated]: 3,
  [O.Failed]: 2,
  [O.Destroying]: 1,
  [O.Destroyed]: 0,
};

export abstract class ImageFlow {
  protected readonly clock: Clock;

  constructor(protected readonly deps: ImageDeps) {
    this.clock = deps.clock ?? systemClock;
  }

  protected get repo(): Repository {
    return this.deps.repo;
  }

  async get(id: string): Promise<TemplateView> {
    const template = await this.repo.require({ type: 'Template', id });
    return this.view(template);
  }

  /**
   * Deletes every copy and the template. Refused while any primary-storage cache copy is referenced
   * by a volume (its linked clones need it) or while a copy is mid-operation.
   */
  async delete(templateId: string): Promise<void> {
    const template = await this.repo.require({ type: 'Template', id: templateId });
    const pending = template.pendingVolumes ?? 0;
    if (pending > 0) throw this.inUse(templateId, [`${pending} volume create(s) in progress`]);
    // From this write on, no create can be accepted (its hold is conditional on deletingSince being
    // absent), and the version check makes it fail if one was accepted since the read above.
    const marked = template.deletingSince
      ? template
      : await this.repo
          .update({ type: 'Template', id: templateId }, template.version, {
            deletingSince: this.clock.now().toISOString(),
          })
          .catch((e: unknown) => {
            if (e instanceof ConflictError)
              throw this.inUse(templateId, ['a volume create was accepted just now']);
            throw e;
          });
    const copies = await this.repo.listCopies('TemplateInStore', templateId);
    const referenced = copies.filter((c) => c.refCount > 0);
    const busy = copies.filter(
      (c) => c.status === O.Creating || c.status === O.Copying || c.status === O.Destroying,
    );
    if (referenced.length > 0 || busy.length > 0) {
      // Refused: creates may use it again.
      await this.repo.update({ type: 'Template', id: templateId }, marked.version, {
        deletingSince: undefined,
      });
      if (referenced.length > 0) {
        throw this.inUse(
          templateId,
          referenced.map((c) => `${c.refCount} volume(s) on store ${c.storeId}`),
        );
      }
      throw new ConflictError(
        `template ${templateId} has a copy mid-operation on store ${busy[0]!.storeId} (${busy[0]!.status})`,
        { state: busy[0]!.status },
      );
    }
    for (const copy of copies) await this.destroyCopy(templateId, copy);
    await this.repo.delete({ type: 'Template', id: templateId });
  }

  private inUse(templateId: string, dependents: string[]): NotAllowedError {
    return new NotAllowedError(`template ${templateId} is in use: ${dependents.join(', ')}`, {
      id: templateId,
      dependents,
    });
  }

  protected async destroyCopy(templateId: string, copy: TemplateInStore): Promise<void> {
    const owner = newId('op');
    const key = { type: 'TemplateInStore' as const, id: templateId, storeId: copy.storeId };
    if (copy.status !== O.Destroyed) {
      await this.repo.transition({
        key,
        machine: objectInStoreMachine,
        from: copy.status,
        to: O.Destroying,
        expectedVersion: copy.version,
        lease: { owner, ttlSeconds: 15 * 60 },
      });
      const store = await this.repo.get({ type: 'DataStore', id: copy.storeId });
      const template = await this.repo.require({ type: 'Template', id: templateId });
      if (store && copy.path) {
        const provider = this.deps.registry.get(store.provider);
        const hostId = provider.driver.getCapabilities().needsHost
          ? (await this.deps.selectHost([store.id])).id
          : undefined;
        await provider.driver.deleteAsync({
          store: toStoreInfo(store),
          object: { ...templateObject(template), path: copy.path },
          ctx: this.deps.driverContext(owner),
          ...(hostId ? { hostId } : {}),
        });
      }
      await this.repo.transition({
        key,
        machine: objectInStoreMachine,
        from: O.Destroying,
        to: O.Destroyed,
        leaseOwner: owner,
      });
    }
    await this.repo.delete(key);
  }

  protected async view(template: Template): Promise<TemplateView> {
    const copies = await this.repo.listCopies('TemplateInStore', template.id);
    const best = copies.reduce<string | undefined>(
      (acc, c) =>
        acc === undefined || (STATUS_RANK[c.status] ?? 0) > (STATUS_RANK[acc] ?? 0) ? c.status : acc,
      undefined,
    );
    return { ...template, status: best ?? O.Allocated, copies };
  }

  protected async pickImageStore(zoneId?: string, storeId?: string): Promise<DataStore> {
    if (storeId) {
      const store = await this.repo.get({ type: 'DataStore', id: storeId });
      if (!store) throw new UnprocessableError(`store ${storeId} does not exist`, { field: 'storeId' });
      if (store.role !== 'image')
        throw new InputError(`store ${storeId} is not an image store`, { field: 'storeId' });
      if (store.status !== DataStoreStatus.Up) {
        throw new ConflictError(`store ${storeId} is ${store.status}`, {
          field: 'storeId',
          state: store.status,
        });
      }
      if (zoneId && store.scope.zoneId !== zoneId) {
        throw new UnprocessableError(`store ${storeId} is in zone ${store.scope.zoneId}, not ${zoneId}`, {
          field: 'zoneId',
        });
      }
      return store;
    }
    if (!zoneId) throw new InputError('give zoneId or storeId', { field: 'zoneId' });
    const stores = await allPages((cursor) =>
      this.repo.list('DataStore', {
        cursor,
        filter: { role: 'image', status: 'Up', 'scope.zoneId': zoneId },
      }),
    );
    const store = stores[0];
    if (!store)
      throw new UnprocessableError(`zone ${zoneId} has no image store that is Up`, { field: 'zoneId' });
    return store;
  }

  protected imageDriver(store: DataStore): ImageStoreDriver {
    const driver = this.deps.registry.get(store.provider).driver;
    if (!isImageStoreDriver(driver)) {
      throw new UnprocessableError(`provider ${store.provider} cannot hold templates`, { field: 'storeId' });
    }
    return driver;
  }

  protected async creatingRow(input: { jobId: string; templateId: string; storeId: string }) {
    const template = await this.repo.require({ type: 'Template', id: input.templateId });
    const row = await this.repo.require({
      type: 'TemplateInStore',
      id: input.templateId,
      storeId: input.storeId,
    });
    if (row.status !== O.Creating || row.lease?.owner !== input.jobId) {
      throw new ConflictError(
        `copy of ${input.templateId} on ${input.storeId} is ${row.status}, not being created by ${input.jobId}`,
        {
          state: row.status,
        },
      );
    }
    const store = await this.repo.require({ type: 'DataStore', id: input.storeId });
    return { template, row, store };
  }

  protected async uploadRow(templateId: string, uploadId: string) {
    const template = await this.repo.require({ type: 'Template', id: templateId });
    const copies = await this.repo.listCopies('TemplateInStore', templateId);
    const row = copies.find((c) => c.uploadId === uploadId);
    if (!row)
      throw new ConflictError(`template ${templateId} has no open upload ${uploadId}`, { field: 'uploadId' });
    if (row.status !== O.Creating || !row.lease) {
      throw new ConflictError(`upload ${uploadId} is ${row.status}`, { state: row.status });
    }
    const store = await this.repo.require({ type: 'DataStore', id: row.storeId });
    return { template, row, store };
  }

  /** Hashes, inspects, counts and reports progress as bytes pass; nothing is buffered whole. */
  protected measure(
    input: { jobId: string; templateId: string; storeId: string },
    template: Template,
    expectedBytes?: number,
  ) {
    const expected = template.checksum ? parseChecksum(template.checksum) : undefined;
    const hasher = new MultiHasher({ expected });
    const inspector = new ImageInspector();
    let bytes = 0;
    let lastReport = 0;
    const report = () => {
      const now = this.clock.now().getTime();
      if (now - lastReport < 1000) return;
      lastReport = now;
      const progress = expectedBytes ? Math.min(99, Math.floor((bytes / expectedBytes) * 100)) : 0;
      void this.deps.jobs
        .progress(input.jobId, progress, { bytes, totalBytes: expectedBytes })
        .catch(() => undefined);
      void this.repo
        .updateWhere(
          { type: 'TemplateInStore', id: input.templateId, storeId: input.storeId },
          { field: 'status', oneOf: [O.Creating] },
          { progress, bytesTransferred: bytes },
        )
        .catch(() => undefined);
    };
    const tap = new Transform({
      transform(chunk: Buffer, _encoding, callback) {
        hasher.update(chunk);
        inspector.update(chunk);
        bytes += chunk.length;
        report();
        callback(null, chunk);
      },
    });
    return {
      tap,
      done: () => ({
        bytes,
        digests: hasher.digest(),
        inspection: inspector.finish(bytes),
        expected,
        hasher,
      }),
    };
  }

  /** Checksum and format verdicts; a failing image is removed before the error is raised. */
  protected async judge(
    input: { jobId: string; templateId: string; storeId: string },
    template: Template,
    store: DataStore,
    object: DataObjectRef,
    facts: ReturnType<ReturnType<ImageFlow['measure']>['done']>,
    _row: TemplateInStore,
  ): Promise<IngestResult> {
    if (facts.expected && !facts.hasher.verify(facts.expected)) {
      await this.discard(store, object, input.jobId);
      const got = facts.digests[facts.expected.algorithm] ?? '';
      throw new UnprocessableError(
        `checksum mismatch: expected {${facts.expected.algorithm}}${facts.expected.hex}, got {${facts.expected.algorithm}}${got}`,
        { field: 'checksum' },
      );
    }
    try {
      assertSafeImage(facts.inspection, template.format);
    } catch (e) {
      await this.discard(store, object, input.jobId);
      throw new UnprocessableError((e as Error).message, { field: 'format' }, { cause: e });
    }
    return {
      path: object.path ?? '',
      sizeBytes: facts.bytes,
      checksum: formatChecksum({ algorithm: 'sha256', hex: facts.digests.sha256 }),
      virtualSizeBytes: facts.inspection.virtualSizeBytes,
    };
  }

  /**
   * The shared end of a failed ingest or copy: whatever reached the destination store is removed
   * (`discard`), and the copy row, while this job still holds it, goes Creating → Failed with the reason.
   */
  protected async failNewCopy(
    input: { jobId: string; templateId: string; storeId: string; error: WorkflowFailure },
    discard: (row: TemplateInStore, store: DataStore, template: Template) => Promise<void>,
    changes: Partial<TemplateInStore> = {},
  ): Promise<void> {
    const key = { type: 'TemplateInStore' as const, id: input.templateId, storeId: input.storeId };
    const row = await this.repo.get(key);
    const store = await this.repo.get({ type: 'DataStore', id: input.storeId });
    const template = await this.repo.get({ type: 'Template', id: input.templateId });
    if (!row || !store || !template) return;
    await discard(row, store, template);
    if (row.status === O.Creating && row.lease?.owner === input.jobId) {
      await this.repo.transition({
        key,
        machine: objectInStoreMachine,
        from: O.Creating,
        to: O.Failed,
        leaseOwner: input.jobId,
        changes: { statusReason: causeMessage(input.error), ...changes },
      });
    }
  }

  protected async discard(store: DataStore, object: DataObjectRef, jobId: string): Promise<void> {
    await this.imageDriver(store)
      .deleteAsync({ store: toStoreInfo(store), object, ctx: this.deps.driverContext(jobId) })
      .catch(() => undefined);
  }

  protected async releaseSource(templateId: string, storeId: string, jobId: string): Promise<void> {
    await this.repo
      .transition({
        key: { type: 'TemplateInStore', id: templateId, storeId },
        machine: objectInStoreMachine,
        from: O.Copying,
        to: O.Ready,
        leaseOwner: jobId,
      })
      .catch((e: unknown) => {
        if (!(e instanceof ConflictError)) throw e;
      });
  }

  protected async updateTemplate(id: string, changes: (t: Template) => Partial<Template>): Promise<void> {
    for (let attempt = 0; attempt < 5; attempt++) {
      const t = await this.repo.require({ type: 'Template', id });
      try {
        await this.repo.update({ type: 'Template', id }, t.version, changes(t));
        return;
      } catch (e) {
        if (!(e instanceof ConflictError)) throw e;
      }
    }
  }

  /**
   * A new copy's last step: Creating → Ready with what was measured on its bytes (a copy already
   * Ready, from an earlier run of the step, is left as it is). `extra` is what the flow also clears.
   */
  protected async markCopyReady(
    input: { jobId: string; templateId: string; storeId: string },
    result: IngestResult,
    extra: Partial<TemplateInStore> = {},
  ): Promise<void> {
    const key = { type: 'TemplateInStore' as const, id: input.templateId, storeId: input.storeId };
    const row = await this.repo.require(key);
    if (row.status === O.Ready) return;
    await this.repo.transition({
      key,
      machine: objectInStoreMachine,
      from: O.Creating,
      to: O.Ready,
      leaseOwner: input.jobId,
      changes: {
        path: result.path,
        sizeBytes: result.sizeBytes,
        virtualSizeBytes: result.virtualSizeBytes,
        ...(result.checksum ? { checksum: result.checksum } : {}),
        progress: 100,
        bytesTransferred: result.sizeBytes,
        ...extra,
      },
    });
  }

  /** Starts a job's flow; when the start fails, the flow's own compensation runs and the error goes on. */
  protected async start(
    flow: FlowName,
    job: Job,
    input: Record<string, unknown>,
    compensate: (error: WorkflowFailure) => Promise<void>,
  ): Promise<Job> {
    try {
      const { executionId } = await this.deps.workflows.start(flow, job.id, { jobId: job.id, ...input });
      return await this.deps.jobs.started(job.id, executionId);
    } catch (e) {
      await compensate({ Error: 'WorkflowStartFailed', Cause: (e as Error).message });
      throw e;
    }
  }

  protected expiry(seconds: number): string {
    return new Date(this.clock.now().getTime() + seconds * 1000).toISOString();
  }
}

export function templateObject(template: Template): DataObjectRef {
  return { kind: template.type === 'iso' ? 'iso' : 'template', id: template.id, format: template.format };
}

export function normalizeChecksum(text: string): string {
  try {
    return formatChecksum(parseChecksum(text));
  } catch (e) {
    throw new InputError(`checksum: ${(e as Error).message}`, { field: 'checksum' }, { cause: e });
  }
}

export function checkTypeAndFormat(type: 'template' | 'iso', format: ImageFormat): void {
  if ((type === 'iso') !== (format === 'iso')) {
    throw new InputError(
      `an ${type === 'iso' ? 'ISO must have format iso' : 'template cannot have format iso'}`,
      {
        field: 'format',
      },
    );
  }
}
