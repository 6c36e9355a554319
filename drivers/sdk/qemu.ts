/**
 * qemu-img from TypeScript. Every call spawns the binary with an argv array (never a shell), passes
 * the format explicitly wherever it is known (so qemu does not probe guest-controlled bytes), and
 * accepts absolute paths only: a leading `/` keeps a file name from being read as an option
 * (`-o …`) or as a protocol (`nbd:`, `json:`).
 *
 * Images from outside Strata are hostile until proven otherwise: {@link qemuInfo} refuses images
 * that name a backing file or an external data file unless the caller allows it, because either
 * one makes qemu open a path the image's author chose. Host operations run `assertSafeImageFile`
 * (./image-inspect.ts) over such an image before the first qemu-img call on it: qemu-img info
 * itself parses the header, and the inspector's rules (unknown qcow2 features, VMDK extents,
 * polyglots) go further than what qemu refuses.
 */
import { spawn } from 'node:child_process';
import { isAbsolute } from 'node:path';
import { DriverConflictError, DriverError, DriverInputError, ObjectNotFoundError } from './errors.js';

/** Options shared by every qemu helper. */
export interface QemuCallOptions {
  /** Kills qemu-img (SIGTERM) when aborted; the helper then rejects with the signal's reason. */
  signal?: AbortSignal;
  /** The binary to run; defaults to `qemu-img` on PATH. */
  qemuImgPath?: string;
}

/**
 * A failed qemu-img run. `exitCode` and the tail of stderr are kept for logs.
 *
 * @example
 * try { await qemuCheck('/mnt/a.qcow2', { format: 'qcow2' }); } catch (e) { if (e instanceof QemuError) log(e.stderr); }
 */
export class QemuError extends DriverError {
  readonly exitCode: number | null;
  readonly stderr: string;

  constructor(
    message: string,
    options: { exitCode: number | null; stderr: string; args: string[]; cause?: unknown },
  ) {
    super(message, {
      code: 'QemuFailed',
      cause: options.cause,
      context: { args: options.args, exitCode: options.exitCode },
    });
    this.exitCode = options.exitCode;
    this.stderr = options.stderr;
  }
}

/** What `qemu-img info` says about an image, reduced to what Strata uses. */
export interface QemuImageInfo {
  format: string;
  virtualSizeBytes: number;
  actualSizeBytes?: number;
  backingFilename?: string;
  fullBackingFilename?: string;
  backingFormat?: string;
  dataFile?: string;
  dirty: boolean;
  snapshots: QemuSnapshot[];
}

/** One internal snapshot of a qcow2 image. */
export interface QemuSnapshot {
  id: string;
  name: string;
  vmStateSizeBytes: number;
  createdAt: string;
}

/** Result of `qemu-img check`. */
export interface QemuCheckResult {
  /** 0 clean, 2 corrupted, 3 leaked clusters only (harmless); 1 means the check itself failed. */
  exitCode: number;
  corruptions: number;
  leaks: number;
  checkErrors: number;
}

const STDERR_LIMIT = 64 * 1024;

interface RawRun {
  stdout: string;
  stderr: string;
  exitCode: number | null;
}

function assertImagePath(path: string, field: string): void {
  if (typeof path !== 'string' || !isAbsolute(path) || path.includes('\0')) {
    throw new DriverInputError(`${field} must be an absolute path`, { context: { field } });
  }
}

function assertFormat(format: string, field: string): void {
  if (!/^[a-z0-9]+$/.test(format))
    throw new DriverInputError(`${field} is not a format name`, { context: { field } });
}

function assertSnapshotName(name: string): void {
  // Snapshot names reach qemu as one argv element; keep them to an id alphabet anyway so they read
  // back identically from `info` and never start with '-'.
  if (!/^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/.test(name)) {
    throw new DriverInputError('snapshot name must be a safe id', { context: { field: 'name' } });
  }
}

