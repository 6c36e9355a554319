/**
 * Backup verify jobs, like Proxmox Backup Server's: read the chunks of an image store (all, or a
 * sample), recompute each one's SHA-256 from its bytes, and compare it with its key (a chunk's key
 * is its hash). The chunk index is walked a page at a time by the backup-verify flow — each page
 * one bounded task run, the cursor and the running counts carried in the flow's state — so no
 * Lambda runs for long and a failed page is retried where it stopped.
 *
 * A chunk whose bytes do not hash to its key (`corrupt`) or whose object is gone (`missing`) is
 * marked in the chunk index (ChunkIndex.markCorrupt): it no longer counts as stored, so
 *
 * - the next backup of any snapshot that has the same data uploads it again from primary storage,
 *   whatever the store says of the damaged object (backup-service.ts), and since chunks are shared
 *   by content that one upload repairs every older backup naming it too;
 * - a restore of a backup naming it is refused up front, naming the reason, instead of failing on
 *   the host midway.
 *
 * The damaged object itself is left in place for the repairing upload to overwrite: deleting it
 * could race a backup re-uploading the same chunk at that moment (S3 has no conditional delete),
 * and the mark alone keeps everything from trusting it. A mark is conditional on the index entry
 * being the one that was read, so a chunk a backup stored again meanwhile is not marked.
 *
 * The job's result: counts (checked, ok, corrupt, missing), the damaged chunks' keys, and the
 * snapshots whose backups hold them.
 */
import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
import { chunkObjectKey } from '../../../drivers/sdk/backup-manifest.js';
import { ObjectNotFoundError } from '../../../drivers/sdk/errors.js';
import type { ProviderRegistry } from '../../../drivers/sdk/registry.js';
import {
  type DataObjectRef,
  type DriverContext,
  type ImageStoreDriver,
  isImageStoreDriver,
} from '../../../drivers/sdk/types.js';
import { ConflictError, UnavailableError, UnprocessableError } from '../errors.js';
import { newId } from '../ids.js';
import type { DataStore, Job } from '../model.js';
import { DataStoreStatus, JobState } from '../model.js';
import { allPages } from '../paging.js';
import { forEachLimit } from '../pool.js';
import type { ChunkEntry, Repository, WorkflowPort } from '../ports.js';
import { FlowName } from '../ports.js';
import {
  emptyTally,
  VERIFY_FINDINGS_KEPT,
  type VerifyOptions,
  type VerifyPage,
  type VerifyTally,
} from '../verify-options.js';
import { toStoreInfo } from './datastore-service.js';
import type { JobService, WorkflowFailure } from './job-service.js';

/** The job kind of a verify job. */
export const VERIFY_JOB_KIND = 'backup.verify';
/** Where chunks live in an image store (backup-service.ts). */
const CHUNK_PREFIX = 'backups/chunks';
/** Index entries one page reads at most (each a chunk of up to 32 MiB, 4 MiB by default). */
export const VERIFY_PAGE_CHUNKS = 64;
/** Table Scan calls one page makes at most (a Scan reads other items of the table too). */
const SCANS_PER_PAGE = 10;
const READ_CONCURRENCY = 4;

export interface VerifyDeps {
  repo: Repository;
  registry: ProviderRegistry;
  workflows: WorkflowPort;
  jobs: JobService;
  driverContext: (jobId: string) => DriverContext;
  /** Index entries per page (tests shrink it to exercise many pages). */
  pageChunks?: number;
}

/** The input of one page (the backup-verify flow's verifyChunks step). */
export interface VerifyStep {
  jobId: string;
  storeId: string;
  options: VerifyOptions;
  page: VerifyPage;
}

/**
 * Whether the chunk belongs to the job's sample: a fraction of all chunks, chosen by a hash of the
 * job id and the chunk's hash, so the choice is the same on every run of a page and differs from
 * job to job. Pure.
 *
 * @example
 * inSample('job-1', 'ab…', 1); // true: everything
 */
export function inSample(jobId: string, hash: string, fraction: number): boolean {
  if (fraction >= 1) return true;
  const digest = createHash('sha256').update(`${jobId}:${hash}`).digest();
  return digest.readUIntBE(0, 6) / 2 ** 48 < fraction;
}

/** The snapshots among a chunk's holders (the rest are restores or backups in progress: jobs). Pure. */
export function affectedSnapshots(holders: readonly string[]): string[] {
  return holders.filter((h) => h.startsWith('snap-')).sort();
}

/**
 * Adds one page's outcome to the running tally, keeping at most {@link VERIFY_FINDINGS_KEPT}
 * findings (the counts stay exact). Pure.
 */
