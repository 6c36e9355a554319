/**
 * template-ingest (statemachines/flows/template-ingest.ts): a template registered from a URL (fetched
 * into the image store, hashed and inspected as the bytes stream) or uploaded by the operator through
 * presigned parts (verified once the upload completes). Either way a copy is Ready only once its
 * checksum and format are proven.
 */
import { PassThrough, pipeline, type Readable } from 'node:stream';
import { DriverInputError, UnsupportedOperationError } from '../../../../drivers/sdk/errors.js';
import { ConflictError, InputError, UnprocessableError } from '../../errors.js';
import { UPLOAD_GRANT_SECONDS } from '../../grants.js';
import { newId } from '../../ids.js';
import type { Job } from '../../model.js';
import { JobState, ObjectInStoreStatus as O } from '../../model.js';
import { FlowName } from '../../ports.js';
import { objectInStoreMachine } from '../../state-machines.js';
import { toStoreInfo } from '../datastore-service.js';
import type { WorkflowFailure } from '../job-service.js';

import {
  checkTypeAndFormat,
  ImageFlow,
  INGEST_LEASE_SECONDS,
  type IngestResult,
  MAX_IMAGE_BYTES,
  normalizeChecksum,
  type RegisterInput,
  type TemplateView,
  templateObject,
  UPLOAD_EXPIRY_SECONDS,
  type UploadInput,
} from './common.js';

export class TemplateIngestFlow extends ImageFlow {
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
    const started = await this.start(
      FlowName.TemplateIngest,
      job,
      { templateId: template.id, storeId: store.id, source: 'url' },
      (error) => this.failIngest({ jobId, templateId: template.id, storeId: store.id, error }),
    );
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
      // The URLs are short-lived; the client renews them (presignParts). The upload itself stays
      // open for UPLOAD_EXPIRY_SECONDS (its lease below).
      expiresSeconds: UPLOAD_GRANT_SECONDS,
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
      uploadPartSizeBytes: upload.partSizeBytes,
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

  /**
   * Fresh part URLs (valid {@link UPLOAD_GRANT_SECONDS}) for parts of an upload that is still open:
   * its copy Creating under its lease, the lease not expired, and the upload not completed yet (its
   * job not started). Anything else is 409: a URL for a finished or abandoned upload is no use.
   */
  async presignParts(
    templateId: string,
    uploadId: string,
    partNumbers: number[],
  ): Promise<{ parts: { partNumber: number; url: string }[]; expiresAt: string }> {
    const { row, store, template } = await this.uploadRow(templateId, uploadId);
    const jobId = row.lease!.owner;
    const job = await this.repo.get({ type: 'Job', id: jobId });
    if (!job || job.executionId || job.state !== JobState.Pending) {
      throw new ConflictError(`upload ${uploadId} is already completed`, { field: 'uploadId' });
    }
    if (Date.parse(row.lease!.expiresAt) <= this.clock.now().getTime()) {
      throw new ConflictError(`upload ${uploadId} has expired`, { field: 'uploadId' });
    }
    if (row.sizeBytes === undefined || row.uploadPartSizeBytes === undefined) {
      // An upload started before part sizes were recorded: the client starts it again.
      throw new ConflictError(`upload ${uploadId} cannot be presigned again`, { field: 'uploadId' });
    }
    const driver = this.imageDriver(store);
    const object = { ...templateObject(template), path: row.path };
    const wanted = [...new Set(partNumbers)].sort((a, b) => a - b);
    const parts = await driver
      .presignUploadParts({
        store: toStoreInfo(store),
        object,
        uploadId,
        sizeBytes: row.sizeBytes,
        partSizeBytes: row.uploadPartSizeBytes,
        partNumbers: wanted,
        expiresSeconds: UPLOAD_GRANT_SECONDS,
        ctx: this.deps.driverContext(jobId),
      })
      .catch((e: unknown) => {
        if (e instanceof DriverInputError) {
          throw new InputError(`partNumbers: ${e.message.replace(/^partNumbers: /, '')}`, {
            field: 'partNumbers',
          });
        }
        throw e;
      });
    return {
      parts: parts.map((p) => ({ partNumber: p.partNumber, url: p.url })),
      expiresAt: this.expiry(UPLOAD_GRANT_SECONDS),
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
    const started = await this.start(
      FlowName.TemplateIngest,
      job,
      { templateId, storeId: store.id, source: 'upload' },
      (error) => this.failIngest({ jobId, templateId, storeId: store.id, error }),
    );
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
    await this.markCopyReady(input, result, { uploadId: undefined, statusReason: undefined });
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
}
