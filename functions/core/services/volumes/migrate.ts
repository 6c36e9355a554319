/**
 * volume-migrate (statemachines/flows/volume-migrate.ts): a volume moves to another primary store,
 * keeping its id. The destination's space, the move into Migrating and the job are one write; the
 * copy runs on a host that mounts both stores (or is staged through an image store when none does),
 * is compared with the source, and only after the switch-over is the source removed.
 */
import { isImageStoreDriver, isStagingDriver } from '../../../../drivers/sdk/types.js';
import { releaseWrite, reserve } from '../../allocator.js';
import { ConflictError, InputError, NotAllowedError, UnprocessableError } from '../../errors.js';
import { hostGrantSeconds } from '../../grants.js';
import { newId } from '../../ids.js';
import type { DataStore, Job, Volume } from '../../model.js';
import { VolumeStatus as V } from '../../model.js';
import { allPages } from '../../paging.js';
import type { Repository } from '../../ports.js';
import { FlowName, Write } from '../../ports.js';
import { volumeMachine } from '../../state-machines.js';
import { forgetStepOnce, stepOnce } from '../../step-scope.js';
import { toStoreInfo } from '../datastore-service.js';
import { causeMessage, type WorkflowFailure } from '../job-service.js';
import {
  held,
  launch,
  type Step,
  templateRefWrite,
  type VolumeDeps,
  volumeMove,
  volumeObject,
} from './common.js';
import type { VolumeCreateFlow } from './create.js';
import type { TemplateCache } from './template-cache.js';

export class VolumeMigrateFlow {
  constructor(
    private readonly deps: VolumeDeps,
    private readonly cache: TemplateCache,
    /** Placement, as for a new volume, restricted to the destination. */
    private readonly placement: Pick<VolumeCreateFlow, 'plan'>,
  ) {}

  private get repo(): Repository {
    return this.deps.repo;
  }

  /**
   * Moves a volume to another primary store, keeping its id. Space is reserved on the destination
   * first; the copy runs on a host that mounts both stores (a linked clone is flattened on the way);
   * the destination is compared with the source before the volume switches over, and only then is
   * the source removed.
   */
  async start(id: string, storeId: string): Promise<{ volume: Volume; job: Job }> {
    const volume = await this.repo.require({ type: 'Volume', id });
    if (volume.status !== V.Ready || !volume.storeId) {
      throw new ConflictError(`volume ${id} is ${volume.status}`, { state: volume.status });
    }
    if (storeId === volume.storeId)
      throw new InputError(`volume ${id} is already on store ${storeId}`, { field: 'storeId' });
    const snapshots = await this.deps.hasSnapshots(id);
    if (snapshots.length > 0) {
      // Its snapshot layers live on the source pool; moving them along is not built yet.
      throw new NotAllowedError(
        `volume ${id} has snapshots and cannot migrate yet: ${snapshots.join(', ')}`,
        {
          dependents: snapshots,
        },
      );
    }
    if (volume.accessHostIds.length > 0) {
      throw new ConflictError(
        `volume ${id} is in use by ${volume.accessHostIds.join(', ')}; revoke access first`,
        {
          state: volume.status,
        },
      );
    }
    const placement = await this.placement.plan(
      { name: volume.name, zoneId: volume.zoneId, storeId, tags: [] },
      volume.sizeBytes,
    );
    const jobId = newId('job');
    const launchOn = (destStoreId: string) => ({
      flow: FlowName.VolumeMigrate,
      input: { jobId, volumeId: id, destStoreId },
    });
    // The destination's space, the move into Migrating and the job are one write.
    const { store } = await reserve(this.repo, placement, volume.sizeBytes, {
      with: (destStoreId) => [
        this.deps.jobs.createWrite('volume.migrate', { type: 'volume', id }, jobId, launchOn(destStoreId)),
        volumeMove(volume, V.Migrating, jobId, V.Ready),
      ],
    });
    const moved = await this.repo.require({ type: 'Volume', id });
    return { volume: moved, job: await launch(this.deps, jobId, launchOn(store.id)) };
  }

