/**
 * The workflow port on AWS: one Step Functions Standard state machine per flow. The execution name is
 * the job id, so a retried start (API retry, duplicate delivery) lands on the same execution.
 */
import { createHash } from 'node:crypto';
import {
  SFNClient,
  type SFNClientConfig,
  StartExecutionCommand,
  StopExecutionCommand,
} from '@aws-sdk/client-sfn';
import { InputError, NotFoundError, UnavailableError } from '../../core/errors.js';
import type { FlowName, WorkflowPort } from '../../core/ports.js';
import { EnvName } from '../../env-names.js';
import { errorName, lazy } from './clients.js';

/** Step Functions execution names: 1–80 characters; we keep to a portable ASCII subset. */
const EXECUTION_NAME_MAX = 80;
const STATE_MACHINE_ARN = /^arn:aws[a-z-]*:states:[a-z0-9-]+:\d{12}:stateMachine:[A-Za-z0-9_-]{1,80}$/;

export interface StepFunctionsWorkflowsOptions {
  /** Flow name → state machine ARN (the api function gets it as JSON in STRATA_STATE_MACHINE_ARNS). */
  stateMachineArns: Partial<Record<FlowName, string>>;
  /** A ready client (tests, custom middleware). Otherwise one is built on first use. */
  client?: SFNClient;
  clientConfig?: SFNClientConfig;
}

/**
 * Starts flows as Step Functions executions.
 *
 * @example
 * const workflows = StepFunctionsWorkflows.fromEnv();
 * const { executionId } = await workflows.start('store-attach', job.id, { jobId: job.id });
 */
export class StepFunctionsWorkflows implements WorkflowPort {
  private readonly sfn: () => SFNClient;
  private readonly arns: Partial<Record<FlowName, string>>;

  constructor(options: StepFunctionsWorkflowsOptions) {
    for (const [flow, arn] of Object.entries(options.stateMachineArns)) {
      if (!arn || !STATE_MACHINE_ARN.test(arn)) {
        throw new InputError(`flow ${flow} has no valid state machine ARN`, {
          field: `stateMachineArns.${flow}`,
        });
      }
    }
    this.arns = { ...options.stateMachineArns };
    const { client, clientConfig } = options;
    this.sfn = client ? () => client : lazy(() => new SFNClient(clientConfig ?? {}));
  }

  /** Reads the flow → ARN map the CDK stack puts in STRATA_STATE_MACHINE_ARNS. */
  static fromEnv(
    env: Record<string, string | undefined> = process.env,
    options: Omit<StepFunctionsWorkflowsOptions, 'stateMachineArns'> = {},
  ): StepFunctionsWorkflows {
    const raw = env[EnvName.StateMachineArns];
    if (!raw)
      throw new InputError(`${EnvName.StateMachineArns} is not set`, { field: EnvName.StateMachineArns });
    let stateMachineArns: unknown;
    try {
      stateMachineArns = JSON.parse(raw);
    } catch (cause) {
      throw new InputError(
        `${EnvName.StateMachineArns} is not JSON`,
        { field: EnvName.StateMachineArns },
        { cause },
      );
    }
    if (
      typeof stateMachineArns !== 'object' ||
      stateMachineArns === null ||
      Array.isArray(stateMachineArns)
    ) {
      throw new InputError(`${EnvName.StateMachineArns} must be a JSON object`, {
        field: EnvName.StateMachineArns,
      });
    }
    return new StepFunctionsWorkflows({
      ...options,
      stateMachineArns: stateMachineArns as Partial<Record<FlowName, string>>,
    });
  }

  async start(
    flow: FlowName,
    name: string,
    input: Record<string, unknown>,
  ): Promise<{ executionId: string }> {
    const stateMachineArn = this.arns[flow];
    if (!stateMachineArn) throw new NotFoundError(`no state machine is deployed for flow ${flow}`, { flow });
    const executionName = toExecutionName(name);
    try {
      const output = await this.sfn().send(
        new StartExecutionCommand({ stateMachineArn, name: executionName, input: JSON.stringify(input) }),
      );
      if (!output.executionArn)
        throw new UnavailableError('StartExecution returned no execution ARN', { flow });
      return { executionId: output.executionArn };
    } catch (error) {
      switch (errorName(error)) {
        // Standard workflows keep names unique for 90 days: the execution this name started is the one.
        case 'ExecutionAlreadyExists':
          return { executionId: executionArn(stateMachineArn, executionName) };
        case 'StateMachineDoesNotExist':
        case 'StateMachineDeleting':
          throw new NotFoundError(
            `state machine for flow ${flow} does not exist`,
            { flow },
            { cause: error },
          );
        case 'ExecutionLimitExceeded':
          throw new UnavailableError(
            'too many running executions; try again later',
            { flow },
            { cause: error },
          );
        default:
          throw error;
      }
    }
  }

  /** Stops an execution; one that already ended (or never existed) is left alone. */
  async stop(executionId: string, cause: string): Promise<void> {
    try {
      await this.sfn().send(
        new StopExecutionCommand({
          executionArn: executionId,
          error: 'Strata.Recovered',
          cause: cause.slice(0, 32_000),
        }),
      );
    } catch (error) {
      if (errorName(error) === 'ExecutionDoesNotExist') return;
      throw error;
    }
  }
}

/**
 * Makes `name` a valid, stable execution name. Names that already fit pass through unchanged (so the
 * execution name equals the job id); others are rewritten, with a hash so distinct ids stay distinct.
 */
export function toExecutionName(name: string): string {
  if (!name) throw new InputError('execution name is required', { field: 'name' });
  if (/^[A-Za-z0-9_-]{1,80}$/.test(name)) return name;
  const hash = createHash('sha256').update(name, 'utf8').digest('hex').slice(0, 16);
  const readable = name.replace(/[^A-Za-z0-9_-]/g, '-').slice(0, EXECUTION_NAME_MAX - hash.length - 1);
  return `${readable}-${hash}`;
}

/** The ARN Step Functions gives the execution `name` of `stateMachineArn`. */
export function executionArn(stateMachineArn: string, name: string): string {
  return `${stateMachineArn.replace(':stateMachine:', ':execution:')}:${name}`;
}
