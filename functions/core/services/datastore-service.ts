/**
 * DataStoreService: adding, listing, enabling, maintaining and deleting data stores. Operations
 * that reach hosts run as workflows (store-attach, store-maintenance); this service makes the
 * synchronous first move (a conditional state change that decides races at once), records the job
 * and starts the workflow, compensating when the start fails.
 */
import type { ZodError } from 'zod';
import type { ProviderRegistry } from '../../../drivers/sdk/registry.js';
import type {
  DataStoreInfo,
  DataStoreProvider,
  DataStoreRole,
  DataStoreScope,
  StoredObject,
} from '../../../drivers/sdk/types.js';
import {
  ConflictError,
  InputError,
  NotAllowedError,
  NotFoundError,
  UnavailableError,
  UnprocessableError,
} from '../errors.js';
import { newId } from '../ids.js';
import type { DataStore, EntityMap, EntityType, Host, Job } from '../model.js';
import { DataStoreStatus as DS } from '../model.js';
import type { Clock, FlowName, ListOptions, Page, Repository, WorkflowPort } from '../ports.js';
import { FlowName as Flow, systemClock, Write } from '../ports.js';
import { dataStoreMachine } from '../state-machines.js';
import type { HostService } from './host-service.js';
import type { JobService, WorkflowFailure } from './job-service.js';

/** How long a store may sit in a transitional state before the reconciler recovers it. */
export const STORE_LEASE_SECONDS = 30 * 60;

export interface AddStoreInput {
  name: string;
  provider: string;
  role: DataStoreRole;
  scope: DataStoreScope;
  capacityBytes?: number;
  overprovisioning?: number;
  disableThreshold?: number;
  tags?: string[];
  details: Record<string, string>;
}

export interface UpdateStoreInput {
  name?: string;
  tags?: string[];
  capacityBytes?: number;
  overprovisioning?: number;
  disableThreshold?: number;
  status?: 'Up' | 'Disabled';
}

export interface StoreFilter {
  zoneId?: string;
  role?: string;
  status?: string;
  provider?: string;
}

/** An object found on a store, with the row that owns it when Strata knows one. */
export interface StoreObject extends StoredObject {
  owner?: { type: EntityType; id: string };
}

/** Objects an inventory job keeps in its result (a job item must stay well under 400 KB). */
export const INVENTORY_LIMIT = 1000;

/** The result of a store-inventory job. */
export interface StoreInventory {
  storeId: string;
  /** Objects found; `objects` holds the first {@link INVENTORY_LIMIT}. */
  total: number;
  /** How many of them a row owns. */
  owned: number;
  truncated: boolean;
  objects: StoreObject[];
}

export interface StoreDeps {
  repo: Repository;
  registry: ProviderRegistry;
  workflows: WorkflowPort;
  jobs: JobService;
  hosts: HostService;
  /** Builds the context a driver call needs (host invoker, logger, services) for one job. */
  /**
   * The context of a driver call for one job. `progressRange`: the host's progress reports move the
   * job's progress within that range (a step of a longer flow).
   */
  driverContext: (
    jobId: string,
    options?: DriverContextOptions,
  ) => import('../../../drivers/sdk/types.js').DriverContext;
  /** Picks a host that has the given stores attached. */
  selectHost: (storeIds: string[]) => Promise<{ id: string }>;
  clock?: Clock;
}

/** Options of a driver context: see StoreDeps.driverContext. */
export interface DriverContextOptions {
  progressRange?: readonly [number, number];
}

export function toStoreInfo(store: DataStore): DataStoreInfo {
  return {
    id: store.id,
    name: store.name,
    provider: store.provider,
    role: store.role,
    scope: store.scope,
    details: store.details,
    capacityBytes: store.capacityBytes,
  };
}

export class DataStoreService {
  private readonly clock: Clock;

  constructor(private readonly deps: StoreDeps) {
    this.clock = deps.clock ?? systemClock;
  }

  get(id: string): Promise<DataStore> {
    return this.deps.repo.require({ type: 'DataStore', id });
  }

  list(filter: StoreFilter = {}, options: ListOptions = {}): Promise<Page<DataStore>> {
    const where: Record<string, string> = {};
    if (filter.zoneId) where['scope.zoneId'] = filter.zoneId;
    if (filter.role) where.role = filter.role;
    if (filter.status) where.status = filter.status;
    if (filter.provider) where.provider = filter.provider;
    return this.deps.repo.list('DataStore', { ...options, filter: where });
  }

