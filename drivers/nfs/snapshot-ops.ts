/**
 * External snapshot chains on an NFS share: the host operations behind the nfs driver's
 * `takeSnapshot`, `revertSnapshot`, `deleteSnapshot` and `snapshotChanges` (design and reasons:
 * docs/snapshots.md).
 *
 * Layout: `volumes/<vol>.qcow2` is always the ACTIVE layer (the file VMs open by path); each
 * snapshot is a frozen former active layer at `snapshots/<vol>/<snap>.qcow2`. The chain reads
 * `template ← S1 ← S2 ← … ← active`, every backing reference stored relative to the file that names
 * it so the chain resolves wherever the share is mounted. A snapshot layer holds exactly the
 * clusters written between the previous snapshot and itself, which is what an incremental backup
 * needs (`qemu-img map` lists them at depth 0).
 *
 * Same rules as ./host-ops.ts: paths relative to `mountPath` and confined under it (the whole
 * backing chain too, before qemu opens it), qemu-img with argv arrays only, idempotent, temporary
 * names carrying host and job id. The control plane guarantees the volume is offline (no VM
 * writing) while these run.
 */
import { execFile } from 'node:child_process';
import { readdir, readFile, rename, rm, stat, unlink, writeFile } from 'node:fs/promises';
import { basename, dirname, join, relative, resolve } from 'node:path';
import { z } from 'zod';
import { isNotFound, isWithin, pathExists, realRootOf, resolveConfinedPath } from '../sdk/confine.js';
import { DriverConflictError, DriverInputError, ObjectNotFoundError } from '../sdk/errors.js';
import { QemuError, type QemuImageInfo, qemuCreate, qemuInfo } from '../sdk/qemu.js';
import type { HostOperation, HostOperationContext } from '../sdk/types.js';
import { AbsolutePathSchema, RelativePathSchema } from '../sdk/validation.js';

/** One run of guest bytes: `[start, start + length)`. `zero` extents read as zeros without data. */
export interface NfsExtent {
  start: number;
  length: number;
  /** The layer records this range as zeros (a write of zeroes or a discard), not as data. */
  zero: boolean;
}

/** What the snapshot-producing operations return (matches the SDK's `CreateResult`). */
export interface NfsSnapshotResult {
  path: string;
  sizeBytes: number;
  virtualSizeBytes: number;
  format: 'qcow2';
  /** The snapshot's own base (the previous snapshot or the template), relative to the share. */
  backingPath?: string;
}

/** What `snapshotChanges` and `allocatedExtents` return. */
export interface NfsExtentsResult {
  extents: NfsExtent[];
  virtualSizeBytes: number;
  /** What the extents are relative to: the layer's base, relative to the share (none: a full image). */
  backingPath?: string;
}

const Qcow2PathSchema = RelativePathSchema.refine((p) => p.endsWith('.qcow2'), 'must end with .qcow2');

// Snapshot layers live only in `snapshots/<volume>/`: deleting one merges it into the children
// found there and the volume, so a path elsewhere (a template cache entry with linked clones all
// over the share) must never reach these operations.
const SnapshotLayerPathSchema = Qcow2PathSchema.refine(
  (p) => /^snapshots\/[^/]+\/[^/]+$/.test(p),
  'must be snapshots/<volume>/<snapshot>.qcow2',
);

const ChainArgs = z
  .object({
    mountPath: AbsolutePathSchema,
    /** The active layer, e.g. `volumes/vol-1.qcow2`. */
    volumePath: Qcow2PathSchema.refine((p) => !p.startsWith('snapshots/'), 'must not be a snapshot layer'),
    /** The snapshot layer, e.g. `snapshots/vol-1/snap-1.qcow2`. */
    snapshotPath: SnapshotLayerPathSchema,
  })
  .strict()
  .refine((a) => a.volumePath !== a.snapshotPath, {
    message: 'the snapshot and the volume must be two files',
    path: ['snapshotPath'],
  });
type ChainArgs = z.infer<typeof ChainArgs>;

