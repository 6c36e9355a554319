/**
 * volume-create (statemachines/flows/volume-create.ts). Placement and the capacity reservation
 * happen in the request, so a caller learns at once when nothing fits; the volume row, the space it
 * reserves and the job are one write. The steps then install the template cache (once per pool),
 * make the file on a host, and mark the volume Ready; each is fenced by the job's lease on the volume.
 */
import type { ImageFormat, TemplateInstallStrategy } from '../../../../drivers/sdk/types.js';
import { type Placement, planPlacement, reserve } from '../../allocator.js';
import { ConflictError, InputError, UnavailableError, UnprocessableError } from '../../errors.js';
import { newId } from '../../ids.js';
import type { Job, Snapshot, Template, Volume } from '../../model.js';
import { ObjectInStoreStatus as O, SnapshotStatus, VolumeStatus as V } from '../../model.js';
import { allPages } from '../../paging.js';
import type { Repository } from '../../ports.js';
import { FlowName, Write } from '../../ports.js';
import { volumeMachine } from '../../state-machines.js';
import { toStoreInfo } from '../datastore-service.js';
import { templateObject } from '../image-service.js';
import { causeMessage, type WorkflowFailure } from '../job-service.js';
import {
  expiry,
  held,
  launch,
  type Step,
  templateHoldRelease,
  VOLUME_LEASE_SECONDS,
  type VolumeDeps,
} from './common.js';
import { removeFromPool } from './footprint.js';
import type { TemplateCache } from './template-cache.js';

export interface CreateVolumeInput {
  name: string;
  zoneId: string;
  sizeBytes?: number;
  templateId?: string;
  storeId?: string;
  clusterId?: string;
  tags?: string[];
  mode?: 'linked' | 'full';
  /** Restore this snapshot into the new volume (from its backup or its primary layer). */
  fromSnapshotId?: string;
  /** Which copy a restore reads (default `auto`: the primary layer when a host reaches it). */
  restoreFrom?: 'auto' | 'primary' | 'backup';
  /** With `restoreFrom: 'backup'`: restore lazily (usable at once, Hydrating, then Ready). */
  lazy?: boolean;
}

export class VolumeCreateFlow {
  constructor(
    private readonly deps: VolumeDeps,
    private readonly cache: TemplateCache,
  ) {}

  private get repo(): Repository {
    return this.deps.repo;
  }

  /** Where a volume would go and why every other store would not take it. Changes nothing. */
  async explain(input: CreateVolumeInput): Promise<{ placement: Placement }> {
    const { sizeBytes } = await this.sizing(input);
    return { placement: await this.plan(input, sizeBytes) };
  }

  /** Places and reserves, records the volume (Creating, leased) and its job, then starts volume-create. */
  async start(input: CreateVolumeInput): Promise<{ volume: Volume; job: Job }> {
    const { sizeBytes, template, snapshot } = await this.sizing(input);
    const placement = await this.plan(input, sizeBytes);
    const jobId = newId('job');
    const id = newId('vol');
    const l = {
      flow: FlowName.VolumeCreate,
      input: { jobId, volumeId: id, fromTemplate: Boolean(template) },
    };
    // The space, the volume row that owns it, its hold on the template and the job are written
    // together: a template delete that began first makes this write fail, and one that begins
    // later sees the hold and is refused.
    await reserve(this.repo, placement, sizeBytes, {
      with: (storeId) => [
        this.deps.jobs.createWrite('volume.create', { type: 'volume', id }, jobId, l),
        ...(template
          ? [
              Write.counter({ type: 'Template', id: template.id }, 'pendingVolumes', 1, {
                unlessSet: 'deletingSince',
              }),
            ]
          : []),
        Write.create('Volume', {
          id,
          name: input.name,
          zoneId: input.zoneId,
          storeId,
          ...(template ? { templateId: template.id, holdsTemplate: true } : {}),
          ...(snapshot ? { sourceSnapshotId: snapshot.id, restoreFrom: input.restoreFrom ?? 'auto' } : {}),
          ...(snapshot && input.lazy ? { lazyRestore: true } : {}),
          mode: template ? (input.mode ?? 'linked') : snapshot ? 'full' : 'blank',
          sizeBytes,
          format: 'qcow2',
          tags: input.tags ?? [],
          accessHostIds: [],
          status: V.Creating,
          lease: { owner: jobId, expiresAt: expiry(this.deps, VOLUME_LEASE_SECONDS) },
        }),
      ],
    }).catch((e: unknown) => {
      if (template && e instanceof ConflictError && e.context.type === 'Template') {
        throw new ConflictError(`template ${template.id} is being deleted`, {
          field: 'templateId',
          state: 'Deleting',
        });
      }
      throw e;
    });
    const volume = await this.repo.require({ type: 'Volume', id });
    try {
      return { volume, job: await launch(this.deps, jobId, l) };
    } catch (e) {
      // Nothing ran yet: give the space back now rather than when the job's lease runs out.
      await this.failCreate({
        jobId,
        volumeId: id,
        error: { Error: 'WorkflowStartFailed', Cause: (e as Error).message },
      });
      throw new UnavailableError(
        `could not start volume-create: ${(e as Error).message}`,
        { jobId },
        { cause: e },
      );
    }
  }