  /** Validates and records a new store, then starts the store-attach workflow. */
  async add(input: AddStoreInput): Promise<{ store: DataStore; job: Job }> {
    const { registry, repo, jobs } = this.deps;
    if (!registry.has(input.provider)) {
      throw new InputError(
        `unknown provider '${input.provider}'; known: ${registry
          .list()
          .map((p) => p.name)
          .join(', ')}`,
        { field: 'provider' },
      );
    }
    const provider = registry.get(input.provider);
    if (!provider.roles.includes(input.role)) {
      throw new InputError(`provider ${provider.name} cannot serve role ${input.role}`, { field: 'role' });
    }
    const details = provider.detailsSchema.safeParse(input.details);
    if (!details.success) throw detailsError(details.error);
    const refused = provider.admit?.(details.data);
    if (refused) {
      throw new UnprocessableError(`details.${refused.field}: ${refused.message}`, {
        field: `details.${refused.field}`,
      });
    }
    await this.validateScope(input.role, input.scope);
    await this.refuseOverlap(provider, input.scope, details.data);

    const jobId = newId('job');
    const id = newId('store');
    const launch = { flow: Flow.StoreAttach, input: { jobId, storeId: id, mode: 'initialize' } };
    // The store (Initializing, leased by the job) and the job are one write.
    await repo.transact([
      Write.create('DataStore', {
        id,
        name: input.name,
        provider: input.provider,
        role: input.role,
        scope: input.scope,
        details: details.data,
        capacityBytes: input.capacityBytes ?? 0,
        overprovisioning: input.overprovisioning ?? (input.role === 'primary' ? 2 : 1),
        disableThreshold: input.disableThreshold ?? 0.85,
        tags: input.tags ?? [],
        status: DS.Initializing,
        allocatedBytes: 0,
        usedBytes: 0,
        lease: { owner: jobId, expiresAt: this.leaseExpiry() },
      }),
      jobs.createWrite('store.add', { type: 'store', id }, jobId, launch),
    ]);
    const [store, job] = [await repo.require({ type: 'DataStore', id }), await jobs.get(jobId)];
    return this.startFlow(
      Flow.StoreAttach,
      job,
      { storeId: id, mode: 'initialize' },
      store,
      async (reason) => {
        await repo.transition({
          key: { type: 'DataStore', id },
          machine: dataStoreMachine,
          from: DS.Initializing,
          to: DS.Error,
          changes: { statusReason: reason },
        });
      },
    );
  }

  /**
   * A host joined: attach it to every store whose scope covers it and that reaches storage through
   * hosts, one store-attach job per store. Stores in maintenance are attached when it is cancelled.
   */
  async attachJoiningHost(host: Host): Promise<Job[]> {
    const { jobs } = this.deps;
    const stores: DataStore[] = [];
    let cursor: string | undefined;
    do {
      const page = await this.list({ zoneId: host.zoneId }, { cursor, limit: 100 });
      stores.push(...page.items);
      cursor = page.cursor;
    } while (cursor);
    const covering = stores.filter(
      (s) =>
        (s.status === DS.Up || s.status === DS.Disabled) &&
        this.deps.registry.has(s.provider) &&
        this.deps.registry.get(s.provider).driver.getCapabilities().needsHost &&
        (s.scope.type === 'zone' ||
          (s.scope.type === 'cluster' && s.scope.clusterId === host.clusterId) ||
          (s.scope.type === 'host' && s.scope.hostId === host.id)),
    );
    const started: Job[] = [];
    for (const store of covering) {
      const job = await jobs.create('store.attachHost', { type: 'store', id: store.id });
      const { job: running } = await this.startFlow(
        Flow.StoreAttach,
        job,
        { storeId: store.id, mode: 'attach', hostIds: [host.id] },
        store,
        async () => undefined,
      ).catch(async () => ({ job: await jobs.get(job.id) }));
      started.push(running);
    }
    return started;
  }

