/**
 * Lazy restore, host side: a new volume usable at once, before its backup's bytes have arrived.
 *
 * `lazyRestoreStart` starts the lazy-restore daemon (./lazy-daemon.ts) for the volume: a detached
 * process serving the backup's virtual disk as a read-only NBD export that fetches and verifies a
 * chunk on its first read, and hydrates every chunk into a cache in the background. The volume is
 * a qcow2 overlay whose backing is that export (`nbd+unix:///?socket=…`, format raw): reads of
 * ranges the overlay does not hold return the backup's exact bytes, writes land in the overlay.
 * `lazyRestoreStatus` reports hydration (and restarts a daemon that died, and takes fresh URLs);
 * `lazyRestoreFinish`, once every chunk is cached, stops the daemon, points the overlay at the
 * cache file and flattens it (safe `qemu-img rebase -b ''`), so the volume no longer depends on the
 * image store or the daemon; `lazyRestoreAbort` stops the daemon and removes the state and the
 * unfinished volume.
 *
 * The export is a unix socket, so a hydrating volume is usable only on the host that serves it.
 * Flattening rewrites the volume file in place: it must not be open in a VM at that moment (on a
 * real hypervisor QEMU's block-stream job would do this live; Strata does not drive one here).
 */

import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { open, readFile, rename, rm, stat } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { basename, dirname, isAbsolute, join } from 'node:path';
import { z } from 'zod';
import { ChunkSizeSchema, chunkCount } from '../sdk/backup-manifest.js';
import { pathExists, realRootOf, resolveConfinedPath } from '../sdk/confine.js';
import {
  DriverConflictError,
  DriverError,
  DriverInputError,
  DriverUnavailableError,
  ObjectNotFoundError,
} from '../sdk/errors.js';
import { qemuCheck, qemuInfo } from '../sdk/qemu.js';
import type { HostOperation, HostOperationContext } from '../sdk/types.js';
import { AbsolutePathSchema, RelativePathSchema, SafeIdSchema } from '../sdk/validation.js';
import { CountSchema, fetchList, RestoreListSchema, SizeSchema, UrlSchema } from './chunk-transfer.js';
import { assertHttpUrl, ChecksumMismatchError } from './download.js';
import {
  countHydrated,
  LAZY_DAEMON_FLAG,
  type LazyConfig,
  LazyFiles,
  type LazyProgress,
  readLazyChunks,
  readLazyConfig,
  writeJsonAtomic,
} from './lazy-daemon.js';

/** Names of the lazy-restore host operations. */
export const NfsLazyRestoreOperation = {
  LazyRestoreStart: 'lazyRestoreStart',
  LazyRestoreStatus: 'lazyRestoreStatus',
  LazyRestoreWait: 'lazyRestoreWait',
  LazyRestoreFinish: 'lazyRestoreFinish',
  LazyRestoreAbort: 'lazyRestoreAbort',
} as const;

/** The state directory of volume `volumeId`, relative to the share. */
export function lazyStatePath(volumeId: string): string {
  return `.strata/lazy/${volumeId}`;
}

/**
 * The environment variable naming the host runtime script the daemon is started from. Unset, the
 * running script is used (`require.main`), which is the host-main bundle on a host.
 */
export const HOST_RUNTIME_SCRIPT_ENV = 'STRATA_HOST_RUNTIME_SCRIPT';

const Target = {
  mountPath: AbsolutePathSchema,
  volumeId: SafeIdSchema,
  /** The volume file, e.g. `volumes/<volumeId>.qcow2`. */
  path: RelativePathSchema,
};

const ListArgs = {
  /** One entry per chunk index, in order; `null` is a zero chunk. */
  chunks: RestoreListSchema.optional(),
  /** Presigned GET of the same list as JSON. */
  chunksUrl: UrlSchema.optional(),
  count: CountSchema.optional(),
};

const StartArgs = z
  .object({
    ...Target,
    virtualSizeBytes: SizeSchema,
    chunkSizeBytes: ChunkSizeSchema,
    ...ListArgs,
    concurrency: z.number().int().positive().max(32).optional(),
    stallTimeoutSeconds: z.number().int().positive().max(3600).default(60),
  })
  .strict()
  .refine((a) => (a.chunks === undefined) !== (a.chunksUrl === undefined), {
    message: 'give exactly one of chunks (inline) or chunksUrl',
    path: ['chunksUrl'],
  });

