/**
 * ImageService: templates and ISOs on the image store. Registration from a URL and verification of
 * an operator's upload run as the template-ingest workflow; copies between image stores as
 * template-copy. Every copy of a template in a store is a TemplateInStore row following the
 * object-in-store state machine, leased by the job that moves it.
 */
import { PassThrough, pipeline, type Readable, Transform } from 'node:stream';
import { formatChecksum, MultiHasher, parseChecksum } from '../../../drivers/sdk/checksum.js';
import { UnsupportedOperationError } from '../../../drivers/sdk/errors.js';
import { assertSafeImage, ImageInspector } from '../../../drivers/sdk/image-inspect.js';
import type { ProviderRegistry } from '../../../drivers/sdk/registry.js';
import {
  type DataObjectRef,
  type DriverContext,
  type ImageFormat,
  type ImageStoreDriver,
  isImageStoreDriver,
} from '../../../drivers/sdk/types.js';
import { ConflictError, InputError, NotAllowedError, UnprocessableError } from '../errors.js';
import { newId } from '../ids.js';
import type { DataStore, Job, Template, TemplateInStore } from '../model.js';
import { DataStoreStatus, ObjectInStoreStatus as O } from '../model.js';
import { allPages } from '../paging.js';
import type { Clock, ListOptions, Page, Repository, UrlFetcher, WorkflowPort } from '../ports.js';
import { FlowName, systemClock } from '../ports.js';
import { objectInStoreMachine } from '../state-machines.js';
import type { DataMotionService } from './data-motion.js';
import { toStoreInfo } from './datastore-service.js';
import { causeMessage, type JobService, type WorkflowFailure } from './job-service.js';

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

const STATUS_RANK: Record<string, number> = {
  [O.Ready]: 6,
  [O.Copying]: 5,
  [O.Creating]: 4,
  [O.Allocated]: 3,
  [O.Failed]: 2,
  [O.Destroying]: 1,
  [O.Destroyed]: 0,
};

export class ImageService {
  private readonly clock: Clock;

  constructor(private readonly deps: ImageDeps) {
    this.clock = deps.clock ?? systemClock;
  }

  private get repo(): Repository {
    return this.deps.repo;
  }

  // ---------------------------------------------------------------- queries

  async get(id: string): Promise<TemplateView> {
    const template = await this.repo.require({ type: 'Template', id });
    return this.view(template);
  }

  async list(filter: TemplateFilter, options: ListOptions = {}): Promise<Page<TemplateView>> {
    const where: Record<string, string> = {};
    if (filter.name) where.name = filter.name;
    if (filter.type) where.type = filter.type;
    if (filter.zoneId) where.zoneId = filter.zoneId;
    const page = await this.repo.list('Template', { ...options, filter: where });
    const views = await Promise.all(page.items.map((t) => this.view(t)));
    return {
      items: filter.state ? views.filter((v) => v.status === filter.state) : views,
      cursor: page.cursor,
    };
  }

  // ---------------------------------------------------------------- register from a URL

  async register(input: RegisterInput): Promise<{ template: TemplateView; job: Job }> {
    this.deps.fetcher.checkUpFront(input.url);
    const checksum = input.checksum ? normalizeChecksum(input.checksum) : undefined;
    checkTypeAndFormat(input.type, input.format);
    const store = await this.pickImageStore(input.zoneId, input.storeId);
    const jobId = newId('job');
    const template = await this.repo.create('Template', {
      id: newId('tpl'),
      name: input.name,
      type: input.type,
      format: input.format,
      zoneId: store.scope.zoneId,
      url: input.url,
      ...(checksum ? { checksum } : {}),
    });
    await this.repo.create('TemplateInStore', {
      templateId: template.id,
      storeId: store.id,
      storeRole: 'image',
      status: O.Creating,
      refCount: 0,
      progress: 0,
      bytesTransferred: 0,
      lease: { owner: jobId, expiresAt: this.expiry(INGEST_LEASE_SECONDS) },
    });
    const job = await this.deps.jobs.create(
      'template.register',
      { type: 'template', id: template.id },
      jobId,
    );
    const started = await this.start(FlowName.TemplateIngest, job, {
      templateId: template.id,
      storeId: store.id,
      source: 'url',
    });
    return { template: await this.get(template.id), job: started };
  }