const ChangesArgs = z
  .object({ mountPath: AbsolutePathSchema, snapshotPath: SnapshotLayerPathSchema })
  .strict();
const AllocatedArgs = z
  .object({
    mountPath: AbsolutePathSchema,
    path: RelativePathSchema,
    format: z.enum(['qcow2', 'raw']).default('qcow2'),
  })
  .strict();

// Written before the active file is moved, so a re-run after a crash knows where the frozen
// layer's base was (its relative backing string is only valid from the old directory).
const TakeIntentSchema = z
  .object({
    version: z.literal(1),
    volumePath: RelativePathSchema,
    snapshotPath: RelativePathSchema,
    backingPath: RelativePathSchema.nullable(),
    backingFormat: z.enum(['qcow2', 'raw']).nullable(),
  })
  .strict();
type TakeIntent = z.infer<typeof TakeIntentSchema>;

const MAX_CHAIN = 256;

/**
 * Freezes the active layer as snapshot `snapshotPath` and puts a new empty overlay on top of it at
 * `volumePath`: writes an intent record, `rename(volume → snapshot)`, rewrites the frozen layer's
 * relative backing reference for its new directory (`qemu-img rebase -u`), creates the overlay
 * under a temporary name and renames it into place. Repeating it once the snapshot exists returns
 * it; a re-run after a crash between the steps finishes the job from the intent record.
 *
 * @example
 * await host.run('host-1', { provider: 'nfs', operation: 'takeChainSnapshot', jobId,
 *   args: { mountPath: '/mnt/ds-1', volumePath: 'volumes/vol-1.qcow2', snapshotPath: 'snapshots/vol-1/s1.qcow2' } });
 */
export const takeChainSnapshot: HostOperation<ChainArgs, NfsSnapshotResult> = {
  args: ChainArgs,
  async run(args, ctx) {
    const realRoot = await realRootOf(args.mountPath);
    const volume = await resolveConfinedPath(args.mountPath, args.volumePath, { createParents: true });
    const snapshot = await resolveConfinedPath(args.mountPath, args.snapshotPath, { createParents: true });
    const intentFile = intentPathFor(snapshot);
    const volumeExists = await pathExists(volume);
    const intent = await readIntent(intentFile, args);

    if (await pathExists(snapshot)) {
      if (intent) {
        if (volumeExists) {
          // Only the final rename brings the volume back, so the take completed; drop the record.
          await assertBackedBy(volume, snapshot, realRoot, args, ctx);
          await rm(intentFile, { force: true });
        } else {
          ctx.logger.info('finishing an interrupted snapshot', { path: args.snapshotPath });
          await finishTake(intent, volume, snapshot, realRoot, ctx);
        }
      } else if (!volumeExists) {
        throw new DriverConflictError(
          `${args.volumePath} is missing and ${args.snapshotPath} has no intent`,
          {
            context: { path: args.volumePath },
          },
        );
      } else {
        ctx.logger.info('snapshot already taken', { path: args.snapshotPath });
      }
      return snapshotResult(args.snapshotPath, snapshot, realRoot, ctx);
    }
    // Another snapshot's take was interrupted: the volume file may be missing until it is finished.
    await assertNoPendingTake(snapshot, args);
    if (!volumeExists) {
      throw new ObjectNotFoundError(`${args.volumePath} not found`, { context: { path: args.volumePath } });
    }

    const active = await chainInfo(volume, realRoot, 'qcow2', ctx);
    const backingFormat = active.backingFormat === undefined ? null : imageFormat(active.backingFormat);
    const record: TakeIntent = {
      version: 1,
      volumePath: args.volumePath,
      snapshotPath: args.snapshotPath,
      backingPath: active.fullBackingFilename
        ? relative(realRoot, resolve(active.fullBackingFilename))
        : null,
      backingFormat,
    };
    const intentTemp = tempPathFor(intentFile, ctx);
    try {
      await writeFile(intentTemp, `${JSON.stringify(record)}\n`);
      await rename(intentTemp, intentFile);
    } finally {
      await rm(intentTemp, { force: true });
    }
    await rename(volume, snapshot);
    await finishTake(record, volume, snapshot, realRoot, ctx);
    return snapshotResult(args.snapshotPath, snapshot, realRoot, ctx);
  },
};