const StatusArgs = z
  .object({
    ...Target,
    /** Fresh presigned URLs for the same chunks (the first ones expire). */
    ...ListArgs,
    stallTimeoutSeconds: z.number().int().positive().max(3600).default(60),
  })
  .strict()
  .refine((a) => a.chunks === undefined || a.chunksUrl === undefined, {
    message: 'give at most one of chunks (inline) or chunksUrl',
    path: ['chunksUrl'],
  });

const FinishArgs = z.object(Target).strict();

const WaitArgs = z
  .object({
    ...Target,
    pollSeconds: z.number().int().positive().max(60).default(1),
    /** Checksum failures the daemon may report before the wait gives up on a damaged chunk. */
    maxChecksumFailures: z.number().int().positive().max(1000).default(3),
  })
  .strict();

/** Where a lazy restore stands, as the status and start operations report it. */
export interface LazyRestoreStatus {
  path: string;
  /** The host that answered: the one whose daemon serves the export (a unix socket, host-local). */
  hostId: string;
  /** `hydrating` while chunks are missing, `hydrated` when finish may run, `finished` after it. */
  state: 'hydrating' | 'hydrated' | 'finished';
  chunksTotal: number;
  chunksHydrated: number;
  /** True when this call had to start the daemon (it was not running). */
  daemonStarted: boolean;
  checksumFailures: number;
  errors: LazyProgress['errors'];
}

/** What `lazyRestoreFinish` returns: the flattened volume. */
export interface LazyRestoreFinishResult {
  path: string;
  sizeBytes: number;
  virtualSizeBytes: number;
  format: 'qcow2';
  /** False when an earlier run had already finished. */
  finished: boolean;
}

interface Resolved {
  realRoot: string;
  stateDir: string;
  target: string;
}

// Only the start creates directories: the other operations must not leave empty ones behind.
/**
 * A running lazy restore's paths and config, or the status of one already finished (no state, and
 * the volume no longer has a backing); neither is ObjectNotFound.
 */
async function openRestore(
  args: { mountPath: string; volumeId: string; path: string },
  ctx: HostOperationContext,
): Promise<
  { where: Resolved; config: Awaited<ReturnType<typeof readLazyConfig>> } | { finished: LazyRestoreStatus }
> {
  const where = await resolve(args);
  if (!(await pathExists(join(where.stateDir, LazyFiles.config)))) {
    if ((await volumeBacking(where.target, ctx)) === 'none')
      return { finished: await finishedStatus(args.path, ctx) };
    throw new ObjectNotFoundError(`no lazy restore of ${args.volumeId} on this share`, {
      context: { path: args.path },
    });
  }
  return { where, config: await readLazyConfig(where.stateDir) };
}

async function resolve(
  args: { mountPath: string; volumeId: string; path: string },
  createParents = false,
): Promise<Resolved> {
  const realRoot = await realRootOf(args.mountPath);
  const config = await resolveConfinedPath(
    args.mountPath,
    `${lazyStatePath(args.volumeId)}/${LazyFiles.config}`,
    { createParents },
  );
  const target = await resolveConfinedPath(args.mountPath, args.path, { createParents });
  return { realRoot, stateDir: dirname(config), target };
}

/**
 * The unix socket of a state directory: inside it when the path is short and plain enough for a
 * unix socket and a qemu URI, else a name under the system temp directory derived from it.
 */
export function lazySocketPath(stateDir: string): string {
  const inside = join(stateDir, 'nbd.sock');
  if (Buffer.byteLength(inside) <= 100 && /^[A-Za-z0-9._/-]+$/.test(inside)) return inside;
  const digest = createHash('sha256').update(stateDir).digest('hex').slice(0, 24);
  return join(tmpdir(), `strata-lazy-${digest}.sock`);
}

/** The backing a lazily restored volume names while it hydrates. */
export function nbdBackingUri(socketPath: string): string {
  return `nbd+unix:///?socket=${socketPath}`;
}