  // ---------------------------------------------------------------- upload from the operator's machine

  async createUpload(input: UploadInput): Promise<{
    template: TemplateView;
    upload: {
      uploadId: string;
      storeId: string;
      partSizeBytes: number;
      parts: { partNumber: number; url: string }[];
      expiresAt: string;
    };
  }> {
    const checksum = input.checksum ? normalizeChecksum(input.checksum) : undefined;
    checkTypeAndFormat(input.type, input.format);
    if (input.sizeBytes > MAX_IMAGE_BYTES) {
      throw new InputError(`sizeBytes is larger than ${MAX_IMAGE_BYTES}`, { field: 'sizeBytes' });
    }
    const store = await this.pickImageStore(input.zoneId, input.storeId);
    const driver = this.imageDriver(store);
    // The verification job exists from the start: its id owns the copy's lease while the client uploads.
    const jobId = newId('job');
    const template = await this.repo.create('Template', {
      id: newId('tpl'),
      name: input.name,
      type: input.type,
      format: input.format,
      zoneId: store.scope.zoneId,
      ...(checksum ? { checksum } : {}),
    });
    const object = templateObject(template);
    const upload = await driver.createUpload({
      store: toStoreInfo(store),
      object,
      sizeBytes: input.sizeBytes,
      expiresSeconds: UPLOAD_EXPIRY_SECONDS,
      ctx: this.deps.driverContext(jobId),
    });
    await this.repo.create('TemplateInStore', {
      templateId: template.id,
      storeId: store.id,
      storeRole: 'image',
      status: O.Creating,
      refCount: 0,
      path: upload.path,
      sizeBytes: input.sizeBytes,
      uploadId: upload.uploadId,
      progress: 0,
      lease: { owner: jobId, expiresAt: this.expiry(UPLOAD_EXPIRY_SECONDS) },
    });
    await this.deps.jobs.create('template.upload', { type: 'template', id: template.id }, jobId);
    return {
      template: await this.get(template.id),
      upload: {
        uploadId: upload.uploadId,
        storeId: store.id,
        partSizeBytes: upload.partSizeBytes,
        parts: upload.parts,
        expiresAt: upload.expiresAt,
      },
    };
  }

  /** The client has uploaded every part: assemble the object, then verify it in the ingest workflow. */
  async completeUpload(
    templateId: string,
    uploadId: string,
    parts: { partNumber: number; etag: string }[],
  ): Promise<{ template: TemplateView; job: Job }> {
    const { row, store, template } = await this.uploadRow(templateId, uploadId);
    const jobId = row.lease!.owner;
    await this.imageDriver(store).completeUpload({
      store: toStoreInfo(store),
      object: { ...templateObject(template), path: row.path },
      uploadId,
      parts,
      ctx: this.deps.driverContext(jobId),
    });
    const job = await this.deps.jobs.get(jobId);
    const started = await this.start(FlowName.TemplateIngest, job, {
      templateId,
      storeId: store.id,
      source: 'upload',
    });
    return { template: await this.get(templateId), job: started };
  }