  /** Step: make sure the template is cached on the pool, and take a reference on it. */
  async ensureTemplateCache(input: Step): Promise<{ cachePath: string }> {
    const volume = await held(this.repo, input, V.Creating, 'created');
    if (!volume.templateId || !volume.storeId)
      throw new InputError('volume has no template', { field: 'templateId' });
    const template = await this.repo.require({ type: 'Template', id: volume.templateId });
    const pool = await this.repo.require({ type: 'DataStore', id: volume.storeId });
    return { cachePath: await this.cache.ensure(input.jobId, volume, template, pool) };
  }

  /** Step: create the volume file on a host that mounts the pool (blank, from the cache, or restored). */
  async createOnPool(input: Step): Promise<{ path: string }> {
    // A lazy restore's step is replayed after the volume became Hydrating (usable) in it.
    const lazyRun = (await this.repo.require({ type: 'Volume', id: input.volumeId })).status === V.Hydrating;
    const volume = await held(this.repo, input, lazyRun ? V.Hydrating : V.Creating, 'created');
    const pool = await this.repo.require({ type: 'DataStore', id: volume.storeId ?? '' });
    const ctx = this.deps.driverContext(input.jobId);
    const { id: hostId } = await this.deps.selectHost([pool.id]);
    const object = { kind: 'volume' as const, id: volume.id, format: 'qcow2' as ImageFormat };
    if (volume.sourceSnapshotId) {
      if (!this.deps.restoreSnapshot) throw new UnprocessableError('restores are not configured');
      return this.deps.restoreSnapshot({
        jobId: input.jobId,
        snapshotId: volume.sourceSnapshotId,
        volume,
        pool,
        from: volume.restoreFrom ?? 'auto',
        ...(volume.lazyRestore ? { lazy: true } : {}),
      });
    }
    if (volume.templateId) {
      const strategy = this.cache.strategy(pool);
      const template = await this.repo.require({ type: 'Template', id: volume.templateId });
      const cache = await this.repo.require({ type: 'TemplateInStore', id: template.id, storeId: pool.id });
      const { path } = await strategy.createVolume({
        cache: {
          store: toStoreInfo(pool),
          object: { ...templateObject(template), format: 'qcow2', path: cache.path },
        },
        volume: object,
        sizeBytes: volume.sizeBytes,
        ctx,
        hostId,
        ...({ mode: volume.mode === 'full' ? 'full' : 'linked' } as object),
      } as Parameters<TemplateInstallStrategy['createVolume']>[0]);
      return { path };
    }
    const { path } = await this.deps.registry.get(pool.provider).driver.createAsync({
      store: toStoreInfo(pool),
      object,
      sizeBytes: volume.sizeBytes,
      ctx,
      hostId,
    });
    return { path };
  }

  /** Step, last: the volume is Ready at its path and the job succeeded. */
  async finishCreate(input: Step & { path: string }): Promise<void> {
    const volume = await this.repo.require({ type: 'Volume', id: input.volumeId });
    if (volume.status !== V.Ready) {
      await this.repo.transition({
        key: { type: 'Volume', id: volume.id },
        machine: volumeMachine,
        from: [V.Creating, V.Hydrating],
        to: V.Ready,
        leaseOwner: input.jobId,
        changes: {
          path: input.path,
          statusReason: undefined,
          hydrationHostId: undefined,
          hydrationUrls: undefined,
        },
      });
    }
    await this.deps.jobs.succeed(input.jobId, {
      volumeId: volume.id,
      storeId: volume.storeId,
      path: input.path,
    });
  }

  /** Compensation: no file, no reservation, no reference left; the volume is Error with the reason. */
  async failCreate(input: Step & { error: WorkflowFailure }): Promise<void> {
    const reason = causeMessage(input.error);
    const volume = await this.repo.get({ type: 'Volume', id: input.volumeId });
    const from = volume?.status === V.Hydrating ? V.Hydrating : V.Creating;
    if (volume && volume.status === from && volume.lease?.owner === input.jobId) {
      let cleaned = true;
      // A lazy restore's export is stopped before its file goes (writes made meanwhile are lost).
      if (volume.lazyRestore && volume.storeId && this.deps.abortLazyRestore) {
        const pool = await this.repo.require({ type: 'DataStore', id: volume.storeId });
        await this.deps.abortLazyRestore({ jobId: input.jobId, volume, pool }).catch((e: unknown) => {
          cleaned = false;
          this.deps.driverContext(input.jobId).logger.warn('lazy restore abort was incomplete', {
            volumeId: volume.id,
            error: (e as Error).message,
          });
        });
      }
      if (cleaned)
        await removeFromPool(this.deps, this.cache, volume, input.jobId).catch((e: unknown) => {
          cleaned = false;
          this.deps.driverContext(input.jobId).logger.warn('cleanup after failed create was incomplete', {
            volumeId: volume.id,
            error: (e as Error).message,
          });
        });
      // Once cleaned, the volume no longer occupies the pool; otherwise a later delete retries the cleanup.
      const current = await this.repo.require({ type: 'Volume', id: volume.id });
      await this.repo.transact([
        Write.transition({
          key: { type: 'Volume', id: volume.id },
          machine: volumeMachine,
          from,
          to: V.Error,
          leaseOwner: input.jobId,
          changes: {
            holdsTemplate: false,
            ...(cleaned
              ? { statusReason: reason, storeId: undefined, path: undefined, holdsTemplateRef: false }
              : { statusReason: `${reason} (cleanup incomplete; delete the volume to retry it)` }),
          },
        }),
        ...templateHoldRelease(current),
      ]);
    }
    await this.deps.jobs.failFromFlow(input.jobId, input.error, 'CreateFailed');
  }

