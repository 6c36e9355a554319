/**
 * Chunked, content-addressed backup of NFS volumes to the image store, host side. See
 * docs/backup-format.md for the format and the reasons behind each choice.
 *
 * Bytes are read and written through `qemu-nbd` serving the image on a private unix socket, spoken
 * to by the small NBD client below: one qemu process per operation reads (or writes) any byte range
 * of a qcow2 through its whole backing chain, with no /dev/nbd kernel module and no temporary copy
 * of the disk. The image store is reached only through presigned URLs the control plane hands us.
 */

import { type ChildProcess, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, rename, rm, stat } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { z } from 'zod';
import {
  ChunkSizeSchema,
  chunkCount,
  chunkExtent,
  chunkRef,
  chunksOverlapping,
  type Extent,
  ExtentSchema,
  parseManifest,
  Sha256HexSchema,
  sha256Base64,
} from '../sdk/backup-manifest.js';
import { realRootOf, resolveConfinedPath } from '../sdk/confine.js';
import {
  DriverConflictError,
  DriverError,
  DriverInputError,
  DriverUnavailableError,
  ObjectNotFoundError,
} from '../sdk/errors.js';
import { qemuCheck, qemuCreate, qemuInfo } from '../sdk/qemu.js';
import type { ChunkBackupCounters, HostOperation, HostOperationContext } from '../sdk/types.js';
import { AbsolutePathSchema, RelativePathSchema } from '../sdk/validation.js';
import { assertHttpUrl, ChecksumMismatchError } from './download.js';
import { chainInfo, qemuMap } from './snapshot-ops.js';
import { redact, runPool } from './transfer.js';

/** Chunks in flight at once, for reads, uploads and downloads alike. */
export const BACKUP_CONCURRENCY = 4;
const MAX_ATTEMPTS = 4;
const BACKOFF_MS = 200;
const SizeSchema = z.number().int().positive().max(Number.MAX_SAFE_INTEGER);
const ImageFormatSchema = z.enum(['qcow2', 'raw']);
const UrlSchema = z.string().min(1).max(8192);
/** Largest JSON document (manifest or chunk list) fetched from a presigned URL. */
export const MAX_JSON_BYTES = 256 * 1024 * 1024;
const MAX_UPLOADS = 1_000_000;

const ChunkUrlSchema = z
  .object({ index: z.number().int().nonnegative(), sha256: Sha256HexSchema, url: UrlSchema })
  .strict();
/** What `uploadsUrl` serves: one presigned PUT per chunk to upload. */
const UploadListSchema = z.array(ChunkUrlSchema).max(MAX_UPLOADS);
/** What `chunksUrl` serves: one entry per chunk index, `null` for a zero chunk. */
const RestoreListSchema = z.array(ChunkUrlSchema.nullable());
const CountSchema = z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER);

/** What a backup counted: the SDK's {@link ChunkBackupCounters}. */
export type BackupCounters = ChunkBackupCounters;

const BackupCommon = {
  mountPath: AbsolutePathSchema,
  path: RelativePathSchema,
  format: ImageFormatSchema.default('qcow2'),
  chunkSizeBytes: ChunkSizeSchema,
  stallTimeoutSeconds: z.number().int().positive().max(3600).default(60),
};

const BackupScanArgs = z
  .object({
    ...BackupCommon,
    phase: z.literal('scan'),
    /** Absent (and no `changesSinceBackingPath`): a full backup of every allocated extent of the chain. */
    changedExtents: z.array(ExtentSchema).optional(),
    /**
     * The host works the changed extents out itself: when `path`'s backing file is exactly this
     * share-relative file (the previous backup's snapshot layer), they are `path`'s own (depth-0)
     * extents; otherwise the scan is full.
     */
    changesSinceBackingPath: RelativePathSchema.optional(),
    /** The previous manifest's chunk list, inline (small disks and tests). */
    previousChunks: z.array(Sha256HexSchema.nullable()).optional(),
    /** Presigned GET of the previous manifest; ignored (full scan) when its sizes differ from this disk's. */
    previousManifestUrl: UrlSchema.optional(),
    /** Hashes the image store already holds. */
    knownChunks: z.array(Sha256HexSchema).optional(),
  })
  .strict()
  .refine((a) => a.previousChunks === undefined || a.previousManifestUrl === undefined, {
    message: 'give the previous manifest as previousChunks or as previousManifestUrl, not both',
    path: ['previousManifestUrl'],
  })
  .refine((a) => a.changedExtents === undefined || a.changesSinceBackingPath === undefined, {
    message: 'give changedExtents or changesSinceBackingPath, not both',
    path: ['changesSinceBackingPath'],
  })
  .refine(
    (a) =>
      (a.changedExtents === undefined && a.changesSinceBackingPath === undefined) ||
      a.previousChunks !== undefined ||
      a.previousManifestUrl !== undefined,
    {
      message:
        'an incremental backup (changedExtents or changesSinceBackingPath) needs previousChunks or previousManifestUrl',
      path: ['previousChunks'],
    },
  );

const BackupUploadArgs = z
  .object({
    ...BackupCommon,
    phase: z.literal('upload'),
    /** Presigned PUTs for the hashes the scan reported missing; `index` is any chunk that has that hash. */
    uploads: UploadListSchema.optional(),
    /** Presigned GET of the same list as JSON, for lists too long for a host request. */
    uploadsUrl: UrlSchema.optional(),
    /** How many entries the list must hold: a guard against a truncated or wrong list. */
    count: CountSchema.optional(),
  })
  .strict()
  .refine((a) => (a.uploads === undefined) !== (a.uploadsUrl === undefined), {
    message: 'give exactly one of uploads (inline) or uploadsUrl',
    path: ['uploadsUrl'],
  });

