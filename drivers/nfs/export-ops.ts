/**
 * Exporting a volume to the image store, host side: the first half of a volume migration staged
 * through the image store, used when no host mounts both primary stores (the second half is the
 * existing `fetchImage` on a host of the destination store).
 *
 * One operation, `exportImage`, in three phases, because the control plane cannot presign a
 * multipart upload before it knows the flattened size:
 * - `prepare` flattens the image (reading through its whole backing chain) into a standalone qcow2
 *   temporary next to the source and reports its length and sha256;
 * - `upload` PUTs the temporary's byte ranges to presigned UploadPart URLs and reports the ETags the
 *   control plane needs to complete the upload;
 * - `cleanup` removes the temporary (idempotent).
 *
 * Same rules as ./host-ops.ts: paths relative to `mountPath` and confined under it (every layer of
 * the backing chain too, before qemu opens it), qemu-img with argv arrays only, temporary names
 * carrying the job id. URLs are data handed to `fetch`; their query strings are bearer credentials
 * and never appear in logs or errors.
 */

import { createReadStream } from 'node:fs';
import { realpath, rename, rm, stat } from 'node:fs/promises';
import { basename, posix } from 'node:path';
import { z } from 'zod';
import { isNotFound, isWithin, realRootOf, resolveConfinedPath } from '../sdk/confine.js';
import {
  DriverConflictError,
  DriverError,
  DriverInputError,
  DriverUnavailableError,
  ObjectNotFoundError,
} from '../sdk/errors.js';
import { qemuCheck, qemuConvert, qemuInfo } from '../sdk/qemu.js';
import type { HostOperation, HostOperationContext, ObjectOptions, UploadPartUrl } from '../sdk/types.js';
import { AbsolutePathSchema, RelativePathSchema } from '../sdk/validation.js';
import { assertHttpUrl, sha256OfFile } from './download.js';
import { redact, runPool } from './transfer.js';

/** Part uploads in flight at once. */
export const EXPORT_UPLOAD_CONCURRENCY = 4;
/** Retries of one part after a network error, 429 or 5xx (so at most 4 attempts). */
export const EXPORT_UPLOAD_RETRIES = 3;
const BACKOFF_MS = 250;
// S3 numbers parts 1..10000.
const MAX_PARTS = 10_000;
const MAX_CHAIN_DEPTH = 64;

const ByteCountSchema = z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER);
const SizeSchema = z.number().int().positive().max(Number.MAX_SAFE_INTEGER);

/** The export temporary's file name: `.export-<jobId>.<source stem>.qcow2`, hidden from `list`. */
const EXPORT_TEMP_NAME = /^\.export-[A-Za-z0-9._:-]+\.qcow2$/;

// Only export temporaries can be uploaded or removed through this operation: a `tempPath` naming a
// volume must not let `cleanup` delete it or `upload` ship it somewhere.
const TempPathSchema = RelativePathSchema.refine(
  (p) => EXPORT_TEMP_NAME.test(posix.basename(p)),
  'must name an export temporary (.export-<jobId>…qcow2)',
);

const UrlSchema = z
  .string()
  .max(16 * 1024)
  .refine((u) => {
    try {
      assertHttpUrl(u);
      return true;
    } catch {
      return false;
    }
  }, 'must be an http(s) URL without credentials');

const UploadPartSchema = z
  .object({
    partNumber: z.number().int().min(1).max(MAX_PARTS),
    url: UrlSchema,
    offset: ByteCountSchema,
    sizeBytes: SizeSchema,
  })
  .strict();

const PrepareArgs = z
  .object({
    phase: z.literal('prepare'),
    mountPath: AbsolutePathSchema,
    /** The image to export, e.g. `volumes/vol-1.qcow2`; a linked clone is flattened. */
    path: RelativePathSchema,
    format: z.enum(['qcow2', 'raw']).default('qcow2'),
  })
  .strict();

