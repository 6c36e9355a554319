import { isWithin } from '../sdk/confine.js';
import type { DataStoreProvider } from '../sdk/types.js';
import { NfsDetailsSchema } from './details.js';
import { NfsDriver, type NfsProviderOptions } from './driver.js';
import { nfsHostOperations } from './host-ops.js';
import { NfsLifeCycle } from './lifecycle.js';
import { createNfsTemplateInstallStrategy } from './template-install.js';

/**
 * Builds the `nfs` provider: primary storage on an NFS share mounted at the same path on every host
 * of a cluster, qcow2 images, linked clones, internal snapshots, and templates cached per pool by
 * the `nfs-cache-then-clone` install strategy.
 *
 * @example
 * const registry = new ProviderRegistry().register(createNfsProvider({ copyDeadlineSeconds: 3 * 3600 }));
 */
export function createNfsProvider(options: NfsProviderOptions = {}): DataStoreProvider {
  return {
    name: 'nfs',
    roles: ['primary'],
    detailsSchema: NfsDetailsSchema,
    // Nested mount paths would let one store list, and delete, the other's files.
    overlaps(details, other) {
      const [a, b] = [details.mountPath, other.mountPath];
      if (a === undefined || b === undefined || !(isWithin(a, b) || isWithin(b, a))) return undefined;
      const how = a === b ? 'is' : isWithin(a, b) ? 'holds' : 'lies inside';
      return { field: 'mountPath', message: `${a} ${how} the mount path ${b} of another store` };
    },
    lifecycle: new NfsLifeCycle(),
    driver: new NfsDriver(options),
    hostOperations: nfsHostOperations,
    templateInstall: createNfsTemplateInstallStrategy({
      copyDeadlineSeconds: options.copyDeadlineSeconds,
      fetchDeadlineSeconds: options.copyDeadlineSeconds,
      operationDeadlineSeconds: options.operationDeadlineSeconds,
    }),
  };
}