const BackupChunksArgs = z.discriminatedUnion('phase', [BackupScanArgs, BackupUploadArgs]);
type BackupChunksArgs = z.infer<typeof BackupChunksArgs>;

/** Result of `backupChunks` phase `scan`. */
export interface BackupScanResult {
  phase: 'scan';
  virtualSizeBytes: number;
  chunkSizeBytes: number;
  /** True when only the chunks overlapping changed extents were read (the rest carried over). */
  incremental: boolean;
  /** The new manifest's complete chunk list. */
  chunks: Array<string | null>;
  /** Chunks (re)computed by this scan. */
  computed: Array<{ index: number; sha256: string | null }>;
  /** Distinct hashes the store lacks, each with one chunk index holding it: presign a PUT for each. */
  missing: Array<{ index: number; sha256: string }>;
  counters: BackupCounters;
}

/** Result of `backupChunks` phase `upload`. */
export interface BackupUploadResult {
  phase: 'upload';
  chunksUploaded: number;
  bytesRead: number;
  bytesUploaded: number;
}

/**
 * Backs up a volume's snapshot layer as content-addressed chunks, in two phases so the control
 * plane can presign PUTs for exactly the chunks the store lacks.
 *
 * `scan` reads the chunks overlapping the changed extents (incremental: every other entry is copied
 * from the previous manifest) or every allocated extent of the chain (`qemu-img map`; full), hashes
 * each, and reports the new chunk list and the hashes missing from `knownChunks`. Unallocated and
 * all-zero chunks are `null` and never read twice or uploaded. The previous manifest comes inline
 * (`previousChunks`) or as a presigned GET (`previousManifestUrl`, used only when its chunk and
 * virtual sizes are this scan's); the changed extents come inline (`changedExtents`) or are worked
 * out on the host (`changesSinceBackingPath`: `path`'s own extents when its backing file is that
 * layer, else a full scan). `incremental` in the result says which it was.
 *
 * `upload` re-reads each listed chunk (inline `uploads` or the JSON list at `uploadsUrl`), checks its
 * hash is still the one scanned (the snapshot layer must not change in between), and PUTs it to its
 * presigned URL, {@link BACKUP_CONCURRENCY} at a time, retrying network errors, 429 and 5xx with
 * backoff. Uploading a chunk twice is harmless (the key is its hash), so the phase can be repeated
 * after a failure.
 *
 * Host requests are small (16 KiB over SSM), so for real disks the lists travel as presigned JSON
 * objects: `previousManifestUrl`, `uploadsUrl`, and `chunksUrl` for {@link restoreChunks}.
 *
 * @example
 * const scan = await host.run<BackupScanResult>(hostId, { provider: 'nfs', operation: 'backupChunks',
 *   args: { phase: 'scan', mountPath, path: 'snapshots/vol-1/snap-2.qcow2', chunkSizeBytes: 4 << 20,
 *     previousManifestUrl: presignGet(previousManifestKey), changesSinceBackingPath: 'snapshots/vol-1/snap-1.qcow2' } });
 * await host.run(hostId, { provider: 'nfs', operation: 'backupChunks',
 *   args: { phase: 'upload', mountPath, path, chunkSizeBytes: 4 << 20, uploadsUrl: presignGet(planKey), count: plan.length } });
 */
export const backupChunks: HostOperation<BackupChunksArgs, BackupScanResult | BackupUploadResult> = {
  args: BackupChunksArgs,
  async run(args, ctx) {
    const realRoot = await realRootOf(args.mountPath);
    const source = await resolveConfinedPath(args.mountPath, args.path, { mustExist: true });
    // Proves every layer of the chain lies on the share (and names its format) before qemu opens it.
    const top = await chainInfo(source, realRoot, args.format, ctx);
    if (args.phase === 'scan') return scan(args, source, top.virtualSizeBytes, top.fullBackingFilename, ctx);
    return upload(args, source, top.virtualSizeBytes, ctx);
  },
};