const UploadArgs = z
  .object({
    phase: z.literal('upload'),
    mountPath: AbsolutePathSchema,
    /** `tempPath` as returned by `prepare`. */
    tempPath: TempPathSchema,
    /** Length of the object being uploaded: `sizeBytes` of `prepare`. */
    totalBytes: SizeSchema,
    /**
     * Presigned UploadPart URLs. Usually every part; a subset (e.g. parts presigned again after the
     * first URLs expired) is fine, the control plane merges the ETags before completing.
     */
    parts: z.array(UploadPartSchema).min(1).max(MAX_PARTS),
    /** Fail an attempt when no byte moves for this long. */
    stallTimeoutSeconds: z.number().int().positive().max(3600).default(60),
  })
  .strict()
  .superRefine((a, ctx) => {
    // S3 concatenates parts in partNumber order, so ranges must run in that order without overlap
    // and stay inside the object; anything else would assemble a different file.
    const sorted = [...a.parts].sort((x, y) => x.partNumber - y.partNumber);
    let end = 0;
    let previous = 0;
    for (const part of sorted) {
      if (part.partNumber === previous) {
        ctx.addIssue({ code: 'custom', path: ['parts'], message: `part ${part.partNumber} is listed twice` });
        return;
      }
      if (part.offset < end || part.offset + part.sizeBytes > a.totalBytes) {
        ctx.addIssue({
          code: 'custom',
          path: ['parts'],
          message: `part ${part.partNumber} overlaps another part or ends beyond totalBytes`,
        });
        return;
      }
      previous = part.partNumber;
      end = part.offset + part.sizeBytes;
    }
  });

const CleanupArgs = z
  .object({ phase: z.literal('cleanup'), mountPath: AbsolutePathSchema, tempPath: TempPathSchema })
  .strict();

const ExportImageArgs = z.discriminatedUnion('phase', [PrepareArgs, UploadArgs, CleanupArgs]);
type ExportImageArgs = z.infer<typeof ExportImageArgs>;

/** The phases of `exportImage`. */
export type NfsExportPhase = ExportImageArgs['phase'];

/** Result of `exportImage` phase `prepare`. */
export interface NfsExportPrepareResult {
  phase: 'prepare';
  /** The flattened standalone qcow2, relative to the share; pass it to `upload` and `cleanup`. */
  tempPath: string;
  /** Its length: the `sizeBytes` of the multipart upload to create. */
  sizeBytes: number;
  /** Lower-case hex sha256 of its bytes (what the stored object must hash to). */
  sha256: string;
  virtualSizeBytes: number;
  format: 'qcow2';
}

/** One uploaded part, as `completeUpload` takes it. */
export interface NfsExportCompletedPart {
  partNumber: number;
  /** The `ETag` header of the part's PUT response, verbatim (quotes included). */
  etag: string;
}

/** Result of `exportImage` phase `upload`. */
export interface NfsExportUploadResult {
  phase: 'upload';
  /** Sorted by part number. */
  parts: NfsExportCompletedPart[];
  bytesUploaded: number;
}

/** Result of `exportImage` phase `cleanup`. */
export interface NfsExportCleanupResult {
  phase: 'cleanup';
  /** False when the temporary was already gone. */
  deleted: boolean;
}

/** The result type of each phase. */
export interface NfsExportResults {
  prepare: NfsExportPrepareResult;
  upload: NfsExportUploadResult;
  cleanup: NfsExportCleanupResult;
}

