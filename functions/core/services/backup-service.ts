/**
 * Backup of snapshots to the image store, restore from backups, and removal of backups
 * (docs/backup-format.md). The snapshot-backup flow runs scan (one host command that also uploads
 * to the job's staging prefix), upload (only for chunks still missing) and commit, with a
 * compensation; restores run inside volume-create (backup-restore.ts); removal runs inside snapshot
 * delete. The image-store objects are reached through backup-store.ts.
 *
 * Image-store layout, relative to the store's prefix:
 * - `backups/chunks/<ab>/<sha256>`: one object per distinct chunk, shared by every backup in the store;
 * - `backups/manifests/<volume>/<snapshot>.json`: one manifest per backup, written last;
 * - `backups/plans/<job>/…`: a job's working lists (scan result, presigned URL lists) and under
 *   `staging/` the chunks its host uploaded, removed at the end.
 *
 * Invariants:
 * - a manifest exists only once every chunk it names is stored (it is written after the uploads);
 * - a chunk is deleted only when no manifest and no running restore holds it (the chunk index);
 * - a failed backup releases its holds but keeps what it uploaded, so a retry reuses it;
 * - every chunk PUT carries its SHA-256 (`x-amz-checksum-sha256`, signed into the grant), and a
 *   chunk is reused only when the index records it stored that way or the store shows that checksum;
 *   one a verify job (backup-verify.ts) found corrupt or missing is uploaded again.
 */
import { createHash } from 'node:crypto';
import {
  buildManifest,
  chunkExtent,
  DEFAULT_CHUNK_SIZE_BYTES,
} from '../../../drivers/sdk/backup-manifest.js';
import type { ProviderRegistry } from '../../../drivers/sdk/registry.js';
import {
  type BackupCapableDriver,
  type ChunkBackupCounters,
  type DataStoreDriver,
  type DriverContext,
  isBackupCapable,
} from '../../../drivers/sdk/types.js';
import { ConflictError, UnavailableError, UnprocessableError } from '../errors.js';
import { hostGrantSeconds } from '../grants.js';
import { newId } from '../ids.js';
import type { DataStore, Job, Snapshot, SnapshotInStore, Volume } from '../model.js';
import { ObjectInStoreStatus as O, SnapshotStatus as S, VolumeStatus as V } from '../model.js';
import { allPages } from '../paging.js';
import { forEachLimit } from '../pool.js';
import type { Repository, WorkflowPort } from '../ports.js';
import { FlowName } from '../ports.js';
import { objectInStoreMachine, snapshotMachine } from '../state-machines.js';
import { BackupRestore } from './backup-restore.js';
import {
  BackupStore,
  blob,
  chunkKey,
  distinct,
  type ImageStore,
  LEASE_SECONDS,
  manifestKey,
  PRESIGN_CONCURRENCY,
  planKey,
  stagingPrefix,
} from './backup-store.js';
import { type DriverContextOptions, toStoreInfo } from './datastore-service.js';
import { causeMessage, type JobService, type WorkflowFailure } from './job-service.js';
import { volumeObject } from './volume-service.js';

export { manifestKey } from './backup-store.js';

export interface BackupDeps {
  repo: Repository;
  registry: ProviderRegistry;
  workflows: WorkflowPort;
  jobs: JobService;
  /** See StoreDeps.driverContext: progress within a range, resumable host calls. */
  driverContext: (jobId: string, options?: DriverContextOptions) => DriverContext;
  selectHost: (storeIds: string[]) => Promise<{ id: string }>;
  chunkSizeBytes?: number;
}

interface Step {
  jobId: string;
  snapshotId: string;
}

/** What the scan step leaves in the image store for the upload and commit steps. */
interface ScanPlan {
  virtualSizeBytes: number;
  chunkSizeBytes: number;
  chunks: Array<string | null>;
  incremental: boolean;
  parentSnapshotId?: string;
  counters: ChunkBackupCounters;
  /** Hashes whose objects the store lacks, each with one index to read it from. */
  toUpload?: Array<{ index: number; sha256: string }>;
  /** Whose holds cover the chunks (see {@link BackupService.chooseHolds}); absent: this backup's own. */
  holds?: Holds;
  /** Hashes the host uploaded in the scan's own pass and the control plane moved into place. */
  staged?: string[];
}

/** How a backup's chunks are held in the chunk index (SnapshotInStore.chunkHolds). */
interface Holds {
  chunkHolds: 'own' | 'lineage';
  inheritsFrom?: string;
}

/** The upload step's figures, passed to commit by the flow. */
export interface UploadFigures {
  chunksUploaded: number;
  bytesRead: number;
  bytesUploaded: number;
}

