import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { CreateScheduleCommand, GetScheduleCommand, SchedulerClient } from '@aws-sdk/client-scheduler';
import { EventBridgeSchedules } from '../../../functions/adapters/aws/scheduler-schedules.js';
import type { SnapshotPolicy } from '../../../functions/core/model.js';
import { IamAuthorizer } from '../../../infra/local/aws/iam-authorizer.js';
import { LocalCredentialStore } from '../../../infra/local/aws/principals.js';
import {
  type LocalScheduler,
  type SchedulerTimers,
  type ScheduleTarget,
  startSchedulerService,
} from '../../../infra/local/aws/scheduler-service.js';

const ACCOUNT = '123456789012';
const account = { accountId: ACCOUNT, region: 'us-east-1', partition: 'aws' as const };
const MANAGER = `arn:aws:iam::${ACCOUNT}:role/Strata-ApiRole`;
const NO_PASS = `arn:aws:iam::${ACCOUNT}:role/Strata-NoPassRole`;
const WIDE = `arn:aws:iam::${ACCOUNT}:role/Strata-WideRole`;
const TARGET_ROLE = `arn:aws:iam::${ACCOUNT}:role/Strata-SchedulerRole`;
const FLOW = `arn:aws:states:us-east-1:${ACCOUNT}:stateMachine:Strata-snapshot-policy`;
const GROUP = 'Strata-snapshot-policies';

const manage = {
  Effect: 'Allow',
  Action: [
    'scheduler:CreateSchedule',
    'scheduler:UpdateSchedule',
    'scheduler:DeleteSchedule',
    'scheduler:GetSchedule',
  ],
  Resource: `arn:aws:scheduler:us-east-1:${ACCOUNT}:schedule/${GROUP}/*`,
};
const authorizer = new IamAuthorizer({
  roles: new Map([
    [
      MANAGER,
      [
        {
          name: 'manage',
          document: {
            Statement: [
              manage,
              {
                Effect: 'Allow',
                Action: 'iam:PassRole',
                Resource: TARGET_ROLE,
                Condition: { StringEquals: { 'iam:PassedToService': 'scheduler.amazonaws.com' } },
              },
            ],
          },
        },
      ],
    ],
    [NO_PASS, [{ name: 'manage', document: { Statement: [manage] } }]],
    [
      WIDE,
      [
        {
          name: 'any-group',
          document: {
            Statement: [
              { ...manage, Resource: `arn:aws:scheduler:us-east-1:${ACCOUNT}:schedule/*` },
              { Effect: 'Allow', Action: 'iam:PassRole', Resource: TARGET_ROLE },
            ],
          },
        },
      ],
    ],
  ]),
});

/** A clock and timers that move only when the test says so. */
class ManualTime implements SchedulerTimers {
  private nowMs: number;
  private seq = 0;
  private readonly pending = new Map<number, { at: number; fire: () => void }>();
  constructor(start: string) {
    this.nowMs = new Date(start).getTime();
  }
  readonly clock = { now: () => new Date(this.nowMs) };
  setTimeout(fire: () => void, ms: number): unknown {
    const handle = ++this.seq;
    this.pending.set(handle, { at: this.nowMs + ms, fire });
    return handle;
  }
  clearTimeout(handle: unknown): void {
    this.pending.delete(handle as number);
  }
  get timers(): number {
    return this.pending.size;
  }
  async advanceTo(iso: string): Promise<void> {
    const target = new Date(iso).getTime();
    for (;;) {
      const due = [...this.pending.entries()]
        .filter(([, t]) => t.at <= target)
        .sort(([, a], [, b]) => a.at - b.at)[0];
      if (!due) break;
      this.pending.delete(due[0]);
      this.nowMs = Math.max(this.nowMs, due[1].at);
      due[1].fire();
      for (let i = 0; i < 10; i++) await new Promise((r) => setImmediate(r));
    }
    this.nowMs = target;
  }
}

function policy(overrides: Partial<SnapshotPolicy> = {}): SnapshotPolicy {
  return {
    id: 'policy-1',
    volumeId: 'vol-1',
    schedule: 'cron(0 3 * * ? *)',
    timeZone: 'Europe/Paris',
    keep: 3,
    backup: false,
    version: 1,
    createdAt: '2024-06-01T10:00:00.000Z',
    updatedAt: '2024-06-01T10:00:00.000Z',
    ...overrides,
  };
}