  /** Abandons an upload: the multipart upload is aborted and the template forgotten. */
  async abortUpload(templateId: string, uploadId: string): Promise<void> {
    const { row, store, template } = await this.uploadRow(templateId, uploadId);
    const jobId = row.lease!.owner;
    const ctx = this.deps.driverContext(jobId);
    await this.imageDriver(store)
      .abortUpload({
        store: toStoreInfo(store),
        object: { ...templateObject(template), path: row.path },
        uploadId,
        ctx,
      })
      .catch((e: unknown) => {
        // Some S3-compatible stores (the local emulator among them) cannot abort; their parts are
        // left for the store's own lifecycle rules, and the template is forgotten all the same.
        if (!(e instanceof UnsupportedOperationError)) throw e;
        ctx.logger.warn('store cannot abort multipart uploads; parts left behind', {
          storeId: store.id,
          uploadId,
        });
      });
    await this.repo.transition({
      key: { type: 'TemplateInStore', id: templateId, storeId: store.id },
      machine: objectInStoreMachine,
      from: O.Creating,
      to: O.Failed,
      leaseOwner: jobId,
      changes: { statusReason: 'upload aborted', uploadId: undefined },
    });
    await this.deps.jobs
      .fail(jobId, { code: 'UploadAborted', message: 'the upload was aborted' })
      .catch(() => undefined);
    await this.delete(templateId);
  }

  // ---------------------------------------------------------------- template-ingest steps

  /** template-ingest (url): stream the URL into the image store, hashing and inspecting on the way. */
  async ingestFromUrl(input: { jobId: string; templateId: string; storeId: string }): Promise<IngestResult> {
    const { template, row, store } = await this.creatingRow(input);
    const ctx = this.deps.driverContext(input.jobId);
    const driver = this.imageDriver(store);
    const object = templateObject(template);
    const controller = new AbortController();
    const fetched = await this.deps.fetcher.open(template.url!, { signal: controller.signal });
    const measured = this.measure(input, template, fetched.contentLength);
    const body = pipeline(fetched.body, measured.tap, () => undefined) as Readable;
    let written: { path: string };
    try {
      written = await driver.writeStream({
        store: toStoreInfo(store),
        object,
        body,
        contentLength: fetched.contentLength,
        ctx,
      });
    } catch (e) {
      controller.abort();
      throw e;
    }
    return this.judge(input, template, store, { ...object, path: written.path }, measured.done(), row);
  }

  /** template-ingest (upload): read the assembled object back, hashing and inspecting it. */
  async verifyUpload(input: { jobId: string; templateId: string; storeId: string }): Promise<IngestResult> {
    const { template, row, store } = await this.creatingRow(input);
    const ctx = this.deps.driverContext(input.jobId);
    const object = { ...templateObject(template), path: row.path };
    const { body, sizeBytes } = await this.imageDriver(store).readStream({
      store: toStoreInfo(store),
      object,
      ctx,
    });
    const measured = this.measure(input, template, sizeBytes);
    const sink = new PassThrough();
    await new Promise<void>((resolve, reject) => {
      pipeline(body, measured.tap, sink, (err) => (err ? reject(err) : resolve()));
      sink.resume();
    });
    const facts = measured.done();
    if (row.sizeBytes !== undefined && facts.bytes !== row.sizeBytes) {
      await this.discard(store, object, input.jobId);
      throw new UnprocessableError(`upload is ${facts.bytes} bytes, but ${row.sizeBytes} were announced`, {
        field: 'sizeBytes',
      });
    }
    return this.judge(input, template, store, object, facts, row);
  }

  /** template-ingest, last step: the copy is Ready with what was measured. */
  async finishIngest(input: {
    jobId: string;
    templateId: string;
    storeId: string;
    result: IngestResult;
  }): Promise<void> {
    const { result } = input;
    const row = await this.repo.require({
      type: 'TemplateInStore',
      id: input.templateId,
      storeId: input.storeId,
    });
    if (row.status !== O.Ready) {
      await this.repo.transition({
        key: { type: 'TemplateInStore', id: input.templateId, storeId: input.storeId },
        machine: objectInStoreMachine,
        from: O.Creating,
        to: O.Ready,
        leaseOwner: input.jobId,
        changes: {
          path: result.path,
          sizeBytes: result.sizeBytes,
          virtualSizeBytes: result.virtualSizeBytes,
          checksum: result.checksum,
          progress: 100,
          bytesTransferred: result.sizeBytes,
          uploadId: undefined,
          statusReason: undefined,
        },
      });
    }
    await this.updateTemplate(input.templateId, (t) => ({
      virtualSizeBytes: result.virtualSizeBytes,
      physicalSizeBytes: result.sizeBytes,
      ...(t.checksum ? {} : { checksum: result.checksum }),
    }));
    await this.deps.jobs.succeed(input.jobId, {
      templateId: input.templateId,
      storeId: input.storeId,
      ...result,
    });
  }

