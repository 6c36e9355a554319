/**
 * The backup format: a volume backup is a manifest listing, for every fixed-size chunk of the
 * virtual disk, the sha256 of its bytes (or `null` for an all-zero chunk), plus the chunks
 * themselves stored once each under their hash. See docs/backup-format.md.
 *
 * Every manifest is logically full: it names every chunk index of the disk, so restoring or deleting
 * one backup never needs another backup to exist. An incremental backup only changes how the list
 * is computed (the previous list with the chunks overlapping changed extents recomputed).
 */
import { createHash } from 'node:crypto';
import { z } from 'zod';
import { DriverInputError } from './errors.js';
import { SafeIdSchema } from './validation.js';

/** Default chunk size: 4 MiB, a compromise between dedup granularity and per-object overhead. */
export const DEFAULT_CHUNK_SIZE_BYTES = 4 * 1024 * 1024;
/** Chunks are multiples of this, so chunk boundaries fall on qcow2 cluster boundaries (64 KiB default). */
export const CHUNK_SIZE_ALIGNMENT = 64 * 1024;
/** Upper bound: qemu-nbd refuses NBD requests above 32 MiB, and a chunk is read in one request. */
export const MAX_CHUNK_SIZE_BYTES = 32 * 1024 * 1024;

/** A lower-case hex sha256. */
export const Sha256HexSchema = z.string().regex(/^[0-9a-f]{64}$/, 'must be a lower-case hex sha256');

/** A chunk size Strata accepts: a positive multiple of 64 KiB, at most 32 MiB. */
export const ChunkSizeSchema = z
  .number()
  .int()
  .positive()
  .max(MAX_CHUNK_SIZE_BYTES)
  .refine((n) => n % CHUNK_SIZE_ALIGNMENT === 0, { message: 'must be a multiple of 64 KiB' });

/** One chunk reference: its sha256, or `null` when the chunk is all zeros (never stored). */
export const ChunkRefSchema = Sha256HexSchema.nullable();

/**
 * The version-1 manifest. `chunks.length` must equal `ceil(virtualSizeBytes / chunkSizeBytes)`.
 *
 * @example
 * const manifest = BackupManifestSchema.parse(JSON.parse(body));
 */
export const BackupManifestSchema = z
  .object({
    version: z.literal(1),
    volumeId: SafeIdSchema,
    snapshotId: SafeIdSchema,
    virtualSizeBytes: z.number().int().positive().max(Number.MAX_SAFE_INTEGER),
    chunkSizeBytes: ChunkSizeSchema,
    chunks: z.array(ChunkRefSchema),
    createdAt: z.iso.datetime(),
    /** Informational only: restore never reads the parent. */
    parentSnapshotId: SafeIdSchema.optional(),
  })
  .strict()
  .refine((m) => m.chunks.length === chunkCount(m.virtualSizeBytes, m.chunkSizeBytes), {
    message: 'chunks must list every chunk index of the disk',
    path: ['chunks'],
  });
export type BackupManifest = z.infer<typeof BackupManifestSchema>;

/** A byte range of the virtual disk. */
export interface Extent {
  start: number;
  length: number;
}

/** Zod schema of an {@link Extent}. */
export const ExtentSchema = z
  .object({
    start: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER),
    length: z.number().int().positive().max(Number.MAX_SAFE_INTEGER),
  })
  .strict();

/**
 * Number of chunks of a disk (the last one may be short).
 *
 * @example
 * chunkCount(10 * 1024 * 1024, 4 * 1024 * 1024); // 3
 */
export function chunkCount(virtualSizeBytes: number, chunkSizeBytes: number): number {
  return Math.ceil(virtualSizeBytes / chunkSizeBytes);
}

/**
 * The byte range of chunk `index`.
 *
 * @example
 * chunkExtent(2, 10 * 1024 * 1024, 4 * 1024 * 1024); // { start: 8388608, length: 2097152 }
 */
export function chunkExtent(index: number, virtualSizeBytes: number, chunkSizeBytes: number): Extent {
  const start = index * chunkSizeBytes;
  if (!Number.isInteger(index) || index < 0 || start >= virtualSizeBytes) {
    throw new DriverInputError(`chunk ${index} is outside the disk`, { context: { field: 'index' } });
  }
  return { start, length: Math.min(chunkSizeBytes, virtualSizeBytes - start) };
}

/**
 * Indexes (sorted, unique) of the chunks overlapping any of `extents`, clipped to the disk.
 *
 * @example
 * chunksOverlapping([{ start: 4194303, length: 2 }], 16 << 20, 4 << 20); // [0, 1]
 */
