/**
 * VolumeService: volumes on primary storage. Placement and the capacity reservation happen in the
 * request (so a caller learns at once when nothing fits); the data work runs in the volume-create
 * and volume-delete workflows, each step idempotent and fenced by the job's lease on the volume.
 *
 * Template cache (TemplateInstallStrategy): a template is copied to a pool once, as a TemplateInStore
 * row with storeRole `primary`; volumes are linked clones (or full copies) of it and each holds one
 * reference (`refCount`). Of N concurrent creators, the one whose conditional create of the cache row
 * wins installs it; the others see it Creating and retry (`Strata.CacheBusy`) until it is Ready.
 *
 * Eviction rule: when the last volume holding a reference is deleted, the cache entry is removed
 * from the pool at once. The eviction is a transition conditional on the version the decrement
 * returned, so a creator that took a new reference in between (which bumps the version) wins and
 * the entry stays. A creator that finds the entry Destroying gives its reference back and waits for
 * a fresh install.
 */
import type { ProviderRegistry } from '../../../drivers/sdk/registry.js';
import type {
  DataObjectRef,
  DriverContext,
  HostInfo,
  ImageFormat,
  TemplateInstallStrategy,
} from '../../../drivers/sdk/types.js';
import { isImageStoreDriver, isStagingDriver } from '../../../drivers/sdk/types.js';
import { type Candidate, type Placement, planPlacement, releaseWrite, reserve } from '../allocator.js';
import {
  ConflictError,
  InputError,
  NotAllowedError,
  NotFoundError,
  UnavailableError,
  UnprocessableError,
} from '../errors.js';
import { newId } from '../ids.js';
import type { DataStore, Host, Job, Snapshot, Template, TemplateInStore, Volume } from '../model.js';
import { ObjectInStoreStatus as O, SnapshotStatus, VolumeStatus as V } from '../model.js';
import { allPages } from '../paging.js';
import type { Clock, ListOptions, Page, Repository, WorkflowPort, WriteOp } from '../ports.js';
import { FlowName, systemClock, Write } from '../ports.js';
import { objectInStoreMachine, volumeMachine } from '../state-machines.js';
import { forgetStepOnce, stepOnce } from '../step-scope.js';
import { toStoreInfo } from './datastore-service.js';
import { templateObject } from './image-service.js';
import { causeMessage, type JobService, type WorkflowFailure } from './job-service.js';

export const VOLUME_LEASE_SECONDS = 60 * 60;
/** Raised while another job installs the template on the pool; the workflow retries with backoff. */
/** What a volume-access job does. */
export type AccessAction = 'grant' | 'revoke';

export class CacheBusyError extends UnavailableError {}

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
}

export interface VolumeFilter {
  zoneId?: string;
  storeId?: string;
  status?: string;
  templateId?: string;
}

export interface VolumeDeps {
  repo: Repository;
  registry: ProviderRegistry;
  workflows: WorkflowPort;
  jobs: JobService;
  driverContext: (jobId: string) => DriverContext;
  selectHost: (storeIds: string[]) => Promise<{ id: string }>;
  /** Ids of the snapshots a volume has (a volume with snapshots cannot be deleted). */
  hasSnapshots: (volumeId: string) => Promise<string[]>;
  /** The TemplateInstallStrategy of a primary store's provider, if it has one. */
  installStrategy: (provider: string) => TemplateInstallStrategy | undefined;
  /** Restores a snapshot into a new volume's file on its pool (SnapshotService's backups). */
  restoreSnapshot?: (input: {
    jobId: string;
    snapshotId: string;
    volume: Volume;
    pool: DataStore;
    from: 'auto' | 'primary' | 'backup';
  }) => Promise<{ path: string }>;
  clock?: Clock;
}

interface Step {
  jobId: string;
  volumeId: string;
}

export class VolumeService {
  private readonly clock: Clock;

  constructor(private readonly deps: VolumeDeps) {
    this.clock = deps.clock ?? systemClock;
  }

  private get repo(): Repository {
    return this.deps.repo;
  }

  get(id: string): Promise<Volume> {
    return this.repo.require({ type: 'Volume', id });
  }

  list(filter: VolumeFilter, options: ListOptions = {}): Promise<Page<Volume>> {
    const where: Record<string, string> = {};
    for (const [k, v] of Object.entries(filter)) if (v) where[k] = v;
    return this.repo.list('Volume', { ...options, filter: where });
  }

  /** Where a volume would go and why every other store would not take it. Changes nothing. */
  async explain(input: CreateVolumeInput): Promise<{ placement: Placement }> {
    const { sizeBytes } = await this.sizing(input);
    return { placement: await this.plan(input, sizeBytes) };
  }