async function scan(
  args: z.infer<typeof BackupScanArgs>,
  source: string,
  virtualSizeBytes: number,
  backingFile: string | undefined,
  ctx: HostOperationContext,
): Promise<BackupScanResult> {
  const size = args.chunkSizeBytes;
  const total = chunkCount(virtualSizeBytes, size);
  const previous = await previousChunks(args, virtualSizeBytes, total, ctx);
  const changed = previous === undefined ? undefined : await changedExtents(args, source, backingFile, ctx);
  const incremental = changed !== undefined && previous !== undefined;
  // Incremental: the previous list is the starting point. Full: everything starts as zero and only
  // allocated extents are read, so unallocated space costs nothing.
  const chunks: Array<string | null> = incremental ? [...previous] : new Array(total).fill(null);
  const extents = incremental ? changed : await allocatedExtents(source, args.format, ctx);
  const indexes = chunksOverlapping(extents, virtualSizeBytes, size);

  const computed: BackupScanResult['computed'] = [];
  let bytesRead = 0;
  ctx.progress(0, { phase: 'scan', chunks: indexes.length });
  await withNbd(source, args.format, 'read', ctx, async (nbd) => {
    let done = 0;
    await runPool(indexes, BACKUP_CONCURRENCY, ctx.signal, async (index) => {
      const { start, length } = chunkExtent(index, virtualSizeBytes, size);
      const bytes = await nbd.read(start, length);
      bytesRead += length;
      const ref = chunkRef(bytes);
      chunks[index] = ref;
      computed.push({ index, sha256: ref });
      done++;
      ctx.progress(Math.floor((done / Math.max(1, indexes.length)) * 100), { phase: 'scan' });
    });
  });
  computed.sort((a, b) => a.index - b.index);

  const known = new Set(args.knownChunks ?? []);
  const missing: BackupScanResult['missing'] = [];
  const seen = new Set<string>();
  let chunksChanged = 0;
  for (const { index, sha256 } of computed) {
    if (sha256 !== null && sha256 !== previous?.[index]) chunksChanged++;
    else if (sha256 === null && previous !== undefined && previous[index] !== null) chunksChanged++;
    if (sha256 === null || known.has(sha256) || seen.has(sha256)) continue;
    seen.add(sha256);
    missing.push({ index, sha256 });
  }
  const zeroChunks = chunks.filter((c) => c === null).length;
  return {
    phase: 'scan',
    virtualSizeBytes,
    chunkSizeBytes: size,
    incremental,
    chunks,
    computed,
    missing,
    counters: {
      bytesRead,
      bytesUploaded: 0,
      chunksTotal: total,
      chunksChanged,
      chunksReused: total - zeroChunks - missing.length,
      zeroChunks,
    },
  };
}

async function upload(
  args: z.infer<typeof BackupUploadArgs>,
  source: string,
  virtualSizeBytes: number,
  ctx: HostOperationContext,
): Promise<BackupUploadResult> {
  const total = chunkCount(virtualSizeBytes, args.chunkSizeBytes);
  const field = args.uploads ? 'uploads' : 'uploadsUrl';
  const uploads =
    args.uploads ??
    (await fetchList(args.uploadsUrl!, 'uploadsUrl', UploadListSchema, args.stallTimeoutSeconds, ctx));
  if (args.count !== undefined && uploads.length !== args.count) {
    throw new DriverInputError(`${field} lists ${uploads.length} chunks, not the ${args.count} expected`, {
      context: { field },
    });
  }
  // Validated up front so a bad entry or URL fails the call before any byte moves.
  for (const { index } of uploads) {
    if (index >= total) {
      throw new DriverInputError(`upload names chunk ${index}; the disk has ${total}`, {
        context: { field },
      });
    }
  }
  for (const { url } of uploads) assertHttpUrl(url);
  let bytesRead = 0;
  let bytesUploaded = 0;
  let done = 0;
  ctx.progress(0, { phase: 'upload', chunks: uploads.length });
  await withNbd(source, args.format, 'read', ctx, async (nbd) => {
    await runPool(uploads, BACKUP_CONCURRENCY, ctx.signal, async ({ index, sha256, url }) => {
      const { start, length } = chunkExtent(index, virtualSizeBytes, args.chunkSizeBytes);
      const bytes = await nbd.read(start, length);
      bytesRead += length;
      const actual = chunkRef(bytes);
      if (actual !== sha256) {
        throw new DriverConflictError(
          `chunk ${index} of ${args.path} now hashes to ${actual ?? 'zero'}, not ${sha256}: the snapshot changed since the scan`,
          { context: { path: args.path, index, sha256 } },
        );
      }
      await putChunk(url, bytes, sha256, index, args.stallTimeoutSeconds * 1000, ctx.signal);
      bytesUploaded += length;
      done++;
      ctx.progress(Math.floor((done / uploads.length) * 100), { phase: 'upload' });
    });
  });
  return { phase: 'upload', chunksUploaded: done, bytesRead, bytesUploaded };
}

const RestoreChunksArgs = z
  .object({
    mountPath: AbsolutePathSchema,
    path: RelativePathSchema,
    virtualSizeBytes: SizeSchema,
    chunkSizeBytes: ChunkSizeSchema,
    /** One entry per chunk index, in order; `null` is a zero chunk and is never fetched. */
    chunks: RestoreListSchema.optional(),
    /** Presigned GET of the same list as JSON, for lists too long for a host request. */
    chunksUrl: UrlSchema.optional(),
    /** How many entries the list must hold (every chunk index of the disk): a guard against a wrong list. */
    count: CountSchema.optional(),
    stallTimeoutSeconds: z.number().int().positive().max(3600).default(60),
  })
  .strict()
  .refine((a) => (a.chunks === undefined) !== (a.chunksUrl === undefined), {
    message: 'give exactly one of chunks (inline) or chunksUrl',
    path: ['chunksUrl'],
  })
  .refine((a) => a.chunks === undefined || restoreListProblem(a.chunks, a) !== 'length', {
    message: 'chunks must list every chunk index of the disk',
    path: ['chunks'],
  })
  .refine((a) => a.chunks === undefined || restoreListProblem(a.chunks, a) !== 'order', {
    message: 'each chunk entry must sit at its own index',
    path: ['chunks'],
  });
type RestoreList = z.infer<typeof RestoreListSchema>;

// Why a restore list does not fit the disk ('length' or 'order'), or undefined when it does.
function restoreListProblem(
  list: RestoreList,
  disk: { virtualSizeBytes: number; chunkSizeBytes: number },
): 'length' | 'order' | undefined {
  if (list.length !== chunkCount(disk.virtualSizeBytes, disk.chunkSizeBytes)) return 'length';
  if (!list.every((c, i) => c === null || c.index === i)) return 'order';
  return undefined;
}