  /** template-ingest, on failure: nothing is left in the store, the copy is Failed with the reason. */
  async failIngest(input: {
    jobId: string;
    templateId: string;
    storeId: string;
    error: WorkflowFailure;
  }): Promise<void> {
    await this.failNewCopy(
      input,
      async (row, store, template) => {
        const object = { ...templateObject(template), path: row.path };
        if (row.uploadId) {
          await this.imageDriver(store)
            .abortUpload({
              store: toStoreInfo(store),
              object,
              uploadId: row.uploadId,
              ctx: this.deps.driverContext(input.jobId),
            })
            .catch(() => undefined);
        }
        await this.discard(store, object, input.jobId);
      },
      { uploadId: undefined, progress: undefined },
    );
    await this.deps.jobs.failFromFlow(input.jobId, input.error, 'IngestFailed');
  }

  // ---------------------------------------------------------------- copies between image stores

  async copy(templateId: string, storeId: string): Promise<{ template: TemplateView; job: Job }> {
    const template = await this.repo.require({ type: 'Template', id: templateId });
    const dest = await this.repo.require({ type: 'DataStore', id: storeId });
    if (dest.role !== 'image')
      throw new InputError(`store ${storeId} is not an image store`, { field: 'storeId' });
    if (dest.status !== DataStoreStatus.Up) {
      throw new ConflictError(`store ${storeId} is ${dest.status}`, { field: 'storeId', state: dest.status });
    }
    const copies = await this.repo.listCopies('TemplateInStore', templateId);
    const existing = copies.find((c) => c.storeId === storeId);
    if (existing && existing.status !== O.Failed && existing.status !== O.Allocated) {
      throw new ConflictError(
        `template ${templateId} already has a copy on store ${storeId} (${existing.status})`,
        {
          field: 'storeId',
          state: existing.status,
        },
      );
    }
    const source = copies.find(
      (c) => c.storeRole === 'image' && c.status === O.Ready && c.storeId !== storeId,
    );
    if (!source) {
      const busy = copies.find((c) => c.storeRole === 'image' && c.status === O.Copying);
      throw new ConflictError(
        busy
          ? `template ${templateId} is being copied already`
          : `template ${templateId} has no Ready copy to copy from`,
        { state: busy?.status ?? 'NotReady' },
      );
    }
    const jobId = newId('job');
    const lease = { owner: jobId, ttlSeconds: INGEST_LEASE_SECONDS };
    // Source first: Ready → Copying decides a race between two copies (or a copy and a delete).
    await this.repo.transition({
      key: { type: 'TemplateInStore', id: templateId, storeId: source.storeId },
      machine: objectInStoreMachine,
      from: O.Ready,
      to: O.Copying,
      expectedVersion: source.version,
      lease,
    });
    try {
      if (existing) {
        await this.repo.transition({
          key: { type: 'TemplateInStore', id: templateId, storeId },
          machine: objectInStoreMachine,
          from: [O.Failed, O.Allocated],
          to: O.Creating,
          expectedVersion: existing.version,
          lease,
          changes: { statusReason: undefined, progress: 0 },
        });
      } else {
        await this.repo.create('TemplateInStore', {
          templateId,
          storeId,
          storeRole: 'image',
          status: O.Creating,
          refCount: 0,
          progress: 0,
          lease: { owner: jobId, expiresAt: this.expiry(INGEST_LEASE_SECONDS) },
        });
      }
    } catch (e) {
      await this.releaseSource(templateId, source.storeId, jobId);
      throw e;
    }
    const job = await this.deps.jobs.create('template.copy', { type: 'template', id: templateId }, jobId);
    const started = await this.start(FlowName.TemplateCopy, job, {
      templateId,
      sourceStoreId: source.storeId,
      storeId,
    });
    return { template: await this.get(template.id), job: started };
  }

