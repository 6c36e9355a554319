/**
 * The embedded stack's Step Functions engine: the state machines' synthesized definitions, run
 * in-process by aws-local-stepfunctions, with every Lambda Task handed to `invokeLambda` (which
 * checks the state machine role's IAM policy and calls the function's local process).
 *
 * What the runner adds to the library, and why:
 * - bindings by Lambda ARN: the library overrides Tasks by *state name*, so we walk each definition
 *   (including Map and Parallel bodies), check every Task's function up front and fail at
 *   construction when one is unknown, rather than on the first execution that reaches it;
 * - the service integrations Strata's flows use besides Lambda: `states:startExecution` (a flow
 *   starting another) and `.waitForTaskToken` (the token travels in the payload; SendTaskSuccess or
 *   SendTaskFailure ends the wait). The library has no task token, so the runner makes one;
 * - Lambda semantics: payloads go through JSON both ways (as on the wire), a thrown error becomes a
 *   Task failure named like the Lambda runtime names it (`error.name`, so ErrorEquals sees e.g.
 *   `HostUnavailableError`) with a Lambda-style JSON Cause, and `lambda:invoke` Tasks get their result
 *   wrapped as `{ Payload, StatusCode, ExecutedVersion }` like the optimized integration returns;
 * - StartExecution semantics: executions are named, ARN-shaped and idempotent on the name;
 * - the library buffers every event until someone reads them, so we always drain the event log.
 */

import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  ExecutionAbortedError,
  ExecutionError,
  ExecutionTimeoutError,
  type RunOptions,
  StateMachine,
  type StateMachineDefinition,
} from 'aws-local-stepfunctions';
import type { Logger } from '../../drivers/sdk/types.js';
import { NotFoundError } from '../../functions/core/errors.js';

installPromiseWithResolvers();

/** A state machine the runner can run. */
export interface LocalStateMachineDefinition {
  name: string;
  arn: string;
  /** The role Step Functions assumes for its integrations (checked by the callbacks). */
  roleArn: string;
  definition: Record<string, unknown>;
}

/** Invokes a Lambda function for a Task of `machine`; resolves with its result, rejects with its error. */
export type InvokeLambda = (
  functionArn: string,
  payload: unknown,
  machine: LocalStateMachineDefinition,
) => Promise<unknown>;

/** Starts an execution for a `states:startExecution` Task of `machine` (as its role). */
export type StartChildExecution = (
  request: { stateMachineArn: string; name?: string; input?: unknown },
  machine: LocalStateMachineDefinition,
) => Promise<{ executionArn: string; startDate: string }>;

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
  stateMachineArn: string;
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
  machines: readonly LocalStateMachineDefinition[];
  invokeLambda: InvokeLambda;
  /** The Lambda functions that exist (a Task naming another fails at construction). */
  functionArns: readonly string[];
  startExecution?: StartChildExecution;
  /**
   * Multiplies Wait state durations and Retry pauses (tests use 0 or 0.01). A wait given as
   * `SecondsPath`/`Timestamp(Path)` (a host step's loop) becomes `1 s × scale`. Retry pauses become
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

const LAMBDA_INVOKE = 'arn:aws:states:::lambda:invoke';
const LAMBDA_INVOKE_WAIT = 'arn:aws:states:::lambda:invoke.waitForTaskToken';
const START_EXECUTION = 'arn:aws:states:::states:startExecution';
/** Stands in for `$$.Task.Token` in Parameters; replaced by a fresh token when the Task runs. */
const TOKEN_PLACEHOLDER = '__strata_local_task_token__';
/** Execution names: 1–80 characters. */
const EXECUTION_NAME = /^[A-Za-z0-9_-]{1,80}$/;
const LAMBDA_ARN = /^arn:aws[a-z-]*:lambda:[^:]*:[0-9]*:function:([A-Za-z0-9_-]+)(?::([A-Za-z0-9_$-]+))?$/;
/** Step Functions' state output limit; exceeding it on AWS fails the Task with this error. */
const MAX_PAYLOAD_BYTES = 256 * 1024;