/** Spawns qemu-img with `args`, collecting stdout and a bounded tail of stderr. */
function spawnQemu(
  args: string[],
  options: QemuCallOptions,
  onStdout?: (chunk: string) => void,
): Promise<RawRun> {
  const binary = options.qemuImgPath ?? 'qemu-img';
  return new Promise((resolve, reject) => {
    if (options.signal?.aborted) {
      reject(options.signal.reason);
      return;
    }
    const child = spawn(binary, args, { stdio: ['ignore', 'pipe', 'pipe'], signal: options.signal });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8');
    child.stderr.setEncoding('utf8');
    child.stdout.on('data', (chunk: string) => {
      if (onStdout) onStdout(chunk);
      else stdout += chunk;
    });
    child.stderr.on('data', (chunk: string) => {
      stderr = (stderr + chunk).slice(-STDERR_LIMIT);
    });
    child.on('error', (error) => {
      if (options.signal?.aborted) reject(options.signal.reason);
      else
        reject(
          new QemuError(`cannot run ${binary}: ${error.message}`, {
            exitCode: null,
            stderr,
            args,
            cause: error,
          }),
        );
    });
    child.on('close', (exitCode) => {
      if (options.signal?.aborted) reject(options.signal.reason);
      else resolve({ stdout, stderr, exitCode });
    });
  });
}

/** Runs qemu-img and rejects on a non-zero exit, mapping "no such file" to {@link ObjectNotFoundError}. */
async function runQemu(
  args: string[],
  options: QemuCallOptions,
  onStdout?: (chunk: string) => void,
): Promise<string> {
  const run = await spawnQemu(args, options, onStdout);
  if (run.exitCode === 0) return run.stdout;
  throw qemuFailure(args, run);
}

function qemuFailure(args: string[], run: RawRun): DriverError {
  const detail = run.stderr.trim().split('\n').slice(-3).join(' ') || `exit code ${run.exitCode}`;
  const error = new QemuError(`qemu-img ${args[0]} failed: ${detail}`, {
    exitCode: run.exitCode,
    stderr: run.stderr,
    args,
  });
  if (/No such file or directory/i.test(run.stderr)) {
    return new ObjectNotFoundError(`qemu-img ${args[0]}: ${detail}`, { cause: error, context: { args } });
  }
  return error;
}

/**
 * Reads an image's metadata with `qemu-img info --output=json -f <format>`. The format is required:
 * without it qemu probes the bytes, and a guest or an image author chooses what it finds. Rejects
 * with {@link DriverConflictError} when the image has a backing file or an external data file,
 * unless `allowBackingFile` / `allowDataFile` is set.
 *
 * @example
 * const info = await qemuInfo('/mnt/ds-1/templates/t-1.qcow2', { format: 'qcow2' });
 * info.virtualSizeBytes; // 10737418240
 */
export async function qemuInfo(
  path: string,
  options: QemuCallOptions & { format: string; allowBackingFile?: boolean; allowDataFile?: boolean },
): Promise<QemuImageInfo> {
  assertImagePath(path, 'path');
  assertFormat(options.format, 'format');
  const args = ['info', '--output=json', '-f', options.format, path];
  const raw = JSON.parse(await runQemu(args, options)) as Record<string, unknown>;
  const info = toImageInfo(raw);
  if (info.backingFilename !== undefined && !options.allowBackingFile) {
    throw new DriverConflictError(`image ${path} has a backing file (${info.backingFilename}); refused`, {
      context: { path, backingFilename: info.backingFilename },
    });
  }
  if (info.dataFile !== undefined && !options.allowDataFile) {
    throw new DriverConflictError(`image ${path} has an external data file; refused`, {
      context: { path, dataFile: info.dataFile },
    });
  }
  return info;
}

function toImageInfo(raw: Record<string, unknown>): QemuImageInfo {
  const specific = (raw['format-specific'] as { data?: Record<string, unknown> } | undefined)?.data ?? {};
  const snapshots = Array.isArray(raw.snapshots) ? (raw.snapshots as Record<string, unknown>[]) : [];
  const str = (v: unknown) => (typeof v === 'string' ? v : undefined);
  return {
    format: String(raw.format),
    virtualSizeBytes: Number(raw['virtual-size']),
    actualSizeBytes: typeof raw['actual-size'] === 'number' ? raw['actual-size'] : undefined,
    backingFilename: str(raw['backing-filename']),
    fullBackingFilename: str(raw['full-backing-filename']),
    backingFormat: str(raw['backing-filename-format']),
    dataFile: str(specific['data-file']),
    dirty: raw['dirty-flag'] === true,
    snapshots: snapshots.map((s) => ({
      id: String(s.id),
      name: String(s.name),
      vmStateSizeBytes: Number(s['vm-state-size'] ?? 0),
      createdAt: new Date(Number(s['date-sec'] ?? 0) * 1000).toISOString(),
    })),
  };
}

