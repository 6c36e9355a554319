/**
 * Restore of a chunked backup into a new qcow2 volume, host side (docs/backup-format.md). The
 * chunks come from the image store over presigned GETs and are written straight into the new
 * image's clusters (drivers/sdk/qcow2-writer.ts), with no qemu process in the data path.
 */

import { rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { z } from 'zod';
import { ChunkSizeSchema, chunkCount, chunkExtent } from '../sdk/backup-manifest.js';
import { realRootOf, resolveConfinedPath } from '../sdk/confine.js';
import { DriverConflictError, DriverInputError } from '../sdk/errors.js';
import { type Qcow2Allocation, Qcow2Writer } from '../sdk/qcow2-writer.js';
import { qemuCheck, qemuInfo } from '../sdk/qemu.js';
import type { HostOperation, HostOperationContext } from '../sdk/types.js';
import { AbsolutePathSchema, RelativePathSchema } from '../sdk/validation.js';
import {
  ChunkUrlSchema,
  CountSchema,
  fetchList,
  getChunk,
  RestoreListSchema,
  SizeSchema,
  UrlSchema,
} from './chunk-transfer.js';
import { assertHttpUrl, ChecksumMismatchError } from './download.js';

/** Chunk GETs in flight at once during a restore, by default. */
export const RESTORE_CONCURRENCY = 8;
/** Bytes of chunks fetched and not yet written, at most, by default (a chunk is held whole). */
export const RESTORE_MAX_BYTES_IN_FLIGHT = 128 * 1024 * 1024;
/** Threads that hash restored chunks (measured faster than hashing on the event loop: see HashPool). */
const RESTORE_HASH_THREADS = 2;
/** Entries of one restore list page, as the control plane writes them. */
export const RESTORE_PAGE_ENTRIES = 256;
const MAX_PAGE_ENTRIES = 4096;
const MAX_PAGES = 1_000_000;

/** What `chunkPagesUrl` serves: the pages of the restore list, in order, and how many entries they hold. */
export const RestoreIndexSchema = z
  .object({
    version: z.literal(1),
    /** Non-zero chunks listed by all pages together. */
    entries: CountSchema,
    /** Presigned GETs of the pages; each serves a {@link RestorePageSchema} list. */
    pages: z.array(UrlSchema).max(MAX_PAGES),
  })
  .strict();
export type RestoreIndex = z.infer<typeof RestoreIndexSchema>;
/**
 * One page: non-zero chunks only (an index missing from every page is a zero chunk), in increasing
 * index order, continuing where the previous page stopped.
 */
export const RestorePageSchema = z.array(ChunkUrlSchema).max(MAX_PAGE_ENTRIES);

const RestoreChunksArgs = z
  .object({
    mountPath: AbsolutePathSchema,
    path: RelativePathSchema,
    virtualSizeBytes: SizeSchema,
    chunkSizeBytes: ChunkSizeSchema,
    /** One entry per chunk index, in order; `null` is a zero chunk and is never fetched. */
    chunks: RestoreListSchema.optional(),
    /** Presigned GET of the same list as JSON (one document of every URL; small disks). */
    chunksUrl: UrlSchema.optional(),
    /**
     * Presigned GET of a small index ({@link RestoreIndexSchema}) naming the list's pages: the
     * host request stays small whatever the disk's size, and the host holds one page or two.
     */
    chunkPagesUrl: UrlSchema.optional(),
    /** How many entries the list must hold (every chunk index of the disk): a guard against a wrong list. */
    count: CountSchema.optional(),
    stallTimeoutSeconds: z.number().int().positive().max(3600).default(60),
    /** Chunk GETs in flight at once. */
    concurrency: z.number().int().min(1).max(64).default(RESTORE_CONCURRENCY),
    /** Bytes of chunks fetched and not yet written, at most (at least one chunk always runs). */
    maxBytesInFlight: z
      .number()
      .int()
      .min(1024 * 1024)
      .max(1024 * 1024 * 1024)
      .default(RESTORE_MAX_BYTES_IN_FLIGHT),
  })
  .strict()
  .refine((a) => [a.chunks, a.chunksUrl, a.chunkPagesUrl].filter((form) => form !== undefined).length === 1, {
    message: 'give exactly one of chunks (inline), chunksUrl or chunkPagesUrl',
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
type RestoreArgs = z.infer<typeof RestoreChunksArgs>;
type ChunkEntry = z.infer<typeof ChunkUrlSchema>;

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
  /** Milliseconds spent fetching, verifying and writing the chunks, metadata and fsync included (only when `restored`). */
  transferMs?: number;
}

/**
 * Restores a backup into a new qcow2 volume at `path`, under a temporary name until it is whole:
 * fetches the non-zero chunks from their presigned GETs (`concurrency` at a time, 8 by default,
 * and no more than `maxBytesInFlight` bytes fetched and not yet written; network errors, 429 and
 * 5xx retried), hashes each one on a worker thread (a mismatch fails the restore with code
 * `ChecksumMismatch`, naming the chunk; not retryable) and writes it with positional writes into
 * the clusters the image writer gave it when the list named it (the list is in index order, so
 * the image's layout follows the disk's). Then the writer adds the image's metadata and fsyncs,
 * `qemu-img check` vouches for that metadata (it reads tables, not data: every data byte was
 * proven by its chunk's hash), and the file is renamed into place. Zero chunks are never fetched
 * or written (unallocated clusters read as zeros), so the volume stays sparse. Any failure removes
 * the temporary file. A file already under `path` with the same virtual size is an earlier run's
 * result (only a complete restore is ever renamed there).
 *
 * The chunk list comes paged (`chunkPagesUrl`: a small index naming presigned pages of up to
 * {@link RESTORE_PAGE_ENTRIES} entries; the host fetches page k+1 while it works on page k), or,
 * for small disks and tests, whole: inline (`chunks`) or as one presigned JSON array (`chunksUrl`).
 *
 * @example
 * await host.run(hostId, { provider: 'nfs', operation: 'restoreChunks', args: {
 *   mountPath, path: 'volumes/vol-9.qcow2', virtualSizeBytes: m.virtualSizeBytes, chunkSizeBytes: m.chunkSizeBytes,
 *   chunkPagesUrl: presignGet(restoreIndexKey), count: m.chunks.length } });
 */
export const restoreChunks: HostOperation<RestoreArgs, RestoreChunksResult> = {
  args: RestoreChunksArgs,
  async run(args, ctx) {
    await realRootOf(args.mountPath);
    const target = await resolveConfinedPath(args.mountPath, args.path, { createParents: true });
    const total = chunkCount(args.virtualSizeBytes, args.chunkSizeBytes);
    if (args.count !== undefined && args.count !== total && args.chunkPagesUrl !== undefined) {
      throw new DriverInputError(`count is ${args.count}, but the disk has ${total} chunk indexes`, {
        context: { field: 'count' },
      });
    }
    const list = await openRestoreList(args, ctx);
    const result = async (
      restored: boolean,
      chunksFetched: number,
      bytesDownloaded: number,
      transferMs?: number,
    ) => ({
      path: args.path,
      sizeBytes: (await stat(target)).size,
      virtualSizeBytes: args.virtualSizeBytes,
      format: 'qcow2' as const,
      restored,
      chunksFetched,
      bytesDownloaded,
      zeroChunks: total - list.count,
      ...(transferMs !== undefined ? { transferMs } : {}),
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

    const temp = join(dirname(target), `.${basename(target)}.${ctx.hostId}.${ctx.jobId}.tmp`);
    const hashes = new HashPool(RESTORE_HASH_THREADS);
    const started = performance.now();
    let transferMs = 0;
    let bytesDownloaded = 0;
    let done = 0;
    let lastPercent = -1;
    try {
      const image = await Qcow2Writer.create(temp, args.virtualSizeBytes);
      try {
        ctx.progress(0, { phase: 'restore', chunks: list.count });
        const transferStarted = performance.now();
        await runBounded(allocateInOrder(list.entries(), image, args), args, ctx.signal, async (entry) => {
          const { index, sha256, url, allocation } = entry;
          const fetched = await getChunk(
            url,
            index,
            allocation.length,
            args.stallTimeoutSeconds * 1000,
            ctx.signal,
          );
          const { bytes, hex } = await hashes.sha256(fetched);
          if (hex !== sha256) {
            throw new ChecksumMismatchError(`chunk ${index} (${sha256}) arrived with sha256 ${hex}`, {
              index,
              sha256,
              actual: hex,
            });
          }
          await image.write(allocation, bytes);
          bytesDownloaded += allocation.length;
          done++;
          const percent = list.count > 0 ? Math.floor((done / list.count) * 100) : 100;
          if (percent !== lastPercent) {
            lastPercent = percent;
            ctx.progress(percent, { phase: 'restore', chunks: done });
          }
        });
        if (done !== list.count) {
          throw new DriverInputError(
            `the restore list named ${done} chunks, not the ${list.count} it announced`,
            {
              context: { field: list.field },
            },
          );
        }
        await image.finish();
        transferMs = Math.round(performance.now() - transferStarted);
      } finally {
        await image.close();
      }
      await qemuCheck(temp, { format: 'qcow2', signal: ctx.signal });
      await rename(temp, target);
    } finally {
      await hashes.close();
      await rm(temp, { force: true });
    }
    ctx.progress(100, { phase: 'done' });
    ctx.logger.info('backup restored', {
      path: args.path,
      chunks: done,
      bytes: bytesDownloaded,
      transferMs,
      totalMs: Math.round(performance.now() - started),
    });
    return result(true, done, bytesDownloaded, transferMs);
  },
};

/** A restore list, whichever form it came in: its non-zero entries in index order. */
interface OpenedList {
  /** How many non-zero entries it holds. */
  count: number;
  /** The argument it came from, for messages. */
  field: 'chunks' | 'chunksUrl' | 'chunkPagesUrl';
  /** The entries, in increasing index order; pages are fetched one ahead of their use. */
  entries(): AsyncGenerator<ChunkEntry>;
}

// Opens the list in whichever form it was given and checks what can be checked before any byte moves.
async function openRestoreList(args: RestoreArgs, ctx: HostOperationContext): Promise<OpenedList> {
  const total = chunkCount(args.virtualSizeBytes, args.chunkSizeBytes);
  if (args.chunkPagesUrl === undefined) {
    const chunks = args.chunks ?? (await fetchRestoreList(args, ctx));
    const field = args.chunks ? 'chunks' : 'chunksUrl';
    if (args.count !== undefined && chunks.length !== args.count) {
      throw new DriverInputError(`${field} lists ${chunks.length} chunks, not the ${args.count} expected`, {
        context: { field },
      });
    }
    const wanted = chunks.filter((c): c is ChunkEntry => c !== null);
    for (const chunk of wanted) assertHttpUrl(chunk.url);
    return {
      count: wanted.length,
      field,
      async *entries() {
        yield* wanted;
      },
    };
  }
  const index = await fetchList(
    args.chunkPagesUrl,
    'chunkPagesUrl',
    RestoreIndexSchema,
    args.stallTimeoutSeconds,
    ctx,
  );
  if (index.entries > total) {
    throw new DriverInputError(`chunkPagesUrl announces ${index.entries} chunks; the disk has ${total}`, {
      context: { field: 'chunkPagesUrl' },
    });
  }
  for (const url of index.pages) {
    try {
      assertHttpUrl(url);
    } catch (error) {
      throw new DriverInputError(`chunkPagesUrl: ${(error as Error).message}`, {
        cause: error,
        context: { field: 'chunkPagesUrl' },
      });
    }
  }
  const page = (k: number) => {
    const fetched = fetchList(
      index.pages[k]!,
      `chunkPagesUrl page ${k}`,
      RestorePageSchema,
      args.stallTimeoutSeconds,
      ctx,
    );
    // Fetched ahead: a failure is seen when the page is awaited, never as an unhandled rejection.
    fetched.catch(() => undefined);
    return fetched;
  };
  return {
    count: index.entries,
    field: 'chunkPagesUrl',
    async *entries() {
      const wrongCount = (listed: string) =>
        new DriverInputError(
          `chunkPagesUrl: the pages list ${listed} chunks, not the ${index.entries} the index announces`,
          { context: { field: 'chunkPagesUrl' } },
        );
      let last = -1;
      let listed = 0;
      let next = index.pages.length > 0 ? page(0) : undefined;
      for (let k = 0; k < index.pages.length; k++) {
        const entries = await next!;
        next = k + 1 < index.pages.length ? page(k + 1) : undefined;
        listed += entries.length;
        if (listed > index.entries) throw wrongCount(`at least ${listed}`);
        for (const entry of entries) {
          if (entry.index <= last || entry.index >= total) {
            throw new DriverInputError(
              `chunkPagesUrl page ${k}: chunk index ${entry.index} is out of order or beyond the disk's ${total}`,
              { context: { field: 'chunkPagesUrl' } },
            );
          }
          assertHttpUrl(entry.url);
          last = entry.index;
          yield entry;
        }
      }
      if (listed !== index.entries) throw wrongCount(String(listed));
    },
  };
}

/** A list entry with the image clusters its chunk will be written to. */
type PlacedEntry = ChunkEntry & { allocation: Qcow2Allocation };

// Gives each chunk its clusters as the list names it: the list is in increasing index order, so
// the image is laid out in the disk's order whichever chunk arrives first.
async function* allocateInOrder(
  entries: AsyncGenerator<ChunkEntry>,
  image: Qcow2Writer,
  args: RestoreArgs,
): AsyncGenerator<PlacedEntry> {
  for await (const entry of entries) {
    const { start, length } = chunkExtent(entry.index, args.virtualSizeBytes, args.chunkSizeBytes);
    yield { ...entry, allocation: image.allocate(start, length) };
  }
}

/**
 * Runs `work` on each entry (pulled from the list as capacity frees up), at most `concurrency` at
 * once and with at most `maxBytesInFlight` bytes of chunks held. On the first failure no new entry
 * starts; the ones running are awaited, then the error is thrown.
 */
async function runBounded(
  list: AsyncGenerator<PlacedEntry>,
  args: RestoreArgs,
  signal: AbortSignal,
  work: (entry: PlacedEntry) => Promise<void>,
): Promise<void> {
  let failure: { error: unknown } | undefined;
  let held = 0;
  const waiting: Array<() => void> = [];
  const release = (length: number) => {
    held -= length;
    for (const wake of waiting.splice(0)) wake();
  };
  // One chunk always fits, however large, so a small budget slows a restore down but never stops it.
  const reserve = async (length: number) => {
    while (held > 0 && held + length > args.maxBytesInFlight && !failure) {
      await new Promise<void>((resolve) => waiting.push(resolve));
    }
    held += length;
  };
  const worker = async () => {
    for (;;) {
      if (failure) return;
      if (signal.aborted) {
        failure ??= { error: signal.reason };
        return;
      }
      let next: IteratorResult<PlacedEntry>;
      try {
        next = await list.next();
      } catch (error) {
        failure ??= { error };
        return;
      }
      if (next.done || failure) return;
      const entry = next.value;
      const { length } = entry.allocation;
      await reserve(length);
      try {
        if (!failure) await work(entry);
      } catch (error) {
        failure ??= { error };
      } finally {
        release(length);
      }
    }
  };
  await Promise.all(Array.from({ length: args.concurrency }, worker));
  await list.return(undefined).catch(() => undefined);
  if (failure) throw failure.error;
}

// The restore list at `chunksUrl`, held to the same rules as an inline one.
async function fetchRestoreList(args: RestoreArgs, ctx: HostOperationContext): Promise<RestoreList> {
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

async function exists(file: string): Promise<boolean> {
  try {
    await stat(file);
    return true;
  } catch (error) {
    if ((error as { code?: string }).code === 'ENOENT') return false;
    throw error;
  }
}

// The hash worker's whole program: sha256 of the bytes it is handed, which it hands back.
const HASH_WORKER = `
const { parentPort } = require('node:worker_threads');
const { createHash } = require('node:crypto');
parentPort.on('message', ({ id, buffer, length }) => {
  const hex = createHash('sha256').update(new Uint8Array(buffer, 0, length)).digest('hex');
  parentPort.postMessage({ id, buffer, hex }, [buffer]);
});
`;

interface Hashed {
  buffer: ArrayBuffer;
  hex: string;
}

/**
 * sha256 of chunks on worker threads. Each chunk's memory is moved to a worker and back (transferred,
 * not copied), so the event loop keeps reading sockets and writing chunks while they are hashed.
 * On this 2-core machine, when restores still wrote through qemu-nbd, a 256 MiB restore's transfer took 1.3–1.9 s this way, against 1.7–2.0 s
 * hashing each piece on the event loop as it arrived, qemu-nbd, the S3 endpoint and the host
 * sharing the cores.
 */
class HashPool {
  private readonly workers: Worker[] = [];
  private readonly pending = new Map<number, { resolve(r: Hashed): void; reject(e: unknown): void }>();
  private next = 0;

  constructor(size: number) {
    for (let i = 0; i < size; i++) {
      const worker = new Worker(HASH_WORKER, { eval: true });
      worker.on('message', ({ id, buffer, hex }: Hashed & { id: number }) => {
        const waiter = this.pending.get(id);
        this.pending.delete(id);
        waiter?.resolve({ buffer, hex });
      });
      worker.on('error', (error) => this.failAll(error));
      this.workers.push(worker);
    }
  }

  /** The bytes (the same memory, handed back) and their sha256. */
  async sha256(bytes: Buffer): Promise<{ bytes: Buffer; hex: string }> {
    // Only a buffer that owns its whole ArrayBuffer can be moved (a small one may sit in Node's
    // shared pool, which must never be moved): anything else is copied into memory of its own.
    const owns =
      bytes.byteOffset === 0 &&
      Object.prototype.toString.call(bytes.buffer) === '[object ArrayBuffer]' &&
      bytes.buffer.byteLength === bytes.byteLength;
    const own = owns ? bytes : Buffer.from(new Uint8Array(bytes).buffer);
    // Moving the memory detaches `own`: its length is read before.
    const length = own.byteLength;
    const id = this.next++;
    const worker = this.workers[id % this.workers.length]!;
    const { buffer, hex } = await new Promise<Hashed>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      const moved = own.buffer as ArrayBuffer;
      worker.postMessage({ id, buffer: moved, length }, [moved]);
    });
    return { bytes: Buffer.from(buffer, 0, length), hex };
  }

  async close(): Promise<void> {
    this.failAll(new Error('hash pool closed'));
    await Promise.all(this.workers.map((w) => w.terminate()));
  }

  private failAll(error: unknown): void {
    for (const waiter of this.pending.values()) waiter.reject(error);
    this.pending.clear();
  }
}