/** The driver's view of a snapshot's layer on its pool. */
function layer(pool: DataStore, volume: Volume, snapshot: Snapshot, copy: SnapshotInStore) {
  return {
    store: toStoreInfo(pool),
    object: volumeObject(volume),
    snapshot: { kind: 'snapshot' as const, id: snapshot.id, format: 'qcow2' as const, path: copy.path },
  };
}

export class BackupService {
  /** The image-store side: where backups live, reading and writing their objects. */
  readonly store: BackupStore;
  private readonly restores: BackupRestore;

  constructor(private readonly deps: BackupDeps) {
    this.store = new BackupStore(deps);
    this.restores = new BackupRestore(deps, this.store);
  }

  private get repo(): Repository {
    return this.deps.repo;
  }

  private get chunkSize(): number {
    return this.deps.chunkSizeBytes ?? DEFAULT_CHUNK_SIZE_BYTES;
  }

  // ---------------------------------------------------------------- start

  /** `POST /snapshots/{id}/backup`: a new job backs the snapshot up. */
  async backup(snapshotId: string): Promise<{ snapshot: Snapshot; job: Job }> {
    const jobId = newId('job');
    // The job first (with what a recovery needs), so nothing is ever held by a job that is not there.
    await this.deps.jobs.create('snapshot.backup', { type: 'snapshot', id: snapshotId }, jobId, {
      flow: FlowName.SnapshotBackup,
      input: { jobId, snapshotId },
    });
    let prepared: Snapshot;
    try {
      prepared = await this.prepare(snapshotId, jobId);
    } catch (e) {
      await this.deps.jobs.fail(jobId, { code: 'Refused', message: (e as Error).message });
      throw e;
    }
    return this.launch(prepared, jobId);
  }

  /** snapshot-take with `backup: true`: the take's job goes on with the backup. */
  async continueAfterTake(snapshotId: string, jobId: string): Promise<void> {
    const prepared = await this.prepare(snapshotId, jobId);
    await this.launch(prepared, jobId);
  }

  private async launch(snapshot: Snapshot, jobId: string): Promise<{ snapshot: Snapshot; job: Job }> {
    try {
      const { executionId } = await this.deps.workflows.start(FlowName.SnapshotBackup, jobId, {
        jobId,
        snapshotId: snapshot.id,
      });
      return { snapshot, job: await this.deps.jobs.started(jobId, executionId) };
    } catch (e) {
      await this.failBackup({
        jobId,
        snapshotId: snapshot.id,
        error: { Error: 'WorkflowStartFailed', Cause: (e as Error).message },
      });
      throw new UnavailableError(`could not start snapshot-backup: ${(e as Error).message}`, { jobId });
    }
  }

  /** Checks everything a backup needs, then moves the snapshot to BackingUp (leased by the job). */
  private async prepare(snapshotId: string, jobId: string): Promise<Snapshot> {
    const snapshot = await this.repo.require({ type: 'Snapshot', id: snapshotId });
    if (snapshot.status !== S.CreatedOnPrimary) {
      throw new ConflictError(
        snapshot.status === S.BackedUp
          ? `snapshot ${snapshotId} is already backed up`
          : `snapshot ${snapshotId} is ${snapshot.status}; only a snapshot on primary storage can be backed up`,
        { state: snapshot.status },
      );
    }
    const volume = await this.repo.require({ type: 'Volume', id: snapshot.volumeId });
    await this.primaryCopy(snapshot, volume);
    const image = await this.store.zoneImageStore(volume.zoneId, 'snapshotId');
    const leased = await this.repo.transition({
      key: { type: 'Snapshot', id: snapshotId },
      machine: snapshotMachine,
      from: S.CreatedOnPrimary,
      to: S.BackingUp,
      expectedVersion: snapshot.version,
      lease: { owner: jobId, ttlSeconds: LEASE_SECONDS },
      changes: { statusReason: undefined },
    });
    // A snapshot delete merges layers this backup reads: whichever of the two writes second sees
    // the other and backs off (the delete checks for BackingUp snapshots after taking the volume).
    const now = await this.repo.require({ type: 'Volume', id: volume.id });
    const holder =
      now.status === V.Snapshotting && now.lease
        ? await this.repo.get({ type: 'Job', id: now.lease.owner })
        : undefined;
    // Takes hold the volume too and rewrite nothing a backup reads; any other holder (a delete's
    // merge, or a job not written yet) makes the backup back off.
    if (now.status === V.Snapshotting && holder?.kind !== 'snapshot.take') {
      await this.backToPrimary(snapshotId, jobId, 'a snapshot of the volume is being deleted');
      throw new ConflictError(`volume ${volume.id} is merging a deleted snapshot; retry the backup`, {
        state: now.status,
      });
    }
    const key = { type: 'SnapshotInStore' as const, id: snapshotId, storeId: image.store.id };
    try {
      // A CreatedOnPrimary snapshot has no live image copy: a row here is a failed attempt's.
      await this.repo.delete(key).catch(() => undefined);
      await this.repo.create('SnapshotInStore', {
        snapshotId,
        storeId: image.store.id,
        storeRole: 'image',
        status: O.Creating,
        path: manifestKey(volume.id, snapshotId),
        lease: { owner: jobId, expiresAt: new Date(Date.now() + LEASE_SECONDS * 1000).toISOString() },
      });
    } catch (e) {
      await this.backToPrimary(snapshotId, jobId, `backup not started: ${(e as Error).message}`);
      throw e;
    }
    return leased;
  }

