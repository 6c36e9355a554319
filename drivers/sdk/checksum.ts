/**
 * Checksums of templates and ISOs as CloudStack users write them, and a hasher that computes them
 * while the bytes stream past (a template is never buffered or written to a temporary file).
 *
 * Two spellings are accepted: CloudStack's `{ALGO}hex` (`{SHA-256}9f86…`, `{md5}…`), and bare hex
 * whose length names the algorithm (32 md5, 40 sha1, 64 sha256, 128 sha512), which is what most
 * download pages publish.
 */
import { createHash, type Hash } from 'node:crypto';
import { Transform } from 'node:stream';
import { DriverError, DriverInputError } from './errors.js';

/** Digest algorithms a checksum may name. */
export const ChecksumAlgorithm = { Md5: 'md5', Sha1: 'sha1', Sha256: 'sha256', Sha512: 'sha512' } as const;
export type ChecksumAlgorithm = (typeof ChecksumAlgorithm)[keyof typeof ChecksumAlgorithm];

/**
 * A parsed checksum: the algorithm and its digest in lower-case hex.
 *
 * @example
 * const c: Checksum = { algorithm: 'sha256', hex: 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad' };
 */
export interface Checksum {
  algorithm: ChecksumAlgorithm;
  hex: string;
}

/**
 * Hex digests computed by a {@link MultiHasher}: sha256 always (Strata records it for every
 * object), plus whichever other algorithms were asked for.
 *
 * @example
 * const d: ChecksumDigest = { sha256: 'ba78…', md5: '9001…' };
 */
export type ChecksumDigest = { sha256: string } & Partial<Record<ChecksumAlgorithm, string>>;

const HEX_LENGTH: Record<ChecksumAlgorithm, number> = { md5: 32, sha1: 40, sha256: 64, sha512: 128 };
const BY_HEX_LENGTH = new Map<number, ChecksumAlgorithm>(
  Object.entries(HEX_LENGTH).map(([algorithm, length]) => [length, algorithm as ChecksumAlgorithm]),
);
const ALGORITHMS = new Set<string>(Object.values(ChecksumAlgorithm));
const BRACED = /^\{([A-Za-z0-9-]{1,16})\}([0-9A-Fa-f]*)$/;
const HEX = /^[0-9A-Fa-f]+$/;

function invalid(message: string): DriverInputError {
  return new DriverInputError(message, { context: { field: 'checksum' } });
}

/**
 * Parses a checksum written as `{ALGO}hex` (algorithm case-insensitive, with or without the dash
 * Java uses: `{SHA-256}`, `{sha256}`) or as bare hex whose length implies the algorithm. Throws
 * {@link DriverInputError} (field `checksum`) for anything else, including a digest whose length
 * does not match its named algorithm.
 *
 * @example
 * parseChecksum('{SHA-256}BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD');
 * // { algorithm: 'sha256', hex: 'ba7816bf…15ad' }
 * parseChecksum('900150983cd24fb0d6963f7d28e17f72'); // { algorithm: 'md5', hex: '9001…7f72' }
 */
export function parseChecksum(text: string): Checksum {
  if (typeof text !== 'string') throw invalid('checksum must be a string');
  const trimmed = text.trim();
  const braced = BRACED.exec(trimmed);
  if (braced) {
    const name = braced[1]!.toLowerCase().replaceAll('-', '');
    if (!ALGORITHMS.has(name)) throw invalid(`unsupported checksum algorithm '${braced[1]}'`);
    const algorithm = name as ChecksumAlgorithm;
    const hex = braced[2]!.toLowerCase();
    if (hex.length !== HEX_LENGTH[algorithm]) {
      throw invalid(`a ${algorithm} checksum has ${HEX_LENGTH[algorithm]} hex digits, got ${hex.length}`);
    }
    return { algorithm, hex };
  }
  if (!HEX.test(trimmed)) throw invalid('checksum must be {ALGORITHM}hex or bare hex');
  const algorithm = BY_HEX_LENGTH.get(trimmed.length);
  if (!algorithm) {
    throw invalid(`cannot tell the algorithm of a ${trimmed.length}-digit checksum (use {ALGORITHM}hex)`);
  }
  return { algorithm, hex: trimmed.toLowerCase() };
}

