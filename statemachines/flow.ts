/**
 * The flow builder: each flow is one TypeScript module (statemachines/flows/<flow>.ts) that declares
 * its steps once — the task each runs, its input, timeout, retry and catch policies, where its
 * result goes — and this file turns the declaration into the ASL the CDK stack deploys (and so the
 * embedded stack runs) and into the list of tasks each task function must serve.
 *
 * A host step (`host: true`) is a wait loop in the state machine, not a wait inside a Lambda: the
 * task runs for seconds, and when the host command it sent is still running it answers
 * `{ waiting: { seconds } }` (see functions/core/step-scope.ts). The loop is
 *
 *     <Step> ──▶ <Step> (running?) ──waiting──▶ <Step> (wait) ──▶ <Step>
 *                        └──────────done─────▶ <Step> (result) ──▶ next
 *
 * and every turn re-enters the same task, which picks up the command it recorded on the job (the
 * same request id), renews the leases its job holds, and either answers waiting again or finishes.
 */
import type { z } from 'zod';

/** The task functions a flow can call, by the placeholder their ARN is substituted for. */
export const TaskFunction = {
  store: 'StoreTasksFunctionArn',
  image: 'ImageTasksFunctionArn',
} as const;
export type TaskFunction = keyof typeof TaskFunction;

/**
 * The errors a step is retried on: Lambda's own transient faults, a runtime that crashed or timed
 * out (`Lambda.Unknown`: every step is idempotent, so running it again is safe), and Strata's
 * `Unavailable`.
 */
export const TRANSIENT_ERRORS = [
  'Lambda.Unknown',
  'Lambda.ServiceException',
  'Lambda.AWSLambdaException',
  'Lambda.SdkClientException',
  'Lambda.TooManyRequestsException',
  'Strata.Unavailable',
] as const;

export interface Retrier {
  ErrorEquals: string[];
  IntervalSeconds: number;
  MaxAttempts: number;
  BackoffRate: number;
  MaxDelaySeconds: number;
  JitterStrategy: 'FULL';
}

/** Retries on transient errors, with exponential backoff and full jitter. */
export function transient(intervalSeconds = 2, maxAttempts = 4, maxDelaySeconds = 30): Retrier {
  return retryOn([...TRANSIENT_ERRORS], { intervalSeconds, maxAttempts, backoffRate: 2, maxDelaySeconds });
}

/** Retries on the named errors (never States.ALL), with backoff and full jitter. */
export function retryOn(
  errors: string[],
  o: { intervalSeconds: number; maxAttempts: number; backoffRate: number; maxDelaySeconds: number },
): Retrier {
  if (errors.includes('States.ALL')) throw new Error('a retry names the errors it retries');
  return {
    ErrorEquals: errors,
    IntervalSeconds: o.intervalSeconds,
    MaxAttempts: o.maxAttempts,
    BackoffRate: o.backoffRate,
    MaxDelaySeconds: o.maxDelaySeconds,
    JitterStrategy: 'FULL',
  };
}

/** A step that runs one task on a task function. */
export interface TaskStep {
  kind: 'task';
  comment: string;
  /** The task's name in its function's task table. */
  task: string;
  /**
   * Task input: field name → a JSONPath into the state's input (a string starting with `$`) or a
   * constant; or `$` for the whole state input.
   */
  input: Record<string, string | number | boolean> | '$';
  timeoutSeconds: number;
  retry: Retrier[];
  /** Where the result goes (`null`: discarded, the input passes on). Ignored with `output: 'payload'`. */
  resultPath?: string | null;
  /** ResultSelector over the task's answer (paths start with `$.Payload`). */
  select?: Record<string, unknown>;
  /** `payload`: the state's output is the task's answer itself (as OutputPath `$.Payload`). */
  output?: 'payload';
  /** Any error left after retries goes to this state, with the error at `$.error`. */
  catchTo?: string;
  /** A host step: a wait loop in the state machine (see the file comment). */
  host?: boolean;
  next?: string;
}

export type RawState = Record<string, unknown> & { Type: string };
export type FlowState = TaskStep | RawState;

/** A flow's step contracts: each task it runs → the schema of the input its task function gets. */
export type StepContracts = Record<string, z.ZodType>;