  // ---------------------------------------------------------------- flow steps

  /**
   * Scan: hash the snapshot on a host (only what changed since the previous backup when that
   * backup is the snapshot's base) and, through a POST policy, upload to the job's staging prefix
   * the chunks that backup does not name; pin the chunks, move the staged ones the index lacks
   * under their content address, and record which are still missing (for the Upload step).
   */
  async scanBackup(input: Step): Promise<{ toUpload: number }> {
    const { snapshot, volume, image, copy, pool, driver } = await this.leased(input);
    const ctx = this.deps.driverContext(input.jobId, { progressRange: [5, 35] });
    const previous = await this.previousBackup(snapshot, image);
    const { id: hostId } = await this.deps.selectHost([pool.id]);
    // One grant for every chunk the host finds missing, under this job's staging prefix; it lives
    // as long as reading and uploading the whole disk may take (grants.ts).
    const staging = image.driver.presignPost
      ? await image.driver.presignPost({
          store: toStoreInfo(image.store),
          prefix: stagingPrefix(input.jobId),
          maxBytes: this.chunkSize,
          ctx,
          expiresSeconds: hostGrantSeconds(volume.sizeBytes),
        })
      : undefined;
    const scan = await driver.scanSnapshotChunks({
      ...layer(pool, volume, snapshot, copy),
      chunkSizeBytes: this.chunkSize,
      ctx,
      hostId,
      ...(staging ? { staging } : {}),
      ...(previous
        ? {
            previous: {
              snapshotId: previous.snapshotId,
              manifestUrl: (
                await image.driver.presignGet({
                  store: toStoreInfo(image.store),
                  object: blob(previous.path ?? ''),
                  ctx,
                  // Read once when the scan starts.
                  expiresSeconds: hostGrantSeconds(),
                })
              ).url,
            },
          }
        : {}),
    });
    const plan: ScanPlan = {
      virtualSizeBytes: scan.virtualSizeBytes,
      chunkSizeBytes: scan.chunkSizeBytes,
      chunks: scan.chunks,
      incremental: scan.incremental,
      ...(scan.incremental && previous ? { parentSnapshotId: previous.snapshotId } : {}),
      counters: scan.counters,
    };
    plan.holds = await this.chooseHolds(snapshot, image, scan.incremental ? previous : undefined);
    // The plan is written before pinning, so a compensation always knows what to release.
    await this.store.writeJson(image, planKey(input.jobId, 'scan'), plan, ctx);
    // Inheriting, only what this scan computed: the chunks carried over stay the parent's holds.
    const toPin =
      plan.holds.chunkHolds === 'lineage'
        ? distinct(scan.computed.map((c) => c.sha256))
        : distinct(scan.chunks);
    const pinned = await this.repo.chunks.pin(image.store.id, toPin, snapshot.id);
    const where = new Map(scan.computed.map((c) => [c.sha256, c.index]));
    for (let i = 0; i < scan.chunks.length; i++) {
      const sha = scan.chunks[i];
      if (sha && !where.has(sha)) where.set(sha, i);
    }
    const at = (sha256: string) => ({ index: where.get(sha256) as number, sha256 });
    // Reused without a look only when the index records verified presence. Otherwise an object may
    // stand in for the chunk only if the store verified its bytes on the way in: an interrupted
    // attempt's upload not yet marked, or a chunk stored before checksums were kept. A chunk a
    // verify job found corrupt or missing is uploaded again whatever the store says of it.
    const corrupt = new Set(pinned.corrupt);
    const candidates = [...pinned.unstored, ...pinned.unverified].map(at);
    // What the host staged is this scan's own bytes, checked by the store on the way in: it stands
    // in for any candidate, a corrupt one included. The rest may be in the store already.
    const stagedAt = new Map((scan.staged ?? []).map((c) => [c.sha256, c.index]));
    const promoted = await this.store.promoteStaged(
      image,
      input.jobId,
      candidates
        .filter((c) => stagedAt.has(c.sha256))
        .map((c) => ({
          sha256: c.sha256,
          length: chunkExtent(stagedAt.get(c.sha256) as number, scan.virtualSizeBytes, scan.chunkSizeBytes)
            .length,
        })),
      ctx,
    );
    const promotedSet = new Set(promoted);
    const present = await this.verifiedInStore(
      image,
      candidates.filter((c) => !corrupt.has(c.sha256) && !promotedSet.has(c.sha256)),
      scan,
      ctx,
    );
    if (promoted.length + present.length > 0) {
      await this.repo.chunks.markStored(image.store.id, [...promoted, ...present]);
    }
    const reused = new Set([...promoted, ...present]);
    plan.toUpload = candidates.filter((c) => !reused.has(c.sha256));
    plan.staged = promoted;
    if (scan.staged !== undefined) await this.store.removeStaging(image, input.jobId, ctx);
    if (corrupt.size > 0 || pinned.unverified.length > present.length + promoted.length) {
      this.deps.driverContext(input.jobId).logger.info('chunks uploaded again: found corrupt or unverified', {
        corrupt: corrupt.size,
        unverified: pinned.unverified.filter((sha) => !reused.has(sha)).length,
      });
    }
    const computed = new Set(scan.computed.map((c) => c.sha256));
    const lost = plan.toUpload.filter((u) => !computed.has(u.sha256));
    if (lost.length > 0) {
      // Carried over from the previous manifest but not stored: the previous backup is damaged.
      // The chunk is re-read from the snapshot itself (its bytes are the same at that index).
      this.deps.driverContext(input.jobId).logger.warn('chunks named by the previous backup are missing', {
        count: lost.length,
        first: lost[0]?.sha256,
      });
    }
    await this.store.writeJson(image, planKey(input.jobId, 'scan'), plan, ctx);
    await this.deps.jobs.progress(input.jobId, 40, {
      phase: 'scanned',
      incremental: plan.incremental,
      chunksTotal: plan.chunks.length,
      toUpload: plan.toUpload.length,
      bytesRead: plan.counters.bytesRead,
    });
    return { toUpload: plan.toUpload.length };
  }