/**
 * Writes a checksum in the canonical `{algorithm}hex` form, lower case, which
 * {@link parseChecksum} reads back unchanged.
 *
 * @example
 * formatChecksum({ algorithm: 'sha256', hex: 'ba78…15ad' }); // '{sha256}ba78…15ad'
 */
export function formatChecksum(checksum: Checksum): string {
  return `{${checksum.algorithm}}${checksum.hex.toLowerCase()}`;
}

/** Options of a {@link MultiHasher}. */
export interface MultiHasherOptions {
  /** The checksum the stream should match; its algorithm is computed too, and {@link MultiHasher.verify} defaults to it. */
  expected?: Checksum | string;
  /** More algorithms to compute; sha256 is always computed. */
  algorithms?: readonly ChecksumAlgorithm[];
}

/**
 * Hashes a stream once for several algorithms: sha256 always, plus the expected checksum's
 * algorithm and any extra ones. Chunks are hashed as they come and never kept, so memory stays
 * constant whatever the template's size.
 *
 * @example
 * const hasher = new MultiHasher({ expected: '{md5}900150983cd24fb0d6963f7d28e17f72' });
 * await pipeline(download, hasher.createPassThrough(), upload);
 * if (!hasher.verify()) throw new DriverInputError('checksum mismatch');
 * hasher.digest(); // { sha256: 'ba78…', md5: '9001…' }
 */
export class MultiHasher {
  readonly expected: Checksum | undefined;
  private readonly hashes = new Map<ChecksumAlgorithm, Hash>();
  private result: ChecksumDigest | undefined;
  private bytes = 0;

  constructor(options: MultiHasherOptions = {}) {
    this.expected = typeof options.expected === 'string' ? parseChecksum(options.expected) : options.expected;
    const wanted = new Set<ChecksumAlgorithm>(['sha256', ...(options.algorithms ?? [])]);
    if (this.expected) wanted.add(this.expected.algorithm);
    for (const algorithm of wanted) {
      if (!ALGORITHMS.has(algorithm)) throw invalid(`unsupported checksum algorithm '${algorithm}'`);
      this.hashes.set(algorithm, createHash(algorithm));
    }
  }

  /** The algorithms being computed, sha256 first. */
  get algorithms(): ChecksumAlgorithm[] {
    return [...this.hashes.keys()];
  }

  /** Bytes hashed so far. */
  get bytesHashed(): number {
    return this.bytes;
  }

  /**
   * Feeds the next chunk. Chunks must come in stream order; the hasher keeps no reference to them.
   *
   * @example
   * for await (const chunk of body) hasher.update(chunk);
   */
  update(chunk: Uint8Array): this {
    if (this.result) {
      throw new DriverError('MultiHasher.update called after digest()', { code: 'HasherFinished' });
    }
    for (const hash of this.hashes.values()) hash.update(chunk);
    this.bytes += chunk.byteLength;
    return this;
  }

  /**
   * Finishes hashing and returns every digest in lower-case hex. Later calls return the same
   * result; {@link update} is refused from then on.
   *
   * @example
   * const { sha256 } = hasher.digest();
   */
  digest(): ChecksumDigest {
    if (!this.result) {
      const digests: Partial<Record<ChecksumAlgorithm, string>> = {};
      for (const [algorithm, hash] of this.hashes) digests[algorithm] = hash.digest('hex');
      this.result = digests as ChecksumDigest;
    }
    return { ...this.result };
  }

  /**
   * Whether the bytes match `expected` (the constructor's by default). Finishes hashing. Throws
   * {@link DriverInputError} when there is nothing to compare with or the algorithm was not
   * computed: asking too late for an algorithm is a caller bug, not a mismatch.
   *
   * @example
   * hasher.verify('{sha256}ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad'); // true
   */
  verify(expected: Checksum | string | undefined = this.expected): boolean {
    if (expected === undefined) throw invalid('no expected checksum to verify against');
    const checksum = typeof expected === 'string' ? parseChecksum(expected) : expected;
    const actual = this.digest()[checksum.algorithm];
    if (actual === undefined) {
      throw invalid(`${checksum.algorithm} was not computed; pass it to the MultiHasher up front`);
    }
    return actual === checksum.hex.toLowerCase();
  }

  /**
   * A transform stream that hashes every chunk and passes it on unchanged, for `pipeline()`.
   *
   * @example
   * await pipeline(response.body, hasher.createPassThrough(), s3UploadStream);
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
}
