import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { formatChecksum, MultiHasher, parseChecksum } from '../../../drivers/sdk/checksum.js';
import { DriverError, DriverInputError } from '../../../drivers/sdk/errors.js';

// Published test vectors (FIPS 180 / RFC 1321), so a wrong wiring of node:crypto would fail here.
const ABC = {
  md5: '900150983cd24fb0d6963f7d28e17f72',
  sha1: 'a9993e364706816aba3e25717850c26c9cd0d89d',
  sha256: 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad',
  sha512:
    'ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f',
} as const;
const EMPTY = {
  md5: 'd41d8cd98f00b204e9800998ecf8427e',
  sha1: 'da39a3ee5e6b4b0d3255bfef95601890afd80709',
  sha256: 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
  sha512:
    'cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e',
} as const;
const algorithms = ['md5', 'sha1', 'sha256', 'sha512'] as const;

function expectInputError(fn: () => unknown): void {
  try {
    fn();
  } catch (error) {
    expect(error).toBeInstanceOf(DriverInputError);
    expect((error as DriverInputError).context).toMatchObject({ field: 'checksum' });
    return;
  }
  throw new Error('expected a DriverInputError');
}

describe('parseChecksum', () => {
  it.each(algorithms)('reads {%s}hex in any case and with the Java dash spelling', (algorithm) => {
    const hex = ABC[algorithm];
    const javaName = algorithm.replace(/^sha/, 'SHA-').toUpperCase();

    expect(parseChecksum(`{${algorithm}}${hex}`)).toEqual({ algorithm, hex });
    expect(parseChecksum(`{${javaName}}${hex.toUpperCase()}`)).toEqual({ algorithm, hex });
    expect(parseChecksum(`  {${algorithm.toUpperCase()}}${hex}\n`)).toEqual({ algorithm, hex });
  });

  it.each(algorithms)('infers %s from the length of bare hex', (algorithm) => {
    expect(parseChecksum(ABC[algorithm].toUpperCase())).toEqual({ algorithm, hex: ABC[algorithm] });
  });

  it.each([
    ['an empty string', ''],
    ['whitespace', '   '],
    ['an unknown algorithm', `{crc32}${ABC.md5}`],
    ['a digest of the wrong length for its algorithm', `{sha256}${ABC.md5}`],
    ['braces with no digest', '{md5}'],
    ['non-hex digits', 'z'.repeat(32)],
    ['bare hex of an unknown length', 'ab'.repeat(20).slice(0, 39)],
    ['a prefix style CloudStack does not use', `sha256:${ABC.sha256}`],
    ['trailing garbage', `{md5}${ABC.md5} extra`],
  ])('refuses %s', (_label, text) => {
    expectInputError(() => parseChecksum(text));
  });

  it('refuses a value that is not a string', () => {
    expectInputError(() => parseChecksum(42 as unknown as string));
  });
});

describe('formatChecksum', () => {
  it('writes {algorithm}hex in lower case, which parses back to the same checksum', () => {
    const text = formatChecksum({ algorithm: 'sha256', hex: ABC.sha256.toUpperCase() });

    expect(text).toBe(`{sha256}${ABC.sha256}`);
    expect(parseChecksum(text)).toEqual({ algorithm: 'sha256', hex: ABC.sha256 });
  });
});

describe('MultiHasher', () => {
  describe('digest', () => {
    it('computes sha256 alone when nothing else is asked for', () => {
      const hasher = new MultiHasher();

      hasher.update(Buffer.from('abc'));

      expect(hasher.digest()).toEqual({ sha256: ABC.sha256 });
      expect(hasher.algorithms).toEqual(['sha256']);
    });

    it('adds the expected checksum algorithm and extra algorithms, hashing each chunk once', () => {
      const hasher = new MultiHasher({ expected: `{md5}${ABC.md5}`, algorithms: ['sha1', 'sha512'] });

      hasher.update(Buffer.from('a')).update(Buffer.from('bc'));

      expect(hasher.digest()).toEqual(ABC);
      expect(hasher.bytesHashed).toBe(3);
    });

    it('gives the known digests of empty input', () => {
      const hasher = new MultiHasher({ algorithms: ['md5', 'sha1', 'sha512'] });

      expect(hasher.digest()).toEqual(EMPTY);
    });

    it('returns the same result when called again and refuses more data afterwards', () => {
      const hasher = new MultiHasher();
      hasher.update(Buffer.from('abc'));

      const first = hasher.digest();

      expect(hasher.digest()).toEqual(first);
      expect(() => hasher.update(Buffer.from('d'))).toThrow(DriverError);
    });

    it('gives the same digests however the stream is cut into chunks', () => {
      const data = Buffer.alloc(3 * 1024 * 1024 + 17);
      for (let i = 0; i < data.length; i++) data[i] = (i * 31 + (i >> 9)) & 0xff;
      const oneShot = new MultiHasher({ algorithms: ['md5', 'sha1', 'sha512'] });
      oneShot.update(data);
      const streamed = new MultiHasher({ algorithms: ['md5', 'sha1', 'sha512'] });

      let offset = 0;
      let step = 1;
      while (offset < data.length) {
        const size = Math.min(step, data.length - offset);
        streamed.update(data.subarray(offset, offset + size));
        offset += size;
        step = (step * 7 + 3) % 300_007; // varied sizes from 1 byte to ~300 KiB, deterministic
      }

      expect(streamed.digest()).toEqual(oneShot.digest());
      expect(streamed.bytesHashed).toBe(data.length);
    });
  });

  describe('verify', () => {
    it.each(algorithms)('accepts the right %s checksum and refuses a wrong one', (algorithm) => {
      const hasher = new MultiHasher({ expected: { algorithm, hex: ABC[algorithm] } });
      hasher.update(Buffer.from('abc'));

      expect(hasher.verify()).toBe(true);
      expect(hasher.verify({ algorithm, hex: EMPTY[algorithm] })).toBe(false);
    });

    it('compares case-insensitively with a checksum given as text', () => {
      const hasher = new MultiHasher();
      hasher.update(Buffer.from('abc'));

      expect(hasher.verify(`{SHA-256}${ABC.sha256.toUpperCase()}`)).toBe(true);
      expect(hasher.verify(ABC.sha256)).toBe(true);
    });

    it('refuses to verify an algorithm it did not compute, or with nothing to compare', () => {
      const hasher = new MultiHasher();
      hasher.update(Buffer.from('abc'));

      expectInputError(() => hasher.verify(ABC.md5));
      expectInputError(() => hasher.verify());
    });

    it('refuses a malformed expected checksum up front', () => {
      expectInputError(() => new MultiHasher({ expected: '{md5}nothex' }));
    });
  });

  describe('createPassThrough', () => {
    it('hashes a piped stream and passes every byte on unchanged', async () => {
      const hasher = new MultiHasher({ expected: ABC.sha1 });
      const received: Buffer[] = [];
      const sink = new Writable({
        write(chunk: Buffer, _encoding, callback) {
          received.push(chunk);
          callback();
        },
      });

      await pipeline(
        Readable.from([Buffer.from('a'), Buffer.from('b'), Buffer.from('c')]),
        hasher.createPassThrough(),
        sink,
      );

      expect(Buffer.concat(received).toString()).toBe('abc');
      expect(hasher.verify()).toBe(true);
      expect(hasher.digest()).toEqual({ sha256: ABC.sha256, sha1: ABC.sha1 });
    });
  });
});
