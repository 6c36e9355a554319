import { DynamoRepository } from '../../functions/adapters/aws/dynamo-repository';
import { ConflictError, NotFoundError } from '../../functions/core/errors';
import type { DataStore, Host } from '../../functions/core/model';
import { type Clock, Write } from '../../functions/core/ports';
import { dataStoreMachine, objectInStoreMachine } from '../../functions/core/state-machines';
import { freshTable } from '../support/integration';

let repo: DynamoRepository;
let now = new Date('2026-01-01T00:00:00.000Z');
const clock: Clock = { now: () => now };

beforeAll(async () => {
  const { doc, tableName } = await freshTable('repo');
  repo = new DynamoRepository({ tableName, client: doc, clock });
});

let seq = 0;
function store(overrides: Partial<DataStore> = {}): Omit<DataStore, 'version' | 'createdAt' | 'updatedAt'> {
  seq += 1;
  return {
    id: `store-${seq}`,
    name: `s${seq}`,
    provider: 'nfs',
    role: 'primary',
    scope: { type: 'zone', zoneId: 'zone-1' },
    details: { server: 'nfs.example', export: '/srv', mountPath: '/mnt/a' },
    capacityBytes: 1000,
    overprovisioning: 2,
    disableThreshold: 0.85,
    tags: [],
    status: 'Up',
    allocatedBytes: 0,
    usedBytes: 0,
    ...overrides,
  };
}