interface PreparedFlow {
  machine: StateMachine;
  overrides: NonNullable<RunOptions['overrides']>;
  definition: LocalStateMachineDefinition;
}

/** Thrown by the start of an execution whose name is taken (another input, or it has ended). */
export class ExecutionAlreadyExistsError extends Error {
  override readonly name = 'ExecutionAlreadyExists';
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
 * Runs state machines locally.
 *
 * @example
 * const runner = new LocalWorkflowRunner({
 *   machines: [{ name, arn, roleArn, definition }],
 *   functionArns: [storeTasksArn],
 *   invokeLambda: (arn, payload) => functions.invoke(arn, payload),
 * });
 * const { executionId } = await runner.start(arn, jobId, { storeId });
 * const final = await runner.waitFor(executionId);
 */
export class LocalWorkflowRunner {
  private readonly flows = new Map<string, PreparedFlow>();
  private readonly tokens = new Map<string, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
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
    const integrations: Integrations = {
      invokeLambda: options.invokeLambda,
      functionArns: new Set(options.functionArns),
      ...(options.startExecution ? { startExecution: options.startExecution } : {}),
      waitForToken: (token) =>
        new Promise<unknown>((resolve, reject) => {
          this.tokens.set(token, { resolve, reject });
        }),
    };
    for (const machine of options.machines) {
      this.flows.set(machine.arn, prepareFlow(machine, integrations, options.waitTimeScale));
    }
  }

  /** The state machines this runner runs. */
  machines(): LocalStateMachineDefinition[] {
    return [...this.flows.values()].map((f) => f.definition);
  }

