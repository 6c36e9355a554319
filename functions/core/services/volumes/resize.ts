/**
 * volume-resize (statemachines/flows/volume-resize.ts). A grow reserves its extra space in the same
 * write that holds the volume in Resizing and records the job, so a grow that does not fit is
 * refused before anything changes; a shrink gives its space back with the new size.
 */
import { planPlacement, releaseWrite, reserve } from '../../allocator.js';
import { ConflictError, InputError, UnprocessableError } from '../../errors.js';
import { newId } from '../../ids.js';
import type { Job, Volume } from '../../model.js';
import { VolumeStatus as V } from '../../model.js';
import type { WriteOp } from '../../ports.js';
import { FlowName, Write } from '../../ports.js';
import { volumeMachine } from '../../state-machines.js';
import { toStoreInfo } from '../datastore-service.js';
import { causeMessage, type WorkflowFailure } from '../job-service.js';
import { launch, type Step, type VolumeDeps, volumeMove, volumeObject } from './common.js';

export class VolumeResizeFlow {
  constructor(private readonly deps: VolumeDeps) {}

  /**
   * Grows a volume (or shrinks it, only with `allowShrink`, and never below its template's virtual
   * size).
   */
  async start(id: string, sizeBytes: number, allowShrink = false): Promise<{ volume: Volume; job: Job }> {
    const repo = this.deps.repo;
    const volume = await repo.require({ type: 'Volume', id });
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
        const template = await repo.get({ type: 'Template', id: volume.templateId });
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
    const l = { flow: FlowName.VolumeResize, input: { jobId, volumeId: id, sizeBytes, allowShrink } };
    const writes = [
      volumeMove(volume, V.Resizing, jobId, V.Ready),
      this.deps.jobs.createWrite('volume.resize', { type: 'volume', id }, jobId, l),
    ];
    if (delta > 0) await this.reserveOn(volume.storeId, delta, writes);
    else await repo.transact(writes);
    const moved = await repo.require({ type: 'Volume', id });
    return { volume: moved, job: await launch(this.deps, jobId, l) };
  }

  /** Step: resize the file on a host, then record the new size (and release space on shrink). */
  async resizeOnPool(input: Step & { sizeBytes: number; allowShrink: boolean }): Promise<void> {
    const repo = this.deps.repo;
    const volume = await repo.require({ type: 'Volume', id: input.volumeId });
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
    const pool = await repo.require({ type: 'DataStore', id: volume.storeId ?? '' });
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
    await repo.transact([
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

  /**
   * Compensation: the file keeps its size (qemu-img resize is all or nothing); the volume goes back
   * to Ready and a grow's reservation is given back, in one write.
   */
  async failResize(input: Step & { sizeBytes: number; error: WorkflowFailure }): Promise<void> {
    const reason = causeMessage(input.error);
    const volume = await this.deps.repo.get({ type: 'Volume', id: input.volumeId });
    if (volume && volume.status === V.Resizing && volume.lease?.owner === input.jobId) {
      const delta = input.sizeBytes - volume.sizeBytes;
      await this.deps.repo.transact([
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
    const store = await this.deps.repo.require({ type: 'DataStore', id: storeId });
    const placement = planPlacement([store], {
      zoneId: store.scope.zoneId,
      sizeBytes: bytes,
      storeId,
      ...(store.tags.length ? { tags: store.tags } : {}),
      ...(store.scope.clusterId ? { clusterId: store.scope.clusterId } : {}),
      ...(store.scope.hostId ? { hostId: store.scope.hostId } : {}),
    });
    await reserve(this.deps.repo, placement, bytes, { with: () => writes });
  }
}