/**
 * Starts (or resumes) a lazy restore of a backup into a new volume at `path`: records the chunk
 * list and sizes in the state directory, creates the sparse cache and bitmap, starts the daemon
 * unless it runs, and creates the volume as a qcow2 overlay on the daemon's export (under a
 * temporary name, then renamed). Idempotent: a volume already backed by this restore's export is
 * kept, and one already finished (no backing, no state) is reported as finished.
 *
 * @example
 * await host.run(hostId, { provider: 'nfs', operation: 'lazyRestoreStart', args: {
 *   mountPath, volumeId: 'vol-9', path: 'volumes/vol-9.qcow2', virtualSizeBytes, chunkSizeBytes,
 *   chunksUrl, count } });
 */
export const lazyRestoreStart: HostOperation<z.infer<typeof StartArgs>, LazyRestoreStatus> = {
  args: StartArgs,
  async run(args, ctx) {
    const where = await resolve(args, true);
    const configFile = join(where.stateDir, LazyFiles.config);
    const hasState = await pathExists(configFile);
    const volume = await volumeBacking(where.target, ctx);
    if (volume === 'none' && !hasState) return finishedStatus(args.path, ctx, args);
    if (hasState && (volume === 'none' || volume === join(where.stateDir, LazyFiles.cache))) {
      // A finish got as far as the flatten: nothing to serve any more, finish completes it.
      const existing = await readLazyConfig(where.stateDir);
      return statusOf(args.path, where.stateDir, await readLazyChunks(where.stateDir, existing), false, ctx);
    }
    const list = await incomingList(args, ctx);
    if (!list) throw new DriverInputError('give chunks or chunksUrl', { context: { field: 'chunksUrl' } });
    const total = chunkCount(args.virtualSizeBytes, args.chunkSizeBytes);
    if (list.length !== total) {
      const field = args.chunks ? 'chunks' : 'chunksUrl';
      throw new DriverInputError(`${field} lists ${list.length} chunks; the disk has ${total}`, {
        context: { field },
      });
    }
    const socketPath = lazySocketPath(where.stateDir);
    const config: LazyConfig = {
      virtualSizeBytes: args.virtualSizeBytes,
      chunkSizeBytes: args.chunkSizeBytes,
      socketPath,
      concurrency: args.concurrency ?? 4,
      stallTimeoutSeconds: args.stallTimeoutSeconds,
    };
    if (hasState) {
      const existing = await readLazyConfig(where.stateDir);
      if (
        existing.virtualSizeBytes !== config.virtualSizeBytes ||
        existing.chunkSizeBytes !== config.chunkSizeBytes
      ) {
        throw new DriverConflictError(`a lazy restore of another disk is under way for ${args.volumeId}`, {
          context: { path: args.path },
        });
      }
      await replaceList(where.stateDir, existing, list);
    } else {
      await writeJsonAtomic(join(where.stateDir, LazyFiles.chunks), list);
      await createSparse(join(where.stateDir, LazyFiles.cache), args.virtualSizeBytes);
      await createSparse(join(where.stateDir, LazyFiles.bitmap), 0);
      await writeJsonAtomic(configFile, config);
    }
    const active = hasState ? await readLazyConfig(where.stateDir) : config;
    const daemonStarted = await ensureDaemon(where.stateDir, active, ctx);
    if (volume === 'absent') {
      const temp = join(dirname(where.target), `.${basename(where.target)}.${ctx.hostId}.${ctx.jobId}.tmp`);
      try {
        await runQemuImg(
          [
            'create',
            '-q',
            '-f',
            'qcow2',
            '-b',
            nbdBackingUri(active.socketPath),
            '-F',
            'raw',
            temp,
            String(args.virtualSizeBytes),
          ],
          ctx.signal,
        );
        await rename(temp, where.target);
      } finally {
        await rm(temp, { force: true });
      }
    } else if (volume !== nbdBackingUri(active.socketPath)) {
      throw new DriverConflictError(`${args.path} exists and is not this lazy restore's volume`, {
        context: { path: args.path },
      });
    }
    ctx.logger.info('lazy restore serving', { path: args.path, daemonStarted });
    return statusOf(args.path, where.stateDir, list, daemonStarted, ctx);
  },
};

