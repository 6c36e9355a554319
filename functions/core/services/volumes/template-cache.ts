/**
 * The template cache on a pool (TemplateInstallStrategy): a template is copied to a pool once, as a
 * TemplateInStore row with storeRole `primary`; volumes are linked clones (or full copies) of it and
 * each holds one reference (`refCount`). Of N concurrent creators, the one whose conditional create of
 * the cache row wins installs it; the others see it Creating and retry (`Strata.CacheBusy`) until it
 * is Ready.
 *
 * Eviction rule: when the last volume holding a reference goes, the cache entry is removed from the
 * pool at once. The eviction is a transition conditional on the version the decrement returned, so a
 * creator that took a new reference in between (which bumps the version) wins and the entry stays. A
 * creator that finds the entry Destroying gives its reference back and waits for a fresh install.
 */
import type {
  ObjectStat,
  TemplateInstallOptions,
  TemplateInstallStrategy,
} from '../../../../drivers/sdk/types.js';
import { isImageStoreDriver } from '../../../../drivers/sdk/types.js';
import { ConflictError, UnavailableError, UnprocessableError } from '../../errors.js';
import { hostGrantSeconds } from '../../grants.js';
import type { DataStore, Template, TemplateInStore, Volume } from '../../model.js';
import { ObjectInStoreStatus as O } from '../../model.js';
import type { Repository } from '../../ports.js';
import { Write } from '../../ports.js';
import { objectInStoreMachine } from '../../state-machines.js';
import { toStoreInfo } from '../datastore-service.js';
import { templateObject } from '../image-service.js';
import { expiry, templateHoldRelease, VOLUME_LEASE_SECONDS, type VolumeDeps } from './common.js';

/**
 * What a template install tells the host about its source object, from the image store's HEAD of it
 * (`stat`, with the checksum asked for): its length and version (ETag: the host's download is pinned
 * to it), and `sourceVerified` only when the store recorded a full-object SHA-256 for that version
 * equal to the checksum Strata measured (`expectedSha256`): the store computed it from the bytes it
 * received, so it proves them and the host does not hash them again.
 *
 * @example
 * installSource('ab…', { sizeBytes: 5, etag: '"e"', checksumSha256: 'ab…' });
 * // { sourceSizeBytes: 5, sourceEtag: '"e"', sourceVerified: true }
 */
export function installSource(
  expectedSha256: string | undefined,
  stat: ObjectStat | undefined,
): Pick<TemplateInstallOptions, 'sourceSizeBytes' | 'sourceEtag' | 'sourceVerified'> {
  if (!stat) return {};
  const verified =
    stat.etag !== undefined &&
    expectedSha256 !== undefined &&
    stat.checksumSha256 === expectedSha256.toLowerCase();
  return {
    ...(stat.sizeBytes > 0 ? { sourceSizeBytes: stat.sizeBytes } : {}),
    ...(stat.etag ? { sourceEtag: stat.etag } : {}),
    ...(verified ? { sourceVerified: true } : {}),
  };
}

/** Raised while another job installs the template on the pool; the workflow retries with backoff. */
export class CacheBusyError extends UnavailableError {}

export class TemplateCache {
  constructor(private readonly deps: VolumeDeps) {}

  private get repo(): Repository {
    return this.deps.repo;
  }

  /**
   * Makes sure `template` is cached on `pool` (installing it when this job wins the race) and takes
   * the volume's reference on it. Returns the cache entry's path.
   */
  async ensure(jobId: string, volume: Volume, template: Template, pool: DataStore): Promise<string> {
    const key = { type: 'TemplateInStore' as const, id: template.id, storeId: pool.id };
    let cache = await this.repo.get(key);
    if (!cache) {
      try {
        cache = await this.repo.create('TemplateInStore', {
          templateId: template.id,
          storeId: pool.id,
          storeRole: 'primary',
          status: O.Creating,
          refCount: 0,
          lease: { owner: jobId, expiresAt: expiry(this.deps, VOLUME_LEASE_SECONDS) },
        });
      } catch (e) {
        if (!(e instanceof ConflictError)) throw e;
        cache = await this.repo.require(key);
      }
    } else if (cache.status === O.Failed || cache.status === O.Allocated || cache.status === O.Destroyed) {
      cache = await this.repo
        .transition({
          key,
          machine: objectInStoreMachine,
          from: cache.status,
          to: O.Creating,
          expectedVersion: cache.version,
          lease: { owner: jobId, ttlSeconds: VOLUME_LEASE_SECONDS },
          changes: { statusReason: undefined },
        })
        .catch(async (e: unknown) => {
          if (!(e instanceof ConflictError)) throw e;
          return this.repo.require(key);
        });
    }

    if (cache.status === O.Creating && cache.lease?.owner === jobId) {
      cache = await this.install(jobId, template, pool);
    }
    if (cache.status !== O.Ready) {
      throw new CacheBusyError(
        `template ${template.id} is ${cache.status} on store ${pool.id}; waiting for it`,
        {
          state: cache.status,
        },
      );
    }

    if (!volume.holdsTemplateRef) {
      // The reference and the volume's record of holding it are one write, taken only while the
      // cache is Ready: an eviction that won the race makes it fail, and nothing is counted.
      try {
        // The create's hold on the template ends in the write that takes its place.
        await this.repo.transact([
          Write.counter(key, 'refCount', 1, { when: { field: 'status', oneOf: [O.Ready] } }),
          Write.update({ type: 'Volume', id: volume.id }, volume.version, {
            holdsTemplateRef: true,
            holdsTemplate: false,
          }),
          ...templateHoldRelease(volume),
        ]);
      } catch (e) {
        if (e instanceof ConflictError && e.context.type === 'TemplateInStore') {
          throw new CacheBusyError(`template cache on ${pool.id} is being evicted; retrying`, {
            state: e.context.state,
          });
        }
        throw e;
      }
    }
    return cache.path ?? '';
  }

