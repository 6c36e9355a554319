/**
 * Restore of a chunked backup into a new qcow2 volume, host side (docs/backup-format.md). The
 * chunks come from the image store over presigned GETs and are written through qemu-nbd.
 */

import { createHash } from 'node:crypto';
import { rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { z } from 'zod';
import { ChunkSizeSchema, chunkCount, chunkExtent } from '../sdk/backup-manifest.js';
import { realRootOf, resolveConfinedPath } from '../sdk/confine.js';
import { DriverConflictError, DriverError, DriverInputError } from '../sdk/errors.js';
import { qemuCheck, qemuCreate, qemuInfo } from '../sdk/qemu.js';
import type { HostOperation, HostOperationContext } from '../sdk/types.js';
import { AbsolutePathSchema, RelativePathSchema } from '../sdk/validation.js';
import {
  BACKUP_CONCURRENCY,
  CountSchema,
  fetchList,
  getChunk,
  RestoreListSchema,
  SizeSchema,
  UrlSchema,
} from './chunk-transfer.js';
import { assertHttpUrl, ChecksumMismatchError } from './download.js';
import { withNbd } from './nbd-client.js';
import { runPool } from './transfer.js';

/** Chunks in flight at once, for reads, uploads and downloads alike. */
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