/**
 * Reports a lazy restore's hydration (chunks hydrated of total, from the bitmap; recent fetch
 * errors from the daemon), restarting the daemon if it is not running while chunks are missing.
 * With `chunks`/`chunksUrl`, first replaces the stored list's URLs (the hashes must be the same).
 */
export const lazyRestoreStatus: HostOperation<z.infer<typeof StatusArgs>, LazyRestoreStatus> = {
  args: StatusArgs,
  async run(args, ctx) {
    const opened = await openRestore(args, ctx);
    if ('finished' in opened) return opened.finished;
    const { where, config } = opened;
    const fresh = await incomingList(args, ctx);
    if (fresh) await replaceList(where.stateDir, config, fresh);
    const list = await readLazyChunks(where.stateDir, config);
    const hydrated = await countHydrated(where.stateDir, list);
    const daemonStarted = hydrated < list.length ? await ensureDaemon(where.stateDir, config, ctx) : false;
    return statusOf(args.path, where.stateDir, list, daemonStarted, ctx);
  },
};

/**
 * Waits until every chunk is hydrated, reporting progress (`phase: 'hydrating'`, `chunksHydrated`,
 * `chunksTotal`) each poll and starting the daemon again whenever it is not running. Fails with
 * `ChecksumMismatch` (not retryable) once the daemon has seen `maxChecksumFailures` damaged chunk
 * bodies: the store's copy of that chunk is bad and fetching it again cannot help. A workflow runs
 * this as one long host command: its step suspends and polls the command meanwhile.
 */
export const lazyRestoreWait: HostOperation<z.infer<typeof WaitArgs>, LazyRestoreStatus> = {
  args: WaitArgs,
  async run(args, ctx) {
    const opened = await openRestore(args, ctx);
    if ('finished' in opened) return opened.finished;
    const { where, config } = opened;
    let started = false;
    for (;;) {
      if (ctx.signal.aborted) throw ctx.signal.reason;
      const list = await readLazyChunks(where.stateDir, config);
      const status = await statusOf(args.path, where.stateDir, list, started, ctx);
      ctx.progress(Math.floor((status.chunksHydrated / Math.max(1, status.chunksTotal)) * 100), {
        phase: 'hydrating',
        chunksHydrated: status.chunksHydrated,
        chunksTotal: status.chunksTotal,
      });
      if (status.state === 'hydrated') return status;
      if (status.checksumFailures >= args.maxChecksumFailures) {
        const bad = [
          ...new Set(status.errors.filter((e) => e.code === 'ChecksumMismatch').map((e) => e.index)),
        ];
        throw new ChecksumMismatchError(
          `hydration of ${args.path} stopped: chunk ${bad.join(', ')} arrived damaged ${status.checksumFailures} times`,
          { chunks: bad, path: args.path },
        );
      }
      if (await ensureDaemon(where.stateDir, config, ctx)) started = true;
      await sleep(args.pollSeconds * 1000, ctx.signal);
    }
  },
};

/**
 * Once every chunk is cached: stops the daemon, rebases the volume onto the cache file without
 * copying (`rebase -u`: the two hold the same bytes), flattens it (`rebase -b ''`, which copies the
 * ranges the overlay does not hold), checks it, and removes the state directory. Each step is safe
 * to run again after a crash. Refuses (Conflict) while chunks are missing.
 */