/** Result of `restoreChunks`. */
export interface RestoreChunksResult {
  path: string;
  sizeBytes: number;
  virtualSizeBytes: number;
  format: 'qcow2';
  /** False when an earlier run had already restored the volume. */
  restored: boolean;
  chunksFetched: number;
  bytesDownloaded: number;
  zeroChunks: number;
}

/**
 * Restores a backup into a new qcow2 volume at `path`: creates an empty qcow2 of the backup's
 * virtual size under a temporary name, fetches the non-zero chunks from their presigned GETs
 * ({@link BACKUP_CONCURRENCY} at a time, retrying network errors, 429 and 5xx), verifies each one's
 * sha256 (a mismatch fails the restore with code `ChecksumMismatch`, naming the chunk; not
 * retryable), writes each at its offset through qemu-nbd, checks the image and renames it into
 * place. Zero chunks are never fetched or written (a new qcow2 reads as zeros), so the volume stays
 * sparse. Any failure removes the temporary file. A file already under `path` with the same virtual
 * size is an earlier run's result (only a complete restore is ever renamed there).
 *
 * The chunk list comes inline (`chunks`) or, for disks whose list would not fit a host request, as
 * a presigned GET of the same JSON array (`chunksUrl`), fetched with the same retry rules.
 *
 * @example
 * await host.run(hostId, { provider: 'nfs', operation: 'restoreChunks', args: {
 *   mountPath, path: 'volumes/vol-9.qcow2', virtualSizeBytes: m.virtualSizeBytes, chunkSizeBytes: m.chunkSizeBytes,
 *   chunksUrl: presignGet(restorePlanKey), count: m.chunks.length } });
 */
export const restoreChunks: HostOperation<z.infer<typeof RestoreChunksArgs>, RestoreChunksResult> = {
  args: RestoreChunksArgs,
  async run(args, ctx) {
    await realRootOf(args.mountPath);
    const target = await resolveConfinedPath(args.mountPath, args.path, { createParents: true });
    const chunks = args.chunks ?? (await fetchRestoreList(args, ctx));
    if (args.count !== undefined && chunks.length !== args.count) {
      const field = args.chunks ? 'chunks' : 'chunksUrl';
      throw new DriverInputError(`${field} lists ${chunks.length} chunks, not the ${args.count} expected`, {
        context: { field },
      });
    }
    const zeroChunks = chunks.filter((c) => c === null).length;
    const result = async (restored: boolean, chunksFetched: number, bytesDownloaded: number) => ({
      path: args.path,
      sizeBytes: (await stat(target)).size,
      virtualSizeBytes: args.virtualSizeBytes,
      format: 'qcow2' as const,
      restored,
      chunksFetched,
      bytesDownloaded,
      zeroChunks,
    });
    if (await exists(target)) {
      const existing = await qemuInfo(target, { format: 'qcow2', signal: ctx.signal });
      if (existing.virtualSizeBytes !== args.virtualSizeBytes) {
        throw new DriverConflictError(
          `${args.path} exists with virtual size ${existing.virtualSizeBytes}, not ${args.virtualSizeBytes}`,
          { context: { path: args.path } },
        );
      }
      ctx.logger.info('backup already restored', { path: args.path });
      return result(false, 0, 0);
    }
    for (const chunk of chunks) if (chunk) assertHttpUrl(chunk.url);

    const temp = join(dirname(target), `.${basename(target)}.${ctx.hostId}.${ctx.jobId}.tmp`);
    const wanted = chunks.filter((c): c is NonNullable<typeof c> => c !== null);
    let bytesDownloaded = 0;
    let done = 0;
    try {
      await qemuCreate(temp, { format: 'qcow2', sizeBytes: args.virtualSizeBytes, signal: ctx.signal });
      ctx.progress(0, { phase: 'restore', chunks: wanted.length });
      await withNbd(temp, 'qcow2', 'write', ctx, async (nbd) => {
        await runPool(wanted, BACKUP_CONCURRENCY, ctx.signal, async ({ index, sha256, url }) => {
          const { start, length } = chunkExtent(index, args.virtualSizeBytes, args.chunkSizeBytes);
          const bytes = await getChunk(url, index, length, args.stallTimeoutSeconds * 1000, ctx.signal);
          const actual = createHash('sha256').update(bytes).digest('hex');
          if (actual !== sha256) {
            throw new ChecksumMismatchError(`chunk ${index} (${sha256}) arrived with sha256 ${actual}`, {
              index,
              sha256,
              actual,
            });
          }
          await nbd.write(start, bytes);
          bytesDownloaded += length;
          done++;
          ctx.progress(Math.floor((done / wanted.length) * 100), { phase: 'restore' });
        });
        await nbd.flush();
      });
      const checked = await qemuCheck(temp, { format: 'qcow2', allowCorrupt: true, signal: ctx.signal });
      if (checked.corruptions > 0 || checked.checkErrors > 0) {
        throw new DriverError(`${args.path}: restored image failed qemu-img check`, {
          code: 'CorruptImage',
          context: { path: args.path, corruptions: checked.corruptions },
        });
      }
      await rename(temp, target);
    } finally {
      await rm(temp, { force: true });
    }
    ctx.progress(100, { phase: 'done' });
    return result(true, done, bytesDownloaded);
  },
};

