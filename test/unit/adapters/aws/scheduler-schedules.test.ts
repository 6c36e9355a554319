import {
  ConflictException,
  CreateScheduleCommand,
  DeleteScheduleCommand,
  ResourceNotFoundException,
  SchedulerClient,
  ThrottlingException,
  UpdateScheduleCommand,
  ValidationException,
} from '@aws-sdk/client-scheduler';
import { mockClient } from 'aws-sdk-client-mock';
import {
  EventBridgeSchedules,
  SCHEDULED_TIME_ATTRIBUTE,
} from '../../../../functions/adapters/aws/scheduler-schedules.js';
import { InputError, UnavailableError } from '../../../../functions/core/errors.js';
import type { SnapshotPolicy } from '../../../../functions/core/model.js';
import { EnvName } from '../../../../functions/env-names.js';

const scheduler = mockClient(SchedulerClient);

const GROUP = 'Strata-snapshot-policies';
const ROLE = 'arn:aws:iam::123456789012:role/Strata-SchedulerRole';
const POLICY_FLOW = 'arn:aws:states:eu-west-1:123456789012:stateMachine:SnapshotPolicy-abc';

const policy: SnapshotPolicy = {
  id: 'policy-7f1c2d9e-0000-4000-8000-000000000001',
  volumeId: 'vol-1',
  schedule: 'cron(0 3 * * ? *)',
  timeZone: 'Europe/Paris',
  keep: 7,
  backup: true,
  version: 1,
  createdAt: '2024-06-01T00:00:00.000Z',
  updatedAt: '2024-06-01T00:00:00.000Z',
};

function schedules() {
  return new EventBridgeSchedules({
    groupName: GROUP,
    roleArn: ROLE,
    stateMachineArn: POLICY_FLOW,
    client: new SchedulerClient({ region: 'eu-west-1' }),
  });
}

const awsError = <T>(Type: new (o: { message: string; Message: string; $metadata: object }) => T) =>
  new Type({ message: 'from the mock', Message: 'from the mock', $metadata: {} });

beforeEach(() => scheduler.reset());

describe('EventBridgeSchedules', () => {
  describe('upsert', () => {
    it('creates a schedule named after the policy that starts the policy flow with the slot time', async () => {
      scheduler.on(CreateScheduleCommand).resolves({ ScheduleArn: 'arn:schedule' });

      await schedules().upsert(policy);

      expect(scheduler).toHaveReceivedCommandTimes(CreateScheduleCommand, 1);
      expect(scheduler).toHaveReceivedCommandWith(CreateScheduleCommand, {
        Name: policy.id,
        GroupName: GROUP,
        ScheduleExpression: 'cron(0 3 * * ? *)',
        ScheduleExpressionTimezone: 'Europe/Paris',
        FlexibleTimeWindow: { Mode: 'OFF' },
        State: 'ENABLED',
        Target: expect.objectContaining({
          Arn: POLICY_FLOW,
          RoleArn: ROLE,
          RetryPolicy: expect.objectContaining({ MaximumRetryAttempts: expect.any(Number) }),
        }),
      });
      const input = scheduler.commandCalls(CreateScheduleCommand)[0]!.args[0].input.Target!.Input!;
      expect(JSON.parse(input)).toEqual({ policyId: policy.id, scheduledTime: SCHEDULED_TIME_ATTRIBUTE });
      expect(SCHEDULED_TIME_ATTRIBUTE).toBe('<aws.scheduler.scheduled-time>');
    });

    it('replaces the schedule when it exists already', async () => {
      scheduler.on(CreateScheduleCommand).rejects(awsError(ConflictException));
      scheduler.on(UpdateScheduleCommand).resolves({ ScheduleArn: 'arn:schedule' });

      await schedules().upsert({ ...policy, schedule: 'rate(6 hours)' });

      expect(scheduler).toHaveReceivedCommandWith(UpdateScheduleCommand, {
        Name: policy.id,
        GroupName: GROUP,
        ScheduleExpression: 'rate(6 hours)',
        Target: expect.objectContaining({ Arn: POLICY_FLOW }),
      });
    });

    it('reports a refused expression as an input error naming schedule', async () => {
      scheduler.on(CreateScheduleCommand).rejects(awsError(ValidationException));

      const error = await schedules()
        .upsert(policy)
        .catch((e: unknown) => e);

      expect(error).toBeInstanceOf(InputError);
      expect((error as InputError).context.field).toBe('schedule');
      expect(scheduler).not.toHaveReceivedCommand(UpdateScheduleCommand);
    });

    it('reports throttling as unavailable (retry later)', async () => {
      scheduler.on(CreateScheduleCommand).rejects(awsError(ThrottlingException));

      await expect(schedules().upsert(policy)).rejects.toBeInstanceOf(UnavailableError);
    });
  });

  describe('remove', () => {
    it('deletes the schedule from the group', async () => {
      scheduler.on(DeleteScheduleCommand).resolves({});

      await schedules().remove(policy.id);

      expect(scheduler).toHaveReceivedCommandWith(DeleteScheduleCommand, {
        Name: policy.id,
        GroupName: GROUP,
      });
    });

    it('treats a schedule that does not exist as removed', async () => {
      scheduler.on(DeleteScheduleCommand).rejects(awsError(ResourceNotFoundException));

      await expect(schedules().remove(policy.id)).resolves.toBeUndefined();
    });

    it('passes other failures on', async () => {
      scheduler.on(DeleteScheduleCommand).rejects(new Error('network down'));

      await expect(schedules().remove(policy.id)).rejects.toThrow('network down');
    });
  });

  describe('fromEnv', () => {
    const env = {
      [EnvName.SchedulerGroup]: GROUP,
      [EnvName.SchedulerRoleArn]: ROLE,
      [EnvName.StateMachineArns]: JSON.stringify({ 'snapshot-policy': POLICY_FLOW }),
    };

    it('reads the group, the role and the snapshot-policy state machine', async () => {
      scheduler.on(CreateScheduleCommand).resolves({});
      const port = EventBridgeSchedules.fromEnv(env, {
        client: new SchedulerClient({ region: 'eu-west-1' }),
      });

      await port!.upsert(policy);

      expect(scheduler).toHaveReceivedCommandWith(CreateScheduleCommand, {
        GroupName: GROUP,
        Target: expect.objectContaining({ Arn: POLICY_FLOW, RoleArn: ROLE }),
      });
    });

    it('is undefined where no schedule group is configured', () => {
      expect(EventBridgeSchedules.fromEnv({})).toBeUndefined();
    });

    it('refuses a group without the role or the flow', () => {
      expect(() => EventBridgeSchedules.fromEnv({ ...env, [EnvName.SchedulerRoleArn]: undefined })).toThrow(
        EnvName.SchedulerRoleArn,
      );
      expect(() => EventBridgeSchedules.fromEnv({ ...env, [EnvName.StateMachineArns]: '{}' })).toThrow(
        'snapshot-policy',
      );
    });
  });
});
