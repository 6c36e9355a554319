import { type DynamoDBDocumentClient, UpdateCommand } from '@aws-sdk/lib-dynamodb';
import { DynamoRepository } from '../../functions/adapters/aws/dynamo-repository';
import { UnavailableError } from '../../functions/core/errors';
import type { ChunkIndex, Clock } from '../../functions/core/ports';
import { STALE_CLAIM_MS } from '../../functions/core/ports';
import { freshTable } from '../support/integration';

let chunks: ChunkIndex;
let doc: DynamoDBDocumentClient;
let tableName: string;
let now = new Date('2026-01-01T00:00:00.000Z');
const clock: Clock = { now: () => now };
const h = (n: number) => n.toString(16).padStart(64, '0');

beforeAll(async () => {
  ({ doc, tableName } = await freshTable('chunks'));
  chunks = new DynamoRepository({ tableName, client: doc, clock }).chunks;
});

describe('DynamoChunkIndex on DynamoDB Local', () => {
  it('pins idempotently, reports unstored chunks until they are marked stored', async () => {
    const first = await chunks.pin('img-1', [h(1), h(2), h(2)], 'snap-a');
    expect(first.unstored.sort()).toEqual([h(1), h(2)]);
    await chunks.markStored('img-1', [h(1)]);
    const again = await chunks.pin('img-1', [h(1), h(2)], 'snap-a');
    expect(again.unstored).toEqual([h(2)]);
    expect(await chunks.holders('img-1', h(1))).toEqual({ holders: ['snap-a'], stored: true });
  });

  it('tells verified, unverified (stored before checksums) and corrupt-marked chunks apart', async () => {
    await chunks.pin('img-v', [h(1), h(2), h(3)], 'snap-a');
    await chunks.markStored('img-v', [h(1), h(2), h(3)]);
    expect(await chunks.pin('img-v', [h(1), h(2), h(3)], 'snap-a')).toEqual({
      unstored: [],
      corrupt: [],
      unverified: [],
    });
    // An entry written before verified presence was recorded: stored, but not verified.
    await doc.send(
      new UpdateCommand({
        TableName: tableName,
        Key: { pk: `CHUNK#img-v#${h(2)}`, sk: 'META' },
        UpdateExpression: 'REMOVE isVerified, storedAt',
      }),
    );
    const [entry1] = (await chunks.scanPage('img-v', { limit: 100 })).entries.filter((e) => e.hash === h(1));
    expect(entry1).toMatchObject({ stored: true, verified: true, holders: ['snap-a'] });
    // A verify job marks h(1) corrupt, conditional on the entry it read; a stale read changes nothing.
    expect(
      await chunks.markCorrupt('img-v', h(1), { jobId: 'job-v', reason: 'corrupt', storedAt: 'then' }),
    ).toBe(false);
    expect(
      await chunks.markCorrupt('img-v', h(1), {
        jobId: 'job-v',
        reason: 'corrupt',
        storedAt: entry1!.storedAt!,
      }),
    ).toBe(true);
    expect(await chunks.markCorrupt('img-v', h(2), { jobId: 'job-v', reason: 'missing' })).toBe(true);
    // Marked once: a second mark finds it no longer stored.
    expect(await chunks.markCorrupt('img-v', h(2), { jobId: 'job-v', reason: 'missing' })).toBe(false);
    const pinned = await chunks.pin('img-v', [h(1), h(2), h(3)], 'snap-b');
    expect({ ...pinned, unstored: pinned.unstored.sort(), corrupt: pinned.corrupt.sort() }).toEqual({
      unstored: [h(1), h(2)],
      corrupt: [h(1), h(2)],
      unverified: [],
    });
    const marked = (await chunks.scanPage('img-v', { limit: 100 })).entries.find((e) => e.hash === h(1));
    expect(marked).toMatchObject({
      stored: false,
      verified: false,
      corrupt: { jobId: 'job-v', reason: 'corrupt' },
    });
    // Stored again (a backup re-uploaded it): verified, the mark gone.
    await chunks.markStored('img-v', [h(1), h(2)]);
    const again = (await chunks.scanPage('img-v', { limit: 100 })).entries.find((e) => e.hash === h(1));
    expect(again?.corrupt).toBeUndefined();
    expect(again).toMatchObject({ stored: true, verified: true, holders: ['snap-a', 'snap-b'] });
  });

  it('an unverified entry is reported as such by pin', async () => {
    await chunks.pin('img-u', [h(5)], 'snap-a');
    await chunks.markStored('img-u', [h(5)]);
    await doc.send(
      new UpdateCommand({
        TableName: tableName,
        Key: { pk: `CHUNK#img-u#${h(5)}`, sk: 'META' },
        UpdateExpression: 'REMOVE isVerified',
      }),
    );
    expect(await chunks.pin('img-u', [h(5)], 'snap-b')).toEqual({
      unstored: [],
      corrupt: [],
      unverified: [h(5)],
    });
    expect(await chunks.holders('img-u', h(5))).toEqual({ holders: ['snap-a', 'snap-b'], stored: true });
  });

  it('pages through one store with a cursor, each page at most its limit', async () => {
    const many = Array.from({ length: 37 }, (_, i) => h(5000 + i));
    await chunks.pin('img-p', many, 'snap-p');
    await chunks.pin('img-q', [h(9999)], 'snap-q');
    const seen: string[] = [];
    let cursor: string | undefined;
    let pages = 0;
    do {
      const page = await chunks.scanPage('img-p', { limit: 10, ...(cursor ? { cursor } : {}) });
      expect(page.entries.length).toBeLessThanOrEqual(10);
      seen.push(...page.entries.map((e) => e.hash));
      cursor = page.cursor;
      pages++;
    } while (cursor && pages < 1000);
    expect(seen.sort()).toEqual([...many].sort());
    await expect(chunks.scanPage('img-p', { limit: 10, cursor: 'not-a-cursor' })).rejects.toThrow();
  });

  it('keeps chunks per store apart', async () => {
    await chunks.pin('img-2', [h(1)], 'snap-z');
    expect(await chunks.holders('img-1', h(1))).toEqual({ holders: ['snap-a'], stored: true });
    expect(await chunks.holders('img-2', h(1))).toEqual({ holders: ['snap-z'], stored: false });
  });

  it('collects a chunk only when its last holder lets go, in any order', async () => {
    await chunks.pin('img-3', [h(10), h(11)], 'snap-1');
    await chunks.pin('img-3', [h(10)], 'snap-2');
    await chunks.markStored('img-3', [h(10), h(11)]);
    expect((await chunks.release('img-3', [h(10)], 'snap-2', { collect: true })).collectable).toEqual([]);
    const out = await chunks.release('img-3', [h(10), h(11)], 'snap-1', { collect: true });
    expect(out.collectable.sort()).toEqual([h(10), h(11)]);
    // Releasing twice is harmless and claims nothing new.
    expect((await chunks.release('img-3', [h(10)], 'snap-1', { collect: true })).collectable).toEqual([]);
    await chunks.forget('img-3', out.collectable);
    expect(await chunks.holders('img-3', h(10))).toBeUndefined();
  });

  it('release without collect leaves an unheld chunk in place for a retry to reuse', async () => {
    await chunks.pin('img-4', [h(20)], 'snap-1');
    await chunks.markStored('img-4', [h(20)]);
    expect((await chunks.release('img-4', [h(20)], 'snap-1', { collect: false })).collectable).toEqual([]);
    expect(await chunks.holders('img-4', h(20))).toEqual({ holders: [], stored: true });
    expect((await chunks.pin('img-4', [h(20)], 'snap-1')).unstored).toEqual([]);
  });

  it('a pin waits while a chunk is claimed, and takes over a stale claim (re-upload)', async () => {
    await chunks.pin('img-5', [h(30)], 'snap-1');
    await chunks.markStored('img-5', [h(30)]);
    const { collectable } = await chunks.release('img-5', [h(30)], 'snap-1', { collect: true });
    expect(collectable).toEqual([h(30)]);
    await expect(chunks.pin('img-5', [h(30)], 'snap-2')).rejects.toBeInstanceOf(UnavailableError);
    now = new Date(now.getTime() + STALE_CLAIM_MS + 1000);
    expect((await chunks.pin('img-5', [h(30)], 'snap-2')).unstored).toEqual([h(30)]);
    // The dead collector's forget no longer removes the taken-over chunk.
    await chunks.forget('img-5', [h(30)]);
    expect(await chunks.holders('img-5', h(30))).toEqual({ holders: ['snap-2'], stored: false });
  });

  it('a concurrent pin and collection never both win', async () => {
    for (let i = 0; i < 10; i++) {
      const hash = h(100 + i);
      await chunks.pin('img-6', [hash], 'old');
      await chunks.markStored('img-6', [hash]);
      const [released, pinned] = await Promise.allSettled([
        chunks.release('img-6', [hash], 'old', { collect: true }),
        chunks.pin('img-6', [hash], 'new'),
      ]);
      const claimed = released.status === 'fulfilled' && released.value.collectable.length === 1;
      if (claimed) {
        // Collected first: the pin must have failed (retry) rather than trust the object.
        expect(pinned.status).toBe('rejected');
      } else {
        expect(pinned.status).toBe('fulfilled');
        expect((await chunks.holders('img-6', hash))?.holders).toEqual(['new']);
      }
    }
  });

  it('handles many chunks at once (several transactions), and a claimed one among them', async () => {
    const many = Array.from({ length: 250 }, (_, i) => h(1000 + i));
    expect((await chunks.pin('img-7', many, 'snap-big')).unstored.sort()).toEqual([...many].sort());
    await chunks.markStored('img-7', many.slice(0, 240));
    expect((await chunks.pin('img-7', many, 'snap-big')).unstored.sort()).toEqual(many.slice(240).sort());
    await chunks.pin('img-7', many.slice(0, 10), 'snap-other');
    const released = await chunks.release('img-7', many, 'snap-big', { collect: true });
    expect(released.collectable.sort()).toEqual(many.slice(10).sort());
    await chunks.forget('img-7', released.collectable);
    // One chunk of the next big pin is being collected: the pin says to retry, the rest are held.
    const claimed = many[0] as string;
    await chunks.release('img-7', [claimed], 'snap-other', { collect: true });
    await expect(chunks.pin('img-7', many.slice(0, 120), 'snap-next')).rejects.toBeInstanceOf(
      UnavailableError,
    );
    expect((await chunks.holders('img-7', many[5] as string))?.holders).toEqual(['snap-next', 'snap-other']);
  });
});