  /** template-copy: the copy itself, through DataMotionService. */
  async copyStep(input: {
    jobId: string;
    templateId: string;
    sourceStoreId: string;
    storeId: string;
  }): Promise<IngestResult & { via: string }> {
    const template = await this.repo.require({ type: 'Template', id: input.templateId });
    const src = await this.repo.require({
      type: 'TemplateInStore',
      id: input.templateId,
      storeId: input.sourceStoreId,
    });
    const dst = await this.repo.require({
      type: 'TemplateInStore',
      id: input.templateId,
      storeId: input.storeId,
    });
    if (src.lease?.owner !== input.jobId || dst.lease?.owner !== input.jobId) {
      throw new ConflictError(`copy of ${input.templateId} is not owned by ${input.jobId}`, {
        state: dst.status,
      });
    }
    const srcStore = await this.repo.require({ type: 'DataStore', id: input.sourceStoreId });
    const dstStore = await this.repo.require({ type: 'DataStore', id: input.storeId });
    const object = templateObject(template);
    const result = await this.deps.motion.copy({
      src: { store: toStoreInfo(srcStore), object: { ...object, path: src.path } },
      dst: { store: toStoreInfo(dstStore), object },
      ctx: this.deps.driverContext(input.jobId),
    });
    return {
      path: result.path,
      sizeBytes: result.sizeBytes,
      checksum: src.checksum ?? '',
      virtualSizeBytes: src.virtualSizeBytes ?? result.virtualSizeBytes ?? 0,
      via: `${result.plan.via}:${result.plan.name}`,
    };
  }

  async finishCopy(input: {
    jobId: string;
    templateId: string;
    sourceStoreId: string;
    storeId: string;
    result: IngestResult & { via: string };
  }): Promise<void> {
    const dst = await this.repo.require({
      type: 'TemplateInStore',
      id: input.templateId,
      storeId: input.storeId,
    });
    if (dst.status !== O.Ready) {
      await this.repo.transition({
        key: { type: 'TemplateInStore', id: input.templateId, storeId: input.storeId },
        machine: objectInStoreMachine,
        from: O.Creating,
        to: O.Ready,
        leaseOwner: input.jobId,
        changes: {
          path: input.result.path,
          sizeBytes: input.result.sizeBytes,
          virtualSizeBytes: input.result.virtualSizeBytes,
          ...(input.result.checksum ? { checksum: input.result.checksum } : {}),
          progress: 100,
          bytesTransferred: input.result.sizeBytes,
        },
      });
    }
    await this.releaseSource(input.templateId, input.sourceStoreId, input.jobId);
    await this.deps.jobs.succeed(input.jobId, {
      ...input.result,
      templateId: input.templateId,
      storeId: input.storeId,
    });
  }

  async failCopy(input: {
    jobId: string;
    templateId: string;
    sourceStoreId: string;
    storeId: string;
    error: WorkflowFailure;
  }): Promise<void> {
    await this.failNewCopy(input, (_row, store, template) =>
      this.discard(store, templateObject(template), input.jobId),
    );
    await this.releaseSource(input.templateId, input.sourceStoreId, input.jobId);
    await this.deps.jobs.failFromFlow(input.jobId, input.error, 'CopyFailed');
  }

  // ---------------------------------------------------------------- delete