  /**
   * The candidates whose object the store holds with a stored SHA-256 checksum equal to their key
   * (HeadObject with ChecksumMode ENABLED) and of the chunk's length. The store computed that
   * checksum from the bytes it received, so such an object is the chunk; an object without a
   * checksum (uploaded before checksums, or by anything else) or with another one is not.
   */
  private async verifiedInStore(
    image: ImageStore,
    candidates: Array<{ index: number; sha256: string }>,
    scan: { virtualSizeBytes: number; chunkSizeBytes: number },
    ctx: DriverContext,
  ): Promise<string[]> {
    const present: string[] = [];
    await forEachLimit(candidates, PRESIGN_CONCURRENCY, async (c) => {
      const stat = await image.driver.statObject({
        store: toStoreInfo(image.store),
        object: blob(chunkKey(c.sha256)),
        ctx,
        checksum: true,
      });
      const length = chunkExtent(c.index, scan.virtualSizeBytes, scan.chunkSizeBytes).length;
      if (stat?.sizeBytes === length && stat.checksumSha256 === c.sha256) present.push(c.sha256);
    });
    return present;
  }

  /**
   * Upload: presigned PUTs for exactly the chunks the store lacks, each signing the chunk's SHA-256
   * (its key) as `x-amz-checksum-sha256`, so the store refuses bytes that do not match and keeps
   * the checksum; the host PUTs them in parallel.
   */
  async uploadBackup(input: Step): Promise<UploadFigures> {
    const { snapshot, volume, image, copy, pool, driver } = await this.leased(input);
    const ctx = this.deps.driverContext(input.jobId, { progressRange: [40, 90] });
    const plan = await this.readPlan(image, input.jobId, ctx);
    const toUpload = plan.toUpload ?? [];
    if (toUpload.length === 0) return { chunksUploaded: 0, bytesRead: 0, bytesUploaded: 0 };
    const info = toStoreInfo(image.store);
    // One host step PUTs them all: every grant covers the bytes of every chunk to upload (grants.ts).
    const uploadBytes = toUpload.reduce(
      (sum, u) => sum + chunkExtent(u.index, plan.virtualSizeBytes, plan.chunkSizeBytes).length,
      0,
    );
    const expiresSeconds = hostGrantSeconds(uploadBytes);
    const uploads: Array<{ index: number; sha256: string; url: string }> = new Array(toUpload.length);
    await forEachLimit(toUpload, PRESIGN_CONCURRENCY, async (u, i) => {
      const { url } = await image.driver.presignPut({
        store: info,
        object: blob(chunkKey(u.sha256)),
        ctx,
        expiresSeconds,
        checksumSha256: u.sha256,
      });
      uploads[i] = { ...u, url };
    });
    const uploadsUrl = await this.store.writeJson(image, planKey(input.jobId, 'uploads'), uploads, ctx, true);
    const { id: hostId } = await this.deps.selectHost([pool.id]);
    const result = await driver.uploadSnapshotChunks({
      ...layer(pool, volume, snapshot, copy),
      chunkSizeBytes: plan.chunkSizeBytes,
      uploadsUrl: uploadsUrl ?? '',
      count: uploads.length,
      ctx,
      hostId,
    });
    await this.repo.chunks.markStored(
      image.store.id,
      toUpload.map((u) => u.sha256),
    );
    await this.deps.jobs.progress(input.jobId, 90, { phase: 'uploaded', ...result });
    return {
      chunksUploaded: result.chunksUploaded,
      bytesRead: result.bytesRead,
      bytesUploaded: result.bytesUploaded,
    };
  }

