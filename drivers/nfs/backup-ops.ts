/**
 * Chunked, content-addressed backup of NFS volumes to the image store, host side. See
 * docs/backup-format.md for the format and the reasons behind each choice.
 *
 * Bytes are read and written through `qemu-nbd` serving the image on a private unix socket, spoken
 * to by the small NBD client below: one qemu process per operation reads (or writes) any byte range
 * of a qcow2 through its whole backing chain, with no /dev/nbd kernel module and no temporary copy
 * of the disk. The image store is reached only through presigned URLs the control plane hands us.
 */

import { spawn } from 'node:child_process';
import { resolve } from 'node:path';
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
} from '../sdk/backup-manifest.js';
import { realRootOf, resolveConfinedPath } from '../sdk/confine.js';
import { DriverConflictError, DriverError, DriverInputError } from '../sdk/errors.js';
import type { ChunkBackupCounters, HostOperation, HostOperationContext } from '../sdk/types.js';
import { AbsolutePathSchema, RelativePathSchema } from '../sdk/validation.js';
import {
  BACKUP_CONCURRENCY,
  CountSchema,
  fetchList,
  fetchText,
  ImageFormatSchema,
  postChunk,
  putChunk,
  StagingPostSchema,
  UploadListSchema,
  UrlSchema,
} from './chunk-transfer.js';
import { assertHttpUrl } from './download.js';
import { withNbd } from './nbd-client.js';
import { restoreChunks } from './restore-ops.js';
import { chainInfo, qemuMap } from './snapshot-ops.js';
import { runPool } from './transfer.js';

/** Chunks in flight at once, for reads, uploads and downloads alike. */

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
    /**
     * A presigned POST policy for this job's staging prefix: every chunk the scan computes that is
     * neither in the previous manifest nor in `knownChunks` is uploaded there as `<keyPrefix><sha256>`
     * while its bytes are in hand, so the backup needs no second read and no second command.
     */
    staging: StagingPostSchema.optional(),
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
  /** Distinct hashes the store lacks and that were not staged, each with one chunk index holding it: presign a PUT for each. */
  missing: Array<{ index: number; sha256: string }>;
  /** With `staging`: the distinct hashes uploaded to the staging prefix, each with the index read. */
  staged: Array<{ index: number; sha256: string }>;
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
 * Backs up a volume's snapshot layer as content-addressed chunks. With a `staging` POST policy the
 * `scan` phase alone does it: each chunk it computes that is neither in the previous manifest nor
 * in `knownChunks` is uploaded to the job's staging prefix while its bytes are in hand (`staged` in
 * the result). The `upload` phase PUTs chunks to per-chunk presigned URLs: for the chunks still
 * missing afterwards, or for every missing chunk when there is no staging grant.
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
  const known = new Set(args.knownChunks ?? []);
  // Staging: a chunk is uploaded the first time it is read unless the store is known to hold it
  // (the previous manifest's chunks are in the store while that backup is).
  const staging = args.staging;
  const stored = new Set<string>(known);
  if (staging && previous) for (const c of previous) if (c !== null) stored.add(c);
  const staged: BackupScanResult['staged'] = [];
  const claimed = new Set<string>();
  let bytesRead = 0;
  let bytesUploaded = 0;
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
      if (staging && ref !== null && !stored.has(ref) && !claimed.has(ref)) {
        claimed.add(ref);
        await postChunk(staging, bytes, ref, index, args.stallTimeoutSeconds * 1000, ctx.signal);
        staged.push({ index, sha256: ref });
        bytesUploaded += length;
      }
      done++;
      ctx.progress(Math.floor((done / Math.max(1, indexes.length)) * 100), { phase: 'scan' });
    });
  });
  computed.sort((a, b) => a.index - b.index);
  staged.sort((a, b) => a.index - b.index);

  const missing: BackupScanResult['missing'] = [];
  const seen = new Set<string>(claimed);
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
    staged,
    counters: {
      bytesRead,
      bytesUploaded,
      chunksTotal: total,
      chunksChanged,
      chunksReused: total - zeroChunks - missing.length - staged.length,
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
/**
 * The backup host operations, merged into the NFS operation set.
 *
 * @example
 * const ops = { ...otherOps, ...nfsBackupOperations };
 */
export { BACKUP_CONCURRENCY } from './chunk-transfer.js';
export type { RestoreChunksResult } from './restore-ops.js';

export const nfsBackupOperations = { backupChunks, restoreChunks } as const;

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
