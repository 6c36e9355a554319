import {
  GRANT_BASE_SECONDS,
  GRANT_FLOOR_BYTES_PER_SECOND,
  GRANT_MAX_SECONDS,
  grantFloorBytesPerSecond,
  hostGrantSeconds,
  lazyRenewAfterSeconds,
} from '../../../functions/core/grants.js';
import { withoutGrants } from '../../../functions/handlers/api/idempotency.js';

const MiB = 2 ** 20;
const GiB = 2 ** 30;

describe('host-step grant lifetimes', () => {
  it('gives a small document the base lifetime only', () => {
    expect(hostGrantSeconds()).toBe(15 * 60);
    expect(hostGrantSeconds(0)).toBe(GRANT_BASE_SECONDS);
    expect(hostGrantSeconds(4 * MiB)).toBe(GRANT_BASE_SECONDS + 1);
  });

  it('adds the time to move the bytes at 8 MiB/s, rounded up', () => {
    expect(GRANT_FLOOR_BYTES_PER_SECOND).toBe(8 * MiB);
    // 10 GiB at 8 MiB/s = 1280 s.
    expect(hostGrantSeconds(10 * GiB)).toBe(900 + 1280);
    expect(hostGrantSeconds(8 * MiB + 1)).toBe(900 + 2);
  });

  it('caps at 6 hours, the host deadline of a copy', () => {
    expect(GRANT_MAX_SECONDS).toBe(6 * 3600);
    expect(hostGrantSeconds(2 * 2 ** 40)).toBe(GRANT_MAX_SECONDS);
  });

  it('ignores sizes that are not a positive number', () => {
    expect(hostGrantSeconds(Number.NaN)).toBe(GRANT_BASE_SECONDS);
    expect(hostGrantSeconds(-5)).toBe(GRANT_BASE_SECONDS);
  });

  it('takes a configured floor rate, and falls back on a bad one', () => {
    expect(grantFloorBytesPerSecond({ STRATA_GRANT_FLOOR_MIB_S: '2' })).toBe(2 * MiB);
    expect(grantFloorBytesPerSecond({ STRATA_GRANT_FLOOR_MIB_S: '0' })).toBe(8 * MiB);
    expect(grantFloorBytesPerSecond({ STRATA_GRANT_FLOOR_MIB_S: 'fast' })).toBe(8 * MiB);
    expect(hostGrantSeconds(10 * GiB, 2 * MiB)).toBe(900 + 5120);
  });
});

describe('idempotency records without grants', () => {
  const answer = (body: unknown) => ({ statusCode: 201, body: JSON.stringify(body), headers: {} });

  it('sets every url to null, at any depth, and says so', () => {
    const kept = withoutGrants(
      answer({
        template: { id: 'tpl-1', url: 'https://example.com/x?X-Amz-Signature=abc' },
        upload: {
          uploadId: 'u',
          parts: [
            { partNumber: 1, url: 'https://s3/x?X-Amz-Signature=1' },
            { partNumber: 2, url: 'https://s3/x?X-Amz-Signature=2' },
          ],
        },
      }),
    );
    expect(JSON.parse(kept.body)).toEqual({
      template: { id: 'tpl-1', url: null },
      upload: {
        uploadId: 'u',
        parts: [
          { partNumber: 1, url: null },
          { partNumber: 2, url: null },
        ],
      },
      grantsOmitted: true,
    });
    expect(kept.body).not.toMatch(/X-Amz-Signature/);
    expect(kept.statusCode).toBe(201);
  });

  it('keeps an answer without urls (an error) as it is', () => {
    const error = answer({ error: { code: 'Conflict', message: 'no open upload' } });
    expect(withoutGrants(error)).toEqual(error);
  });

  it('never keeps a signed answer it cannot strip', () => {
    const odd = { statusCode: 200, body: '["https://s3/x?X-Amz-Signature=1"]', headers: {} };
    expect(withoutGrants(odd).statusCode).toBe(500);
  });
});

describe('lazyRenewAfterSeconds', () => {
  it('renews a lazy restore list at half its lifetime unless configured', () => {
    expect(lazyRenewAfterSeconds(3600, {})).toBe(1800);
    expect(lazyRenewAfterSeconds(GRANT_MAX_SECONDS, {})).toBe(GRANT_MAX_SECONDS / 2);
    expect(lazyRenewAfterSeconds(3600, { STRATA_LAZY_RENEW_SECONDS: '60' })).toBe(60);
    for (const bad of ['0', '-5', 'soon', ''])
      expect(lazyRenewAfterSeconds(3600, { STRATA_LAZY_RENEW_SECONDS: bad })).toBe(1800);
  });
});
