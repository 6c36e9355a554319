/**
 * The steps of the store workflows (statemachines/flows/store-attach.ts and
 * store-maintenance.ts). Each step is idempotent: Step Functions may run it again after a
 * timeout or a retry, so every write is conditional and a repeat of a finished step is a no-op.
 * Only the job that holds the store's lease may move the store on (fencing).
 */
import { isDriverError } from '../../../drivers/sdk/errors.js';
import type { AttachOptions, DataStoreLifeCycle, HostInfo } from '../../../drivers/sdk/types.js';
import { ConflictError, UnavailableError } from '../errors.js';
import type { DataStore, Host } from '../model.js';
import { DataStoreStatus as DS, HostStatus } from '../model.js';
import type { Repository } from '../ports.js';
import { dataStoreMachine } from '../state-machines.js';
import { type StoreDeps, toStoreInfo } from './datastore-service.js';
import { causeMessage, type WorkflowFailure } from './job-service.js';

export interface HostResult {
  hostId: string;
  ok: boolean;
  error?: { code: string; message: string };
}

export interface AttachInput {
  jobId: string;
  storeId: string;
  /** `initialize`: a new store; `attach`: connect hosts (given, or all in scope) to an existing store. */
  mode: 'initialize' | 'attach';
  hostIds?: string[];
}

export interface MaintenanceInput {
  jobId: string;
  storeId: string;
  action: 'enter' | 'cancel';
}

/** Thrown while objects on the store are mid-operation; the workflow retries it with backoff. */
export class StoreBusyError extends UnavailableError {}

const BUSY_STATES = new Set([
  'Creating',
  'Copying',
  'Destroying',
  'Resizing',
  'Snapshotting',
  'RevertSnapshotting',
  'Migrating',
  'BackingUp',
]);

export class StoreFlows {
  constructor(private readonly deps: StoreDeps) {}

  private get repo(): Repository {
    return this.deps.repo;
  }

  /** store-attach, step 1: initialize the store through its lifecycle and list the hosts to attach. */
  async prepareAttach(input: AttachInput): Promise<{ hostIds: string[] }> {
    let store = await this.deps.repo.require({ type: 'DataStore', id: input.storeId });
    const provider = this.deps.registry.get(store.provider);
    if (input.mode === 'initialize') {
      if (store.status !== DS.Initializing || store.lease?.owner !== input.jobId) {
        throw new ConflictError(
          `store ${store.id} is ${store.status}, not being initialized by ${input.jobId}`,
          {
            state: store.status,
          },
        );
      }
      const result = await provider.lifecycle.initialize({
        store: toStoreInfo(store),
        ctx: this.deps.driverContext(input.jobId),
      });
      const changes: Partial<DataStore> = {};
      if (result.details) changes.details = result.details;
      if (result.capacityBytes && store.capacityBytes === 0) changes.capacityBytes = result.capacityBytes;
      if (Object.keys(changes).length)
        store = await this.repo.update({ type: 'DataStore', id: store.id }, store.version, changes);
      await this.deps.jobs.progress(input.jobId, 10, { step: 'initialized' });
    } else if (store.status !== DS.Up && store.status !== DS.Disabled) {
      // A store in maintenance (or worse) gets its hosts back when maintenance is cancelled.
      throw new ConflictError(
        `store ${store.id} is ${store.status}; hosts attach only to Up or Disabled stores`,
        {
          state: store.status,
        },
      );
    }
    if (!provider.driver.getCapabilities().needsHost) return { hostIds: [] };
    const inScope = await this.hostsInScope(store);
    const wanted = input.hostIds ? inScope.filter((h) => input.hostIds!.includes(h.id)) : inScope;
    return { hostIds: wanted.filter((h) => h.status === HostStatus.Up).map((h) => h.id) };
  }

  /** store-attach, per host: connect the host to the store, then record the attachment. */
  async attachHost(input: { jobId: string; storeId: string; hostId: string }): Promise<HostResult> {
    const store = await this.repo.require({ type: 'DataStore', id: input.storeId });
    const host = await this.repo.require({ type: 'Host', id: input.hostId });
    return this.onHost(input.jobId, host, async () => {
      const options = this.attachOptions(store, host, input.jobId);
      const lifecycle = this.deps.registry.get(store.provider).lifecycle;
      await scopeAttach(lifecycle, store)(options);
      await this.deps.hosts.attach(host.id, store.id);
    });
  }

