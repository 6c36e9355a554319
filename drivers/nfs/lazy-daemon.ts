/**
 * The lazy-restore daemon: one detached process per lazily restored volume, started by host
 * operation `lazyRestoreStart` (./lazy-restore.ts) as `node host-main.js --lazy-restore-daemon
 * <stateDir>`. It serves the backup's virtual disk as a read-only NBD export (./nbd-server.ts) on a
 * unix socket that the new volume's qcow2 overlay names as its backing, and fills a local cache
 * with every chunk in the background (hydration).
 *
 * A read of chunk i answers from the cache when the chunk is there (or when it is a zero chunk:
 * the cache file is sparse and those ranges are never written); otherwise it fetches the chunk from
 * its presigned GET, checks its sha256 (a mismatch is an EIO reply and a log line, never wrong
 * bytes), writes it to the cache, syncs it, marks it in the bitmap and then answers. Concurrent
 * reads of one chunk share one fetch, and hydration uses the same path.
 *
 * State directory (`.strata/lazy/<volumeId>/` on the share):
 * - `config.json`   sizes, socket path, fetch concurrency (written once by lazyRestoreStart)
 * - `chunks.json`   the restore list, one `{index, sha256, url}` or `null` per chunk; rewritten
 *                   with fresh URLs by lazyRestoreStatus, re-read by the daemon when it changes
 * - `cache.raw`     raw, sparse, the virtual size: the chunks fetched so far
 * - `bitmap`        one byte per chunk, 1 once that chunk's bytes are synced in `cache.raw`
 * - `progress.json` what the daemon last reported (hydrated count, recent errors)
 * - `daemon.pid`, `daemon.log`
 */

