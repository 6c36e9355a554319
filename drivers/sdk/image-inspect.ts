/**
 * Disk image inspection while the bytes stream past (template ingestion copies a URL straight into
 * the store, with no temporary file to run `qemu-img info` on), and over a file on a host
 * ({@link inspectImageFile}) before any qemu-img opens it.
 *
 * The inspector keeps bounded state only: the first {@link IMAGE_HEAD_BYTES} (64 KiB: every header
 * it reads lives there, including the ISO 9660 volume descriptors from 32 KiB) and the last
 * {@link IMAGE_TAIL_BYTES} (the VHD footer and the VMDK stream footer), so one inspection holds
 * about 66 KiB whatever the image's size. Structures qemu may place further in (a VMDK descriptor
 * longer than the window, a VHD dynamic header past it) make the image malformed rather than
 * unchecked.
 *
 * It parses headers with its own code, following what qemu itself reads, and applies the safety
 * rules of OpenStack's format inspector (oslo.utils `imageutils.format_inspector`, written after
 * OSSA-2024-001), because the point is to decide whether qemu may safely open the image later:
 * - an image that names a backing file, an external data file, a VMDK extent or a VHD parent makes
 *   qemu open a host path chosen by whoever wrote the image;
 * - a qcow2 with incompatible features the inspector does not know may change how qemu reads it;
 * - bytes that match two formats at once (an ISO whose system area holds a qcow2 header) are one
 *   thing to the checker and another to whatever probes them later, so they are refused whatever
 *   was declared; only a partition table on a raw disk, an ISO or a fixed VHD is benign;
 * - a qcow2 uploaded as "raw" turns into a host-file read the first time anything probes it.
 */
import { constants as fsConstants } from 'node:fs';
import { type FileHandle, open } from 'node:fs/promises';
import { Transform } from 'node:stream';
import { DriverError, type DriverErrorOptions, DriverInputError } from './errors.js';
import { ImageFormat } from './types.js';

/**
 * Bytes kept from the start of the stream: enough for every header the inspector reads. The ISO
 * volume descriptors start at 32 KiB and a UDF bridge adds a few more sectors after them; the
 * embedded VMDK descriptor qemu reads is 10 KiB at 0x200.
 */
export const IMAGE_HEAD_BYTES = 64 * 1024;

/**
 * Bytes kept from the end of the stream: a VHD footer is the last 512; a streamOptimized VMDK whose
 * grain directory is at the end keeps its real header 1024 bytes before the end, inside 1536.
 */
export const IMAGE_TAIL_BYTES = 1536;

/** Largest virtual size {@link assertSafeImage} accepts by default: 64 TiB. */
export const MAX_IMAGE_VIRTUAL_SIZE_BYTES = 64 * 1024 ** 4;

/**
 * What the inspector found out about an image.
 *
 * `format` is the format Strata would use; bytes that qemu would recognise as a format Strata does
 * not handle (vhdx, qed, vdi, luks, qcow v1…) are reported as `raw` with `foreignFormat` set, so
 * {@link assertSafeImage} can refuse them whatever was declared. `malformed` says why a recognised
 * header cannot be trusted (bad checksum, unsupported version, header outside the inspected window).
 *
 * @example
 * const inspection: ImageInspection = {
 *   format: 'qcow2', virtualSizeBytes: 10737418240, physicalSizeBytes: 1893728256,
 *   encrypted: false, details: { version: 3, clusterBits: 16 },
 * };
 */
export interface ImageInspection {
  format: ImageFormat;
  virtualSizeBytes: number;
  physicalSizeBytes: number;
  /** Backing file (qcow2), parent (VHD differencing disk) or parent hint (VMDK linked clone). */
  backingFile?: string;
  /** External data file (qcow2 `data_file`) or an extent in another file (VMDK descriptor). */
  externalDataFile?: string;
  encrypted?: boolean;
  foreignFormat?: string;
  malformed?: string;
  /** A feature qemu would act on that Strata refuses (qcow2 incompatible feature bits it does not know). */
  unsupportedFeature?: string;
  /** A variant of the format Strata refuses (VMDK createType other than monolithicSparse/streamOptimized). */
  unsupportedSubformat?: string;
  /** Other formats the same bytes also match; any entry makes the image unsafe. */
  otherFormats?: string[];
  details: Record<string, unknown>;
}

/** Why {@link assertSafeImage} refused an image. */
export const UnsafeImageReason = {
  BackingFile: 'backing-file',
  ExternalDataFile: 'external-data-file',
  ImplausibleSize: 'implausible-size',
  Malformed: 'malformed',
  /** The bytes match more than one format (a polyglot). */
  MultipleFormats: 'multiple-formats',
  /** A format qemu knows but Strata does not take (qed, vhdx, luks, vdi, qcow v1…). */
  UnsupportedFormat: 'unsupported-format',
  /** A qcow2 incompatible feature bit Strata does not know. */
  UnsupportedFeature: 'unsupported-feature',
  /** A VMDK createType or extent type other than a single-file sparse disk. */
  UnsupportedSubformat: 'unsupported-subformat',
} as const;
export type UnsafeImageReason = (typeof UnsafeImageReason)[keyof typeof UnsafeImageReason];

/**
 * The image would make qemu read a file outside itself, or its header cannot be trusted, or its
 * virtual size makes no sense. An input error: the image's author is at fault, retrying won't help.
 *
 * @example
 * throw new UnsafeImageError('image has a backing file', 'backing-file', { context: { backingFile } });
 */
export class UnsafeImageError extends DriverInputError {
  override readonly code: string = 'UnsafeImage';
  readonly reason: UnsafeImageReason;

  constructor(message: string, reason: UnsafeImageReason, options: DriverErrorOptions = {}) {
    super(message, { ...options, context: { reason, ...options.context } });
    this.reason = reason;
  }
}

/**
 * The bytes are not in the declared format. Refused even when both formats are harmless on their
 * own: a qcow2 registered as raw is the classic way to make a host read its own files.
 *
 * @example
 * throw new FormatMismatchError('raw', 'qcow2');
 */
