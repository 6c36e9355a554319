/**
 * The orphan sweep: per store, what Strata left behind that nothing owns any more — a crash between
 * a file's creation and its row, a delete that stopped half way, an upload a client never finished.
 * It finds four kinds, each under a rule that can only err on the side of keeping:
 *
 * - **object**: a file or object inside Strata's own prefixes ({@link STRATA_PREFIXES}), older than
 *   the grace window, whose path no row records and whose path names no entity that still exists
 *   (a `vol-…`, `tpl-…`, `snap-…` id, or a `job-…` still running). Anything outside those prefixes,
 *   or without a modification time, is never touched.
 * - **upload**: a multipart upload of an image store started before the upload window and named by
 *   no row's `uploadId`.
 * - **chunk**: a backup chunk whose holders are all gone (no snapshot, no running job) and that was
 *   last released before the chunk window (24 h, as the PBS and kopia collectors use, so a backup
 *   writing now is never hurt), or a chunk object the index does not know, older than that window.
 * - **claim**: a collector's claim on a chunk older than any collector lives (it died mid-delete).
 *
 * Deleting a chunk always goes through a claim in the chunk index first, so a backup that pins the
 * chunk meanwhile waits instead of relying on an object about to disappear. The dry run reports and
 * changes nothing; the real run deletes; a second run finds nothing. Every finding is recorded on the
 * sweep's job.
 */
import { chunkObjectKey } from '../../../drivers/sdk/backup-manifest.js';
import type { ProviderRegistry } from '../../../drivers/sdk/registry.js';
import type { DataObjectRef, DriverContext } from '../../../drivers/sdk/types.js';
import { isImageStoreDriver } from '../../../drivers/sdk/types.js';
import { UnavailableError } from '../errors.js';
import type { DataStore, EntityType, Job } from '../model.js';
import { DataStoreStatus, JobState } from '../model.js';
import { allPages } from '../paging.js';
import type { Clock, Repository, WorkflowPort } from '../ports.js';
import { FlowName, STALE_CLAIM_MS, systemClock } from '../ports.js';
import { type SweepOptions, SweepOptionsSchema } from '../sweep-options.js';
import { type StoreObject, toStoreInfo } from './datastore-service.js';
import type { JobService, WorkflowFailure } from './job-service.js';

/** The prefixes (relative to a store's root or S3 prefix) under which Strata writes objects. */
export const STRATA_PREFIXES = [
  'templates/',
  'isos/',
  'volumes/',
  'snapshots/',
  'backups/manifests/',
  'backups/plans/',
] as const;
/** Where backup chunks live: `backups/chunks/<ab>/<sha256>`. */
export const CHUNK_PREFIX = 'backups/chunks/';

export const SWEEP_DEFAULTS = {
  /** Objects younger than this are being written by someone: never orphans. */
  objectGraceSeconds: 60 * 60,
  /** Multipart uploads: the longest a client may take with its presigned parts. */
  uploadGraceSeconds: 24 * 60 * 60,
  /** Chunks: the PBS and kopia collectors' safety window. */
  chunkGraceSeconds: 24 * 60 * 60,
};

/** Findings kept on the job (the job item must stay well under DynamoDB's 400 KB). */
export const FINDINGS_KEPT = 500;

export type OrphanKind = 'object' | 'upload' | 'chunk' | 'claim';

export interface Finding {
  storeId: string;
  kind: OrphanKind;
  /** The object's path, or the chunk's hash. */
  ref: string;
  uploadId?: string;
  reason: string;
  action: 'reported' | 'deleted' | 'skipped' | 'failed';
  error?: string;
}

/**
 * A finding and, for a chunk, the claim in the chunk index that must succeed before its object may
 * go (made when it was found, from what the index said then).
 */
interface Pending {
  finding: Finding;
  claim?: () => Promise<boolean>;
}

export interface SweepReport {
  jobId: string;
  dryRun: boolean;
  stores: string[];
  counts: Record<OrphanKind, number>;
  deleted: number;
  failed: number;
  findings: Finding[];
}

export { type SweepOptions, SweepOptionsSchema };