export interface FlowDefinition {
  comment: string;
  /** The input contract of every task the flow runs (checked against the states in tests). */
  steps: StepContracts;
  /**
   * The result contract of every task whose answer a state reads (its `select` or its payload);
   * a task answering otherwise fails the step (a defect, not a retry).
   */
  results: StepContracts;
  /** The function the flow's tasks run on. */
  fn: TaskFunction;
  startAt: string;
  states: Record<string, FlowState>;
}

/** Declares a task step. Defaults: transient retries, errors to `Compensate`. */
export function task(
  o: Omit<TaskStep, 'kind' | 'retry' | 'input' | 'catchTo'> & {
    input: Record<string, string | number | boolean> | readonly string[] | '$';
    retry?: Retrier[];
    /** `false`: no Catch (the compensation step itself). */
    catchTo?: string | false;
  },
): TaskStep {
  const input =
    o.input === '$'
      ? '$'
      : Array.isArray(o.input)
        ? Object.fromEntries((o.input as readonly string[]).map((f) => [f, `$.${f}`]))
        : (o.input as Record<string, string | number | boolean>);
  const { catchTo, ...rest } = o;
  return {
    ...rest,
    kind: 'task',
    input,
    retry: o.retry ?? [transient()],
    ...(catchTo === false ? {} : { catchTo: catchTo ?? 'Compensate' }),
  };
}

/** The compensation step of a flow: never caught, goes to the flow's Fail state. */
export function compensate(o: {
  task: string;
  /** Default: the task's name. */
  comment?: string;
  input: Record<string, string> | readonly string[];
  next: string;
  timeoutSeconds?: number;
  /** It undoes work on a host: a wait loop like any host step. */
  host?: boolean;
  /** What of its answer the flow keeps under `$.compensation` (default `{ done: true }`). */
  select?: Record<string, unknown>;
}): TaskStep {
  const base = Array.isArray(o.input)
    ? Object.fromEntries((o.input as readonly string[]).map((f) => [f, `$.${f}`]))
    : (o.input as Record<string, string>);
  return task({
    comment: o.comment ?? o.task,
    task: o.task,
    input: { ...base, error: '$.error' },
    timeoutSeconds: o.timeoutSeconds ?? 300,
    resultPath: '$.compensation',
    select: o.select ?? { done: true },
    catchTo: false,
    next: o.next,
    ...(o.host ? { host: true } : {}),
  });
}

const isTask = (s: FlowState): s is TaskStep => (s as TaskStep).kind === 'task';

/**
 * The end of a per-host Map branch whose host step failed after its retries: the branch answers
 * `{ hostId, ok: false, error }` and the flow carries on with the other hosts.
 */
export function hostFailed(): RawState {
  return {
    Type: 'Pass',
    Comment: 'This host failed after retries; the flow carries on with the others.',
    Parameters: {
      'hostId.$': '$.hostId',
      ok: false,
      error: { 'code.$': '$.error.Error', 'message.$': '$.error.Cause' },
    },
    End: true,
  };
}

/** What a step that writes an image answers, selected from its task's Payload. */
export const IMAGE_RESULT = {
  'path.$': '$.Payload.path',
  'sizeBytes.$': '$.Payload.sizeBytes',
  'checksum.$': '$.Payload.checksum',
  'virtualSizeBytes.$': '$.Payload.virtualSizeBytes',
} as const;

/** Where a host step keeps the task's last answer (`<this>.value`) while its loop turns. */
const HOST_SLOT = '$.hostStep';
const HOST_ANSWER = `${HOST_SLOT}.value`;

function invoke(fn: TaskFunction, step: TaskStep) {
  const FunctionName = `\${${TaskFunction[fn]}}`;
  if (step.input === '$') {
    return {
      Resource: 'arn:aws:states:::lambda:invoke',
      Parameters: { FunctionName, Payload: { task: step.task, 'input.$': '$' } },
    };
  }
  const input: Record<string, string | number | boolean> = {};
  for (const [field, value] of Object.entries(step.input)) {
    if (typeof value === 'string' && value.startsWith('$')) input[`${field}.$`] = value;
    else input[field] = value;
  }
  return {
    Resource: 'arn:aws:states:::lambda:invoke',
    Parameters: { FunctionName, Payload: { task: step.task, input } },
  };
}

