/**
 * The NFS provider's host-side half: what runs on a hypervisor host that has the share mounted.
 *
 * Rules every operation here follows:
 * - arguments are zod-validated by the runtime before `run`; every `mountPath` is then proven by
 *   the host's own storage configuration (confineMountPaths, ../sdk/host-config.ts: inside a
 *   configured storage root, symlinks resolved, an NFS mount for nfs roots) before any operation
 *   runs; every object path is relative to `mountPath` and resolved with
 *   {@link resolveConfinedPath}, so `..`, absolute paths and symlinks cannot reach outside the share;
 * - qemu-img runs with argv arrays only (see ../sdk/qemu.ts);
 * - each operation is idempotent: running it again after a crash or a retry converges on the same
 *   result, and files are written under a temporary name carrying the job id (the fencing token)
 *   and renamed into place, so a crash never leaves a half-written file under the final name and
 *   two jobs never write the same temporary file.
 */
import { open, opendir, rename, rm, stat, statfs, unlink } from 'node:fs/promises';
import { basename, dirname, join, relative } from 'node:path';
import { z } from 'zod';
import { isNotFound, isWithin, realRootOf, resolveConfinedPath } from '../sdk/confine.js';
import {
  DriverConflictError,
  DriverError,
  DriverInputError,
  DriverUnavailableError,
  ObjectNotFoundError,
} from '../sdk/errors.js';
import { confineMountPaths, HostStorageErrorCode } from '../sdk/host-config.js';
import { assertSafeImageFile } from '../sdk/image-inspect.js';
import {
  type QemuImageInfo,
  qemuCheck,
  qemuCompare,
  qemuConvert,
  qemuCreate,
  qemuInfo,
  qemuResize,
  qemuSnapshotApply,
  qemuSnapshotCreate,
  qemuSnapshotDelete,
} from '../sdk/qemu.js';
import type { HostOperation, HostOperationContext, HostOperationSet } from '../sdk/types.js';
import { AbsolutePathSchema, RelativePathSchema, SafeIdSchema } from '../sdk/validation.js';
import { nfsBackupOperations } from './backup-ops.js';
import { assertHttpUrl, downloadToFile, sha256OfFile } from './download.js';
import { NfsExportOperation, nfsExportOperations } from './export-ops.js';
import { NfsLazyRestoreOperation, nfsLazyRestoreOperations } from './lazy-restore.js';
import { NfsSnapshotOperation, nfsSnapshotOperations } from './snapshot-ops.js';

/** Image formats the NFS host operations read and write. */
export const NfsImageFormatSchema = z.enum(['qcow2', 'raw']);
export type NfsImageFormat = z.infer<typeof NfsImageFormatSchema>;

const FileRef = z.object({ mountPath: AbsolutePathSchema, path: RelativePathSchema }).strict();
const SizeSchema = z.number().int().positive().max(Number.MAX_SAFE_INTEGER);

/** What the image-producing operations return (matches the SDK's `CreateResult`). */
export interface NfsImageResult {
  path: string;
  sizeBytes: number;
  virtualSizeBytes: number;
  format: NfsImageFormat;
}

/** One file found by `list`. */
export interface NfsListedFile {
  path: string;
  sizeBytes: number;
  modifiedAt: string;
}

/**
 * `server` and `export` (the store's details) make the host check, for an nfs storage root, that
 * the mount shows exactly that source in mountinfo (confineMountPaths reads them next to mountPath).
 */
const CheckMountArgs = z
  .object({
    mountPath: AbsolutePathSchema,
    server: z.string().min(1).max(253).optional(),
    export: AbsolutePathSchema.optional(),
  })
  .strict();
const CreateArgs = FileRef.extend({
  format: NfsImageFormatSchema.default('qcow2'),
  sizeBytes: SizeSchema.optional(),
  /** A linked clone's base, relative to the same mount. */
  backingPath: RelativePathSchema.optional(),
  backingFormat: NfsImageFormatSchema.optional(),
})
  .strict()
  .refine((a) => a.sizeBytes !== undefined || a.backingPath !== undefined, {
    message: 'sizeBytes is required without backingPath',
    path: ['sizeBytes'],
  })
  .refine((a) => a.backingPath === undefined || a.format === 'qcow2', {
    message: 'linked clones must be qcow2',
    path: ['format'],
  });
const CopyArgs = z
  .object({
    src: FileRef.extend({ format: NfsImageFormatSchema }).strict(),
    dst: FileRef.extend({ format: NfsImageFormatSchema }).strict(),
  })
  .strict();
const ResizeArgs = FileRef.extend({
  format: NfsImageFormatSchema.default('qcow2'),
  sizeBytes: SizeSchema,
  allowShrink: z.boolean().default(false),
}).strict();
// qemu-img never probes: an image read without a stated format is read as qcow2.
const InfoArgs = FileRef.extend({ format: NfsImageFormatSchema.default('qcow2') }).strict();
const ListArgs = z.object({ mountPath: AbsolutePathSchema, prefix: RelativePathSchema.optional() }).strict();
const SnapshotArgs = FileRef.extend({ snapshotId: SafeIdSchema }).strict();

