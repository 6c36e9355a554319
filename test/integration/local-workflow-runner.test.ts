import { NotFoundError } from '../../functions/core/errors.js';
import { FlowName } from '../../functions/core/ports.js';
import {
  ExecutionAlreadyExistsError,
  type LocalStateMachineDefinition,
  LocalWorkflowRunner,
  TaskDoesNotExistError,
  type WorkflowEvent,
} from '../../infra/local/workflow-runner.js';
import { loadFlowDefinition } from '../../statemachines/definitions.js';

type LocalLambda = (payload: any) => Promise<unknown>;

const ACCOUNT = '123456789012';
const fn = (name: string) => `arn:aws:lambda:us-east-1:${ACCOUNT}:function:${name}`;
const machineArn = (name: string) => `arn:aws:states:us-east-1:${ACCOUNT}:stateMachine:${name}`;
const PIPELINE = machineArn('pipeline');
const PLAIN = machineArn('plain');
const machine = (arn: string, definition: Record<string, unknown>): LocalStateMachineDefinition => ({
  name: arn.split(':').pop()!,
  arn,
  roleArn: `arn:aws:iam::${ACCOUNT}:role/test-workflows`,
  definition,
});

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

/** A runner over local stand-ins for Lambda functions, with the machines' role seen by each call. */
function runnerFor(
  machines: LocalStateMachineDefinition[],
  lambdas: Record<string, LocalLambda>,
  options: { waitTimeScale?: number; onEvent?: (event: WorkflowEvent) => void; roles?: string[] } = {},
) {
  return new LocalWorkflowRunner({
    machines,
    functionArns: Object.keys(lambdas),
    invokeLambda: async (arn, payload, calledBy) => {
      options.roles?.push(calledBy.roleArn);
      return lambdas[arn]!(payload);
    },
    ...(options.waitTimeScale !== undefined ? { waitTimeScale: options.waitTimeScale } : {}),
    ...(options.onEvent ? { onEvent: (_: string, event: WorkflowEvent) => options.onEvent!(event) } : {}),
  });
}