  /** store-attach, last step: the store is Up when at least one host attached (or none were needed). */
  async finishAttach(
    input: AttachInput & { hostIds: string[]; results: HostResult[] },
  ): Promise<Record<string, unknown>> {
    const attached = input.results.filter((r) => r.ok).map((r) => r.hostId);
    const failed = input.results.filter((r) => !r.ok);
    const result = { storeId: input.storeId, attachedHosts: attached, failedHosts: failed };
    if (input.mode === 'initialize') {
      if (input.hostIds.length > 0 && attached.length === 0) {
        const reason = `no host could attach the store: ${failed.map((f) => `${f.hostId}: ${f.error?.message}`).join('; ')}`;
        await this.moveStore(input.storeId, input.jobId, DS.Initializing, DS.Error, reason);
        await this.deps.jobs.fail(input.jobId, { code: 'AttachFailed', message: reason });
        return result;
      }
      await this.moveStore(input.storeId, input.jobId, DS.Initializing, DS.Up);
    }
    await this.deps.jobs.succeed(input.jobId, result);
    return result;
  }

  /** store-attach, on an unexpected error: the new store goes to Error with the reason; the job fails. */
  async failAttach(input: AttachInput & { error: WorkflowFailure }): Promise<void> {
    const message = causeMessage(input.error);
    if (input.mode === 'initialize') {
      await this.moveStore(input.storeId, input.jobId, DS.Initializing, DS.Error, message).catch(
        ignoreConflict,
      );
    }
    await this.deps.jobs
      .fail(input.jobId, { code: input.error.Error ?? 'AttachFailed', message })
      .catch(ignoreConflict);
  }

  /** store-maintenance, step 1: the hosts to visit (attached ones to enter; in-scope Up ones to cancel). */
  async beginMaintenance(input: MaintenanceInput): Promise<{ hostIds: string[] }> {
    const store = await this.repo.require({ type: 'DataStore', id: input.storeId });
    const expected = input.action === 'enter' ? DS.PrepareForMaintenance : DS.CancelMaintenance;
    if (store.status !== expected || store.lease?.owner !== input.jobId) {
      throw new ConflictError(`store ${store.id} is ${store.status}, not in ${expected} for ${input.jobId}`, {
        state: store.status,
      });
    }
    await this.deps.jobs.progress(input.jobId, 5, { step: 'begun' });
    const provider = this.deps.registry.get(store.provider);
    if (!provider.driver.getCapabilities().needsHost) return { hostIds: [] };
    const hosts = await this.hostsInScope(store);
    const ids =
      input.action === 'enter'
        ? hosts.filter((h) => h.attachedStoreIds.includes(store.id)).map((h) => h.id)
        : hosts.filter((h) => h.status === HostStatus.Up).map((h) => h.id);
    return { hostIds: ids };
  }

  /** store-maintenance (enter): waits until nothing on the store is mid-operation. */
  async checkStoreIdle(input: MaintenanceInput): Promise<{ idle: true }> {
    let cursor: string | undefined;
    do {
      const page = await this.repo.listInStore(input.storeId, { cursor, limit: 100 });
      const busy = page.items.filter((row) => BUSY_STATES.has(String((row as { status?: string }).status)));
      if (busy.length > 0) {
        throw new StoreBusyError(`store ${input.storeId} has ${busy.length} object(s) mid-operation`, {
          storeId: input.storeId,
        });
      }
      cursor = page.cursor;
    } while (cursor);
    return { idle: true };
  }

  /** store-maintenance, per host: detach (enter) or re-attach (cancel) through the lifecycle. */
  async maintainHost(input: MaintenanceInput & { hostId: string }): Promise<HostResult> {
    const store = await this.repo.require({ type: 'DataStore', id: input.storeId });
    const host = await this.repo.require({ type: 'Host', id: input.hostId });
    const lifecycle = this.deps.registry.get(store.provider).lifecycle;
    return this.onHost(input.jobId, host, async () => {
      const options = this.attachOptions(store, host, input.jobId);
      if (input.action === 'enter') {
        await lifecycle.maintain(options);
        await this.deps.hosts.detach(host.id, store.id);
      } else {
        await lifecycle.cancelMaintain(options);
        await this.deps.hosts.attach(host.id, store.id);
      }
    });
  }