/**
 * Makes the volume read as snapshot `snapshotPath` again: a new empty overlay backed by the
 * snapshot replaces the active layer (created under a temporary name, then renamed over it). Any
 * snapshot of the volume works, not only the latest; later snapshots stay valid files with their
 * own chains, they are just no longer under the active layer. Writes made since are discarded.
 *
 * @example
 * await host.run('host-1', { provider: 'nfs', operation: 'revertChainSnapshot', jobId,
 *   args: { mountPath: '/mnt/ds-1', volumePath: 'volumes/vol-1.qcow2', snapshotPath: 'snapshots/vol-1/s1.qcow2' } });
 */
export const revertChainSnapshot: HostOperation<ChainArgs, NfsSnapshotResult & { reverted: true }> = {
  args: ChainArgs,
  async run(args, ctx) {
    const realRoot = await realRootOf(args.mountPath);
    const snapshot = await resolveConfinedPath(args.mountPath, args.snapshotPath, { mustExist: true });
    await assertNoPendingTake(snapshot, args);
    const volume = await resolveConfinedPath(args.mountPath, args.volumePath, { mustExist: true });
    const snapInfo = await chainInfo(snapshot, realRoot, 'qcow2', ctx);
    await chainInfo(volume, realRoot, 'qcow2', ctx);
    await createOverlay(volume, snapshot, ctx);
    const { size } = await stat(volume);
    return {
      path: args.volumePath,
      sizeBytes: size,
      virtualSizeBytes: snapInfo.virtualSizeBytes,
      format: 'qcow2',
      backingPath: args.snapshotPath,
      reverted: true,
    };
  },
};

/**
 * Deletes snapshot `snapshotPath` without breaking anything built on it: every child (a later
 * snapshot of the volume, or the active layer; several after a revert) is rebased onto the
 * snapshot's own base with a safe `qemu-img rebase`, which copies into the child the clusters it
 * was reading from the snapshot, and only then is the snapshot file removed. A missing snapshot is
 * success; a re-run after a crash rebases the children still left and removes the file.
 *
 * @example
 * const { rebased } = await host.run('host-1', { provider: 'nfs', operation: 'deleteChainSnapshot', jobId,
 *   args: { mountPath: '/mnt/ds-1', volumePath: 'volumes/vol-1.qcow2', snapshotPath: 'snapshots/vol-1/s2.qcow2' } });
 */
export const deleteChainSnapshot: HostOperation<ChainArgs, { deleted: boolean; rebased: string[] }> = {
  args: ChainArgs,
  async run(args, ctx) {
    const realRoot = await realRootOf(args.mountPath);
    const snapshot = await resolveConfinedPath(args.mountPath, args.snapshotPath);
    const volume = await resolveConfinedPath(args.mountPath, args.volumePath);
    await assertNoPendingTake(snapshot, args);
    if (!(await pathExists(snapshot))) return { deleted: false, rebased: [] };
    const snapInfo = await chainInfo(snapshot, realRoot, 'qcow2', ctx);
    const base = snapInfo.fullBackingFilename ? resolve(snapInfo.fullBackingFilename) : undefined;

    const rebased: string[] = [];
    for (const child of await childrenOf(snapshot, volume, realRoot, ctx)) {
      await chainInfo(child, realRoot, 'qcow2', ctx);
      const rebaseArgs = ['rebase', '-q', '-f', 'qcow2'];
      if (base)
        rebaseArgs.push('-b', relative(dirname(child), base), '-F', snapInfo.backingFormat ?? 'qcow2');
      else rebaseArgs.push('-b', '');
      rebaseArgs.push(child);
      await qemuImg(rebaseArgs, ctx);
      rebased.push(relative(realRoot, child));
    }
    try {
      await unlink(snapshot);
    } catch (error) {
      if (!isNotFound(error)) throw error;
    }
    return { deleted: true, rebased };
  },
};