  /** Commit: write the manifest (last), then the copy is Ready and the snapshot BackedUp. */
  async commitBackup(input: Step & { upload: UploadFigures }): Promise<Record<string, unknown>> {
    const snapshot = await this.repo.require({ type: 'Snapshot', id: input.snapshotId });
    const volume = await this.repo.require({ type: 'Volume', id: snapshot.volumeId });
    const image = await this.store.imageCopy(snapshot.id);
    if (!image) throw new ConflictError(`snapshot ${snapshot.id} has no backup in progress`);
    const store = await this.store.imageStore(image.storeId);
    const ctx = this.deps.driverContext(input.jobId);
    if (snapshot.status === S.BackingUp && snapshot.lease?.owner !== input.jobId) {
      throw new ConflictError(`snapshot ${snapshot.id} is backed up by another job`, {
        state: snapshot.status,
      });
    }
    if (image.status === O.Ready && snapshot.status === S.BackedUp) {
      // An earlier run committed it and died while removing its plans or before ending the job.
      await this.store.removePlans(store, input.jobId, ctx);
      const done = {
        snapshotId: snapshot.id,
        volumeId: volume.id,
        storeId: store.store.id,
        manifest: image.path,
      };
      await this.deps.jobs.succeed(input.jobId, done);
      return done;
    }
    const plan = await this.readPlan(store, input.jobId, ctx);
    const manifest = buildManifest({
      volumeId: volume.id,
      snapshotId: snapshot.id,
      virtualSizeBytes: plan.virtualSizeBytes,
      chunkSizeBytes: plan.chunkSizeBytes,
      chunks: plan.chunks,
      ...(plan.parentSnapshotId ? { parentSnapshotId: plan.parentSnapshotId } : {}),
    });
    const text = JSON.stringify(manifest);
    const path = manifestKey(volume.id, snapshot.id);
    await this.store.writeJson(store, path, manifest, ctx);
    const uploaded = new Set([...(plan.toUpload ?? []).map((u) => u.sha256), ...(plan.staged ?? [])]);
    const nonZero = manifest.chunks.filter((c): c is string => c !== null);
    const figures = {
      snapshotId: snapshot.id,
      volumeId: volume.id,
      storeId: store.store.id,
      manifest: path,
      incremental: plan.incremental,
      ...(plan.parentSnapshotId ? { parentSnapshotId: plan.parentSnapshotId } : {}),
      bytesRead: plan.counters.bytesRead + input.upload.bytesRead,
      bytesUploaded: plan.counters.bytesUploaded + input.upload.bytesUploaded,
      chunksTotal: manifest.chunks.length,
      chunksChanged: plan.counters.chunksChanged,
      chunksUploaded: (plan.staged?.length ?? 0) + input.upload.chunksUploaded,
      chunksReused: nonZero.filter((c) => !uploaded.has(c)).length,
      zeroChunks: manifest.chunks.length - nonZero.length,
      distinctChunks: distinct(manifest.chunks).length,
    };
    if (image.status === O.Creating) {
      await this.repo.transition({
        key: { type: 'SnapshotInStore', id: snapshot.id, storeId: store.store.id },
        machine: objectInStoreMachine,
        from: O.Creating,
        to: O.Ready,
        leaseOwner: input.jobId,
        changes: {
          path,
          sizeBytes: this.store.logicalBytes(manifest),
          virtualSizeBytes: manifest.virtualSizeBytes,
          chunkSizeBytes: manifest.chunkSizeBytes,
          checksum: `{sha256}${createHash('sha256').update(text).digest('hex')}`,
          ...(plan.parentSnapshotId ? { parentSnapshotId: plan.parentSnapshotId } : {}),
          chunkHolds: plan.holds?.chunkHolds ?? 'own',
          inheritsFrom: plan.holds?.inheritsFrom,
        },
      });
    }
    if (snapshot.status === S.BackingUp) {
      await this.repo.transition({
        key: { type: 'Snapshot', id: snapshot.id },
        machine: snapshotMachine,
        from: S.BackingUp,
        to: S.BackedUp,
        leaseOwner: input.jobId,
      });
    }
    await this.store.removePlans(store, input.jobId, ctx);
    await this.deps.jobs.succeed(input.jobId, figures);
    return figures;
  }