export function addToTally(
  tally: VerifyTally,
  page: { seen: number; outcomes: Array<{ entry: ChunkEntry; outcome: Outcome }> },
): VerifyTally {
  const next: VerifyTally = { ...tally, findings: [...tally.findings], seen: tally.seen + page.seen };
  next.pages += 1;
  for (const { entry, outcome } of page.outcomes) {
    next.checked += 1;
    if (outcome === 'ok') next.ok += 1;
    else if (outcome === 'changed') next.changed += 1;
    else {
      next[outcome] += 1;
      if (next.findings.length < VERIFY_FINDINGS_KEPT) {
        next.findings.push({
          hash: entry.hash,
          path: chunkObjectKey(CHUNK_PREFIX, entry.hash),
          reason: outcome,
          snapshots: affectedSnapshots(entry.holders).slice(0, 1000),
        });
      }
    }
  }
  return next;
}

/** What reading one chunk found. `changed`: damaged when read, but stored again before it was marked. */
export type Outcome = 'ok' | 'corrupt' | 'missing' | 'changed';

/** The job's result, once the last page is done. */
export function verifyResult(storeId: string, options: VerifyOptions, tally: VerifyTally) {
  const damaged = tally.corrupt + tally.missing;
  return {
    storeId,
    sample: options.sample ?? 1,
    ...(options.maxChunks ? { maxChunks: options.maxChunks } : {}),
    checked: tally.checked,
    ok: tally.ok,
    corrupt: tally.corrupt,
    missing: tally.missing,
    changed: tally.changed,
    indexEntriesSeen: tally.seen,
    corruptChunks: tally.findings.filter((f) => f.reason === 'corrupt'),
    missingChunks: tally.findings.filter((f) => f.reason === 'missing'),
    findingsTruncated: damaged > tally.findings.length,
    affectedSnapshots: [...new Set(tally.findings.flatMap((f) => f.snapshots))].sort(),
    action:
      damaged > 0
        ? 'marked in the chunk index: the next backup of a snapshot holding the same data uploads them again from primary storage; restores needing them are refused until then'
        : 'none',
  };
}

type ImageStore = { store: DataStore; driver: ImageStoreDriver };

export class BackupVerify {
  constructor(private readonly deps: VerifyDeps) {}

  private get pageChunks(): number {
    return this.deps.pageChunks ?? VERIFY_PAGE_CHUNKS;
  }

  /** `POST /stores/{id}/verify`: a job and its backup-verify flow. */
  async start(storeId: string, options: VerifyOptions = {}): Promise<{ job: Job }> {
    await this.imageStore(storeId);
    const jobId = newId('job');
    const input = { jobId, storeId, options };
    const job = await this.deps.jobs.create(VERIFY_JOB_KIND, { type: 'store', id: storeId }, jobId, {
      flow: FlowName.BackupVerify,
      input,
    });
    try {
      const { executionId } = await this.deps.workflows.start(FlowName.BackupVerify, job.id, input);
      return { job: await this.deps.jobs.started(job.id, executionId) };
    } catch (e) {
      const reason = `could not start ${FlowName.BackupVerify}: ${(e as Error).message}`;
      await this.deps.jobs.fail(job.id, { code: 'WorkflowStartFailed', message: reason });
      throw new UnavailableError(reason, { jobId: job.id }, { cause: e });
    }
  }

  /**
   * The scheduled run: one verify job per image store that is Up and has none running. Returns the
   * jobs started and the stores skipped.
   */
  async startScheduled(
    options: VerifyOptions = {},
  ): Promise<{ started: Array<{ storeId: string; jobId: string }>; skipped: string[] }> {
    const stores = await allPages((cursor) =>
      this.deps.repo.list('DataStore', {
        ...(cursor ? { cursor } : {}),
        filter: { role: 'image', status: DataStoreStatus.Up },
      }),
    );
    const started: Array<{ storeId: string; jobId: string }> = [];
    const skipped: string[] = [];
    for (const store of stores) {
      if (!isImageStoreDriver(this.deps.registry.get(store.provider).driver)) continue;
      const running = await Promise.all(
        [JobState.Pending, JobState.Running].map((state) =>
          this.deps.jobs.list({ kind: VERIFY_JOB_KIND, targetId: store.id, state }, { limit: 1 }),
        ),
      );
      if (running.some((page) => page.items.length > 0)) {
        skipped.push(store.id);
        continue;
      }
      const { job } = await this.start(store.id, options);
      started.push({ storeId: store.id, jobId: job.id });
    }
    return { started, skipped };
  }

