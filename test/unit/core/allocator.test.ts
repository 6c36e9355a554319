import {
  type Candidate,
  capacityLimits,
  formatGiB,
  type PlacementRequest,
  planPlacement,
  releaseWrite,
  reserve,
} from '../../../functions/core/allocator';
import { ConflictError, InputError, NotFoundError, UnprocessableError } from '../../../functions/core/errors';
import type { DataStore, DataStoreStatus } from '../../../functions/core/model';
import type { Repository } from '../../../functions/core/ports';

const GiB = 1024 ** 3;

/** 100 GiB × 2 overprovisioning × 0.85 threshold = 170 GiB placeable, nothing allocated. */
function store(id: string, overrides: Partial<DataStore> = {}): DataStore {
  return {
    id,
    name: `name-${id}`,
    provider: 'nfs',
    role: 'primary',
    scope: { type: 'zone', zoneId: 'z1' },
    details: {},
    capacityBytes: 100 * GiB,
    overprovisioning: 2,
    disableThreshold: 0.85,
    tags: [],
    status: 'Up',
    allocatedBytes: 0,
    usedBytes: 0,
    version: 1,
    createdAt: '',
    updatedAt: '',
    ...overrides,
  };
}

const THRESHOLD = 170 * GiB;

function request(overrides: Partial<PlacementRequest> = {}): PlacementRequest {
  return { zoneId: 'z1', sizeBytes: 10 * GiB, ...overrides };
}

function verdictOf(candidates: Candidate[], id: string): Candidate {
  const found = candidates.find((c) => c.storeId === id);
  if (!found) throw new Error(`no candidate ${id} in ${JSON.stringify(candidates)}`);
  return found;
}

describe('formatGiB / capacityLimits', () => {
  it('formats GiB with one decimal', () => {
    expect(formatGiB(10 * GiB)).toBe('10.0 GiB');
    expect(formatGiB(1.25 * GiB)).toBe('1.3 GiB');
    expect(formatGiB(0)).toBe('0.0 GiB');
  });

  it('limit = capacity × overprovisioning; threshold = limit × disableThreshold, in whole bytes', () => {
    expect(capacityLimits(store('s'))).toEqual({
      allocationLimitBytes: 200 * GiB,
      thresholdBytes: THRESHOLD,
    });
    // 1000 × 1.5 × 0.7 = 1050 exactly, though 0.7 and the product are inexact doubles.
    expect(
      capacityLimits({ capacityBytes: 1000, overprovisioning: 1.5, disableThreshold: 0.7 }).thresholdBytes,
    ).toBe(1050);
    expect(
      capacityLimits({ capacityBytes: 999, overprovisioning: 1, disableThreshold: 0.5 }).thresholdBytes,
    ).toBe(499);
  });
});

