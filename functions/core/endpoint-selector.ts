/**
 * EndPointSelector: picks the host that does a piece of work. It must be Up and have every store
 * involved attached. Among those, load is spread: hosts this process has sent fewer running
 * commands to come first, and ties are broken at random (in Lambda each container sees only its
 * own commands, so randomness is what spreads load across containers).
 */
import type { EndPointSelectOptions, EndPointSelector, HostInfo } from '../../drivers/sdk/types.js';
import { UnavailableError } from './errors.js';
import { HostStatus } from './model.js';
import type { HostService } from './services/host-service.js';

export class HostEndpointSelector implements EndPointSelector {
  private readonly inFlight = new Map<string, number>();

  constructor(
    private readonly hosts: HostService,
    private readonly random: () => number = Math.random,
  ) {}

  async select(options: EndPointSelectOptions & { zoneId?: string }): Promise<HostInfo> {
    const all = await this.hosts.all(options.zoneId ? { zoneId: options.zoneId } : {});
    const excluded = new Set(options.excludeHostIds ?? []);
    const candidates = all.filter(
      (h) =>
        h.status === HostStatus.Up &&
        !excluded.has(h.id) &&
        options.storeIds.every((storeId) => h.attachedStoreIds.includes(storeId)),
    );
    if (candidates.length === 0) {
      throw new UnavailableError(
        `no Up host has ${options.storeIds.length === 1 ? 'store' : 'stores'} ${options.storeIds.join(', ')} attached`,
        { storeIds: options.storeIds, hostsConsidered: all.length },
      );
    }
    const load = (id: string) => this.inFlight.get(id) ?? 0;
    const least = Math.min(...candidates.map((h) => load(h.id)));
    const best = candidates.filter((h) => load(h.id) === least);
    const chosen = best[Math.floor(this.random() * best.length)] ?? best[0]!;
    return {
      id: chosen.id,
      name: chosen.name,
      zoneId: chosen.zoneId,
      clusterId: chosen.clusterId,
      hypervisor: chosen.hypervisor,
    };
  }

  /** Called by the host invoker around each command so selection sees this process's load. */
  track(hostId: string, delta: 1 | -1): void {
    const next = (this.inFlight.get(hostId) ?? 0) + delta;
    if (next <= 0) this.inFlight.delete(hostId);
    else this.inFlight.set(hostId, next);
  }
}
