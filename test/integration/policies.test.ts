/**
 * Snapshot policies end to end on the embedded stack: the API validates and stores policies and
 * creates their schedules in the local EventBridge Scheduler; the snapshot-policy flow, started as
 * Scheduler starts it (StartExecution signed as the scheduler role), takes one snapshot per slot
 * however often the slot is delivered, and retention keeps the newest N of the policy's own
 * snapshots; the scheduler really fires (its clock is moved to just before a slot); deleting a
 * policy removes its schedule but not its snapshots.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { SFNClient, StartExecutionCommand } from '@aws-sdk/client-sfn';
import { nextFireTime, parseSchedule } from '../../functions/core/schedule';
import { EnvName } from '../../functions/env-names';
import { type EmbeddedStack, startEmbeddedStack } from '../../infra/local/embedded-stack';
import { integrationEndpoints, uniqueName } from '../support/integration';

/** The scheduler's clock: real time plus an offset the test moves. */
const clock = {
  offsetMs: 0,
  now: () => new Date(Date.now() + clock.offsetMs),
};
/** A schedule that fires only in 2199: runs in these tests are started by hand. */
const BY_HAND = 'cron(0 0 1 1 ? 2199)';

let stack: EmbeddedStack;
let dataDir: string;

async function call(method: string, route: string, body?: unknown): Promise<{ status: number; body: any }> {
  const res = await fetch(`${stack.url}${route}`, {
    method,
    headers: { 'content-type': 'application/json', authorization: `Bearer ${stack.apiTokens.operator}` },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : undefined };
}

async function waitFor<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 30_000): Promise<T> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > until) throw new Error(`${what}: not after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function waitForJob(jobId: string): Promise<any> {
  return waitFor(`job ${jobId}`, async () => {
    const { body } = await call('GET', `/jobs/${jobId}`);
    return body.state === 'succeeded' || body.state === 'failed' ? body : undefined;
  });
}

async function newVolume(name: string): Promise<string> {
  const created = await call('POST', '/volumes', { name, zoneId: 'zone-1', sizeBytes: 2 ** 26 });
  expect(created.status).toBe(202);
  expect((await waitForJob(created.body.job.id)).state).toBe('succeeded');
  return created.body.volume.id;
}

async function snapshotsOf(volumeId: string): Promise<any[]> {
  return (await call('GET', `/snapshots?volumeId=${volumeId}&limit=100`)).body.items;
}

/**
 * One delivery of a slot, as Scheduler makes it: its own execution of the policy flow, started with
 * the scheduler role's credentials, the slot's time as input.
 */
async function deliver(policyId: string, scheduledTime: string, execution = uniqueName('delivery')) {
  const machine = stack.deployment.stateMachines().find((m) => m.name.endsWith('-snapshot-policy'))!;
  const sfn = new SFNClient({
    region: stack.account.region,
    endpoint: stack.endpoints.sfn,
    credentials: stack.credentialsFor('SnapshotSchedulingSchedulerRole', 'scheduler'),
  });
  try {
    const { executionArn } = await sfn.send(
      new StartExecutionCommand({
        stateMachineArn: machine.arn,
        name: execution.slice(0, 80),
        input: JSON.stringify({ policyId, scheduledTime }),
      }),
    );
    return await stack.stepFunctions.runner.waitFor(executionArn!, 60_000);
  } finally {
    sfn.destroy();
  }
}

const group = () => stack.deployment.scheduleGroups()[0]!;
const scheduled = () => stack.scheduler.names();

async function createPolicy(body: Record<string, unknown>): Promise<any> {
  const res = await call('POST', '/snapshot-policies', body);
  expect(res.status).toBe(201);
  return res.body;
}

beforeAll(async () => {
  const endpoints = integrationEndpoints();
  dataDir = await mkdtemp(path.join(os.tmpdir(), 'strata-policies-'));
  stack = await startEmbeddedStack({
    dataDir,
    port: 0,
    dynamoEndpoint: endpoints.dynamo,
    s3Endpoint: endpoints.s3,
    hostCount: 2,
    reconcileEverySeconds: 0,
    waitTimeScale: 0.01,
    functionEnvironment: {
      [EnvName.HostPollMs]: '20',
      [EnvName.HostMaxPollMs]: '100',
      [EnvName.HostWaitBudgetMs]: '300',
    },
    schedulerClock: clock,
  });
}, 90_000);

afterAll(async () => {
  await stack?.stop();
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
});

describe('snapshot policies', () => {
  let volumeId: string;

  beforeAll(async () => {
    volumeId = await newVolume('policy-vol');
  });

  describe('POST /snapshot-policies', () => {
    it.each([
      [{ schedule: 'every day at 3' }, 400, 'schedule'],
      [{ schedule: 'cron(0 3 * * *)' }, 400, 'schedule'],
      [{ schedule: 'cron(0 3 * * MON *)' }, 400, 'schedule'],
      [{ schedule: 'rate(0 hours)' }, 400, 'schedule'],
      [{ schedule: 'rate(2 hour)' }, 400, 'schedule'],
      [{ timeZone: 'Mars/Olympus' }, 400, 'timeZone'],
      [{ keep: 0 }, 400, 'keep'],
      [{ keep: 1001 }, 400, 'keep'],
      [{ keep: 2.5 }, 400, 'keep'],
      [{ backup: 'yes' }, 400, 'backup'],
      [{ retention: 3 }, 400, 'retention'],
      [{ volumeId: 'vol-does-not-exist' }, 422, 'volumeId'],
    ])('refuses %j with %i naming %s, and creates nothing', async (change, status, field) => {
      const res = await call('POST', '/snapshot-policies', {
        volumeId,
        schedule: 'rate(1 day)',
        keep: 3,
        ...change,
      });

      expect(res.status).toBe(status);
      expect(res.body.error.field).toBe(field);
      expect((await call('GET', `/snapshot-policies?volumeId=${volumeId}`)).body.items).toEqual([]);
      expect(scheduled()).toEqual([]);
    });

    it('creates a policy with its defaults and arms its schedule', async () => {
      const policy = await createPolicy({ volumeId, schedule: 'cron(30 2 ? * MON-FRI *)', keep: 3 });

      expect(policy).toMatchObject({
        id: expect.stringMatching(/^policy-/),
        volumeId,
        schedule: 'cron(30 2 ? * MON-FRI *)',
        timeZone: 'UTC',
        keep: 3,
        backup: false,
      });
      expect(stack.scheduler.nextFire(group(), policy.id)).toEqual(
        nextFireTime(parseSchedule(policy.schedule), { after: clock.now(), timeZone: 'UTC' }),
      );
      expect((await call('GET', `/snapshot-policies/${policy.id}`)).body).toEqual(policy);
      expect((await call('GET', `/snapshot-policies?volumeId=${volumeId}`)).body.items).toEqual([policy]);
      expect((await call('DELETE', `/snapshot-policies/${policy.id}`)).status).toBe(204);
    });
  });

  describe('the snapshot-policy flow', () => {
    let other: any;
    let manualId: string;

    beforeAll(async () => {
      // A manual snapshot and another policy's snapshot: retention must leave both alone.
      const manual = await call('POST', `/volumes/${volumeId}/snapshots`, { name: 'manual' });
      expect((await waitForJob(manual.body.job.id)).state).toBe('succeeded');
      manualId = manual.body.snapshot.id;
      other = await createPolicy({ volumeId, schedule: BY_HAND, keep: 1, name: 'other' });
      expect((await deliver(other.id, '2024-05-31T23:00:00Z')).status).toBe('SUCCEEDED');
    });

    it('makes one snapshot of a slot delivered twice at once', async () => {
      const policy = await createPolicy({ volumeId, schedule: BY_HAND, keep: 5, name: 'twice' });

      const runs = await Promise.all([
        deliver(policy.id, '2024-06-01T03:00:02Z'),
        deliver(policy.id, '2024-06-01T03:00:41.500Z'),
      ]);

      expect(runs.map((r) => r.status)).toEqual(['SUCCEEDED', 'SUCCEEDED']);
      const mine = (await snapshotsOf(volumeId)).filter((s) => s.policyId === policy.id);
      expect(mine).toHaveLength(1);
      expect(mine[0]).toMatchObject({ slot: '2024-06-01T03:00:00.000Z', status: 'CreatedOnPrimary' });
      const outputs = runs.map((r) => r.output as any);
      expect(outputs[0].run.snapshotId).toBe(mine[0].id);
      expect(outputs[1].run.snapshotId).toBe(mine[0].id);

      // and again later: still that one snapshot
      expect((await deliver(policy.id, '2024-06-01T03:00:59Z')).status).toBe('SUCCEEDED');
      expect((await snapshotsOf(volumeId)).filter((s) => s.policyId === policy.id)).toHaveLength(1);
      await call('DELETE', `/snapshot-policies/${policy.id}`);
    });

    it('keeps the newest N of its own snapshots: 3 slots with keep=2 leave 2', async () => {
      const policy = await createPolicy({ volumeId, schedule: BY_HAND, keep: 2, name: 'keep2' });
      const slots = ['2024-06-02T03:00:00Z', '2024-06-03T03:00:00Z', '2024-06-04T03:00:00Z'];

      const outputs: any[] = [];
      for (const slot of slots) {
        const run = await deliver(policy.id, slot);
        expect(run.status).toBe('SUCCEEDED');
        outputs.push(run.output);
      }

      // Retention starts a snapshot-delete job per expired snapshot: wait for them.
      for (const output of outputs) {
        for (const { jobId } of output.retention.deleting)
          expect((await waitForJob(jobId)).state).toBe('succeeded');
      }
      const all = await snapshotsOf(volumeId);
      const mine = all.filter((s) => s.policyId === policy.id);
      expect(mine.map((s) => s.slot).sort()).toEqual([
        '2024-06-03T03:00:00.000Z',
        '2024-06-04T03:00:00.000Z',
      ]);
      expect(outputs[2].retention.deleting.map((d: { snapshotId: string }) => d.snapshotId)).toEqual([
        outputs[0].run.snapshotId,
      ]);
      expect((await call('GET', `/snapshots/${outputs[0].run.snapshotId}`)).status).toBe(404);
      // the manual snapshot and the other policy's are untouched
      expect(all.map((s) => s.id)).toContain(manualId);
      expect(all.filter((s) => s.policyId === other.id)).toHaveLength(1);
      expect((await call('GET', `/volumes/${volumeId}`)).body.status).toBe('Ready');
      await call('DELETE', `/snapshot-policies/${policy.id}`);
    });
  });

  it('fires on schedule in the policy time zone: the snapshot is taken and backed up end to end', async () => {
    const schedule = 'cron(0 3 * * ? *)';
    const timeZone = 'Asia/Tokyo';
    const slot = nextFireTime(parseSchedule(schedule), { after: new Date(), timeZone })!;
    // The scheduler's clock now reads two seconds before 03:00 in Tokyo.
    clock.offsetMs = slot.getTime() - 2_000 - Date.now();
    try {
      const policy = await createPolicy({
        volumeId,
        schedule,
        timeZone,
        keep: 3,
        name: 'tokyo',
        backup: true,
      });
      expect(stack.scheduler.nextFire(group(), policy.id)).toEqual(slot);

      const taken = await waitFor('the scheduled snapshot', async () =>
        (await snapshotsOf(volumeId)).find((s) => s.policyId === policy.id),
      );

      expect(taken.slot).toBe(slot.toISOString());
      expect((await waitForJob(taken.takenByJobId)).state).toBe('succeeded');
      // The take started the backup flow from the task function (store-tasks → states:StartExecution).
      const backedUp = await waitFor('the scheduled snapshot backed up', async () => {
        const s = (await call('GET', `/snapshots/${taken.id}`)).body;
        return s.status === 'BackedUp' ? s : undefined;
      });
      expect(backedUp.backupRequested).toBe(true);
      expect(stack.scheduler.nextFire(group(), policy.id)).toEqual(new Date(slot.getTime() + 86_400_000));
      await call('DELETE', `/snapshot-policies/${policy.id}`);
    } finally {
      clock.offsetMs = 0;
    }
  });

  it('DELETE removes the policy and its schedule, keeps its snapshots, and a late run is a no-op', async () => {
    const policy = await createPolicy({ volumeId, schedule: 'rate(1 hour)', keep: 2, name: 'doomed' });
    expect((await deliver(policy.id, '2024-06-10T00:00:00Z')).status).toBe('SUCCEEDED');
    expect(scheduled()).toContain(`${group()}/${policy.id}`);

    expect((await call('DELETE', `/snapshot-policies/${policy.id}`)).status).toBe(204);

    expect((await call('GET', `/snapshot-policies/${policy.id}`)).status).toBe(404);
    expect((await call('DELETE', `/snapshot-policies/${policy.id}`)).status).toBe(404);
    expect(scheduled()).not.toContain(`${group()}/${policy.id}`);
    expect(stack.scheduler.nextFire(group(), policy.id)).toBeUndefined();
    const before = (await snapshotsOf(volumeId)).filter((s) => s.policyId === policy.id);
    expect(before).toHaveLength(1);

    const late = await deliver(policy.id, '2024-06-10T01:00:00Z');

    expect(late.status).toBe('SUCCEEDED');
    expect((late.output as any).run).toMatchObject({ skipped: true });
    expect((await snapshotsOf(volumeId)).filter((s) => s.policyId === policy.id)).toEqual(before);
  });
});