export class FormatMismatchError extends DriverInputError {
  override readonly code: string = 'ImageFormatMismatch';
  readonly declaredFormat: string;
  readonly actualFormat: string;

  constructor(declaredFormat: string, actualFormat: string, options: DriverErrorOptions = {}) {
    super(`image declared as ${declaredFormat} is actually ${actualFormat}`, {
      ...options,
      context: { declaredFormat, actualFormat, ...options.context },
    });
    this.declaredFormat = declaredFormat;
    this.actualFormat = actualFormat;
  }
}

/** Options of {@link assertSafeImage}. */
export interface AssertSafeImageOptions {
  /** Largest acceptable virtual size; {@link MAX_IMAGE_VIRTUAL_SIZE_BYTES} by default. */
  maxVirtualSizeBytes?: number;
}

/**
 * Throws unless the inspected image may be handed to qemu as `declaredFormat`. In this order:
 * - {@link UnsafeImageError} `multiple-formats` when the bytes match more than one format, and
 *   `unsupported-format` for a format Strata does not take (qed, vhdx, luks…), whatever was declared;
 * - {@link FormatMismatchError} when the bytes are another format (an ISO may be declared raw: qemu
 *   reads an ISO as plain bytes, so nothing changes);
 * - {@link UnsafeImageError} `malformed` (a header that cannot be trusted, a qcow2 marked corrupt,
 *   a VMDK descriptor away from where qemu reads it, a broken stream footer), `backing-file`,
 *   `external-data-file` (including VMDK extents in other files), `unsupported-feature` (unknown
 *   qcow2 incompatible bits), `unsupported-subformat` (a VMDK that is not a single-file sparse
 *   disk), or `implausible-size` (0 or above the limit, 64 TiB by default).
 * Encryption is reported in the inspection, not refused here.
 *
 * @example
 * const inspection = inspector.finish(bytesUploaded);
 * assertSafeImage(inspection, template.format); // throws for a qcow2 declared as raw
 */
export function assertSafeImage(
  inspection: ImageInspection,
  declaredFormat: ImageFormat,
  options: AssertSafeImageOptions = {},
): void {
  const actual = inspection.foreignFormat ?? inspection.format;
  const context = { format: inspection.format, declaredFormat };
  const refuse = (message: string, reason: UnsafeImageReason, extra: Record<string, unknown> = {}) =>
    new UnsafeImageError(message, reason, { context: { ...context, ...extra } });
  if (inspection.otherFormats !== undefined && inspection.otherFormats.length > 0) {
    const formats = [actual, ...inspection.otherFormats];
    throw refuse(`image matches more than one format (${formats.join(', ')})`, 'multiple-formats', {
      formats,
    });
  }
  if (inspection.foreignFormat !== undefined) {
    throw refuse(`${inspection.foreignFormat} images are not supported`, 'unsupported-format', {
      foreignFormat: inspection.foreignFormat,
    });
  }
  const rawIso = declaredFormat === ImageFormat.Raw && actual === ImageFormat.Iso;
  if (actual !== declaredFormat && !rawIso) throw new FormatMismatchError(declaredFormat, actual);
  if (inspection.malformed !== undefined) {
    throw refuse(`${inspection.format} header is malformed: ${inspection.malformed}`, 'malformed', {
      malformed: inspection.malformed,
    });
  }
  if (inspection.backingFile !== undefined) {
    throw refuse(
      `${inspection.format} image depends on another file (${inspection.backingFile}); upload a standalone image`,
      'backing-file',
      { backingFile: inspection.backingFile },
    );
  }
  if (inspection.externalDataFile !== undefined) {
    throw refuse(
      `${inspection.format} image keeps its data in another file (${inspection.externalDataFile})`,
      'external-data-file',
      { externalDataFile: inspection.externalDataFile },
    );
  }
  if (inspection.unsupportedFeature !== undefined) {
    throw refuse(
      `${inspection.format} image uses an unsupported feature: ${inspection.unsupportedFeature}`,
      'unsupported-feature',
      { unsupportedFeature: inspection.unsupportedFeature },
    );
  }
  if (inspection.unsupportedSubformat !== undefined) {
    throw refuse(
      `${inspection.format} subformat is not supported: ${inspection.unsupportedSubformat}; upload a monolithicSparse or streamOptimized VMDK`,
      'unsupported-subformat',
      { unsupportedSubformat: inspection.unsupportedSubformat },
    );
  }
  const max = options.maxVirtualSizeBytes ?? MAX_IMAGE_VIRTUAL_SIZE_BYTES;
  const size = inspection.virtualSizeBytes;
  if (!Number.isSafeInteger(size) || size <= 0 || size > max) {
    throw refuse(`implausible virtual size ${size} bytes`, 'implausible-size', {
      virtualSizeBytes: size,
      maxVirtualSizeBytes: max,
    });
  }
}

/**
 * Inspects an image fed chunk by chunk, in stream order. Memory is bounded by
 * {@link IMAGE_HEAD_BYTES} + {@link IMAGE_TAIL_BYTES} whatever the image's size.
 *
 * @example
 * const inspector = new ImageInspector();
 * for await (const chunk of body) inspector.update(chunk);
 * const inspection = inspector.finish(contentLength);
 * assertSafeImage(inspection, 'qcow2');
 */
export class ImageInspector {
  private readonly headChunks: Buffer[] = [];
  private headLength = 0;
  private readonly ring = Buffer.alloc(IMAGE_TAIL_BYTES);
  private ringEnd = 0;
  private ringFilled = 0;
  private bytes = 0;
  private result: ImageInspection | undefined;

  /** Bytes fed so far. */
  get bytesSeen(): number {
    return this.bytes;
  }

  /**
   * Feeds the next chunk. The inspector copies what it keeps, so the caller may reuse the buffer.
   *
   * @example
   * inspector.update(chunk);
   */
  update(chunk: Uint8Array): this {
    if (this.result) {
      throw new DriverError('ImageInspector.update called after finish()', { code: 'InspectorFinished' });
    }
    const data = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    if (this.headLength < IMAGE_HEAD_BYTES) {
      const part = data.subarray(0, IMAGE_HEAD_BYTES - this.headLength);
      this.headChunks.push(Buffer.from(part));
      this.headLength += part.length;
    }
    this.appendTail(data);
    this.bytes += data.length;
    return this;
  }