  /**
   * Compensation: release the chunk holds (keeping uploaded chunks for a retry), remove any
   * manifest and the image copy row, and return the snapshot to CreatedOnPrimary.
   */
  async failBackup(input: Step & { error: WorkflowFailure }): Promise<void> {
    const reason = causeMessage(input.error);
    const snapshot = await this.repo.get({ type: 'Snapshot', id: input.snapshotId });
    const holding = snapshot?.status === S.BackingUp && snapshot.lease?.owner === input.jobId;
    const copy = snapshot ? await this.store.imageCopy(snapshot.id) : undefined;
    // This job's unfinished image copy (never a Ready one, nor another job's).
    const ours =
      copy && copy.status !== O.Ready && (copy.lease?.owner === input.jobId || (holding && !copy.lease));
    if (snapshot && copy && ours) {
      const store = await this.store.imageStore(copy.storeId);
      const ctx = this.deps.driverContext(input.jobId);
      const plan = await this.readPlan(store, input.jobId, ctx).catch(() => undefined);
      // The manifest first: once it is gone nothing can point at the chunks released next.
      await this.store.deleteObject(store, copy.path ?? manifestKey(snapshot.volumeId, snapshot.id), ctx);
      if (plan) {
        await this.repo.chunks.release(store.store.id, distinct(plan.chunks), snapshot.id, {
          collect: false,
        });
      }
      await this.store.removePlans(store, input.jobId, ctx);
      await this.repo.delete({ type: 'SnapshotInStore', id: snapshot.id, storeId: copy.storeId });
    } else if (snapshot) {
      // No copy of this job's left, but its working lists may be (they are named by the job).
      await this.plansStoreOf(snapshot, copy)
        .then(
          (store) =>
            store && this.store.removePlans(store, input.jobId, this.deps.driverContext(input.jobId)),
        )
        .catch(() => undefined);
    }
    if (snapshot && holding) await this.backToPrimary(snapshot.id, input.jobId, `backup failed: ${reason}`);
    await this.deps.jobs.failFromFlow(input.jobId, input.error, 'BackupFailed');
  }

  // ---------------------------------------------------------------- delete and restore

  /**
   * Removes a backup: releases its chunks, deletes those no other backup or restore holds, then
   * the manifest. Safe to repeat after a crash (every step is idempotent).
   */
  async removeBackup(
    snapshot: Snapshot,
    copy: SnapshotInStore,
    owner: string,
  ): Promise<{ chunksDeleted: number }> {
    const store = await this.store.imageStore(copy.storeId);
    const ctx = this.deps.driverContext(owner);
    const path = copy.path ?? manifestKey(snapshot.volumeId, snapshot.id);
    const manifest = await this.store.readManifest(store, path, ctx).catch((e: unknown) => {
      if ((e as { code?: string }).code === 'ObjectNotFound' || /not found/i.test((e as Error).message))
        return undefined;
      throw e;
    });
    let chunksDeleted = 0;
    if (manifest) {
      await this.handOverHolds(snapshot, store, manifest.chunks, ctx);
      const { collectable } = await this.repo.chunks.release(
        store.store.id,
        distinct(manifest.chunks),
        snapshot.id,
        {
          collect: true,
        },
      );
      await forEachLimit(collectable, PRESIGN_CONCURRENCY, async (sha) => {
        await this.store.deleteObject(store, chunkKey(sha), ctx);
      });
      await this.repo.chunks.forget(store.store.id, collectable);
      chunksDeleted = collectable.length;
    }
    await this.store.deleteObject(store, path, ctx);
    return { chunksDeleted };
  }