/**
 * Creates an image with `qemu-img create`. With `backingFile`, the new image is a copy-on-write
 * overlay (a linked clone); `backingFormat` is then required so qemu never probes the backing file.
 * A relative `backingFile` is resolved by qemu against the new image's directory, which keeps
 * clones valid wherever the share is mounted.
 *
 * @example
 * await qemuCreate('/mnt/ds-1/volumes/vol-1.qcow2', { format: 'qcow2', sizeBytes: 1 << 30 });
 * await qemuCreate('/mnt/ds-1/volumes/vol-2.qcow2', { format: 'qcow2', backingFile: '../templates/t-1.qcow2', backingFormat: 'qcow2' });
 */
export async function qemuCreate(
  path: string,
  options: QemuCallOptions & {
    format: string;
    sizeBytes?: number;
    backingFile?: string;
    backingFormat?: string;
  },
): Promise<void> {
  assertImagePath(path, 'path');
  assertFormat(options.format, 'format');
  const args = ['create', '-q', '-f', options.format];
  if (options.backingFile !== undefined) {
    if (!options.backingFormat) throw new DriverInputError('backingFormat is required with backingFile');
    assertFormat(options.backingFormat, 'backingFormat');
    if (options.backingFile.startsWith('-') || /^[a-z0-9+]+:/i.test(options.backingFile)) {
      throw new DriverInputError('backingFile must be a plain path', { context: { field: 'backingFile' } });
    }
    args.push('-b', options.backingFile, '-F', options.backingFormat);
  } else if (options.sizeBytes === undefined) {
    throw new DriverInputError('sizeBytes is required without a backing file', {
      context: { field: 'sizeBytes' },
    });
  }
  args.push(path);
  if (options.sizeBytes !== undefined) args.push(sizeArg(options.sizeBytes));
  await runQemu(args, options);
}

function sizeArg(sizeBytes: number): string {
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0) {
    throw new DriverInputError('size must be a positive integer', { context: { field: 'sizeBytes' } });
  }
  return String(sizeBytes);
}

/**
 * Converts `src` into a new image at `dst` (`qemu-img convert -p`), reporting progress 0–100.
 *
 * @example
 * await qemuConvert('/mnt/a/t.raw', '/mnt/b/t.qcow2', { srcFormat: 'raw', dstFormat: 'qcow2', onProgress: (p) => log(p) });
 */
export async function qemuConvert(
  src: string,
  dst: string,
  options: QemuCallOptions & { srcFormat: string; dstFormat: string; onProgress?: (percent: number) => void },
): Promise<void> {
  assertImagePath(src, 'src');
  assertImagePath(dst, 'dst');
  assertFormat(options.srcFormat, 'srcFormat');
  assertFormat(options.dstFormat, 'dstFormat');
  const args = ['convert', '-p', '-f', options.srcFormat, '-O', options.dstFormat, src, dst];
  let last = -1;
  await runQemu(args, options, (chunk) => {
    // qemu-img -p redraws "    (12.34/100%)" with carriage returns.
    for (const match of chunk.matchAll(/\((\d+(?:\.\d+)?)\/100%\)/g)) {
      const percent = Math.min(100, Math.floor(Number(match[1])));
      if (percent !== last) {
        last = percent;
        options.onProgress?.(percent);
      }
    }
  });
}

/**
 * Checks an image's consistency (`qemu-img check --output=json`). Resolves for clean images and
 * for leaks only; rejects with {@link QemuError} when qemu could not check or found corruption,
 * unless `allowCorrupt` is set (then look at `exitCode`).
 *
 * @example
 * const { leaks } = await qemuCheck('/mnt/ds-1/volumes/vol-1.qcow2', { format: 'qcow2' });
 */
export async function qemuCheck(
  path: string,
  options: QemuCallOptions & { format: string; allowCorrupt?: boolean },
): Promise<QemuCheckResult> {
  assertImagePath(path, 'path');
  assertFormat(options.format, 'format');
  const args = ['check', '--output=json', '-f', options.format, path];
  const run = await spawnQemu(args, options);
  const exitCode = run.exitCode ?? -1;
  if (exitCode === 1 || exitCode < 0 || (exitCode === 2 && !options.allowCorrupt))
    throw qemuFailure(args, run);
  let parsed: Record<string, unknown> = {};
  try {
    parsed = JSON.parse(run.stdout) as Record<string, unknown>;
  } catch {
    // Formats without consistency checks print nothing useful; the exit code still holds.
  }
  return {
    exitCode,
    corruptions: Number(parsed.corruptions ?? 0),
    leaks: Number(parsed.leaks ?? 0),
    checkErrors: Number(parsed['check-errors'] ?? 0),
  };
}

