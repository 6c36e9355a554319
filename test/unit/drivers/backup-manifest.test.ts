import {
  BackupManifestSchema,
  buildManifest,
  chunkCount,
  chunkExtent,
  chunkObjectKey,
  chunkRef,
  chunksOverlapping,
  isAllZero,
  parseManifest,
  referencedChunks,
} from '../../../drivers/sdk/backup-manifest.js';
import { DriverInputError } from '../../../drivers/sdk/errors.js';

const MiB = 1024 * 1024;
const A = 'a'.repeat(64);
const B = 'b'.repeat(64);

describe('backup manifest', () => {
  it('counts chunks with a short last one', () => {
    expect(chunkCount(10 * MiB, 4 * MiB)).toBe(3);
    expect(chunkCount(8 * MiB, 4 * MiB)).toBe(2);
    expect(chunkExtent(2, 10 * MiB, 4 * MiB)).toEqual({ start: 8 * MiB, length: 2 * MiB });
    expect(() => chunkExtent(3, 10 * MiB, 4 * MiB)).toThrow(DriverInputError);
  });

  it('maps extents to the chunks they overlap, clipped to the disk', () => {
    const size = 16 * MiB;
    expect(chunksOverlapping([{ start: 4 * MiB - 1, length: 2 }], size, 4 * MiB)).toEqual([0, 1]);
    expect(chunksOverlapping([{ start: 4 * MiB, length: 4 * MiB }], size, 4 * MiB)).toEqual([1]);
    expect(
      chunksOverlapping(
        [
          { start: 15 * MiB, length: 10 * MiB },
          { start: 0, length: 1 },
          { start: 0, length: 1 },
        ],
        size,
        4 * MiB,
      ),
    ).toEqual([0, 3]);
    expect(chunksOverlapping([{ start: 20 * MiB, length: 1 }], size, 4 * MiB)).toEqual([]);
  });

  it('names zero chunks null and others by sha256', () => {
    expect(chunkRef(Buffer.alloc(4096))).toBeNull();
    expect(chunkRef(Buffer.from('abc'))).toBe(
      'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad',
    );
    const odd = Buffer.alloc(21);
    expect(isAllZero(odd.subarray(3))).toBe(true);
    odd[20] = 1;
    expect(isAllZero(odd.subarray(3))).toBe(false);
    expect(isAllZero(odd.subarray(0, 20))).toBe(true);
  });

  it('finds one non-zero byte anywhere in a chunk larger than the zero page, or none', () => {
    const chunk = new Uint8Array(4 * MiB + 7);
    expect(isAllZero(chunk)).toBe(true);
    expect(isAllZero(new Uint8Array(0))).toBe(true);
    for (const at of [0, 65535, 65536, 2 * MiB + 3, 4 * MiB + 6]) {
      chunk[at] = 0x80;
      expect(isAllZero(chunk)).toBe(false);
      expect(isAllZero(chunk.subarray(at + 1))).toBe(true);
      chunk[at] = 0;
    }
  });

  it('validates that every chunk index is listed', () => {
    const manifest = buildManifest({
      volumeId: 'vol-1',
      snapshotId: 'snap-1',
      virtualSizeBytes: 10 * MiB,
      chunkSizeBytes: 4 * MiB,
      chunks: [A, null, A],
    });
    expect(manifest.version).toBe(1);
    expect(parseManifest(JSON.stringify(manifest))).toEqual(manifest);
    expect(referencedChunks(manifest)).toEqual(new Set([A]));
    expect(BackupManifestSchema.safeParse({ ...manifest, chunks: [A, B] }).success).toBe(false);
    expect(BackupManifestSchema.safeParse({ ...manifest, chunkSizeBytes: 4 * MiB + 1 }).success).toBe(false);
    expect(BackupManifestSchema.safeParse({ ...manifest, chunks: [A, null, 'A'.repeat(64)] }).success).toBe(
      false,
    );
    expect(() => parseManifest('{')).toThrow(DriverInputError);
    expect(() => parseManifest(JSON.stringify({ ...manifest, version: 2 }))).toThrow(DriverInputError);
  });

  it('fans chunk keys out by their first two hex digits', () => {
    expect(chunkObjectKey('backups/chunks/', A)).toBe(`backups/chunks/aa/${A}`);
    expect(chunkObjectKey('', B)).toBe(`bb/${B}`);
    expect(() => chunkObjectKey('x', '../etc')).toThrow();
  });
});
