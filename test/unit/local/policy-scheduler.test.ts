import type { SnapshotPolicy } from '../../../functions/core/model.js';
import type { FlowName, WorkflowPort } from '../../../functions/core/ports.js';
import { LocalPolicyScheduler, type SchedulerTimers } from '../../../infra/local/policy-scheduler.js';

/** A clock and timers that only move when the test says so. */
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

  /** Moves time forward, firing due timers in order (and those they set, when due). */
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
      // let the firing's promise chain (workflow start, re-arm) run
      for (let i = 0; i < 5; i++) await Promise.resolve();
    }
    this.nowMs = target;
  }
}

class RecordingWorkflows implements WorkflowPort {
  readonly starts: { flow: FlowName; name: string; input: Record<string, unknown> }[] = [];
  async start(flow: FlowName, name: string, input: Record<string, unknown>) {
    this.starts.push({ flow, name, input });
    return { executionId: `exec-${name}` };
  }
}

function policy(overrides: Partial<SnapshotPolicy> = {}): SnapshotPolicy {
  return {
    id: 'policy-00000000-0000-4000-8000-000000000001',
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

function setup(start = '2024-06-01T12:00:00Z') {
  const time = new ManualTime(start);
  const workflows = new RecordingWorkflows();
  const scheduler = new LocalPolicyScheduler({ workflows, clock: time.clock, timers: time });
  return { time, workflows, scheduler };
}

describe('LocalPolicyScheduler', () => {
  describe('upsert', () => {
    it('starts the snapshot-policy flow at each cron slot, read in the policy time zone', async () => {
      const { time, workflows, scheduler } = setup();
      await scheduler.upsert(policy());

      expect(scheduler.nextFire(policy().id)?.toISOString()).toBe('2024-06-02T01:00:00.000Z');
      await time.advanceTo('2024-06-02T00:59:59Z');
      expect(workflows.starts).toHaveLength(0);

      await time.advanceTo('2024-06-03T02:00:00Z');

      expect(workflows.starts).toEqual([
        {
          flow: 'snapshot-policy',
          name: `${policy().id}-20240602T0100`,
          input: { policyId: policy().id, scheduledTime: '2024-06-02T01:00:00.000Z' },
        },
        {
          flow: 'snapshot-policy',
          name: `${policy().id}-20240603T0100`,
          input: { policyId: policy().id, scheduledTime: '2024-06-03T01:00:00.000Z' },
        },
      ]);
      expect(scheduler.nextFire(policy().id)?.toISOString()).toBe('2024-06-04T01:00:00.000Z');
    });

    it('fires rate schedules at whole intervals from the policy creation', async () => {
      const { time, workflows, scheduler } = setup('2024-06-01T10:07:00Z');
      await scheduler.upsert(policy({ schedule: 'rate(5 minutes)', createdAt: '2024-06-01T10:00:30.000Z' }));

      await time.advanceTo('2024-06-01T10:21:00Z');

      expect(workflows.starts.map((s) => s.input.scheduledTime)).toEqual([
        '2024-06-01T10:10:30.000Z',
        '2024-06-01T10:15:30.000Z',
        '2024-06-01T10:20:30.000Z',
      ]);
    });

    it('replaces the schedule of a policy it holds, keeping one timer', async () => {
      const { time, workflows, scheduler } = setup();
      await scheduler.upsert(policy());
      await scheduler.upsert(policy({ schedule: 'cron(30 12 * * ? *)', timeZone: 'UTC' }));

      expect(time.timers).toBe(1);
      await time.advanceTo('2024-06-02T12:00:00Z');
      expect(workflows.starts.map((s) => s.input.scheduledTime)).toEqual(['2024-06-01T12:30:00.000Z']);
    });

    it('refuses a policy whose schedule it cannot read', async () => {
      const { scheduler } = setup();
      await expect(scheduler.upsert(policy({ schedule: 'every day' }))).rejects.toThrow(/schedule/);
    });
  });

  describe('remove', () => {
    it('stops the policy firing', async () => {
      const { time, workflows, scheduler } = setup();
      await scheduler.upsert(policy());

      await scheduler.remove(policy().id);
      await time.advanceTo('2024-06-05T00:00:00Z');

      expect(workflows.starts).toHaveLength(0);
      expect(scheduler.nextFire(policy().id)).toBeUndefined();
      expect(time.timers).toBe(0);
    });

    it('is quiet about a policy it does not hold', async () => {
      const { scheduler } = setup();
      await expect(scheduler.remove('policy-unknown')).resolves.toBeUndefined();
    });
  });

  describe('start and stop', () => {
    it('arms every existing policy, skipping one it cannot read', async () => {
      const { scheduler } = setup();
      const other = policy({ id: 'policy-2', schedule: 'rate(1 hour)' });

      await scheduler.start([policy(), policy({ id: 'policy-bad', schedule: 'nope' }), other]);

      expect(scheduler.policyIds().sort()).toEqual([policy().id, 'policy-2'].sort());
    });

    it('clears every timer on stop, and refuses new schedules', async () => {
      const { time, workflows, scheduler } = setup();
      await scheduler.start([policy(), policy({ id: 'policy-2', schedule: 'rate(1 hour)' })]);

      scheduler.stop();
      await time.advanceTo('2024-06-05T00:00:00Z');

      expect(time.timers).toBe(0);
      expect(workflows.starts).toHaveLength(0);
      await expect(scheduler.upsert(policy())).rejects.toThrow(/stopped/);
    });
  });

  it('keeps firing when one start fails', async () => {
    const { time } = setup();
    const flaky = new RecordingWorkflows();
    let calls = 0;
    const workflows: WorkflowPort = {
      start: async (flow, name, input) => {
        calls++;
        if (calls === 1) throw new Error('runner busy');
        return flaky.start(flow, name, input);
      },
    };
    const s = new LocalPolicyScheduler({ workflows, clock: time.clock, timers: time });
    await s.upsert(policy({ schedule: 'rate(1 minute)', createdAt: '2024-06-01T12:00:00.000Z' }));

    await time.advanceTo('2024-06-01T12:02:30Z');

    expect(calls).toBe(2);
    expect(flaky.starts.map((x) => x.input.scheduledTime)).toEqual(['2024-06-01T12:02:00.000Z']);
    s.stop();
  });
});