/**
 * Exports an image to a multipart upload in the image store, in three phases.
 *
 * `prepare` `{ mountPath, path, format }`: proves every layer of the backing chain lies on the
 * share, runs `qemu-img convert -O qcow2` (which reads through the chain, so the export has no
 * backing file) into a partial file, checks it, renames it to `.export-<jobId>.<stem>.qcow2` next to
 * the source, then hashes it. Repeating it rebuilds the temporary, so the reported size and hash
 * always describe the source as it is now.
 *
 * `upload` `{ mountPath, tempPath, totalBytes, parts }`: checks the temporary is `totalBytes` long
 * and a standalone qcow2, then PUTs each part's byte range (with `Content-Length`) to its URL,
 * {@link EXPORT_UPLOAD_CONCURRENCY} at a time, retrying network errors, 429 and 5xx
 * {@link EXPORT_UPLOAD_RETRIES} times with backoff, and returns each part's ETag. Repeating it is
 * harmless: a part PUT again replaces the earlier one.
 *
 * `cleanup` `{ mountPath, tempPath }`: removes the temporary; already gone is success.
 *
 * @example
 * const prep = await host.run<NfsExportPrepareResult>(hostId, { provider: 'nfs', operation: 'exportImage',
 *   args: { phase: 'prepare', mountPath, path: 'volumes/vol-1.qcow2', format: 'qcow2' }, jobId });
 * const up = await store.createUpload({ store: imageStore, object, sizeBytes: prep.sizeBytes, ctx });
 * const { parts } = await host.run<NfsExportUploadResult>(hostId, { provider: 'nfs', operation: 'exportImage',
 *   args: { phase: 'upload', mountPath, tempPath: prep.tempPath, totalBytes: prep.sizeBytes, parts: up.parts }, jobId });
 * await store.completeUpload({ store: imageStore, object, uploadId: up.uploadId, parts, sizeBytes: prep.sizeBytes, ctx });
 */
export const exportImage: HostOperation<
  ExportImageArgs,
  NfsExportPrepareResult | NfsExportUploadResult | NfsExportCleanupResult
> = {
  args: ExportImageArgs,
  async run(args, ctx) {
    switch (args.phase) {
      case 'prepare':
        return prepare(args, ctx);
      case 'upload':
        return upload(args, ctx);
      case 'cleanup':
        return cleanup(args, ctx);
    }
  },
};

/**
 * The export host operations, merged into the NFS operation set.
 *
 * @example
 * const ops = { ...otherOps, ...nfsExportOperations };
 */
export const nfsExportOperations = { exportImage } as const;

/** Names of the export host operations. */
export const NfsExportOperation = { ExportImage: 'exportImage' } as const;

/**
 * Where `prepare` puts the export of `path` for job `jobId`, relative to the share. The source's
 * stem is part of the name so that one job exporting several volumes of one directory never has
 * two exports share a temporary.
 *
 * @example
 * exportTempPath('volumes/vol-1.qcow2', 'job-7'); // 'volumes/.export-job-7.vol-1.qcow2'
 */
export function exportTempPath(path: string, jobId: string): string {
  const name = posix.basename(path);
  const stem = name.slice(0, name.length - posix.extname(name).length) || name;
  const temp = `.export-${jobId}.${stem}.qcow2`;
  const dir = posix.dirname(path);
  return dir === '.' ? temp : `${dir}/${temp}`;
}