describe('planPlacement', () => {
  describe('a single store: accepted or rejected, with the reason', () => {
    const cases: {
      name: string;
      store: Partial<DataStore>;
      request?: Partial<PlacementRequest>;
      accepted: boolean;
      reason: RegExp;
    }[] = [
      // scope: zone
      { name: 'zone-scoped in the zone', store: {}, accepted: true, reason: /^chosen: / },
      {
        name: 'zone-scoped in another zone',
        store: { scope: { type: 'zone', zoneId: 'z2' } },
        accepted: false,
        reason: /^rejected: not in zone z1 \(it is in z2\)$/,
      },
      // scope: cluster
      {
        name: 'cluster-scoped, that cluster requested',
        store: { scope: { type: 'cluster', zoneId: 'z1', clusterId: 'c1' } },
        request: { clusterId: 'c1' },
        accepted: true,
        reason: /^chosen: /,
      },
      {
        name: 'cluster-scoped, another cluster requested',
        store: { scope: { type: 'cluster', zoneId: 'z1', clusterId: 'c2' } },
        request: { clusterId: 'c1' },
        accepted: false,
        reason: /^rejected: cluster-scoped to c2, the volume needs cluster c1$/,
      },
      {
        name: 'cluster-scoped, no cluster requested: any cluster in the zone will do',
        store: { scope: { type: 'cluster', zoneId: 'z1', clusterId: 'c2' } },
        accepted: true,
        reason: /^chosen: /,
      },
      {
        name: 'cluster-scoped in another zone',
        store: { scope: { type: 'cluster', zoneId: 'z2', clusterId: 'c1' } },
        request: { clusterId: 'c1' },
        accepted: false,
        reason: /^rejected: not in zone z1/,
      },
      {
        name: 'zone-scoped while a cluster is requested (every cluster reaches it)',
        store: {},
        request: { clusterId: 'c1' },
        accepted: true,
        reason: /^chosen: /,
      },
      // scope: host
      {
        name: 'host-scoped, that host requested',
        store: { scope: { type: 'host', zoneId: 'z1', clusterId: 'c1', hostId: 'h1' } },
        request: { hostId: 'h1' },
        accepted: true,
        reason: /^chosen: /,
      },
      {
        name: 'host-scoped, another host requested',
        store: { scope: { type: 'host', zoneId: 'z1', clusterId: 'c1', hostId: 'h2' } },
        request: { hostId: 'h1' },
        accepted: false,
        reason: /^rejected: host-local to h2, the volume is for host h1$/,
      },
      {
        name: 'host-scoped, no host requested',
        store: { scope: { type: 'host', zoneId: 'z1', clusterId: 'c1', hostId: 'h1' } },
        accepted: false,
        reason: /^rejected: host-local to h1 and no host was requested$/,
      },
      {
        name: 'host-scoped, no host requested but the operator pinned it',
        store: { scope: { type: 'host', zoneId: 'z1', clusterId: 'c1', hostId: 'h1' } },
        request: { storeId: 's' },
        accepted: true,
        reason: /^chosen: pinned by the operator/,
      },
      // status
      ...(
        [
          'Disabled',
          'Maintenance',
          'PrepareForMaintenance',
          'ErrorInMaintenance',
          'Error',
          'Initializing',
        ] as const
      ).map((status: DataStoreStatus) => ({
        name: `status ${status}`,
        store: { status },
        accepted: false,
        reason: new RegExp(`^rejected: status ${status}$`),
      })),
      {
        name: 'status Error carries its statusReason',
        store: { status: 'Error', statusReason: 'mount failed' },
        accepted: false,
        reason: /^rejected: status Error \(mount failed\)$/,
      },
      // tags
      {
        name: 'all requested tags present (and more)',
        store: { tags: ['ssd', 'fast', 'rack1'] },
        request: { tags: ['ssd', 'fast'] },
        accepted: true,
        reason: /^chosen: /,
      },
      {
        name: 'one requested tag missing',
        store: { tags: ['fast'] },
        request: { tags: ['ssd', 'fast'] },
        accepted: false,
        reason: /^rejected: missing tags ssd$/,
      },
      {
        name: 'several requested tags missing',
        store: {},
        request: { tags: ['ssd', 'fast'] },
        accepted: false,
        reason: /^rejected: missing tags ssd, fast$/,
      },
      {
        name: 'no tags requested: a tagged store is fine',
        store: { tags: ['ssd'] },
        accepted: true,
        reason: /^chosen: /,
      },
      // capacity, overprovisioning and threshold
      {
        name: 'exactly at the threshold',
        store: { allocatedBytes: THRESHOLD - 10 * GiB },
        accepted: true,
        reason: /^chosen: the only store with room \(0\.0 GiB left under the 85% threshold of 200\.0 GiB/,
      },
      {
        name: 'one byte over the threshold (rounding would hide it: the bytes are named)',
        store: { allocatedBytes: THRESHOLD - 10 * GiB + 1 },
        accepted: false,
        reason:
          /^rejected: needs 10\.0 GiB, only 10\.0 GiB left under the 85% threshold of 200\.0 GiB \(capacity 100\.0 GiB × overprovisioning 2\) — 1 bytes short$/,
      },
      {
        name: 'fits only thanks to overprovisioning (more than the raw capacity)',
        store: { allocatedBytes: 150 * GiB },
        accepted: true,
        reason: /^chosen: /,
      },
      {
        name: 'under the allocation limit but past the threshold',
        store: { allocatedBytes: 168 * GiB },
        accepted: false,
        reason:
          /^rejected: needs 10\.0 GiB, only 2\.0 GiB left under the 85% threshold of 200\.0 GiB \(capacity 100\.0 GiB × overprovisioning 2\)$/,
      },
      {
        name: 'already past the threshold (it was lowered): nothing left, not a negative amount',
        store: { allocatedBytes: 180 * GiB },
        accepted: false,
        reason: /^rejected: needs 10\.0 GiB, only 0\.0 GiB left under/,
      },
      {
        name: 'no overprovisioning, threshold 100%',
        store: { overprovisioning: 1, disableThreshold: 1, allocatedBytes: 95 * GiB },
        accepted: false,
        reason:
          /only 5\.0 GiB left under the 100% threshold of 100\.0 GiB \(capacity 100\.0 GiB × overprovisioning 1\)$/,
      },
      {
        name: 'unknown capacity',
        store: { capacityBytes: 0 },
        accepted: false,
        reason: /^rejected: capacity unknown/,
      },
      {
        name: 'misconfigured overprovisioning',
        store: { overprovisioning: 0 },
        accepted: false,
        reason: /^rejected: overprovisioning factor 0 is not positive$/,
      },
      {
        name: 'misconfigured threshold',
        store: { disableThreshold: 1.5 },
        accepted: false,
        reason: /^rejected: disable threshold 1\.5 is outside \(0, 1\]$/,
      },
      // several problems at once are all named
      {
        name: 'in maintenance, missing a tag and full',
        store: { status: 'Maintenance', allocatedBytes: 170 * GiB },
        request: { tags: ['ssd'] },
        accepted: false,
        reason: /^rejected: status Maintenance; missing tags ssd; needs 10\.0 GiB, only 0\.0 GiB left/,
      },
      // exclusion
      {
        name: 'excluded (e.g. the current store during migration)',
        store: {},
        request: { excludeStoreIds: ['s'] },
        accepted: false,
        reason: /^rejected: excluded by the request$/,
      },
      // pinned store: still checked
      {
        name: 'pinned store that fits',
        store: {},
        request: { storeId: 's' },
        accepted: true,
        reason: /^chosen: pinned by the operator \(160\.0 GiB left/,
      },
      {
        name: 'pinned store in maintenance',
        store: { status: 'Maintenance' },
        request: { storeId: 's' },
        accepted: false,
        reason: /^rejected: status Maintenance$/,
      },
      {
        name: 'pinned store that is excluded',
        store: {},
        request: { storeId: 's', excludeStoreIds: ['s'] },
        accepted: false,
        reason: /^rejected: excluded by the request$/,
      },
    ];

    it.each(cases)('$name', ({ store: overrides, request: req, accepted, reason }) => {
      const placement = planPlacement([store('s', overrides)], request(req));

      const verdict = verdictOf(placement.candidates, 's');
      expect(verdict.reason).toMatch(reason);
      expect(verdict.accepted).toBe(accepted);
      expect(placement.chosen?.storeId).toBe(accepted ? 's' : undefined);
      if (accepted) {
        expect(verdict.thresholdBytes).toBe(capacityLimits(store('s', overrides)).thresholdBytes);
        expect(verdict.freeBytesAfter).toBeGreaterThanOrEqual(0);
      } else {
        expect(verdict.freeBytesAfter).toBeUndefined();
        expect(verdict.thresholdBytes).toBeUndefined();
      }
    });
  });

  describe('choosing among several stores', () => {
    it('picks the most free space after placement, chosen first, then fallbacks, then rejected', () => {
      const stores = [
        store('full', { allocatedBytes: 165 * GiB }),
        store('half', { allocatedBytes: 85 * GiB }),
        store('empty'),
        store('down', { status: 'Disabled' }),
        store('bigger', {
          capacityBytes: 50 * GiB,
          overprovisioning: 4,
          allocatedBytes: 0,
          disableThreshold: 0.5,
        }), // 100 GiB
      ];

      const placement = planPlacement(stores, request());

      expect(placement.candidates.map((c) => c.storeId)).toEqual(['empty', 'bigger', 'half', 'full', 'down']);
      expect(placement.chosen).toBe(placement.candidates[0]);
      expect(placement.chosen?.reason).toMatch(/^chosen: most free space after placement \(160\.0 GiB left/);
      expect(placement.candidates.map((c) => c.freeBytesAfter)).toEqual([
        160 * GiB,
        90 * GiB,
        75 * GiB,
        undefined,
        undefined,
      ]);
      expect(verdictOf(placement.candidates, 'bigger').reason).toMatch(
        /^accepted: fallback 1, less free space/,
      );
      expect(verdictOf(placement.candidates, 'half').reason).toMatch(/^accepted: fallback 2, /);
      expect(verdictOf(placement.candidates, 'full').reason).toMatch(
        /^rejected: needs 10\.0 GiB, only 5\.0 GiB left/,
      );
      expect(verdictOf(placement.candidates, 'down').reason).toBe('rejected: status Disabled');
    });

    it('breaks ties on free space by fewest allocated bytes, then by id', () => {
      // Same free space after placement (160 GiB) from different capacity / allocation.
      const stores = [
        store('b'),
        store('busy', { capacityBytes: 200 * GiB, overprovisioning: 1, allocatedBytes: 0 }), // 170 GiB, 0 allocated
        store('a'),
        store('loaded', { capacityBytes: 150 * GiB, overprovisioning: 2, allocatedBytes: 85 * GiB }), // 255 − 85 = 170
      ];

      const placement = planPlacement(stores, request());

      expect(placement.candidates.map((c) => c.storeId)).toEqual(['a', 'b', 'busy', 'loaded']);
    });

    it('ignores image stores and lists every primary store', () => {
      const stores = [store('img', { role: 'image' }), store('p1'), store('p2', { status: 'Maintenance' })];

      const placement = planPlacement(stores, request());

      expect(placement.candidates.map((c) => c.storeId)).toEqual(['p1', 'p2']);
    });

    it('with a pinned store, every other store is rejected as not pinned, even an emptier one', () => {
      const stores = [store('empty'), store('pinned', { allocatedBytes: 100 * GiB })];

      const placement = planPlacement(stores, request({ storeId: 'pinned' }));

      expect(placement.chosen?.storeId).toBe('pinned');
      expect(verdictOf(placement.candidates, 'empty').reason).toBe('rejected: not the pinned store pinned');
    });

    it('a pinned store that does not exist, or is an image store, is explained', () => {
      expect(planPlacement([store('a')], request({ storeId: 'ghost' })).candidates).toEqual([
        { storeId: 'ghost', name: 'ghost', accepted: false, reason: 'rejected: no such store' },
        { storeId: 'a', name: 'name-a', accepted: false, reason: 'rejected: not the pinned store ghost' },
      ]);
      const image = planPlacement([store('img', { role: 'image' })], request({ storeId: 'img' }));
      expect(image.chosen).toBeUndefined();
      expect(image.candidates).toEqual([
        expect.objectContaining({
          storeId: 'img',
          reason: 'rejected: image store; volumes need a primary store',
        }),
      ]);
    });

    it('excluding the best store falls to the next', () => {
      const placement = planPlacement(
        [store('best'), store('next', { allocatedBytes: GiB })],
        request({ excludeStoreIds: ['best'] }),
      );

      expect(placement.chosen?.storeId).toBe('next');
    });

    it('nothing fits: no choice, and every store carries a reason naming its cause', () => {
      const stores = [
        store('other-zone', { scope: { type: 'zone', zoneId: 'z2' } }),
        store('maint', { status: 'Maintenance' }),
        store('untagged'),
        store('full', { allocatedBytes: THRESHOLD }),
        store('unknown', { capacityBytes: 0 }),
        store('other-cluster', { scope: { type: 'cluster', zoneId: 'z1', clusterId: 'c2' } }),
      ];

      const placement = planPlacement(stores, request({ clusterId: 'c1', tags: ['ssd'] }));

      expect(placement.chosen).toBeUndefined();
      expect(Object.fromEntries(placement.candidates.map((c) => [c.storeId, c.reason]))).toEqual({
        'other-zone': 'rejected: not in zone z1 (it is in z2)',
        maint: 'rejected: status Maintenance; missing tags ssd',
        untagged: 'rejected: missing tags ssd',
        full: expect.stringMatching(/^rejected: missing tags ssd; needs 10\.0 GiB, only 0\.0 GiB left/),
        unknown: 'rejected: missing tags ssd; capacity unknown (the store reports 0 bytes)',
        'other-cluster': 'rejected: cluster-scoped to c2, the volume needs cluster c1',
      });
      expect(placement.candidates.every((c) => !c.accepted)).toBe(true);
    });

    it('is pure: the stores are not changed', () => {
      const stores = [store('a'), store('b', { allocatedBytes: GiB })];
      const before = structuredClone(stores);

      planPlacement(stores, request());

      expect(stores).toEqual(before);
    });
  });

  it.each([0, -1, 1.5, Number.NaN])('refuses sizeBytes %p', (sizeBytes) => {
    expect(() => planPlacement([store('a')], request({ sizeBytes }))).toThrow(InputError);
  });
});

/** A repository holding stores in memory, with addToCounter's bound semantics; nothing else. */
function counterRepo(
  stores: DataStore[],
): Repository & { calls: { id: string; delta: number; max?: number }[] } {
  const byId = new Map(stores.map((s) => [s.id, structuredClone(s)]));
  const calls: { id: string; delta: number; max?: number }[] = [];
  const repo = {
    calls,
    async addToCounter(key: { id: string }, field: string, delta: number, options: { max?: number } = {}) {
      calls.push({ id: key.id, delta, ...(options.max !== undefined ? { max: options.max } : {}) });
      const s = byId.get(key.id);
      // Errors name the item, as DynamoRepository's do.
      const context = { type: 'DataStore', id: key.id };
      if (!s) throw new NotFoundError(`DataStore ${key.id} not found`, context);
      const now = s[field as 'allocatedBytes'];
      if (delta > 0 && options.max !== undefined && now + delta > options.max) {
        throw new ConflictError(`${field} ${now} + ${delta} would exceed ${options.max}`, context);
      }
      if (now + delta < 0)
        throw new ConflictError(`${field} ${now} - ${-delta} would go below zero`, context);
      s.allocatedBytes = now + delta;
      return structuredClone(s);
    },
  };
  return repo as unknown as Repository & { calls: typeof calls };
}

describe('reserve', () => {
  it('reserves on the chosen store, bounded by its threshold', async () => {
    const stores = [store('a'), store('b', { allocatedBytes: GiB })];
    const repo = counterRepo(stores);

    const { store: reserved, attempts } = await reserve(repo, planPlacement(stores, request()), 10 * GiB);

    expect(reserved).toMatchObject({ id: 'a', allocatedBytes: 10 * GiB });
    expect(repo.calls).toEqual([{ id: 'a', delta: 10 * GiB, max: THRESHOLD }]);
    expect(attempts).toEqual([
      expect.objectContaining({ storeId: 'a', accepted: true, freeBytesAfter: 160 * GiB }),
    ]);
  });

  it('on a lost race (ConflictError) or a vanished store moves on to the next candidate', async () => {
    const planned = [
      store('a'),
      store('b', { allocatedBytes: GiB }),
      store('c', { allocatedBytes: 2 * GiB }),
    ];
    const placement = planPlacement(planned, request());
    // Since planning: someone filled a, and b was deleted.
    const repo = counterRepo([
      store('a', { allocatedBytes: THRESHOLD - GiB }),
      store('c', { allocatedBytes: 2 * GiB }),
    ]);

    const { store: reserved, attempts } = await reserve(repo, placement, 10 * GiB);

    expect(reserved.id).toBe('c');
    expect(attempts.map((a) => [a.storeId, a.accepted])).toEqual([
      ['a', false],
      ['b', false],
      ['c', true],
    ]);
    expect(attempts[0]?.reason).toMatch(/^rejected: lost the race for the space \(.*would exceed/);
    expect(attempts[1]?.reason).toBe('rejected: the store no longer exists');
  });

  it('when nothing is left throws UnprocessableError on sizeBytes naming every store', async () => {
    const planned = [store('a'), store('maint', { status: 'Maintenance' })];
    const placement = planPlacement(planned, request());
    const repo = counterRepo([store('a', { allocatedBytes: THRESHOLD })]);

    const error = await reserve(repo, placement, 10 * GiB).catch((e: unknown) => e);

    expect(error).toBeInstanceOf(UnprocessableError);
    const e = error as UnprocessableError;
    expect(e.context.field).toBe('sizeBytes');
    expect(e.message).toMatch(/^no primary store can take 10\.0 GiB: name-a \(a\): rejected: lost the race/);
    expect(e.message).toContain('name-maint (maint): rejected: status Maintenance');
    expect(e.context['candidates']).toEqual([
      { storeId: 'a', name: 'name-a', reason: expect.stringMatching(/^rejected: lost the race/) },
      { storeId: 'maint', name: 'name-maint', reason: 'rejected: status Maintenance' },
    ]);
  });

  it('with no acceptable candidate tries nothing', async () => {
    const repo = counterRepo([]);
    const placement = planPlacement([store('a', { status: 'Disabled' })], request());

    await expect(reserve(repo, placement, 10 * GiB)).rejects.toThrow(
      'no primary store can take 10.0 GiB: name-a (a): rejected: status Disabled',
    );
    await expect(reserve(repo, { candidates: [] }, 10 * GiB)).rejects.toThrow(/: no primary store$/);
    expect(repo.calls).toEqual([]);
  });

  it('takes a list of candidates as well as a placement', async () => {
    const stores = [store('a'), store('b')];
    const repo = counterRepo(stores);
    const candidates = planPlacement(stores, request()).candidates.reverse();

    await expect(reserve(repo, candidates, 10 * GiB)).resolves.toMatchObject({ store: { id: 'b' } });
  });

  it('rethrows other errors (e.g. the table is unavailable) rather than trying elsewhere', async () => {
    const repo = {
      addToCounter: jest.fn().mockRejectedValue(new Error('throttled')),
    } as unknown as Repository;

    await expect(reserve(repo, planPlacement([store('a'), store('b')], request()), 10 * GiB)).rejects.toThrow(
      'throttled',
    );
    expect(repo.addToCounter).toHaveBeenCalledTimes(1);
  });
});

describe('releaseWrite', () => {
  it('is a counter write that takes the bytes off the store, for a transaction', () => {
    expect(releaseWrite('a', 4 * GiB)).toEqual({
      op: 'counter',
      key: { type: 'DataStore', id: 'a' },
      field: 'allocatedBytes',
      delta: -4 * GiB,
    });
  });

  it('refuses a size that is not a positive whole number of bytes', () => {
    expect(() => releaseWrite('a', 0)).toThrow(InputError);
    expect(() => releaseWrite('a', 1.5)).toThrow(InputError);
  });
});