/**
 * Formats `fetchImage` accepts as a source, and the qemu-img driver that reads each. VMDK is left
 * out on purpose: a VMDK descriptor names extent files, i.e. paths chosen by the image's author.
 */
export const NfsSourceFormatSchema = z.enum(['qcow2', 'raw', 'iso', 'vhd']);
export type NfsSourceFormat = z.infer<typeof NfsSourceFormatSchema>;
const QEMU_SOURCE_FORMAT: Record<NfsSourceFormat, string> = {
  qcow2: 'qcow2',
  raw: 'raw',
  iso: 'raw',
  vhd: 'vpc',
};

const FetchImageArgs = FileRef.extend({
  url: z
    .string()
    .max(16 * 1024)
    .refine((u) => {
      try {
        assertHttpUrl(u);
        return true;
      } catch {
        return false;
      }
    }, 'must be an http(s) URL without credentials'),
  sourceFormat: NfsSourceFormatSchema,
  targetFormat: NfsImageFormatSchema.default('qcow2'),
  expectedSha256: z
    .string()
    .regex(/^[0-9a-fA-F]{64}$/, 'must be 64 hex digits')
    .optional(),
  /** Exact length of the object behind `url`, when known. */
  sizeBytes: SizeSchema.optional(),
  /**
   * The object version to fetch (its ETag, from the control plane's HEAD): every GET carries
   * `If-Match` with it, so a changed object fails with `SourceChanged` instead of mixing versions.
   */
  etag: z.string().min(1).max(1024).optional(),
  /**
   * The image store proved that version `etag` has `expectedSha256` (its stored full-object
   * SHA-256 checksum, which the store computed from the bytes it received): the host does not
   * hash the bytes again. Only with `etag` and `expectedSha256`.
   */
  sourceVerified: z.boolean().default(false),
  /** Parallel ranged GETs at most; default sized to the object (4–8). */
  streams: z.number().int().min(1).max(16).optional(),
  /** Virtual size the installed image must have, when known (checked on an existing file too). */
  virtualSizeBytes: SizeSchema.optional(),
  /** Fail the download when no byte arrives for this long. */
  stallTimeoutSeconds: z.number().int().positive().max(3600).default(60),
})
  .strict()
  .refine((a) => !a.sourceVerified || (a.etag !== undefined && a.expectedSha256 !== undefined), {
    message: 'sourceVerified needs etag and expectedSha256',
    path: ['sourceVerified'],
  });
const ImageRef = FileRef.extend({ format: NfsImageFormatSchema.default('qcow2') }).strict();
const CompareArgs = z.object({ a: ImageRef, b: ImageRef, strict: z.boolean().default(false) }).strict();
const CheckArgs = ImageRef;
const CloneArgs = FileRef.extend({
  /** The image to clone (typically the pool's template cache entry), on the same mount. */
  sourcePath: RelativePathSchema,
  sourceFormat: NfsImageFormatSchema.default('qcow2'),
  mode: z.enum(['linked', 'full']).default('linked'),
  /** Virtual size of the clone; default the source's. Never smaller than the source. */
  sizeBytes: SizeSchema.optional(),
}).strict();

/**
 * Checks the share is mounted and writable on this host: the mount path exists, is a directory,
 * and a probe file named after the job can be written, fsync'ed and removed. The probe is written
 * only after confineMountPaths proved the path is in a storage root (and, for an nfs root, the
 * declared `server:export` mounted there).
 */
const checkMount: HostOperation<
  z.infer<typeof CheckMountArgs>,
  { mountPath: string; freeBytes: number; totalBytes: number }
> = {
  args: CheckMountArgs,
  async run({ mountPath }, ctx) {
    let stats: Awaited<ReturnType<typeof stat>>;
    try {
      stats = await stat(mountPath);
    } catch (error) {
      throw new DriverUnavailableError(`${mountPath} does not exist on host ${ctx.hostId}`, { cause: error });
    }
    if (!stats.isDirectory()) {
      throw new DriverUnavailableError(`${mountPath} is not a directory on host ${ctx.hostId}`);
    }
    const probe = join(mountPath, `.strata-probe-${ctx.hostId}-${ctx.jobId}`);
    try {
      const handle = await open(probe, 'w');
      try {
        await handle.writeFile(`${ctx.jobId}\n`);
        await handle.sync();
      } finally {
        await handle.close();
      }
      await unlink(probe);
    } catch (error) {
      await rm(probe, { force: true }).catch(() => undefined);
      const message = error instanceof Error ? error.message : String(error);
      throw new DriverUnavailableError(`${mountPath} is not writable on host ${ctx.hostId}: ${message}`, {
        cause: error,
      });
    }
    const fs = await statfs(mountPath);
    return { mountPath, freeBytes: fs.bavail * fs.bsize, totalBytes: fs.blocks * fs.bsize };
  },
};