  /** Removes a template cache entry no volume references any more. True when it was removed. */
  async evictIfUnused(templateId: string, storeId: string, jobId: string): Promise<boolean> {
    const key = { type: 'TemplateInStore' as const, id: templateId, storeId };
    const after = await this.repo.get(key);
    // This job began the eviction in an earlier run and died before it ended: carry on.
    const resuming = after?.status === O.Destroying && after.lease?.owner === jobId;
    if (!after || (!resuming && (after.refCount > 0 || after.status !== O.Ready))) return false;
    if (!resuming) {
      try {
        await this.repo.transition({
          key,
          machine: objectInStoreMachine,
          from: O.Ready,
          to: O.Destroying,
          expectedVersion: after.version,
          lease: { owner: jobId, ttlSeconds: VOLUME_LEASE_SECONDS },
        });
      } catch (e) {
        if (e instanceof ConflictError) return false; // a new volume took a reference: keep the cache
        throw e;
      }
    }
    const pool = await this.repo.require({ type: 'DataStore', id: storeId });
    const template = await this.repo.require({ type: 'Template', id: templateId });
    const { id: hostId } = await this.deps.selectHost([storeId]);
    await this.deps.registry.get(pool.provider).driver.deleteAsync({
      store: toStoreInfo(pool),
      object: { ...templateObject(template), format: 'qcow2', path: after.path },
      ctx: this.deps.driverContext(jobId),
      hostId,
    });
    await this.repo.transition({
      key,
      machine: objectInStoreMachine,
      from: O.Destroying,
      to: O.Destroyed,
      leaseOwner: jobId,
    });
    await this.repo.delete(key);
    return true;
  }

  /** The pool provider's install strategy; 422 when it has none. */
  strategy(pool: DataStore): TemplateInstallStrategy {
    const strategy = this.deps.installStrategy(pool.provider);
    if (!strategy)
      throw new UnprocessableError(`provider ${pool.provider} cannot install templates`, {
        field: 'storeId',
      });
    return strategy;
  }

  private async install(jobId: string, template: Template, pool: DataStore): Promise<TemplateInStore> {
    const key = { type: 'TemplateInStore' as const, id: template.id, storeId: pool.id };
    try {
      const strategy = this.strategy(pool);
      const copies = await this.repo.listCopies('TemplateInStore', template.id);
      const source = copies.find(
        (c) => c.storeRole === 'image' && (c.status === O.Ready || c.status === O.Copying),
      );
      if (!source)
        throw new ConflictError(`template ${template.id} has no Ready copy on an image store`, {
          field: 'templateId',
        });
      const imageStore = await this.repo.require({ type: 'DataStore', id: source.storeId });
      const imageDriver = this.deps.registry.get(imageStore.provider).driver;
      if (!isImageStoreDriver(imageDriver))
        throw new UnprocessableError(`store ${imageStore.id} cannot serve downloads`);
      const ctx = this.deps.driverContext(jobId);
      const object = { ...templateObject(template), path: source.path };
      const expectedSha256 = source.checksum?.startsWith('{sha256}') ? source.checksum.slice(8) : undefined;
      // The object as the store holds it now: its version (the host's download is pinned to it) and
      // the full-object SHA-256 the store recorded when it was written, if any. When that equals the
      // checksum Strata measured, the store itself proves these bytes, and the host need not hash
      // them again. A multipart object only has a checksum of part checksums: not a proof.
      const stat = expectedSha256
        ? await imageDriver.statObject({ store: toStoreInfo(imageStore), object, ctx, checksum: true })
        : undefined;
      const { url } = await imageDriver.presignGet({
        store: toStoreInfo(imageStore),
        object,
        ctx,
        // The install's fetch moves the template's bytes (grants.ts sizes the grant for that).
        expiresSeconds: hostGrantSeconds(stat?.sizeBytes ?? source.sizeBytes),
        // Just seen by the HEAD above; without one, the presign checks the object exists.
        knownToExist: stat !== undefined,
      });
      const { id: hostId } = await this.deps.selectHost([pool.id]);
      const result = await strategy.install({
        template: { store: toStoreInfo(imageStore), object },
        pool: toStoreInfo(pool),
        ctx,
        hostId,
        ...({
          sourceUrl: url,
          sourceFormat: template.format,
          ...(expectedSha256 ? { expectedSha256 } : {}),
          ...installSource(expectedSha256, stat),
        } as object),
      });
      return await this.repo.transition({
        key,
        machine: objectInStoreMachine,
        from: O.Creating,
        to: O.Ready,
        leaseOwner: jobId,
        changes: {
          path: result.path,
          sizeBytes: result.sizeBytes,
          virtualSizeBytes: result.virtualSizeBytes,
          progress: 100,
        },
      });
    } catch (e) {
      await this.repo
        .transition({
          key,
          machine: objectInStoreMachine,
          from: O.Creating,
          to: O.Failed,
          leaseOwner: jobId,
          changes: { statusReason: (e as Error).message },
        })
        .catch(() => undefined);
      throw e;
    }
  }
}