import { createHash } from 'node:crypto';
import { type FileHandle, open, readFile, rename, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { ChunkSizeSchema, chunkCount, chunkExtent } from '../sdk/backup-manifest.js';
import { DriverError } from '../sdk/errors.js';
import { createJsonLogger } from '../sdk/logger.js';
import type { Logger } from '../sdk/types.js';
import { BACKUP_CONCURRENCY, getChunk, RestoreListSchema } from './chunk-transfer.js';
import { ChecksumMismatchError } from './download.js';
import { serveNbdExport } from './nbd-server.js';

/** The argument of host-main that starts the daemon instead of a host request. */
export const LAZY_DAEMON_FLAG = '--lazy-restore-daemon';

/** File names inside a lazy restore's state directory. */
export const LazyFiles = {
  config: 'config.json',
  chunks: 'chunks.json',
  cache: 'cache.raw',
  bitmap: 'bitmap',
  progress: 'progress.json',
  pid: 'daemon.pid',
  log: 'daemon.log',
} as const;

/** `config.json`. */
export const LazyConfigSchema = z
  .object({
    virtualSizeBytes: z.number().int().positive().max(Number.MAX_SAFE_INTEGER),
    chunkSizeBytes: ChunkSizeSchema,
    socketPath: z.string().min(1).max(107),
    concurrency: z.number().int().positive().max(32).default(BACKUP_CONCURRENCY),
    stallTimeoutSeconds: z.number().int().positive().max(3600).default(60),
  })
  .strict();
export type LazyConfig = z.infer<typeof LazyConfigSchema>;

/** One recent fetch failure, as `progress.json` reports it. */
export interface LazyChunkError {
  index: number;
  code: string;
  message: string;
  at: string;
}

/** `progress.json`. */
export interface LazyProgress {
  pid: number;
  chunksTotal: number;
  chunksHydrated: number;
  chunksFetched: number;
  bytesFetched: number;
  /** Chunks whose bytes did not hash to the manifest's sha256 (each attempt counts). */
  checksumFailures: number;
  /** The last few failures, newest last. */
  errors: LazyChunkError[];
  hydrated: boolean;
  updatedAt: string;
}

type RestoreList = z.infer<typeof RestoreListSchema>;

/**
 * Reads and validates a state directory's `chunks.json` against its config (one entry per chunk
 * index, each at its own index).
 */
export async function readLazyChunks(stateDir: string, config: LazyConfig): Promise<RestoreList> {
  const list = RestoreListSchema.parse(JSON.parse(await readFile(join(stateDir, LazyFiles.chunks), 'utf8')));
  if (list.length !== chunkCount(config.virtualSizeBytes, config.chunkSizeBytes)) {
    throw new DriverError(`${LazyFiles.chunks} does not list every chunk of the disk`, {
      code: 'CorruptState',
    });
  }
  if (!list.every((c, i) => c === null || c.index === i)) {
    throw new DriverError(`${LazyFiles.chunks}: each entry must sit at its own index`, {
      code: 'CorruptState',
    });
  }
  return list;
}

/** Reads a state directory's `config.json`. */
export async function readLazyConfig(stateDir: string): Promise<LazyConfig> {
  return LazyConfigSchema.parse(JSON.parse(await readFile(join(stateDir, LazyFiles.config), 'utf8')));
}

/**
 * How many chunks are hydrated, counted from the bitmap and the list (zero chunks always are).
 * The bitmap is authoritative: the daemon marks a chunk only after its bytes are synced.
 */
export async function countHydrated(stateDir: string, list: RestoreList): Promise<number> {
  const bitmap = await readFile(join(stateDir, LazyFiles.bitmap)).catch(() => Buffer.alloc(0));
  let hydrated = 0;
  for (let i = 0; i < list.length; i++) if (list[i] === null || bitmap[i] === 1) hydrated++;
  return hydrated;
}

/** Writes `data` as JSON to `file` through a temporary name and a rename, mode 0600. */
export async function writeJsonAtomic(file: string, data: unknown): Promise<void> {
  const temp = `${file}.${process.pid}.tmp`;
  await writeFile(temp, JSON.stringify(data), { mode: 0o600 });
  await rename(temp, file);
}

/** The cache and the fetches behind the NBD export. */
export class ChunkCache {
  private readonly present: Uint8Array;
  private readonly inflight = new Map<number, Promise<void>>();
  private list: RestoreList;
  private listMtimeMs = 0;
  readonly progress: LazyProgress;
  /** Called after every chunk that arrived. */
  onChange: () => void = () => undefined;
  /** Awaited after every failed fetch, before the failure reaches a reader. */
  onFailure: () => Promise<void> = async () => undefined;

  private constructor(
    private readonly stateDir: string,
    private readonly config: LazyConfig,
    list: RestoreList,
    private readonly cache: FileHandle,
    private readonly bitmap: FileHandle,
    bitmapBytes: Buffer,
    private readonly logger: Logger,
    private readonly signal: AbortSignal,
  ) {
    this.list = list;
    this.present = new Uint8Array(list.length);
    let hydrated = 0;
    for (let i = 0; i < list.length; i++) {
      if (list[i] === null || bitmapBytes[i] === 1) {
        this.present[i] = 1;
        hydrated++;
      }
    }
    this.progress = {
      pid: process.pid,
      chunksTotal: list.length,
      chunksHydrated: hydrated,
      chunksFetched: 0,
      bytesFetched: 0,
      checksumFailures: 0,
      errors: [],
      hydrated: hydrated === list.length,
      updatedAt: new Date().toISOString(),
    };
  }

  /** Opens the cache of `stateDir` (created by lazyRestoreStart). */
  static async open(stateDir: string, logger: Logger, signal: AbortSignal): Promise<ChunkCache> {
    const config = await readLazyConfig(stateDir);
    const list = await readLazyChunks(stateDir, config);
    const cache = await open(join(stateDir, LazyFiles.cache), 'r+');
    const bitmapFile = join(stateDir, LazyFiles.bitmap);
    const bitmap = await open(bitmapFile, 'a+').then(async (h) => {
      await h.close();
      return open(bitmapFile, 'r+');
    });
    const bitmapBytes = await readFile(bitmapFile);
    const self = new ChunkCache(stateDir, config, list, cache, bitmap, bitmapBytes, logger, signal);
    self.listMtimeMs = (await stat(join(stateDir, LazyFiles.chunks))).mtimeMs;
    return self;
  }

  get sizeBytes(): number {
    return this.config.virtualSizeBytes;
  }

  /** Bytes `[offset, offset + length)`, fetching the chunks not cached yet. */
  async read(offset: number, length: number): Promise<Buffer> {
    const first = Math.floor(offset / this.config.chunkSizeBytes);
    const last = Math.floor((offset + length - 1) / this.config.chunkSizeBytes);
    const waits: Promise<void>[] = [];
    for (let i = first; i <= last; i++) if (!this.present[i]) waits.push(this.ensure(i));
    await Promise.all(waits);
    const out = Buffer.alloc(length);
    const { bytesRead } = await this.cache.read(out, 0, length, offset);
    // Past the end of what was ever written the sparse file is short only if it was truncated.
    if (bytesRead !== length) throw new Error(`cache returned ${bytesRead} of ${length} bytes`);
    return out;
  }

  /** Fetches chunk `index` into the cache unless it is there; one fetch per chunk at a time. */
  ensure(index: number): Promise<void> {
    if (this.present[index]) return Promise.resolve();
    const running = this.inflight.get(index);
    if (running) return running;
    const fetching = this.fetch(index).finally(() => this.inflight.delete(index));
    this.inflight.set(index, fetching);
    return fetching;
  }

  /** Indexes not hydrated yet. */
  missing(): number[] {
    const out: number[] = [];
    for (let i = 0; i < this.present.length; i++) if (!this.present[i]) out.push(i);
    return out;
  }

  private async fetch(index: number): Promise<void> {
    await this.reloadListIfChanged();
    const entry = this.list[index];
    if (!entry) throw new Error(`chunk ${index} is a zero chunk`);
    const { start, length } = chunkExtent(index, this.config.virtualSizeBytes, this.config.chunkSizeBytes);
    try {
      const bytes = await getChunk(
        entry.url,
        index,
        length,
        this.config.stallTimeoutSeconds * 1000,
        this.signal,
      );
      const actual = createHash('sha256').update(bytes).digest('hex');
      if (actual !== entry.sha256) {
        throw new ChecksumMismatchError(`chunk ${index} (${entry.sha256}) arrived with sha256 ${actual}`, {
          index,
          sha256: entry.sha256,
          actual,
        });
      }
      await this.cache.write(bytes, 0, length, start);
      await this.cache.datasync();
      // Marked only once the bytes are durable: a crash leaves at worst a chunk fetched twice.
      await this.bitmap.write(Buffer.from([1]), 0, 1, index);
      this.present[index] = 1;
      this.progress.chunksHydrated++;
      this.progress.chunksFetched++;
      this.progress.bytesFetched += length;
      this.progress.hydrated = this.progress.chunksHydrated === this.progress.chunksTotal;
      this.onChange();
    } catch (error) {
      const code = error instanceof DriverError ? error.code : 'FetchFailed';
      if (code === 'ChecksumMismatch') this.progress.checksumFailures++;
      const message = error instanceof Error ? error.message : String(error);
      this.progress.errors = [
        ...this.progress.errors.slice(-9),
        { index, code, message, at: new Date().toISOString() },
      ];
      this.logger.error('chunk fetch failed', { index, code, message });
      await this.onFailure();
      throw error;
    }
  }

  // lazyRestoreStatus writes fresh presigned URLs (they expire); the hashes must not change.
  private async reloadListIfChanged(): Promise<void> {
    const file = join(this.stateDir, LazyFiles.chunks);
    const { mtimeMs } = await stat(file);
    if (mtimeMs === this.listMtimeMs) return;
    this.listMtimeMs = mtimeMs;
    try {
      const fresh = await readLazyChunks(this.stateDir, this.config);
      const same = fresh.every(
        (c, i) => (c === null) === (this.list[i] === null) && c?.sha256 === this.list[i]?.sha256,
      );
      if (!same) {
        this.logger.error('new chunk list names other chunks; kept the old one');
        return;
      }
      this.list = fresh;
      this.logger.info('chunk list reloaded');
    } catch (error) {
      this.logger.error('new chunk list is unreadable; kept the old one', { message: String(error) });
    }
  }

  async close(): Promise<void> {
    await this.bitmap.sync().catch(() => undefined);
    await this.bitmap.close().catch(() => undefined);
    await this.cache.close().catch(() => undefined);
  }
}

/**
 * Runs the daemon for `stateDir` until SIGTERM: serves the export, hydrates every chunk (a failed
 * chunk is tried again in the next pass, after a pause growing from 1 s to 30 s), and keeps
 * `progress.json` current. Serving continues after hydration, until lazyRestoreFinish stops it.
 */
export async function runLazyRestoreDaemon(stateDir: string): Promise<void> {
  const logger = createJsonLogger({ bindings: { component: 'strata-lazy-restore', stateDir } });
  const controller = new AbortController();
  const cache = await ChunkCache.open(stateDir, logger, controller.signal);
  const config = await readLazyConfig(stateDir);
  const server = await serveNbdExport(config.socketPath, {
    sizeBytes: cache.sizeBytes,
    read: (offset, length) => cache.read(offset, length),
    onReadError: (error, offset, length) =>
      logger.error('NBD read answered EIO', { offset, length, message: String(error) }),
  });
  await writeFile(join(stateDir, LazyFiles.pid), String(process.pid), { mode: 0o600 });
  logger.info('serving', { socketPath: config.socketPath, chunks: cache.progress.chunksTotal });

  // progress.json follows every fetch, at most every 100 ms (the last change is always written).
  let writing: Promise<void> = Promise.resolve();
  let pending: NodeJS.Timeout | undefined;
  const report = async () => {
    if (pending) {
      clearTimeout(pending);
      pending = undefined;
    }
    cache.progress.updatedAt = new Date().toISOString();
    const snapshot = JSON.parse(JSON.stringify(cache.progress)) as LazyProgress;
    writing = writing.then(() =>
      writeJsonAtomic(join(stateDir, LazyFiles.progress), snapshot).catch(() => undefined),
    );
    await writing;
  };
  cache.onChange = () => {
    pending ??= setTimeout(() => void report(), 100);
  };
  // A failure is on record before the reader that hit it hears of it.
  cache.onFailure = () => report();
  await report();

  const stopped = new Promise<void>((resolve) => {
    const stop = () => {
      controller.abort();
      clearInterval(orphanCheck);
      resolve();
    };
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
    // A state directory removed under it (an abort run from another host, say) ends the daemon.
    const orphanCheck = setInterval(() => {
      stat(join(stateDir, LazyFiles.config)).catch(() => {
        logger.warn('state directory is gone; stopping');
        stop();
      });
    }, 2000);
  });

  const hydrate = async () => {
    let pause = 1000;
    while (!controller.signal.aborted) {
      const todo = cache.missing();
      if (todo.length === 0) break;
      let next = 0;
      let failed = 0;
      const worker = async () => {
        while (!controller.signal.aborted && next < todo.length) {
          const index = todo[next++]!;
          await cache.ensure(index).catch(() => failed++);
        }
      };
      await Promise.all(Array.from({ length: config.concurrency }, worker));
      await report();
      if (failed === 0) continue;
      await new Promise((resolve) => setTimeout(resolve, pause).unref());
      pause = Math.min(pause * 2, 30_000);
    }
    if (cache.progress.hydrated) logger.info('hydrated', { chunks: cache.progress.chunksTotal });
    await report();
  };
  const hydration = hydrate();
  await stopped;
  await server.close();
  await hydration.catch(() => undefined);
  await report();
  await cache.close();
  logger.info('stopped');
}
