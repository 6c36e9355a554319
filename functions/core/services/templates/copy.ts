import { ConflictError, InputError } from '../../errors.js';
import { newId } from '../../ids.js';
import type { Job } from '../../model.js';
import { DataStoreStatus, ObjectInStoreStatus as O } from '../../model.js';
import { FlowName } from '../../ports.js';
import { objectInStoreMachine } from '../../state-machines.js';
import { toStoreInfo } from '../datastore-service.js';
import type { WorkflowFailure } from '../job-service.js';

import {
  ImageFlow,
  INGEST_LEASE_SECONDS,
  type IngestResult,
  type TemplateView,
  templateObject,
} from './common.js';

export class TemplateCopyFlow extends ImageFlow {
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
    const started = await this.start(
      FlowName.TemplateCopy,
      job,
      { templateId, sourceStoreId: source.storeId, storeId },
      (error) => this.failCopy({ jobId, templateId, sourceStoreId: source.storeId, storeId, error }),
    );
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
    await this.markCopyReady(input, input.result);
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
}
