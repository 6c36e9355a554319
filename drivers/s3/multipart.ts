/**
 * S3 multipart arithmetic and checks, kept free of I/O so the limits can be tested exactly:
 * at most 10,000 parts, every part but the last at least 5 MiB, no part above 5 GiB, no object
 * above 5 TiB (https://docs.aws.amazon.com/AmazonS3/latest/userguide/qfacts.html).
 */
import { createHash } from 'node:crypto';
import { DriverInputError } from '../sdk/errors.js';
import type { CompletedPart } from '../sdk/types.js';

const MiB = 1024 ** 2;
const GiB = 1024 ** 3;

/**
 * S3's multipart limits.
 *
 * @example
 * Math.ceil(size / S3_LIMITS.maxParts); // the smallest part size that fits `size`
 */
export const S3_LIMITS = {
  maxParts: 10_000,
  minPartBytes: 5 * MiB,
  maxPartBytes: 5 * GiB,
  maxObjectBytes: 5 * 1024 * GiB,
} as const;

/**
 * The part size to use for an object of `sizeBytes` when `wantedBytes` is preferred: the wanted
 * size, grown (to a whole MiB) until the object fits in 10,000 parts. Unknown sizes get the wanted
 * size, which then caps the object at 10,000 × that.
 *
 * @example
 * partSizeFor(100 * 1024 ** 3, 8 * 1024 ** 2); // 11 MiB: 9,310 parts instead of 12,800
 */
export function partSizeFor(sizeBytes: number | undefined, wantedBytes: number): number {
  if (!Number.isSafeInteger(wantedBytes) || wantedBytes < 1) {
    throw new DriverInputError('partSizeBytes must be a positive integer', {
      context: { field: 'partSizeBytes' },
    });
  }
  if (sizeBytes === undefined) return wantedBytes;
  const needed = Math.ceil(sizeBytes / S3_LIMITS.maxParts);
  // Whole MiB parts keep the ranges readable in logs and URLs; it costs at most 1 MiB per part.
  return needed <= wantedBytes ? wantedBytes : Math.ceil(needed / MiB) * MiB;
}

/**
 * Checks an object size S3 can hold (0 to 5 TiB), as an input error naming `field`.
 *
 * @example
 * assertObjectSize(options.contentLength, 'contentLength');
 */
export function assertObjectSize(
  sizeBytes: unknown,
  field: string,
  allowZero = true,
): asserts sizeBytes is number {
  if (
    typeof sizeBytes !== 'number' ||
    !Number.isSafeInteger(sizeBytes) ||
    sizeBytes < (allowZero ? 0 : 1) ||
    sizeBytes > S3_LIMITS.maxObjectBytes
  ) {
    throw new DriverInputError(
      `${field} must be an integer from ${allowZero ? 0 : 1} to ${S3_LIMITS.maxObjectBytes} (5 TiB)`,
      { context: { field } },
    );
  }
}

/**
 * How a streamed write is cut: part size and how many parts are in flight. Memory is about
 * `(queueSize + 1) × partSize` (lib-storage buffers each part in flight plus the one it fills), so
 * the queue shrinks as parts grow to stay near `memoryBudgetBytes`, never below one or above four.
 *
 * @example
 * planStreamUpload(100 * 1024 ** 3, 8 * 1024 ** 2, 256 * 1024 ** 2); // { partSize: 11 MiB, queueSize: 4 }
 */
export function planStreamUpload(
  contentLength: number | undefined,
  minPartBytes: number,
  memoryBudgetBytes: number,
): { partSize: number; queueSize: number } {
  const partSize = partSizeFor(contentLength, Math.max(minPartBytes, S3_LIMITS.minPartBytes));
  const queueSize = Math.max(1, Math.min(4, Math.floor(memoryBudgetBytes / partSize)));
  return { partSize, queueSize };
}

/**
 * The part size of a client (presigned) upload: the wanted size grown to fit 10,000 parts.
 * Refuses part sizes S3 would refuse: under 5 MiB when there is more than one part, over 5 GiB.
 *
 * @example
 * uploadPartSize(11 * 1024 ** 2, 5 * 1024 ** 2); // 5 MiB: parts of 5, 5 and 1 MiB
 */