  /**
   * Ends the stream and inspects it. `totalBytes` (the length the caller expects, for example the
   * Content-Length or what the store accepted) must equal the bytes fed: a mismatch means the
   * caller missed chunks, and the tail would then not be the image's end. Later calls return the
   * same result.
   *
   * @example
   * const { format, virtualSizeBytes } = inspector.finish(inspector.bytesSeen);
   */
  finish(totalBytes: number = this.bytes): ImageInspection {
    if (this.result) return this.result;
    if (totalBytes !== this.bytes) {
      throw new DriverInputError(`finish(${totalBytes}) but ${this.bytes} bytes were fed`, {
        context: { field: 'totalBytes', totalBytes, bytesSeen: this.bytes },
      });
    }
    const head = Buffer.concat(this.headChunks, this.headLength);
    this.headChunks.length = 0;
    this.headChunks.push(head);
    this.result = inspectBuffers(head, this.tail(), this.bytes);
    return this.result;
  }

  /**
   * A transform stream that inspects every chunk and passes it on unchanged, for `pipeline()`;
   * call {@link finish} once the pipeline has resolved.
   *
   * @example
   * await pipeline(download, inspector.createPassThrough(), upload);
   * assertSafeImage(inspector.finish(), 'vmdk');
   */
  createPassThrough(): Transform {
    return new Transform({
      transform: (chunk: Buffer, _encoding, callback) => {
        try {
          this.update(chunk);
          callback(null, chunk);
        } catch (error) {
          callback(error as Error);
        }
      },
    });
  }

  private appendTail(data: Buffer): void {
    const size = this.ring.length;
    if (data.length >= size) {
      data.copy(this.ring, 0, data.length - size);
      this.ringEnd = 0;
      this.ringFilled = size;
      return;
    }
    const first = Math.min(data.length, size - this.ringEnd);
    data.copy(this.ring, this.ringEnd, 0, first);
    data.copy(this.ring, 0, first);
    this.ringEnd = (this.ringEnd + data.length) % size;
    this.ringFilled = Math.min(size, this.ringFilled + data.length);
  }

  private tail(): Buffer {
    const size = this.ring.length;
    const start = (this.ringEnd - this.ringFilled + size) % size;
    if (start + this.ringFilled <= size)
      return Buffer.from(this.ring.subarray(start, start + this.ringFilled));
    return Buffer.concat([this.ring.subarray(start), this.ring.subarray(0, this.ringEnd)]);
  }
}

/**
 * Inspects a whole image held in memory (small images, tests). Same result as feeding it to an
 * {@link ImageInspector}.
 *
 * @example
 * const inspection = inspectImageBuffer(await readFile('/tmp/tiny.qcow2'));
 */
export function inspectImageBuffer(image: Uint8Array): ImageInspection {
  return new ImageInspector().update(image).finish();
}

/**
 * Inspects an image file without streaming all of it: only the head ({@link IMAGE_HEAD_BYTES}) and
 * the tail ({@link IMAGE_TAIL_BYTES}) are read, which is exactly what the streaming inspector keeps,
 * so the result equals feeding the whole file to an {@link ImageInspector}. The file is opened with
 * `O_NOFOLLOW`: a symlink at the path itself is refused rather than followed.
 *
 * @example
 * const inspection = await inspectImageFile('/mnt/pool/templates/.t-1.qcow2.partial-job-7');
 */
export async function inspectImageFile(path: string): Promise<ImageInspection> {
  const handle = await open(path, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW);
  try {
    const { size } = await handle.stat();
    const head = Buffer.alloc(Math.min(size, IMAGE_HEAD_BYTES));
    await readFully(handle, head, 0);
    const tailLength = Math.min(size, IMAGE_TAIL_BYTES);
    const tail = Buffer.alloc(tailLength);
    await readFully(handle, tail, size - tailLength);
    return inspectBuffers(head, tail, size);
  } finally {
    await handle.close();
  }
}

async function readFully(handle: FileHandle, into: Buffer, position: number): Promise<void> {
  let done = 0;
  while (done < into.length) {
    const { bytesRead } = await handle.read(into, done, into.length - done, position + done);
    if (bytesRead === 0) {
      throw new DriverError('image file shrank while it was inspected', { code: 'ImageChanged' });
    }
    done += bytesRead;
  }
}

/**
 * The host-side gate before qemu-img opens an image that came from outside: inspects the file
 * ({@link inspectImageFile}) and applies {@link assertSafeImage} with the declared format. Returns
 * the inspection so callers can compare sizes.
 *
 * @example
 * await assertSafeImageFile(partial, 'qcow2'); // throws UnsafeImageError for a qcow2 with a backing file
 * await qemuInfo(partial, { format: 'qcow2' });
 */
export async function assertSafeImageFile(
  path: string,
  declaredFormat: ImageFormat,
  options: AssertSafeImageOptions = {},
): Promise<ImageInspection> {
  const inspection = await inspectImageFile(path);
  assertSafeImage(inspection, declaredFormat, options);
  return inspection;
}

// ---------------------------------------------------------------------------------------------------
// Detection. Every format is probed independently, as oslo's inspector runs all of its inspectors
// over the same bytes: more than one match is a polyglot, refused whatever was declared. The order
// of the list is qemu's precedence (a magic at offset 0 wins, a VHD footer comes next, ISO 9660,
// which qemu has no driver for, last), so the first match is the format reported.

/** Formats whose headers can share a file with a partition table in its first sector. */
const PARTITION_TABLE_HOSTS = new Set(['iso', 'vhd-fixed']);

