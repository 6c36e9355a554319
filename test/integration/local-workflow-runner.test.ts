import { NotFoundError } from '../../functions/core/errors.js';
import { FlowName } from '../../functions/core/ports.js';
import {
  type LocalLambda,
  LocalWorkflowRunner,
  type WorkflowEvent,
} from '../../infra/local/workflow-runner.js';
import { loadFlowDefinition } from '../../statemachines/definitions.js';

const fn = (name: string) => `arn:aws:lambda:local:000000000000:function:${name}`;
// The flows under test are ours, not the product's: any FlowName key will do for the runner.
const PIPELINE = FlowName.StoreAttach;
const PLAIN = FlowName.StoreMaintenance;

/** Task with Retry on a named error, Catch to a compensating Task, Choice, Map (lambda:invoke), Wait. */
const pipeline = {
  Comment: 'test pipeline',
  StartAt: 'Prepare',
  States: {
    Prepare: {
      Type: 'Task',
      Resource: fn('prepare'),
      Parameters: { 'request.$': '$', 'jobId.$': '$$.Execution.Name' },
      TimeoutSeconds: 5,
      Retry: [{ ErrorEquals: ['HostUnavailableError'], IntervalSeconds: 2, BackoffRate: 2, MaxAttempts: 3 }],
      Catch: [{ ErrorEquals: ['States.ALL'], ResultPath: '$.error', Next: 'Compensate' }],
      ResultPath: '$.prepared',
      Next: 'Route',
    },
    Route: {
      Type: 'Choice',
      Choices: [{ Variable: '$.prepared.kind', StringEquals: 'bulk', Next: 'CopyEach' }],
      Default: 'Settle',
    },
    CopyEach: {
      Type: 'Map',
      ItemsPath: '$.items',
      MaxConcurrency: 2,
      ItemProcessor: {
        ProcessorConfig: { Mode: 'INLINE' },
        StartAt: 'Copy',
        States: {
          Copy: {
            Type: 'Task',
            Resource: 'arn:aws:states:::lambda:invoke',
            Parameters: { FunctionName: fn('copy'), 'Payload.$': '$' },
            ResultSelector: { 'copied.$': '$.Payload.copied', 'status.$': '$.StatusCode' },
            TimeoutSeconds: 5,
            Retry: [{ ErrorEquals: ['States.TaskFailed'], IntervalSeconds: 1, MaxAttempts: 1 }],
            End: true,
          },
        },
      },
      ResultPath: '$.copies',
      Next: 'Settle',
    },
    Settle: { Type: 'Wait', Seconds: 5, Next: 'Done' },
    Done: { Type: 'Pass', End: true },
    Compensate: {
      Type: 'Task',
      Resource: fn('compensate'),
      TimeoutSeconds: 5,
      ResultPath: '$.compensated',
      Next: 'Failed',
    },
    Failed: { Type: 'Fail', Error: 'PrepareFailed', Cause: 'prepare failed and was compensated' },
  },
};

/** One Task and nothing to catch its errors; a long Wait first when asked to. */
const plain = {
  StartAt: 'MaybeWait',
  States: {
    MaybeWait: {
      Type: 'Choice',
      Choices: [
        {
          And: [
            { Variable: '$.wait', IsPresent: true },
            { Variable: '$.wait', BooleanEquals: true },
          ],
          Next: 'Long',
        },
      ],
      Default: 'Work',
    },
    Long: { Type: 'Wait', Seconds: 600, Next: 'Work' },
    Work: { Type: 'Task', Resource: fn('work'), TimeoutSeconds: 5, End: true },
  },
};

function namedError(name: string, message: string): Error {
  const error = new Error(message);
  error.name = name;
  return error;
}

function setup(lambdas: Record<string, LocalLambda>, waitTimeScale: number | undefined = 0.01) {
  const events: WorkflowEvent[] = [];
  const runner = new LocalWorkflowRunner({
    definitions: { [PIPELINE]: pipeline, [PLAIN]: plain },
    lambdas: {
      [fn('prepare')]: async () => ({ kind: 'single' }),
      [fn('copy')]: async (item) => ({ copied: item }),
      [fn('compensate')]: async () => 'undone',
      [fn('work')]: async () => 'worked',
      ...lambdas,
    },
    waitTimeScale,
    onEvent: (_, event) => events.push(event),
  });
  return { runner, events };
}

