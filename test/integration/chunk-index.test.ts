import { DynamoRepository } from '../../functions/adapters/aws/dynamo-repository';
import { UnavailableError } from '../../functions/core/errors';
import type { ChunkIndex, Clock } from '../../functions/core/ports';
import { STALE_CLAIM_MS } from '../../functions/core/ports';
import { freshTable } from '../support/integration';

let chunks: ChunkIndex;
let now = new Date('2026-01-01T00:00:00.000Z');
const clock: Clock = { now: () => now };
const h = (n: number) => n.toString(16).padStart(64, '0');

beforeAll(async () => {
  const { doc, tableName } = await freshTable('chunks');
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