function inspectBuffers(head: Buffer, tail: Buffer, total: number): ImageInspection {
  const base = { physicalSizeBytes: total };
  const found = probeFormats(head, tail);
  const partitionTable = probePartitionTable(head);
  const [first, ...others] = found;
  if (first === undefined) {
    // qemu sizes a raw file in whole sectors, reading the partial last one as zeros past the end.
    const raw: ImageInspection = {
      ...base,
      format: 'raw',
      virtualSizeBytes: Math.ceil(total / 512) * 512,
      details: {},
    };
    if (partitionTable) {
      raw.details.partitionTable = partitionTable;
      const problem = checkMbr(head);
      if (problem !== undefined) raw.malformed = problem;
    }
    return raw;
  }
  const result: ImageInspection = { ...base, ...parseFormat(first, head, tail, total) };
  const otherFormats = others.map(displayName);
  if (partitionTable) {
    result.details.partitionTable = partitionTable;
    if (!PARTITION_TABLE_HOSTS.has(first)) otherFormats.push(partitionTable);
  }
  if (otherFormats.length > 0) result.otherFormats = otherFormats;
  return result;
}

type Probed = 'qcow2' | 'vmdk' | 'vhd' | 'vhd-fixed' | 'iso' | `foreign:${string}`;

function probeFormats(head: Buffer, tail: Buffer): Probed[] {
  const found: Probed[] = [];
  const start4 = ascii(head, 0, 4);
  if (head.length >= 4 && head.readUInt32BE(0) === QCOW_MAGIC) found.push('qcow2');
  if (start4 === 'KDMV' || start4 === 'COWD' || isVmdkDescriptor(head)) found.push('vmdk');
  if (ascii(head, 0, 8) === 'conectix') found.push('vhd');
  else if (tail.length >= 512 && ascii(tail, tail.length - 512, 8) === 'conectix') found.push('vhd-fixed');
  const foreign = probeForeign(head);
  if (foreign) found.push(`foreign:${foreign}`);
  if (isIso(head)) found.push('iso');
  return found;
}

function displayName(probed: Probed): string {
  if (probed === 'vhd-fixed') return 'vhd';
  return probed.startsWith('foreign:') ? probed.slice('foreign:'.length) : probed;
}

function parseFormat(probed: Probed, head: Buffer, tail: Buffer, total: number): Parsed {
  switch (probed) {
    case 'qcow2':
      return inspectQcow(head);
    case 'vmdk':
      if (ascii(head, 0, 4) === 'KDMV') return inspectVmdkSparse(head, tail);
      if (ascii(head, 0, 4) === 'COWD') {
        return {
          format: 'vmdk',
          virtualSizeBytes: 0,
          malformed: 'VMDK3 (COWD) is not supported',
          details: {},
        };
      }
      return inspectVmdkDescriptor(head);
    case 'vhd':
    case 'vhd-fixed':
      return inspectVhd(head, findVhdFooter(head, tail)!, total);
    case 'iso':
      return inspectIso(head);
    default:
      return { format: 'raw', virtualSizeBytes: total, foreignFormat: displayName(probed), details: {} };
  }
}

type Parsed = Omit<ImageInspection, 'physicalSizeBytes'>;

function ascii(buf: Buffer, offset: number, length: number): string {
  if (offset < 0 || offset + length > buf.length) return '';
  return buf.toString('latin1', offset, offset + length);
}

/** A 64-bit field as a number; values past 2^53 lose precision but stay huge, which is all callers need. */
function u64be(buf: Buffer, offset: number): number {
  return Number(buf.readBigUInt64BE(offset));
}

function u64le(buf: Buffer, offset: number): number {
  return Number(buf.readBigUInt64LE(offset));
}

/** Text up to the first NUL, as qemu's C string handling would see it. */
function cString(buf: Buffer, encoding: BufferEncoding = 'utf8'): string {
  const nul = buf.indexOf(0);
  return buf.toString(encoding, 0, nul < 0 ? buf.length : nul);
}

// ---------------------------------------------------------------------------------------------------
// qcow2 (docs/interop/qcow2.txt in qemu)

const QCOW_MAGIC = 0x514649fb; // 'QFI\xfb'
const QCOW2_EXT = {
  end: 0,
  backingFormat: 0xe2792aca,
  featureNames: 0x6803f857,
  bitmaps: 0x23852875,
  encryptionHeader: 0x0537be77,
  dataFile: 0x44415441,
} as const;
const QCOW2_INCOMPATIBLE = ['dirty', 'corrupt', 'external-data-file', 'compression-type', 'extended-l2'];
/**
 * Incompatible feature bits an image may carry. dirty (0) only asks qemu to rebuild refcounts when it
 * opens the image for writing; compression type (3) and extended L2 entries (4) change how clusters
 * are decoded inside the file, never what else is opened. corrupt (1) is refused as malformed and
 * external data file (2) as an external reference; every other bit is one nobody can vouch for.
 * (oslo accepts bits 0–3 and knows nothing of bit 4; Strata refuses corrupt and accepts extended L2,
 * which qemu has supported since 5.2.)
 */
const QCOW2_ACCEPTED_INCOMPATIBLE = (1n << 0n) | (1n << 3n) | (1n << 4n);
const QCOW2_CORRUPT = 1n << 1n;
const QCOW2_DATA_FILE = 1n << 2n;
const QCOW2_ENCRYPTION: Record<number, string> = { 0: 'none', 1: 'aes', 2: 'luks' };