/**
 * The extents snapshot `snapshotPath` itself holds: what was written between its base (the previous
 * snapshot) and it, read from `qemu-img map --output=json` at depth 0. `zero` extents were written
 * as zeros. An incremental backup copies exactly these ranges.
 *
 * @example
 * const { extents } = await host.run('host-1', { provider: 'nfs', operation: 'snapshotChanges', jobId,
 *   args: { mountPath: '/mnt/ds-1', snapshotPath: 'snapshots/vol-1/s2.qcow2' } });
 */
export const snapshotChanges: HostOperation<z.infer<typeof ChangesArgs>, NfsExtentsResult> = {
  args: ChangesArgs,
  async run(args, ctx) {
    const realRoot = await realRootOf(args.mountPath);
    const snapshot = await resolveConfinedPath(args.mountPath, args.snapshotPath, { mustExist: true });
    const details = await chainInfo(snapshot, realRoot, 'qcow2', ctx);
    const map = await qemuMap(snapshot, 'qcow2', ctx);
    const extents = mergeExtents(
      map.filter((e) => e.depth === 0 && e.present !== false).map((e) => ({ ...e, zero: e.zero === true })),
    );
    return {
      extents,
      virtualSizeBytes: details.virtualSizeBytes,
      ...(details.fullBackingFilename
        ? { backingPath: relative(realRoot, resolve(details.fullBackingFilename)) }
        : {}),
    };
  },
};

/**
 * Every extent holding data anywhere in `path`'s chain (zeros left out): what a full first backup
 * of a snapshot or volume must copy.
 *
 * @example
 * const { extents } = await host.run('host-1', { provider: 'nfs', operation: 'allocatedExtents', jobId,
 *   args: { mountPath: '/mnt/ds-1', path: 'snapshots/vol-1/s1.qcow2' } });
 */
export const allocatedExtents: HostOperation<z.infer<typeof AllocatedArgs>, NfsExtentsResult> = {
  args: AllocatedArgs,
  async run(args, ctx) {
    const realRoot = await realRootOf(args.mountPath);
    const file = await resolveConfinedPath(args.mountPath, args.path, { mustExist: true });
    const details = await chainInfo(file, realRoot, args.format, ctx);
    const map = await qemuMap(file, args.format, ctx);
    const extents = mergeExtents(
      map.filter((e) => e.present !== false && e.data === true).map((e) => ({ ...e, zero: false })),
    );
    return { extents, virtualSizeBytes: details.virtualSizeBytes };
  },
};

// --- steps -------------------------------------------------------------------------------------

async function finishTake(
  intent: TakeIntent,
  volume: string,
  snapshot: string,
  realRoot: string,
  ctx: HostOperationContext,
): Promise<void> {
  if (intent.backingPath !== null) {
    const base = await resolveConfinedPath(realRoot, intent.backingPath, { mustExist: true });
    // Metadata only (-u): the frozen layer's content is unchanged, its base just moved relative to it.
    await qemuImg(
      [
        'rebase',
        '-q',
        '-u',
        '-f',
        'qcow2',
        '-b',
        relative(dirname(snapshot), base),
        '-F',
        intent.backingFormat ?? 'qcow2',
        snapshot,
      ],
      ctx,
    );
  }
  await chainInfo(snapshot, realRoot, 'qcow2', ctx);
  await createOverlay(volume, snapshot, ctx);
  await rm(intentPathFor(snapshot), { force: true });
}

// A new empty qcow2 at `target` backed by `base` (relative reference), renamed over `target`.
async function createOverlay(target: string, base: string, ctx: HostOperationContext): Promise<void> {
  const temp = tempPathFor(target, ctx);
  try {
    await qemuCreate(temp, {
      format: 'qcow2',
      backingFile: relative(dirname(target), base),
      backingFormat: 'qcow2',
      signal: ctx.signal,
    });
    await rename(temp, target);
  } finally {
    await rm(temp, { force: true });
  }
}

