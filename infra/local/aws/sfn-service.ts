/**
 * The embedded stack's Step Functions endpoint: the JSON 1.0 protocol of StartExecution,
 * DescribeExecution, StopExecution, GetExecutionHistory, ListExecutions and SendTask*, on the local
 * workflow engine (aws-local-stepfunctions through LocalWorkflowRunner). Every call is authorized
 * against the caller's role, and every Lambda or states:startExecution Task against the state
 * machine's own role, as Step Functions does with the role it assumes.
 */
import type { Logger } from '../../../drivers/sdk/types.js';
import { NotFoundError } from '../../../functions/core/errors.js';
import {
  ExecutionAlreadyExistsError,
  type ExecutionDescription,
  type LocalStateMachineDefinition,
  LocalWorkflowRunner,
  TaskDoesNotExistError,
  type WorkflowEvent,
} from '../workflow-runner.js';
import {
  AwsServiceError,
  type CallContext,
  type LocalEndpoint,
  type RequestTap,
  startJsonService,
} from './aws-server.js';
import type { IamAuthorizer } from './iam-authorizer.js';
import { type LocalCredentialStore, principalOf } from './principals.js';

export interface SfnServiceOptions {
  credentials: LocalCredentialStore;
  authorizer: IamAuthorizer;
  machines: readonly LocalStateMachineDefinition[];
  functionArns: readonly string[];
  /** Invokes a Lambda function (its local containers). */
  invoke: (functionArn: string, payload: unknown) => Promise<unknown>;
  /** Scales Wait states and Retry intervals (tests shrink them). */
  waitTimeScale?: number;
  /** Crash points (the crash matrix); absent in `npm start`. */
  faults?: RequestTap;
  logger?: Logger;
  port?: number;
}

const seconds = (iso: string | undefined) => (iso ? Date.parse(iso) / 1000 : undefined);

export class LocalStepFunctions {
  readonly runner: LocalWorkflowRunner;
  private endpoint?: LocalEndpoint;

  constructor(private readonly options: SfnServiceOptions) {
    const roleOf = (machine: LocalStateMachineDefinition) => principalOf(machine.roleArn, 'states');
    this.runner = new LocalWorkflowRunner({
      machines: options.machines,
      functionArns: options.functionArns,
      invokeLambda: async (functionArn, payload, machine) => {
        await this.authorizeTask(machine, 'lambda:InvokeFunction', functionArn);
        return options.invoke(functionArn, payload);
      },
      startExecution: async (request, machine) => {
        await options.authorizer.authorize({
          principal: roleOf(machine),
          action: 'states:StartExecution',
          resource: request.stateMachineArn,
        });
        const input = typeof request.input === 'string' ? JSON.parse(request.input) : (request.input ?? {});
        const started = await this.runner.start(request.stateMachineArn, request.name, input);
        return { executionArn: started.executionId, startDate: started.startDate };
      },
      ...(options.waitTimeScale !== undefined ? { waitTimeScale: options.waitTimeScale } : {}),
      ...(options.logger ? { logger: options.logger } : {}),
    });
  }

  get url(): string {
    if (!this.endpoint) throw new Error('the local Step Functions service is not started');
    return this.endpoint.url;
  }

  /** Step Functions reports an integration its role may not call as a failed Task. */
  private async authorizeTask(
    machine: LocalStateMachineDefinition,
    action: string,
    resource: string,
  ): Promise<void> {
    try {
      await this.options.authorizer.authorize({
        principal: principalOf(machine.roleArn, 'states'),
        action,
        resource,
      });
    } catch (error) {
      const failure = new Error((error as Error).message);
      failure.name = 'Lambda.AWSLambdaException';
      throw failure;
    }
  }

  async start(): Promise<void> {
    this.endpoint = await startJsonService({
      signingName: 'states',
      targetPrefix: 'AWSStepFunctions',
      jsonVersion: '1.0',
      credentials: this.options.credentials,
      ...(this.options.faults ? { faults: this.options.faults } : {}),
      ...(this.options.logger ? { logger: this.options.logger } : {}),
      ...(this.options.port !== undefined ? { port: this.options.port } : {}),
      operations: {
        StartExecution: (input, ctx) => this.startExecution(input, ctx),
        DescribeExecution: (input, ctx) => this.describeExecution(input, ctx),
        StopExecution: (input, ctx) => this.stopExecution(input, ctx),
        GetExecutionHistory: (input, ctx) => this.getExecutionHistory(input, ctx),
        ListExecutions: (input, ctx) => this.listExecutions(input, ctx),
        SendTaskSuccess: (input, ctx) => this.sendTask('SendTaskSuccess', input, ctx),
        SendTaskFailure: (input, ctx) => this.sendTask('SendTaskFailure', input, ctx),
        SendTaskHeartbeat: (input, ctx) => this.sendTask('SendTaskHeartbeat', input, ctx),
      },
    });
  }

