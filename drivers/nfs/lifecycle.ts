/**
 * The NFS store's management plane. Strata does not mount shares (that needs root and the site's
 * own mount options); it proves that every host that should see the share can write to it.
 */
import { BaseDataStoreLifeCycle } from '../sdk/base-driver.js';
import { DriverError, DriverUnavailableError, isDriverError } from '../sdk/errors.js';
import type { AttachOptions, HostInfo, InitializeResult, StoreOptions } from '../sdk/types.js';
import { NfsDetailsSchema } from './details.js';
import { NfsHostOperation } from './host-ops.js';

/**
 * Lifecycle of an `nfs` store: attaching checks the mount on each host; maintenance ending checks
 * again; deleting the store leaves the data on the share (the operator owns the export).
 *
 * @example
 * await new NfsLifeCycle().attachCluster({ store, ctx, hosts });
 */
export class NfsLifeCycle extends BaseDataStoreLifeCycle {
  readonly #deadlineSeconds: number;

  constructor(options: { checkMountDeadlineSeconds?: number } = {}) {
    super('nfs', NfsDetailsSchema);
    this.#deadlineSeconds = options.checkMountDeadlineSeconds ?? 60;
  }

  /** Details are validated and normalised (no trailing slash) by the base; nothing else to learn. */
  protected override async onInitialize(_options: StoreOptions): Promise<InitializeResult> {
    return {};
  }

  protected override async onAttachZone(options: AttachOptions): Promise<void> {
    await this.#checkMounts(options);
  }

  protected override async onAttachCluster(options: AttachOptions): Promise<void> {
    await this.#checkMounts(options);
  }

  protected override async onAttachHost(options: AttachOptions): Promise<void> {
    await this.#checkMounts(options);
  }

  /** The share may have been remounted or repaired during maintenance: prove it again. */
  protected override async onCancelMaintain(options: AttachOptions): Promise<void> {
    await this.#checkMounts(options);
  }

  // Every host is checked (in parallel) so one error names all the hosts that need attention.
  async #checkMounts({ store, ctx, hosts }: AttachOptions): Promise<void> {
    const { mountPath, server, export: exported } = store.details;
    const outcomes = await Promise.allSettled(
      hosts.map((host) =>
        ctx.host.run(host.id, {
          provider: 'nfs',
          operation: NfsHostOperation.CheckMount,
          // server and export let a host with an nfs storage root check mountinfo shows this share.
          args: { mountPath, server, export: exported },
          jobId: ctx.jobId,
          deadlineSeconds: this.#deadlineSeconds,
        }),
      ),
    );
    const failures: { host: HostInfo; reason: unknown }[] = [];
    outcomes.forEach((outcome, index) => {
      const host = hosts[index];
      if (outcome.status === 'rejected' && host) failures.push({ host, reason: outcome.reason });
    });
    if (failures.length === 0) return;
    const described = failures.map(({ host, reason }) => `${host.name} (${host.id}): ${messageOf(reason)}`);
    const message = `nfs store ${store.id} is not usable at ${mountPath} on ${failures.length} host(s): ${described.join('; ')}`;
    const options = {
      cause: failures[0]?.reason,
      context: { storeId: store.id, hostIds: failures.map((f) => f.host.id) },
    };
    // Worth retrying only while some host's failure still is: a final failure stays final.
    if (failures.some(({ reason }) => isDriverError(reason) && reason.retryable)) {
      throw new DriverUnavailableError(message, options);
    }
    throw new DriverError(message, { ...options, code: 'HostCheckFailed', retryable: false });
  }
}

function messageOf(reason: unknown): string {
  return reason instanceof Error ? reason.message : String(reason);
}
