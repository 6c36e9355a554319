import {
  ConflictError,
  type InputError,
  NotFoundError,
  UnavailableError,
} from '../../../functions/core/errors.js';
import type { Job, Snapshot, SnapshotPolicy, Volume } from '../../../functions/core/model.js';
import type { Page, Repository, SchedulerPort } from '../../../functions/core/ports.js';
import {
  PolicyRunError,
  policySnapshotId,
  SnapshotPolicyService,
} from '../../../functions/core/services/snapshot-policy-service.js';

const NOW = new Date('2024-06-01T12:00:00Z');
const stamp = { version: 1, createdAt: NOW.toISOString(), updatedAt: NOW.toISOString() };

/** Just the repository calls the policy service makes, over maps. */
function fakeRepo(volumes: Volume[]) {
  const policies = new Map<string, SnapshotPolicy>();
  const repo = {
    async get(key: { type: string; id: string }) {
      if (key.type === 'SnapshotPolicy') return policies.get(key.id);
      if (key.type === 'Volume') return volumes.find((v) => v.id === key.id);
      return undefined;
    },
    async require(key: { type: string; id: string }) {
      const found = await repo.get(key);
      if (!found) throw new NotFoundError(`${key.type} ${key.id} does not exist`);
      return found;
    },
    async create(_type: string, entity: Omit<SnapshotPolicy, 'version' | 'createdAt' | 'updatedAt'>) {
      const row = { ...entity, ...stamp };
      policies.set(row.id, row);
      return row;
    },
    async delete(key: { id: string }) {
      policies.delete(key.id);
    },
    async list(_type: string, options: { filter?: Record<string, unknown> } = {}) {
      const items = [...policies.values()].filter((p) =>
        Object.entries(options.filter ?? {}).every(([k, v]) => (p as never)[k] === v),
      );
      return { items };
    },
  };
  return { repo: repo as unknown as Repository, policies };
}

function snapshot(id: string, status: Snapshot['status'], extra: Partial<Snapshot> = {}): Snapshot {
  return { id, name: id, volumeId: 'vol-1', status, ...stamp, ...extra };
}

function setup(options: { snapshots?: Snapshot[]; scheduler?: Partial<SchedulerPort> } = {}) {
  const volume: Volume = {
    id: 'vol-1',
    name: 'v',
    zoneId: 'zone-1',
    sizeBytes: 1,
    format: 'qcow2',
    tags: [],
    accessHostIds: [],
    status: 'Ready',
    ...stamp,
  };
  const { repo, policies } = fakeRepo([volume]);
  const stored = [...(options.snapshots ?? [])];
  const jobs = new Map<string, Job>();
  const snapshots = {
    take: jest.fn(
      async (volumeId: string, name: string, o: { id?: string; policyId?: string; slot?: string }) => {
        const existing = stored.find((s) => s.id === o.id);
        const job: Job = {
          id: `job-${o.id}`,
          kind: 'snapshot.take',
          target: { type: 'snapshot', id: o.id! },
          state: 'running',
          progress: 0,
          ...stamp,
        };
        if (existing) return { snapshot: existing, job, existing: true };
        const s = snapshot(o.id!, 'Creating', { volumeId, name, policyId: o.policyId, slot: o.slot });
        stored.push(s);
        jobs.set(job.id, job);
        return { snapshot: s, job };
      },
    ),
    get: jest.fn(),
    list: jest.fn(
      async (volumeId: string | undefined): Promise<Page<Snapshot>> => ({
        items: stored.filter((s) => !volumeId || s.volumeId === volumeId),
      }),
    ),
    delete: jest.fn(async (id: string) => {
      stored.splice(
        stored.findIndex((s) => s.id === id),
        1,
      );
      return { job: { id: `job-delete-${id}` } as Job };
    }),
  };
  const scheduler: SchedulerPort = {
    upsert: jest.fn(async () => undefined),
    remove: jest.fn(async () => undefined),
    ...options.scheduler,
  };
  const logger = { debug: jest.fn(), info: jest.fn(), warn: jest.fn(), error: jest.fn() };
  const service = new SnapshotPolicyService({
    repo,
    snapshots: snapshots as never,
    jobs: { get: async (id: string) => jobs.get(id)! },
    scheduler,
    logger: logger as never,
    clock: { now: () => NOW },
  });
  return { service, policies, stored, snapshots, scheduler, jobs, logger };
}

const valid = { volumeId: 'vol-1', schedule: 'rate(1 day)', keep: 2 };