  /** Changes settings; `status` Up/Disabled enables or disables the store through its lifecycle. */
  async update(id: string, input: UpdateStoreInput): Promise<DataStore> {
    const { repo, registry } = this.deps;
    let store = await this.get(id);
    const { status, ...fields } = input;
    if (Object.keys(fields).length > 0) {
      store = await repo.update({ type: 'DataStore', id }, store.version, fields);
    }
    if (status && status !== store.status) {
      const lifecycle = registry.get(store.provider).lifecycle;
      const ctx = this.deps.driverContext(newId('op'));
      if (status === DS.Disabled) await lifecycle.disable({ store: toStoreInfo(store), ctx });
      else await lifecycle.enable({ store: toStoreInfo(store), ctx });
      store = await repo.transition({
        key: { type: 'DataStore', id },
        machine: dataStoreMachine,
        from: status === DS.Disabled ? DS.Up : DS.Disabled,
        to: status,
        expectedVersion: store.version,
      });
    }
    return store;
  }

  /** Enters maintenance: no new work is placed on the store, and hosts detach from it. */
  async enterMaintenance(id: string): Promise<{ store: DataStore; job: Job }> {
    return this.maintenance(id, 'enter');
  }

  /** Leaves maintenance: hosts in scope attach again and the store goes back Up. */
  async cancelMaintenance(id: string): Promise<{ store: DataStore; job: Job }> {
    return this.maintenance(id, 'cancel');
  }

  /** Deletes a store that holds nothing. The operator's data on the storage itself is left alone. */
  async delete(id: string): Promise<void> {
    const { repo, registry, hosts } = this.deps;
    const store = await this.get(id);
    await this.refuseIfInUse(store);
    const owner = newId('op');
    const deleting = await repo.transition({
      key: { type: 'DataStore', id },
      machine: dataStoreMachine,
      from: [DS.Up, DS.Disabled, DS.Maintenance, DS.ErrorInMaintenance, DS.Error],
      to: DS.Deleting,
      expectedVersion: store.version,
      lease: { owner, ttlSeconds: STORE_LEASE_SECONDS },
    });
    // Placement only reserves space on stores that are Up, so once Deleting nothing new can land;
    // look again to close the window between the first check and the transition.
    try {
      await this.refuseIfInUse(deleting);
      await registry.get(store.provider).lifecycle.deleteDataStore({
        store: toStoreInfo(store),
        ctx: this.deps.driverContext(owner),
      });
      for (const host of await hosts.all({ zoneId: store.scope.zoneId })) {
        if (host.attachedStoreIds.includes(id)) await hosts.detach(host.id, id);
      }
    } catch (e) {
      const back = e instanceof NotAllowedError && store.status !== DS.Error ? store.status : DS.Error;
      await repo.transition({
        key: { type: 'DataStore', id },
        machine: dataStoreMachine,
        from: DS.Deleting,
        to: back,
        leaseOwner: owner,
        changes: back === DS.Error ? { statusReason: `delete failed: ${(e as Error).message}` } : {},
      });
      throw e;
    }
    await repo.delete({ type: 'DataStore', id });
  }

  /** What the storage holds, each object matched with the row that owns it when there is one. */
  /**
   * Starts the store-inventory flow: what the storage holds, matched with the rows that own it. A
   * job, because host-mounted stores are listed through a host.
   */
  async inventory(id: string): Promise<{ job: Job }> {
    const store = await this.get(id);
    const jobId = newId('job');
    await this.deps.jobs.create('store.inventory', { type: 'store', id: store.id }, jobId);
    try {
      const { executionId } = await this.deps.workflows.start(Flow.StoreInventory, jobId, {
        jobId,
        storeId: store.id,
      });
      return { job: await this.deps.jobs.started(jobId, executionId) };
    } catch (e) {
      const reason = `could not start ${Flow.StoreInventory}: ${(e as Error).message}`;
      await this.deps.jobs.fail(jobId, { code: 'WorkflowStartFailed', message: reason });
      throw new UnavailableError(reason, { jobId }, { cause: e });
    }
  }

  /** store-inventory: lists the store (at most {@link INVENTORY_LIMIT} objects in the job result). */
  async inventoryStore(input: { jobId: string; storeId: string }): Promise<StoreInventory> {
    const objects = await this.listObjects(input.storeId, input.jobId);
    const inventory: StoreInventory = {
      storeId: input.storeId,
      total: objects.length,
      owned: objects.filter((o) => o.owner).length,
      truncated: objects.length > INVENTORY_LIMIT,
      objects: objects.slice(0, INVENTORY_LIMIT),
    };
    await this.deps.jobs.succeed(input.jobId, inventory as unknown as Record<string, unknown>);
    return { ...inventory, objects: [] };
  }