  /** volume-migrate: copy to the destination through a host that mounts both stores, and verify. */
  async copyToStore(input: Step & { destStoreId: string }): Promise<{ path: string; via: string }> {
    const volume = await held(this.repo, input, V.Migrating, 'migrated');
    const src = await this.repo.require({ type: 'DataStore', id: volume.storeId ?? '' });
    const dst = await this.repo.require({ type: 'DataStore', id: input.destStoreId });
    const host = await this.deps.selectHost([src.id, dst.id]).catch(() => undefined);
    if (!host)
      return { ...(await this.stageThroughImageStore(volume, src, dst, input.jobId)), via: 'image-store' };
    const driver = this.deps.registry.get(src.provider).driver;
    const ctx = this.deps.driverContext(input.jobId);
    const from = {
      store: toStoreInfo(src),
      object: volumeObject(volume),
    };
    const to = {
      store: toStoreInfo(dst),
      object: { kind: 'volume' as const, id: volume.id, format: volume.format },
    };
    if (!driver.canCopy(from, to) || !driver.compareAsync) {
      throw new UnprocessableError(
        `cannot migrate from a ${src.provider} store to a ${dst.provider} store yet`,
        {
          field: 'storeId',
        },
      );
    }
    const copied = await driver.copyAsync({ src: from, dst: to, ctx, hostId: host.id });
    const { identical } = await driver.compareAsync({
      src: from,
      dst: { ...to, object: { ...to.object, path: copied.path } },
      ctx,
      hostId: host.id,
    });
    if (!identical) {
      throw new UnprocessableError(`the copy on ${dst.id} differs from the source; the source is kept`, {
        field: 'storeId',
      });
    }
    return { path: copied.path, via: `host:${host.id}` };
  }

  /**
   * No host reaches both stores: a host of the source flattens the volume and uploads it to an image
   * store of the zone through presigned part URLs; a host of the destination pulls it, verifying the
   * sha256 the source computed. The staged object and the temporary copy are removed either way.
   */
  private async stageThroughImageStore(
    volume: Volume,
    src: DataStore,
    dst: DataStore,
    jobId: string,
  ): Promise<{ path: string }> {
    const srcDriver = this.deps.registry.get(src.provider).driver;
    const dstDriver = this.deps.registry.get(dst.provider).driver;
    if (!isStagingDriver(srcDriver) || !isStagingDriver(dstDriver)) {
      throw new UnprocessableError(
        `no host mounts both ${src.id} and ${dst.id}, and their drivers cannot stage`,
        {
          field: 'storeId',
        },
      );
    }
    const images = await allPages((cursor) =>
      this.repo.list('DataStore', {
        cursor,
        filter: { role: 'image', status: 'Up', 'scope.zoneId': volume.zoneId },
      }),
    );
    const imageStore = images.find((s) => isImageStoreDriver(this.deps.registry.get(s.provider).driver));
    if (!imageStore) {
      throw new UnprocessableError(
        `no host mounts both stores and zone ${volume.zoneId} has no image store to stage through`,
        {
          field: 'storeId',
        },
      );
    }
    const imageDriver = this.deps.registry.get(imageStore.provider).driver;
    if (!isImageStoreDriver(imageDriver)) throw new UnprocessableError(`store ${imageStore.id} cannot stage`);
    const ctx = this.deps.driverContext(jobId);
    const [hostA, hostB] = [await this.deps.selectHost([src.id]), await this.deps.selectHost([dst.id])];
    const from = {
      store: toStoreInfo(src),
      object: volumeObject(volume),
      ctx,
      hostId: hostA.id,
    };
    const staged = { kind: 'volume' as const, id: volume.id, format: 'qcow2' as const };
    const imageInfo = toStoreInfo(imageStore);
    const prepared = await srcDriver.exportAsync({ ...from, phase: 'prepare' });
    let stagedPath: string | undefined;
    try {
      // One multipart upload for the whole step: a replayed run reuses it (and presigns its parts
      // again) instead of making another that the host, still uploading, knows nothing about.
      const made = await stepOnce(this.repo, jobId, 'staging-upload', async () => {
        const u = await imageDriver.createUpload({
          store: imageInfo,
          object: staged,
          sizeBytes: prepared.sizeBytes,
          ctx,
        });
        return { uploadId: u.uploadId, path: u.path, partSizeBytes: u.partSizeBytes };
      });
      const partCount = Math.max(1, Math.ceil(prepared.sizeBytes / made.partSizeBytes));
      const upload = {
        ...made,
        parts: await imageDriver.presignUploadParts({
          store: imageInfo,
          object: { ...staged, path: made.path },
          uploadId: made.uploadId,
          sizeBytes: prepared.sizeBytes,
          partSizeBytes: made.partSizeBytes,
          partNumbers: Array.from({ length: partCount }, (_, i) => i + 1),
          // One export step PUTs every part: the grant covers the whole volume (grants.ts).
          expiresSeconds: hostGrantSeconds(prepared.sizeBytes),
          ctx,
        }),
      };
      stagedPath = upload.path;
      try {
        const { parts } = await srcDriver.exportAsync({
          ...from,
          phase: 'upload',
          tempPath: prepared.tempPath,
          totalBytes: prepared.sizeBytes,
          parts: upload.parts,
        });
        // Once: a replayed run finds the upload complete and must not complete it again.
        await stepOnce(this.repo, jobId, 'staging-complete', async () => {
          await imageDriver.completeUpload({
            store: imageInfo,
            object: { ...staged, path: upload.path },
            uploadId: upload.uploadId,
            parts,
            sizeBytes: prepared.sizeBytes,
            ctx,
          });
          return true;
        });
      } catch (e) {
        await imageDriver
          .abortUpload({
            store: imageInfo,
            object: { ...staged, path: upload.path },
            uploadId: upload.uploadId,
            ctx,
          })
          .catch(() => undefined);
        await forgetStepOnce(this.repo, jobId, 'staging-upload').catch(() => undefined);
        throw e;
      }
      const { url } = await imageDriver.presignGet({
        store: imageInfo,
        object: { ...staged, path: upload.path },
        ctx,
        expiresSeconds: hostGrantSeconds(prepared.sizeBytes),
      });
      const imported = await dstDriver.importAsync({
        store: toStoreInfo(dst),
        object: { kind: 'volume', id: volume.id, format: 'qcow2' },
        ctx,
        hostId: hostB.id,
        sourceUrl: url,
        sourceFormat: 'qcow2',
        expectedSha256: prepared.sha256,
      });
      return { path: imported.path };
    } finally {
      await srcDriver
        .exportAsync({ ...from, phase: 'cleanup', tempPath: prepared.tempPath })
        .catch(() => undefined);
      if (stagedPath) {
        await imageDriver
          .deleteAsync({ store: imageInfo, object: { ...staged, path: stagedPath }, ctx })
          .catch(() => undefined);
      }
    }
  }