function inspectQcow(head: Buffer): Parsed {
  const details: Record<string, unknown> = {};
  const fail = (malformed: string): Parsed => ({ format: 'qcow2', virtualSizeBytes: 0, malformed, details });
  if (head.length < 72) return fail('truncated header');
  const version = head.readUInt32BE(4);
  details.version = version;
  if (version === 1) {
    // qcow v1 is a different driver in qemu, with its own backing file; Strata does not take it.
    return { format: 'raw', virtualSizeBytes: 0, foreignFormat: 'qcow', details };
  }
  if (version !== 2 && version !== 3) return fail(`unsupported qcow2 version ${version}`);

  const backingOffset = u64be(head, 8);
  const backingSize = head.readUInt32BE(16);
  const clusterBits = head.readUInt32BE(20);
  const size = u64be(head, 24);
  const cryptMethod = head.readUInt32BE(32);
  Object.assign(details, {
    clusterBits,
    snapshots: head.readUInt32BE(60),
    encryption: QCOW2_ENCRYPTION[cryptMethod] ?? `unknown-${cryptMethod}`,
  });
  const result: Parsed = { format: 'qcow2', virtualSizeBytes: size, encrypted: cryptMethod !== 0, details };
  // qemu's own limits (MIN_CLUSTER_BITS, MAX_CLUSTER_BITS): outside them it refuses the image.
  if (clusterBits < 9 || clusterBits > 21)
    return { ...result, malformed: `cluster_bits ${clusterBits} out of range` };
  const clusterSize = 2 ** clusterBits;

  let incompatible = 0n;
  let headerLength = 72;
  if (version === 3) {
    if (head.length < 104) return { ...result, malformed: 'truncated version 3 header' };
    incompatible = head.readBigUInt64BE(72);
    headerLength = head.readUInt32BE(100);
    Object.assign(details, {
      incompatibleFeatures: featureNames(incompatible, QCOW2_INCOMPATIBLE),
      compatibleFeatures: Number(head.readBigUInt64BE(80)),
      autoclearFeatures: Number(head.readBigUInt64BE(88)),
      refcountOrder: head.readUInt32BE(96),
    });
    if (headerLength < 104 || headerLength > clusterSize) {
      return { ...result, malformed: `header_length ${headerLength} out of range` };
    }
    if (headerLength > 104 && head.length > 104) details.compressionType = head[104] === 1 ? 'zstd' : 'zlib';
  }

  // Safety does not depend on reading the name: a non-zero offset alone means "has a backing file".
  if (backingOffset !== 0) {
    const end = backingOffset + backingSize;
    result.backingFile =
      backingSize > 0 && end <= head.length
        ? head.toString('utf8', backingOffset, end)
        : `(unreadable name at offset ${backingOffset})`;
  }

  // Header extensions run from the end of the header to the backing file name, or to the end of the
  // first cluster, exactly the area qemu scans.
  const extEnd = backingOffset !== 0 ? Math.min(backingOffset, clusterSize) : clusterSize;
  const extensions: string[] = [];
  let dataFileName: string | undefined;
  let offset = headerLength;
  while (offset + 8 <= extEnd) {
    if (offset + 8 > head.length) {
      details.extensionsTruncated = true;
      break;
    }
    const type = head.readUInt32BE(offset);
    const length = head.readUInt32BE(offset + 4);
    if (type === QCOW2_EXT.end) break;
    if (length > extEnd - offset - 8) return { ...result, details, malformed: 'header extension too large' };
    const dataEnd = offset + 8 + length;
    extensions.push(type.toString(16).padStart(8, '0'));
    if (dataEnd > head.length) {
      details.extensionsTruncated = true;
      if (type === QCOW2_EXT.dataFile) dataFileName = '(name beyond the inspected header)';
      break;
    }
    const data = head.subarray(offset + 8, dataEnd);
    if (type === QCOW2_EXT.backingFormat) details.backingFormat = cString(data);
    if (type === QCOW2_EXT.dataFile) dataFileName = cString(data);
    if (type === QCOW2_EXT.encryptionHeader) details.encryptionHeader = true;
    if (type === QCOW2_EXT.bitmaps) details.bitmaps = true;
    offset = dataEnd + ((8 - (length % 8)) % 8);
  }
  details.extensions = extensions;

  // The feature bit is what makes qemu open a data file (the name can also come from the command
  // line); the extension without the bit makes qemu refuse the image. Either one is refused.
  if ((incompatible & QCOW2_DATA_FILE) !== 0n || dataFileName !== undefined) {
    result.externalDataFile = dataFileName || '(external data file, unnamed)';
  }
  if ((incompatible & QCOW2_CORRUPT) !== 0n) {
    return { ...result, malformed: 'the image is marked corrupt (incompatible feature bit 1)' };
  }
  const unknown = incompatible & ~(QCOW2_ACCEPTED_INCOMPATIBLE | QCOW2_CORRUPT | QCOW2_DATA_FILE);
  if (unknown !== 0n) {
    const bits = featureNames(unknown, []).map((name) => name.replace('bit-', ''));
    result.unsupportedFeature = `unknown incompatible feature bit(s) ${bits.join(', ')}`;
  }
  return result;
}

function featureNames(bits: bigint, names: readonly string[]): string[] {
  const found: string[] = [];
  for (let bit = 0; bit < 64; bit++) {
    if ((bits >> BigInt(bit)) & 1n) found.push(names[bit] ?? `bit-${bit}`);
  }
  return found;
}

// ---------------------------------------------------------------------------------------------------
// VHD, qemu's "vpc" (Microsoft Virtual Hard Disk Image Format Specification)

const VHD_TYPES: Record<number, string> = { 2: 'fixed', 3: 'dynamic', 4: 'differencing' };
const VHD_MAX_GEOMETRY = 65535 * 16 * 255;

interface VhdFooter {
  footer: Buffer;
  /** Where qemu finds it: a copy at offset 0 (dynamic disks) wins over the one at the end. */
  at: 'start' | 'end';
  other?: Buffer;
}

function findVhdFooter(head: Buffer, tail: Buffer): VhdFooter | undefined {
  const start = ascii(head, 0, 8) === 'conectix' ? head.subarray(0, 512) : undefined;
  const endCopy = tail.length >= 512 ? tail.subarray(tail.length - 512) : undefined;
  const end = endCopy && ascii(endCopy, 0, 8) === 'conectix' ? endCopy : undefined;
  if (start && start.length === 512) return { footer: start, at: 'start', other: end };
  if (end) return { footer: end, at: 'end' };
  return undefined;
}

function vhdChecksum(footer: Buffer): number {
  let sum = 0;
  for (let i = 0; i < footer.length; i++) if (i < 64 || i >= 68) sum += footer[i]!;
  return ~sum >>> 0;
}

