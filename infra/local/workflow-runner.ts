/**
 * The embedded stack's Step Functions: the same ASL definitions the CDK stack deploys, run in-process
 * by aws-local-stepfunctions, with every Lambda Task bound to a local function.
 *
 * What the runner adds to the library, and why:
 * - bindings by Lambda ARN: the library overrides Tasks by *state name*, so we walk each definition
 *   (including Map and Parallel bodies), resolve every Task's function up front and fail at
 *   construction when one is missing, rather than on the first execution that reaches it;
 * - Lambda semantics: payloads go through JSON both ways (as on the wire), a thrown error becomes a
 *   Task failure named like the Lambda runtime names it (`error.name`, so ErrorEquals sees e.g.
 *   `HostUnavailableError`) with a Lambda-style JSON Cause, and `lambda:invoke` Tasks get their result
 *   wrapped as `{ Payload, StatusCode, ExecutedVersion }` like the optimized integration returns;
 * - StartExecution semantics: executions are named, ARN-shaped and idempotent on the name;
 * - the library buffers every event until someone reads them, so we always drain the event log.
 */
import {
  ExecutionAbortedError,
  ExecutionError,
  ExecutionTimeoutError,
  type RunOptions,
  StateMachine,
  type StateMachineDefinition,
} from 'aws-local-stepfunctions';
import type { Logger } from '../../drivers/sdk/types.js';
import { toExecutionName } from '../../functions/adapters/aws/sfn-workflows.js';
import { NotFoundError } from '../../functions/core/errors.js';
import type { FlowName, WorkflowPort } from '../../functions/core/ports.js';

installPromiseWithResolvers();

/** A local stand-in for a Lambda function: receives the event, returns the result (JSON values). */
export type LocalLambda = (payload: unknown) => Promise<unknown>;

export const ExecutionStatus = {
  Running: 'RUNNING',
  Succeeded: 'SUCCEEDED',
  Failed: 'FAILED',
  TimedOut: 'TIMED_OUT',
  Aborted: 'ABORTED',
} as const;
export type ExecutionStatus = (typeof ExecutionStatus)[keyof typeof ExecutionStatus];

/** What DescribeExecution would say. */
export interface ExecutionDescription {
  executionId: string;
  flow: FlowName;
  name: string;
  status: ExecutionStatus;
  input: unknown;
  output?: unknown;
  /** The error name the execution failed with (what a Catch's ErrorEquals would have matched). */
  error?: string;
  cause?: string;
  startDate: string;
  stopDate?: string;
}

/** One entry of an execution's history, as aws-local-stepfunctions reports it. */
export type WorkflowEvent =
  ReturnType<StateMachine['run']>['eventLogs'] extends AsyncGenerator<infer E> ? E : never;

export interface LocalWorkflowRunnerOptions {
  /** Flow definitions with placeholders already substituted (see `loadFlowDefinition`). */
  definitions: Partial<Record<FlowName, Record<string, unknown>>>;
  /** Local functions by Lambda function ARN. */
  lambdas: Record<string, LocalLambda>;
  /**
   * Multiplies Wait state durations and Retry pauses (tests use 0 or 0.01). Waits given as
   * `SecondsPath`/`Timestamp(Path)` are only shortened when the scale is 0. Retry pauses become
   * `IntervalSeconds × scale` on every attempt (the backoff rate is not applied).
   */
  waitTimeScale?: number;
  logger?: Logger;
  /** Called for every history event of every execution (handy for debug logging). */
  onEvent?: (executionId: string, event: WorkflowEvent) => void;
  /** Finished executions kept for describe and name idempotency. Default 1000. */
  maxFinishedExecutions?: number;
  /** History events kept per execution. Default 500. */
  maxEventsPerExecution?: number;
}

const REGION = 'local';
const ACCOUNT = '000000000000';
const LAMBDA_INVOKE = 'arn:aws:states:::lambda:invoke';
const LAMBDA_ARN = /^arn:aws[a-z-]*:lambda:[^:]*:[0-9]*:function:([A-Za-z0-9_-]+)(?::([A-Za-z0-9_$-]+))?$/;
/** Step Functions' state output limit; exceeding it on AWS fails the Task with this error. */
const MAX_PAYLOAD_BYTES = 256 * 1024;