  /**
   * Before a backup lets go of its chunks, each later backup inheriting from it pins the chunks both
   * manifests name (all it could have inherited through it: an incremental names only chunks its
   * parent names or that it computed itself) and from then on holds every chunk of its own.
   * Idempotent: a crash before the row changes pins the same chunks again.
   */
  private async handOverHolds(
    snapshot: Snapshot,
    store: ImageStore,
    chunks: ReadonlyArray<string | null>,
    ctx: DriverContext,
  ): Promise<void> {
    const mine = new Set(chunks);
    for (const child of await this.inheritors(snapshot, store.store.id)) {
      if (child.status !== O.Ready) {
        throw new ConflictError(
          `backup of snapshot ${child.snapshotId} inherits chunk holds from ${snapshot.id} and is still ${child.status}`,
          { state: child.status },
        );
      }
      const theirs = await this.store.readManifest(store, child.path ?? '', ctx);
      const shared = distinct(theirs.chunks).filter((h) => mine.has(h));
      await this.repo.chunks.pin(store.store.id, shared, child.snapshotId);
      await this.repo.update(
        { type: 'SnapshotInStore', id: child.snapshotId, storeId: child.storeId },
        child.version,
        { chunkHolds: 'own', inheritsFrom: undefined },
      );
    }
  }

  /** The backups in `storeId` whose carried-over chunks are held by `snapshot`'s backup. */
  async inheritors(snapshot: Snapshot, storeId: string): Promise<SnapshotInStore[]> {
    const siblings = await allPages((cursor) =>
      this.repo.list('Snapshot', { cursor, limit: 100, filter: { volumeId: snapshot.volumeId } }),
    );
    const out: SnapshotInStore[] = [];
    for (const sibling of siblings) {
      if (sibling.id === snapshot.id) continue;
      const copy = await this.repo.get({ type: 'SnapshotInStore', id: sibling.id, storeId });
      if (copy?.inheritsFrom === snapshot.id) out.push(copy);
    }
    return out;
  }

  /** The image copy a restore would read, or why it cannot (for volume placement). */
  restorableBackup(snapshotId: string): Promise<SnapshotInStore | undefined> {
    return this.store.restorableBackup(snapshotId);
  }

  /** Restores a snapshot into a new volume on `pool` (volume-create): see {@link BackupRestore}. */
  restoreInto(input: Parameters<BackupRestore['restoreInto']>[0]): ReturnType<BackupRestore['restoreInto']> {
    return this.restores.restoreInto(input);
  }

  // ---------------------------------------------------------------- helpers

  /** The snapshot this job backs up, with its volume, both copies, and the pool's driver. */
  private async leased(input: Step): Promise<{
    snapshot: Snapshot;
    volume: Volume;
    image: ImageStore;
    copy: SnapshotInStore;
    pool: DataStore;
    driver: DataStoreDriver & BackupCapableDriver;
  }> {
    const snapshot = await this.repo.require({ type: 'Snapshot', id: input.snapshotId });
    if (snapshot.status !== S.BackingUp || snapshot.lease?.owner !== input.jobId) {
      throw new ConflictError(
        `snapshot ${snapshot.id} is ${snapshot.status}, not backed up by ${input.jobId}`,
        {
          state: snapshot.status,
        },
      );
    }
    const volume = await this.repo.require({ type: 'Volume', id: snapshot.volumeId });
    const copies = await this.repo.listCopies('SnapshotInStore', snapshot.id);
    const imageRow = copies.find((c) => c.storeRole === 'image');
    if (!imageRow) throw new ConflictError(`snapshot ${snapshot.id} has no backup in progress`);
    const copy = copies.find((c) => c.storeId === volume.storeId);
    if (!copy) throw new ConflictError(`snapshot ${snapshot.id} is no longer on primary storage`);
    return {
      snapshot,
      volume,
      image: await this.store.imageStore(imageRow.storeId),
      copy,
      ...(await this.backupPool(copy)),
    };
  }

  private async primaryCopy(
    snapshot: Snapshot,
    volume: Volume,
  ): Promise<{ pool: DataStore; driver: DataStoreDriver & BackupCapableDriver; copy: SnapshotInStore }> {
    const copy = volume.storeId
      ? await this.repo.get({ type: 'SnapshotInStore', id: snapshot.id, storeId: volume.storeId })
      : undefined;
    if (!copy) {
      throw new UnprocessableError(`snapshot ${snapshot.id} is not on the volume's primary store`, {
        field: 'snapshotId',
      });
    }
    return { copy, ...(await this.backupPool(copy)) };
  }