/**
 * Sets an image's virtual size. Shrinking loses the data past the new end, so it needs `shrink`.
 *
 * @example
 * await qemuResize('/mnt/ds-1/volumes/vol-1.qcow2', 2 << 30, { format: 'qcow2' });
 */
export async function qemuResize(
  path: string,
  sizeBytes: number,
  options: QemuCallOptions & { format: string; shrink?: boolean },
): Promise<void> {
  assertImagePath(path, 'path');
  assertFormat(options.format, 'format');
  const args = ['resize', '-q', '-f', options.format];
  if (options.shrink) args.push('--shrink');
  args.push(path, sizeArg(sizeBytes));
  await runQemu(args, options);
}

/**
 * Whether two images hold the same guest-visible content (`qemu-img compare`). Sizes may differ
 * when the extra area is zero, unless `strict` is set.
 *
 * @example
 * const same = await qemuCompare('/a.qcow2', '/b.raw', { formatA: 'qcow2', formatB: 'raw' });
 */
export async function qemuCompare(
  a: string,
  b: string,
  options: QemuCallOptions & { formatA: string; formatB: string; strict?: boolean },
): Promise<boolean> {
  assertImagePath(a, 'a');
  assertImagePath(b, 'b');
  assertFormat(options.formatA, 'formatA');
  assertFormat(options.formatB, 'formatB');
  const args = ['compare', '-q', '-f', options.formatA, '-F', options.formatB];
  if (options.strict) args.push('-s');
  args.push(a, b);
  const run = await spawnQemu(args, options);
  if (run.exitCode === 0) return true;
  if (run.exitCode === 1) return false;
  throw qemuFailure(args, run);
}

/**
 * Creates an internal snapshot named `name` in a qcow2 image (the image must not be in use).
 *
 * @example
 * await qemuSnapshotCreate('/mnt/ds-1/volumes/vol-1.qcow2', 'snap-1');
 */
export async function qemuSnapshotCreate(
  path: string,
  name: string,
  options: QemuCallOptions = {},
): Promise<void> {
  await snapshotCommand('-c', path, name, options);
}

/**
 * Reverts a qcow2 image to its internal snapshot `name`.
 *
 * @example
 * await qemuSnapshotApply('/mnt/ds-1/volumes/vol-1.qcow2', 'snap-1');
 */
export async function qemuSnapshotApply(
  path: string,
  name: string,
  options: QemuCallOptions = {},
): Promise<void> {
  await snapshotCommand('-a', path, name, options);
}

/**
 * Deletes the internal snapshot `name` from a qcow2 image.
 *
 * @example
 * await qemuSnapshotDelete('/mnt/ds-1/volumes/vol-1.qcow2', 'snap-1');
 */
export async function qemuSnapshotDelete(
  path: string,
  name: string,
  options: QemuCallOptions = {},
): Promise<void> {
  await snapshotCommand('-d', path, name, options);
}

/**
 * Lists a qcow2 image's internal snapshots (read from `qemu-img info`, which has a JSON form;
 * `qemu-img snapshot -l` does not).
 *
 * @example
 * const names = (await qemuSnapshotList('/mnt/ds-1/volumes/vol-1.qcow2')).map((s) => s.name);
 */
export async function qemuSnapshotList(
  path: string,
  options: QemuCallOptions & { allowBackingFile?: boolean } = {},
): Promise<QemuSnapshot[]> {
  const info = await qemuInfo(path, { ...options, format: 'qcow2' });
  return info.snapshots;
}

async function snapshotCommand(
  flag: '-c' | '-a' | '-d',
  path: string,
  name: string,
  options: QemuCallOptions,
) {
  assertImagePath(path, 'path');
  assertSnapshotName(name);
  // `qemu-img snapshot` has no -f; --image-opts pins the format so qemu does not probe the file.
  // Commas separate options there, so a literal comma in the path is doubled.
  const image = `driver=qcow2,file.driver=file,file.filename=${path.replaceAll(',', ',,')}`;
  await runQemu(['snapshot', '-q', '--image-opts', flag, name, image], options);
}