interface PreparedFlow {
  machine: StateMachine;
  overrides: NonNullable<RunOptions['overrides']>;
  stateMachineArn: string;
}

interface ExecutionRecord {
  description: ExecutionDescription;
  inputJson: string;
  abort: () => void;
  done: Promise<void>;
  events: WorkflowEvent[];
}

type TaskHandler = (input: unknown) => Promise<unknown>;

/**
 * Runs Strata's flows locally.
 *
 * @example
 * const runner = new LocalWorkflowRunner({
 *   definitions: { 'store-attach': loadFlowDefinition('store-attach', { StoreTasksFunctionArn: arn }) },
 *   lambdas: { [arn]: (event) => storeTasks(event) },
 * });
 * const { executionId } = await runner.start('store-attach', jobId, { storeId });
 * const final = await runner.waitFor(executionId);
 */
export class LocalWorkflowRunner implements WorkflowPort {
  private readonly flows = new Map<FlowName, PreparedFlow>();
  private readonly executions = new Map<string, ExecutionRecord>();
  private readonly logger?: Logger;
  private readonly onEvent?: LocalWorkflowRunnerOptions['onEvent'];
  private readonly maxFinished: number;
  private readonly maxEvents: number;
  private stopped = false;

  constructor(options: LocalWorkflowRunnerOptions) {
    this.logger = options.logger;
    this.onEvent = options.onEvent;
    this.maxFinished = options.maxFinishedExecutions ?? 1000;
    this.maxEvents = options.maxEventsPerExecution ?? 500;
    const functions = new FunctionIndex(options.lambdas);
    for (const [flow, definition] of Object.entries(options.definitions) as [
      FlowName,
      Record<string, unknown>,
    ][]) {
      this.flows.set(flow, prepareFlow(flow, definition, functions, options.waitTimeScale));
    }
  }

  async start(
    flow: FlowName,
    name: string,
    input: Record<string, unknown>,
  ): Promise<{ executionId: string }> {
    if (this.stopped) throw new Error('the workflow runner is stopped');
    const prepared = this.flows.get(flow);
    if (!prepared) throw new Error(`no definition for flow ${flow} in the local workflow runner`);
    // Same name mapping as the AWS adapter, so a job id names its execution identically on both stacks.
    const executionName = toExecutionName(name);
    const executionId = `arn:aws:states:${REGION}:${ACCOUNT}:execution:${flow}:${executionName}`;
    const inputJson = JSON.stringify(input);

    const existing = this.executions.get(executionId);
    if (existing) {
      // Step Functions refuses a reused name with other input; callers rely on same-name-same-run.
      if (existing.inputJson !== inputJson) {
        this.logger?.warn('execution name reused with different input; keeping the first execution', {
          executionId,
        });
      }
      return { executionId };
    }

    const startDate = new Date().toISOString();
    const run = prepared.machine.run(JSON.parse(inputJson), {
      overrides: prepared.overrides,
      context: {
        Execution: {
          Id: executionId,
          Name: name,
          RoleArn: `arn:aws:iam::${ACCOUNT}:role/strata-local-workflows`,
        },
        StateMachine: { Id: prepared.stateMachineArn, Name: flow },
      },
    });
    const record: ExecutionRecord = {
      description: {
        executionId,
        flow,
        name,
        status: ExecutionStatus.Running,
        input: JSON.parse(inputJson),
        startDate,
      },
      inputJson,
      abort: run.abort,
      events: [],
      done: Promise.resolve(),
    };
    this.executions.set(executionId, record);
    void this.drainEvents(record, run.eventLogs);
    record.done = run.result.then(
      (output) => this.finish(record, { status: ExecutionStatus.Succeeded, output }),
      (error: unknown) => this.finish(record, describeFailure(error)),
    );
    this.logger?.info('workflow execution started', { executionId });
    return { executionId };
  }

  /** The current state of an execution; NotFoundError for ids this runner never started (or evicted). */
  describe(executionId: string): ExecutionDescription {
    return { ...this.record(executionId).description };
  }