export const lazyRestoreFinish: HostOperation<z.infer<typeof FinishArgs>, LazyRestoreFinishResult> = {
  args: FinishArgs,
  async run(args, ctx) {
    const where = await resolve(args);
    const hasState = await pathExists(join(where.stateDir, LazyFiles.config));
    let backing = await volumeBacking(where.target, ctx);
    if (backing === 'absent') {
      throw new ObjectNotFoundError(`${args.path} not found`, { context: { path: args.path } });
    }
    if (!hasState && backing !== 'none') {
      throw new DriverConflictError(`${args.path} has a backing but no lazy restore state`, {
        context: { path: args.path },
      });
    }
    if (hasState) {
      const config = await readLazyConfig(where.stateDir);
      const list = await readLazyChunks(where.stateDir, config);
      const hydrated = await countHydrated(where.stateDir, list);
      if (hydrated < list.length) {
        throw new DriverConflictError(`${args.path}: ${hydrated} of ${list.length} chunks hydrated`, {
          context: { path: args.path, chunksHydrated: hydrated, chunksTotal: list.length },
        });
      }
      await stopDaemon(where.stateDir, ctx);
      const cache = join(where.stateDir, LazyFiles.cache);
      if (backing === nbdBackingUri(config.socketPath)) {
        await runQemuImg(
          ['rebase', '-q', '-u', '-f', 'qcow2', '-b', cache, '-F', 'raw', where.target],
          ctx.signal,
        );
        backing = cache;
      }
      if (backing === cache) {
        await runQemuImg(['rebase', '-q', '-f', 'qcow2', '-b', '', where.target], ctx.signal);
      } else if (backing !== 'none') {
        throw new DriverConflictError(`${args.path} is backed by ${backing}, not this lazy restore`, {
          context: { path: args.path },
        });
      }
    }
    const info = await qemuInfo(where.target, { format: 'qcow2', signal: ctx.signal });
    const checked = await qemuCheck(where.target, {
      format: 'qcow2',
      allowCorrupt: true,
      signal: ctx.signal,
    });
    if (checked.corruptions > 0 || checked.checkErrors > 0) {
      throw new DriverError(`${args.path}: flattened image failed qemu-img check`, {
        code: 'CorruptImage',
        context: { path: args.path, corruptions: checked.corruptions },
      });
    }
    if (hasState) await removeState(where.stateDir);
    return {
      path: args.path,
      sizeBytes: (await stat(where.target)).size,
      virtualSizeBytes: info.virtualSizeBytes,
      format: 'qcow2',
      finished: hasState,
    };
  },
};

/**
 * Gives up a lazy restore: stops the daemon, then removes the volume file when it still depends on
 * this restore (its backing is the export or the cache) and the state directory. A volume already
 * finished is left alone.
 */
export const lazyRestoreAbort: HostOperation<
  z.infer<typeof FinishArgs>,
  { removedVolume: boolean; removedState: boolean }
> = {
  args: FinishArgs,
  async run(args, ctx) {
    const where = await resolve(args);
    const hasState = await pathExists(join(where.stateDir, LazyFiles.config));
    if (!hasState) return { removedVolume: false, removedState: false };
    await stopDaemon(where.stateDir, ctx);
    const config = await readLazyConfig(where.stateDir);
    const backing = await volumeBacking(where.target, ctx);
    const dependent =
      backing === nbdBackingUri(config.socketPath) || backing === join(where.stateDir, LazyFiles.cache);
    if (dependent) await rm(where.target, { force: true });
    await removeState(where.stateDir);
    return { removedVolume: dependent, removedState: true };
  },
};

/** The lazy-restore host operations, merged into the NFS provider's set. */
export const nfsLazyRestoreOperations = {
  lazyRestoreStart,
  lazyRestoreStatus,
  lazyRestoreWait,
  lazyRestoreFinish,
  lazyRestoreAbort,
} as const;

// ---------------------------------------------------------------------------------------------

// The volume's backing as qcow2 names it: 'absent' (no file), 'none', or the backing string.
async function volumeBacking(target: string, ctx: HostOperationContext): Promise<string> {
  if (!(await pathExists(target))) return 'absent';
  // qemu-img info does not open the backing, so an NBD backing with no server is fine here.
  const info = await qemuInfo(target, { format: 'qcow2', allowBackingFile: true, signal: ctx.signal });
  return info.backingFilename ?? 'none';
}