export interface SweepDeps {
  repo: Repository;
  workflows: WorkflowPort;
  registry: ProviderRegistry;
  jobs: JobService;
  driverContext: (jobId: string) => DriverContext;
  /** What a store holds, each object with its owning row (DataStoreService.listObjects). */
  listObjects: (storeId: string, jobId: string) => Promise<StoreObject[]>;
  /** A host that mounts the store, for drivers that need one. */
  selectHost: (storeIds: string[]) => Promise<{ id: string }>;
  clock?: Clock;
}

const ID_TOKEN = /\b(vol|tpl|iso|snap|job)-[A-Za-z0-9-]+/g;
const TYPE_OF_TOKEN: Record<string, EntityType> = {
  vol: 'Volume',
  tpl: 'Template',
  iso: 'Template',
  snap: 'Snapshot',
  job: 'Job',
};

export class OrphanSweep {
  private readonly clock: Clock;

  constructor(private readonly deps: SweepDeps) {
    this.clock = deps.clock ?? systemClock;
  }

  /** Starts the orphan-sweep flow: a job, because host-mounted stores are listed through hosts. */
  async start(options: SweepOptions = {}): Promise<{ job: Job }> {
    const { jobs, workflows } = this.deps;
    const job = await jobs.create('reconcile.sweep', {
      type: 'sweep',
      id: options.storeIds?.join(',') || 'all',
    });
    try {
      const { executionId } = await workflows.start(FlowName.OrphanSweep, job.id, { jobId: job.id, options });
      return { job: await jobs.started(job.id, executionId) };
    } catch (e) {
      const reason = `could not start ${FlowName.OrphanSweep}: ${(e as Error).message}`;
      await jobs.fail(job.id, { code: 'WorkflowStartFailed', message: reason });
      throw new UnavailableError(reason, { jobId: job.id }, { cause: e });
    }
  }

  /** orphan-sweep, on failure. */
  async fail(input: { jobId: string; error: WorkflowFailure }): Promise<void> {
    await this.deps.jobs.failFromFlow(input.jobId, input.error, 'SweepFailed');
  }

  /** orphan-sweep: the sweep itself, recorded on the job. */
  async run(jobId: string, options: SweepOptions = {}): Promise<SweepReport> {
    const { repo, jobs } = this.deps;
    const dryRun = options.dryRun ?? false;
    const job = { id: jobId };
    const findings: Finding[] = [];
    const stores = (await allPages((cursor) => repo.list('DataStore', cursor ? { cursor } : {}))).filter(
      (s) =>
        (options.storeIds ? options.storeIds.includes(s.id) : true) &&
        (s.status === DataStoreStatus.Up || s.status === DataStoreStatus.Disabled),
    );
    for (const store of stores) {
      const pending = await this.sweepStore(store, job.id, dryRun, options);
      findings.push(...pending.map((p) => p.finding));
    }
    const counts: Record<OrphanKind, number> = { object: 0, upload: 0, chunk: 0, claim: 0 };
    for (const f of findings) counts[f.kind] += 1;
    const report: SweepReport = {
      jobId: job.id,
      dryRun,
      stores: stores.map((s) => s.id),
      counts,
      deleted: findings.filter((f) => f.action === 'deleted').length,
      failed: findings.filter((f) => f.action === 'failed').length,
      findings,
    };
    await jobs.succeed(job.id, {
      ...report,
      findings: findings.slice(0, FINDINGS_KEPT),
      findingsTruncated: findings.length > FINDINGS_KEPT,
    });
    return report;
  }