  /** Resolves with the final description once the execution has ended. */
  async waitFor(executionId: string, timeoutMs = 60_000): Promise<ExecutionDescription> {
    const record = this.record(executionId);
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`execution ${executionId} still running after ${timeoutMs} ms`)),
        timeoutMs,
      );
    });
    try {
      await Promise.race([record.done, timeout]);
    } finally {
      clearTimeout(timer);
    }
    return this.describe(executionId);
  }

  /** The execution's history so far (the most recent events when it is long). */
  history(executionId: string): readonly WorkflowEvent[] {
    return [...this.record(executionId).events];
  }

  /** Aborts one running execution (StopExecution). Local functions already running finish unobserved. */
  async abort(executionId: string): Promise<void> {
    const record = this.record(executionId);
    record.abort();
    await record.done;
  }

  /** Aborts every running execution and refuses new ones; for a clean shutdown. */
  async stop(): Promise<void> {
    this.stopped = true;
    const running = [...this.executions.values()].filter(
      (r) => r.description.status === ExecutionStatus.Running,
    );
    for (const record of running) record.abort();
    await Promise.all(running.map((r) => r.done));
  }

  private record(executionId: string): ExecutionRecord {
    const record = this.executions.get(executionId);
    if (!record) throw new NotFoundError(`execution ${executionId} does not exist`, { executionId });
    return record;
  }

  private async drainEvents(record: ExecutionRecord, events: AsyncGenerator<WorkflowEvent>): Promise<void> {
    const { executionId } = record.description;
    for await (const event of events) {
      record.events.push(event);
      if (record.events.length > this.maxEvents) record.events.shift();
      try {
        this.onEvent?.(executionId, event);
      } catch (error) {
        this.logger?.warn('workflow onEvent callback threw', { executionId, error });
      }
    }
  }

  private finish(
    record: ExecutionRecord,
    end: Partial<ExecutionDescription> & { status: ExecutionStatus },
  ): void {
    record.description = { ...record.description, ...end, stopDate: new Date().toISOString() };
    const { executionId, status, error, cause } = record.description;
    if (status === ExecutionStatus.Succeeded)
      this.logger?.info('workflow execution succeeded', { executionId });
    else this.logger?.warn('workflow execution ended', { executionId, status, error, cause });
    this.evictFinished();
  }

  private evictFinished(): void {
    let finished = 0;
    for (const record of this.executions.values()) {
      if (record.description.status !== ExecutionStatus.Running) finished++;
    }
    // Map iteration is insertion order, so the oldest executions go first.
    for (const [id, record] of this.executions) {
      if (finished <= this.maxFinished) break;
      if (record.description.status === ExecutionStatus.Running) continue;
      this.executions.delete(id);
      finished--;
    }
  }
}

function describeFailure(error: unknown): Partial<ExecutionDescription> & { status: ExecutionStatus } {
  if (error instanceof ExecutionAbortedError) return { status: ExecutionStatus.Aborted };
  if (error instanceof ExecutionTimeoutError) {
    return { status: ExecutionStatus.TimedOut, error: 'States.Timeout', cause: error.message };
  }
  // ExecutionError wraps the state's error, whose name is what ErrorEquals matched against.
  const inner = error instanceof ExecutionError && error.cause instanceof Error ? error.cause : error;
  if (inner instanceof Error)
    return { status: ExecutionStatus.Failed, error: inner.name, cause: inner.message };
  return { status: ExecutionStatus.Failed, error: 'States.Runtime', cause: String(inner) };
}

/** Finds a local function by full ARN, by unqualified ARN, or by bare function name. */
class FunctionIndex {
  private readonly byName = new Map<string, { arn: string; fn: LocalLambda }>();

  constructor(private readonly byArn: Record<string, LocalLambda>) {
    for (const [arn, fn] of Object.entries(byArn)) {
      const match = LAMBDA_ARN.exec(arn);
      if (!match?.[1])
        throw new Error(`local lambda key ${JSON.stringify(arn)} is not a Lambda function ARN`);
      this.byName.set(match[1], { arn, fn });
    }
  }