// The restore list at `chunksUrl`, held to the same rules as an inline one.
async function fetchRestoreList(
  args: z.infer<typeof RestoreChunksArgs>,
  ctx: HostOperationContext,
): Promise<RestoreList> {
  const list = await fetchList(
    args.chunksUrl!,
    'chunksUrl',
    RestoreListSchema,
    args.stallTimeoutSeconds,
    ctx,
  );
  const problem = restoreListProblem(list, args);
  if (problem === 'length') {
    const total = chunkCount(args.virtualSizeBytes, args.chunkSizeBytes);
    throw new DriverInputError(`chunksUrl lists ${list.length} chunks; the disk has ${total}`, {
      context: { field: 'chunksUrl' },
    });
  }
  if (problem === 'order') {
    throw new DriverInputError('chunksUrl: each chunk entry must sit at its own index', {
      context: { field: 'chunksUrl' },
    });
  }
  return list;
}

// The previous manifest's chunk list: inline, or fetched from `previousManifestUrl`. A fetched
// manifest of another chunk size or disk size cannot seed this scan: undefined (a full scan).
async function previousChunks(
  args: z.infer<typeof BackupScanArgs>,
  virtualSizeBytes: number,
  total: number,
  ctx: HostOperationContext,
): Promise<Array<string | null> | undefined> {
  if (args.previousChunks !== undefined) {
    if (args.previousChunks.length !== total) {
      throw new DriverInputError(
        `previousChunks lists ${args.previousChunks.length} chunks; the disk has ${total}`,
        { context: { field: 'previousChunks' } },
      );
    }
    return args.previousChunks;
  }
  if (args.previousManifestUrl === undefined) return undefined;
  const text = await fetchText(
    args.previousManifestUrl,
    'previousManifestUrl',
    args.stallTimeoutSeconds,
    ctx,
  );
  let manifest: ReturnType<typeof parseManifest>;
  try {
    manifest = parseManifest(text);
  } catch (error) {
    throw new DriverInputError(`previousManifestUrl: ${(error as Error).message}`, {
      cause: error,
      context: { field: 'previousManifestUrl' },
    });
  }
  if (manifest.chunkSizeBytes !== args.chunkSizeBytes || manifest.virtualSizeBytes !== virtualSizeBytes) {
    ctx.logger.info('previous manifest does not fit this disk; full scan', {
      previous: { chunkSizeBytes: manifest.chunkSizeBytes, virtualSizeBytes: manifest.virtualSizeBytes },
      chunkSizeBytes: args.chunkSizeBytes,
      virtualSizeBytes,
    });
    return undefined;
  }
  return manifest.chunks;
}

// The extents changed since the previous backup: inline, or `path`'s own (depth-0) extents when its
// backing file is exactly `changesSinceBackingPath`. Any other base (the previous snapshot was
// deleted and merged into this one's base, the volume was reverted, no base at all) means the layer
// does not hold exactly the writes since that backup: undefined (a full scan).
async function changedExtents(
  args: z.infer<typeof BackupScanArgs>,
  source: string,
  backingFile: string | undefined,
  ctx: HostOperationContext,
): Promise<Extent[] | undefined> {
  if (args.changedExtents !== undefined) return args.changedExtents;
  if (args.changesSinceBackingPath === undefined) return undefined;
  const expected = await resolveConfinedPath(args.mountPath, args.changesSinceBackingPath);
  if (backingFile === undefined || resolve(backingFile) !== expected) {
    ctx.logger.info('snapshot layer is not based on the previous backup; full scan', {
      path: args.path,
      changesSinceBackingPath: args.changesSinceBackingPath,
    });
    return undefined;
  }
  // Data and zero extents alike: a range written as zeros since the previous backup changed too
  // (the same rule as snapshotChanges).
  const map = await qemuMap(source, args.format, ctx);
  return map
    .filter((e) => e.depth === 0 && e.present !== false)
    .map(({ start, length }) => ({ start, length }));
}

/**
 * The backup host operations, merged into the NFS operation set.
 *
 * @example
 * const ops = { ...otherOps, ...nfsBackupOperations };
 */
export const nfsBackupOperations = { backupChunks, restoreChunks } as const;

// ---------------------------------------------------------------------------------------------
// Image store transfers

/**
 * PUTs one chunk with its SHA-256 in `x-amz-checksum-sha256` (the grant signs that header, and the
 * store refuses a body that does not hash to it with 400 BadDigest), so a chunk torn or altered on
 * the way is never stored under its hash.
 */
async function putChunk(
  url: string,
  bytes: Buffer,
  sha256: string,
  index: number,
  timeoutMs: number,
  signal: AbortSignal,
): Promise<void> {
  const where = redact(url);
  await withRetry(signal, async () => {
    const response = await fetchWithTimeout(
      url,
      {
        method: 'PUT',
        body: bytes,
        headers: {
          'content-length': String(bytes.byteLength),
          'content-type': 'application/octet-stream',
          'x-amz-checksum-sha256': sha256Base64(sha256),
        },
      },
      timeoutMs,
      signal,
      `upload of chunk ${index} to ${where}`,
    );
    if (response.status === 400) {
      const text = await response.text().catch(() => '');
      // The bytes hashed right here, so the store saw other bytes: damaged on the way, send again.
      if (text.includes('<Code>BadDigest</Code>')) {
        throw new DriverUnavailableError(`chunk ${index}: ${where} refused its body as BadDigest`, {
          context: { index, status: 400, url: where },
        });
      }
      throw statusError(response.status, `chunk ${index}`, where, { index });
    }
    await response.body?.cancel().catch(() => undefined);
    if (response.status !== 200 && response.status !== 204)
      throw statusError(response.status, `chunk ${index}`, where, { index });
  });
}

