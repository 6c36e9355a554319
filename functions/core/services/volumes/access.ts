/**
 * volume-access (statemachines/flows/volume-access.ts): a host is let reach a volume (the driver's
 * grantAccess: for nfs the file's path under the share's mount; for a managed array, an ACL entry)
 * or loses that (revokeAccess). The volume's access list changes only after the driver did.
 */
import { ConflictError, NotFoundError, UnavailableError, UnprocessableError } from '../../errors.js';
import { newId } from '../../ids.js';
import type { Job, Volume } from '../../model.js';
import { VolumeStatus as V } from '../../model.js';
import type { Repository } from '../../ports.js';
import { FlowName } from '../../ports.js';
import { toStoreInfo } from '../datastore-service.js';
import type { WorkflowFailure } from '../job-service.js';
import { toHostInfo } from '../store-flows.js';
import { launch, type Step, type VolumeDeps, volumeObject } from './common.js';

/** What a volume-access job does. */
export type AccessAction = 'grant' | 'revoke';

// A Hydrating volume's backing is a unix socket on the host serving its export: only that host.
function servesHydration(volume: Volume, hostId: string): boolean {
  return volume.status === V.Hydrating && volume.hydrationHostId === hostId;
}

export class VolumeAccessFlow {
  constructor(private readonly deps: VolumeDeps) {}

  private get repo(): Repository {
    return this.deps.repo;
  }

  /**
   * Lets a host reach the volume (volume-access flow; the job result says how: for nfs, the file's
   * path under the share's mount). Checked at once: the volume is Ready and the host has its store.
   */
  async grant(id: string, hostId: string): Promise<{ job: Job }> {
    const volume = await this.repo.require({ type: 'Volume', id });
    if (volume.status !== V.Ready && !servesHydration(volume, hostId)) {
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
  async revoke(id: string, hostId: string): Promise<{ job: Job }> {
    const volume = await this.repo.require({ type: 'Volume', id });
    if (!volume.accessHostIds.includes(hostId)) {
      throw new NotFoundError(`host ${hostId} has no access to volume ${id}`, { field: 'hostId' });
    }
    return this.startAccess(id, hostId, 'revoke');
  }

  /** volume-access: the driver's grantAccess or revokeAccess, then the volume's access list. */
  async changeAccess(
    input: Step & { hostId: string; action: AccessAction },
  ): Promise<Record<string, unknown>> {
    const volume = await this.repo.require({ type: 'Volume', id: input.volumeId });
    const pool = await this.repo.require({ type: 'DataStore', id: volume.storeId ?? '' });
    const driver = this.deps.registry.get(pool.provider).driver;
    const host = await this.repo.get({ type: 'Host', id: input.hostId });
    const ctx = this.deps.driverContext(input.jobId);
    let result: Record<string, unknown> = { volumeId: volume.id, hostId: input.hostId, action: input.action };
    if (input.action === 'grant') {
      if (!host) throw new UnprocessableError(`host ${input.hostId} is not registered`, { field: 'hostId' });
      if (volume.status !== V.Ready && !servesHydration(volume, host.id)) {
        throw new ConflictError(`volume ${volume.id} is ${volume.status}; access was not granted`, {
          state: volume.status,
        });
      }
      const access = await driver.grantAccess({
        store: toStoreInfo(pool),
        object: volumeObject(volume),
        host: toHostInfo(host),
        hostId: host.id,
        ctx,
      });
      // Only onto a Ready volume: a take, revert or merge that holds the volume renames its files,
      // and a host must not start using it meanwhile (they refuse a volume with access, too).
      await this.repo.updateSet({ type: 'Volume', id: volume.id }, 'accessHostIds', [host.id], [], {
        field: 'status',
        oneOf: [V.Ready, V.Hydrating],
      });
      result = { ...result, uri: access.uri, ...(access.expiresAt ? { expiresAt: access.expiresAt } : {}) };
    } else {
      if (host) {
        await driver.revokeAccess({
          store: toStoreInfo(pool),
          object: volumeObject(volume),
          host: toHostInfo(host),
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
    const l = { flow: FlowName.VolumeAccess, input: { jobId, volumeId, hostId, action } };
    await this.deps.jobs.create(`volume.${action}Access`, { type: 'volume', id: volumeId }, jobId, l);
    try {
      return { job: await launch(this.deps, jobId, l) };
    } catch (e) {
      const reason = `could not start ${FlowName.VolumeAccess}: ${(e as Error).message}`;
      await this.deps.jobs.fail(jobId, { code: 'WorkflowStartFailed', message: reason });
      throw new UnavailableError(reason, { jobId }, { cause: e });
    }
  }
}