  async stop(): Promise<void> {
    await this.endpoint?.close();
    await this.runner.stop();
  }

  private describeOrThrow(executionArn: unknown): ExecutionDescription {
    try {
      return this.runner.describe(String(executionArn));
    } catch (error) {
      if (error instanceof NotFoundError) {
        throw new AwsServiceError(
          'ExecutionDoesNotExist',
          `Execution Does Not Exist: '${String(executionArn)}'`,
        );
      }
      throw error;
    }
  }

  private async startExecution(input: Record<string, unknown>, ctx: CallContext): Promise<unknown> {
    const arn = String(input.stateMachineArn ?? '');
    await this.options.authorizer.authorize({
      principal: ctx.caller.principal,
      action: 'states:StartExecution',
      resource: arn,
    });
    let parsed: unknown = {};
    if (typeof input.input === 'string' && input.input) {
      try {
        parsed = JSON.parse(input.input);
      } catch {
        throw new AwsServiceError('InvalidExecutionInput', 'Invalid State Machine Execution Input: not JSON');
      }
    }
    try {
      const started = await this.runner.start(
        arn,
        typeof input.name === 'string' ? input.name : undefined,
        parsed,
      );
      return { executionArn: started.executionId, startDate: seconds(started.startDate) };
    } catch (error) {
      if (error instanceof ExecutionAlreadyExistsError)
        throw new AwsServiceError('ExecutionAlreadyExists', error.message);
      if (error instanceof NotFoundError) {
        throw new AwsServiceError('StateMachineDoesNotExist', `State Machine Does Not Exist: '${arn}'`);
      }
      if (error instanceof Error && /execution name/.test(error.message)) {
        throw new AwsServiceError('InvalidName', error.message);
      }
      throw error;
    }
  }

  private async describeExecution(input: Record<string, unknown>, ctx: CallContext): Promise<unknown> {
    const arn = String(input.executionArn ?? '');
    await this.options.authorizer.authorize({
      principal: ctx.caller.principal,
      action: 'states:DescribeExecution',
      resource: arn,
    });
    const d = this.describeOrThrow(arn);
    return {
      executionArn: d.executionId,
      stateMachineArn: d.stateMachineArn,
      name: d.name,
      status: d.status,
      startDate: seconds(d.startDate),
      ...(d.stopDate ? { stopDate: seconds(d.stopDate) } : {}),
      input: JSON.stringify(d.input ?? {}),
      ...(d.output !== undefined ? { output: JSON.stringify(d.output) } : {}),
      ...(d.error ? { error: d.error } : {}),
      ...(d.cause ? { cause: d.cause } : {}),
    };
  }

  private async stopExecution(input: Record<string, unknown>, ctx: CallContext): Promise<unknown> {
    const arn = String(input.executionArn ?? '');
    await this.options.authorizer.authorize({
      principal: ctx.caller.principal,
      action: 'states:StopExecution',
      resource: arn,
    });
    this.describeOrThrow(arn);
    await this.runner.abort(arn);
    return { stopDate: Date.now() / 1000 };
  }

  private async getExecutionHistory(input: Record<string, unknown>, ctx: CallContext): Promise<unknown> {
    const arn = String(input.executionArn ?? '');
    await this.options.authorizer.authorize({
      principal: ctx.caller.principal,
      action: 'states:GetExecutionHistory',
      resource: arn,
    });
    this.describeOrThrow(arn);
    const events = this.runner.history(arn).map((event, i) => historyEvent(event, i + 1));
    const ordered = input.reverseOrder ? events.reverse() : events;
    const max = Number(input.maxResults ?? 1000) || 1000;
    const from = Number(input.nextToken ?? 0) || 0;
    const page = ordered.slice(from, from + max);
    return { events: page, ...(from + max < ordered.length ? { nextToken: String(from + max) } : {}) };
  }