/**
 * Creates a blank image, or a linked clone of `backingPath` (a qcow2 overlay whose backing file is
 * stored relative to the clone, so it resolves wherever the share is mounted). Repeating it with the
 * same size succeeds; an existing file of another size is a conflict.
 */
const create: HostOperation<z.infer<typeof CreateArgs>, NfsImageResult> = {
  args: CreateArgs,
  async run(args, ctx) {
    const realRoot = await realRootOf(args.mountPath);
    const target = await resolveConfinedPath(args.mountPath, args.path, { createParents: true });
    let backingFile: string | undefined;
    let backingFormat: NfsImageFormat | undefined;
    let expectedSize = args.sizeBytes;
    if (args.backingPath !== undefined) {
      const backing = await resolveConfinedPath(args.mountPath, args.backingPath, { mustExist: true });
      backingFormat = args.backingFormat ?? 'qcow2';
      const backingInfo = await confinedInfo(backing, realRoot, backingFormat, ctx);
      expectedSize = args.sizeBytes ?? backingInfo.virtualSizeBytes;
      if (expectedSize < backingInfo.virtualSizeBytes) {
        throw new DriverInputError('a linked clone cannot be smaller than its base', {
          context: { field: 'sizeBytes' },
        });
      }
      backingFile = relative(dirname(target), backing);
    }
    const existing = await existingInfo(target, realRoot, args.format, ctx);
    if (existing) {
      if (existing.virtualSizeBytes !== expectedSize) {
        throw new DriverConflictError(
          `${args.path} exists with virtual size ${existing.virtualSizeBytes}, not ${expectedSize}`,
          { context: { path: args.path } },
        );
      }
      ctx.logger.info('image already exists', { path: args.path });
      return imageResult(args.path, target, existing, args.format);
    }
    const temp = tempPathFor(target, ctx);
    try {
      await qemuCreate(temp, {
        format: args.format,
        sizeBytes: expectedSize,
        backingFile,
        backingFormat,
        signal: ctx.signal,
      });
      await rename(temp, target);
    } finally {
      await rm(temp, { force: true });
    }
    return imageResult(
      args.path,
      target,
      await confinedInfo(target, realRoot, args.format, ctx),
      args.format,
    );
  },
};

/** Deletes one image file; a missing file is success (`deleted: false`). */
const deleteOp: HostOperation<z.infer<typeof FileRef>, { deleted: boolean }> = {
  args: FileRef,
  async run(args) {
    let target: string;
    try {
      target = await resolveConfinedPath(args.mountPath, args.path, { mustExist: true });
    } catch (error) {
      if (error instanceof ObjectNotFoundError) return { deleted: false };
      throw error;
    }
    const stats = await stat(target);
    if (!stats.isFile())
      throw new DriverInputError(`${args.path} is not a file`, { context: { field: 'path' } });
    try {
      await unlink(target);
      return { deleted: true };
    } catch (error) {
      if (isNotFound(error)) return { deleted: false };
      throw error;
    }
  },
};

/**
 * Full copy (`qemu-img convert`, which also flattens a linked clone) between two paths that may sit
 * on two different mounts. The output is written under a temporary name and renamed, so a file under
 * the final name is always complete; repeating the copy once it is there succeeds without work.
 */
const copy: HostOperation<z.infer<typeof CopyArgs>, NfsImageResult> = {
  args: CopyArgs,
  async run({ src, dst }, ctx) {
    const srcRoot = await realRootOf(src.mountPath);
    const dstRoot = await realRootOf(dst.mountPath);
    const from = await resolveConfinedPath(src.mountPath, src.path, { mustExist: true });
    const to = await resolveConfinedPath(dst.mountPath, dst.path, { createParents: true });
    if (from === to) throw new DriverInputError('source and destination are the same file');
    const srcInfo = await confinedInfo(from, srcRoot, src.format, ctx);
    const existing = await existingInfo(to, dstRoot, dst.format, ctx);
    if (existing) {
      if (existing.virtualSizeBytes !== srcInfo.virtualSizeBytes) {
        throw new DriverConflictError(`${dst.path} exists with another virtual size`, {
          context: { path: dst.path },
        });
      }
      ctx.logger.info('copy already complete', { path: dst.path });
      return imageResult(dst.path, to, existing, dst.format);
    }
    const temp = tempPathFor(to, ctx);
    try {
      ctx.progress(0);
      await qemuConvert(from, temp, {
        srcFormat: src.format,
        dstFormat: dst.format,
        signal: ctx.signal,
        onProgress: (percent) => ctx.progress(percent),
      });
      await rename(temp, to);
    } finally {
      await rm(temp, { force: true });
    }
    ctx.progress(100);
    return imageResult(dst.path, to, await confinedInfo(to, dstRoot, dst.format, ctx), dst.format);
  },
};