  private async sizing(
    input: CreateVolumeInput,
  ): Promise<{ sizeBytes: number; template?: Template; snapshot?: Snapshot }> {
    if (input.fromSnapshotId) return this.restoreSizing(input, input.fromSnapshotId);
    if (!input.templateId) {
      if (!input.sizeBytes) throw new InputError('a blank volume needs sizeBytes', { field: 'sizeBytes' });
      return { sizeBytes: input.sizeBytes };
    }
    const template = await this.repo.get({ type: 'Template', id: input.templateId });
    if (!template)
      throw new UnprocessableError(`template ${input.templateId} does not exist`, { field: 'templateId' });
    if (template.type !== 'template') {
      throw new UnprocessableError(`${input.templateId} is an ISO, not a disk template`, {
        field: 'templateId',
      });
    }
    const copies = await this.repo.listCopies('TemplateInStore', template.id);
    if (!copies.some((c) => c.status === O.Ready)) {
      throw new ConflictError(`template ${template.id} is not Ready`, {
        field: 'templateId',
        state: 'NotReady',
      });
    }
    const minimum = template.virtualSizeBytes ?? 0;
    const sizeBytes = input.sizeBytes ?? minimum;
    if (sizeBytes < minimum) {
      throw new InputError(`sizeBytes must be at least the template's virtual size (${minimum})`, {
        field: 'sizeBytes',
      });
    }
    return { sizeBytes, template };
  }

  /** A restore makes a volume of the snapshot's size, from a copy that can be read. */
  private async restoreSizing(
    input: CreateVolumeInput,
    snapshotId: string,
  ): Promise<{ sizeBytes: number; snapshot: Snapshot }> {
    if (input.lazy && input.restoreFrom !== 'backup') {
      throw new InputError("lazy needs restoreFrom: 'backup'", { field: 'lazy' });
    }
    const snapshot = await this.repo.get({ type: 'Snapshot', id: snapshotId });
    if (!snapshot)
      throw new UnprocessableError(`snapshot ${snapshotId} does not exist`, { field: 'fromSnapshotId' });
    const copies = await this.repo.listCopies('SnapshotInStore', snapshotId);
    const from = input.restoreFrom ?? 'auto';
    const readable = copies.filter(
      (c) => c.status === O.Ready && (from === 'auto' || (from === 'backup') === (c.storeRole === 'image')),
    );
    if (
      (snapshot.status !== SnapshotStatus.CreatedOnPrimary && snapshot.status !== SnapshotStatus.BackedUp) ||
      readable.length === 0
    ) {
      throw new ConflictError(
        `snapshot ${snapshotId} is ${snapshot.status} and has no ${from === 'auto' ? 'readable' : from} copy to restore`,
        { field: 'fromSnapshotId', state: snapshot.status },
      );
    }
    const sizeBytes = readable.find((c) => c.virtualSizeBytes)?.virtualSizeBytes ?? snapshot.sizeBytes ?? 0;
    if (!sizeBytes) {
      throw new UnprocessableError(`snapshot ${snapshotId} does not record its size`, {
        field: 'fromSnapshotId',
      });
    }
    if (input.sizeBytes !== undefined && input.sizeBytes !== sizeBytes) {
      throw new InputError(
        `a restored volume has the snapshot's size (${sizeBytes}); resize it after the restore`,
        {
          field: 'sizeBytes',
        },
      );
    }
    return { sizeBytes, snapshot };
  }

  /** Placement over every primary store (shared with migrate, which names its destination). */
  async plan(input: CreateVolumeInput, sizeBytes: number): Promise<Placement> {
    const stores = await allPages((cursor) =>
      this.repo.list('DataStore', { cursor, limit: 100, filter: { role: 'primary' } }),
    );
    return planPlacement(stores, {
      zoneId: input.zoneId,
      sizeBytes,
      ...(input.clusterId ? { clusterId: input.clusterId } : {}),
      ...(input.tags ? { tags: input.tags } : {}),
      ...(input.storeId ? { storeId: input.storeId } : {}),
    });
  }
}