// Files whose backing file is `snapshot`: the volume's other snapshots and its active layer.
async function childrenOf(
  snapshot: string,
  volume: string,
  realRoot: string,
  ctx: HostOperationContext,
): Promise<string[]> {
  const candidates: string[] = [];
  for (const entry of await readdir(dirname(snapshot), { withFileTypes: true })) {
    if (entry.name.startsWith('.') || !entry.isFile() || !entry.name.endsWith('.qcow2')) continue;
    const file = join(dirname(snapshot), entry.name);
    if (file !== snapshot) candidates.push(file);
  }
  if (await pathExists(volume)) candidates.push(volume);
  const children: string[] = [];
  for (const file of candidates) {
    const details = await qemuInfo(file, { format: 'qcow2', allowBackingFile: true, signal: ctx.signal });
    if (details.fullBackingFilename && resolve(details.fullBackingFilename) === snapshot) {
      if (!isWithin(realRoot, file)) continue;
      children.push(file);
    }
  }
  return children;
}

async function assertBackedBy(
  volume: string,
  snapshot: string,
  realRoot: string,
  args: ChainArgs,
  ctx: HostOperationContext,
): Promise<void> {
  const details = await chainInfo(volume, realRoot, 'qcow2', ctx);
  if (!details.fullBackingFilename || resolve(details.fullBackingFilename) !== snapshot) {
    throw new DriverConflictError(`${args.volumePath} is not on top of ${args.snapshotPath}`, {
      context: { path: args.volumePath },
    });
  }
}

async function assertNoPendingTake(snapshot: string, args: ChainArgs): Promise<void> {
  const dir = dirname(snapshot);
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (error) {
    if (isNotFound(error)) return;
    throw error;
  }
  const pending = names.filter((n) => n.startsWith('.') && n.endsWith('.take.json'));
  if (pending.length > 0) {
    throw new DriverConflictError(
      `a snapshot of ${args.volumePath} was interrupted; take it again before anything else`,
      { context: { path: args.volumePath, pending: pending.map((n) => n.slice(1, -'.take.json'.length)) } },
    );
  }
}

async function readIntent(file: string, args: ChainArgs): Promise<TakeIntent | undefined> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    if (isNotFound(error)) return undefined;
    throw error;
  }
  const parsed = TakeIntentSchema.safeParse(JSON.parse(text));
  if (
    !parsed.success ||
    parsed.data.volumePath !== args.volumePath ||
    parsed.data.snapshotPath !== args.snapshotPath
  ) {
    throw new DriverConflictError(`${args.snapshotPath} has an intent record for another volume`, {
      context: { path: args.snapshotPath },
    });
  }
  return parsed.data;
}

async function snapshotResult(
  path: string,
  snapshot: string,
  realRoot: string,
  ctx: HostOperationContext,
): Promise<NfsSnapshotResult> {
  const details = await chainInfo(snapshot, realRoot, 'qcow2', ctx);
  const { size } = await stat(snapshot);
  return {
    path,
    sizeBytes: size,
    virtualSizeBytes: details.virtualSizeBytes,
    format: 'qcow2',
    ...(details.fullBackingFilename
      ? { backingPath: relative(realRoot, resolve(details.fullBackingFilename)) }
      : {}),
  };
}

// --- qemu helpers ------------------------------------------------------------------------------

/**
 * `qemu-img info` of `file` that also walks its whole backing chain, one header at a time (info
 * never opens the backing file), proving every layer stays on the share and names its format, before
 * any command that opens the chain (map, rebase, create) runs. Returns the top layer's info.
 */
export async function chainInfo(
  file: string,
  realRoot: string,
  format: string,
  ctx: HostOperationContext,
): Promise<QemuImageInfo> {
  let current = file;
  let currentFormat = format;
  let top: QemuImageInfo | undefined;
  for (let depth = 0; depth < MAX_CHAIN; depth++) {
    const details = await qemuInfo(current, {
      format: currentFormat,
      allowBackingFile: true,
      signal: ctx.signal,
    });
    top ??= details;
    if (details.fullBackingFilename === undefined) return top;
    const next = resolve(details.fullBackingFilename);
    if (!isWithin(realRoot, next)) {
      throw new DriverConflictError(`${basename(current)} is backed by a file outside the share`, {
        context: { backing: details.backingFilename },
      });
    }
    if (details.backingFormat === undefined) {
      throw new DriverConflictError(`${basename(current)} names no backing format; refused`, {
        context: { backing: details.backingFilename },
      });
    }
    current = next;
    currentFormat = imageFormat(details.backingFormat);
  }
  throw new DriverConflictError(`${basename(file)} has a backing chain deeper than ${MAX_CHAIN}`);
}