describe('DynamoRepository on DynamoDB Local', () => {
  describe('create / get', () => {
    it('stores version 1 with timestamps and reads it back', async () => {
      const created = await repo.create('DataStore', store());
      expect(created.version).toBe(1);
      expect(await repo.get({ type: 'DataStore', id: created.id })).toEqual(created);
    });

    it('refuses to create the same entity twice', async () => {
      const s = store();
      await repo.create('DataStore', s);
      await expect(repo.create('DataStore', s)).rejects.toBeInstanceOf(ConflictError);
    });

    it('require throws NotFoundError for a missing entity', async () => {
      await expect(repo.require({ type: 'DataStore', id: 'nope' })).rejects.toBeInstanceOf(NotFoundError);
    });
  });

  describe('update', () => {
    it('applies a change at the expected version and bumps it', async () => {
      const s = await repo.create('DataStore', store());
      const updated = await repo.update({ type: 'DataStore', id: s.id }, 1, {
        name: 'renamed',
        statusReason: 'x',
      });
      expect(updated).toMatchObject({ name: 'renamed', version: 2, statusReason: 'x' });
      const cleared = await repo.update({ type: 'DataStore', id: s.id }, 2, { statusReason: undefined });
      expect(cleared.statusReason).toBeUndefined();
    });

    it('rejects a stale version with a conflict that reports the current version', async () => {
      const s = await repo.create('DataStore', store());
      await repo.update({ type: 'DataStore', id: s.id }, 1, { name: 'a' });
      const err = await repo.update({ type: 'DataStore', id: s.id }, 1, { name: 'b' }).catch((e) => e);
      expect(err).toBeInstanceOf(ConflictError);
      expect(err.context).toMatchObject({ version: 2 });
      expect((await repo.require({ type: 'DataStore', id: s.id })).name).toBe('a');
    });

    it('reports NotFound when the entity does not exist', async () => {
      await expect(repo.update({ type: 'DataStore', id: 'ghost' }, 1, { name: 'x' })).rejects.toBeInstanceOf(
        NotFoundError,
      );
    });
  });

  describe('transition', () => {
    it('of two racing transitions from the same state, exactly one wins', async () => {
      const s = await repo.create('DataStore', store());
      const attempts = await Promise.allSettled([
        repo.transition({
          key: { type: 'DataStore', id: s.id },
          machine: dataStoreMachine,
          from: 'Up',
          to: 'PrepareForMaintenance',
          lease: { owner: 'job-a', ttlSeconds: 60 },
        }),
        repo.transition({
          key: { type: 'DataStore', id: s.id },
          machine: dataStoreMachine,
          from: 'Up',
          to: 'Disabled',
        }),
      ]);
      const won = attempts.filter((a) => a.status === 'fulfilled');
      const lost = attempts.filter((a) => a.status === 'rejected') as PromiseRejectedResult[];
      expect(won).toHaveLength(1);
      expect(lost).toHaveLength(1);
      expect(lost[0]!.reason).toBeInstanceOf(ConflictError);
      const final = await repo.require({ type: 'DataStore', id: s.id });
      expect(final.version).toBe(2);
      expect(['PrepareForMaintenance', 'Disabled']).toContain(final.status);
    });

    it('of ten racing identical transitions, exactly one wins', async () => {
      const s = await repo.create('DataStore', store());
      const attempts = await Promise.allSettled(
        Array.from({ length: 10 }, (_, i) =>
          repo.transition({
            key: { type: 'DataStore', id: s.id },
            machine: dataStoreMachine,
            from: 'Up',
            to: 'PrepareForMaintenance',
            lease: { owner: `job-${i}`, ttlSeconds: 60 },
          }),
        ),
      );
      expect(attempts.filter((a) => a.status === 'fulfilled')).toHaveLength(1);
    });

    it('refuses a transition the machine does not allow, without writing', async () => {
      const s = await repo.create('DataStore', store({ status: 'Maintenance' }));
      await expect(
        repo.transition({
          key: { type: 'DataStore', id: s.id },
          machine: dataStoreMachine,
          from: 'Maintenance',
          to: 'Up',
        }),
      ).rejects.toBeInstanceOf(ConflictError);
      expect((await repo.require({ type: 'DataStore', id: s.id })).version).toBe(1);
    });

    it('names the current state when the entity is not in the expected one', async () => {
      const s = await repo.create('DataStore', store({ status: 'Disabled' }));
      const err = await repo
        .transition({
          key: { type: 'DataStore', id: s.id },
          machine: dataStoreMachine,
          from: 'Up',
          to: 'Deleting',
          lease: { owner: 'j', ttlSeconds: 5 },
        })
        .catch((e) => e);
      expect(err).toBeInstanceOf(ConflictError);
      expect(err.context.state).toBe('Disabled');
      expect(err.message).toContain('it is Disabled, not Up');
    });

    it('requires a lease for a transitional state, records it, and clears it on leaving', async () => {
      const s = await repo.create('DataStore', store());
      await expect(
        repo.transition({
          key: { type: 'DataStore', id: s.id },
          machine: dataStoreMachine,
          from: 'Up',
          to: 'Deleting',
        }),
      ).rejects.toThrow(/needs a lease/);
      const leased = await repo.transition({
        key: { type: 'DataStore', id: s.id },
        machine: dataStoreMachine,
        from: 'Up',
        to: 'Deleting',
        lease: { owner: 'job-1', ttlSeconds: 30 },
      });
      expect(leased.lease).toEqual({ owner: 'job-1', expiresAt: '2026-01-01T00:00:30.000Z' });
      const back = await repo.transition({
        key: { type: 'DataStore', id: s.id },
        machine: dataStoreMachine,
        from: 'Deleting',
        to: 'Up',
        leaseOwner: 'job-1',
      });
      expect(back.lease).toBeUndefined();
    });

    it('fences on the lease owner: a stale worker cannot move the entity on', async () => {
      const s = await repo.create('DataStore', store());
      await repo.transition({
        key: { type: 'DataStore', id: s.id },
        machine: dataStoreMachine,
        from: 'Up',
        to: 'PrepareForMaintenance',
        lease: { owner: 'job-new', ttlSeconds: 30 },
      });
      await expect(
        repo.transition({
          key: { type: 'DataStore', id: s.id },
          machine: dataStoreMachine,
          from: 'PrepareForMaintenance',
          to: 'Maintenance',
          leaseOwner: 'job-old',
        }),
      ).rejects.toThrow(/lease belongs to job-new/);
    });

    it('works on per-store rows', async () => {
      const row = await repo.create('TemplateInStore', {
        templateId: 'tpl-1',
        storeId: 'store-x',
        storeRole: 'image',
        status: 'Allocated',
        refCount: 0,
      });
      const moved = await repo.transition({
        key: { type: 'TemplateInStore', id: 'tpl-1', storeId: 'store-x' },
        machine: objectInStoreMachine,
        from: 'Allocated',
        to: 'Creating',
        expectedVersion: row.version,
        lease: { owner: 'job-2', ttlSeconds: 10 },
      });
      expect(moved.status).toBe('Creating');
      const inStore = await repo.listInStore('store-x');
      expect(inStore.items.map((i) => (i as { templateId?: string }).templateId)).toEqual(['tpl-1']);
    });
  });

  describe('listExpiredLeases', () => {
    it('returns only entities whose lease expired', async () => {
      const a = await repo.create('DataStore', store());
      const b = await repo.create('DataStore', store());
      for (const [s, ttl] of [
        [a, 10],
        [b, 1000],
      ] as const) {
        await repo.transition({
          key: { type: 'DataStore', id: s.id },
          machine: dataStoreMachine,
          from: 'Up',
          to: 'PrepareForMaintenance',
          lease: { owner: `job-${s.id}`, ttlSeconds: ttl },
        });
      }
      const later = new Date(now.getTime() + 60_000);
      const expired = await repo.listExpiredLeases(later);
      const ids = expired.items.map((e) => (e as DataStore).id);
      expect(ids).toContain(a.id);
      expect(ids).not.toContain(b.id);
    });
  });

  describe('updateSet and addToCounter', () => {
    it('adds and removes set members atomically under concurrency', async () => {
      const host = await repo.create('Host', {
        id: 'host-set',
        name: 'h',
        zoneId: 'z',
        clusterId: 'c',
        instanceId: 'local-set',
        hypervisor: 'kvm',
        status: 'Up',
        attachedStoreIds: [],
      });
      await Promise.all(
        Array.from({ length: 8 }, (_, i) =>
          repo.updateSet({ type: 'Host', id: host.id }, 'attachedStoreIds', [`s${i}`], []),
        ),
      );
      let h: Host = await repo.require({ type: 'Host', id: host.id });
      expect(h.attachedStoreIds).toHaveLength(8);
      h = await repo.updateSet(
        { type: 'Host', id: host.id },
        'attachedStoreIds',
        [],
        ['s0', 's1', 's2', 's3', 's4', 's5', 's6', 's7'],
      );
      expect(h.attachedStoreIds).toEqual([]);
    });

    it('never lets racing reservations exceed the bound', async () => {
      const s = await repo.create('DataStore', store());
      const results = await Promise.allSettled(
        Array.from({ length: 6 }, () =>
          repo.addToCounter({ type: 'DataStore', id: s.id }, 'allocatedBytes', 300, { max: 1000 }),
        ),
      );
      expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(3);
      expect((await repo.require({ type: 'DataStore', id: s.id })).allocatedBytes).toBe(900);
      await expect(
        repo.addToCounter({ type: 'DataStore', id: s.id }, 'allocatedBytes', -1000),
      ).rejects.toBeInstanceOf(ConflictError);
    });
  });

  describe('transact', () => {
    it('writes every item or none, and names the item whose condition failed', async () => {
      const a = await repo.create('DataStore', store({ allocatedBytes: 100 }));
      const b = await repo.create('DataStore', store({ allocatedBytes: 100 }));
      await repo.transact([
        Write.counter({ type: 'DataStore', id: a.id }, 'allocatedBytes', 50, { max: 1000 }),
        Write.update({ type: 'DataStore', id: b.id }, 1, { name: 'renamed' }),
      ]);
      expect(await repo.require({ type: 'DataStore', id: a.id })).toMatchObject({
        allocatedBytes: 150,
        version: 2,
      });
      expect(await repo.require({ type: 'DataStore', id: b.id })).toMatchObject({
        name: 'renamed',
        version: 2,
      });

      // b is at version 2 now: the whole transaction is refused, a's counter included.
      const stale = repo.transact([
        Write.counter({ type: 'DataStore', id: a.id }, 'allocatedBytes', 50, { max: 1000 }),
        Write.update({ type: 'DataStore', id: b.id }, 1, { name: 'again' }),
      ]);
      await expect(stale).rejects.toBeInstanceOf(ConflictError);
      await expect(stale).rejects.toMatchObject({ context: { type: 'DataStore', id: b.id, version: 2 } });
      expect((await repo.require({ type: 'DataStore', id: a.id })).allocatedBytes).toBe(150);

      const missing = repo.transact([
        Write.counter({ type: 'DataStore', id: a.id }, 'allocatedBytes', -50),
        Write.update({ type: 'DataStore', id: 'store-none' }, 1, { name: 'x' }),
      ]);
      await expect(missing).rejects.toBeInstanceOf(NotFoundError);
      expect((await repo.require({ type: 'DataStore', id: a.id })).allocatedBytes).toBe(150);
    });

    it('creates, transitions with a lease, and counts only while a field holds a value', async () => {
      const a = await repo.create('DataStore', store({ status: 'Up' }));
      const copy = { type: 'TemplateInStore' as const, id: 'tpl-tx', storeId: a.id };
      await repo.transact([
        Write.create('TemplateInStore', {
          templateId: 'tpl-tx',
          storeId: a.id,
          storeRole: 'primary',
          status: 'Ready',
          refCount: 0,
        }),
        Write.transition({
          key: { type: 'DataStore', id: a.id },
          machine: dataStoreMachine,
          from: 'Up',
          to: 'PrepareForMaintenance',
          lease: { owner: 'job-tx', ttlSeconds: 60 },
        }),
      ]);
      expect(await repo.require({ type: 'DataStore', id: a.id })).toMatchObject({
        status: 'PrepareForMaintenance',
        lease: { owner: 'job-tx' },
      });
      const ready = { when: { field: 'status' as const, oneOf: ['Ready'] } };
      await repo.transact([Write.counter(copy, 'refCount', 1, ready)]);
      await repo.transition({
        key: copy,
        machine: objectInStoreMachine,
        from: 'Ready',
        to: 'Destroying',
        lease: { owner: 'job-evict', ttlSeconds: 60 },
      });
      await expect(repo.transact([Write.counter(copy, 'refCount', 1, ready)])).rejects.toMatchObject({
        message: expect.stringMatching(/status is Destroying/),
        context: { type: 'TemplateInStore', state: 'Destroying' },
      });
      expect((await repo.require(copy)).refCount).toBe(1);
      // Creating what exists fails the same way as create().
      await expect(
        repo.transact([
          Write.create('TemplateInStore', {
            templateId: 'tpl-tx',
            storeId: a.id,
            storeRole: 'primary',
            status: 'Ready',
            refCount: 0,
          }),
        ]),
      ).rejects.toThrow(/already exists/);
    });
  });

  describe('list', () => {
    it('pages oldest first and filters on nested fields', async () => {
      const zone = `zone-list-${Date.now()}`;
      for (let i = 0; i < 5; i++) {
        now = new Date(now.getTime() + 1000);
        await repo.create('DataStore', store({ scope: { type: 'zone', zoneId: zone } }));
      }
      const seen: string[] = [];
      let cursor: string | undefined;
      do {
        const page = await repo.list('DataStore', { limit: 2, cursor, filter: { 'scope.zoneId': zone } });
        seen.push(...page.items.map((s) => s.id));
        cursor = page.cursor;
      } while (cursor);
      expect(seen).toHaveLength(5);
      const sorted = [...seen].sort((x, y) => Number(x.split('-')[1]) - Number(y.split('-')[1]));
      expect(seen).toEqual(sorted);
    });

    it('rejects a forged cursor as input', async () => {
      await expect(repo.list('DataStore', { cursor: 'not-json' })).rejects.toThrow(/cursor/);
    });
  });
});