  private async sweepStore(
    store: DataStore,
    jobId: string,
    dryRun: boolean,
    options: SweepOptions,
  ): Promise<Pending[]> {
    const now = this.clock.now().getTime();
    const before = (seconds: number | undefined, fallback: number) => now - (seconds ?? fallback) * 1000;
    const objectsBefore = before(options.objectGraceSeconds, SWEEP_DEFAULTS.objectGraceSeconds);
    const chunksBefore = before(options.chunkGraceSeconds, SWEEP_DEFAULTS.chunkGraceSeconds);
    const uploadsBefore = before(options.uploadGraceSeconds, SWEEP_DEFAULTS.uploadGraceSeconds);

    const objects = await this.deps.listObjects(store.id, jobId);
    const rows = await allPages((cursor) => this.deps.repo.listInStore(store.id, cursor ? { cursor } : {}));
    const owners = new Ownership(this.deps.repo);
    const findings: Pending[] = [];

    // Objects inside Strata's prefixes that no row owns.
    for (const object of objects) {
      if (object.owner || !STRATA_PREFIXES.some((p) => object.path.startsWith(p))) continue;
      if (!object.modifiedAt || Date.parse(object.modifiedAt) >= objectsBefore) continue;
      if (await owners.pathNamesLiveEntity(object.path)) continue;
      findings.push({
        finding: {
          storeId: store.id,
          kind: 'object',
          ref: object.path,
          reason: 'no row owns it',
          action: 'reported',
        },
      });
    }

    const provider = this.deps.registry.get(store.provider);
    const driver = provider.driver;
    if (isImageStoreDriver(driver)) {
      // Multipart uploads nobody will complete.
      const referenced = new Set(rows.map((r) => (r as { uploadId?: string }).uploadId).filter(Boolean));
      const ctx = this.deps.driverContext(jobId);
      const uploads = await driver.listUploads({
        store: toStoreInfo(store),
        ctx,
        olderThan: new Date(uploadsBefore),
      });
      for (const upload of uploads) {
        if (referenced.has(upload.uploadId)) continue;
        findings.push({
          finding: {
            storeId: store.id,
            kind: 'upload',
            ref: upload.path,
            uploadId: upload.uploadId,
            reason: `started ${upload.initiatedAt} and never completed`,
            action: 'reported',
          },
        });
      }
      findings.push(...(await this.chunkFindings(store, objects, owners, chunksBefore, now)));
    }

    if (dryRun || findings.length === 0) return findings;
    const hostId = driver.getCapabilities().needsHost
      ? (await this.deps.selectHost([store.id])).id
      : undefined;
    for (const pending of findings) await this.remove(store, pending, jobId, hostId);
    return findings;
  }

  private async chunkFindings(
    store: DataStore,
    objects: StoreObject[],
    owners: Ownership,
    chunksBefore: number,
    now: number,
  ): Promise<Pending[]> {
    const { chunks } = this.deps.repo;
    const findings: Pending[] = [];
    const chunk = (ref: string, reason: string, claim: () => Promise<boolean>, kind: OrphanKind = 'chunk') =>
      findings.push({ finding: { storeId: store.id, kind, ref, reason, action: 'reported' }, claim });
    const entries = await chunks.scan(store.id);
    const indexed = new Set(entries.map((e) => e.hash));
    const objectAt = new Map(objects.map((o) => [o.path, o]));
    for (const entry of entries) {
      const claimedAt = entry.claimedAt;
      if (claimedAt) {
        if (Date.parse(claimedAt) < now - STALE_CLAIM_MS) {
          chunk(
            entry.hash,
            `claimed for deletion at ${claimedAt} by a collector that did not finish`,
            () => chunks.reclaim(store.id, entry.hash, claimedAt),
            'claim',
          );
        }
        continue;
      }
      const live = await owners.liveHolders(entry.holders);
      if (live.length > 0) continue;
      // Released long enough ago (or, for entries from before release times were kept, stored long
      // enough ago) that no backup can be about to pin it.
      const since = entry.releasedAt ?? objectAt.get(chunkPath(entry.hash))?.modifiedAt;
      if (entry.holders.length === 0 && (!since || Date.parse(since) >= chunksBefore)) continue;
      chunk(
        entry.hash,
        entry.holders.length
          ? `held only by ${entry.holders.join(', ')}, which no longer exist`
          : 'no manifest holds it',
        () => this.releasedAndClaimed(store.id, entry.hash),
      );
    }
    for (const object of objects) {
      if (!object.path.startsWith(CHUNK_PREFIX)) continue;
      const hash = object.path.split('/').pop() ?? '';
      if (!/^[0-9a-f]{64}$/.test(hash) || object.path !== chunkPath(hash) || indexed.has(hash)) continue;
      if (!object.modifiedAt || Date.parse(object.modifiedAt) >= chunksBefore) continue;
      chunk(hash, 'the chunk index does not know it', () => chunks.claimUnindexed(store.id, hash));
    }
    return findings;
  }