function imageFormat(format: string): 'qcow2' | 'raw' {
  if (format === 'qcow2' || format === 'raw') return format;
  throw new DriverConflictError(`backing format ${format} is not qcow2 or raw`, { context: { format } });
}

/** One entry of `qemu-img map --output=json`. */
export interface MapEntry {
  start: number;
  length: number;
  depth: number;
  present?: boolean;
  zero?: boolean;
  data?: boolean;
}

/** `qemu-img map --output=json` of `file` (its chain already proven by {@link chainInfo}). */
export async function qemuMap(file: string, format: string, ctx: HostOperationContext): Promise<MapEntry[]> {
  const out = await qemuImg(['map', '--output=json', '-f', format, file], ctx);
  return JSON.parse(out) as MapEntry[];
}

// Adjacent extents of the same kind become one.
function mergeExtents(entries: NfsExtent[]): NfsExtent[] {
  const merged: NfsExtent[] = [];
  for (const { start, length, zero } of [...entries].sort((a, b) => a.start - b.start)) {
    const last = merged.at(-1);
    if (last && last.zero === zero && last.start + last.length === start) last.length += length;
    else merged.push({ start, length, zero });
  }
  return merged;
}

// qemu-img with an argv array; the last argument is always an absolute path under the share.
function qemuImg(args: string[], ctx: HostOperationContext): Promise<string> {
  const target = args.at(-1) ?? '';
  if (!target.startsWith('/')) throw new DriverInputError('qemu-img target must be an absolute path');
  return new Promise((resolvePromise, reject) => {
    execFile(
      'qemu-img',
      args,
      { signal: ctx.signal, maxBuffer: 512 * 1024 * 1024, encoding: 'utf8' },
      (error, stdout, stderr) => {
        if (!error) {
          resolvePromise(stdout);
          return;
        }
        if (ctx.signal.aborted) {
          reject(ctx.signal.reason);
          return;
        }
        const detail = stderr.trim().split('\n').slice(-3).join(' ') || error.message;
        const exitCode = typeof error.code === 'number' ? error.code : null;
        reject(new QemuError(`qemu-img ${args[0]} failed: ${detail}`, { exitCode, stderr, args }));
      },
    );
  });
}

function intentPathFor(snapshot: string): string {
  return join(dirname(snapshot), `.${basename(snapshot)}.take.json`);
}

// A name in the same directory, hidden from `list`, unique to this job and host.
function tempPathFor(target: string, ctx: HostOperationContext): string {
  return join(dirname(target), `.${basename(target)}.${ctx.hostId}.${ctx.jobId}.tmp`);
}

/**
 * The external-snapshot host operations, merged into the nfs operation set by ./host-ops.ts.
 *
 * @example
 * Object.keys(nfsSnapshotOperations); // ['takeChainSnapshot', 'revertChainSnapshot', ...]
 */
export const nfsSnapshotOperations = {
  takeChainSnapshot,
  revertChainSnapshot,
  deleteChainSnapshot,
  snapshotChanges,
  allocatedExtents,
} as const;

/** Names of the external-snapshot host operations. */
export const NfsSnapshotOperation = {
  TakeChainSnapshot: 'takeChainSnapshot',
  RevertChainSnapshot: 'revertChainSnapshot',
  DeleteChainSnapshot: 'deleteChainSnapshot',
  SnapshotChanges: 'snapshotChanges',
  AllocatedExtents: 'allocatedExtents',
} as const;
export type NfsSnapshotOperation = (typeof NfsSnapshotOperation)[keyof typeof NfsSnapshotOperation];