async function prepare(
  args: z.infer<typeof PrepareArgs>,
  ctx: HostOperationContext,
): Promise<NfsExportPrepareResult> {
  const realRoot = await realRootOf(args.mountPath);
  const source = await resolveConfinedPath(args.mountPath, args.path, { mustExist: true });
  if (!(await stat(source)).isFile()) {
    throw new DriverInputError(`${args.path} is not a file`, { context: { field: 'path' } });
  }
  await assertChainOnShare(source, realRoot, args.format, ctx);
  const tempPath = exportTempPath(args.path, ctx.jobId);
  if (!EXPORT_TEMP_NAME.test(posix.basename(tempPath))) {
    // A stem with characters outside the safe set would produce a name upload/cleanup refuse.
    throw new DriverInputError(`${args.path}: file name cannot be used for an export temporary`, {
      context: { field: 'path' },
    });
  }
  const temp = await resolveConfinedPath(args.mountPath, tempPath);
  // Host id too: two hosts running the same job by mistake never write one file.
  const partial = `${temp}.${ctx.hostId}.partial`;
  ctx.progress(0, { phase: 'convert' });
  try {
    await qemuConvert(source, partial, {
      srcFormat: args.format,
      dstFormat: 'qcow2',
      signal: ctx.signal,
      onProgress: (percent) => ctx.progress(Math.floor(percent * 0.8), { phase: 'convert' }),
    });
    // Reading it back without allowing a backing file proves the export stands alone.
    await qemuInfo(partial, { format: 'qcow2', signal: ctx.signal });
    const checked = await qemuCheck(partial, { format: 'qcow2', allowCorrupt: true, signal: ctx.signal });
    if (checked.corruptions > 0 || checked.checkErrors > 0 || checked.exitCode === 2) {
      throw new DriverError(`export of ${args.path} failed qemu-img check`, {
        code: 'CorruptImage',
        context: { path: args.path, corruptions: checked.corruptions },
      });
    }
    await rename(partial, temp);
  } finally {
    await rm(partial, { force: true });
  }
  ctx.progress(80, { phase: 'hash' });
  // Hashed from the file as it now sits on the share: exactly the bytes `upload` will send.
  const sha256 = await sha256OfFile(temp, { signal: ctx.signal });
  const { size } = await stat(temp);
  const { virtualSizeBytes } = await qemuInfo(temp, { format: 'qcow2', signal: ctx.signal });
  ctx.logger.info('export prepared', { path: args.path, tempPath, sizeBytes: size });
  ctx.progress(100, { phase: 'done' });
  return { phase: 'prepare', tempPath, sizeBytes: size, sha256, virtualSizeBytes, format: 'qcow2' };
}

async function upload(
  args: z.infer<typeof UploadArgs>,
  ctx: HostOperationContext,
): Promise<NfsExportUploadResult> {
  await realRootOf(args.mountPath);
  const file = await resolveConfinedPath(args.mountPath, args.tempPath, { mustExist: true });
  const stats = await stat(file);
  if (!stats.isFile()) {
    throw new DriverInputError(`${args.tempPath} is not a file`, { context: { field: 'tempPath' } });
  }
  if (stats.size !== args.totalBytes) {
    throw new DriverConflictError(
      `${args.tempPath} is ${stats.size} bytes, not ${args.totalBytes}: prepare again and start a new upload`,
      { context: { path: args.tempPath, sizeBytes: stats.size, totalBytes: args.totalBytes } },
    );
  }
  await qemuInfo(file, { format: 'qcow2', signal: ctx.signal });

  const timeoutMs = args.stallTimeoutSeconds * 1000;
  const parts: NfsExportCompletedPart[] = [];
  let bytesUploaded = 0;
  ctx.progress(0, { phase: 'upload', bytes: 0, totalBytes: args.totalBytes, parts: args.parts.length });
  await runPool(args.parts, EXPORT_UPLOAD_CONCURRENCY, ctx.signal, async (part) => {
    const etag = await putPart(file, part, timeoutMs, ctx);
    parts.push({ partNumber: part.partNumber, etag });
    bytesUploaded += part.sizeBytes;
    ctx.progress(Math.floor((bytesUploaded / args.totalBytes) * 100), {
      phase: 'upload',
      bytes: bytesUploaded,
      totalBytes: args.totalBytes,
    });
  });
  parts.sort((a, b) => a.partNumber - b.partNumber);
  ctx.logger.info('export uploaded', { tempPath: args.tempPath, parts: parts.length, bytesUploaded });
  return { phase: 'upload', parts, bytesUploaded };
}

async function cleanup(
  args: z.infer<typeof CleanupArgs>,
  ctx: HostOperationContext,
): Promise<NfsExportCleanupResult> {
  let temp: string;
  try {
    temp = await resolveConfinedPath(args.mountPath, args.tempPath, { mustExist: true });
  } catch (error) {
    if (error instanceof ObjectNotFoundError) return { phase: 'cleanup', deleted: false };
    throw error;
  }
  // A prepare that crashed on this host may have left its partial file behind.
  await rm(`${temp}.${ctx.hostId}.partial`, { force: true });
  try {
    if (!(await stat(temp)).isFile()) {
      throw new DriverInputError(`${args.tempPath} is not a file`, { context: { field: 'tempPath' } });
    }
    await rm(temp);
    return { phase: 'cleanup', deleted: true };
  } catch (error) {
    if (isNotFound(error)) return { phase: 'cleanup', deleted: false };
    throw error;
  }
}

