/**
 * VolumeService: volumes on primary storage. Each flow is one module under ./volumes/, holding the
 * request that starts it and the steps its state machine runs (statemachines/flows/volume-*.ts):
 *
 * - create.ts   volume-create   placement and reservation in the request; template cache, file, Ready
 * - delete.ts   volume-delete   file, space and template reference given back; the row forgotten
 * - resize.ts   volume-resize   a grow's space reserved with the move into Resizing
 * - migrate.ts  volume-migrate  copy to another pool (or staged through an image store), verify, switch
 * - access.ts   volume-access   grantAccess / revokeAccess on the driver, then the access list
 *
 * Shared: common.ts (deps, fencing, how a flow starts), template-cache.ts (one install per pool,
 * references, eviction) and footprint.ts (what a volume occupies on its pool, given back at once).
 * This class is what the API calls; the task function calls the flows' steps directly.
 */
import type { Candidate, Placement } from '../allocator.js';
import type { Job, Volume } from '../model.js';
import type { ListOptions, Page } from '../ports.js';
import { type AccessAction, VolumeAccessFlow } from './volumes/access.js';
import type { VolumeDeps } from './volumes/common.js';
import { type CreateVolumeInput, VolumeCreateFlow } from './volumes/create.js';
import { VolumeDeleteFlow } from './volumes/delete.js';
import { VolumeMigrateFlow } from './volumes/migrate.js';
import { VolumeResizeFlow } from './volumes/resize.js';
import { TemplateCache } from './volumes/template-cache.js';

export { VOLUME_LEASE_SECONDS, type VolumeDeps, volumeObject } from './volumes/common.js';
export { CacheBusyError } from './volumes/template-cache.js';
export type { AccessAction, Candidate, CreateVolumeInput };

export interface VolumeFilter {
  zoneId?: string;
  storeId?: string;
  status?: string;
  templateId?: string;
}

export class VolumeService {
  readonly creation: VolumeCreateFlow;
  readonly deletion: VolumeDeleteFlow;
  readonly resizing: VolumeResizeFlow;
  readonly migration: VolumeMigrateFlow;
  readonly access: VolumeAccessFlow;

  constructor(private readonly deps: VolumeDeps) {
    const cache = new TemplateCache(deps);
    this.creation = new VolumeCreateFlow(deps, cache);
    this.deletion = new VolumeDeleteFlow(deps, cache);
    this.resizing = new VolumeResizeFlow(deps);
    this.migration = new VolumeMigrateFlow(deps, cache, this.creation);
    this.access = new VolumeAccessFlow(deps);
  }

  get(id: string): Promise<Volume> {
    return this.deps.repo.require({ type: 'Volume', id });
  }

  list(filter: VolumeFilter, options: ListOptions = {}): Promise<Page<Volume>> {
    const where: Record<string, string> = {};
    for (const [k, v] of Object.entries(filter)) if (v) where[k] = v;
    return this.deps.repo.list('Volume', { ...options, filter: where });
  }

  explain(input: CreateVolumeInput): Promise<{ placement: Placement }> {
    return this.creation.explain(input);
  }

  create(input: CreateVolumeInput): Promise<{ volume: Volume; job: Job }> {
    return this.creation.start(input);
  }

  delete(id: string): Promise<{ job: Job }> {
    return this.deletion.start(id);
  }

  resize(id: string, sizeBytes: number, allowShrink = false): Promise<{ volume: Volume; job: Job }> {
    return this.resizing.start(id, sizeBytes, allowShrink);
  }

  migrate(id: string, storeId: string): Promise<{ volume: Volume; job: Job }> {
    return this.migration.start(id, storeId);
  }

  grantAccess(id: string, hostId: string): Promise<{ job: Job }> {
    return this.access.grant(id, hostId);
  }

  revokeAccess(id: string, hostId: string): Promise<{ job: Job }> {
    return this.access.revoke(id, hostId);
  }
}