describe('LocalWorkflowRunner', () => {
  const runners: LocalWorkflowRunner[] = [];
  const track = <T extends { runner: LocalWorkflowRunner }>(value: T): T => {
    runners.push(value.runner);
    return value;
  };
  afterEach(async () => {
    await Promise.all(runners.splice(0).map((r) => r.stop()));
  });

  describe('running ASL', () => {
    it('retries a named error, then follows Choice into Map and a scaled Wait to success', async () => {
      let attempts = 0;
      const prepareInputs: unknown[] = [];
      const { runner, events } = track(
        setup({
          [fn('prepare')]: async (input) => {
            prepareInputs.push(input);
            if (++attempts < 3) throw namedError('HostUnavailableError', 'host h1 is down');
            return { kind: 'bulk' };
          },
        }),
      );
      const started = Date.now();

      const { executionId } = await runner.start(PIPELINE, 'job-1', { items: ['a', 'b', 'c'] });
      const final = await runner.waitFor(executionId);

      expect(final.status).toBe('SUCCEEDED');
      expect(final.output).toEqual({
        items: ['a', 'b', 'c'],
        prepared: { kind: 'bulk' },
        copies: [
          { copied: 'a', status: 200 },
          { copied: 'b', status: 200 },
          { copied: 'c', status: 200 },
        ],
      });
      expect(attempts).toBe(3);
      expect(prepareInputs[0]).toEqual({ request: { items: ['a', 'b', 'c'] }, jobId: 'job-1' });
      expect(events.filter((e) => e.type === 'StateRetried')).toHaveLength(2);
      expect(events.some((e) => e.type === 'MapIterationSucceeded')).toBe(true);
      // Unscaled, the retries (2 s + 4 s) and the Wait (5 s) alone would take 11 s.
      expect(Date.now() - started).toBeLessThan(5_000);
    });

    it('catches an error by name into the compensating path and fails with the Fail state error', async () => {
      const compensations: unknown[] = [];
      const { runner } = track(
        setup({
          [fn('prepare')]: async () => {
            throw namedError('ValidationError', 'size must be positive');
          },
          [fn('compensate')]: async (input) => {
            compensations.push(input);
            return 'undone';
          },
        }),
      );

      const { executionId } = await runner.start(PIPELINE, 'job-2', { items: [] });
      const final = await runner.waitFor(executionId);

      expect(final).toMatchObject({
        status: 'FAILED',
        error: 'PrepareFailed',
        cause: 'prepare failed and was compensated',
      });
      const caught = (compensations[0] as { error: { Error: string; Cause: string } }).error;
      expect(caught.Error).toBe('ValidationError');
      // The Cause is the Lambda runtime's error document, as on AWS.
      expect(JSON.parse(caught.Cause)).toMatchObject({
        errorType: 'ValidationError',
        errorMessage: 'size must be positive',
      });
    });

    it('stops retrying after MaxAttempts and then catches', async () => {
      let calls = 0;
      const { runner } = track(
        setup({
          [fn('prepare')]: async () => {
            calls++;
            throw namedError('HostUnavailableError', 'still down');
          },
        }),
      );

      const final = await runner.waitFor((await runner.start(PIPELINE, 'job-3', { items: [] })).executionId);

      expect(calls).toBe(4);
      expect(final).toMatchObject({ status: 'FAILED', error: 'PrepareFailed' });
    });

    it('matches States.TaskFailed for any error a function throws', async () => {
      let calls = 0;
      const { runner } = track(
        setup({
          [fn('prepare')]: async () => ({ kind: 'bulk' }),
          [fn('copy')]: async (item) => {
            calls++;
            if (calls === 1) throw 'a thrown string, not an Error';
            return { copied: item };
          },
        }),
      );

      const final = await runner.waitFor(
        (await runner.start(PIPELINE, 'job-4', { items: ['x'] })).executionId,
      );

      expect(final.status).toBe('SUCCEEDED');
      expect(calls).toBe(2);
    });

    it('reports an uncaught function error by its name, with the Lambda error document as cause', async () => {
      const { runner } = track(
        setup({
          [fn('work')]: async () => {
            throw namedError('HostUnavailableError', 'no host can reach store s1');
          },
        }),
      );

      const final = await runner.waitFor((await runner.start(PLAIN, 'job-5', {})).executionId);

      expect(final.status).toBe('FAILED');
      expect(final.error).toBe('HostUnavailableError');
      expect(JSON.parse(final.cause ?? '{}')).toMatchObject({ errorMessage: 'no host can reach store s1' });
    });

    it('passes payloads through JSON like the Lambda wire does', async () => {
      const { runner } = track(
        setup({
          [fn('work')]: async () => ({ at: new Date('2030-01-02T03:04:05.000Z'), gone: undefined }),
        }),
      );

      const final = await runner.waitFor((await runner.start(PLAIN, 'job-6', {})).executionId);

      expect(final.output).toEqual({ at: '2030-01-02T03:04:05.000Z' });
    });
  });

  describe('start', () => {
    it('is idempotent on the name and returns an execution ARN', async () => {
      let calls = 0;
      const { runner } = track(
        setup({
          [fn('work')]: async () => {
            calls++;
            return 'worked';
          },
        }),
      );

      const first = await runner.start(PLAIN, 'job-7', {});
      const second = await runner.start(PLAIN, 'job-7', {});
      await runner.waitFor(first.executionId);
      const third = await runner.start(PLAIN, 'job-7', {});
      const otherFlow = await runner.start(PIPELINE, 'job-7', { items: [] });

      expect(first.executionId).toBe(`arn:aws:states:local:000000000000:execution:${PLAIN}:job-7`);
      expect(second.executionId).toBe(first.executionId);
      expect(third.executionId).toBe(first.executionId);
      expect(otherFlow.executionId).not.toBe(first.executionId);
      expect(calls).toBe(1);
    });

    it('describes running executions and refuses unknown ones', async () => {
      const { runner } = track(setup({}, undefined));

      const { executionId } = await runner.start(PLAIN, 'job-8', { wait: true });

      expect(runner.describe(executionId)).toMatchObject({
        status: 'RUNNING',
        name: 'job-8',
        input: { wait: true },
      });
      expect(() => runner.describe(`${executionId}-nope`)).toThrow(NotFoundError);
    });

    it('stop() aborts running executions and refuses new ones', async () => {
      const { runner } = track(setup({}, undefined));
      const { executionId } = await runner.start(PLAIN, 'job-9', { wait: true });

      await runner.stop();

      expect(runner.describe(executionId)).toMatchObject({ status: 'ABORTED' });
      await expect(runner.start(PLAIN, 'job-10', {})).rejects.toThrow(/stopped/);
    });
  });

  describe('bindings', () => {
    it('fails at construction when a Task has no local function', () => {
      expect(
        () =>
          new LocalWorkflowRunner({
            definitions: { [PIPELINE]: pipeline },
            lambdas: { [fn('prepare')]: async () => 1 },
          }),
      ).toThrow(/no local function bound for .*function:(copy|compensate)/);
    });

    it('fails at construction on a resource it cannot run locally', () => {
      const definition = {
        StartAt: 'Put',
        States: { Put: { Type: 'Task', Resource: 'arn:aws:states:::dynamodb:putItem', End: true } },
      };
      expect(() => new LocalWorkflowRunner({ definitions: { [PLAIN]: definition }, lambdas: {} })).toThrow(
        /not supported locally/,
      );
    });

    it("binds every Task of the repository's own flow definitions", () => {
      const arn = fn('store-tasks');
      const definitions = Object.fromEntries(
        Object.values(FlowName).map((flow) => [
          flow,
          loadFlowDefinition(flow, { StoreTasksFunctionArn: arn, ImageTasksFunctionArn: arn }),
        ]),
      );

      expect(
        () => new LocalWorkflowRunner({ definitions, lambdas: { [arn]: async () => ({}) } }),
      ).not.toThrow();
    });
  });
});