// ---------------------------------------------------------------------------------------------
// Part uploads

type UploadPart = z.infer<typeof UploadPartSchema>;

// PUTs one part, retrying what a retry can fix; resolves to the response's ETag.
async function putPart(
  file: string,
  part: UploadPart,
  timeoutMs: number,
  ctx: HostOperationContext,
): Promise<string> {
  const where = redact(part.url);
  for (let attempt = 1; ; attempt++) {
    try {
      return await putPartOnce(file, part, where, timeoutMs, ctx.signal);
    } catch (error) {
      const retryable = error instanceof DriverUnavailableError && !ctx.signal.aborted;
      if (!retryable || attempt > EXPORT_UPLOAD_RETRIES) throw error;
      const delay = BACKOFF_MS * 2 ** (attempt - 1);
      ctx.logger.warn('part upload failed; retrying', {
        partNumber: part.partNumber,
        url: where,
        attempt,
        delayMs: delay,
        error: (error as Error).message,
      });
      await sleep(delay, ctx.signal);
    }
  }
}

async function putPartOnce(
  file: string,
  part: UploadPart,
  where: string,
  timeoutMs: number,
  signal: AbortSignal,
): Promise<string> {
  if (signal.aborted) throw signal.reason;
  const controller = new AbortController();
  let stalled = false;
  let timer: NodeJS.Timeout | undefined;
  // A stall timeout rather than a total one: a 5 GiB part on a slow link is fine, a stuck one is not.
  const arm = () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      stalled = true;
      controller.abort(new Error('stalled'));
    }, timeoutMs);
  };
  const onOuterAbort = () => controller.abort(signal.reason);
  signal.addEventListener('abort', onOuterAbort, { once: true });
  let sent = 0;
  // A fresh stream per attempt: a retry must send the range from its first byte again.
  async function* body(): AsyncGenerator<Uint8Array> {
    const stream = createReadStream(file, {
      start: part.offset,
      end: part.offset + part.sizeBytes - 1,
      highWaterMark: 1024 * 1024,
      signal: controller.signal,
    });
    for await (const chunk of stream as AsyncIterable<Buffer>) {
      arm();
      sent += chunk.byteLength;
      yield chunk;
    }
    if (sent !== part.sizeBytes) {
      // The file shrank under us; sending fewer bytes than Content-Length would only hang.
      throw new DriverConflictError(`${basename(file)} changed during the upload`, {
        context: { partNumber: part.partNumber },
      });
    }
  }
  try {
    arm();
    let response: Response;
    try {
      response = await fetch(part.url, {
        method: 'PUT',
        body: body(),
        duplex: 'half',
        headers: {
          // S3 refuses a chunked UploadPart; the exact length also lets it reject a short body.
          'content-length': String(part.sizeBytes),
          'content-type': 'application/octet-stream',
        },
        signal: controller.signal,
      });
    } catch (error) {
      if (signal.aborted) throw signal.reason;
      const conflict = findCause(error, DriverConflictError);
      if (conflict) throw conflict;
      const why = stalled ? `no progress for ${timeoutMs} ms` : (error as Error).message;
      throw new DriverUnavailableError(`upload of part ${part.partNumber} to ${where} failed: ${why}`, {
        cause: error,
        context: { partNumber: part.partNumber, url: where, bytes: sent },
      });
    }
    // The body of a part response is empty or a small XML error; drain it so the socket is reused.
    await response.text().catch(() => '');
    if (response.status !== 200) throw statusError(response.status, part.partNumber, where);
    const etag = response.headers.get('etag');
    if (!etag) {
      throw new DriverError(`part ${part.partNumber}: ${where} answered without an ETag`, {
        code: 'TransferFailed',
        context: { partNumber: part.partNumber, url: where },
      });
    }
    return etag;
  } finally {
    clearTimeout(timer);
    signal.removeEventListener('abort', onOuterAbort);
  }
}