  find(reference: string): { arn: string; fn: LocalLambda } | undefined {
    const match = LAMBDA_ARN.exec(reference);
    if (!match) return this.byName.get(reference);
    const unqualified = match[2] ? reference.slice(0, -(match[2].length + 1)) : reference;
    for (const arn of [reference, unqualified]) {
      const fn = this.byArn[arn];
      if (fn) return { arn, fn };
    }
    return undefined;
  }
}

interface LooseState {
  Type?: string;
  Resource?: unknown;
  Parameters?: Record<string, unknown>;
  Seconds?: number;
  Retry?: { IntervalSeconds?: number }[];
  ItemProcessor?: { States?: Record<string, LooseState> };
  Iterator?: { States?: Record<string, LooseState> };
  Branches?: { States?: Record<string, LooseState> }[];
}

function prepareFlow(
  flow: FlowName,
  definition: Record<string, unknown>,
  functions: FunctionIndex,
  waitTimeScale: number | undefined,
): PreparedFlow {
  const taskHandlers: Record<string, TaskHandler> = {};
  const bindingKeys = new Map<string, string>();
  const waitTimeOverrides: Record<string, number> = {};
  const retryIntervalOverrides: Record<string, number[]> = {};

  const visit = (states: Record<string, LooseState> | undefined) => {
    for (const [stateName, state] of Object.entries(states ?? {})) {
      if (state.Type === 'Task') {
        const { key, handler } = bindTask(flow, stateName, state, functions);
        const previous = bindingKeys.get(stateName);
        // The library finds overrides by state name across nested Map/Parallel bodies too.
        if (previous !== undefined && previous !== key) {
          throw new Error(`flow ${flow}: two Task states named ${stateName} call different functions`);
        }
        bindingKeys.set(stateName, key);
        taskHandlers[stateName] = handler;
      }
      if (state.Type === 'Map') visit((state.ItemProcessor ?? state.Iterator)?.States);
      if (state.Type === 'Parallel') for (const branch of state.Branches ?? []) visit(branch.States);
      if (waitTimeScale !== undefined) {
        if (state.Type === 'Wait') {
          if (typeof state.Seconds === 'number')
            waitTimeOverrides[stateName] = state.Seconds * 1000 * waitTimeScale;
          else if (waitTimeScale === 0) waitTimeOverrides[stateName] = 0;
        }
        if (state.Retry) {
          retryIntervalOverrides[stateName] = state.Retry.map(
            (r) => (r.IntervalSeconds ?? 1) * 1000 * waitTimeScale,
          );
        }
      }
    }
  };
  visit((definition as { States?: Record<string, LooseState> }).States);

  return {
    machine: validatedMachine(definition),
    overrides: {
      taskResourceLocalHandlers: taskHandlers,
      waitTimeOverrides,
      retryIntervalOverrides,
    } as NonNullable<RunOptions['overrides']>,
    stateMachineArn: `arn:aws:states:${REGION}:${ACCOUNT}:stateMachine:${flow}`,
  };
}

/** Validated machines by definition text; a StateMachine holds no per-run state, so sharing is safe. */
const machineCache = new Map<string, StateMachine>();
const MACHINE_CACHE_SIZE = 64;

/**
 * The library validates the ASL (structure, JSONPaths, ARNs) when a StateMachine is built, so a broken
 * file fails at start. That validation compiles JSON schemas and takes ~0.4 s a definition (the runs
 * themselves take milliseconds), so runners built from the same definitions share it.
 */
function validatedMachine(definition: Record<string, unknown>): StateMachine {
  const key = JSON.stringify(definition);
  let machine = machineCache.get(key);
  if (!machine) {
    machine = new StateMachine(definition as unknown as StateMachineDefinition);
    if (machineCache.size >= MACHINE_CACHE_SIZE)
      machineCache.delete(machineCache.keys().next().value as string);
    machineCache.set(key, machine);
  }
  return machine;
}