async function getChunk(
  url: string,
  index: number,
  length: number,
  timeoutMs: number,
  signal: AbortSignal,
): Promise<Buffer> {
  const where = redact(url);
  return withRetry(signal, async () => {
    const response = await fetchWithTimeout(
      url,
      {},
      timeoutMs,
      signal,
      `download of chunk ${index} from ${where}`,
    );
    if (response.status !== 200) {
      await response.body?.cancel().catch(() => undefined);
      throw statusError(response.status, `chunk ${index}`, where, { index });
    }
    let body: Buffer;
    try {
      body = Buffer.from(await response.arrayBuffer());
    } catch (error) {
      if (signal.aborted) throw signal.reason;
      throw new DriverUnavailableError(`download of chunk ${index} from ${where} broke off`, {
        cause: error,
      });
    }
    if (body.byteLength !== length) {
      // A short or long body is a wrong object, not a flaky link: report it like a bad hash.
      throw new ChecksumMismatchError(
        `chunk ${index} from ${where} is ${body.byteLength} bytes, expected ${length}`,
        {
          index,
        },
      );
    }
    return body;
  });
}

async function fetchWithTimeout(
  url: string,
  init: RequestInit,
  timeoutMs: number,
  signal: AbortSignal,
  what: string,
): Promise<Response> {
  try {
    return await fetch(url, { ...init, signal: AbortSignal.any([signal, AbortSignal.timeout(timeoutMs)]) });
  } catch (error) {
    if (signal.aborted) throw signal.reason;
    throw new DriverUnavailableError(`${what} failed: ${(error as Error).message}`, { cause: error });
  }
}

function statusError(
  status: number,
  what: string,
  where: string,
  extra: Record<string, unknown> = {},
): DriverError {
  const context = { ...extra, status, url: where };
  if (status === 404) return new ObjectNotFoundError(`${what}: ${where} answered 404`, { context });
  if (status === 429 || status >= 500)
    return new DriverUnavailableError(`${what}: ${where} answered ${status}`, { context });
  // 403 is typically an expired presigned URL: the control plane must presign again.
  return new DriverError(`${what}: ${where} answered ${status}`, { code: 'TransferFailed', context });
}

/**
 * GETs a JSON document (a manifest or a chunk list) from the presigned URL in argument `field`, as
 * text, with the chunk transfers' retry rules (network errors, 429 and 5xx retried with backoff;
 * 404 is not-found; 403 and other statuses fail as `TransferFailed`). Bodies over
 * {@link MAX_JSON_BYTES} are refused.
 */
async function fetchText(
  url: string,
  field: string,
  stallTimeoutSeconds: number,
  ctx: HostOperationContext,
): Promise<string> {
  try {
    assertHttpUrl(url);
  } catch (error) {
    throw new DriverInputError(`${field}: ${(error as Error).message}`, { cause: error, context: { field } });
  }
  const what = field;
  const where = redact(url);
  const signal = ctx.signal;
  return withRetry(signal, async () => {
    const response = await fetchWithTimeout(
      url,
      {},
      stallTimeoutSeconds * 1000,
      signal,
      `download of ${what} from ${where}`,
    );
    if (response.status !== 200) {
      await response.body?.cancel().catch(() => undefined);
      throw statusError(response.status, what, where);
    }
    if (!response.body) return '';
    if (Number(response.headers.get('content-length') ?? 0) > MAX_JSON_BYTES) {
      await response.body.cancel().catch(() => undefined);
      throw tooLarge(what, where);
    }
    const parts: Buffer[] = [];
    let received = 0;
    try {
      for await (const part of response.body) {
        received += part.byteLength;
        if (received > MAX_JSON_BYTES) throw tooLarge(what, where);
        parts.push(Buffer.from(part));
      }
    } catch (error) {
      if (error instanceof DriverError) throw error;
      if (signal.aborted) throw signal.reason;
      throw new DriverUnavailableError(`download of ${what} from ${where} broke off`, { cause: error });
    }
    return Buffer.concat(parts).toString('utf8');
  });
}

function tooLarge(what: string, where: string): DriverError {
  return new DriverError(`${what} at ${where} is larger than ${MAX_JSON_BYTES} bytes`, {
    code: 'TransferFailed',
    context: { url: where },
  });
}

// A JSON list at a presigned URL, checked against `schema`; any problem names `field`.
async function fetchList<S extends z.ZodType>(
  url: string,
  field: string,
  schema: S,
  stallTimeoutSeconds: number,
  ctx: HostOperationContext,
): Promise<z.infer<S>> {
  const text = await fetchText(url, field, stallTimeoutSeconds, ctx);
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    throw new DriverInputError(`${field}: the list is not JSON`, { context: { field } });
  }
  const parsed = schema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new DriverInputError(`${field}: [${issue?.path.join('.')}] ${issue?.message ?? 'invalid list'}`, {
      context: { field },
    });
  }
  return parsed.data;
}

// Retries what is worth retrying (DriverUnavailableError) with exponential backoff.
async function withRetry<T>(signal: AbortSignal, attempt: () => Promise<T>): Promise<T> {
  for (let n = 1; ; n++) {
    try {
      return await attempt();
    } catch (error) {
      if (!(error instanceof DriverUnavailableError) || n >= MAX_ATTEMPTS || signal.aborted) throw error;
      await new Promise((resolve) => setTimeout(resolve, BACKOFF_MS * 2 ** (n - 1)));
    }
  }
}

// The query string of a presigned URL is a bearer credential: never log or report it.