function inspectVhd(head: Buffer, found: VhdFooter, total: number): Parsed {
  const { footer } = found;
  const type = footer.readUInt32BE(60);
  const creatorApp = ascii(footer, 28, 4);
  const currentSize = u64be(footer, 48);
  const cylinders = footer.readUInt16BE(56);
  const heads = footer[58]!;
  const sectors = footer[59]!;
  const chsSectors = cylinders * heads * sectors;
  const details: Record<string, unknown> = {
    diskType: VHD_TYPES[type] ?? `unknown-${type}`,
    creatorApp,
    currentSize,
    geometry: { cylinders, heads, sectors },
    footerAt: found.at,
  };
  // Virtual PC and old qemu size a disk by its CHS geometry, everyone else by current_size; qemu
  // follows the creator, and so do we, so the size matches what a guest will see.
  const useChs = (creatorApp === 'vpc ' || creatorApp === 'qemu') && chsSectors !== VHD_MAX_GEOMETRY;
  const virtualSizeBytes = useChs ? chsSectors * 512 : Math.floor(currentSize / 512) * 512;
  const result: Parsed = { format: 'vhd', virtualSizeBytes, details };

  const stored = footer.readUInt32BE(64);
  if (stored !== vhdChecksum(footer)) return { ...result, malformed: 'footer checksum mismatch' };
  if (!VHD_TYPES[type]) return { ...result, malformed: `unknown disk type ${type}` };
  if (found.other && !found.other.equals(footer)) {
    // qemu trusts the copy at offset 0; a different footer at the end means another tool would not.
    if (found.other.readUInt32BE(60) !== type || u64be(found.other, 48) !== currentSize) {
      return { ...result, malformed: 'the footer copies at the start and the end disagree' };
    }
  }
  if (type === 2) {
    if (total - 512 < virtualSizeBytes) return { ...result, malformed: 'fixed disk shorter than its size' };
    return result;
  }

  const dataOffset = u64be(footer, 16);
  details.dataOffset = dataOffset;
  if (dataOffset + 1024 > head.length) {
    return { ...result, malformed: 'dynamic disk header outside the inspected first MiB' };
  }
  const dyn = head.subarray(dataOffset, dataOffset + 1024);
  if (ascii(dyn, 0, 8) !== 'cxsparse') return { ...result, malformed: 'dynamic disk header magic missing' };
  details.blockSize = dyn.readUInt32BE(32);
  details.maxTableEntries = dyn.readUInt32BE(28);
  if (type === 4) {
    // The parent's name is UTF-16BE in the dynamic header; the locators point at platform paths.
    const swapped = Buffer.from(dyn.subarray(64, 576)).swap16();
    const name = cString16(swapped);
    result.backingFile = name || '(differencing disk parent)';
  }
  return result;
}

function cString16(le: Buffer): string {
  const text = le.toString('utf16le');
  const nul = text.indexOf('\0');
  return nul < 0 ? text : text.slice(0, nul);
}

// ---------------------------------------------------------------------------------------------------
// VMDK (VMware Virtual Disk Format 1.1, and qemu's block/vmdk.c for what qemu acts on)

const VMDK_GD_AT_END = 0xffffffffffffffffn;
const VMDK_MARKER_FOOTER = 3;
/** qemu reads the embedded descriptor of a sparse file at 0x200 (sector 1), whatever the header says. */
const VMDK_DESC_SECTOR = 1;
/** qemu reads the parent hint and CIDs from this many bytes at 0x200 of a sparse file. */
const VMDK_QEMU_DESC_WINDOW = 20 * 512;
/** The createTypes that keep the whole disk in the one file (case-insensitive, as VMware reads them). */
const VMDK_SINGLE_FILE_TYPES = new Set(['monolithicsparse', 'streamoptimized']);

function inspectVmdkSparse(head: Buffer, tail: Buffer): Parsed {
  const details: Record<string, unknown> = { subformat: 'sparse' };
  const fail = (malformed: string): Parsed => ({ format: 'vmdk', virtualSizeBytes: 0, malformed, details });
  if (head.length < 512) return fail('truncated header');
  const start = head.subarray(0, 512);
  let header = start;
  const version = header.readUInt32LE(4);
  details.version = version;
  if (version < 1 || version > 3) return fail(`unsupported version ${version}`);
  const descSector = u64le(start, 28);
  const descSectors = u64le(start, 36);
  if (start.readBigUInt64LE(56) === VMDK_GD_AT_END) {
    // streamOptimized written in one pass: the header at the end (after a footer marker) is the
    // authoritative one, and qemu reads its capacity from there.
    details.gdAtEnd = true;
    const problem = checkStreamFooter(start, tail);
    if (problem !== undefined) return fail(problem);
    header = tail.subarray(512, 1024);
  }
  const capacitySectors = u64le(header, 12);
  const startCapacity = u64le(start, 12);
  Object.assign(details, {
    flags: header.readUInt32LE(8),
    grainSectors: u64le(header, 20),
    compressAlgorithm: header.readUInt16LE(77),
  });
  const result: Parsed = { format: 'vmdk', virtualSizeBytes: capacitySectors * 512, details };

  // qemu finds the descriptor at sector 1 no matter what the header says; a header pointing
  // elsewhere means a checker that trusts the header reads another text than qemu does.
  if (descSector !== VMDK_DESC_SECTOR || descSectors === 0) {
    return {
      ...result,
      malformed: `embedded descriptor at sector ${descSector} (${descSectors} sectors), not at 0x200`,
    };
  }
  const descEnd = 512 + Math.max(descSectors * 512, VMDK_QEMU_DESC_WINDOW);
  if (descEnd > head.length) {
    return { ...result, malformed: 'embedded descriptor larger than the inspected window' };
  }
  const text = cString(head.subarray(512, descEnd), 'latin1');
  const descriptor = parseVmdkDescriptor(text);
  if (descriptor.createType !== undefined) details.createType = descriptor.createType;
  details.extents = descriptor.extents;
  applyVmdkParent(result, [text]);
  if (startCapacity === 0) {
    // With no capacity in the first header qemu opens the embedded descriptor as a descriptor file,
    // extents and all, before it looks for a footer.
    const named = descriptor.extents.find((e) => e.file !== undefined);
    result.externalDataFile = named?.file ?? '(extents of the embedded descriptor)';
    result.virtualSizeBytes = descriptor.sectors * 512;
    return result;
  }
  if (descriptor.invalidLine !== undefined) {
    return { ...result, malformed: `descriptor line not understood: ${descriptor.invalidLine.slice(0, 80)}` };
  }
  const createType = descriptor.createType?.toLowerCase();
  if (createType === undefined || !VMDK_SINGLE_FILE_TYPES.has(createType)) {
    result.unsupportedSubformat = `createType ${descriptor.createType ?? '(missing)'}`;
  }
  const [extent, ...more] = descriptor.extents;
  if (extent === undefined) return { ...result, malformed: 'descriptor lists no extents' };
  // The one extent must be this file itself: a sparse extent with a plain file name. More extents,
  // or a name with a directory in it, are other files (oslo refuses any '/' in an extent line).
  const elsewhere = [extent, ...more].find((e) => e.file?.includes('/'));
  if (elsewhere) result.externalDataFile = elsewhere.file;
  else if (more.length > 0) result.externalDataFile = more[0]!.file ?? `(${more.length + 1} extents)`;
  if (extent.type.toUpperCase() !== 'SPARSE') {
    result.unsupportedSubformat ??= `extent type ${extent.type}`;
  }
  return result;
}

