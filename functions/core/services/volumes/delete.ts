/**
 * volume-delete (statemachines/flows/volume-delete.ts): the volume held in Destroying with its job
 * in one write; one step removes the file, gives back the space and the template reference, and
 * forgets the row. A run that died part-way is finished by the next one.
 */
import { ConflictError, NotAllowedError } from '../../errors.js';
import { newId } from '../../ids.js';
import type { Job } from '../../model.js';
import { VolumeStatus as V } from '../../model.js';
import { FlowName, Write } from '../../ports.js';
import { volumeMachine } from '../../state-machines.js';
import { causeMessage, type WorkflowFailure } from '../job-service.js';
import { launch, type Step, templateHoldRelease, type VolumeDeps, volumeMove } from './common.js';
import { removeFromPool } from './footprint.js';
import type { TemplateCache } from './template-cache.js';

export class VolumeDeleteFlow {
  constructor(
    private readonly deps: VolumeDeps,
    private readonly cache: TemplateCache,
  ) {}

  /** Refused while the volume has snapshots or a host has access; otherwise held and started. */
  async start(id: string): Promise<{ job: Job }> {
    const volume = await this.deps.repo.require({ type: 'Volume', id });
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
    const l = { flow: FlowName.VolumeDelete, input: { jobId, volumeId: id } };
    await this.deps.repo.transact([
      volumeMove(volume, V.Destroying, jobId, [V.Ready, V.Error, V.Allocated]),
      this.deps.jobs.createWrite('volume.delete', { type: 'volume', id }, jobId, l),
    ]);
    return { job: await launch(this.deps, jobId, l) };
  }

  /** Step: remove the file, release the space and the template reference, forget the row. */
  async destroy(input: Step): Promise<{ evictedCache: boolean }> {
    const volume = await this.deps.repo.get({ type: 'Volume', id: input.volumeId });
    if (!volume || volume.status === V.Destroyed) {
      // An earlier run got this far and died before it forgot the row or recorded the job's end.
      if (volume) await this.deps.repo.delete({ type: 'Volume', id: volume.id });
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
    const evictedCache = await removeFromPool(this.deps, this.cache, volume, input.jobId);
    // A volume whose create never reached its template reference (recovered to Error) still
    // holds the template; it gives the hold back as it goes.
    const current = await this.deps.repo.require({ type: 'Volume', id: volume.id });
    await this.deps.repo.transact([
      Write.transition({
        key: { type: 'Volume', id: volume.id },
        machine: volumeMachine,
        from: V.Destroying,
        to: V.Destroyed,
        leaseOwner: input.jobId,
        changes: { holdsTemplate: false },
      }),
      ...templateHoldRelease(current),
    ]);
    await this.deps.repo.delete({ type: 'Volume', id: volume.id });
    await this.deps.jobs.succeed(input.jobId, { volumeId: volume.id, evictedCache });
    return { evictedCache };
  }

  /** Compensation: the volume is Error with the reason (deleting it again retries what is left). */
  async failDestroy(input: Step & { error: WorkflowFailure }): Promise<void> {
    const reason = causeMessage(input.error);
    await this.deps.repo
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
}