  async failInventory(input: { jobId: string; storeId: string; error: WorkflowFailure }): Promise<void> {
    await this.deps.jobs.failFromFlow(input.jobId, input.error, 'StoreInventoryFailed');
  }

  /** What the storage holds, each object with the row that owns it when Strata knows one. */
  async listObjects(id: string, jobId: string = newId('op')): Promise<StoreObject[]> {
    const { registry } = this.deps;
    const store = await this.get(id);
    const provider = registry.get(store.provider);
    const needsHost = provider.driver.getCapabilities().needsHost;
    const hostId = needsHost ? (await this.deps.selectHost([id])).id : undefined;
    const objects = await provider.driver.listObjects({
      store: toStoreInfo(store),
      ctx: this.deps.driverContext(jobId),
      ...(hostId ? { hostId } : {}),
    });
    const owners = new Map<string, { type: EntityType; id: string }>();
    for (const row of await this.rowsInStore(id)) {
      const r = row as { path?: string; id?: string; templateId?: string; snapshotId?: string };
      const type = (row as { entityType?: EntityType }).entityType;
      if (r.path && type) owners.set(r.path, { type, id: r.id ?? r.templateId ?? r.snapshotId ?? '' });
    }
    return objects.map((o) => {
      const owner = owners.get(o.path);
      return owner ? { ...o, owner } : o;
    });
  }

  private async maintenance(id: string, action: 'enter' | 'cancel'): Promise<{ store: DataStore; job: Job }> {
    const { repo, jobs } = this.deps;
    const store = await this.get(id);
    const jobId = newId('job');
    const to = action === 'enter' ? DS.PrepareForMaintenance : DS.CancelMaintenance;
    const from =
      action === 'enter'
        ? [DS.Up, DS.Disabled, DS.ErrorInMaintenance]
        : [DS.Maintenance, DS.ErrorInMaintenance];
    const moved = await repo.transition({
      key: { type: 'DataStore', id },
      machine: dataStoreMachine,
      from,
      to,
      expectedVersion: store.version,
      lease: { owner: jobId, ttlSeconds: STORE_LEASE_SECONDS },
      changes: { statusReason: undefined },
    });
    const job = await jobs.create(
      action === 'enter' ? 'store.maintain' : 'store.cancelMaintenance',
      { type: 'store', id },
      jobId,
    );
    return this.startFlow(Flow.StoreMaintenance, job, { storeId: id, action }, moved, async (reason) => {
      await repo.transition({
        key: { type: 'DataStore', id },
        machine: dataStoreMachine,
        from: to,
        to: DS.ErrorInMaintenance,
        leaseOwner: jobId,
        changes: { statusReason: reason },
      });
    });
  }

  /** Starts a flow for a job; when the start fails, compensates and fails the job. */
  private async startFlow(
    flow: FlowName,
    job: Job,
    input: Record<string, unknown>,
    store: DataStore,
    compensate: (reason: string) => Promise<void>,
  ): Promise<{ store: DataStore; job: Job }> {
    try {
      const { executionId } = await this.deps.workflows.start(flow, job.id, { jobId: job.id, ...input });
      const running = await this.deps.jobs.started(job.id, executionId).catch(() => job);
      return { store, job: running };
    } catch (e) {
      const reason = `could not start ${flow}: ${(e as Error).message}`;
      await compensate(reason);
      await this.deps.jobs.fail(job.id, { code: 'WorkflowStartFailed', message: reason });
      throw new UnavailableError(reason, { jobId: job.id }, { cause: e });
    }
  }

