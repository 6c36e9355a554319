import { installSource } from '../../../functions/core/services/volumes/template-cache.js';

const sha = 'ab'.repeat(32);

describe('installSource: what the image store proves about a template object', () => {
  it('vouches for the bytes only when the store recorded the same full-object SHA-256 for that ETag', () => {
    expect(installSource(sha, { sizeBytes: 10, etag: '"e1"', checksumSha256: sha })).toEqual({
      sourceSizeBytes: 10,
      sourceEtag: '"e1"',
      sourceVerified: true,
    });
    expect(
      installSource(sha.toUpperCase(), { sizeBytes: 10, etag: '"e1"', checksumSha256: sha }),
    ).toMatchObject({ sourceVerified: true });
  });

  it('pins the version but lets the host hash when the store has no checksum or another one', () => {
    // A multipart upload: the store keeps a checksum of part checksums, which statObject leaves out.
    expect(installSource(sha, { sizeBytes: 10, etag: '"e1-3"' })).toEqual({
      sourceSizeBytes: 10,
      sourceEtag: '"e1-3"',
    });
    expect(installSource(sha, { sizeBytes: 10, etag: '"e1"', checksumSha256: 'cd'.repeat(32) })).toEqual({
      sourceSizeBytes: 10,
      sourceEtag: '"e1"',
    });
  });

  it('proves nothing without an ETag to pin, a checksum to compare or a HEAD at all', () => {
    expect(installSource(sha, { sizeBytes: 10, checksumSha256: sha })).toEqual({ sourceSizeBytes: 10 });
    expect(installSource(undefined, { sizeBytes: 10, etag: '"e"', checksumSha256: sha })).toEqual({
      sourceSizeBytes: 10,
      sourceEtag: '"e"',
    });
    expect(installSource(sha, undefined)).toEqual({});
  });
});
