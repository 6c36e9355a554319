import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { sha256Base64, sha256Hex } from '../../../drivers/sdk/backup-manifest.js';
import { ObjectNotFoundError } from '../../../drivers/sdk/errors.js';
import { createTestDriverContext } from '../../../drivers/sdk/testing.js';
import type { ChunkEntry, ChunkPage } from '../../../functions/core/ports.js';
import {
  addToTally,
  affectedSnapshots,
  BackupVerify,
  inSample,
  type VerifyStep,
} from '../../../functions/core/services/backup-verify.js';
import { emptyTally, VERIFY_FINDINGS_KEPT, type VerifyPage } from '../../../functions/core/verify-options.js';

const sha = (text: string) => createHash('sha256').update(text).digest('hex');

describe('checksum encodings', () => {
  it('turns a hex sha256 into the base64 S3 carries, and back', () => {
    const hex = sha('');
    expect(sha256Base64(hex)).toBe('47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=');
    expect(sha256Hex(sha256Base64(hex))).toBe(hex);
    expect(sha256Hex(undefined)).toBeUndefined();
    expect(sha256Hex('abc')).toBeUndefined();
    expect(sha256Hex(`${sha256Base64(hex)}-2`)).toBeUndefined();
    expect(() => sha256Base64('xyz')).toThrow();
  });
});

describe('inSample', () => {
  const hashes = Array.from({ length: 4000 }, (_, i) => sha(`chunk-${i}`));

  it('takes everything at 1, about the fraction below, the same choice on every call', () => {
    expect(hashes.every((h) => inSample('job-a', h, 1))).toBe(true);
    const picked = hashes.filter((h) => inSample('job-a', h, 0.25));
    expect(picked.length).toBeGreaterThan(800);
    expect(picked.length).toBeLessThan(1200);
    expect(hashes.filter((h) => inSample('job-a', h, 0.25))).toEqual(picked);
  });

  it('draws another sample for another job', () => {
    const a = new Set(hashes.filter((h) => inSample('job-a', h, 0.25)));
    const b = hashes.filter((h) => inSample('job-b', h, 0.25));
    const common = b.filter((h) => a.has(h)).length;
    // Independent draws share about a quarter of a quarter.
    expect(common).toBeLessThan(b.length / 2);
  });
});

describe('tally', () => {
  const entry = (hash: string, holders: string[]): ChunkEntry => ({ hash, holders, stored: true });

  it('counts every outcome and names damaged chunks with the snapshots holding them', () => {
    const next = addToTally(emptyTally(), {
      seen: 5,
      outcomes: [
        { entry: entry(sha('a'), ['snap-2', 'job-9', 'snap-1']), outcome: 'corrupt' },
        { entry: entry(sha('b'), []), outcome: 'ok' },
        { entry: entry(sha('c'), ['snap-3']), outcome: 'missing' },
        { entry: entry(sha('d'), ['snap-3']), outcome: 'changed' },
      ],
    });
    expect(next).toMatchObject({ seen: 5, checked: 4, ok: 1, corrupt: 1, missing: 1, changed: 1, pages: 1 });
    expect(next.findings).toEqual([
      {
        hash: sha('a'),
        path: `backups/chunks/${sha('a').slice(0, 2)}/${sha('a')}`,
        reason: 'corrupt',
        snapshots: ['snap-1', 'snap-2'],
      },
      {
        hash: sha('c'),
        path: `backups/chunks/${sha('c').slice(0, 2)}/${sha('c')}`,
        reason: 'missing',
        snapshots: ['snap-3'],
      },
    ]);
    expect(affectedSnapshots(['job-1', 'snap-b', 'snap-a'])).toEqual(['snap-a', 'snap-b']);
  });

  it('keeps at most the findings it may, and the counts exact', () => {
    const outcomes = Array.from({ length: VERIFY_FINDINGS_KEPT + 7 }, (_, i) => ({
      entry: entry(sha(`x${i}`), []),
      outcome: 'corrupt' as const,
    }));
    const next = addToTally(emptyTally(), { seen: outcomes.length, outcomes });
    expect(next.corrupt).toBe(VERIFY_FINDINGS_KEPT + 7);
    expect(next.findings).toHaveLength(VERIFY_FINDINGS_KEPT);
  });
});

/**
 * BackupVerify.verifyPage over an in-memory chunk index and store: pages are bounded, the cursor
 * carries on, damaged chunks are marked once, and a page run again after it marked them counts
 * them again without reading them.
 */