function setup(lambdas: Record<string, LocalLambda>, waitTimeScale: number | undefined = 0.01) {
  const events: WorkflowEvent[] = [];
  const runner = runnerFor(
    [machine(PIPELINE, pipeline), machine(PLAIN, plain)],
    {
      [fn('prepare')]: async () => ({ kind: 'single' }),
      [fn('copy')]: async (item) => ({ copied: item }),
      [fn('compensate')]: async () => 'undone',
      [fn('work')]: async () => 'worked',
      ...lambdas,
    },
    { ...(waitTimeScale !== undefined ? { waitTimeScale } : {}), onEvent: (event) => events.push(event) },
  );
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
    it('returns a running execution for its name and input, and refuses the name otherwise, as StartExecution does', async () => {
      let calls = 0;
      const { runner } = track(
        setup(
          {
            [fn('work')]: async () => {
              calls++;
              return 'worked';
            },
          },
          undefined,
        ),
      );

      const first = await runner.start(PLAIN, 'job-7', { wait: true });
      const second = await runner.start(PLAIN, 'job-7', { wait: true });
      await expect(runner.start(PLAIN, 'job-7', { wait: false })).rejects.toBeInstanceOf(
        ExecutionAlreadyExistsError,
      );
      const otherFlow = await runner.start(PIPELINE, 'job-7', { items: [] });
      await runner.abort(first.executionId);
      await expect(runner.start(PLAIN, 'job-7', { wait: true })).rejects.toBeInstanceOf(
        ExecutionAlreadyExistsError,
      );

      expect(first.executionId).toBe(`arn:aws:states:us-east-1:${ACCOUNT}:execution:plain:job-7`);
      expect(second.executionId).toBe(first.executionId);
      expect(otherFlow.executionId).not.toBe(first.executionId);
      expect(calls).toBe(0);
    });

    it('names an execution it starts without a name', async () => {
      const { runner } = track(setup({}));
      const { executionId } = await runner.start(PLAIN, undefined, {});
      expect(executionId).toMatch(/:execution:plain:[0-9a-f-]{36}$/);
      expect((await runner.waitFor(executionId)).status).toBe('SUCCEEDED');
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
    it('fails at construction when a Task names a function the stack does not have', () => {
      expect(() => runnerFor([machine(PIPELINE, pipeline)], { [fn('prepare')]: async () => 1 })).toThrow(
        /no function .*function:(copy|compensate) in the stack/,
      );
    });

    it('tells each function call which state machine (and so which role) makes it', async () => {
      const roles: string[] = [];
      const runner = runnerFor([machine(PLAIN, plain)], { [fn('work')]: async () => 'ok' }, { roles });
      await runner.waitFor((await runner.start(PLAIN, 'r1', {})).executionId);
      await runner.stop();
      expect(roles).toEqual([`arn:aws:iam::${ACCOUNT}:role/test-workflows`]);
    });

    it('starts another execution for a states:startExecution Task, as the calling machine', async () => {
      const parent = {
        StartAt: 'Child',
        States: {
          Child: {
            Type: 'Task',
            Resource: 'arn:aws:states:::states:startExecution',
            Parameters: { StateMachineArn: PLAIN, 'Input.$': '$' },
            TimeoutSeconds: 5,
            End: true,
          },
        },
      };
      const calls: string[] = [];
      let runner!: LocalWorkflowRunner;
      runner = new LocalWorkflowRunner({
        machines: [machine(PLAIN, plain), machine(PIPELINE, parent)],
        functionArns: [fn('work')],
        invokeLambda: async () => 'worked',
        startExecution: async (request, calledBy) => {
          calls.push(`${calledBy.name}->${request.stateMachineArn}`);
          const started = await runner.start(request.stateMachineArn, request.name, request.input);
          return { executionArn: started.executionId, startDate: started.startDate };
        },
      });
      const final = await runner.waitFor((await runner.start(PIPELINE, 'p1', { go: 1 })).executionId);
      await runner.stop();
      expect(final.status).toBe('SUCCEEDED');
      expect((final.output as { ExecutionArn: string }).ExecutionArn).toMatch(/:execution:plain:/);
      expect(calls).toEqual([`pipeline->${PLAIN}`]);
    });

    it('waits on a task token until SendTaskSuccess or SendTaskFailure names it', async () => {
      const waiting = {
        StartAt: 'Wait',
        States: {
          Wait: {
            Type: 'Task',
            Resource: 'arn:aws:states:::lambda:invoke.waitForTaskToken',
            Parameters: { FunctionName: fn('work'), Payload: { 'token.$': '$$.Task.Token', 'n.$': '$.n' } },
            TimeoutSeconds: 30,
            End: true,
          },
        },
      };
      const tokens: string[] = [];
      const runner = runnerFor([machine(PLAIN, waiting)], {
        [fn('work')]: async (payload: { token: string }) => {
          tokens.push(payload.token);
          return null;
        },
      });
      const ok = await runner.start(PLAIN, 't1', { n: 1 });
      const bad = await runner.start(PLAIN, 't2', { n: 2 });
      while (tokens.length < 2) await new Promise((r) => setTimeout(r, 10));
      expect(() => runner.sendTaskSuccess('not-a-token', {})).toThrow(TaskDoesNotExistError);
      runner.sendTaskHeartbeat(tokens[0]!);
      runner.sendTaskSuccess(tokens[0]!, { done: true });
      runner.sendTaskFailure(tokens[1]!, 'Host.Failed', 'the host said no');
      expect(await runner.waitFor(ok.executionId)).toMatchObject({
        status: 'SUCCEEDED',
        output: { done: true },
      });
      expect(await runner.waitFor(bad.executionId)).toMatchObject({ status: 'FAILED', error: 'Host.Failed' });
      expect(() => runner.sendTaskSuccess(tokens[0]!, {})).toThrow(TaskDoesNotExistError);
      await runner.stop();
    });

    it('fails at construction on a resource it cannot run locally', () => {
      const definition = {
        StartAt: 'Put',
        States: { Put: { Type: 'Task', Resource: 'arn:aws:states:::dynamodb:putItem', End: true } },
      };
      expect(() => runnerFor([machine(PLAIN, definition)], {})).toThrow(/not supported locally/);
    });

    it("binds every Task of the repository's own flow definitions", () => {
      const arn = fn('store-tasks');
      const machines = Object.values(FlowName).map((flow) =>
        machine(
          machineArn(flow),
          loadFlowDefinition(flow, { StoreTasksFunctionArn: arn, ImageTasksFunctionArn: arn }),
        ),
      );

      expect(() => runnerFor(machines, { [arn]: async () => ({}) })).not.toThrow();
    });
  });
});