// ---------------------------------------------------------------------------------------------
// Image inspection

const MapEntrySchema = z.object({
  start: z.number(),
  length: z.number(),
  data: z.boolean(),
  zero: z.boolean(),
});

/** Extents holding data anywhere in the chain (`qemu-img map`): what a full backup must read. */
async function allocatedExtents(
  source: string,
  format: string,
  ctx: HostOperationContext,
): Promise<Extent[]> {
  const stdout = await runTool('qemu-img', ['map', '--output=json', '-f', format, source], ctx.signal);
  const entries = z.array(MapEntrySchema).parse(JSON.parse(stdout));
  return entries.filter((e) => e.data && !e.zero).map(({ start, length }) => ({ start, length }));
}

function runTool(binary: string, args: string[], signal: AbortSignal): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(binary, args, { stdio: ['ignore', 'pipe', 'pipe'], signal });
    const out: Buffer[] = [];
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => out.push(c));
    child.stderr.on('data', (c: Buffer) => {
      stderr = (stderr + c.toString()).slice(-8192);
    });
    child.on('error', (error) => reject(signal.aborted ? signal.reason : error));
    child.on('close', (code) => {
      if (signal.aborted) reject(signal.reason);
      else if (code === 0) resolve(Buffer.concat(out).toString('utf8'));
      else
        reject(
          new DriverError(`${binary} ${args[0]} failed: ${stderr.trim().split('\n').slice(-2).join(' ')}`, {
            code: 'QemuFailed',
            context: { args, exitCode: code },
          }),
        );
    });
  });
}

async function exists(file: string): Promise<boolean> {
  try {
    await stat(file);
    return true;
  } catch (error) {
    if ((error as { code?: string }).code === 'ENOENT') return false;
    throw error;
  }
}

// ---------------------------------------------------------------------------------------------
// qemu-nbd and a minimal NBD client (fixed newstyle handshake, NBD_OPT_EXPORT_NAME, simple replies)

const NBD_MAGIC = Buffer.from('NBDMAGIC');
const IHAVEOPT = 0x49484156454f5054n;
const NBD_OPT_EXPORT_NAME = 1;
const NBD_FLAG_FIXED_NEWSTYLE = 1;
const NBD_FLAG_NO_ZEROES = 2;
const NBD_REQUEST_MAGIC = 0x25609513;
const NBD_REPLY_MAGIC = 0x67446698;
const NBD_CMD = { read: 0, write: 1, disc: 2, flush: 3 } as const;

/** One NBD connection: pipelined requests, replies matched by handle. */
interface NbdConnection {
  sizeBytes: number;
  read(offset: number, length: number): Promise<Buffer>;
  write(offset: number, data: Buffer): Promise<void>;
  flush(): Promise<void>;
}

/**
 * Serves `file` with qemu-nbd on a private unix socket, runs `work` with a connection to it, then
 * disconnects and waits for qemu-nbd to exit (it flushes and closes the image on the way out).
 */
async function withNbd<T>(
  file: string,
  format: string,
  mode: 'read' | 'write',
  ctx: HostOperationContext,
  work: (nbd: NbdConnection) => Promise<T>,
): Promise<T> {
  // Unix socket paths are limited to ~107 bytes, so the socket lives in a short private tmp dir.
  const dir = await mkdtemp(join(tmpdir(), 'strata-nbd-'));
  const socketPath = join(dir, 's');
  const args = [`--format=${format}`, `--socket=${socketPath}`, '--shared=1', '--cache=writeback'];
  if (mode === 'read') args.push('--read-only');
  args.push(file);
  const child = spawn('qemu-nbd', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (c: Buffer) => {
    stderr = (stderr + c.toString()).slice(-8192);
  });
  const exited = new Promise<number | null>((resolve) => {
    child.once('exit', (code) => resolve(code));
    child.once('error', () => resolve(null));
  });
  const onAbort = () => child.kill('SIGTERM');
  ctx.signal.addEventListener('abort', onAbort, { once: true });
  let client: NbdClient | undefined;
  try {
    const socket = await connectWhenReady(socketPath, child, () => stderr, ctx.signal);
    client = new NbdClient(socket);
    await client.handshake();
    const result = await work(client);
    await client.disconnect();
    client = undefined;
    const code = await exited;
    if (code !== 0) {
      throw new DriverError(`qemu-nbd exited with ${code}: ${stderr.trim().slice(-500)}`, {
        code: 'QemuFailed',
      });
    }
    return result;
  } catch (error) {
    if (ctx.signal.aborted) throw ctx.signal.reason;
    throw error;
  } finally {
    ctx.signal.removeEventListener('abort', onAbort);
    client?.destroy();
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    await exited;
    await rm(dir, { recursive: true, force: true });
  }
}

async function connectWhenReady(
  socketPath: string,
  child: ChildProcess,
  stderr: () => string,
  signal: AbortSignal,
): Promise<Socket> {
  const deadline = Date.now() + 15_000;
  for (;;) {
    if (signal.aborted) throw signal.reason;
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new DriverError(`qemu-nbd exited early: ${stderr().trim().slice(-500)}`, { code: 'QemuFailed' });
    }
    try {
      return await new Promise<Socket>((resolve, reject) => {
        const socket = connect(socketPath);
        socket.once('connect', () => {
          socket.off('error', reject);
          resolve(socket);
        });
        socket.once('error', reject);
      });
    } catch (error) {
      if (Date.now() > deadline) {
        throw new DriverUnavailableError(
          `qemu-nbd did not listen within 15 s: ${stderr().trim().slice(-500)}`,
          {
            cause: error,
          },
        );
      }
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }
}