  private async listExecutions(input: Record<string, unknown>, ctx: CallContext): Promise<unknown> {
    const arn = String(input.stateMachineArn ?? '');
    await this.options.authorizer.authorize({
      principal: ctx.caller.principal,
      action: 'states:ListExecutions',
      resource: arn,
    });
    const executions = this.runner
      .list(arn)
      .filter((d) => !input.statusFilter || d.status === input.statusFilter)
      .map((d) => ({
        executionArn: d.executionId,
        stateMachineArn: d.stateMachineArn,
        name: d.name,
        status: d.status,
        startDate: seconds(d.startDate),
        ...(d.stopDate ? { stopDate: seconds(d.stopDate) } : {}),
      }));
    return { executions };
  }

  private async sendTask(
    operation: 'SendTaskSuccess' | 'SendTaskFailure' | 'SendTaskHeartbeat',
    input: Record<string, unknown>,
    ctx: CallContext,
  ): Promise<unknown> {
    await this.options.authorizer.authorize({
      principal: ctx.caller.principal,
      action: `states:${operation}`,
      resource: '*',
    });
    const token = String(input.taskToken ?? '');
    try {
      if (operation === 'SendTaskSuccess') {
        let output: unknown;
        try {
          output = JSON.parse(String(input.output ?? 'null'));
        } catch {
          throw new AwsServiceError('InvalidOutput', 'output is not JSON');
        }
        this.runner.sendTaskSuccess(token, output);
      } else if (operation === 'SendTaskFailure') {
        this.runner.sendTaskFailure(
          token,
          typeof input.error === 'string' ? input.error : undefined,
          typeof input.cause === 'string' ? input.cause : undefined,
        );
      } else {
        this.runner.sendTaskHeartbeat(token);
      }
    } catch (error) {
      if (error instanceof TaskDoesNotExistError)
        throw new AwsServiceError('TaskDoesNotExist', error.message);
      throw error;
    }
    return {};
  }
}

/** A library event as a Step Functions history event (id, timestamp, type and its details). */
function historyEvent(event: WorkflowEvent, id: number): Record<string, unknown> {
  const timestamp = event.timestamp / 1000;
  const e = event as WorkflowEvent & {
    state?: { name: string; type: string; input?: unknown; output?: unknown };
    Error?: string;
    Cause?: unknown;
    input?: unknown;
    output?: unknown;
  };
  const base = { id, timestamp, previousEventId: id - 1 };
  switch (e.type) {
    case 'ExecutionStarted':
      return {
        ...base,
        type: 'ExecutionStarted',
        executionStartedEventDetails: { input: JSON.stringify(e.input) },
      };
    case 'ExecutionSucceeded':
      return {
        ...base,
        type: 'ExecutionSucceeded',
        executionSucceededEventDetails: { output: JSON.stringify(e.output) },
      };
    case 'ExecutionFailed':
      return {
        ...base,
        type: 'ExecutionFailed',
        executionFailedEventDetails: {
          error: e.Error,
          cause: typeof e.Cause === 'string' ? e.Cause : JSON.stringify(e.Cause),
        },
      };
    case 'ExecutionAborted':
      return { ...base, type: 'ExecutionAborted', executionAbortedEventDetails: {} };
    case 'ExecutionTimeout':
      return { ...base, type: 'ExecutionTimedOut', executionTimedOutEventDetails: {} };
    case 'StateEntered':
      return {
        ...base,
        type: `${e.state?.type ?? 'Task'}StateEntered`,
        stateEnteredEventDetails: { name: e.state?.name, input: JSON.stringify(e.state?.input ?? null) },
      };
    case 'StateExited':
      return {
        ...base,
        type: `${e.state?.type ?? 'Task'}StateExited`,
        stateExitedEventDetails: { name: e.state?.name, output: JSON.stringify(e.state?.output ?? null) },
      };
    case 'StateFailed':
      return {
        ...base,
        type: 'TaskFailed',
        taskFailedEventDetails: {
          resourceType: 'lambda',
          resource: e.state?.name,
          error: e.Error,
          cause: typeof e.Cause === 'string' ? e.Cause : JSON.stringify(e.Cause),
        },
      };
    default:
      // Retries, catches, Map and Parallel iterations: kept under their own names.
      return { ...base, type: e.type, ...(e.state ? { stateName: e.state.name } : {}) };
  }
}