async function incomingList(
  args: {
    chunks?: z.infer<typeof RestoreListSchema>;
    chunksUrl?: string;
    count?: number;
    stallTimeoutSeconds: number;
  },
  ctx: HostOperationContext,
): Promise<z.infer<typeof RestoreListSchema> | undefined> {
  const field = args.chunks ? 'chunks' : 'chunksUrl';
  let list = args.chunks;
  if (!list && args.chunksUrl !== undefined) {
    list = await fetchList(args.chunksUrl, 'chunksUrl', RestoreListSchema, args.stallTimeoutSeconds, ctx);
  }
  if (!list) return undefined;
  if (args.count !== undefined && list.length !== args.count) {
    throw new DriverInputError(`${field} lists ${list.length} chunks, not the ${args.count} expected`, {
      context: { field },
    });
  }
  if (!list.every((c, i) => c === null || c.index === i)) {
    throw new DriverInputError(`${field}: each chunk entry must sit at its own index`, {
      context: { field },
    });
  }
  for (const chunk of list) {
    if (!chunk) continue;
    try {
      assertHttpUrl(chunk.url);
    } catch (error) {
      throw new DriverInputError(`${field}[${chunk.index}]: ${(error as Error).message}`, {
        cause: error,
        context: { field },
      });
    }
  }
  return list;
}

// Fresh URLs for the same chunks: refused when any index names another hash.
async function replaceList(
  stateDir: string,
  config: LazyConfig,
  list: z.infer<typeof RestoreListSchema>,
): Promise<void> {
  const stored = await readLazyChunks(stateDir, config);
  const same =
    stored.length === list.length &&
    stored.every((c, i) => (c === null) === (list[i] === null) && c?.sha256 === list[i]?.sha256);
  if (!same) {
    throw new DriverConflictError('the chunk list names other chunks than the restore under way', {
      context: { field: 'chunks' },
    });
  }
  await writeJsonAtomic(join(stateDir, LazyFiles.chunks), list);
}

async function statusOf(
  path: string,
  stateDir: string,
  list: z.infer<typeof RestoreListSchema>,
  daemonStarted: boolean,
  ctx: HostOperationContext,
): Promise<LazyRestoreStatus> {
  const hydrated = await countHydrated(stateDir, list);
  const progress = await readFile(join(stateDir, LazyFiles.progress), 'utf8')
    .then((t) => JSON.parse(t) as LazyProgress)
    .catch(() => undefined);
  return {
    path,
    hostId: ctx.hostId,
    state: hydrated === list.length ? 'hydrated' : 'hydrating',
    chunksTotal: list.length,
    chunksHydrated: hydrated,
    daemonStarted,
    checksumFailures: progress?.checksumFailures ?? 0,
    errors: progress?.errors ?? [],
  };
}

function finishedStatus(
  path: string,
  ctx: HostOperationContext,
  sizes?: { virtualSizeBytes: number; chunkSizeBytes: number },
): LazyRestoreStatus {
  const total = sizes ? chunkCount(sizes.virtualSizeBytes, sizes.chunkSizeBytes) : 0;
  return {
    path,
    hostId: ctx.hostId,
    state: 'finished' as const,
    chunksTotal: total,
    chunksHydrated: total,
    daemonStarted: false,
    checksumFailures: 0,
    errors: [],
  };
}

async function createSparse(file: string, sizeBytes: number): Promise<void> {
  const handle = await open(file, 'w', 0o600);
  try {
    await handle.truncate(sizeBytes);
  } finally {
    await handle.close();
  }
}

// The daemon's pid when one runs for this state directory (checked by its command line, so a
// reused pid is not mistaken for it).
async function daemonPid(stateDir: string): Promise<number | undefined> {
  const text = await readFile(join(stateDir, LazyFiles.pid), 'utf8').catch(() => undefined);
  const pid = Number(text);
  if (!text || !Number.isSafeInteger(pid) || pid <= 1) return undefined;
  const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
  const argv = cmdline.split('\0');
  return argv.includes(LAZY_DAEMON_FLAG) && argv.includes(stateDir) ? pid : undefined;
}

