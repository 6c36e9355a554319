/**
 * The embedded stack's EventBridge Scheduler: one timer per snapshot policy, firing at the times
 * the policy's schedule names (cron in its time zone, or rate from the policy's creation), each
 * firing starting the snapshot-policy flow with `{ policyId, scheduledTime }`, as Scheduler does.
 *
 * The execution is named after the policy and the slot, so a slot fired twice (a restart inside
 * the minute, an upsert racing a firing) is one execution; the flow's per-slot snapshot id makes it
 * one snapshot in any case. Like Scheduler without a flexible window, a slot missed while the
 * process was not running is not made up for: the next firing is the next slot from now.
 */
import type { Logger } from '../../drivers/sdk/types.js';
import type { SnapshotPolicy } from '../../functions/core/model.js';
import {
  type Clock,
  FlowName,
  type SchedulerPort,
  systemClock,
  type WorkflowPort,
} from '../../functions/core/ports.js';
import { nextFireTime, parseSchedule, type Schedule } from '../../functions/core/schedule.js';

/** The timer functions the scheduler uses (injectable, so tests can drive time). */
export interface SchedulerTimers {
  setTimeout(fire: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

const realTimers: SchedulerTimers = {
  // unref: a pending policy timer never keeps the process alive.
  setTimeout: (fire, ms) => setTimeout(fire, ms).unref(),
  clearTimeout: (handle) => clearTimeout(handle as NodeJS.Timeout),
};

/** setTimeout's longest delay (about 24.8 days); longer waits re-arm on the way. */
const MAX_TIMER_MS = 2 ** 31 - 1;

export interface LocalPolicySchedulerOptions {
  workflows: WorkflowPort;
  /** What "now" is; tests move it to just before a slot. Default the system clock. */
  clock?: Clock;
  timers?: SchedulerTimers;
  logger?: Logger;
}

interface Entry {
  policy: SnapshotPolicy;
  schedule: Schedule;
  next?: Date;
  handle?: unknown;
}

/**
 * @example
 * const scheduler = new LocalPolicyScheduler({ workflows: runner });
 * const strata = new Strata({ ...ports, scheduler });
 * await scheduler.start(await strata.policies.all());
 */
export class LocalPolicyScheduler implements SchedulerPort {
  private readonly entries = new Map<string, Entry>();
  private readonly clock: Clock;
  private readonly timers: SchedulerTimers;
  private stopped = false;

  constructor(private readonly options: LocalPolicySchedulerOptions) {
    this.clock = options.clock ?? systemClock;
    this.timers = options.timers ?? realTimers;
  }

  /** Arms every existing policy (the stack's start). A policy whose schedule fails is logged and skipped. */
  async start(policies: readonly SnapshotPolicy[]): Promise<void> {
    for (const policy of policies) {
      await this.upsert(policy).catch((e: unknown) =>
        this.options.logger?.error('policy schedule not armed', {
          policyId: policy.id,
          error: (e as Error).message,
        }),
      );
    }
  }

  async upsert(policy: SnapshotPolicy): Promise<void> {
    if (this.stopped) throw new Error('the policy scheduler is stopped');
    const schedule = parseSchedule(policy.schedule);
    this.disarm(policy.id);
    const entry: Entry = { policy, schedule };
    this.entries.set(policy.id, entry);
    this.arm(entry, this.clock.now());
  }

  async remove(policyId: string): Promise<void> {
    this.disarm(policyId);
  }

  /** When a policy fires next; undefined for a policy this scheduler does not hold (or never fires). */
  nextFire(policyId: string): Date | undefined {
    return this.entries.get(policyId)?.next;
  }

  /** The policies it holds a schedule for. */
  policyIds(): string[] {
    return [...this.entries.keys()];
  }

  stop(): void {
    this.stopped = true;
    for (const id of [...this.entries.keys()]) this.disarm(id);
  }

  private disarm(policyId: string): void {
    const entry = this.entries.get(policyId);
    if (entry?.handle !== undefined) this.timers.clearTimeout(entry.handle);
    this.entries.delete(policyId);
  }

  private arm(entry: Entry, after: Date): void {
    const { policy, schedule } = entry;
    const next = nextFireTime(schedule, {
      after,
      timeZone: policy.timeZone,
      anchor: new Date(policy.createdAt),
    });
    entry.next = next;
    entry.handle = undefined;
    if (!next) {
      this.options.logger?.info('policy schedule has no further firings', { policyId: policy.id });
      return;
    }
    const delay = next.getTime() - this.clock.now().getTime();
    entry.handle = this.timers.setTimeout(
      () => {
        if (this.entries.get(policy.id) !== entry || this.stopped) return; // replaced or removed
        if (delay > MAX_TIMER_MS) this.arm(entry, after);
        else void this.fire(entry, next);
      },
      Math.max(0, Math.min(delay, MAX_TIMER_MS)),
    );
  }

  private async fire(entry: Entry, at: Date): Promise<void> {
    const { policy } = entry;
    const scheduledTime = at.toISOString();
    const slot = scheduledTime.replace(/[-:]/g, '').slice(0, 13);
    try {
      await this.options.workflows.start(FlowName.SnapshotPolicy, `${policy.id}-${slot}`, {
        policyId: policy.id,
        scheduledTime,
      });
    } catch (e) {
      this.options.logger?.error('policy flow not started', {
        policyId: policy.id,
        scheduledTime,
        error: (e as Error).message,
      });
    }
    if (this.entries.get(policy.id) !== entry || this.stopped) return;
    const now = this.clock.now();
    this.arm(entry, now > at ? now : at);
  }
}