function flowTail(step: TaskStep): Record<string, unknown> {
  return step.next ? { Next: step.next } : { End: true };
}

function catcher(step: TaskStep): Record<string, unknown> {
  return step.catchTo
    ? { Catch: [{ ErrorEquals: ['States.ALL'], ResultPath: '$.error', Next: step.catchTo }] }
    : {};
}

/** Rewrites a ResultSelector written against `$.Payload` to read the kept answer instead. */
function fromKeptAnswer(select: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(select)) {
    if (k.endsWith('.$') && typeof v === 'string') {
      if (!v.startsWith('$.Payload')) throw new Error(`host step selector ${k} must read $.Payload`);
      out[k] = `${HOST_ANSWER}${v.slice('$.Payload'.length)}`;
    } else {
      out[k] = v;
    }
  }
  return out;
}

/** The names of a host step's loop states. */
export function hostLoopStates(name: string) {
  return { running: `${name} (running?)`, wait: `${name} (wait)`, result: `${name} (result)` };
}

function expandTask(fn: TaskFunction, name: string, step: TaskStep): Record<string, RawState> {
  const head = {
    Type: 'Task',
    Comment: step.comment,
    ...invoke(fn, step),
    TimeoutSeconds: step.timeoutSeconds,
    Retry: step.retry,
  };
  if (!step.host) {
    const result =
      step.output === 'payload'
        ? { OutputPath: '$.Payload' }
        : {
            ResultPath: step.resultPath === undefined ? null : step.resultPath,
            ...(step.select ? { ResultSelector: step.select } : {}),
          };
    return { [name]: { ...head, ...result, ...catcher(step), ...flowTail(step) } };
  }
  const loop = hostLoopStates(name);
  const result: RawState =
    step.output === 'payload'
      ? { Type: 'Pass', Comment: 'the host step is done', InputPath: HOST_ANSWER, ...flowTail(step) }
      : {
          Type: 'Pass',
          Comment: 'the host step is done',
          ...(step.select ? { Parameters: fromKeptAnswer(step.select) } : { InputPath: HOST_ANSWER }),
          ResultPath: step.resultPath === undefined ? null : step.resultPath,
          ...flowTail(step),
        };
  return {
    [name]: {
      ...head,
      ResultPath: HOST_SLOT,
      ResultSelector: { 'value.$': '$.Payload' },
      ...catcher(step),
      Next: loop.running,
    },
    [loop.running]: {
      Type: 'Choice',
      Comment: 'the host command is still running: wait, then check again',
      Choices: [{ Variable: `${HOST_ANSWER}.waiting`, IsPresent: true, Next: loop.wait }],
      Default: loop.result,
    },
    [loop.wait]: {
      Type: 'Wait',
      SecondsPath: `${HOST_ANSWER}.waiting.seconds`,
      Next: name,
    },
    [loop.result]: result,
  };
}

function expandStates(fn: TaskFunction, states: Record<string, FlowState>): Record<string, RawState> {
  const out: Record<string, RawState> = {};
  for (const [name, state] of Object.entries(states)) {
    if (isTask(state)) {
      Object.assign(out, expandTask(fn, name, state));
      continue;
    }
    const processor = state.ItemProcessor as
      | { StartAt: string; States: Record<string, FlowState>; ProcessorConfig?: unknown }
      | undefined;
    out[name] = processor
      ? { ...state, ItemProcessor: { ...processor, States: expandStates(fn, processor.States) } }
      : state;
  }
  return out;
}

/** The ASL of a flow, with `${…FunctionArn}` placeholders for the task functions. */
export function toAsl(flow: FlowDefinition): Record<string, unknown> {
  return { Comment: flow.comment, StartAt: flow.startAt, States: expandStates(flow.fn, flow.states) };
}

/** Every task step of a flow (inside Map processors too), by state name. */
export function taskSteps(flow: FlowDefinition): { state: string; step: TaskStep }[] {
  const out: { state: string; step: TaskStep }[] = [];
  const visit = (states: Record<string, FlowState>) => {
    for (const [state, s] of Object.entries(states)) {
      if (isTask(s)) out.push({ state, step: s });
      const processor = (s as RawState).ItemProcessor as { States: Record<string, FlowState> } | undefined;
      if (processor) visit(processor.States);
    }
  };
  visit(flow.states);
  return out;
}
