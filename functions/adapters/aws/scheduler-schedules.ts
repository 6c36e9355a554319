/**
 * The scheduler port on AWS: one EventBridge Scheduler schedule per snapshot policy, in the stack's
 * schedule group, named after the policy. Each firing starts the snapshot-policy state machine with
 * `{ policyId, scheduledTime }`, where Scheduler fills in the slot's scheduled time itself
 * (`<aws.scheduler.scheduled-time>`), so a retried delivery carries the same slot.
 */
import {
  ActionAfterCompletion,
  CreateScheduleCommand,
  type CreateScheduleInput,
  DeleteScheduleCommand,
  FlexibleTimeWindowMode,
  SchedulerClient,
  type SchedulerClientConfig,
  ScheduleState,
  UpdateScheduleCommand,
} from '@aws-sdk/client-scheduler';
import { InputError, UnavailableError, UnprocessableError } from '../../core/errors.js';
import type { SnapshotPolicy } from '../../core/model.js';
import { FlowName, type SchedulerPort } from '../../core/ports.js';
import { EnvName } from '../../env-names.js';
import { errorName, lazy } from './clients.js';

/** Scheduler's context attribute for the time the firing was scheduled for. */
export const SCHEDULED_TIME_ATTRIBUTE = '<aws.scheduler.scheduled-time>';

export interface EventBridgeSchedulesOptions {
  /** The schedule group (STRATA_SCHEDULER_GROUP). */
  groupName: string;
  /** The role Scheduler assumes to start the flow (STRATA_SCHEDULER_ROLE_ARN). */
  roleArn: string;
  /** The snapshot-policy state machine. */
  stateMachineArn: string;
  /** A ready client (tests, custom middleware). Otherwise one is built on first use. */
  client?: SchedulerClient;
  clientConfig?: SchedulerClientConfig;
}

/**
 * Snapshot-policy schedules in EventBridge Scheduler.
 *
 * @example
 * const scheduler = EventBridgeSchedules.fromEnv(process.env);
 * await scheduler.upsert(policy); // creates or replaces the policy's schedule
 * await scheduler.remove(policy.id);
 */
export class EventBridgeSchedules implements SchedulerPort {
  private readonly client: () => SchedulerClient;

  constructor(private readonly options: EventBridgeSchedulesOptions) {
    const { client, clientConfig } = options;
    this.client = client ? () => client : lazy(() => new SchedulerClient(clientConfig ?? {}));
  }

  /**
   * From the api function's environment: the group, the scheduler role and the snapshot-policy ARN
   * out of the flow map. Undefined when the group is not set (functions that manage no policies).
   */
  static fromEnv(
    env: Record<string, string | undefined>,
    options: Pick<EventBridgeSchedulesOptions, 'client' | 'clientConfig'> = {},
  ): EventBridgeSchedules | undefined {
    const groupName = env[EnvName.SchedulerGroup];
    if (!groupName) return undefined;
    const roleArn = env[EnvName.SchedulerRoleArn];
    if (!roleArn) throw new Error(`environment variable ${EnvName.SchedulerRoleArn} is not set`);
    const arns = JSON.parse(env[EnvName.StateMachineArns] ?? '{}') as Record<string, string | undefined>;
    const stateMachineArn = arns[FlowName.SnapshotPolicy];
    if (!stateMachineArn) {
      throw new Error(`${EnvName.StateMachineArns} has no ${FlowName.SnapshotPolicy} state machine`);
    }
    return new EventBridgeSchedules({ ...options, groupName, roleArn, stateMachineArn });
  }

  async upsert(policy: SnapshotPolicy): Promise<void> {
    const input = this.definition(policy);
    try {
      await mapErrors(() => this.client().send(new CreateScheduleCommand(input)));
    } catch (e) {
      if (errorName(e) !== 'ConflictException') throw e;
      // The schedule exists (a retried create, or a changed policy): replace its whole definition.
      await mapErrors(() => this.client().send(new UpdateScheduleCommand(input)));
    }
  }

  async remove(policyId: string): Promise<void> {
    try {
      await mapErrors(() =>
        this.client().send(new DeleteScheduleCommand({ Name: policyId, GroupName: this.options.groupName })),
      );
    } catch (e) {
      if (errorName(e) !== 'ResourceNotFoundException') throw e;
    }
  }

  /** What CreateSchedule and UpdateSchedule are given for a policy. */
  definition(policy: SnapshotPolicy): CreateScheduleInput {
    return {
      Name: policy.id,
      GroupName: this.options.groupName,
      Description: `Strata snapshot policy ${policy.id} (volume ${policy.volumeId}, keep ${policy.keep})`,
      ScheduleExpression: policy.schedule,
      ScheduleExpressionTimezone: policy.timeZone,
      // Each firing is one slot: it must fire at the slot's time, not somewhere in a window.
      FlexibleTimeWindow: { Mode: FlexibleTimeWindowMode.OFF },
      State: ScheduleState.ENABLED,
      ActionAfterCompletion: ActionAfterCompletion.NONE,
      Target: {
        Arn: this.options.stateMachineArn,
        RoleArn: this.options.roleArn,
        // Built as text: the placeholder must reach Scheduler verbatim inside a JSON string.
        Input: `{"policyId":${JSON.stringify(policy.id)},"scheduledTime":"${SCHEDULED_TIME_ATTRIBUTE}"}`,
        // A slot's snapshot is worth taking within the hour; later the next slot is near.
        RetryPolicy: { MaximumEventAgeInSeconds: 3600, MaximumRetryAttempts: 10 },
      },
    };
  }
}

/** Scheduler's refusals as domain errors; a conflict or a missing schedule passes through. */
async function mapErrors<T>(call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (e) {
    const message = `EventBridge Scheduler: ${(e as Error).message}`;
    switch (errorName(e)) {
      case 'ValidationException':
        throw new InputError(`schedule: ${message}`, { field: 'schedule' }, { cause: e });
      case 'ServiceQuotaExceededException':
        throw new UnprocessableError(message, {}, { cause: e });
      case 'ThrottlingException':
      case 'InternalServerException':
        throw new UnavailableError(message, {}, { cause: e });
      default:
        throw e;
    }
  }
}