describe('SnapshotPolicyService', () => {
  describe('create', () => {
    it('stores the normalised policy and creates its schedule', async () => {
      const { service, scheduler } = setup();

      const policy = await service.create({ ...valid, schedule: 'cron(0 3 * * ? *)', timeZone: 'utc' });

      expect(policy).toMatchObject({
        volumeId: 'vol-1',
        schedule: 'cron(0 3 * * ? *)',
        timeZone: 'UTC',
        backup: false,
      });
      expect(scheduler.upsert).toHaveBeenCalledWith(policy);
    });

    it.each([
      [{ schedule: 'cron(0 3 * * *)' }, 'schedule'],
      [{ schedule: 'cron(0 0 1 1 ? 2020)' }, 'schedule'],
      [{ timeZone: 'Nowhere/Land' }, 'timeZone'],
      [{ keep: 0 }, 'keep'],
      [{ keep: 1001 }, 'keep'],
      [{ volumeId: 'vol-missing' }, 'volumeId'],
    ])('refuses %j naming %s, writing nothing', async (change, field) => {
      const { service, policies, scheduler } = setup();

      const error = await service.create({ ...valid, ...change }).catch((e: unknown) => e);

      expect((error as InputError).context.field).toBe(field);
      expect(policies.size).toBe(0);
      expect(scheduler.upsert).not.toHaveBeenCalled();
    });

    it('removes the row again when the scheduler refuses', async () => {
      const { service, policies } = setup({
        scheduler: { upsert: async () => Promise.reject(new UnavailableError('throttled')) },
      });

      await expect(service.create(valid)).rejects.toBeInstanceOf(UnavailableError);
      expect(policies.size).toBe(0);
    });
  });

  describe('delete', () => {
    it('removes the schedule, then the row, and leaves the snapshots', async () => {
      const { service, policies, scheduler, snapshots } = setup();
      const policy = await service.create(valid);

      await service.delete(policy.id);

      expect(scheduler.remove).toHaveBeenCalledWith(policy.id);
      expect(policies.size).toBe(0);
      expect(snapshots.delete).not.toHaveBeenCalled();
    });

    it('is NotFound for an unknown policy', async () => {
      await expect(setup().service.delete('policy-x')).rejects.toBeInstanceOf(NotFoundError);
    });
  });

  describe('runPolicy', () => {
    it('takes one snapshot per slot, with an id and name from policy and slot', async () => {
      const { service, snapshots } = setup();
      const policy = await service.create({ ...valid, backup: true, name: 'nightly' });

      const first = await service.runPolicy({ policyId: policy.id, scheduledTime: '2024-06-02T03:00:12Z' });
      const again = await service.runPolicy({ policyId: policy.id, scheduledTime: '2024-06-02T03:00:59Z' });

      const id = policySnapshotId(policy.id, '2024-06-02T03:00:00.000Z');
      expect(id).toMatch(/^snap-[0-9a-f-]{36}-20240602T0300$/);
      expect(first).toMatchObject({ skipped: false, snapshotId: id, slot: '2024-06-02T03:00:00.000Z' });
      expect(again.snapshotId).toBe(id);
      expect(snapshots.take).toHaveBeenCalledWith('vol-1', 'nightly 20240602T0300', {
        id,
        policyId: policy.id,
        slot: '2024-06-02T03:00:00.000Z',
        backup: true,
      });
    });

    it('reports a busy volume as unavailable, so the flow retries', async () => {
      const { service, snapshots } = setup();
      const policy = await service.create(valid);
      snapshots.take.mockRejectedValueOnce(
        new ConflictError('volume is Snapshotting', { state: 'Snapshotting' }),
      );

      await expect(
        service.runPolicy({ policyId: policy.id, scheduledTime: '2024-06-02T03:00:00Z' }),
      ).rejects.toBeInstanceOf(UnavailableError);
    });

    it('does nothing for a deleted policy', async () => {
      const { service, snapshots } = setup();

      const run = await service.runPolicy({ policyId: 'policy-gone', scheduledTime: '2024-06-02T03:00:00Z' });

      expect(run).toMatchObject({ skipped: true, snapshotId: null, jobId: null });
      expect(snapshots.take).not.toHaveBeenCalled();
    });
  });

  describe('policyJobStatus', () => {
    it('says done when the job succeeded, waits while it runs, fails the run otherwise', async () => {
      const { service, jobs } = setup();
      const job = (state: Job['state']): Job => ({
        id: 'job-1',
        kind: 'snapshot.take',
        target: { type: 'snapshot', id: 's' },
        state,
        progress: 0,
        ...stamp,
        ...(state === 'failed' ? { error: { code: 'X', message: 'disk on fire' } } : {}),
      });

      jobs.set('job-1', job('running'));
      expect(await service.policyJobStatus({ jobId: 'job-1', polls: 0, maxPolls: 3 })).toEqual({
        done: false,
        state: 'running',
        polls: 1,
      });
      await expect(service.policyJobStatus({ jobId: 'job-1', polls: 2, maxPolls: 3 })).rejects.toBeInstanceOf(
        PolicyRunError,
      );
      jobs.set('job-1', job('succeeded'));
      expect((await service.policyJobStatus({ jobId: 'job-1', polls: 2, maxPolls: 3 })).done).toBe(true);
      jobs.set('job-1', job('failed'));
      await expect(service.policyJobStatus({ jobId: 'job-1', polls: 0, maxPolls: 3 })).rejects.toThrow(
        'disk on fire',
      );
    });
  });

  describe('applyRetention', () => {
    async function withSnapshots(keep: number, make: (policyId: string) => Snapshot[]) {
      const ctx = setup();
      const policy = await ctx.service.create({ ...valid, keep });
      ctx.stored.push(...make(policy.id));
      return { ...ctx, policy };
    }
    const at = (day: number) => `2024-06-${String(day).padStart(2, '0')}T03:00:00.000Z`;

    it('deletes the policy snapshots older than the newest `keep`, oldest first', async () => {
      const { service, policy, snapshots } = await withSnapshots(2, (p) => [
        snapshot('s3', 'CreatedOnPrimary', { policyId: p, slot: at(3) }),
        snapshot('s1', 'BackedUp', { policyId: p, slot: at(1) }),
        snapshot('s4', 'CreatedOnPrimary', { policyId: p, slot: at(4) }),
        snapshot('s2', 'CreatedOnPrimary', { policyId: p, slot: at(2) }),
      ]);

      const report = await service.applyRetention({ policyId: policy.id });

      expect(report).toMatchObject({ kept: ['s4', 's3'], skipped: [] });
      expect(report.deleting.map((d) => d.snapshotId)).toEqual(['s1', 's2']);
      expect(snapshots.delete.mock.calls.map(([id]) => id)).toEqual(['s1', 's2']);
    });

    it('never touches manual snapshots, other policies or other volumes', async () => {
      const { service, policy, snapshots } = await withSnapshots(1, (p) => [
        snapshot('manual', 'CreatedOnPrimary', { slot: undefined }),
        snapshot('other', 'CreatedOnPrimary', { policyId: 'policy-other', slot: at(1) }),
        snapshot('elsewhere', 'CreatedOnPrimary', { policyId: p, volumeId: 'vol-2', slot: at(1) }),
        snapshot('mine-old', 'CreatedOnPrimary', { policyId: p, slot: at(2) }),
        snapshot('mine-new', 'CreatedOnPrimary', { policyId: p, slot: at(3) }),
      ]);

      await service.applyRetention({ policyId: policy.id });

      expect(snapshots.delete.mock.calls.map(([id]) => id)).toEqual(['mine-old']);
    });

    it('does not count failed snapshots towards keep, and skips those an operation holds', async () => {
      const { service, policy, snapshots } = await withSnapshots(2, (p) => [
        snapshot('old-creating', 'Creating', { policyId: p, slot: at(1) }),
        snapshot('old-error', 'Error', { policyId: p, slot: at(2) }),
        snapshot('good-1', 'CreatedOnPrimary', { policyId: p, slot: at(3) }),
        snapshot('recent-error', 'Error', { policyId: p, slot: at(4) }),
        snapshot('good-2', 'CreatedOnPrimary', { policyId: p, slot: at(5) }),
      ]);

      const report = await service.applyRetention({ policyId: policy.id });

      expect(report.kept).toEqual(['good-2', 'good-1']);
      expect(report.deleting.map((d) => d.snapshotId)).toEqual(['old-error']);
      expect(report.skipped).toEqual([
        expect.objectContaining({ snapshotId: 'old-creating', status: 'Creating' }),
      ]);
      expect(snapshots.delete).toHaveBeenCalledTimes(1);
    });

    it('deletes nothing while fewer than keep good snapshots exist', async () => {
      const { service, policy, snapshots } = await withSnapshots(3, (p) => [
        snapshot('a', 'Error', { policyId: p, slot: at(1) }),
        snapshot('b', 'CreatedOnPrimary', { policyId: p, slot: at(2) }),
        snapshot('c', 'CreatedOnPrimary', { policyId: p, slot: at(3) }),
      ]);

      expect((await service.applyRetention({ policyId: policy.id })).deleting).toEqual([]);
      expect(snapshots.delete).not.toHaveBeenCalled();
    });

    it('reports a snapshot it could not delete now and carries on; one already gone is fine', async () => {
      const { service, policy, snapshots } = await withSnapshots(1, (p) => [
        snapshot('a', 'CreatedOnPrimary', { policyId: p, slot: at(1) }),
        snapshot('b', 'CreatedOnPrimary', { policyId: p, slot: at(2) }),
        snapshot('c', 'CreatedOnPrimary', { policyId: p, slot: at(3) }),
        snapshot('d', 'CreatedOnPrimary', { policyId: p, slot: at(4) }),
      ]);
      snapshots.delete
        .mockRejectedValueOnce(new ConflictError('volume is Resizing'))
        .mockRejectedValueOnce(new NotFoundError('gone'));

      const report = await service.applyRetention({ policyId: policy.id });

      expect(report.skipped).toEqual([
        expect.objectContaining({ snapshotId: 'a', reason: 'volume is Resizing' }),
      ]);
      expect(report.deleting.map((d) => d.snapshotId)).toEqual(['c']);
    });

    it('is a no-op for a deleted policy', async () => {
      const { service, snapshots } = setup({
        snapshots: [snapshot('x', 'CreatedOnPrimary', { policyId: 'p' })],
      });

      expect(await service.applyRetention({ policyId: 'p' })).toMatchObject({ deleting: [], kept: [] });
      expect(snapshots.list).not.toHaveBeenCalled();
    });
  });
});