  /** Places and reserves, records the volume (Creating, leased), then starts volume-create. */
  async create(input: CreateVolumeInput): Promise<{ volume: Volume; job: Job }> {
    const { sizeBytes, template, snapshot } = await this.sizing(input);
    const placement = await this.plan(input, sizeBytes);
    const jobId = newId('job');
    const id = newId('vol');
    const launch = {
      flow: FlowName.VolumeCreate,
      input: { jobId, volumeId: id, fromTemplate: Boolean(template) },
    };
    // The space, the volume row that owns it and the job are written together.
    await reserve(this.repo, placement, sizeBytes, {
      with: (storeId) => [
        this.deps.jobs.createWrite('volume.create', { type: 'volume', id }, jobId, launch),
        Write.create('Volume', {
          id,
          name: input.name,
          zoneId: input.zoneId,
          storeId,
          ...(template ? { templateId: template.id } : {}),
          ...(snapshot ? { sourceSnapshotId: snapshot.id, restoreFrom: input.restoreFrom ?? 'auto' } : {}),
          mode: template ? (input.mode ?? 'linked') : snapshot ? 'full' : 'blank',
          sizeBytes,
          format: 'qcow2',
          tags: input.tags ?? [],
          accessHostIds: [],
          status: V.Creating,
          lease: { owner: jobId, expiresAt: this.expiry(VOLUME_LEASE_SECONDS) },
        }),
      ],
    });
    const volume = await this.get(id);
    try {
      const { executionId } = await this.deps.workflows.start(launch.flow, jobId, launch.input);
      return { volume, job: await this.deps.jobs.started(jobId, executionId) };
    } catch (e) {
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

  // ---------------------------------------------------------------- volume-create steps

  /** volume-create: make sure the template is cached on the pool, and take a reference on it. */
  async ensureTemplateCache(input: Step): Promise<{ cachePath: string }> {
    const volume = await this.held(input, V.Creating, 'created');
    if (!volume.templateId || !volume.storeId)
      throw new InputError('volume has no template', { field: 'templateId' });
    const template = await this.repo.require({ type: 'Template', id: volume.templateId });
    const pool = await this.repo.require({ type: 'DataStore', id: volume.storeId });
    const key = { type: 'TemplateInStore' as const, id: template.id, storeId: pool.id };

    let cache = await this.repo.get(key);
    if (!cache) {
      try {
        cache = await this.repo.create('TemplateInStore', {
          templateId: template.id,
          storeId: pool.id,
          storeRole: 'primary',
          status: O.Creating,
          refCount: 0,
          lease: { owner: input.jobId, expiresAt: this.expiry(VOLUME_LEASE_SECONDS) },
        });
      } catch (e) {
        if (!(e instanceof ConflictError)) throw e;
        cache = await this.repo.require(key);
      }
    } else if (cache.status === O.Failed || cache.status === O.Allocated || cache.status === O.Destroyed) {
      cache = await this.repo
        .transition({
          key,
          machine: objectInStoreMachine,
          from: cache.status,
          to: O.Creating,
          expectedVersion: cache.version,
          lease: { owner: input.jobId, ttlSeconds: VOLUME_LEASE_SECONDS },
          changes: { statusReason: undefined },
        })
        .catch(async (e: unknown) => {
          if (!(e instanceof ConflictError)) throw e;
          return this.repo.require(key);
        });
    }

    if (cache.status === O.Creating && cache.lease?.owner === input.jobId) {
      cache = await this.installCache(input.jobId, template, pool);
    }
    if (cache.status !== O.Ready) {
      throw new CacheBusyError(
        `template ${template.id} is ${cache.status} on store ${pool.id}; waiting for it`,
        {
          state: cache.status,
        },
      );
    }

    if (!volume.holdsTemplateRef) {
      // The reference and the volume's record of holding it are one write, taken only while the
      // cache is Ready: an eviction that won the race makes it fail, and nothing is counted.
      try {
        await this.repo.transact([
          Write.counter(key, 'refCount', 1, { when: { field: 'status', oneOf: [O.Ready] } }),
          Write.update({ type: 'Volume', id: volume.id }, volume.version, { holdsTemplateRef: true }),
        ]);
      } catch (e) {
        if (e instanceof ConflictError && e.context.type === 'TemplateInStore') {
          throw new CacheBusyError(`template cache on ${pool.id} is being evicted; retrying`, {
            state: e.context.state,
          });
        }
        throw e;
      }
    }
    return { cachePath: cache.path ?? '' };
  }

  /** volume-create: create the volume file on a host that mounts the pool. */
  async createOnPool(input: Step): Promise<{ path: string }> {
    const volume = await this.held(input, V.Creating, 'created');
    const pool = await this.repo.require({ type: 'DataStore', id: volume.storeId ?? '' });
    const provider = this.deps.registry.get(pool.provider);
    const ctx = this.deps.driverContext(input.jobId);
    const { id: hostId } = await this.deps.selectHost([pool.id]);
    const object = { kind: 'volume' as const, id: volume.id, format: 'qcow2' as ImageFormat };
    let path: string;
    if (volume.sourceSnapshotId) {
      if (!this.deps.restoreSnapshot) throw new UnprocessableError('restores are not configured');
      ({ path } = await this.deps.restoreSnapshot({
        jobId: input.jobId,
        snapshotId: volume.sourceSnapshotId,
        volume,
        pool,
        from: volume.restoreFrom ?? 'auto',
      }));
    } else if (volume.templateId) {
      const strategy = this.requireStrategy(pool);
      const template = await this.repo.require({ type: 'Template', id: volume.templateId });
      const cache = await this.repo.require({ type: 'TemplateInStore', id: template.id, storeId: pool.id });
      const result = await strategy.createVolume({
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
      path = result.path;
    } else {
      const result = await provider.driver.createAsync({
        store: toStoreInfo(pool),
        object,
        sizeBytes: volume.sizeBytes,
        ctx,
        hostId,
      });
      path = result.path;
    }
    return { path };
  }

  /** volume-create, last step. */
  async finishCreate(input: Step & { path: string }): Promise<void> {
    const volume = await this.get(input.volumeId);
    if (volume.status !== V.Ready) {
      await this.repo.transition({
        key: { type: 'Volume', id: volume.id },
        machine: volumeMachine,
        from: V.Creating,
        to: V.Ready,
        leaseOwner: input.jobId,
        changes: { path: input.path, statusReason: undefined },
      });
    }
    await this.deps.jobs.succeed(input.jobId, {
      volumeId: volume.id,
      storeId: volume.storeId,
      path: input.path,
    });
  }

  /** volume-create, on failure: no file, no reservation, no reference left; the volume is Error. */
  async failCreate(input: Step & { error: WorkflowFailure }): Promise<void> {
    const reason = causeMessage(input.error);
    const volume = await this.repo.get({ type: 'Volume', id: input.volumeId });
    if (volume && volume.status === V.Creating && volume.lease?.owner === input.jobId) {
      let cleaned = true;
      await this.cleanUp(volume, input.jobId).catch((e: unknown) => {
        cleaned = false;
        this.deps.driverContext(input.jobId).logger.warn('cleanup after failed create was incomplete', {
          volumeId: volume.id,
          error: (e as Error).message,
        });
      });
      // Once cleaned, the volume no longer occupies the pool; otherwise a later delete retries the cleanup.
      await this.repo.transition({
        key: { type: 'Volume', id: volume.id },
        machine: volumeMachine,
        from: V.Creating,
        to: V.Error,
        leaseOwner: input.jobId,
        changes: cleaned
          ? { statusReason: reason, storeId: undefined, path: undefined, holdsTemplateRef: false }
          : { statusReason: `${reason} (cleanup incomplete; delete the volume to retry it)` },
      });
    }
    await this.deps.jobs.failFromFlow(input.jobId, input.error, 'CreateFailed');
  }

  // ---------------------------------------------------------------- delete

  async delete(id: string): Promise<{ job: Job }> {
    const volume = await this.get(id);
    const snapshots = await this.deps.hasSnapshots(id);
    if (snapshots.length > 0) {
      throw new NotAllowedError(`volume ${id} has snapshots; delete them first: ${snapshots.join(', ')}`, {
        dependents: snapshots,
      });
    }
    if (volume.accessHostIds.length > 0) {
      throw new ConflictError(
        `volume ${id} is still accessible to ${volume.accessHostIds.join(', ')}; revoke first`,
        {
          state: volume.status,
        },
      );
    }
    const jobId = newId('job');
    const launch = { flow: FlowName.VolumeDelete, input: { jobId, volumeId: id } };
    await this.repo.transact([
      Write.transition({
        key: { type: 'Volume', id },
        machine: volumeMachine,
        from: [V.Ready, V.Error, V.Allocated],
        to: V.Destroying,
        expectedVersion: volume.version,
        lease: { owner: jobId, ttlSeconds: VOLUME_LEASE_SECONDS },
      }),
      this.deps.jobs.createWrite('volume.delete', { type: 'volume', id }, jobId, launch),
    ]);
    const { executionId } = await this.deps.workflows.start(launch.flow, jobId, launch.input);
    return { job: await this.deps.jobs.started(jobId, executionId) };
  }

  /** volume-delete: remove the file, release the space and the template reference, forget the row. */
  async destroy(input: Step): Promise<{ evictedCache: boolean }> {
    const volume = await this.repo.get({ type: 'Volume', id: input.volumeId });
    if (!volume || volume.status === V.Destroyed) {
      // An earlier run got this far and died before it forgot the row or recorded the job's end.
      if (volume) await this.repo.delete({ type: 'Volume', id: volume.id });
      await this.deps.jobs.succeed(input.jobId, { volumeId: input.volumeId, evictedCache: false });
      return { evictedCache: false };
    }
    if (volume.status !== V.Destroying || volume.lease?.owner !== input.jobId) {
      throw new ConflictError(
        `volume ${volume.id} is ${volume.status}, not being deleted by ${input.jobId}`,
        {
          state: volume.status,
        },
      );
    }
    const evictedCache = await this.cleanUp(volume, input.jobId);
    await this.repo.transition({
      key: { type: 'Volume', id: volume.id },
      machine: volumeMachine,
      from: V.Destroying,
      to: V.Destroyed,
      leaseOwner: input.jobId,
    });
    await this.repo.delete({ type: 'Volume', id: volume.id });
    await this.deps.jobs.succeed(input.jobId, { volumeId: volume.id, evictedCache });
    return { evictedCache };
  }

  async failDestroy(input: Step & { error: WorkflowFailure }): Promise<void> {
    const reason = causeMessage(input.error);
    await this.repo
      .transition({
        key: { type: 'Volume', id: input.volumeId },
        machine: volumeMachine,
        from: V.Destroying,
        to: V.Error,
        leaseOwner: input.jobId,
        changes: { statusReason: `delete failed: ${reason}` },
      })
      .catch(() => undefined);
    await this.deps.jobs.failFromFlow(input.jobId, input.error, 'DeleteFailed');
  }

  // ---------------------------------------------------------------- resize

  /**
   * Grows a volume (or shrinks it, only with `allowShrink`, and never below its template's virtual
   * size). The extra space is reserved on the pool first, so a grow that does not fit is refused
   * before anything changes.
   */
  async resize(id: string, sizeBytes: number, allowShrink = false): Promise<{ volume: Volume; job: Job }> {
    const volume = await this.get(id);
    if (sizeBytes === volume.sizeBytes) {
      throw new InputError(`volume ${id} is already ${sizeBytes} bytes`, { field: 'sizeBytes' });
    }
    if (sizeBytes < volume.sizeBytes) {
      if (!allowShrink) {
        throw new InputError('shrinking loses the data past the new end; pass allowShrink to do it anyway', {
          field: 'allowShrink',
        });
      }
      if (volume.templateId) {
        const template = await this.repo.get({ type: 'Template', id: volume.templateId });
        if (template?.virtualSizeBytes && sizeBytes < template.virtualSizeBytes) {
          throw new UnprocessableError(
            `a volume cannot be smaller than its template (${template.virtualSizeBytes})`,
            {
              field: 'sizeBytes',
            },
          );
        }
      }
    }
    if (volume.status !== V.Ready || !volume.storeId) {
      throw new ConflictError(`volume ${id} is ${volume.status}`, { state: volume.status });
    }
    const jobId = newId('job');
    const delta = sizeBytes - volume.sizeBytes;
    const toResizing = Write.transition({
      key: { type: 'Volume', id },
      machine: volumeMachine,
      from: V.Ready,
      to: V.Resizing,
      expectedVersion: volume.version,
      lease: { owner: jobId, ttlSeconds: VOLUME_LEASE_SECONDS },
    });
    const launch = { flow: FlowName.VolumeResize, input: { jobId, volumeId: id, sizeBytes, allowShrink } };
    const writes = [
      toResizing,
      this.deps.jobs.createWrite('volume.resize', { type: 'volume', id }, jobId, launch),
    ];
    // A grow reserves its extra space in the same write that starts the resize (and records the job).
    if (delta > 0) await this.reserveOn(volume.storeId, delta, writes);
    else await this.repo.transact(writes);
    const moved = await this.get(id);
    const { executionId } = await this.deps.workflows.start(launch.flow, jobId, launch.input);
    return { volume: moved, job: await this.deps.jobs.started(jobId, executionId) };
  }

  /** volume-resize: resize the file on a host, then record the new size (and release space on shrink). */
  async resizeOnPool(input: Step & { sizeBytes: number; allowShrink: boolean }): Promise<void> {
    const volume = await this.get(input.volumeId);
    if (volume.status === V.Ready && volume.sizeBytes === input.sizeBytes) {
      // Done by an earlier run, which may have died before it recorded the job's end.
      await this.deps.jobs.succeed(input.jobId, { volumeId: volume.id, sizeBytes: input.sizeBytes });
      return;
    }
    if (volume.status !== V.Resizing || volume.lease?.owner !== input.jobId) {
      throw new ConflictError(
        `volume ${volume.id} is ${volume.status}, not being resized by ${input.jobId}`,
        {
          state: volume.status,
        },
      );
    }
    const pool = await this.repo.require({ type: 'DataStore', id: volume.storeId ?? '' });
    const { id: hostId } = await this.deps.selectHost([pool.id]);
    await this.deps.registry.get(pool.provider).driver.resize({
      store: toStoreInfo(pool),
      object: volumeObject(volume),
      newSizeBytes: input.sizeBytes,
      allowShrink: input.allowShrink,
      ctx: this.deps.driverContext(input.jobId),
      hostId,
    });
    const delta = input.sizeBytes - volume.sizeBytes;
    // The new size and the space a shrink gives back are one write.
    await this.repo.transact([
      Write.transition({
        key: { type: 'Volume', id: volume.id },
        machine: volumeMachine,
        from: V.Resizing,
        to: V.Ready,
        leaseOwner: input.jobId,
        changes: { sizeBytes: input.sizeBytes, statusReason: undefined },
      }),
      ...(delta < 0 ? [releaseWrite(pool.id, -delta)] : []),
    ]);
    await this.deps.jobs.succeed(input.jobId, { volumeId: volume.id, sizeBytes: input.sizeBytes });
  }

  /** volume-resize, on failure: the file keeps its size (qemu-img resize is all or nothing), the volume goes back to Ready. */
  async failResize(input: Step & { sizeBytes: number; error: WorkflowFailure }): Promise<void> {
    const reason = causeMessage(input.error);
    const volume = await this.repo.get({ type: 'Volume', id: input.volumeId });
    if (volume && volume.status === V.Resizing && volume.lease?.owner === input.jobId) {
      const delta = input.sizeBytes - volume.sizeBytes;
      await this.repo.transact([
        ...(delta > 0 && volume.storeId ? [releaseWrite(volume.storeId, delta)] : []),
        Write.transition({
          key: { type: 'Volume', id: volume.id },
          machine: volumeMachine,
          from: V.Resizing,
          to: V.Ready,
          leaseOwner: input.jobId,
          changes: { statusReason: `resize to ${input.sizeBytes} failed: ${reason}` },
        }),
      ]);
    }
    await this.deps.jobs.failFromFlow(input.jobId, input.error, 'ResizeFailed');
  }

  /** Reserves more space on a store under its threshold (a resize's growth), together with `writes`. */
  private async reserveOn(storeId: string, bytes: number, writes: WriteOp[]): Promise<void> {
    const store = await this.repo.require({ type: 'DataStore', id: storeId });
    const placement = planPlacement([store], {
      zoneId: store.scope.zoneId,
      sizeBytes: bytes,
      storeId,
      ...(store.tags.length ? { tags: store.tags } : {}),
      ...(store.scope.clusterId ? { clusterId: store.scope.clusterId } : {}),
      ...(store.scope.hostId ? { hostId: store.scope.hostId } : {}),
    });
    await reserve(this.repo, placement, bytes, { with: () => writes });
  }

  // ---------------------------------------------------------------- migrate

  /**
   * Moves a volume to another primary store, keeping its id. Space is reserved on the destination
   * first; the copy runs on a host that mounts both stores (a linked clone is flattened on the way);
   * the destination is compared with the source before the volume switches over, and only then is
   * the source removed.
   */
  async migrate(id: string, storeId: string): Promise<{ volume: Volume; job: Job }> {
    const volume = await this.get(id);
    if (volume.status !== V.Ready || !volume.storeId) {
      throw new ConflictError(`volume ${id} is ${volume.status}`, { state: volume.status });
    }
    if (storeId === volume.storeId)
      throw new InputError(`volume ${id} is already on store ${storeId}`, { field: 'storeId' });
    const snapshots = await this.deps.hasSnapshots(id);
    if (snapshots.length > 0) {
      // Its snapshot layers live on the source pool; moving them along is not built yet.
      throw new NotAllowedError(
        `volume ${id} has snapshots and cannot migrate yet: ${snapshots.join(', ')}`,
        {
          dependents: snapshots,
        },
      );
    }
    if (volume.accessHostIds.length > 0) {
      throw new ConflictError(
        `volume ${id} is in use by ${volume.accessHostIds.join(', ')}; revoke access first`,
        {
          state: volume.status,
        },
      );
    }
    const placement = await this.plan(
      { name: volume.name, zoneId: volume.zoneId, storeId, tags: [] },
      volume.sizeBytes,
    );
    const jobId = newId('job');
    const launchOn = (destStoreId: string) => ({
      flow: FlowName.VolumeMigrate,
      input: { jobId, volumeId: id, destStoreId },
    });
    // The destination's space, the move into Migrating and the job are one write.
    const { store } = await reserve(this.repo, placement, volume.sizeBytes, {
      with: (destStoreId) => [
        this.deps.jobs.createWrite('volume.migrate', { type: 'volume', id }, jobId, launchOn(destStoreId)),
        Write.transition({
          key: { type: 'Volume', id },
          machine: volumeMachine,
          from: V.Ready,
          to: V.Migrating,
          expectedVersion: volume.version,
          lease: { owner: jobId, ttlSeconds: VOLUME_LEASE_SECONDS },
        }),
      ],
    });
    const moved = await this.get(id);
    const launch = launchOn(store.id);
    const { executionId } = await this.deps.workflows.start(launch.flow, jobId, launch.input);
    return { volume: moved, job: await this.deps.jobs.started(jobId, executionId) };
  }

  /** volume-migrate: copy to the destination through a host that mounts both stores, and verify. */
  async copyToStore(input: Step & { destStoreId: string }): Promise<{ path: string; via: string }> {
    const volume = await this.held(input, V.Migrating, 'migrated');
    const src = await this.repo.require({ type: 'DataStore', id: volume.storeId ?? '' });
    const dst = await this.repo.require({ type: 'DataStore', id: input.destStoreId });
    const host = await this.deps.selectHost([src.id, dst.id]).catch(() => undefined);
    if (!host)
      return { ...(await this.stageThroughImageStore(volume, src, dst, input.jobId)), via: 'image-store' };
    const driver = this.deps.registry.get(src.provider).driver;
    const ctx = this.deps.driverContext(input.jobId);
    const from = {
      store: toStoreInfo(src),
      object: volumeObject(volume),
    };
    const to = {
      store: toStoreInfo(dst),
      object: { kind: 'volume' as const, id: volume.id, format: volume.format },
    };
    if (!driver.canCopy(from, to) || !driver.compareAsync) {
      throw new UnprocessableError(
        `cannot migrate from a ${src.provider} store to a ${dst.provider} store yet`,
        {
          field: 'storeId',
        },
      );
    }
    const copied = await driver.copyAsync({ src: from, dst: to, ctx, hostId: host.id });
    const { identical } = await driver.compareAsync({
      src: from,
      dst: { ...to, object: { ...to.object, path: copied.path } },
      ctx,
      hostId: host.id,
    });
    if (!identical) {
      throw new UnprocessableError(`the copy on ${dst.id} differs from the source; the source is kept`, {
        field: 'storeId',
      });
    }
    return { path: copied.path, via: `host:${host.id}` };
  }

  /**
   * No host reaches both stores: a host of the source flattens the volume and uploads it to an image
   * store of the zone through presigned part URLs; a host of the destination pulls it, verifying the
   * sha256 the source computed. The staged object and the temporary copy are removed either way.
   */
  private async stageThroughImageStore(
    volume: Volume,
    src: DataStore,
    dst: DataStore,
    jobId: string,
  ): Promise<{ path: string }> {
    const srcDriver = this.deps.registry.get(src.provider).driver;
    const dstDriver = this.deps.registry.get(dst.provider).driver;
    if (!isStagingDriver(srcDriver) || !isStagingDriver(dstDriver)) {
      throw new UnprocessableError(
        `no host mounts both ${src.id} and ${dst.id}, and their drivers cannot stage`,
        {
          field: 'storeId',
        },
      );
    }
    const images = await allPages((cursor) =>
      this.repo.list('DataStore', {
        cursor,
        filter: { role: 'image', status: 'Up', 'scope.zoneId': volume.zoneId },
      }),
    );
    const imageStore = images.find((s) => isImageStoreDriver(this.deps.registry.get(s.provider).driver));
    if (!imageStore) {
      throw new UnprocessableError(
        `no host mounts both stores and zone ${volume.zoneId} has no image store to stage through`,
        {
          field: 'storeId',
        },
      );
    }
    const imageDriver = this.deps.registry.get(imageStore.provider).driver;
    if (!isImageStoreDriver(imageDriver)) throw new UnprocessableError(`store ${imageStore.id} cannot stage`);
    const ctx = this.deps.driverContext(jobId);
    const [hostA, hostB] = [await this.deps.selectHost([src.id]), await this.deps.selectHost([dst.id])];
    const from = {
      store: toStoreInfo(src),
      object: volumeObject(volume),
      ctx,
      hostId: hostA.id,
    };
    const staged = { kind: 'volume' as const, id: volume.id, format: 'qcow2' as const };
    const imageInfo = toStoreInfo(imageStore);
    const prepared = await srcDriver.exportAsync({ ...from, phase: 'prepare' });
    let stagedPath: string | undefined;
    try {
      // One multipart upload for the whole step: a replayed run reuses it (and presigns its parts
      // again) instead of making another that the host, still uploading, knows nothing about.
      const made = await stepOnce(this.repo, jobId, 'staging-upload', async () => {
        const u = await imageDriver.createUpload({
          store: imageInfo,
          object: staged,
          sizeBytes: prepared.sizeBytes,
          ctx,
        });
        return { uploadId: u.uploadId, path: u.path, partSizeBytes: u.partSizeBytes };
      });
      const partCount = Math.max(1, Math.ceil(prepared.sizeBytes / made.partSizeBytes));
      const upload = {
        ...made,
        parts: await imageDriver.presignUploadParts({
          store: imageInfo,
          object: { ...staged, path: made.path },
          uploadId: made.uploadId,
          sizeBytes: prepared.sizeBytes,
          partSizeBytes: made.partSizeBytes,
          partNumbers: Array.from({ length: partCount }, (_, i) => i + 1),
          ctx,
        }),
      };
      stagedPath = upload.path;
      try {
        const { parts } = await srcDriver.exportAsync({
          ...from,
          phase: 'upload',
          tempPath: prepared.tempPath,
          totalBytes: prepared.sizeBytes,
          parts: upload.parts,
        });
        // Once: a replayed run finds the upload complete and must not complete it again.
        await stepOnce(this.repo, jobId, 'staging-complete', async () => {
          await imageDriver.completeUpload({
            store: imageInfo,
            object: { ...staged, path: upload.path },
            uploadId: upload.uploadId,
            parts,
            sizeBytes: prepared.sizeBytes,
            ctx,
          });
          return true;
        });
      } catch (e) {
        await imageDriver
          .abortUpload({
            store: imageInfo,
            object: { ...staged, path: upload.path },
            uploadId: upload.uploadId,
            ctx,
          })
          .catch(() => undefined);
        await forgetStepOnce(this.repo, jobId, 'staging-upload').catch(() => undefined);
        throw e;
      }
      const { url } = await imageDriver.presignGet({
        store: imageInfo,
        object: { ...staged, path: upload.path },
        ctx,
        expiresSeconds: 6 * 3600,
      });
      const imported = await dstDriver.importAsync({
        store: toStoreInfo(dst),
        object: { kind: 'volume', id: volume.id, format: 'qcow2' },
        ctx,
        hostId: hostB.id,
        sourceUrl: url,
        sourceFormat: 'qcow2',
        expectedSha256: prepared.sha256,
      });
      return { path: imported.path };
    } finally {
      await srcDriver
        .exportAsync({ ...from, phase: 'cleanup', tempPath: prepared.tempPath })
        .catch(() => undefined);
      if (stagedPath) {
        await imageDriver
          .deleteAsync({ store: imageInfo, object: { ...staged, path: stagedPath }, ctx })
          .catch(() => undefined);
      }
    }
  }

  /** volume-migrate: switch the volume over, then remove the source copy and give back its space. */
  async finishMigrate(input: Step & { destStoreId: string; path: string; via: string }): Promise<void> {
    const volume = await this.get(input.volumeId);
    if (volume.status === V.Migrating && volume.lease?.owner === input.jobId) {
      const source = { storeId: volume.storeId!, path: volume.path, heldRef: volume.holdsTemplateRef };
      const dropsRef = Boolean(source.heldRef && volume.templateId);
      // One write switches the volume over, gives back the source's space and its template
      // reference. The source file goes after it: a crash in between leaves a file no row owns,
      // which the orphan sweep removes; never a volume pointing at a deleted file.
      await this.repo.transact([
        Write.transition({
          key: { type: 'Volume', id: volume.id },
          machine: volumeMachine,
          from: V.Migrating,
          to: V.Ready,
          leaseOwner: input.jobId,
          // The copy is flattened: it no longer depends on the source pool's template cache.
          changes: {
            storeId: input.destStoreId,
            path: input.path,
            mode: volume.templateId ? 'full' : volume.mode,
            holdsTemplateRef: false,
          },
        }),
        releaseWrite(source.storeId, volume.sizeBytes),
        ...(dropsRef ? [templateRefWrite(volume.templateId!, source.storeId, -1)] : []),
      ]);
      const pool = await this.repo.require({ type: 'DataStore', id: source.storeId });
      const { id: hostId } = await this.deps.selectHost([pool.id]);
      await this.deps.registry.get(pool.provider).driver.deleteAsync({
        store: toStoreInfo(pool),
        object: { kind: 'volume', id: volume.id, format: volume.format, path: source.path },
        ctx: this.deps.driverContext(input.jobId),
        hostId,
      });
      if (dropsRef) await this.evictIfUnused(volume.templateId!, pool.id, input.jobId);
    }
    await this.deps.jobs.succeed(input.jobId, {
      volumeId: volume.id,
      storeId: input.destStoreId,
      path: input.path,
      via: input.via,
    });
  }

  /** volume-migrate, on failure: the partial copy and its reservation go; the volume stays where it was. */
  async failMigrate(input: Step & { destStoreId: string; error: WorkflowFailure }): Promise<void> {
    const reason = causeMessage(input.error);
    const volume = await this.repo.get({ type: 'Volume', id: input.volumeId });
    if (volume && volume.status === V.Migrating && volume.lease?.owner === input.jobId) {
      const dst = await this.repo.get({ type: 'DataStore', id: input.destStoreId });
      if (dst) {
        const hostId = await this.deps
          .selectHost([dst.id])
          .then((h) => h.id)
          .catch(() => undefined);
        if (hostId) {
          await this.deps.registry
            .get(dst.provider)
            .driver.deleteAsync({
              store: toStoreInfo(dst),
              object: {
                kind: 'volume',
                id: volume.id,
                format: volume.format,
                path: `volumes/${volume.id}.qcow2`,
              },
              ctx: this.deps.driverContext(input.jobId),
              hostId,
            })
            .catch(() => undefined);
        }
      }
      // The destination's space and the move back to Ready are one write.
      await this.repo.transact([
        ...(dst ? [releaseWrite(dst.id, volume.sizeBytes)] : []),
        Write.transition({
          key: { type: 'Volume', id: volume.id },
          machine: volumeMachine,
          from: V.Migrating,
          to: V.Ready,
          leaseOwner: input.jobId,
          changes: { statusReason: `migration to ${input.destStoreId} failed: ${reason}` },
        }),
      ]);
    }
    await this.deps.jobs.failFromFlow(input.jobId, input.error, 'MigrateFailed');
  }

  // ---------------------------------------------------------------- access

  /**
   * Lets a host reach the volume (volume-access flow; the job result says how: for nfs, the file's
   * path under the share's mount). Checked at once: the volume is Ready and the host has its store.
   */
  async grantAccess(id: string, hostId: string): Promise<{ job: Job }> {
    const volume = await this.get(id);
    if (volume.status !== V.Ready) {
      throw new ConflictError(`volume ${id} is ${volume.status}`, { state: volume.status });
    }
    const host = await this.repo.get({ type: 'Host', id: hostId });
    if (!host) throw new UnprocessableError(`host ${hostId} is not registered`, { field: 'hostId' });
    if (!host.attachedStoreIds.includes(volume.storeId ?? '')) {
      throw new UnprocessableError(`host ${hostId} does not have store ${volume.storeId} attached`, {
        field: 'hostId',
      });
    }
    return this.startAccess(id, hostId, 'grant');
  }

  /** Withdraws a host's access (volume-access flow). */
  async revokeAccess(id: string, hostId: string): Promise<{ job: Job }> {
    const volume = await this.get(id);
    if (!volume.accessHostIds.includes(hostId)) {
      throw new NotFoundError(`host ${hostId} has no access to volume ${id}`, { field: 'hostId' });
    }
    return this.startAccess(id, hostId, 'revoke');
  }

  /** volume-access: the driver's grantAccess or revokeAccess, then the volume's access list. */
  async changeAccess(
    input: Step & { hostId: string; action: AccessAction },
  ): Promise<Record<string, unknown>> {
    const volume = await this.get(input.volumeId);
    const pool = await this.repo.require({ type: 'DataStore', id: volume.storeId ?? '' });
    const driver = this.deps.registry.get(pool.provider).driver;
    const host = await this.repo.get({ type: 'Host', id: input.hostId });
    const ctx = this.deps.driverContext(input.jobId);
    let result: Record<string, unknown> = { volumeId: volume.id, hostId: input.hostId, action: input.action };
    if (input.action === 'grant') {
      if (!host) throw new UnprocessableError(`host ${input.hostId} is not registered`, { field: 'hostId' });
      if (volume.status !== V.Ready) {
        throw new ConflictError(`volume ${volume.id} is ${volume.status}; access was not granted`, {
          state: volume.status,
        });
      }
      const access = await driver.grantAccess({
        store: toStoreInfo(pool),
        object: volumeObject(volume),
        host: hostInfo(host),
        hostId: host.id,
        ctx,
      });
      // Only onto a Ready volume: a take, revert or merge that holds the volume renames its files,
      // and a host must not start using it meanwhile (they refuse a volume with access, too).
      await this.repo.updateSet({ type: 'Volume', id: volume.id }, 'accessHostIds', [host.id], [], {
        field: 'status',
        oneOf: [V.Ready],
      });
      result = { ...result, uri: access.uri, ...(access.expiresAt ? { expiresAt: access.expiresAt } : {}) };
    } else {
      if (host) {
        await driver.revokeAccess({
          store: toStoreInfo(pool),
          object: volumeObject(volume),
          host: hostInfo(host),
          hostId: host.id,
          ctx,
        });
      }
      await this.repo.updateSet({ type: 'Volume', id: volume.id }, 'accessHostIds', [], [input.hostId]);
    }
    await this.deps.jobs.succeed(input.jobId, result);
    return result;
  }

  async failAccess(
    input: Step & { hostId: string; action: AccessAction; error: WorkflowFailure },
  ): Promise<void> {
    await this.deps.jobs.failFromFlow(input.jobId, input.error, 'VolumeAccessFailed');
  }

  private async startAccess(volumeId: string, hostId: string, action: AccessAction): Promise<{ job: Job }> {
    const jobId = newId('job');
    const launch = { flow: FlowName.VolumeAccess, input: { jobId, volumeId, hostId, action } };
    await this.deps.jobs.create(`volume.${action}Access`, { type: 'volume', id: volumeId }, jobId, launch);
    try {
      const { executionId } = await this.deps.workflows.start(launch.flow, jobId, launch.input);
      return { job: await this.deps.jobs.started(jobId, executionId) };
    } catch (e) {
      const reason = `could not start ${FlowName.VolumeAccess}: ${(e as Error).message}`;
      await this.deps.jobs.fail(jobId, { code: 'WorkflowStartFailed', message: reason });
      throw new UnavailableError(reason, { jobId }, { cause: e });
    }
  }

  // ---------------------------------------------------------------- helpers

  /** Removes the file, releases the reservation and the template reference. True when the cache was evicted. */
  private async cleanUp(volume: Volume, jobId: string): Promise<boolean> {
    const ctx = this.deps.driverContext(jobId);
    if (!volume.storeId) return false;
    const pool = await this.repo.get({ type: 'DataStore', id: volume.storeId });
    if (pool) {
      const provider = this.deps.registry.get(pool.provider);
      const path = volume.path ?? `volumes/${volume.id}.qcow2`;
      const { id: hostId } = await this.deps.selectHost([pool.id]);
      await provider.driver.deleteAsync({
        store: toStoreInfo(pool),
        object: { kind: 'volume', id: volume.id, format: volume.format, path },
        ctx,
        hostId,
      });
    }
    // One write gives back the space and the template reference and records that the volume no
    // longer occupies the pool, so a replay of this step finds nothing left to give back.
    const current = await this.get(volume.id);
    if (!current.storeId) return false;
    const dropsRef = Boolean(current.holdsTemplateRef && current.templateId);
    await this.repo.transact([
      ...(pool ? [releaseWrite(pool.id, current.sizeBytes)] : []),
      ...(dropsRef ? [templateRefWrite(current.templateId!, current.storeId, -1)] : []),
      Write.update({ type: 'Volume', id: current.id }, current.version, {
        storeId: undefined,
        path: undefined,
        holdsTemplateRef: false,
      }),
    ]);
    return dropsRef ? this.evictIfUnused(current.templateId!, current.storeId, jobId) : false;
  }

  /** Removes a template cache entry no volume references any more. True when it was removed. */
  private async evictIfUnused(templateId: string, storeId: string, jobId: string): Promise<boolean> {
    const key = { type: 'TemplateInStore' as const, id: templateId, storeId };
    const after = await this.repo.get(key);
    if (!after || after.refCount > 0 || after.status !== O.Ready) return false;
    try {
      await this.repo.transition({
        key,
        machine: objectInStoreMachine,
        from: O.Ready,
        to: O.Destroying,
        expectedVersion: after.version,
        lease: { owner: jobId, ttlSeconds: VOLUME_LEASE_SECONDS },
      });
    } catch (e) {
      if (e instanceof ConflictError) return false; // a new volume took a reference: keep the cache
      throw e;
    }
    const pool = await this.repo.require({ type: 'DataStore', id: storeId });
    const template = await this.repo.require({ type: 'Template', id: templateId });
    const { id: hostId } = await this.deps.selectHost([storeId]);
    await this.deps.registry.get(pool.provider).driver.deleteAsync({
      store: toStoreInfo(pool),
      object: { ...templateObject(template), format: 'qcow2', path: after.path },
      ctx: this.deps.driverContext(jobId),
      hostId,
    });
    await this.repo.transition({
      key,
      machine: objectInStoreMachine,
      from: O.Destroying,
      to: O.Destroyed,
      leaseOwner: jobId,
    });
    await this.repo.delete(key);
    return true;
  }

  private async installCache(jobId: string, template: Template, pool: DataStore): Promise<TemplateInStore> {
    const key = { type: 'TemplateInStore' as const, id: template.id, storeId: pool.id };
    try {
      const strategy = this.requireStrategy(pool);
      const copies = await this.repo.listCopies('TemplateInStore', template.id);
      const source = copies.find(
        (c) => c.storeRole === 'image' && (c.status === O.Ready || c.status === O.Copying),
      );
      if (!source)
        throw new ConflictError(`template ${template.id} has no Ready copy on an image store`, {
          field: 'templateId',
        });
      const imageStore = await this.repo.require({ type: 'DataStore', id: source.storeId });
      const imageDriver = this.deps.registry.get(imageStore.provider).driver;
      if (!isImageStoreDriver(imageDriver))
        throw new UnprocessableError(`store ${imageStore.id} cannot serve downloads`);
      const ctx = this.deps.driverContext(jobId);
      const object = { ...templateObject(template), path: source.path };
      const { url } = await imageDriver.presignGet({
        store: toStoreInfo(imageStore),
        object,
        ctx,
        expiresSeconds: 6 * 3600,
      });
      const { id: hostId } = await this.deps.selectHost([pool.id]);
      const result = await strategy.install({
        template: { store: toStoreInfo(imageStore), object },
        pool: toStoreInfo(pool),
        ctx,
        hostId,
        ...({
          sourceUrl: url,
          sourceFormat: template.format,
          ...(source.checksum?.startsWith('{sha256}') ? { expectedSha256: source.checksum.slice(8) } : {}),
        } as object),
      });
      return await this.repo.transition({
        key,
        machine: objectInStoreMachine,
        from: O.Creating,
        to: O.Ready,
        leaseOwner: jobId,
        changes: {
          path: result.path,
          sizeBytes: result.sizeBytes,
          virtualSizeBytes: result.virtualSizeBytes,
          progress: 100,
        },
      });
    } catch (e) {
      await this.repo
        .transition({
          key,
          machine: objectInStoreMachine,
          from: O.Creating,
          to: O.Failed,
          leaseOwner: jobId,
          changes: { statusReason: (e as Error).message },
        })
        .catch(() => undefined);
      throw e;
    }
  }

  private requireStrategy(pool: DataStore): TemplateInstallStrategy {
    const strategy = this.deps.installStrategy(pool.provider);
    if (!strategy)
      throw new UnprocessableError(`provider ${pool.provider} cannot install templates`, {
        field: 'storeId',
      });
    return strategy;
  }

  /** The volume, if the job `input.jobId` holds it in `status`; a ConflictError otherwise (fencing). */
  private async held(input: Step, status: V, doing: string): Promise<Volume> {
    const volume = await this.get(input.volumeId);
    if (volume.status !== status || volume.lease?.owner !== input.jobId) {
      throw new ConflictError(
        `volume ${volume.id} is ${volume.status}, not being ${doing} by ${input.jobId}`,
        {
          state: volume.status,
        },
      );
    }
    return volume;
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
    const snapshot = await this.repo.get({ type: 'Snapshot', id: snapshotId });
    if (!snapshot) {
      throw new UnprocessableError(`snapshot ${snapshotId} does not exist`, { field: 'fromSnapshotId' });
    }
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
        {
          field: 'fromSnapshotId',
          state: snapshot.status,
        },
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
        { field: 'sizeBytes' },
      );
    }
    return { sizeBytes, snapshot };
  }

  private async plan(input: CreateVolumeInput, sizeBytes: number): Promise<Placement> {
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

  private expiry(seconds: number): string {
    return new Date(this.clock.now().getTime() + seconds * 1000).toISOString();
  }
}

export type { Candidate };

/** Takes (+1) or gives back (-1) a reference on a pool's template cache entry. */
function templateRefWrite(templateId: string, storeId: string, delta: 1 | -1): WriteOp {
  return Write.counter({ type: 'TemplateInStore', id: templateId, storeId }, 'refCount', delta);
}

/** How drivers see a volume: its ref on its pool. */
export function volumeObject(volume: Volume): DataObjectRef {
  return { kind: 'volume', id: volume.id, format: volume.format, path: volume.path };
}

/** How drivers see a host that is granted or refused access. */
function hostInfo(host: Host): HostInfo {
  return {
    id: host.id,
    name: host.name,
    zoneId: host.zoneId,
    clusterId: host.clusterId,
    hypervisor: host.hypervisor,
  };
}