/** Sets the virtual size; shrinking needs `allowShrink`. Already at the size: nothing to do. */
const resize: HostOperation<z.infer<typeof ResizeArgs>, NfsImageResult> = {
  args: ResizeArgs,
  async run(args, ctx) {
    const realRoot = await realRootOf(args.mountPath);
    const target = await resolveConfinedPath(args.mountPath, args.path, { mustExist: true });
    const before = await confinedInfo(target, realRoot, args.format, ctx);
    if (before.virtualSizeBytes !== args.sizeBytes) {
      const shrink = args.sizeBytes < before.virtualSizeBytes;
      if (shrink && !args.allowShrink) {
        throw new DriverInputError(
          `shrinking ${args.path} from ${before.virtualSizeBytes} to ${args.sizeBytes} loses data; set allowShrink`,
          { context: { field: 'newSizeBytes' } },
        );
      }
      await qemuResize(target, args.sizeBytes, { format: args.format, shrink, signal: ctx.signal });
    }
    return imageResult(
      args.path,
      target,
      await confinedInfo(target, realRoot, args.format, ctx),
      args.format,
    );
  },
};

/** Describes one image (sizes, format, base of a linked clone, internal snapshots). */
const info: HostOperation<
  z.infer<typeof InfoArgs>,
  NfsImageResult & {
    /** Bytes allocated on the share (qemu-img's `actual-size`), when qemu reports it. */
    actualSizeBytes?: number;
    /** The linked clone's base, relative to the share's root. */
    backingPath?: string;
    backingFormat?: string;
    snapshots: { id: string; name: string; createdAt: string }[];
  }
> = {
  args: InfoArgs,
  async run(args, ctx) {
    const realRoot = await realRootOf(args.mountPath);
    const target = await resolveConfinedPath(args.mountPath, args.path, { mustExist: true });
    const details = await confinedInfo(target, realRoot, args.format, ctx);
    const format = NfsImageFormatSchema.safeParse(details.format);
    const result = await imageResult(args.path, target, details, format.success ? format.data : 'raw');
    const backingPath = details.fullBackingFilename
      ? relative(realRoot, details.fullBackingFilename)
      : undefined;
    return {
      ...result,
      ...(details.actualSizeBytes !== undefined ? { actualSizeBytes: details.actualSizeBytes } : {}),
      ...(backingPath !== undefined ? { backingPath } : {}),
      ...(details.backingFormat !== undefined ? { backingFormat: details.backingFormat } : {}),
      snapshots: details.snapshots.map(({ id, name, createdAt }) => ({ id, name, createdAt })),
    };
  },
};

/**
 * Lists the files of the share (optionally under `prefix`), skipping Strata's hidden temporaries.
 * Symbolic links are never followed. The walk is capped by the host's configuration (entries
 * visited, depth): a share past either cap fails with `ListingTooLarge` rather than run the host
 * out of memory or answer a partial list someone could take for the whole.
 */
const list: HostOperation<z.infer<typeof ListArgs>, { objects: NfsListedFile[] }> = {
  args: ListArgs,
  async run(args, ctx) {
    const realRoot = await realRootOf(args.mountPath);
    const start = args.prefix ? await resolveConfinedPath(args.mountPath, args.prefix) : realRoot;
    const objects: NfsListedFile[] = [];
    const { maxEntries, maxDepth } = ctx.storage.listLimits;
    let visited = 0;
    const tooLarge = (why: string) =>
      new DriverError(`listing ${args.mountPath} stopped: ${why}`, {
        code: HostStorageErrorCode.ListingTooLarge,
        context: { maxEntries, maxDepth },
      });
    const walk = async (dir: string, depth = 0): Promise<void> => {
      if (ctx.signal.aborted) throw ctx.signal.reason;
      if (depth > maxDepth) throw tooLarge(`directories nest deeper than ${maxDepth} levels`);
      let entries: import('node:fs').Dir;
      try {
        // A directory is read as a stream, so one huge directory is stopped at the cap too.
        entries = await opendir(dir);
      } catch (error) {
        if (isNotFound(error)) return;
        throw error;
      }
      for await (const entry of entries) {
        // Leaving the loop by a throw closes the directory (the iterator's return).
        if (++visited > maxEntries) throw tooLarge(`more than ${maxEntries} entries`);
        // Dot files are probes and half-written temporaries; symlinks may point anywhere.
        if (entry.name.startsWith('.') || entry.isSymbolicLink()) continue;
        const full = join(dir, entry.name);
        if (entry.isDirectory()) await walk(full, depth + 1);
        else if (entry.isFile()) {
          const stats = await stat(full);
          objects.push({
            path: relative(realRoot, full),
            sizeBytes: stats.size,
            modifiedAt: stats.mtime.toISOString(),
          });
        }
      }
    };
    await walk(start);
    objects.sort((a, b) => a.path.localeCompare(b.path));
    return { objects };
  },
};