  /** Deletes what one finding names, claiming chunks first. Records the outcome on the finding. */
  private async remove(
    store: DataStore,
    { finding, claim }: Pending,
    jobId: string,
    hostId: string | undefined,
  ) {
    const { repo } = this.deps;
    const driver = this.deps.registry.get(store.provider).driver;
    const ctx = this.deps.driverContext(jobId);
    const base = { store: toStoreInfo(store), ctx, ...(hostId ? { hostId } : {}) };
    try {
      if (finding.kind === 'object') {
        await driver.deleteAsync({ ...base, object: plainObject(finding.ref) });
      } else if (finding.kind === 'upload') {
        if (!isImageStoreDriver(driver)) return;
        await driver.abortUpload({ ...base, object: plainObject(finding.ref), uploadId: finding.uploadId! });
      } else if (claim) {
        const hash = finding.ref;
        if (!(await claim())) {
          finding.action = 'skipped';
          finding.error = 'the chunk changed since it was found (pinned or claimed again)';
          return;
        }
        await driver.deleteAsync({ ...base, object: plainObject(chunkPath(hash)) });
        await repo.chunks.forget(store.id, [hash]);
      }
      finding.action = 'deleted';
    } catch (e) {
      finding.action = 'failed';
      finding.error = (e as Error).message;
    }
  }

  /** Removes the chunk's dead holders and claims it if none is left. */
  private async releasedAndClaimed(storeId: string, hash: string): Promise<boolean> {
    const { chunks } = this.deps.repo;
    const current = await chunks.holders(storeId, hash);
    if (!current) return false;
    // Checked again, uncached, at the moment of deleting: a holder may have appeared since.
    const owners = new Ownership(this.deps.repo);
    if ((await owners.liveHolders(current.holders)).length > 0) return false;
    let claimed = false;
    for (const holder of current.holders.length ? current.holders : ['sweep']) {
      const { collectable } = await chunks.release(storeId, [hash], holder, { collect: true });
      if (collectable.includes(hash)) claimed = true;
    }
    return claimed;
  }
}

/** Caches which entities exist while one store is swept. */
class Ownership {
  private readonly known = new Map<string, boolean>();

  constructor(private readonly repo: Repository) {}

  async pathNamesLiveEntity(path: string): Promise<boolean> {
    for (const [token, prefix] of [...path.matchAll(ID_TOKEN)].map((m) => [m[0], m[1]!] as const)) {
      if (await this.alive(TYPE_OF_TOKEN[prefix]!, token)) return true;
    }
    return false;
  }

  /** The holders that still exist: a snapshot row, or a job that has not ended. */
  async liveHolders(holders: string[]): Promise<string[]> {
    const live: string[] = [];
    for (const holder of holders) {
      const prefix = holder.split('-')[0] ?? '';
      const type = TYPE_OF_TOKEN[prefix];
      // A holder of a shape the sweep does not know is treated as alive.
      if (!type || (await this.alive(type, holder))) live.push(holder);
    }
    return live;
  }

  private async alive(type: EntityType, id: string): Promise<boolean> {
    const cacheKey = `${type}:${id}`;
    const cached = this.known.get(cacheKey);
    if (cached !== undefined) return cached;
    const row = await this.repo.get({ type, id });
    const alive =
      row !== undefined &&
      (type !== 'Job' ||
        (row as { state: string }).state === JobState.Pending ||
        (row as { state: string }).state === JobState.Running);
    this.known.set(cacheKey, alive);
    return alive;
  }
}

function chunkPath(hash: string): string {
  return chunkObjectKey(CHUNK_PREFIX, hash);
}

/** An object addressed by its path alone (drivers delete `object.path` as given). */
function plainObject(path: string): DataObjectRef {
  const kind = path.startsWith('templates/') ? 'template' : path.startsWith('isos/') ? 'iso' : 'volume';
  return { kind, id: path.split('/').pop() ?? path, path };
}