export function chunksOverlapping(
  extents: readonly Extent[],
  virtualSizeBytes: number,
  chunkSizeBytes: number,
): number[] {
  const indexes = new Set<number>();
  const last = chunkCount(virtualSizeBytes, chunkSizeBytes) - 1;
  for (const { start, length } of extents) {
    if (length <= 0 || start >= virtualSizeBytes) continue;
    const end = Math.min(start + length, virtualSizeBytes) - 1;
    for (
      let i = Math.floor(start / chunkSizeBytes);
      i <= Math.min(last, Math.floor(end / chunkSizeBytes));
      i++
    )
      indexes.add(i);
  }
  return [...indexes].sort((a, b) => a - b);
}

/**
 * The sha256 (hex) of a chunk, or `null` when every byte is zero (zero chunks are never stored).
 *
 * @example
 * chunkRef(Buffer.alloc(4096)); // null
 */
export function chunkRef(bytes: Uint8Array): string | null {
  return isAllZero(bytes) ? null : createHash('sha256').update(bytes).digest('hex');
}

/** Compared against in slices: memcmp on a zero page is ~50× faster than a JS loop over words. */
const ZEROS = Buffer.alloc(64 * 1024);

/**
 * True when every byte is zero.
 *
 * @example
 * isAllZero(new Uint8Array(8)); // true
 */
export function isAllZero(bytes: Uint8Array): boolean {
  for (let offset = 0; offset < bytes.byteLength; offset += ZEROS.length) {
    const length = Math.min(ZEROS.length, bytes.byteLength - offset);
    const slice = Buffer.from(bytes.buffer, bytes.byteOffset + offset, length);
    if (!slice.equals(length === ZEROS.length ? ZEROS : ZEROS.subarray(0, length))) return false;
  }
  return true;
}

/**
 * The distinct chunk hashes a manifest references: the garbage collector keeps a chunk object while
 * any manifest's set contains it.
 *
 * @example
 * const live = new Set(manifests.flatMap((m) => [...referencedChunks(m)]));
 */
export function referencedChunks(manifest: Pick<BackupManifest, 'chunks'>): Set<string> {
  const hashes = new Set<string>();
  for (const ref of manifest.chunks) if (ref !== null) hashes.add(ref);
  return hashes;
}

/**
 * The image-store key of a chunk: fanned out by the first two hex digits so that no prefix holds
 * millions of keys.
 *
 * @example
 * chunkObjectKey('backups/chunks', 'ab12…'); // 'backups/chunks/ab/ab12…'
 */
export function chunkObjectKey(prefix: string, sha256: string): string {
  Sha256HexSchema.parse(sha256);
  const base = prefix.replace(/\/+$/, '');
  return `${base ? `${base}/` : ''}${sha256.slice(0, 2)}/${sha256}`;
}

/**
 * A hex sha256 as S3 carries it in `x-amz-checksum-sha256` / `ChecksumSHA256`: the 32 bytes, base64.
 * A chunk's key is its sha256, so the checksum of every chunk PUT is known before the bytes are read.
 *
 * @example
 * sha256Base64('e3b0c442…b855'); // '47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='
 */
export function sha256Base64(sha256: string): string {
  Sha256HexSchema.parse(sha256);
  return Buffer.from(sha256, 'hex').toString('base64');
}

/**
 * The inverse of {@link sha256Base64}: the hex sha256 of an S3 `ChecksumSHA256`, or `undefined`
 * when the value is not a base64 SHA-256 (wrong length, a multipart `…-N` composite checksum).
 *
 * @example
 * sha256Hex('47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='); // 'e3b0c442…b855'
 */
export function sha256Hex(base64: string | undefined): string | undefined {
  if (!base64 || !/^[A-Za-z0-9+/]{43}=$/.test(base64)) return undefined;
  return Buffer.from(base64, 'base64').toString('hex');
}

/**
 * Builds a manifest and validates it.
 *
 * @example
 * const m = buildManifest({ volumeId: 'vol-1', snapshotId: 'snap-2', virtualSizeBytes, chunkSizeBytes, chunks });
 */
export function buildManifest(
  fields: Omit<BackupManifest, 'version' | 'createdAt'> & { createdAt?: string },
): BackupManifest {
  return BackupManifestSchema.parse({
    version: 1,
    ...fields,
    createdAt: fields.createdAt ?? new Date().toISOString(),
  });
}

/**
 * Parses a manifest from JSON text, throwing {@link DriverInputError} when it is not a valid one.
 *
 * @example
 * const manifest = parseManifest(await body.transformToString());
 */
export function parseManifest(text: string): BackupManifest {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    throw new DriverInputError('backup manifest is not JSON', { context: { field: 'manifest' } });
  }
  const parsed = BackupManifestSchema.safeParse(raw);
  if (!parsed.success) {
    throw new DriverInputError(`invalid backup manifest: ${parsed.error.issues[0]?.message ?? 'unknown'}`, {
      context: { field: 'manifest' },
    });
  }
  return parsed.data;
}