// Starts the daemon unless it runs; resolves once its socket accepts connections. True if started.
async function ensureDaemon(
  stateDir: string,
  config: LazyConfig,
  ctx: HostOperationContext,
): Promise<boolean> {
  const running = await daemonPid(stateDir);
  if (running !== undefined) {
    if (await canConnect(config.socketPath)) return false;
    // Alive but not answering: never two daemons on one cache.
    ctx.logger.warn('lazy-restore daemon does not answer; restarting it', { stateDir, pid: running });
    await stopDaemon(stateDir, ctx);
  }
  const script = process.env[HOST_RUNTIME_SCRIPT_ENV] ?? require.main?.filename;
  if (!script || !isAbsolute(script) || !(await pathExists(script))) {
    throw new DriverError('cannot find the host runtime script to start the lazy-restore daemon from', {
      code: 'HostRuntimeFailure',
      context: { env: HOST_RUNTIME_SCRIPT_ENV },
    });
  }
  await rm(join(stateDir, LazyFiles.pid), { force: true });
  const log = await open(join(stateDir, LazyFiles.log), 'a', 0o600);
  try {
    // Its own session, so it outlives this request's process group; stdio goes to daemon.log.
    const child = spawn(process.execPath, [script, LAZY_DAEMON_FLAG, stateDir], {
      detached: true,
      stdio: ['ignore', log.fd, log.fd],
    });
    let exited: number | null | undefined;
    child.once('exit', (code) => {
      exited = code;
    });
    child.once('error', () => {
      exited = -1;
    });
    child.unref();
    const deadline = Date.now() + 15_000;
    for (;;) {
      if (ctx.signal.aborted) throw ctx.signal.reason;
      if (exited !== undefined) {
        const tail = (await readFile(join(stateDir, LazyFiles.log), 'utf8').catch(() => '')).slice(-500);
        throw new DriverError(`the lazy-restore daemon exited with ${exited}: ${tail}`, {
          code: 'HostRuntimeFailure',
        });
      }
      if ((await daemonPid(stateDir)) === child.pid && (await canConnect(config.socketPath))) break;
      if (Date.now() > deadline) {
        child.kill('SIGTERM');
        throw new DriverUnavailableError('the lazy-restore daemon did not listen within 15 s');
      }
      await new Promise((r) => setTimeout(r, 25));
    }
  } finally {
    await log.close();
  }
  ctx.logger.info('lazy-restore daemon started', { stateDir });
  return true;
}

async function canConnect(socketPath: string): Promise<boolean> {
  return new Promise((resolveConnect) => {
    const socket = connect(socketPath);
    socket.once('connect', () => {
      socket.destroy();
      resolveConnect(true);
    });
    socket.once('error', () => resolveConnect(false));
  });
}

// SIGTERM, then SIGKILL after 10 s; resolves once the process is gone.
async function stopDaemon(stateDir: string, ctx: HostOperationContext): Promise<void> {
  const pid = await daemonPid(stateDir);
  if (pid === undefined) return;
  process.kill(pid, 'SIGTERM');
  const deadline = Date.now() + 10_000;
  while ((await daemonPid(stateDir)) === pid) {
    if (Date.now() > deadline) {
      process.kill(pid, 'SIGKILL');
      await new Promise((r) => setTimeout(r, 100));
      break;
    }
    await new Promise((r) => setTimeout(r, 25));
  }
  ctx.logger.info('lazy-restore daemon stopped', { stateDir, pid });
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolveSleep) => {
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolveSleep();
    }
    signal.addEventListener('abort', done, { once: true });
  });
}

async function removeState(stateDir: string): Promise<void> {
  const config = await readLazyConfig(stateDir).catch(() => undefined);
  if (config && !config.socketPath.startsWith(`${stateDir}/`)) await rm(config.socketPath, { force: true });
  await rm(stateDir, { recursive: true, force: true });
}

// qemu-img with an argv array. The helpers in ../sdk/qemu.ts refuse URI backings by design; the
// only URI used here is the export of this restore's own socket.
async function runQemuImg(args: string[], signal: AbortSignal): Promise<void> {
  const child = spawn('qemu-img', args, { stdio: ['ignore', 'ignore', 'pipe'], signal });
  let stderr = '';
  child.stderr?.on('data', (c: Buffer) => {
    stderr = (stderr + c.toString()).slice(-4096);
  });
  const code = await new Promise<number | null>((resolveExit, reject) => {
    child.once('exit', (c) => resolveExit(c));
    child.once('error', reject);
  }).catch((error) => {
    if (signal.aborted) throw signal.reason;
    throw error;
  });
  if (code !== 0) {
    throw new DriverError(`qemu-img ${args[0]} failed: ${stderr.trim().split('\n').slice(-3).join(' ')}`, {
      code: 'QemuFailed',
      context: { exitCode: code },
    });
  }
}