function statusError(status: number, partNumber: number, where: string): DriverError {
  const context = { partNumber, status, url: where };
  // 404 NoSuchUpload: the upload was aborted or completed; a new one is needed.
  if (status === 404)
    return new ObjectNotFoundError(`part ${partNumber}: ${where} answered 404`, { context });
  if (status === 429 || status >= 500) {
    return new DriverUnavailableError(`part ${partNumber}: ${where} answered ${status}`, { context });
  }
  // 403 is typically an expired presigned URL: the control plane must presign again.
  return new DriverError(`part ${partNumber}: ${where} answered ${status}`, {
    code: 'TransferFailed',
    context,
  });
}

// fetch wraps errors thrown by the body iterator; find ours again.
function findCause<T extends Error>(error: unknown, type: new (...a: never[]) => T): T | undefined {
  for (let e: unknown = error, depth = 0; e && depth < 5; e = (e as { cause?: unknown }).cause, depth++) {
    if (e instanceof type) return e;
  }
  return undefined;
}

// The query string of a presigned URL is a bearer credential: never log or report it.

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

// ---------------------------------------------------------------------------------------------
// Image inspection

// Walks the backing chain, proving every layer sits on the share before qemu-img convert opens it.
async function assertChainOnShare(
  source: string,
  realRoot: string,
  format: 'qcow2' | 'raw',
  ctx: HostOperationContext,
): Promise<void> {
  let info = await qemuInfo(source, { format, allowBackingFile: true, signal: ctx.signal });
  for (let depth = 0; info.fullBackingFilename !== undefined; depth++) {
    let backing = info.fullBackingFilename;
    // The real path, so a symlink inside the share cannot point the chain outside it.
    backing = await realpath(backing).catch((error: unknown) => {
      if (isNotFound(error)) {
        throw new DriverConflictError(`${basename(source)}'s backing file is missing`, {
          cause: error,
          context: { backing: info.backingFilename },
        });
      }
      throw error;
    });
    if (depth >= MAX_CHAIN_DEPTH || !isWithin(realRoot, backing)) {
      throw new DriverConflictError(`${basename(source)} is backed by a file outside the share`, {
        context: { backing: info.backingFilename },
      });
    }
    if (!info.backingFormat) {
      // Without a recorded format qemu would probe the base, which a guest-written raw disk can fool.
      throw new DriverConflictError(`${basename(source)}'s backing file has no recorded format`, {
        context: { backing: info.backingFilename },
      });
    }
    info = await qemuInfo(backing, {
      format: info.backingFormat,
      allowBackingFile: true,
      signal: ctx.signal,
    });
  }
}

/** What each phase of `NfsDriver.exportAsync` takes besides the object options. */
export interface NfsExportPhaseOptions {
  prepare: Record<never, never>;
  upload: {
    /** `tempPath` of the prepare result. */
    tempPath: string;
    /** `sizeBytes` of the prepare result: the size the multipart upload was created with. */
    totalBytes: number;
    /** The presigned parts of `ImageStoreDriver.createUpload` (or a re-presigned subset). */
    parts: UploadPartUrl[];
    /** Fail a part attempt when no byte moves for this long; default 60. */
    stallTimeoutSeconds?: number;
  };
  cleanup: {
    /** `tempPath` of the prepare result. */
    tempPath: string;
  };
}

/**
 * Options of `NfsDriver.exportAsync` for phase `P` (distributive: without `P`, a union
 * discriminated by `phase`).
 */
export type NfsExportOptions<P extends NfsExportPhase = NfsExportPhase> = P extends NfsExportPhase
  ? ObjectOptions & { phase: P } & NfsExportPhaseOptions[P]
  : never;