  /**
   * StartExecution: names are unique per state machine. The same name with the same input while the
   * execution runs returns it again; another input, or an ended execution, is ExecutionAlreadyExists.
   */
  async start(
    stateMachineArn: string,
    name: string | undefined,
    input: unknown,
  ): Promise<{ executionId: string; startDate: string }> {
    if (this.stopped) throw new Error('the workflow runner is stopped');
    const prepared = this.flows.get(stateMachineArn);
    if (!prepared)
      throw new NotFoundError(`state machine ${stateMachineArn} does not exist`, { stateMachineArn });
    const executionName = name ?? randomUUID();
    if (!EXECUTION_NAME.test(executionName)) {
      throw new Error(`execution name ${JSON.stringify(executionName)} is not 1–80 letters, digits, - or _`);
    }
    const executionId = `${stateMachineArn.replace(':stateMachine:', ':execution:')}:${executionName}`;
    const inputJson = JSON.stringify(input ?? {});

    const existing = this.executions.get(executionId);
    if (existing) {
      if (existing.inputJson === inputJson && existing.description.status === ExecutionStatus.Running) {
        return { executionId, startDate: existing.description.startDate };
      }
      throw new ExecutionAlreadyExistsError(`Execution Already Exists: '${executionId}'`);
    }

    const startDate = new Date().toISOString();
    const run = prepared.machine.run(JSON.parse(inputJson), {
      overrides: prepared.overrides,
      context: {
        Execution: {
          Id: executionId,
          Name: executionName,
          RoleArn: prepared.definition.roleArn,
          StartTime: startDate,
          Input: JSON.parse(inputJson),
        },
        StateMachine: { Id: prepared.definition.arn, Name: prepared.definition.name },
      } as never,
    });
    const record: ExecutionRecord = {
      description: {
        executionId,
        stateMachineArn,
        name: executionName,
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
    return { executionId, startDate };
  }

  /** SendTaskSuccess: ends a `.waitForTaskToken` wait with `output`. */
  sendTaskSuccess(token: string, output: unknown): void {
    this.takeToken(token).resolve(output);
  }

  /** SendTaskFailure: ends a `.waitForTaskToken` wait with an error the Task's Retry/Catch see. */
  sendTaskFailure(token: string, error: string | undefined, cause: string | undefined): void {
    this.takeToken(token).reject(taskError(error ?? 'States.TaskFailed', cause ?? ''));
  }

  /** SendTaskHeartbeat: the token must still be waited on (HeartbeatSeconds is not enforced locally). */
  sendTaskHeartbeat(token: string): void {
    if (!this.tokens.has(token)) throw new TaskDoesNotExistError('Task Timed Out or does not exist');
  }

  private takeToken(token: string): { resolve: (v: unknown) => void; reject: (e: Error) => void } {
    const waiting = this.tokens.get(token);
    if (!waiting) throw new TaskDoesNotExistError('Task Timed Out or does not exist');
    this.tokens.delete(token);
    return waiting;
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

  /** The executions of one state machine this runner still holds, newest first. */
  list(stateMachineArn: string): ExecutionDescription[] {
    return [...this.executions.values()]
      .map((r) => r.description)
      .filter((d) => d.stateMachineArn === stateMachineArn)
      .reverse()
      .map((d) => ({ ...d }));
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

  /** The ids of the executions still running, across every state machine. */
  running(): string[] {
    return [...this.executions.entries()]
      .filter(([, r]) => r.description.status === ExecutionStatus.Running)
      .map(([id]) => id);
  }

  /**
   * Loses every running execution at once (the crash matrix): each is aborted, no Catch runs, and
   * nothing waits for the local functions still running.
   */
  loseAll(): void {
    for (const record of this.executions.values()) {
      if (record.description.status === ExecutionStatus.Running) record.abort();
    }
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

/** What Task states reach beyond the engine. */
interface Integrations {
  invokeLambda: InvokeLambda;
  functionArns: ReadonlySet<string>;
  startExecution?: StartChildExecution;
  /** Registers a task token and resolves when SendTaskSuccess names it. */
  waitForToken: (token: string) => Promise<unknown>;
}

/** SendTask* for a token no Task waits on. */
export class TaskDoesNotExistError extends Error {
  override readonly name = 'TaskDoesNotExist';
}

/** The unqualified ARN of a function reference (ARN, ARN:alias or version). */
function unqualified(reference: string): string | undefined {
  const match = LAMBDA_ARN.exec(reference);
  if (!match) return undefined;
  return match[2] ? reference.slice(0, -(match[2].length + 1)) : reference;
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

/** Replaces `"X.$": "$$.Task.Token"` with a literal placeholder the Task handler fills in. */
function withTokenPlaceholder(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(withTokenPlaceholder);
  if (value === null || typeof value !== 'object') return value;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
    if (k.endsWith('.$') && v === '$$.Task.Token') out[k.slice(0, -2)] = TOKEN_PLACEHOLDER;
    else out[k] = withTokenPlaceholder(v);
  }
  return out;
}

function fillToken(value: unknown, token: string): unknown {
  if (value === TOKEN_PLACEHOLDER) return token;
  if (Array.isArray(value)) return value.map((v) => fillToken(v, token));
  if (value === null || typeof value !== 'object') return value;
  return Object.fromEntries(
    Object.entries(value as Record<string, unknown>).map(([k, v]) => [k, fillToken(v, token)]),
  );
}

function prepareFlow(
  machine: LocalStateMachineDefinition,
  integrations: Integrations,
  waitTimeScale: number | undefined,
): PreparedFlow {
  const taskHandlers: Record<string, TaskHandler> = {};
  const bindingKeys = new Map<string, string>();
  const waitTimeOverrides: Record<string, number> = {};
  const retryIntervalOverrides: Record<string, number[]> = {};
  const definition = JSON.parse(JSON.stringify(machine.definition)) as {
    States?: Record<string, LooseState>;
  };

  const visit = (states: Record<string, LooseState> | undefined) => {
    for (const [stateName, state] of Object.entries(states ?? {})) {
      if (state.Type === 'Task') {
        if (state.Resource === LAMBDA_INVOKE_WAIT && state.Parameters) {
          state.Parameters = withTokenPlaceholder(state.Parameters) as Record<string, unknown>;
        }
        const { key, handler } = bindTask(machine, stateName, state, integrations);
        const previous = bindingKeys.get(stateName);
        // The library finds overrides by state name across nested Map/Parallel bodies too.
        if (previous !== undefined && previous !== key) {
          throw new Error(`${machine.name}: two Task states named ${stateName} call different resources`);
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
          // A wait the step asks for (a host step's loop): scaled as if it asked for one second.
          else waitTimeOverrides[stateName] = 1000 * waitTimeScale;
        }
        if (state.Retry) {
          retryIntervalOverrides[stateName] = state.Retry.map(
            (r) => (r.IntervalSeconds ?? 1) * 1000 * waitTimeScale,
          );
        }
      }
    }
  };
  visit(definition.States);

  return {
    machine: validatedMachine(definition as Record<string, unknown>),
    overrides: {
      taskResourceLocalHandlers: taskHandlers,
      waitTimeOverrides,
      retryIntervalOverrides,
    } as NonNullable<RunOptions['overrides']>,
    definition: machine,
  };
}

/** Validated machines by definition text; a StateMachine holds no per-run state, so sharing is safe. */
const machineCache = new Map<string, StateMachine>();
const MACHINE_CACHE_SIZE = 64;

/**
 * Definitions the library's validator (asl-validator) passed before, on this machine: one empty file
 * each, named by the hash of the validator's version and the definition's text. Validation is a pure
 * function of those two, so a definition that passed once passes again.
 */
const VALIDATED_DIR = path.join(os.tmpdir(), 'strata-validated-asl');
const VALIDATOR_VERSION = (() => {
  try {
    const manifest = require.resolve('asl-validator/package.json');
    return String(JSON.parse(readFileSync(manifest, 'utf8')).version);
  } catch {
    return 'unknown';
  }
})();

/**
 * The library validates the ASL (structure, JSONPaths, ARNs) when a StateMachine is built, so a broken
 * definition fails at start. That validation compiles its JSON schemas anew for every definition
 * (~0.2 s each, ~2.5 s for the stack's machines; the runs themselves take milliseconds), so runners
 * built from the same definitions share a machine, and a definition validated before on this machine
 * (by another test file's or crash worker's stack) is not validated again.
 */
function validatedMachine(definition: Record<string, unknown>): StateMachine {
  const key = JSON.stringify(definition);
  let machine = machineCache.get(key);
  if (!machine) {
    const marker = path.join(
      VALIDATED_DIR,
      createHash('sha256').update(`${VALIDATOR_VERSION}\0${key}`).digest('hex').slice(0, 40),
    );
    const known = existsSync(marker);
    machine = new StateMachine(definition as unknown as StateMachineDefinition, {
      validationOptions: { noValidate: known },
    });
    if (!known) rememberValidated(marker);
    if (machineCache.size >= MACHINE_CACHE_SIZE)
      machineCache.delete(machineCache.keys().next().value as string);
    machineCache.set(key, machine);
  }
  return machine;
}

function rememberValidated(marker: string): void {
  try {
    mkdirSync(VALIDATED_DIR, { recursive: true });
    const tmp = `${marker}.${process.pid}.tmp`;
    writeFileSync(tmp, '');
    renameSync(tmp, marker);
  } catch {
    // a read-only temp directory: the next stack validates again
  }
}

function bindTask(
  machine: LocalStateMachineDefinition,
  stateName: string,
  state: LooseState,
  integrations: Integrations,
): { key: string; handler: TaskHandler } {
  const where = `${machine.name}, state ${stateName}`;
  const resource = typeof state.Resource === 'string' ? state.Resource : '';
  const known = (reference: string) => {
    const arn = unqualified(reference);
    return arn !== undefined && integrations.functionArns.has(arn) ? arn : undefined;
  };

  if (resource === LAMBDA_INVOKE || resource === LAMBDA_INVOKE_WAIT) {
    const staticName = state.Parameters?.FunctionName;
    if (typeof staticName === 'string' && !known(staticName)) {
      throw new Error(`${where}: no function ${staticName} in the stack`);
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
      const arn = typeof reference === 'string' ? known(reference) : undefined;
      if (!arn) {
        throw taskError('Lambda.ResourceNotFoundException', `Function not found: ${String(reference)}`);
      }
      if (resource === LAMBDA_INVOKE_WAIT) {
        const token = randomBytes(32).toString('base64url');
        const waiting = integrations.waitForToken(token);
        await invokeLocal(integrations, arn, fillToken(payload ?? {}, token), machine);
        return waiting;
      }
      const result = await invokeLocal(integrations, arn, payload === undefined ? {} : payload, machine);
      return { ExecutedVersion: '$LATEST', Payload: result, StatusCode: 200 };
    };
    return { key: resource, handler };
  }

  if (resource === START_EXECUTION) {
    const start = integrations.startExecution;
    if (!start) throw new Error(`${where}: states:startExecution is not available here`);
    const handler: TaskHandler = async (input) => {
      const { StateMachineArn, Name, Input } = (input ?? {}) as {
        StateMachineArn?: unknown;
        Name?: unknown;
        Input?: unknown;
      };
      if (typeof StateMachineArn !== 'string') {
        throw taskError('States.Runtime', 'states:startExecution needs Parameters.StateMachineArn');
      }
      const started = await start(
        {
          stateMachineArn: StateMachineArn,
          ...(typeof Name === 'string' ? { name: Name } : {}),
          input: Input,
        },
        machine,
      );
      return { ExecutionArn: started.executionArn, StartDate: started.startDate };
    };
    return { key: resource, handler };
  }

  if (LAMBDA_ARN.test(resource)) {
    const arn = known(resource);
    if (!arn) throw new Error(`${where}: no function ${resource} in the stack`);
    return { key: arn, handler: (input) => invokeLocal(integrations, arn, input, machine) };
  }

  throw new Error(
    `${where}: resource ${JSON.stringify(state.Resource)} is not supported locally ` +
      '(Lambda function ARNs, lambda:invoke[.waitForTaskToken] and states:startExecution are)',
  );
}

async function invokeLocal(
  integrations: Integrations,
  functionArn: string,
  payload: unknown,
  machine: LocalStateMachineDefinition,
): Promise<unknown> {
  // Round-trip through JSON like the Lambda wire does: no shared references, no undefined, no Dates.
  const event = JSON.parse(JSON.stringify(payload ?? null)) as unknown;
  let result: unknown;
  try {
    result = await integrations.invokeLambda(functionArn, event, machine);
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
 * (`error.name` for Error objects, `typeof` otherwise; `Lambda.Unknown` for a runtime that crashed
 * or timed out) and the Cause is the runtime's JSON error
 * document. The library matches Retry/Catch `ErrorEquals` against the thrown error's `name` and uses
 * its `message` as the Cause, so that is what we build.
 */
function lambdaError(thrown: unknown): Error {
  const isError = thrown instanceof Error;
  const errorType = isError ? thrown.name || 'Error' : typeof thrown;
  const errorMessage = isError ? thrown.message : String(thrown);
  const trace = isError ? (thrown.stack ?? '').split('\n') : [];
  // A crashed or timed-out runtime returns no error of the function's own: Step Functions reports
  // it as Lambda.Unknown (with the runtime's account of it in the Cause).
  const name = /^(Runtime|Sandbox)\./.test(errorType) ? 'Lambda.Unknown' : errorType;
  return taskError(name, JSON.stringify({ errorType, errorMessage, trace }), thrown);
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