/**
 * Takes an internal qcow2 snapshot named by the snapshot id (idempotent: an existing one of that
 * name is the result). Internal snapshots are a first step; incremental backup will move this to
 * external overlays, whose changed extents `qemu-img map` can list.
 */
const snapshot: HostOperation<z.infer<typeof SnapshotArgs>, NfsImageResult & { snapshotId: string }> = {
  args: SnapshotArgs,
  async run(args, ctx) {
    const realRoot = await realRootOf(args.mountPath);
    const target = await resolveConfinedPath(args.mountPath, args.path, { mustExist: true });
    const before = await confinedInfo(target, realRoot, 'qcow2', ctx);
    if (!before.snapshots.some((s) => s.name === args.snapshotId)) {
      await qemuSnapshotCreate(target, args.snapshotId, { signal: ctx.signal });
    }
    const after = await confinedInfo(target, realRoot, 'qcow2', ctx);
    const result = await imageResult(`${args.path}@${args.snapshotId}`, target, after, 'qcow2');
    return { ...result, snapshotId: args.snapshotId };
  },
};

/** Reverts an image to one of its internal snapshots; the snapshot must exist. */
const revert: HostOperation<z.infer<typeof SnapshotArgs>, { reverted: true }> = {
  args: SnapshotArgs,
  async run(args, ctx) {
    const realRoot = await realRootOf(args.mountPath);
    const target = await resolveConfinedPath(args.mountPath, args.path, { mustExist: true });
    const current = await confinedInfo(target, realRoot, 'qcow2', ctx);
    if (!current.snapshots.some((s) => s.name === args.snapshotId)) {
      throw new ObjectNotFoundError(`${args.path} has no snapshot ${args.snapshotId}`, {
        context: { path: args.path, snapshotId: args.snapshotId },
      });
    }
    await qemuSnapshotApply(target, args.snapshotId, { signal: ctx.signal });
    return { reverted: true };
  },
};

/** Deletes an internal snapshot; a missing image or snapshot is success. */
const deleteSnapshot: HostOperation<z.infer<typeof SnapshotArgs>, { deleted: boolean }> = {
  args: SnapshotArgs,
  async run(args, ctx) {
    const realRoot = await realRootOf(args.mountPath);
    let target: string;
    try {
      target = await resolveConfinedPath(args.mountPath, args.path, { mustExist: true });
    } catch (error) {
      if (error instanceof ObjectNotFoundError) return { deleted: false };
      throw error;
    }
    const current = await confinedInfo(target, realRoot, 'qcow2', ctx);
    if (!current.snapshots.some((s) => s.name === args.snapshotId)) return { deleted: false };
    await qemuSnapshotDelete(target, args.snapshotId, { signal: ctx.signal });
    return { deleted: true };
  },
};

/**
 * Installs an image from an http(s) URL (a presigned image-store GET) at `path`: downloads it to a
 * hidden `.<name>.partial-<jobId>` next to the target (same share, so the final rename is atomic)
 * with parallel ranged GETs pinned to one object version (`etag`, else the first answer's ETag;
 * small objects and servers without ranges in one stream, see {@link downloadToFile}); checks
 * `expectedSha256`, hashing in order as the ranges land unless `sourceVerified` says the image store
 * already proved that version's SHA-256; reads the header with the declared `sourceFormat` (an image
 * naming a backing or data file is refused, by Strata's own inspection and then by qemu-img's);
 * converts to `targetFormat` into `.<name>.convert-<jobId>` when the formats differ; runs
 * `qemu-img check` on qcow2 only when no checksum proved the bytes (a checksum-proven template is
 * the one the control plane inspected at registration); renames into place. Temporaries are
 * removed on any failure, so the final name only ever holds a verified image. An existing final
 * file is the result of an earlier run: it is checked (sha256 for same-format installs, virtual
 * size when given, qcow2 consistency when no sha256 proved it) and returned without downloading
 * again. Progress reports carry `{ phase, bytes, totalBytes }`.
 */