  private async validateScope(role: DataStoreRole, scope: DataStoreScope): Promise<void> {
    if (role === 'image' && scope.type !== 'zone') {
      throw new InputError('image stores are zone-wide: scope.type must be zone', { field: 'scope.type' });
    }
    if (scope.type === 'cluster' && !scope.clusterId) {
      throw new InputError('a cluster-scoped store needs scope.clusterId', { field: 'scope.clusterId' });
    }
    if (scope.type === 'host') {
      if (!scope.hostId)
        throw new InputError('a host-scoped store needs scope.hostId', { field: 'scope.hostId' });
      const host = await this.deps.hosts.get(scope.hostId).catch((e: unknown) => {
        if (e instanceof NotFoundError) {
          throw new UnprocessableError(`host ${scope.hostId} is not registered`, { field: 'scope.hostId' });
        }
        throw e;
      });
      if (host.zoneId !== scope.zoneId) {
        throw new UnprocessableError(`host ${host.id} is in zone ${host.zoneId}, not ${scope.zoneId}`, {
          field: 'scope.hostId',
        });
      }
    }
  }

  /**
   * Two stores whose storage nests (an nfs mount path inside another's) must not both be usable on
   * a host: one could list and delete the other's files. Every store of the provider that may share
   * a host with the new one is compared, whatever its status (an Error store still names its path:
   * delete it first). Two adds racing each other are not serialised here; the host's own storage
   * roots (drivers/sdk/host-config.ts) still bound what either can touch.
   */
  private async refuseOverlap(
    provider: { name: string; overlaps?: DataStoreProvider['overlaps'] },
    scope: DataStoreScope,
    details: Record<string, string>,
  ): Promise<void> {
    if (!provider.overlaps) return;
    let cursor: string | undefined;
    do {
      const page = await this.list({ zoneId: scope.zoneId, provider: provider.name }, { cursor, limit: 100 });
      for (const other of page.items) {
        if (!(await this.scopesMayShareHost(scope, other.scope))) continue;
        const clash = provider.overlaps(details, other.details);
        if (clash) {
          throw new ConflictError(`details.${clash.field}: ${clash.message} (${other.id}, ${other.name})`, {
            field: `details.${clash.field}`,
            storeId: other.id,
          });
        }
      }
      cursor = page.cursor;
    } while (cursor);
  }

  // Scopes of one zone share a host unless they name two different clusters or hosts.
  private async scopesMayShareHost(a: DataStoreScope, b: DataStoreScope): Promise<boolean> {
    if (a.zoneId !== b.zoneId) return false;
    if (a.type === 'zone' || b.type === 'zone') return true;
    if (a.type === 'cluster' && b.type === 'cluster') return a.clusterId === b.clusterId;
    if (a.type === 'host' && b.type === 'host') return a.hostId === b.hostId;
    const [cluster, host] = a.type === 'cluster' ? [a, b] : [b, a];
    const hostRow = await this.deps.hosts.get(host.hostId ?? '').catch(() => undefined);
    // A host Strata no longer knows cannot be told apart: assume it may share.
    return hostRow === undefined || hostRow.clusterId === cluster.clusterId;
  }

  private async refuseIfInUse(store: DataStore): Promise<void> {
    const rows = await this.rowsInStore(store.id, 5);
    if (rows.length > 0) {
      const names = rows.map((r) => {
        const x = r as { id?: string; templateId?: string; snapshotId?: string; entityType?: string };
        return `${x.entityType ?? 'object'} ${x.id ?? x.templateId ?? x.snapshotId}`;
      });
      throw new NotAllowedError(
        `store ${store.id} still holds ${names.join(', ')}${rows.length >= 5 ? ', …' : ''}`,
        {
          id: store.id,
          dependents: names,
        },
      );
    }
  }

  private async rowsInStore(
    storeId: string,
    max = Number.POSITIVE_INFINITY,
  ): Promise<EntityMap[EntityType][]> {
    const rows: EntityMap[EntityType][] = [];
    let cursor: string | undefined;
    do {
      const page = await this.deps.repo.listInStore(storeId, { cursor, limit: 100 });
      rows.push(...page.items);
      cursor = page.cursor;
    } while (cursor && rows.length < max);
    return rows.slice(0, max);
  }

  private leaseExpiry(): string {
    return new Date(this.clock.now().getTime() + STORE_LEASE_SECONDS * 1000).toISOString();
  }
}

function detailsError(error: ZodError): InputError {
  const issue = error.issues[0];
  const path = issue?.path.map(String).join('.') ?? '';
  return new InputError(`details${path ? `.${path}` : ''}: ${issue?.message ?? 'invalid'}`, {
    field: path ? `details.${path}` : 'details',
  });
}
