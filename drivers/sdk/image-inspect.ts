/**
 * Disk image inspection while the bytes stream past (template ingestion copies a URL straight into
 * the store, with no temporary file to run `qemu-img info` on).
 *
 * The inspector keeps bounded state only: the first {@link IMAGE_HEAD_BYTES} (every header it reads
 * lives there) and the last {@link IMAGE_TAIL_BYTES} (the VHD footer and the VMDK stream footer).
 * It parses headers with its own code, following what qemu itself reads, because the point is to
 * decide whether qemu may safely open the image later: an image that names a backing file, an
 * external data file, a VMDK extent or a VHD parent makes qemu open a host path chosen by whoever
 * wrote the image, and a qcow2 uploaded as "raw" turns into exactly that the first time anything
 * probes its format.
 */
import { Transform } from 'node:stream';
import { DriverError, type DriverErrorOptions, DriverInputError } from './errors.js';
import { ImageFormat } from './types.js';

/** Bytes kept from the start of the stream: enough for every header the inspector reads. */
export const IMAGE_HEAD_BYTES = 1024 * 1024;

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
  details: Record<string, unknown>;
}

/** Why {@link assertSafeImage} refused an image. */
export const UnsafeImageReason = {
  BackingFile: 'backing-file',
  ExternalDataFile: 'external-data-file',
  ImplausibleSize: 'implausible-size',
  Malformed: 'malformed',
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
 * Throws unless the inspected image may be handed to qemu as `declaredFormat`:
 * {@link FormatMismatchError} when the bytes are another format (an ISO may be declared raw: qemu
 * reads an ISO as plain bytes, so nothing changes), {@link UnsafeImageError} when the image names a
 * backing file, VHD parent, VMDK parent or external data file/extent, when its header is malformed,
 * or when its virtual size is 0 or above the limit (64 TiB). Encryption is reported in the
 * inspection, not refused here.
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
  const rawIso = declaredFormat === ImageFormat.Raw && actual === ImageFormat.Iso;
  if (actual !== declaredFormat && !rawIso) throw new FormatMismatchError(declaredFormat, actual);
  const context = { format: inspection.format };
  if (inspection.malformed !== undefined) {
    throw new UnsafeImageError(
      `${inspection.format} header is malformed: ${inspection.malformed}`,
      'malformed',
      {
        context: { ...context, malformed: inspection.malformed },
      },
    );
  }
  if (inspection.backingFile !== undefined) {
    throw new UnsafeImageError(
      `${inspection.format} image depends on another file (${inspection.backingFile}); upload a standalone image`,
      'backing-file',
      { context: { ...context, backingFile: inspection.backingFile } },
    );
  }
  if (inspection.externalDataFile !== undefined) {
    throw new UnsafeImageError(
      `${inspection.format} image keeps its data in another file (${inspection.externalDataFile})`,
      'external-data-file',
      { context: { ...context, externalDataFile: inspection.externalDataFile } },
    );
  }
  const max = options.maxVirtualSizeBytes ?? MAX_IMAGE_VIRTUAL_SIZE_BYTES;
  const size = inspection.virtualSizeBytes;
  if (!Number.isSafeInteger(size) || size <= 0 || size > max) {
    throw new UnsafeImageError(`implausible virtual size ${size} bytes`, 'implausible-size', {
      context: { ...context, virtualSizeBytes: size, maxVirtualSizeBytes: max },
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

// ---------------------------------------------------------------------------------------------------
// Detection. The order mirrors how qemu would see the bytes: a magic at offset 0 wins, the VHD footer
// comes next (a fixed VHD only has one at the end), then ISO 9660, which qemu itself has no driver for.

function inspectBuffers(head: Buffer, tail: Buffer, total: number): ImageInspection {
  const base = { physicalSizeBytes: total };
  const magic = head.length >= 4 ? head.readUInt32BE(0) : 0;
  if (magic === QCOW_MAGIC) return { ...base, ...inspectQcow(head) };
  if (ascii(head, 0, 4) === 'KDMV') return { ...base, ...inspectVmdkSparse(head, tail) };
  if (ascii(head, 0, 4) === 'COWD') {
    return {
      ...base,
      format: 'vmdk',
      virtualSizeBytes: 0,
      malformed: 'VMDK3 (COWD) is not supported',
      details: {},
    };
  }
  if (isVmdkDescriptor(head)) return { ...base, ...inspectVmdkDescriptor(head) };
  const vhd = findVhdFooter(head, tail);
  if (vhd) return { ...base, ...inspectVhd(head, vhd, total) };
  const foreign = probeForeign(head);
  if (foreign) {
    return { ...base, format: 'raw', virtualSizeBytes: total, foreignFormat: foreign, details: {} };
  }
  if (ascii(head, ISO_FIRST_DESCRIPTOR + 1, 5) === 'CD001') return { ...base, ...inspectIso(head) };
  return { ...base, format: 'raw', virtualSizeBytes: total, details: {} };
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
  if ((incompatible & 4n) !== 0n || dataFileName !== undefined) {
    result.externalDataFile = dataFileName || '(external data file, unnamed)';
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
const VMDK_MARKER_EOS = 0;
/** qemu reads the parent hint and CIDs from this many bytes at 0x200 of a sparse file, wherever the header says. */
const VMDK_QEMU_DESC_WINDOW = 20 * 512;

function inspectVmdkSparse(head: Buffer, tail: Buffer): Parsed {
  const details: Record<string, unknown> = { subformat: 'sparse' };
  if (head.length < 512)
    return { format: 'vmdk', virtualSizeBytes: 0, malformed: 'truncated header', details };
  let header = head.subarray(0, 512);
  const version = header.readUInt32LE(4);
  details.version = version;
  if (version < 1 || version > 3) {
    return { format: 'vmdk', virtualSizeBytes: 0, malformed: `unsupported version ${version}`, details };
  }
  if (header.readBigUInt64LE(56) === VMDK_GD_AT_END) {
    // streamOptimized written in one pass: the header at the end (after a footer marker) is the
    // authoritative one, and qemu reads its capacity from there.
    details.gdAtEnd = true;
    const ok =
      tail.length >= 1536 &&
      tail.readUInt32LE(12) === VMDK_MARKER_FOOTER &&
      ascii(tail, 512, 4) === 'KDMV' &&
      tail.readUInt32LE(1024 + 12) === VMDK_MARKER_EOS;
    if (!ok) return { format: 'vmdk', virtualSizeBytes: 0, malformed: 'stream footer missing', details };
    header = tail.subarray(512, 1024);
  }
  const capacitySectors = u64le(header, 12);
  const descOffset = u64le(header, 28);
  const descSize = u64le(header, 36);
  Object.assign(details, {
    flags: header.readUInt32LE(8),
    grainSectors: u64le(header, 20),
    compressAlgorithm: header.readUInt16LE(77),
  });
  const result: Parsed = { format: 'vmdk', virtualSizeBytes: capacitySectors * 512, details };

  const texts: string[] = [];
  if (descOffset > 0 && descSize > 0) {
    const start = descOffset * 512;
    // Without a capacity qemu reads on past desc_size (up to a MiB), so extents may follow it.
    const end = capacitySectors === 0 ? head.length : Math.min(start + descSize * 512, head.length);
    if (start >= head.length)
      return { ...result, malformed: 'embedded descriptor outside the inspected first MiB' };
    texts.push(cString(head.subarray(start, end), 'latin1'));
  }
  texts.push(cString(head.subarray(0x200, 0x200 + VMDK_QEMU_DESC_WINDOW), 'latin1'));
  const descriptor = parseVmdkDescriptor(texts[0]!);
  if (descriptor.createType !== undefined) details.createType = descriptor.createType;
  applyVmdkParent(result, texts);
  if (capacitySectors === 0 && descOffset > 0) {
    // With no capacity qemu opens the embedded descriptor as a descriptor file, extents and all.
    details.extents = descriptor.extents;
    const external = descriptor.extents.find((e) => e.file !== undefined);
    if (external) result.externalDataFile = external.file;
    result.virtualSizeBytes = descriptor.sectors * 512;
  }
  return result;
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
    const pair = /^([A-Za-z.]+)\s*=\s*"?([^"]*)"?$/.exec(line);
    if (pair?.[1] === 'createType') descriptor.createType = pair[2];
    if (pair?.[1] === 'parentCID') descriptor.parentCid = pair[2]!.toLowerCase();
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
  // qemu reads a descriptor file up to its first MiB, which is exactly the head we keep.
  const text = cString(head, 'latin1');
  const descriptor = parseVmdkDescriptor(text);
  const details: Record<string, unknown> = { subformat: 'descriptor', extents: descriptor.extents };
  if (descriptor.createType !== undefined) details.createType = descriptor.createType;
  const result: Parsed = { format: 'vmdk', virtualSizeBytes: descriptor.sectors * 512, details };
  applyVmdkParent(result, [text]);
  // A descriptor holds no data: every extent with a file name is another file qemu would open.
  const external = descriptor.extents.find((e) => e.file !== undefined);
  if (external) result.externalDataFile = external.file;
  if (descriptor.extents.length === 0) result.malformed = 'descriptor lists no extents';
  return result;
}

// ---------------------------------------------------------------------------------------------------
// ISO 9660 (ECMA-119): volume descriptors from sector 16, 2048 bytes each

const ISO_SECTOR = 2048;
const ISO_FIRST_DESCRIPTOR = 16 * ISO_SECTOR;

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
    const result: Parsed = { format: 'iso', virtualSizeBytes: blocks * blockSize, details };
    if (blocks !== head.readUInt32BE(at + 84) || blockSize !== head.readUInt16BE(at + 130)) {
      return { ...result, malformed: 'both-endian fields disagree' };
    }
    if (![512, 1024, 2048].includes(blockSize)) return { ...result, malformed: `block size ${blockSize}` };
    return result;
  }
  return { format: 'iso', virtualSizeBytes: 0, malformed: 'no primary volume descriptor', details };
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