  /**
   * volume-migrate: switch the volume over, then remove the source copy, give back its space and
   * its template cache reference (evicting the entry when that was the last one), then Ready.
   *
   * The step is replayed from its start after every host wait (step-scope.ts), so the switch-over
   * write keeps the volume Migrating, leased by this job, and records what is left to remove in
   * `migratedFrom`: a later run (or the compensation) sees the switch-over done and carries on with
   * the source's removal and the eviction instead of skipping them.
   */
  async finishMigrate(input: Step & { destStoreId: string; path: string; via: string }): Promise<void> {
    let volume = await this.repo.require({ type: 'Volume', id: input.volumeId });
    if (volume.status === V.Migrating && volume.lease?.owner === input.jobId) {
      if (volume.migratedFrom?.jobId !== input.jobId) {
        const dropsRef = Boolean(volume.holdsTemplateRef && volume.templateId);
        // One write switches the volume over, gives back the source's space and its template
        // reference, and records the source still to remove. A crash after it leaves the volume
        // Migrating on the destination; the compensation finishes from `migratedFrom`.
        await this.repo.transact([
          Write.update({ type: 'Volume', id: volume.id }, volume.version, {
            storeId: input.destStoreId,
            path: input.path,
            // The copy is flattened: it no longer depends on the source pool's template cache.
            mode: volume.templateId ? 'full' : volume.mode,
            holdsTemplateRef: false,
            migratedFrom: {
              jobId: input.jobId,
              storeId: volume.storeId!,
              ...(volume.path ? { path: volume.path } : {}),
              droppedTemplateRef: dropsRef,
            },
          }),
          releaseWrite(volume.storeId!, volume.sizeBytes),
          ...(dropsRef ? [templateRefWrite(volume.templateId!, volume.storeId!, -1)] : []),
        ]);
        volume = await this.repo.require({ type: 'Volume', id: volume.id });
      }
      await this.removeSource(volume, input.jobId);
      await this.repo.transition({
        key: { type: 'Volume', id: volume.id },
        machine: volumeMachine,
        from: V.Migrating,
        to: V.Ready,
        leaseOwner: input.jobId,
        changes: { migratedFrom: undefined },
      });
    }
    await this.deps.jobs.succeed(input.jobId, {
      volumeId: volume.id,
      storeId: input.destStoreId,
      path: input.path,
      via: input.via,
    });
  }