  /** The pool holding a snapshot's layer, and its driver, which must back snapshots up. */
  private async backupPool(
    copy: SnapshotInStore,
  ): Promise<{ pool: DataStore; driver: DataStoreDriver & BackupCapableDriver }> {
    const pool = await this.repo.require({ type: 'DataStore', id: copy.storeId });
    const driver = this.deps.registry.get(pool.provider).driver;
    if (!isBackupCapable(driver)) {
      throw new UnprocessableError(`store ${pool.id} (${pool.provider}) cannot back snapshots up`, {
        field: 'snapshotId',
      });
    }
    return { pool, driver };
  }

  /** The most recent earlier backup of the same volume in this image store, if any. */
  private async previousBackup(snapshot: Snapshot, image: ImageStore): Promise<SnapshotInStore | undefined> {
    const siblings = await allPages((cursor) =>
      this.repo.list('Snapshot', { cursor, limit: 100, filter: { volumeId: snapshot.volumeId } }),
    );
    const earlier = siblings
      .filter((s) => s.id !== snapshot.id && s.createdAt < snapshot.createdAt && s.status === S.BackedUp)
      .sort((a, b) => (a.createdAt < b.createdAt ? 1 : -1));
    for (const candidate of earlier) {
      const copy = await this.repo.get({
        type: 'SnapshotInStore',
        id: candidate.id,
        storeId: image.store.id,
      });
      if (copy?.status === O.Ready && copy.path) return copy;
    }
    return undefined;
  }

  /**
   * Whether an incremental backup on `previous` may leave the chunks it carries over to the parent's
   * holds (then it pins only what it computed: chunk-index work grows with the change, not the disk).
   * Only when the parent's own holds are known to follow this rule (`chunkHolds` set), no verify job
   * marked a chunk of the store damaged since the parent began (a carried chunk could be one: pinning
   * every chunk finds it and uploads it again), and the parent is still a live backup. The row says
   * so before the parent is looked at; a delete of the parent marks it Destroying before it looks for
   * inheritors (SnapshotDelete), so one of the two always sees the other.
   */
  private async chooseHolds(
    snapshot: Snapshot,
    image: ImageStore,
    previous: SnapshotInStore | undefined,
  ): Promise<Holds> {
    const own: Holds = { chunkHolds: 'own' };
    const key = { type: 'SnapshotInStore' as const, id: snapshot.id, storeId: image.store.id };
    const row = await this.repo.require(key);
    const settle = async (holds: Holds) => {
      const now = await this.repo.require(key);
      if (now.chunkHolds !== holds.chunkHolds || now.inheritsFrom !== holds.inheritsFrom) {
        await this.repo.update(key, now.version, {
          chunkHolds: holds.chunkHolds,
          inheritsFrom: holds.inheritsFrom,
        });
      }
      return holds;
    };
    if (!previous?.chunkHolds) return settle(own);
    const damagedAt = await this.repo.chunks.lastDamageAt(image.store.id);
    if (damagedAt && Date.parse(damagedAt) >= Date.parse(previous.createdAt)) return settle(own);
    const lineage: Holds = { chunkHolds: 'lineage', inheritsFrom: previous.snapshotId };
    await this.repo.update(key, row.version, lineage);
    const parent = await this.repo.get({ type: 'Snapshot', id: previous.snapshotId });
    const parentCopy = await this.repo.get({
      type: 'SnapshotInStore',
      id: previous.snapshotId,
      storeId: image.store.id,
    });
    if (parent?.status === S.BackedUp && parentCopy?.status === O.Ready) return lineage;
    return settle(own);
  }

  private async backToPrimary(snapshotId: string, owner: string, reason: string): Promise<void> {
    await this.repo
      .transition({
        key: { type: 'Snapshot', id: snapshotId },
        machine: snapshotMachine,
        from: S.BackingUp,
        to: S.CreatedOnPrimary,
        leaseOwner: owner,
        changes: { statusReason: reason },
      })
      .catch((e: unknown) => {
        if (!(e instanceof ConflictError)) throw e;
      });
  }

  private async readPlan(image: ImageStore, jobId: string, ctx: DriverContext): Promise<ScanPlan> {
    return JSON.parse(await this.store.readText(image, planKey(jobId, 'scan'), ctx)) as ScanPlan;
  }
  /** The image store a job backing `snapshot` up keeps its plans on: its copy's, or the zone's. */
  private async plansStoreOf(snapshot: Snapshot, copy?: SnapshotInStore): Promise<ImageStore | undefined> {
    if (copy) return this.store.imageStore(copy.storeId);
    const volume = await this.repo.get({ type: 'Volume', id: snapshot.volumeId });
    return volume ? this.store.zoneImageStore(volume.zoneId, 'snapshotId') : undefined;
  }
}