interface Setup {
  service: LocalScheduler;
  time: ManualTime;
  fired: { target: ScheduleTarget & { Input: string }; scheduledTime: string }[];
  client: SchedulerClient;
  adapter: EventBridgeSchedules;
  credentials: LocalCredentialStore;
}

let dir: string;
const open: Setup[] = [];

async function setup(
  options: { start?: string; stateFile?: string; role?: string; failFirst?: number } = {},
): Promise<Setup> {
  const time = new ManualTime(options.start ?? '2024-06-01T12:00:00Z');
  const fired: Setup['fired'] = [];
  let failures = options.failFirst ?? 0;
  const credentials = new LocalCredentialStore();
  const service = await startSchedulerService({
    account,
    credentials,
    authorizer,
    groups: [GROUP],
    stateFile: options.stateFile ?? path.join(dir, `${Math.random()}.json`),
    clock: time.clock,
    timers: time,
    retryDelayMs: 0,
    invoke: async (firing) => {
      if (failures-- > 0) throw new Error('StartExecution throttled');
      fired.push(firing);
    },
  });
  const client = new SchedulerClient({
    region: 'us-east-1',
    endpoint: service.url,
    credentials: credentials.issue(options.role ?? MANAGER, 'api'),
    maxAttempts: 1,
  });
  const adapter = new EventBridgeSchedules({
    groupName: GROUP,
    roleArn: TARGET_ROLE,
    stateMachineArn: FLOW,
    client,
  });
  const s = { service, time, fired, client, adapter, credentials };
  open.push(s);
  return s;
}

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'strata-scheduler-'));
});
afterEach(async () => {
  for (const s of open.splice(0)) {
    s.client.destroy();
    await s.service.close();
  }
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('the local EventBridge Scheduler', () => {
  it('serves the adapter end to end: create, update on conflict, get, remove twice', async () => {
    const { adapter, client, service } = await setup();
    await adapter.upsert(policy());
    await adapter.upsert(policy({ schedule: 'rate(1 hour)', timeZone: 'UTC' }));

    const got = await client.send(new GetScheduleCommand({ Name: 'policy-1', GroupName: GROUP }));
    expect(got).toMatchObject({
      Name: 'policy-1',
      GroupName: GROUP,
      ScheduleExpression: 'rate(1 hour)',
      State: 'ENABLED',
      Target: { Arn: FLOW, RoleArn: TARGET_ROLE },
    });
    expect(got.Arn).toBe(`arn:aws:scheduler:us-east-1:${ACCOUNT}:schedule/${GROUP}/policy-1`);
    expect(got.CreationDate).toBeInstanceOf(Date);
    expect(service.names()).toEqual([`${GROUP}/policy-1`]);

    await adapter.remove('policy-1');
    await adapter.remove('policy-1');
    expect(service.names()).toEqual([]);
    await expect(
      client.send(new GetScheduleCommand({ Name: 'policy-1', GroupName: GROUP })),
    ).rejects.toMatchObject({
      name: 'ResourceNotFoundException',
    });
  });

  it('answers a second create with ConflictException, an unknown group with AccessDenied before ResourceNotFound', async () => {
    const { client, adapter, service, credentials } = await setup();
    await adapter.upsert(policy());
    const input = adapter.definition(policy());
    await expect(client.send(new CreateScheduleCommand(input))).rejects.toMatchObject({
      name: 'ConflictException',
    });
    await expect(
      client.send(new CreateScheduleCommand({ ...input, GroupName: 'nope' })),
    ).rejects.toMatchObject({
      // As on AWS, a caller whose policy does not cover the group learns nothing about it.
      name: 'AccessDeniedException',
    });
    const wide = new SchedulerClient({
      region: 'us-east-1',
      endpoint: service.url,
      credentials: credentials.issue(WIDE, 'wide'),
      maxAttempts: 1,
    });
    await expect(wide.send(new CreateScheduleCommand({ ...input, GroupName: 'nope' }))).rejects.toMatchObject(
      {
        name: 'ResourceNotFoundException',
      },
    );
  });

  it('refuses an invalid expression with ValidationException, the adapter with an input error', async () => {
    const { client, adapter, service } = await setup();
    await expect(
      client.send(
        new CreateScheduleCommand({ ...adapter.definition(policy()), ScheduleExpression: 'every day' }),
      ),
    ).rejects.toMatchObject({ name: 'ValidationException' });
    expect(service.names()).toEqual([]);
  });

  it('needs iam:PassRole on the target role: without it nothing is created', async () => {
    const { adapter, service } = await setup({ role: NO_PASS });
    await expect(adapter.upsert(policy())).rejects.toMatchObject({ name: 'AccessDeniedException' });
    expect(service.names()).toEqual([]);
  });

  it('fires each cron slot in the time zone, with the slot in the input', async () => {
    const { adapter, service, time, fired } = await setup();
    await adapter.upsert(policy());

    expect(service.nextFire(GROUP, 'policy-1')?.toISOString()).toBe('2024-06-02T01:00:00.000Z');
    await time.advanceTo('2024-06-02T00:59:59Z');
    expect(fired).toHaveLength(0);
    await time.advanceTo('2024-06-03T02:00:00Z');

    expect(fired.map((f) => JSON.parse(f.target.Input))).toEqual([
      { policyId: 'policy-1', scheduledTime: '2024-06-02T01:00:00Z' },
      { policyId: 'policy-1', scheduledTime: '2024-06-03T01:00:00Z' },
    ]);
    expect(fired[0]!.target).toMatchObject({ Arn: FLOW, RoleArn: TARGET_ROLE });
    expect(service.nextFire(GROUP, 'policy-1')?.toISOString()).toBe('2024-06-04T01:00:00.000Z');
  });

  it('counts rate() from the schedule creation, and an update keeps one timer', async () => {
    const { adapter, time, fired } = await setup({ start: '2024-06-01T10:00:30Z' });
    await adapter.upsert(policy({ schedule: 'rate(5 minutes)', timeZone: 'UTC' }));
    await adapter.upsert(policy({ schedule: 'rate(5 minutes)', timeZone: 'UTC', keep: 4 }));
    expect(time.timers).toBe(1);

    await time.advanceTo('2024-06-01T10:16:00Z');

    expect(fired.map((f) => JSON.parse(f.target.Input).scheduledTime)).toEqual([
      '2024-06-01T10:05:30Z',
      '2024-06-01T10:10:30Z',
      '2024-06-01T10:15:30Z',
    ]);
  });

  it('stops firing a removed schedule', async () => {
    const { adapter, time, fired } = await setup();
    await adapter.upsert(policy());
    await adapter.remove('policy-1');
    await time.advanceTo('2024-06-05T00:00:00Z');
    expect(fired).toHaveLength(0);
    expect(time.timers).toBe(0);
  });

  it('retries a failed delivery, as the target RetryPolicy allows', async () => {
    const { adapter, time, fired } = await setup({ failFirst: 2 });
    await adapter.upsert(
      policy({ schedule: 'rate(1 minute)', timeZone: 'UTC', createdAt: '2024-06-01T12:00:00.000Z' }),
    );
    await time.advanceTo('2024-06-01T12:01:30Z');
    for (let i = 0; i < 100 && fired.length === 0; i++) await new Promise((r) => setTimeout(r, 5));
    expect(fired.map((f) => JSON.parse(f.target.Input).scheduledTime)).toEqual(['2024-06-01T12:01:00Z']);
  });

  it('keeps schedules across a restart, armed again, and makes up no missed slot', async () => {
    const stateFile = path.join(dir, 'kept.json');
    const first = await setup({ stateFile });
    await first.adapter.upsert(policy());
    await first.service.close();
    open.splice(open.indexOf(first), 1);
    first.client.destroy();

    const second = await setup({ stateFile, start: '2024-06-03T12:00:00Z' });
    expect(second.service.names()).toEqual([`${GROUP}/policy-1`]);
    // The 2 June and 3 June slots passed while it was down: the next one is 4 June.
    expect(second.service.nextFire(GROUP, 'policy-1')?.toISOString()).toBe('2024-06-04T01:00:00.000Z');
    await second.time.advanceTo('2024-06-04T01:00:00Z');
    expect(second.fired).toHaveLength(1);
  });
});