describe('verifyPage', () => {
  const good = Array.from({ length: 10 }, (_, i) => `chunk ${i}`);
  const bodies = new Map<string, Buffer>(good.map((text) => [sha(text), Buffer.from(text)]));
  const hashes = [...bodies.keys()].sort();
  const [rotten, gone] = [hashes[3]!, hashes[7]!];

  function world() {
    const objects = new Map(bodies);
    objects.set(rotten, Buffer.from('other bytes'));
    objects.delete(gone);
    const entries = new Map<string, ChunkEntry>(
      hashes.map((hash) => [hash, { hash, holders: ['snap-1'], stored: true, storedAt: 't0' }]),
    );
    const reads: string[] = [];
    const marks: string[] = [];
    let ended: Record<string, unknown> | undefined;
    const chunks = {
      scanPage: async (_store: string, o: { cursor?: string; limit: number }): Promise<ChunkPage> => {
        const start = o.cursor ? Number(o.cursor) : 0;
        // Pages of at most 3 items, as a Scan's page may be smaller than its limit.
        const end = Math.min(start + Math.min(o.limit, 3), hashes.length);
        const page = hashes.slice(start, end).map((h) => ({ ...entries.get(h)! }));
        return { entries: page, ...(end < hashes.length ? { cursor: String(end) } : {}) };
      },
      markCorrupt: async (
        _store: string,
        hash: string,
        m: { jobId: string; reason: 'corrupt' | 'missing'; storedAt?: string },
      ) => {
        const e = entries.get(hash)!;
        if (!e.stored || e.storedAt !== m.storedAt) return false;
        marks.push(hash);
        entries.set(hash, { ...e, stored: false, corrupt: { jobId: m.jobId, reason: m.reason, at: 'now' } });
        return true;
      },
    };
    const driver = {
      readStream: async ({ object }: { object: { path: string } }) => {
        const hash = object.path.split('/').pop()!;
        reads.push(hash);
        const bytes = objects.get(hash);
        if (!bytes) throw new ObjectNotFoundError('gone');
        return { body: Readable.from([bytes]), sizeBytes: bytes.length, totalSizeBytes: bytes.length };
      },
    };
    const store = { id: 'img-1', role: 'image', status: 'Up', provider: 's3', details: {}, scope: {} };
    const verify = new BackupVerify({
      repo: { chunks, require: async () => store } as never,
      registry: {
        get: () => ({ driver: new Proxy(driver, { get: (t, k) => (t as never)[k] ?? (() => undefined) }) }),
      } as never,
      workflows: {} as never,
      jobs: {
        get: async () => ({ state: ended ? 'succeeded' : 'running' }),
        progress: async () => undefined,
        succeed: async (_id: string, result: Record<string, unknown>) => {
          ended = result;
        },
      } as never,
      driverContext: () => createTestDriverContext({ jobId: 'job-v' }),
      pageChunks: 4,
    });
    return { verify, reads, marks, entries, result: () => ended };
  }

  async function runAll(v: ReturnType<typeof world>, options: VerifyStep['options'] = {}) {
    let page: VerifyPage = { done: false };
    let pages = 0;
    while (!page.done) {
      page = await v.verify.verifyPage({ jobId: 'job-v', storeId: 'img-1', options, page });
      pages++;
      expect(pages).toBeLessThan(50);
    }
    return { page, pages };
  }

  it('walks the index page by page, reads each chunk once and marks the damaged ones', async () => {
    const v = world();
    const { pages } = await runAll(v);
    expect(pages).toBe(3); // 10 entries, at most 4 a page
    expect(v.reads.sort()).toEqual(hashes);
    expect(v.marks.sort()).toEqual([rotten, gone].sort());
    expect(v.result()).toMatchObject({
      checked: 10,
      ok: 8,
      corrupt: 1,
      missing: 1,
      corruptChunks: [{ hash: rotten, reason: 'corrupt', snapshots: ['snap-1'] }],
      missingChunks: [{ hash: gone, reason: 'missing' }],
      affectedSnapshots: ['snap-1'],
    });
  });

  it('a page run again after it marked a chunk counts it again, without reading or marking it twice', async () => {
    const v = world();
    const step = { jobId: 'job-v', storeId: 'img-1', options: {} };
    const first = await v.verify.verifyPage({ ...step, page: { done: false } });
    expect(first.tally).toMatchObject({ checked: 4, corrupt: 1 });
    // The same page once more (as a retry of a run that died before answering).
    v.reads.length = 0;
    const again = await v.verify.verifyPage({ ...step, page: { done: false } });
    expect(again).toEqual(first);
    expect(v.reads).not.toContain(rotten);
    expect(v.marks).toEqual([rotten]);
  });

  it('stops at maxChunks, and reads only its sample', async () => {
    const bounded = world();
    await runAll(bounded, { maxChunks: 3 });
    expect(bounded.reads).toHaveLength(3);
    expect(bounded.result()).toMatchObject({ checked: 3, maxChunks: 3 });
    const sampled = world();
    await runAll(sampled, { sample: 0.5 });
    const expected = hashes.filter((h) => inSample('job-v', h, 0.5));
    expect(sampled.reads.sort()).toEqual(expected);
    expect(sampled.result()).toMatchObject({ checked: expected.length, sample: 0.5 });
  });

  it('skips what is not stored or is being collected', async () => {
    const v = world();
    v.entries.set(hashes[0]!, { hash: hashes[0]!, holders: [], stored: false });
    v.entries.set(hashes[1]!, { hash: hashes[1]!, holders: [], stored: true, claimedAt: 'now' });
    await runAll(v);
    expect(v.reads).not.toContain(hashes[0]);
    expect(v.reads).not.toContain(hashes[1]);
    expect(v.result()).toMatchObject({ checked: 8, indexEntriesSeen: 10 });
  });
});
