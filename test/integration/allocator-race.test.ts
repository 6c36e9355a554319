/**
 * The race for the last space, on DynamoDB Local: the reservation's bound is checked by the table,
 * so of requests planned from the same (stale) read, exactly those that fit win.
 */
import { DynamoRepository } from '../../functions/adapters/aws/dynamo-repository';
import { capacityLimits, planPlacement, releaseWrite, reserve } from '../../functions/core/allocator';
import { UnprocessableError } from '../../functions/core/errors';
import type { DataStore } from '../../functions/core/model';
import { freshTable } from '../support/integration';

const GiB = 1024 ** 3;

let repo: DynamoRepository;

beforeAll(async () => {
  const { doc, tableName } = await freshTable('alloc');
  repo = new DynamoRepository({ tableName, client: doc });
});

let seq = 0;
/** 100 GiB × 1 × 0.5: 50 GiB placeable. */
async function createStore(overrides: Partial<DataStore> = {}): Promise<DataStore> {
  seq += 1;
  return repo.create('DataStore', {
    id: `store-${seq}`,
    name: `s${seq}`,
    provider: 'nfs',
    role: 'primary',
    scope: { type: 'zone', zoneId: 'z1' },
    details: {},
    capacityBytes: 100 * GiB,
    overprovisioning: 1,
    disableThreshold: 0.5,
    tags: [],
    status: 'Up',
    allocatedBytes: 0,
    usedBytes: 0,
    ...overrides,
  });
}

async function allocated(id: string): Promise<number> {
  return (await repo.require({ type: 'DataStore', id })).allocatedBytes;
}

/** Plans every request from the same read (as concurrent API calls would), then reserves all at once. */
async function race(stores: DataStore[], count: number, sizeBytes: number) {
  const placements = Array.from({ length: count }, () => planPlacement(stores, { zoneId: 'z1', sizeBytes }));
  return Promise.allSettled(placements.map((p) => reserve(repo, p, sizeBytes)));
}

describe('reserve on DynamoDB Local', () => {
  it('two requests for the last space of one store: exactly one gets it', async () => {
    const store = await createStore({ allocatedBytes: 40 * GiB }); // 10 GiB left

    const results = await race([store], 2, 10 * GiB);

    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
    const lost = results
      .filter((r): r is PromiseRejectedResult => r.status === 'rejected')
      .map((r) => r.reason);
    expect(lost).toEqual([expect.any(UnprocessableError)]);
    const error = lost[0] as UnprocessableError;
    expect(error.context.field).toBe('sizeBytes');
    expect(error.message).toMatch(/rejected: lost the race for the space/);
    expect(await allocated(store.id)).toBe(50 * GiB);
  });

  it('ten requests for room for three: exactly three win and the store ends exactly at its threshold', async () => {
    const store = await createStore({ allocatedBytes: 20 * GiB }); // 30 GiB left

    const results = await race([store], 10, 10 * GiB);

    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(3);
    expect(
      results.filter((r) => r.status === 'rejected').every((r) => r.reason instanceof UnprocessableError),
    ).toBe(true);
    expect(await allocated(store.id)).toBe(capacityLimits(store).thresholdBytes);
  });

  it('with two stores, the losers fall over to the second store', async () => {
    const first = await createStore({ allocatedBytes: 30 * GiB }); // 20 GiB left: room for two
    const second = await createStore({ allocatedBytes: 35 * GiB }); // 15 GiB left: room for one

    const results = await race([first, second], 4, 10 * GiB);

    const won = results.filter((r) => r.status === 'fulfilled').map((r) => r.value);
    expect(won).toHaveLength(3);
    expect(won.filter((w) => w.store.id === first.id)).toHaveLength(2);
    const fellOver = won.filter((w) => w.store.id === second.id);
    expect(fellOver).toHaveLength(1);
    // It was planned for the first store (more free space) and lost the race there.
    expect(fellOver[0]?.attempts.map((a) => [a.storeId, a.accepted])).toEqual([
      [first.id, false],
      [second.id, true],
    ]);
    expect(results.filter((r) => r.status === 'rejected')).toHaveLength(1);
    expect(await allocated(first.id)).toBe(50 * GiB);
    expect(await allocated(second.id)).toBe(45 * GiB);
  });

  it('release returns the capacity, so the next request fits again', async () => {
    const store = await createStore({ allocatedBytes: 40 * GiB });
    const { store: full } = await reserve(
      repo,
      planPlacement([store], { zoneId: 'z1', sizeBytes: 10 * GiB }),
      10 * GiB,
    );
    await expect(
      reserve(repo, planPlacement([full], { zoneId: 'z1', sizeBytes: 10 * GiB }), 10 * GiB),
    ).rejects.toBeInstanceOf(UnprocessableError);

    await repo.transact([releaseWrite(store.id, 10 * GiB)]);

    expect(await allocated(store.id)).toBe(40 * GiB);
    const fresh = await repo.require({ type: 'DataStore', id: store.id });
    await expect(
      reserve(repo, planPlacement([fresh], { zoneId: 'z1', sizeBytes: 10 * GiB }), 10 * GiB),
    ).resolves.toMatchObject({ store: { allocatedBytes: 50 * GiB } });
  });

  it('release never goes below zero: the bug surfaces as an error, and nothing in the transaction is written', async () => {
    const store = await createStore({ allocatedBytes: GiB });
    const other = await createStore({ allocatedBytes: 5 * GiB });

    await expect(
      repo.transact([releaseWrite(other.id, GiB), releaseWrite(store.id, 2 * GiB)]),
    ).rejects.toThrow(/would go below zero/);
    expect(await allocated(store.id)).toBe(GiB);
    expect(await allocated(other.id)).toBe(5 * GiB);
  });
});