  /** store-maintenance, last step. Entering always completes (a host that failed to detach is listed);
   *  cancelling needs at least one host back when hosts are needed, else ErrorInMaintenance. */
  async completeMaintenance(
    input: MaintenanceInput & { hostIds: string[]; results: HostResult[] },
  ): Promise<Record<string, unknown>> {
    const ok = input.results.filter((r) => r.ok).map((r) => r.hostId);
    const failed = input.results.filter((r) => !r.ok);
    const result = { storeId: input.storeId, action: input.action, hosts: ok, failedHosts: failed };
    if (input.action === 'enter') {
      await this.moveStore(input.storeId, input.jobId, DS.PrepareForMaintenance, DS.Maintenance);
    } else if (input.hostIds.length > 0 && ok.length === 0) {
      const reason = `no host could re-attach: ${failed.map((f) => `${f.hostId}: ${f.error?.message}`).join('; ')}`;
      await this.moveStore(input.storeId, input.jobId, DS.CancelMaintenance, DS.ErrorInMaintenance, reason);
      await this.deps.jobs.fail(input.jobId, { code: 'CancelMaintenanceFailed', message: reason });
      return result;
    } else {
      await this.moveStore(input.storeId, input.jobId, DS.CancelMaintenance, DS.Up);
    }
    await this.deps.jobs.succeed(input.jobId, result);
    return result;
  }

  /** store-maintenance, on failure: ErrorInMaintenance, from which the operator can retry either way. */
  async failMaintenance(input: MaintenanceInput & { error: WorkflowFailure }): Promise<void> {
    const message = causeMessage(input.error);
    const from = input.action === 'enter' ? DS.PrepareForMaintenance : DS.CancelMaintenance;
    await this.moveStore(input.storeId, input.jobId, from, DS.ErrorInMaintenance, message).catch(
      ignoreConflict,
    );
    await this.deps.jobs
      .fail(input.jobId, { code: input.error.Error ?? 'MaintenanceFailed', message })
      .catch(ignoreConflict);
  }

  private async moveStore(storeId: string, jobId: string, from: DS, to: DS, reason?: string): Promise<void> {
    const store = await this.repo.require({ type: 'DataStore', id: storeId });
    if (store.status === to && !store.lease) return; // already done by an earlier run of this step
    await this.repo.transition({
      key: { type: 'DataStore', id: storeId },
      machine: dataStoreMachine,
      from,
      to,
      leaseOwner: jobId,
      changes: { statusReason: reason },
    });
  }

  /**
   * Runs one host's part. Driver failures that retrying cannot fix become a failed HostResult (the
   * flow carries on with the other hosts); transient ones are thrown so the workflow retries them.
   */
  private async onHost(jobId: string, host: Host, work: () => Promise<void>): Promise<HostResult> {
    try {
      await work();
      return { hostId: host.id, ok: true };
    } catch (e) {
      if (isDriverError(e) && !e.retryable) {
        return { hostId: host.id, ok: false, error: { code: e.code, message: e.message } };
      }
      throw e;
    } finally {
      this.deps.jobs.progress(jobId, 50, { lastHost: host.id }).catch(() => undefined);
    }
  }

  private attachOptions(store: DataStore, host: Host, jobId: string): AttachOptions {
    return { store: toStoreInfo(store), hosts: [toHostInfo(host)], ctx: this.deps.driverContext(jobId) };
  }

  private async hostsInScope(store: DataStore): Promise<Host[]> {
    const { scope } = store;
    if (scope.type === 'host') {
      const host = await this.repo.get({ type: 'Host', id: scope.hostId ?? '' });
      return host ? [host] : [];
    }
    const hosts = await this.deps.hosts.all({ zoneId: scope.zoneId });
    return scope.type === 'cluster' ? hosts.filter((h) => h.clusterId === scope.clusterId) : hosts;
  }
}

function scopeAttach(lifecycle: DataStoreLifeCycle, store: DataStore): (o: AttachOptions) => Promise<void> {
  switch (store.scope.type) {
    case 'zone':
      return (o) => lifecycle.attachZone(o);
    case 'cluster':
      return (o) => lifecycle.attachCluster(o);
    case 'host':
      return (o) => lifecycle.attachHost(o);
  }
}

export function toHostInfo(host: Host): HostInfo {
  return {
    id: host.id,
    name: host.name,
    zoneId: host.zoneId,
    clusterId: host.clusterId,
    hypervisor: host.hypervisor,
  };
}

function ignoreConflict(e: unknown): void {
  if (!(e instanceof ConflictError)) throw e;
}