const fetchImage: HostOperation<z.infer<typeof FetchImageArgs>, NfsImageResult & { sha256?: string }> = {
  args: FetchImageArgs,
  async run(args, ctx) {
    await realRootOf(args.mountPath);
    const target = await resolveConfinedPath(args.mountPath, args.path, { createParents: true });
    const sourceFormat = QEMU_SOURCE_FORMAT[args.sourceFormat];
    const converting = sourceFormat !== args.targetFormat;
    const existing = await existingFetched(target, args, converting, ctx);
    if (existing) {
      ctx.logger.info('image already installed', { path: args.path });
      ctx.progress(100, { phase: 'done' });
      return existing;
    }

    const partial = join(dirname(target), `.${basename(target)}.partial-${ctx.jobId}`);
    const converted = join(dirname(target), `.${basename(target)}.convert-${ctx.jobId}`);
    let sha256: string | undefined;
    let streams: number;
    let downloadMs: number;
    let details: QemuImageInfo;
    try {
      ctx.progress(0, { phase: 'download', bytes: 0 });
      const started = performance.now();
      let lastPercent = -1;
      let lastBytes = 0;
      const download = await downloadToFile(args.url, partial, {
        signal: ctx.signal,
        stallTimeoutMs: args.stallTimeoutSeconds * 1000,
        expectedSha256: args.expectedSha256,
        expectedBytes: args.sizeBytes,
        ...(args.etag !== undefined ? { etag: args.etag } : {}),
        sourceVerified: args.sourceVerified,
        ...(args.streams !== undefined ? { streams: args.streams } : {}),
        onBytes(bytes, totalBytes) {
          // The download is most of the work; conversion and checks share the last 10 %.
          const percent = totalBytes ? Math.floor((bytes / totalBytes) * 90) : 0;
          if (percent !== lastPercent || bytes - lastBytes >= 64 * 1024 * 1024) {
            lastPercent = percent;
            lastBytes = bytes;
            ctx.progress(percent, { phase: 'download', bytes, ...(totalBytes ? { totalBytes } : {}) });
          }
        },
      });
      sha256 = download.sha256 ?? args.expectedSha256?.toLowerCase();
      streams = download.streams;
      downloadMs = Math.round(performance.now() - started);
      ctx.progress(90, { phase: 'verify', bytes: download.bytes });
      // Defence in depth: the control plane inspected these bytes on upload, but the host checks the
      // file it will hand to qemu itself (same rules, 66 KiB read) before any qemu-img opens it.
      await assertSafeImageFile(partial, args.sourceFormat);
      // Reading the header with the declared format both proves the bytes are that format and
      // refuses backing/data files, which would make qemu open paths the image's author chose.
      details = await qemuInfo(partial, { format: sourceFormat, signal: ctx.signal });
      let ready = partial;
      if (converting) {
        await qemuConvert(partial, converted, {
          srcFormat: sourceFormat,
          dstFormat: args.targetFormat,
          signal: ctx.signal,
          onProgress: (p) => ctx.progress(90 + Math.floor(p / 20), { phase: 'convert' }),
        });
        await rm(partial, { force: true });
        ready = converted;
        details = await qemuInfo(ready, { format: args.targetFormat, signal: ctx.signal });
      }
      // Bytes equal to the registered checksum are the image the control plane inspected when it
      // was registered, so only unproven bytes get qemu-img check's full walk of the metadata.
      if (args.expectedSha256 === undefined) await assertConsistent(ready, args.targetFormat, args.path, ctx);
      if (args.virtualSizeBytes !== undefined && details.virtualSizeBytes !== args.virtualSizeBytes) {
        throw new DriverConflictError(
          `${args.path}: image has virtual size ${details.virtualSizeBytes}, expected ${args.virtualSizeBytes}`,
          { context: { path: args.path } },
        );
      }
      await rename(ready, target);
    } finally {
      await rm(partial, { force: true });
      await rm(converted, { force: true });
    }
    ctx.progress(100, { phase: 'done' });
    // Who proved the sha256: the image store (sourceVerified) or this host's own hash. The result
    // stays the one a repeat returns, so this goes to the log only.
    ctx.logger.info('image installed', {
      path: args.path,
      streams,
      downloadMs,
      sha256: sha256 === undefined ? 'none' : args.sourceVerified ? 'proved by the store' : 'hashed',
    });
    const result = await imageResult(args.path, target, details, args.targetFormat);
    return sha256 === undefined ? result : { ...result, sha256 };
  },
};

// An earlier run's result, verified, or undefined when there is none.
async function existingFetched(
  target: string,
  args: z.infer<typeof FetchImageArgs>,
  converting: boolean,
  ctx: HostOperationContext,
): Promise<(NfsImageResult & { sha256?: string }) | undefined> {
  let size: number;
  try {
    ({ size } = await stat(target));
  } catch (error) {
    if (isNotFound(error)) return undefined;
    throw error;
  }
  const conflict = (why: string) =>
    new DriverConflictError(`${args.path} exists but ${why}`, { context: { path: args.path } });
  // Whatever sits under the final name is checked like a download before qemu reads it.
  await assertSafeImageFile(target, args.targetFormat);
  const details = await qemuInfo(target, { format: args.targetFormat, signal: ctx.signal });
  if (args.virtualSizeBytes !== undefined && details.virtualSizeBytes !== args.virtualSizeBytes) {
    throw conflict(`has virtual size ${details.virtualSizeBytes}, not ${args.virtualSizeBytes}`);
  }
  let sha256: string | undefined;
  // Only a same-format install keeps the downloaded bytes, so only then can they be re-hashed.
  if (!converting) {
    if (args.sizeBytes !== undefined && size !== args.sizeBytes) {
      throw conflict(`is ${size} bytes, not ${args.sizeBytes}`);
    }
    if (args.expectedSha256 !== undefined) {
      sha256 = await sha256OfFile(target, { signal: ctx.signal });
      if (sha256 !== args.expectedSha256.toLowerCase()) throw conflict('has another sha256');
    }
  }
  if (sha256 === undefined) await assertConsistent(target, args.targetFormat, args.path, ctx);
  const result = await imageResult(args.path, target, details, args.targetFormat);
  return sha256 === undefined ? result : { ...result, sha256 };
}