/**
 * The streamOptimized footer, checked as oslo does: a footer marker, a copy of the header that
 * agrees with the first one and does not point at yet another footer, and an end-of-stream marker,
 * each with zero padding. Returns what is wrong, or undefined.
 */
function checkStreamFooter(start: Buffer, tail: Buffer): string | undefined {
  if (tail.length < 1536) return 'stream footer missing';
  const zeros = (buf: Buffer) => buf.every((byte) => byte === 0);
  const marker = tail.subarray(0, 512);
  if (
    marker.readUInt32LE(8) !== 0 ||
    marker.readUInt32LE(12) !== VMDK_MARKER_FOOTER ||
    !zeros(marker.subarray(16))
  ) {
    return 'stream footer marker invalid';
  }
  const footer = tail.subarray(512, 1024);
  if (ascii(footer, 0, 4) !== 'KDMV') return 'stream footer signature missing';
  if (footer.readUInt32LE(4) !== start.readUInt32LE(4))
    return 'stream footer version differs from the header';
  if (!footer.subarray(28, 44).equals(start.subarray(28, 44))) {
    return 'stream footer names another descriptor than the header';
  }
  if (footer.readBigUInt64LE(56) === VMDK_GD_AT_END) return 'stream footer points at another footer';
  // The end-of-stream marker is a marker of type 0 and size 0 with no value: 512 zero bytes.
  const eos = tail.subarray(1024, 1536);
  if (!zeros(eos)) return 'end-of-stream marker invalid';
  return undefined;
}

interface VmdkExtent {
  access: string;
  sectors: number;
  type: string;
  file?: string;
}

interface VmdkDescriptor {
  createType?: string;
  parentCid?: string;
  extents: VmdkExtent[];
  sectors: number;
  /** The first line that is neither a comment, a `ddb` entry, a `key=value` header nor an extent. */
  invalidLine?: string;
}

const VMDK_EXTENT = /^(RW|RDONLY|NOACCESS)\s+(\d+)\s+([A-Za-z]+)(?:\s+"([^"]*)")?/;

function parseVmdkDescriptor(text: string): VmdkDescriptor {
  const descriptor: VmdkDescriptor = { extents: [], sectors: 0 };
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const extent = VMDK_EXTENT.exec(line);
    if (extent) {
      const sectors = Number(extent[2]);
      descriptor.extents.push({
        access: extent[1]!,
        sectors,
        type: extent[3]!,
        ...(extent[4] !== undefined ? { file: extent[4] } : {}),
      });
      descriptor.sectors += sectors;
      continue;
    }
    if (/^(RW|RDONLY|NOACCESS)\s/i.test(line)) {
      // An extent line the pattern above cannot read is one qemu may still act on.
      descriptor.invalidLine ??= line;
      continue;
    }
    if (line.startsWith('ddb')) continue; // disk database entries: metadata qemu does not act on
    const pair = /^([A-Za-z0-9_.]+)\s*=\s*"?([^"]*)"?$/.exec(line);
    if (!pair) {
      descriptor.invalidLine ??= line;
      continue;
    }
    if (pair[1] === 'createType') descriptor.createType = pair[2];
    if (pair[1] === 'parentCID') descriptor.parentCid = pair[2]!.toLowerCase();
  }
  return descriptor;
}

/**
 * qemu looks for `parentFileNameHint` anywhere in the descriptor text (a plain substring search),
 * and a parent CID other than ffffffff marks a linked clone; either makes it a child of another file.
 */
function applyVmdkParent(result: Parsed, texts: string[]): void {
  for (const text of texts) {
    const at = text.indexOf('parentFileNameHint');
    if (at >= 0) {
      const quoted = /parentFileNameHint\s*=\s*"([^"]*)"/.exec(text.slice(at));
      result.backingFile = quoted?.[1] || '(parentFileNameHint)';
      return;
    }
    const cid = parseVmdkDescriptor(text).parentCid;
    if (cid !== undefined && cid !== 'ffffffff') {
      result.backingFile = `(linked clone of parent CID ${cid})`;
      result.details.parentCid = cid;
      return;
    }
  }
}

/** qemu's probe for a text descriptor: comment and blank lines, then `version=1|2|3`. */
function isVmdkDescriptor(head: Buffer): boolean {
  const text = head.toString('latin1', 0, Math.min(head.length, 2048));
  if (text.startsWith('# Disk DescriptorFile')) return true;
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    if (/^ *\r?$/.test(line)) continue;
    return /^version=[123]\r?$/.test(line);
  }
  return false;
}

function inspectVmdkDescriptor(head: Buffer): Parsed {
  // qemu reads a descriptor file up to its first MiB; the window holds less, but a descriptor file
  // is refused whatever it lists: it holds no data, so every disk it describes is another file.
  const text = cString(head, 'latin1');
  const descriptor = parseVmdkDescriptor(text);
  const details: Record<string, unknown> = { subformat: 'descriptor', extents: descriptor.extents };
  if (descriptor.createType !== undefined) details.createType = descriptor.createType;
  const result: Parsed = { format: 'vmdk', virtualSizeBytes: descriptor.sectors * 512, details };
  applyVmdkParent(result, [text]);
  const external = descriptor.extents.find((e) => e.file !== undefined);
  if (external) result.externalDataFile = external.file;
  result.unsupportedSubformat = `descriptor file (createType ${descriptor.createType ?? 'missing'})`;
  if (descriptor.extents.length === 0) result.malformed = 'descriptor lists no extents';
  return result;
}

