/**
 * Hypervisor hosts: the endpoints that do storage work. A host's id is derived from its SSM
 * managed-instance id, so registering the same machine twice is a conflict rather than a duplicate.
 */
import { ConflictError, NotAllowedError } from '../errors.js';
import type { Host } from '../model.js';
import { HostStatus } from '../model.js';
import { allPages } from '../paging.js';
import type { ListOptions, Page, Repository } from '../ports.js';
import { hostMachine } from '../state-machines.js';

export interface RegisterHostInput {
  name: string;
  zoneId: string;
  clusterId: string;
  instanceId: string;
  hypervisor: string;
}

export interface HostFilter {
  zoneId?: string;
  clusterId?: string;
  status?: string;
}

export function hostIdFor(instanceId: string): string {
  return `host-${instanceId}`;
}

export class HostService {
  constructor(private readonly repo: Repository) {}

  async register(input: RegisterHostInput): Promise<Host> {
    try {
      return await this.repo.create('Host', {
        id: hostIdFor(input.instanceId),
        ...input,
        status: HostStatus.Up,
        attachedStoreIds: [],
      });
    } catch (e) {
      if (e instanceof ConflictError) {
        throw new ConflictError(`a host with instance id ${input.instanceId} is already registered`, {
          field: 'instanceId',
          id: hostIdFor(input.instanceId),
        });
      }
      throw e;
    }
  }

  get(id: string): Promise<Host> {
    return this.repo.require({ type: 'Host', id });
  }

  list(filter: HostFilter = {}, options: ListOptions = {}): Promise<Page<Host>> {
    const where: Record<string, string> = {};
    for (const [k, v] of Object.entries(filter)) if (v) where[k] = v;
    return this.repo.list('Host', { ...options, filter: where });
  }

  /** All hosts matching the filter, every page. */
  async all(filter: HostFilter = {}): Promise<Host[]> {
    return allPages((cursor) => this.list(filter, { cursor, limit: 100 }));
  }

  async setStatus(id: string, status: 'Up' | 'Disabled', expectedVersion?: number): Promise<Host> {
    const host = await this.get(id);
    if (host.status === status) return host;
    return this.repo.transition({
      key: { type: 'Host', id },
      machine: hostMachine,
      from: host.status,
      to: status,
      expectedVersion: expectedVersion ?? host.version,
    });
  }

  /** Removes a host. It must be Disabled first, so no new work is being sent to it. */
  async remove(id: string): Promise<void> {
    const host = await this.get(id);
    if (host.status !== HostStatus.Disabled) {
      throw new NotAllowedError(`host ${id} is ${host.status}; disable it before removing it`, {
        id,
        state: host.status,
      });
    }
    await this.repo.delete({ type: 'Host', id }, host.version);
  }

  attach(hostId: string, storeId: string): Promise<Host> {
    return this.repo.updateSet({ type: 'Host', id: hostId }, 'attachedStoreIds', [storeId], []);
  }

  detach(hostId: string, storeId: string): Promise<Host> {
    return this.repo.updateSet({ type: 'Host', id: hostId }, 'attachedStoreIds', [], [storeId]);
  }
}