  /**
   * After the switch-over: the source file goes, then the source pool's template cache entry if no
   * volume references it any more. Both are idempotent (a replay polls the host commands it sent;
   * an eviction this job began is resumed), so every run of the step may call this.
   */
  private async removeSource(volume: Volume, jobId: string): Promise<void> {
    const source = volume.migratedFrom;
    if (!source || source.jobId !== jobId) return;
    const pool = await this.repo.get({ type: 'DataStore', id: source.storeId });
    if (!pool) return;
    const { id: hostId } = await this.deps.selectHost([pool.id]);
    await this.deps.registry.get(pool.provider).driver.deleteAsync({
      store: toStoreInfo(pool),
      object: { kind: 'volume', id: volume.id, format: volume.format, path: source.path },
      ctx: this.deps.driverContext(jobId),
      hostId,
    });
    if (source.droppedTemplateRef && volume.templateId) {
      await this.cache.evictIfUnused(volume.templateId, pool.id, jobId);
    }
  }

  /**
   * volume-migrate, on failure: the partial copy and its reservation go; the volume stays where it
   * was, and the job fails. After the switch-over (`migratedFrom` set) there is nothing to undo: it
   * rolls forward, trying the source's removal once more; the volume is Ready on the destination
   * and the job succeeds, its result carrying a `warning` with the failure (and the source copy
   * left behind, if its removal failed again: an orphan for the sweep). Answers `rolledForward`,
   * which the flow turns into its end. A run after an earlier one rolled forward (the step replayed)
   * finds the volume on the destination and answers the same.
   */
  async failMigrate(
    input: Step & { destStoreId: string; error: WorkflowFailure },
  ): Promise<{ rolledForward: boolean }> {
    const reason = causeMessage(input.error);
    const volume = await this.repo.get({ type: 'Volume', id: input.volumeId });
    if (
      volume &&
      volume.status === V.Migrating &&
      volume.lease?.owner === input.jobId &&
      volume.migratedFrom?.jobId === input.jobId
    ) {
      // The switch-over was done: the destination is the volume now and stays. What is left is the
      // source's removal; when that fails too, the file is an orphan for the sweep.
      let left = '';
      await this.removeSource(volume, input.jobId).catch((e: unknown) => {
        left = ` (removing the source copy on ${volume.migratedFrom?.storeId} failed: ${(e as Error).message})`;
      });
      await this.repo.transition({
        key: { type: 'Volume', id: volume.id },
        machine: volumeMachine,
        from: V.Migrating,
        to: V.Ready,
        leaseOwner: input.jobId,
        changes: {
          migratedFrom: undefined,
          statusReason: `migrated to ${input.destStoreId}; the last step failed: ${reason}${left}`,
        },
      });
      return this.rolledForward(input, volume.path, `the last step failed: ${reason}${left}`);
    }
    if (volume && volume.storeId === input.destStoreId && volume.lease?.owner !== input.jobId) {
      // An earlier run of this step rolled forward and then died before it answered.
      return this.rolledForward(input, volume.path, volume.statusReason ?? `the last step failed: ${reason}`);
    }
    if (volume && volume.status === V.Migrating && volume.lease?.owner === input.jobId) {
      const dst = await this.repo.get({ type: 'DataStore', id: input.destStoreId });
      if (dst) {
        const hostId = await this.deps
          .selectHost([dst.id])
          .then((h) => h.id)
          .catch(() => undefined);
        if (hostId) {
          await this.deps.registry
            .get(dst.provider)
            .driver.deleteAsync({
              store: toStoreInfo(dst),
              object: {
                kind: 'volume',
                id: volume.id,
                format: volume.format,
                path: `volumes/${volume.id}.qcow2`,
              },
              ctx: this.deps.driverContext(input.jobId),
              hostId,
            })
            .catch(() => undefined);
        }
      }
      // The destination's space and the move back to Ready are one write.
      await this.repo.transact([
        ...(dst ? [releaseWrite(dst.id, volume.sizeBytes)] : []),
        Write.transition({
          key: { type: 'Volume', id: volume.id },
          machine: volumeMachine,
          from: V.Migrating,
          to: V.Ready,
          leaseOwner: input.jobId,
          changes: { statusReason: `migration to ${input.destStoreId} failed: ${reason}` },
        }),
      ]);
    }
    await this.deps.jobs.failFromFlow(input.jobId, input.error, 'MigrateFailed');
    return { rolledForward: false };
  }

  private async rolledForward(
    input: Step & { destStoreId: string },
    path: string | undefined,
    warning: string,
  ): Promise<{ rolledForward: true }> {
    await this.deps.jobs.succeed(input.jobId, {
      volumeId: input.volumeId,
      storeId: input.destStoreId,
      ...(path ? { path } : {}),
      warning,
    });
    return { rolledForward: true };
  }
}