export function uploadPartSize(sizeBytes: number, wantedBytes: number): number {
  const partSize = partSizeFor(sizeBytes, wantedBytes);
  if (partSize > S3_LIMITS.maxPartBytes) {
    throw new DriverInputError('partSizeBytes must be at most 5 GiB', {
      context: { field: 'partSizeBytes' },
    });
  }
  if (partSize < S3_LIMITS.minPartBytes && sizeBytes > partSize) {
    throw new DriverInputError('partSizeBytes must be at least 5 MiB (only the last part may be smaller)', {
      context: { field: 'partSizeBytes' },
    });
  }
  return partSize;
}

/**
 * The byte range of each part of an object of `sizeBytes` cut in `partSize` parts.
 *
 * @example
 * planParts(11, 5); // [{ partNumber: 1, offset: 0, sizeBytes: 5 }, {2, 5, 5}, {3, 10, 1}]
 */
export function planParts(
  sizeBytes: number,
  partSize: number,
): { partNumber: number; offset: number; sizeBytes: number }[] {
  const count = Math.max(1, Math.ceil(sizeBytes / partSize));
  if (count > S3_LIMITS.maxParts) {
    throw new DriverInputError(`${count} parts exceed S3's ${S3_LIMITS.maxParts}`, {
      context: { field: 'partSizeBytes' },
    });
  }
  return Array.from({ length: count }, (_, i) => ({
    partNumber: i + 1,
    offset: i * partSize,
    sizeBytes: Math.min(partSize, sizeBytes - i * partSize),
  }));
}

/**
 * Checks the part list of a completion and returns it sorted by part number: numbers must be
 * exactly 1..N (no gap, no duplicate, N ≤ 10,000) and every ETag a non-empty string. S3 would
 * refuse a gap only after the request; a duplicate or a missing part is caught here with a clear
 * message instead (and s3rver 3.7 crashes on a part that was never uploaded).
 *
 * @example
 * validateCompletedParts([{ partNumber: 2, etag: '"b"' }, { partNumber: 1, etag: '"a"' }]); // sorted 1, 2
 */
export function validateCompletedParts(parts: unknown): CompletedPart[] {
  if (!Array.isArray(parts) || parts.length === 0) {
    throw new DriverInputError('parts must be a non-empty array', { context: { field: 'parts' } });
  }
  if (parts.length > S3_LIMITS.maxParts) {
    throw new DriverInputError(`at most ${S3_LIMITS.maxParts} parts`, { context: { field: 'parts' } });
  }
  for (const [i, part] of parts.entries()) {
    const p = part as Partial<CompletedPart> | null;
    if (!p || !Number.isSafeInteger(p.partNumber) || typeof p.etag !== 'string' || p.etag.trim() === '') {
      throw new DriverInputError(`parts[${i}] must be { partNumber: integer, etag: non-empty string }`, {
        context: { field: `parts.${i}` },
      });
    }
  }
  const sorted = [...(parts as CompletedPart[])].sort((a, b) => a.partNumber - b.partNumber);
  for (const [i, part] of sorted.entries()) {
    if (part.partNumber !== i + 1) {
      const problem =
        part.partNumber === i ? `part ${part.partNumber} is listed twice` : `part ${i + 1} is missing`;
      throw new DriverInputError(`parts must be numbered 1..${sorted.length}: ${problem}`, {
        context: { field: 'parts' },
      });
    }
  }
  return sorted;
}

const UPLOAD_ID = /^[A-Za-z0-9._~+/=-]{1,1024}$/;

/**
 * Checks an upload id before it goes into a URL or a request.
 *
 * @example
 * assertUploadId(options.uploadId);
 */
export function assertUploadId(uploadId: unknown): asserts uploadId is string {
  if (typeof uploadId !== 'string' || !UPLOAD_ID.test(uploadId)) {
    throw new DriverInputError('uploadId must be an S3 upload id', { context: { field: 'uploadId' } });
  }
}

/**
 * The ETag S3 gives an object assembled from parts with these ETags (MD5 of the concatenated part
 * MD5s, then `-N`), or `undefined` when a part ETag is not an MD5 (e.g. SSE-KMS).
 *
 * @example
 * multipartEtag(['"a54357aff0632cce46d942af68356b38"']); // '"…-1"'
 */
export function multipartEtag(partEtags: string[]): string | undefined {
  const raw: Buffer[] = [];
  for (const etag of partEtags) {
    const hex = etag.replace(/"/g, '');
    if (!/^[0-9a-f]{32}$/i.test(hex)) return undefined;
    raw.push(Buffer.from(hex, 'hex'));
  }
  return `"${createHash('md5').update(Buffer.concat(raw)).digest('hex')}-${partEtags.length}"`;
}