interface Pending {
  length: number;
  resolve(data: Buffer | undefined): void;
  reject(error: Error): void;
}

class NbdClient implements NbdConnection {
  sizeBytes = 0;
  private readonly chunks: Buffer[] = [];
  private buffered = 0;
  private waiter: { n: number; resolve(b: Buffer): void; reject(e: Error): void } | undefined;
  private failure: Error | undefined;
  private readonly pending = new Map<bigint, Pending>();
  private nextHandle = 1n;

  constructor(private readonly socket: Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.chunks.push(chunk);
      this.buffered += chunk.byteLength;
      this.pump();
    });
    socket.on('error', (error) => this.fail(error));
    socket.on('close', () => this.fail(new Error('NBD connection closed')));
  }

  async handshake(): Promise<void> {
    const greeting = await this.readExact(18);
    if (!greeting.subarray(0, 8).equals(NBD_MAGIC) || greeting.readBigUInt64BE(8) !== IHAVEOPT) {
      throw new DriverError('qemu-nbd did not speak fixed-newstyle NBD', { code: 'QemuFailed' });
    }
    const serverFlags = greeting.readUInt16BE(16);
    const noZeroes = (serverFlags & NBD_FLAG_NO_ZEROES) !== 0;
    const option = Buffer.alloc(20);
    option.writeUInt32BE(NBD_FLAG_FIXED_NEWSTYLE | (noZeroes ? NBD_FLAG_NO_ZEROES : 0), 0);
    option.writeBigUInt64BE(IHAVEOPT, 4);
    option.writeUInt32BE(NBD_OPT_EXPORT_NAME, 12);
    option.writeUInt32BE(0, 16); // the default export, named ""
    this.socket.write(option);
    const exportInfo = await this.readExact(10 + (noZeroes ? 0 : 124));
    this.sizeBytes = Number(exportInfo.readBigUInt64BE(0));
    void this.replyLoop();
  }

  read(offset: number, length: number): Promise<Buffer> {
    return this.request(NBD_CMD.read, offset, length) as Promise<Buffer>;
  }

  async write(offset: number, data: Buffer): Promise<void> {
    await this.request(NBD_CMD.write, offset, data.byteLength, data);
  }

  async flush(): Promise<void> {
    await this.request(NBD_CMD.flush, 0, 0);
  }

  /** NBD_CMD_DISC has no reply: send it and wait for the server to close the socket. */
  async disconnect(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.socket.once('close', () => resolve()));
    this.socket.end(this.header(NBD_CMD.disc, 0n, 0, 0));
    await closed;
  }

  destroy(): void {
    this.socket.destroy();
  }

  private header(type: number, handle: bigint, offset: number, length: number): Buffer {
    const header = Buffer.alloc(28);
    header.writeUInt32BE(NBD_REQUEST_MAGIC, 0);
    header.writeUInt16BE(0, 4);
    header.writeUInt16BE(type, 6);
    header.writeBigUInt64BE(handle, 8);
    header.writeBigUInt64BE(BigInt(offset), 16);
    header.writeUInt32BE(length, 24);
    return header;
  }

  private request(type: number, offset: number, length: number, data?: Buffer): Promise<Buffer | undefined> {
    if (this.failure) return Promise.reject(this.failure);
    if (offset + length > this.sizeBytes) {
      return Promise.reject(new DriverInputError(`range ${offset}+${length} is beyond the disk`));
    }
    const handle = this.nextHandle++;
    return new Promise((resolve, reject) => {
      this.pending.set(handle, { length: type === NBD_CMD.read ? length : 0, resolve, reject });
      this.socket.write(this.header(type, handle, offset, length));
      if (data) this.socket.write(data);
    });
  }

  private async replyLoop(): Promise<void> {
    try {
      for (;;) {
        const reply = await this.readExact(16);
        if (reply.readUInt32BE(0) !== NBD_REPLY_MAGIC) throw new Error('bad NBD reply magic');
        const error = reply.readUInt32BE(4);
        const handle = reply.readBigUInt64BE(8);
        const pending = this.pending.get(handle);
        if (!pending) throw new Error('NBD reply for an unknown request');
        this.pending.delete(handle);
        if (error !== 0) {
          // With simple replies the payload after an error is ambiguous: give up on the connection.
          const failure = new DriverError(`qemu-nbd reported error ${error}`, { code: 'QemuFailed' });
          pending.reject(failure);
          this.fail(failure);
          return;
        }
        pending.resolve(pending.length > 0 ? await this.readExact(pending.length) : undefined);
      }
    } catch (error) {
      this.fail(error as Error);
    }
  }

  private readExact(n: number): Promise<Buffer> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      this.waiter = { n, resolve, reject };
      this.pump();
    });
  }

  private pump(): void {
    const waiter = this.waiter;
    if (!waiter || this.buffered < waiter.n) return;
    this.waiter = undefined;
    const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks);
    this.chunks.length = 0;
    const taken = all.subarray(0, waiter.n);
    const rest = all.subarray(waiter.n);
    if (rest.byteLength > 0) this.chunks.push(rest);
    this.buffered = rest.byteLength;
    waiter.resolve(taken);
  }

  private fail(error: Error): void {
    if (this.failure) return;
    this.failure = error;
    this.waiter?.reject(error);
    this.waiter = undefined;
    for (const pending of this.pending.values()) pending.reject(error);
    this.pending.clear();
  }
}