// ---------------------------------------------------------------------------------------------------
// ISO 9660 (ECMA-119): volume descriptors from sector 16, 2048 bytes each

const ISO_SECTOR = 2048;
const ISO_FIRST_DESCRIPTOR = 16 * ISO_SECTOR;
/** Standard identifiers of the volume recognition sequence: ISO 9660, and UDF's extended area. */
const ISO_IDENTIFIERS = new Set(['CD001', 'BEA01', 'NSR02', 'NSR03', 'TEA01', 'BOOT2', 'CDW02']);

/** An ISO 9660 or UDF volume: a recognised descriptor right after the 32 KiB system area. */
function isIso(head: Buffer): boolean {
  return ISO_IDENTIFIERS.has(ascii(head, ISO_FIRST_DESCRIPTOR + 1, 5));
}

function inspectIso(head: Buffer): Parsed {
  const details: Record<string, unknown> = {};
  for (let at = ISO_FIRST_DESCRIPTOR; at + ISO_SECTOR <= head.length; at += ISO_SECTOR) {
    if (ascii(head, at + 1, 5) !== 'CD001') break;
    const type = head[at]!;
    if (type === 255) break;
    if (type !== 1) continue;
    // Both-endian fields: the two halves must agree, or the descriptor is not what it claims.
    const blocks = head.readUInt32LE(at + 80);
    const blockSize = head.readUInt16LE(at + 128);
    Object.assign(details, {
      volumeId: head.toString('latin1', at + 40, at + 72).trim(),
      volumeSpaceBlocks: blocks,
      logicalBlockSize: blockSize,
    });
    // A UDF bridge (mkisofs -udf) follows the ISO 9660 set with BEA01, NSR02/NSR03 and TEA01.
    for (let udf = at; udf + ISO_SECTOR <= head.length && udf < at + 16 * ISO_SECTOR; udf += ISO_SECTOR) {
      const id = ascii(head, udf + 1, 5);
      if (id === 'NSR02' || id === 'NSR03') details.udf = id;
    }
    const result: Parsed = { format: 'iso', virtualSizeBytes: blocks * blockSize, details };
    if (blocks !== head.readUInt32BE(at + 84) || blockSize !== head.readUInt16BE(at + 130)) {
      return { ...result, malformed: 'both-endian fields disagree' };
    }
    if (![512, 1024, 2048].includes(blockSize)) return { ...result, malformed: `block size ${blockSize}` };
    return result;
  }
  // A UDF-only disc (no ISO 9660 bridge) keeps its size in structures far past the window.
  return { format: 'iso', virtualSizeBytes: 0, malformed: 'no primary volume descriptor', details };
}

// ---------------------------------------------------------------------------------------------------
// Partition tables (UEFI spec, "GUID Partition Table Format", and the legacy MBR it protects)

const MBR_SIGNATURE = 0xaa55;
const MBR_ENTRIES = 446;
const MBR_TYPE_GPT = 0xee;

/**
 * `gpt` or `mbr` when the first sector ends in the boot signature and is not a FAT boot sector
 * (which carries the same signature; two FATs on a fixed-disk medium is how oslo tells them apart).
 */
function probePartitionTable(head: Buffer): 'gpt' | 'mbr' | undefined {
  if (head.length < 512 || head.readUInt16LE(510) !== MBR_SIGNATURE) return undefined;
  if (head[0x10] === 2 && head[0x15] === 0xf8) return undefined;
  for (let i = 0; i < 4; i++) if (head[MBR_ENTRIES + 16 * i + 4] === MBR_TYPE_GPT) return 'gpt';
  return 'mbr';
}

/**
 * oslo's sanity checks of a raw disk's MBR: boot flags are 0x00 or 0x80, at least one partition
 * exists, and a GPT's protective entry is the only one, starts at LBA 1 and CHS 0/2/0.
 */
function checkMbr(head: Buffer): string | undefined {
  const used: number[] = [];
  let gpt = false;
  for (let i = 0; i < 4; i++) {
    const entry = head.subarray(MBR_ENTRIES + 16 * i, MBR_ENTRIES + 16 * (i + 1));
    if (entry[0] !== 0x00 && entry[0] !== 0x80) return `MBR partition entry ${i} has an invalid boot flag`;
    const type = entry[4]!;
    if (type !== 0) used.push(i);
    if (type === MBR_TYPE_GPT) {
      gpt = true;
      if (entry[1] !== 0 || entry[2] !== 2 || entry[3] !== 0)
        return 'GPT protective MBR has an invalid start CHS';
      if (entry.readUInt32LE(8) !== 1) return 'GPT protective MBR does not start at LBA 1';
    }
  }
  if (gpt && (used.length !== 1 || used[0] !== 0)) return 'GPT protective MBR defines other partitions';
  if (used.length === 0) return 'MBR defines no partition';
  return undefined;
}

// ---------------------------------------------------------------------------------------------------
// Formats qemu would recognise (its probe functions) but Strata does not take.

function probeForeign(head: Buffer): string | undefined {
  const start = ascii(head, 0, 16);
  if (start.startsWith('QED\0')) return 'qed';
  if (start.startsWith('vhdxfile')) return 'vhdx';
  if (start.startsWith('LUKS\xba\xbe')) return 'luks';
  if (start === 'WithoutFreeSpace' || start === 'WithouFreSpacExt') return 'parallels';
  if (ascii(head, 0, 22) === 'Bochs Virtual HD Image') return 'bochs';
  if (ascii(head, 0, 23) === '#!/bin/sh\n#V2.0 Format\n') return 'cloop';
  if (head.length >= 0x44 && head.readUInt32LE(0x40) === 0xbeda107f) return 'vdi';
  // dmg is left out: qemu probes it by file name only, never by content.
  return undefined;
}
