/**
 * ImageService: templates and ISOs on the image store. Registration from a URL and verification of
 * an operator's upload run as the template-ingest flow (./templates/ingest.ts); copies between image
 * stores as template-copy (./templates/copy.ts); both share ./templates/common.ts. This class is what
 * the API calls: queries, delete, and the requests that start those flows. Every copy of a template
 * in a store is a TemplateInStore row following the object-in-store state machine, leased by the job
 * that moves it.
 */
import type { ListOptions, Page } from '../ports.js';
import {
  type ImageDeps,
  ImageFlow,
  INGEST_LEASE_SECONDS,
  type IngestResult,
  MAX_IMAGE_BYTES,
  type RegisterInput,
  type TemplateFilter,
  type TemplateView,
  templateObject,
  UPLOAD_EXPIRY_SECONDS,
  type UploadInput,
} from './templates/common.js';
import { TemplateCopyFlow } from './templates/copy.js';
import { TemplateIngestFlow } from './templates/ingest.js';

export type { ImageDeps, IngestResult, RegisterInput, TemplateFilter, TemplateView, UploadInput };
export { INGEST_LEASE_SECONDS, MAX_IMAGE_BYTES, templateObject, UPLOAD_EXPIRY_SECONDS };

export class ImageService extends ImageFlow {
  readonly ingest: TemplateIngestFlow;
  readonly copying: TemplateCopyFlow;

  constructor(deps: ImageDeps) {
    super(deps);
    this.ingest = new TemplateIngestFlow(deps);
    this.copying = new TemplateCopyFlow(deps);
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

  register(input: RegisterInput): ReturnType<TemplateIngestFlow['register']> {
    return this.ingest.register(input);
  }

  createUpload(input: UploadInput): ReturnType<TemplateIngestFlow['createUpload']> {
    return this.ingest.createUpload(input);
  }

  /** Fresh part URLs for an open upload (the client renews them; grants.ts UPLOAD_GRANT_SECONDS). */
  presignUploadParts(
    ...args: Parameters<TemplateIngestFlow['presignParts']>
  ): ReturnType<TemplateIngestFlow['presignParts']> {
    return this.ingest.presignParts(...args);
  }

  completeUpload(
    ...args: Parameters<TemplateIngestFlow['completeUpload']>
  ): ReturnType<TemplateIngestFlow['completeUpload']> {
    return this.ingest.completeUpload(...args);
  }

  abortUpload(templateId: string, uploadId: string): Promise<void> {
    return this.ingest.abortUpload(templateId, uploadId);
  }

  copy(templateId: string, storeId: string): ReturnType<TemplateCopyFlow['copy']> {
    return this.copying.copy(templateId, storeId);
  }
}