// qcow2 metadata is checked before an image is published; leaks are harmless, corruption is not.
async function assertConsistent(
  file: string,
  format: NfsImageFormat,
  path: string,
  ctx: HostOperationContext,
): Promise<void> {
  if (format !== 'qcow2') return;
  const result = await qemuCheck(file, { format, allowCorrupt: true, signal: ctx.signal });
  if (result.corruptions > 0 || result.checkErrors > 0 || result.exitCode === 2) {
    throw new DriverError(`${path}: qemu-img check found ${result.corruptions} corruption(s)`, {
      code: 'CorruptImage',
      context: { path, corruptions: result.corruptions, checkErrors: result.checkErrors },
    });
  }
}

/**
 * Whether two images (on one mount or two) hold the same guest-visible content, reading through
 * backing chains (`qemu-img compare`). With `strict`, a size difference counts even when the extra
 * area is zero.
 */
const compare: HostOperation<z.infer<typeof CompareArgs>, { identical: boolean }> = {
  args: CompareArgs,
  async run({ a, b, strict }, ctx) {
    const sides = await Promise.all(
      [a, b].map(async (side) => {
        const root = await realRootOf(side.mountPath);
        const file = await resolveConfinedPath(side.mountPath, side.path, { mustExist: true });
        // Proves any backing chain stays on the share before qemu opens it.
        await confinedInfo(file, root, side.format, ctx);
        return file;
      }),
    );
    const identical = await qemuCompare(sides[0]!, sides[1]!, {
      formatA: a.format,
      formatB: b.format,
      strict,
      signal: ctx.signal,
    });
    return { identical };
  },
};

/** `qemu-img check`: `ok` unless there is corruption (leaked clusters only waste space). */
const check: HostOperation<
  z.infer<typeof CheckArgs>,
  { ok: boolean; corruptions: number; leaks: number; checkErrors: number }
> = {
  args: CheckArgs,
  async run(args, ctx) {
    const realRoot = await realRootOf(args.mountPath);
    const target = await resolveConfinedPath(args.mountPath, args.path, { mustExist: true });
    await confinedInfo(target, realRoot, args.format, ctx);
    const result = await qemuCheck(target, { format: args.format, allowCorrupt: true, signal: ctx.signal });
    return {
      ok: result.corruptions === 0 && result.checkErrors === 0 && result.exitCode !== 2,
      corruptions: result.corruptions,
      leaks: result.leaks,
      checkErrors: result.checkErrors,
    };
  },
};

/**
 * A volume from an image on the same mount: `linked` makes a qcow2 overlay whose backing file is
 * recorded relative to the clone's directory (`../templates/t.qcow2`), so it resolves wherever the
 * share is mounted; `full` converts the source (through its backing chain) into a standalone
 * qcow2. Either is grown to `sizeBytes` before it is renamed into place. Repeating it succeeds when
 * the clone is there with that size and mode; anything else under the name is a conflict.
 */
const clone: HostOperation<
  z.infer<typeof CloneArgs>,
  NfsImageResult & { mode: 'linked' | 'full'; backingPath?: string }