  /**
   * backup-verify, one page: up to {@link VERIFY_PAGE_CHUNKS} index entries, each sampled one read
   * and hashed (streamed: a chunk is never held in memory whole), damaged ones marked. Answers
   * where to go on from; the last page ends the job with its result.
   */
  async verifyPage(input: VerifyStep): Promise<VerifyPage> {
    const job = await this.deps.jobs.get(input.jobId);
    if (job.state === JobState.Succeeded || job.state === JobState.Failed) {
      // A page run again after the job ended (a retry of the last step): nothing more to do.
      return { done: true, tally: input.page.tally ?? emptyTally() };
    }
    const image = await this.imageStore(input.storeId);
    const tally = input.page.tally ?? emptyTally();
    const fraction = input.options.sample ?? 1;
    const budget = input.options.maxChunks ?? Number.POSITIVE_INFINITY;

    // Entries of this page: a few Scan calls, never more entries than one page holds.
    const entries: ChunkEntry[] = [];
    let cursor = input.page.cursor;
    for (let calls = 0; calls < SCANS_PER_PAGE && entries.length < this.pageChunks; calls++) {
      const page = await this.deps.repo.chunks.scanPage(image.store.id, {
        ...(cursor ? { cursor } : {}),
        limit: this.pageChunks - entries.length,
      });
      entries.push(...page.entries);
      cursor = page.cursor;
      if (!cursor) break;
    }

    const wanted: ChunkEntry[] = [];
    const outcomes: Array<{ entry: ChunkEntry; outcome: Outcome }> = [];
    for (const entry of entries) {
      if (!inSample(input.jobId, entry.hash, fraction)) continue;
      if (tally.checked + wanted.length + outcomes.length >= budget) break;
      if (entry.corrupt?.jobId === input.jobId) {
        // Marked by an earlier run of this very page (it died before answering): count it again.
        outcomes.push({ entry, outcome: entry.corrupt.reason });
      } else if (entry.stored && !entry.claimedAt) {
        wanted.push(entry);
      }
    }
    const ctx = this.deps.driverContext(input.jobId);
    await forEachLimit(wanted, READ_CONCURRENCY, async (entry) => {
      outcomes.push({ entry, outcome: await this.check(image, entry, input.jobId, ctx) });
    });
    const next = addToTally(tally, { seen: entries.length, outcomes });
    const done = !cursor || next.checked >= budget;
    if (done) {
      await this.deps.jobs.succeed(input.jobId, verifyResult(image.store.id, input.options, next));
      return { done: true, tally: next };
    }
    await this.deps.jobs.progress(input.jobId, Math.min(95, 5 + next.pages), {
      phase: 'verifying',
      checked: next.checked,
      corrupt: next.corrupt,
      missing: next.missing,
    });
    return { done: false, cursor, tally: next };
  }

  /** backup-verify, on failure. */
  async fail(input: { jobId: string; error: WorkflowFailure }): Promise<void> {
    await this.deps.jobs.failFromFlow(input.jobId, input.error, 'VerifyFailed');
  }

  /** Reads one chunk and hashes it; marks it in the index when it is damaged. */
  private async check(
    image: ImageStore,
    entry: ChunkEntry,
    jobId: string,
    ctx: DriverContext,
  ): Promise<Outcome> {
    const actual = await this.hashOf(image, chunkObjectKey(CHUNK_PREFIX, entry.hash), ctx);
    if (actual === entry.hash) return 'ok';
    const reason = actual === undefined ? 'missing' : 'corrupt';
    ctx.logger.warn('backup chunk damaged', { hash: entry.hash, reason, storeId: image.store.id });
    const marked = await this.deps.repo.chunks.markCorrupt(image.store.id, entry.hash, {
      jobId,
      reason,
      ...(entry.storedAt ? { storedAt: entry.storedAt } : {}),
    });
    return marked ? reason : 'changed';
  }

  /** The SHA-256 (hex) of an object's bytes, streamed; `undefined` when it does not exist. */
  private async hashOf(image: ImageStore, path: string, ctx: DriverContext): Promise<string | undefined> {
    let body: Readable;
    try {
      ({ body } = await image.driver.readStream({
        store: toStoreInfo(image.store),
        object: blob(path),
        ctx,
      }));
    } catch (e) {
      if (e instanceof ObjectNotFoundError) return undefined;
      throw e;
    }
    const hash = createHash('sha256');
    for await (const part of body) hash.update(part as Buffer);
    return hash.digest('hex');
  }

  private async imageStore(storeId: string): Promise<ImageStore> {
    const store = await this.deps.repo.require({ type: 'DataStore', id: storeId });
    const driver = this.deps.registry.get(store.provider).driver;
    if (store.role !== 'image' || !isImageStoreDriver(driver)) {
      throw new UnprocessableError(`store ${storeId} is not an image store: it holds no backup chunks`, {
        field: 'id',
      });
    }
    if (store.status !== DataStoreStatus.Up && store.status !== DataStoreStatus.Disabled) {
      throw new ConflictError(`store ${storeId} is ${store.status}; verify needs it Up or Disabled`, {
        state: store.status,
      });
    }
    return { store, driver };
  }
}

function blob(path: string): DataObjectRef {
  return { kind: 'snapshot', id: path.split('/').pop() ?? 'chunk', path };
}
