import {
  ExecutionAlreadyExists,
  ExecutionLimitExceeded,
  SFNClient,
  StartExecutionCommand,
  StateMachineDoesNotExist,
} from '@aws-sdk/client-sfn';
import { mockClient } from 'aws-sdk-client-mock';
import {
  executionArn,
  StepFunctionsWorkflows,
  toExecutionName,
} from '../../../../functions/adapters/aws/sfn-workflows.js';
import { InputError, NotFoundError, UnavailableError } from '../../../../functions/core/errors.js';
import { EnvName } from '../../../../functions/env-names.js';

const sfn = mockClient(SFNClient);

const ATTACH_ARN = 'arn:aws:states:eu-west-1:123456789012:stateMachine:StoreAttach-abc123';
const MAINTENANCE_ARN = 'arn:aws:states:eu-west-1:123456789012:stateMachine:StoreMaintenance-def456';

function workflows() {
  return new StepFunctionsWorkflows({
    client: new SFNClient({ region: 'eu-west-1' }),
    stateMachineArns: { 'store-attach': ATTACH_ARN, 'store-maintenance': MAINTENANCE_ARN },
  });
}

beforeEach(() => sfn.reset());

describe('StepFunctionsWorkflows', () => {
  describe('start', () => {
    it("starts the flow's state machine with the job id as execution name", async () => {
      const arn = executionArn(ATTACH_ARN, 'job-1');
      sfn.on(StartExecutionCommand).resolves({ executionArn: arn, startDate: new Date() });

      const result = await workflows().start('store-attach', 'job-1', { jobId: 'job-1', storeId: 's-1' });

      expect(result).toEqual({ executionId: arn });
      expect(sfn).toHaveReceivedCommandWith(StartExecutionCommand, {
        stateMachineArn: ATTACH_ARN,
        name: 'job-1',
        input: JSON.stringify({ jobId: 'job-1', storeId: 's-1' }),
      });
    });

    it('returns the existing execution when the name was already started', async () => {
      sfn
        .on(StartExecutionCommand)
        .rejects(new ExecutionAlreadyExists({ message: 'Execution Already Exists', $metadata: {} }));

      const result = await workflows().start('store-maintenance', 'job-2', {});

      expect(result).toEqual({
        executionId: 'arn:aws:states:eu-west-1:123456789012:execution:StoreMaintenance-def456:job-2',
      });
    });

    it('yields the same execution id for a first and a repeated start', async () => {
      const arn = executionArn(ATTACH_ARN, 'job-3');
      sfn
        .on(StartExecutionCommand)
        .resolvesOnce({ executionArn: arn, startDate: new Date() })
        .rejects(new ExecutionAlreadyExists({ message: 'exists', $metadata: {} }));
      const port = workflows();

      const first = await port.start('store-attach', 'job-3', {});
      const second = await port.start('store-attach', 'job-3', {});

      expect(second).toEqual(first);
    });

    it('rewrites ids that are not valid execution names, stably', async () => {
      sfn.on(StartExecutionCommand).resolves({ executionArn: 'arn:x', startDate: new Date() });

      await workflows().start('store-attach', 'job:1/with spaces', {});

      const { name } = sfn.commandCalls(StartExecutionCommand)[0]!.args[0].input;
      expect(name).toMatch(/^[A-Za-z0-9_-]{1,80}$/);
      expect(name).toBe(toExecutionName('job:1/with spaces'));
    });

    it('throws NotFoundError for a flow without a state machine', async () => {
      const port = new StepFunctionsWorkflows({ stateMachineArns: { 'store-attach': ATTACH_ARN } });

      await expect(port.start('store-maintenance', 'job-4', {})).rejects.toBeInstanceOf(NotFoundError);
      expect(sfn).not.toHaveReceivedCommand(StartExecutionCommand);
    });

    it('maps a missing state machine to NotFoundError', async () => {
      sfn.on(StartExecutionCommand).rejects(new StateMachineDoesNotExist({ message: 'gone', $metadata: {} }));

      await expect(workflows().start('store-attach', 'job-5', {})).rejects.toBeInstanceOf(NotFoundError);
    });

    it('maps the execution limit to UnavailableError', async () => {
      sfn.on(StartExecutionCommand).rejects(new ExecutionLimitExceeded({ message: 'limit', $metadata: {} }));

      await expect(workflows().start('store-attach', 'job-6', {})).rejects.toBeInstanceOf(UnavailableError);
    });

    it('passes other errors through', async () => {
      sfn.on(StartExecutionCommand).rejects(new Error('network down'));

      await expect(workflows().start('store-attach', 'job-7', {})).rejects.toThrow('network down');
    });
  });

  describe('constructor', () => {
    it('rejects a malformed state machine ARN', () => {
      expect(
        () => new StepFunctionsWorkflows({ stateMachineArns: { 'store-attach': 'not-an-arn' } }),
      ).toThrow(InputError);
    });
  });

  describe('fromEnv', () => {
    it('reads the flow map from STRATA_STATE_MACHINE_ARNS', async () => {
      sfn.on(StartExecutionCommand).resolves({ executionArn: 'arn:x', startDate: new Date() });
      const port = StepFunctionsWorkflows.fromEnv(
        { [EnvName.StateMachineArns]: JSON.stringify({ 'store-attach': ATTACH_ARN }) },
        { client: new SFNClient({ region: 'eu-west-1' }) },
      );

      await port.start('store-attach', 'job-8', {});

      expect(sfn).toHaveReceivedCommandWith(StartExecutionCommand, { stateMachineArn: ATTACH_ARN });
    });

    it.each([undefined, 'not json', '[]'])('rejects %p', (value) => {
      expect(() => StepFunctionsWorkflows.fromEnv({ [EnvName.StateMachineArns]: value })).toThrow(InputError);
    });
  });
});

describe('toExecutionName', () => {
  it('keeps valid names unchanged', () => {
    expect(toExecutionName('01HZX8K2M3N4P5Q6R7S8T9V0W1')).toBe('01HZX8K2M3N4P5Q6R7S8T9V0W1');
  });

  it('keeps distinct invalid names distinct and within 80 characters', () => {
    const a = toExecutionName(`${'a'.repeat(100)}:1`);
    const b = toExecutionName(`${'a'.repeat(100)}:2`);

    expect(a).not.toBe(b);
    expect(a.length).toBeLessThanOrEqual(80);
    expect(a).toMatch(/^[A-Za-z0-9_-]+$/);
  });

  it('rejects an empty name', () => {
    expect(() => toExecutionName('')).toThrow(InputError);
  });
});