  /**
   * Deletes every copy and the template. Refused while any primary-storage cache copy is referenced
   * by a volume (its linked clones need it) or while a copy is mid-operation.
   */
  async delete(templateId: string): Promise<void> {
    await this.repo.require({ type: 'Template', id: templateId });
    const copies = await this.repo.listCopies('TemplateInStore', templateId);
    const referenced = copies.filter((c) => c.refCount > 0);
    if (referenced.length > 0) {
      const dependents = referenced.map((c) => `${c.refCount} volume(s) on store ${c.storeId}`);
      throw new NotAllowedError(`template ${templateId} is in use: ${dependents.join(', ')}`, {
        id: templateId,
        dependents,
      });
    }
    const busy = copies.filter(
      (c) => c.status === O.Creating || c.status === O.Copying || c.status === O.Destroying,
    );
    if (busy.length > 0) {
      throw new ConflictError(
        `template ${templateId} has a copy mid-operation on store ${busy[0]!.storeId} (${busy[0]!.status})`,
        { state: busy[0]!.status },
      );
    }
    for (const copy of copies) await this.destroyCopy(templateId, copy);
    await this.repo.delete({ type: 'Template', id: templateId });
  }

  // ---------------------------------------------------------------- helpers

  private async destroyCopy(templateId: string, copy: TemplateInStore): Promise<void> {
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

  private async view(template: Template): Promise<TemplateView> {
    const copies = await this.repo.listCopies('TemplateInStore', template.id);
    const best = copies.reduce<string | undefined>(
      (acc, c) =>
        acc === undefined || (STATUS_RANK[c.status] ?? 0) > (STATUS_RANK[acc] ?? 0) ? c.status : acc,
      undefined,
    );
    return { ...template, status: best ?? O.Allocated, copies };
  }

  private async pickImageStore(zoneId?: string, storeId?: string): Promise<DataStore> {
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

  private imageDriver(store: DataStore): ImageStoreDriver {
    const driver = this.deps.registry.get(store.provider).driver;
    if (!isImageStoreDriver(driver)) {
      throw new UnprocessableError(`provider ${store.provider} cannot hold templates`, { field: 'storeId' });
    }
    return driver;
  }

  private async creatingRow(input: { jobId: string; templateId: string; storeId: string }) {
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

  private async uploadRow(templateId: string, uploadId: string) {
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
  private measure(
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
  private async judge(
    input: { jobId: string; templateId: string; storeId: string },
    template: Template,
    store: DataStore,
    object: DataObjectRef,
    facts: ReturnType<ReturnType<ImageService['measure']>['done']>,
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
  private async failNewCopy(
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

  private async discard(store: DataStore, object: DataObjectRef, jobId: string): Promise<void> {
    await this.imageDriver(store)
      .deleteAsync({ store: toStoreInfo(store), object, ctx: this.deps.driverContext(jobId) })
      .catch(() => undefined);
  }

  private async releaseSource(templateId: string, storeId: string, jobId: string): Promise<void> {
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

  private async updateTemplate(id: string, changes: (t: Template) => Partial<Template>): Promise<void> {
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

  private async start(flow: FlowName, job: Job, input: Record<string, unknown>): Promise<Job> {
    try {
      const { executionId } = await this.deps.workflows.start(flow, job.id, { jobId: job.id, ...input });
      return await this.deps.jobs.started(job.id, executionId);
    } catch (e) {
      await this.failIngest({
        jobId: job.id,
        templateId: String(input.templateId),
        storeId: String(input.storeId),
        error: { Error: 'WorkflowStartFailed', Cause: (e as Error).message },
      });
      throw e;
    }
  }

  private expiry(seconds: number): string {
    return new Date(this.clock.now().getTime() + seconds * 1000).toISOString();
  }
}

export function templateObject(template: Template): DataObjectRef {
  return { kind: template.type === 'iso' ? 'iso' : 'template', id: template.id, format: template.format };
}

function normalizeChecksum(text: string): string {
  try {
    return formatChecksum(parseChecksum(text));
  } catch (e) {
    throw new InputError(`checksum: ${(e as Error).message}`, { field: 'checksum' }, { cause: e });
  }
}

function checkTypeAndFormat(type: 'template' | 'iso', format: ImageFormat): void {
  if ((type === 'iso') !== (format === 'iso')) {
    throw new InputError(
      `an ${type === 'iso' ? 'ISO must have format iso' : 'template cannot have format iso'}`,
      {
        field: 'format',
      },
    );
  }
}
