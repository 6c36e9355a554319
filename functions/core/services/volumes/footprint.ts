/** What a volume occupies on its pool, and the one step that gives all of it back. */

import { releaseWrite } from '../../allocator.js';
import type { Volume } from '../../model.js';
import { Write } from '../../ports.js';
import { toStoreInfo } from '../datastore-service.js';
import { templateRefWrite, type VolumeDeps } from './common.js';
import type { TemplateCache } from './template-cache.js';

/**
 * Removes the volume's file, releases its reservation and its template reference. True when the
 * template's cache entry was evicted with it. A replay finds nothing left to give back: the volume
 * row records, in the same write as the release, that it no longer occupies the pool.
 */
export async function removeFromPool(
  deps: VolumeDeps,
  cache: TemplateCache,
  volume: Volume,
  jobId: string,
): Promise<boolean> {
  const pool = volume.storeId ? await deps.repo.get({ type: 'DataStore', id: volume.storeId }) : undefined;
  if (pool) {
    const path = volume.path ?? `volumes/${volume.id}.qcow2`;
    const { id: hostId } = await deps.selectHost([pool.id]);
    await deps.registry.get(pool.provider).driver.deleteAsync({
      store: toStoreInfo(pool),
      object: { kind: 'volume', id: volume.id, format: volume.format, path },
      ctx: deps.driverContext(jobId),
      hostId,
    });
  }
  const current = await deps.repo.require({ type: 'Volume', id: volume.id });
  if (!current.storeId) {
    // An earlier run gave everything back; it may have died before the eviction was done.
    return current.releasedFrom && current.templateId
      ? cache.evictIfUnused(current.templateId, current.releasedFrom, jobId)
      : false;
  }
  const dropsRef = Boolean(current.holdsTemplateRef && current.templateId);
  await deps.repo.transact([
    ...(pool ? [releaseWrite(pool.id, current.sizeBytes)] : []),
    ...(dropsRef ? [templateRefWrite(current.templateId!, current.storeId, -1)] : []),
    Write.update({ type: 'Volume', id: current.id }, current.version, {
      storeId: undefined,
      path: undefined,
      holdsTemplateRef: false,
      ...(dropsRef ? { releasedFrom: current.storeId } : {}),
    }),
  ]);
  return dropsRef ? cache.evictIfUnused(current.templateId!, current.storeId, jobId) : false;
}