function bindTask(
  flow: FlowName,
  stateName: string,
  state: LooseState,
  functions: FunctionIndex,
): { key: string; handler: TaskHandler } {
  const where = `flow ${flow}, state ${stateName}`;
  const resource = typeof state.Resource === 'string' ? state.Resource : '';

  if (resource === LAMBDA_INVOKE) {
    const staticName = state.Parameters?.FunctionName;
    if (typeof staticName === 'string' && !functions.find(staticName)) {
      throw new Error(`${where}: no local function bound for ${staticName}`);
    }
    if (typeof staticName !== 'string' && typeof state.Parameters?.['FunctionName.$'] !== 'string') {
      throw new Error(`${where}: lambda:invoke without Parameters.FunctionName`);
    }
    const handler: TaskHandler = async (input) => {
      // The library hands us the Task's effective Parameters: { FunctionName, Payload, ... }.
      const { FunctionName: reference, Payload: payload } = (input ?? {}) as {
        FunctionName?: unknown;
        Payload?: unknown;
      };
      const target = typeof reference === 'string' ? functions.find(reference) : undefined;
      if (!target) {
        throw taskError(
          'Lambda.ResourceNotFoundException',
          `no local function bound for ${String(reference)}`,
        );
      }
      const result = await invokeLocal(target.fn, payload === undefined ? {} : payload);
      return { ExecutedVersion: '$LATEST', Payload: result, StatusCode: 200 };
    };
    return { key: 'lambda:invoke', handler };
  }

  if (LAMBDA_ARN.test(resource)) {
    const target = functions.find(resource);
    if (!target) throw new Error(`${where}: no local function bound for ${resource}`);
    return { key: target.arn, handler: (input) => invokeLocal(target.fn, input) };
  }

  throw new Error(
    `${where}: resource ${JSON.stringify(state.Resource)} is not supported locally ` +
      '(only Lambda function ARNs and arn:aws:states:::lambda:invoke)',
  );
}

async function invokeLocal(fn: LocalLambda, payload: unknown): Promise<unknown> {
  // Round-trip through JSON like the Lambda wire does: no shared references, no undefined, no Dates.
  const event = JSON.parse(JSON.stringify(payload ?? null)) as unknown;
  let result: unknown;
  try {
    result = await fn(event);
  } catch (thrown) {
    throw lambdaError(thrown);
  }
  const json = JSON.stringify(result ?? null);
  if (Buffer.byteLength(json, 'utf8') > MAX_PAYLOAD_BYTES) {
    throw taskError('States.DataLimitExceeded', `task result is larger than ${MAX_PAYLOAD_BYTES} bytes`);
  }
  return JSON.parse(json) as unknown;
}

/**
 * A Task failure as Step Functions reports a Lambda error: the Error is the runtime's errorType
 * (`error.name` for Error objects, `typeof` otherwise) and the Cause is the runtime's JSON error
 * document. The library matches Retry/Catch `ErrorEquals` against the thrown error's `name` and uses
 * its `message` as the Cause, so that is what we build.
 */
function lambdaError(thrown: unknown): Error {
  const isError = thrown instanceof Error;
  const errorType = isError ? thrown.name || 'Error' : typeof thrown;
  const errorMessage = isError ? thrown.message : String(thrown);
  const trace = isError ? (thrown.stack ?? '').split('\n') : [];
  return taskError(errorType, JSON.stringify({ errorType, errorMessage, trace }), thrown);
}

function taskError(name: string, cause: string, original?: unknown): Error {
  const error = new Error(cause, original === undefined ? undefined : { cause: original });
  error.name = name;
  return error;
}

/**
 * aws-local-stepfunctions 3 targets Node 22 and calls `Promise.withResolvers` in every Task state;
 * on Node 20 each Task would fail with a TypeError that the ASL would then see as a Task failure.
 */
function installPromiseWithResolvers(): void {
  const ctor = Promise as unknown as { withResolvers?: unknown };
  if (typeof ctor.withResolvers === 'function') return;
  ctor.withResolvers = function withResolvers<T>() {
    let resolve!: (value: T | PromiseLike<T>) => void;
    let reject!: (reason?: unknown) => void;
    const promise = new Promise<T>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    return { promise, resolve, reject };
  };
}