> = {
  args: CloneArgs,
  async run(args, ctx) {
    const realRoot = await realRootOf(args.mountPath);
    const source = await resolveConfinedPath(args.mountPath, args.sourcePath, { mustExist: true });
    const target = await resolveConfinedPath(args.mountPath, args.path, { createParents: true });
    if (source === target) throw new DriverInputError('source and clone are the same file');
    const sourceInfo = await confinedInfo(source, realRoot, args.sourceFormat, ctx);
    const sizeBytes = args.sizeBytes ?? sourceInfo.virtualSizeBytes;
    if (sizeBytes < sourceInfo.virtualSizeBytes) {
      throw new DriverInputError(
        `a clone cannot be smaller than its source (${sourceInfo.virtualSizeBytes} bytes)`,
        { context: { field: 'sizeBytes' } },
      );
    }
    const backingPath = args.mode === 'linked' ? relative(realRoot, source) : undefined;
    const finish = async (details: QemuImageInfo) => ({
      ...(await imageResult(args.path, target, details, 'qcow2')),
      mode: args.mode,
      ...(backingPath !== undefined ? { backingPath } : {}),
    });

    const existing = await existingInfo(target, realRoot, 'qcow2', ctx);
    if (existing) {
      const existingBacking = existing.fullBackingFilename
        ? relative(realRoot, existing.fullBackingFilename)
        : undefined;
      if (existing.virtualSizeBytes !== sizeBytes || existingBacking !== backingPath) {
        throw new DriverConflictError(`${args.path} exists and is not this ${args.mode} clone`, {
          context: {
            path: args.path,
            virtualSizeBytes: existing.virtualSizeBytes,
            backingPath: existingBacking,
          },
        });
      }
      ctx.logger.info('clone already exists', { path: args.path });
      return finish(existing);
    }

    const temp = tempPathFor(target, ctx);
    try {
      ctx.progress(0);
      if (args.mode === 'linked') {
        await qemuCreate(temp, {
          format: 'qcow2',
          sizeBytes,
          backingFile: relative(dirname(target), source),
          backingFormat: args.sourceFormat,
          signal: ctx.signal,
        });
      } else {
        await qemuConvert(source, temp, {
          srcFormat: args.sourceFormat,
          dstFormat: 'qcow2',
          signal: ctx.signal,
          onProgress: (percent) => ctx.progress(Math.min(99, percent)),
        });
        if (sizeBytes > sourceInfo.virtualSizeBytes) {
          await qemuResize(temp, sizeBytes, { format: 'qcow2', signal: ctx.signal });
        }
      }
      await rename(temp, target);
    } finally {
      await rm(temp, { force: true });
    }
    ctx.progress(100);
    return finish(await confinedInfo(target, realRoot, 'qcow2', ctx));
  },
};

/**
 * The NFS host operations, keyed by the names the control-plane driver calls.
 *
 * @example
 * await runHostRequest(request, { operationSets: [nfsHostOperations], workDir, onEvent });
 */
export const nfsHostOperations: HostOperationSet = confineMountPaths({
  provider: 'nfs',
  operations: {
    checkMount,
    create,
    delete: deleteOp,
    copy,
    resize,
    info,
    list,
    snapshot,
    revert,
    deleteSnapshot,
    fetchImage,
    compare,
    check,
    clone,
    // External snapshot chains (./snapshot-ops.ts, docs/snapshots.md).
    ...nfsSnapshotOperations,
    // Chunked backup to the image store (./backup-ops.ts, docs/backup-format.md).
    ...nfsBackupOperations,
    // Volume export to the image store for staged migration (./export-ops.ts).
    ...nfsExportOperations,
    // Lazy restore: a volume usable before its backup has arrived (./lazy-restore.ts).
    ...nfsLazyRestoreOperations,
  },
});

/** Names of the NFS host operations. */
export const NfsHostOperation = {
  CheckMount: 'checkMount',
  Create: 'create',
  Delete: 'delete',
  Copy: 'copy',
  Resize: 'resize',
  Info: 'info',
  List: 'list',
  Snapshot: 'snapshot',
  Revert: 'revert',
  DeleteSnapshot: 'deleteSnapshot',
  FetchImage: 'fetchImage',
  Compare: 'compare',
  Check: 'check',
  Clone: 'clone',
  ...NfsSnapshotOperation,
  BackupChunks: 'backupChunks',
  RestoreChunks: 'restoreChunks',
  ...NfsExportOperation,
  ...NfsLazyRestoreOperation,
} as const;
export type NfsHostOperation = (typeof NfsHostOperation)[keyof typeof NfsHostOperation];

// A name in the same directory, hidden from `list`, unique to this job and host.
function tempPathFor(target: string, ctx: HostOperationContext): string {
  return join(dirname(target), `.${basename(target)}.${ctx.hostId}.${ctx.jobId}.tmp`);
}

async function existingInfo(
  target: string,
  realRoot: string,
  format: NfsImageFormat,
  ctx: HostOperationContext,
): Promise<QemuImageInfo | undefined> {
  try {
    await stat(target);
  } catch (error) {
    if (isNotFound(error)) return undefined;
    throw error;
  }
  return confinedInfo(target, realRoot, format, ctx);
}

// Linked clones are expected on a share; a base outside the share is not.
async function confinedInfo(
  target: string,
  realRoot: string,
  format: string,
  ctx: HostOperationContext,
): Promise<QemuImageInfo> {
  const details = await qemuInfo(target, { format, allowBackingFile: true, signal: ctx.signal });
  if (details.fullBackingFilename !== undefined && !isWithin(realRoot, details.fullBackingFilename)) {
    throw new DriverConflictError(`${basename(target)} is backed by a file outside the share`, {
      context: { backing: details.backingFilename },
    });
  }
  return details;
}

// sizeBytes is the file's length, the same number `list` reports, so the two can be compared.
async function imageResult(
  path: string,
  target: string,
  details: QemuImageInfo,
  format: NfsImageFormat,
): Promise<NfsImageResult> {
  const { size } = await stat(target);
  return { path, sizeBytes: size, virtualSizeBytes: details.virtualSizeBytes, format };
}
