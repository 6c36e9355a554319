/**
 * Flows of one task step and its compensation, defined in TypeScript: the step runs on a task
 * function, is retried with backoff and jitter on transient errors only, and any other failure goes
 * to the compensation task, then to a Fail state. The ASL is generated from this description.
 */

/** The errors a step is retried on: Lambda's own transient faults and Strata's `Unavailable`. */
export const TRANSIENT_ERRORS = [
  'Lambda.ServiceException',
  'Lambda.AWSLambdaException',
  'Lambda.SdkClientException',
  'Lambda.TooManyRequestsException',
  'Strata.Unavailable',
] as const;

export interface SingleStepFlow {
  comment: string;
  /** The placeholder naming the task function, e.g. `StoreTasksFunctionArn`. */
  functionPlaceholder: string;
  /** The execution input fields every task gets (`jobId` first). */
  inputFields: readonly string[];
  step: { state: string; task: string; comment: string; timeoutSeconds: number };
  compensate: { task: string; timeoutSeconds?: number };
  fail: { error: string; cause: string };
}

function retry(intervalSeconds: number, maxAttempts: number) {
  return [
    {
      ErrorEquals: [...TRANSIENT_ERRORS],
      IntervalSeconds: intervalSeconds,
      MaxAttempts: maxAttempts,
      BackoffRate: 2,
      MaxDelaySeconds: 30,
      JitterStrategy: 'FULL',
    },
  ];
}

function invoke(
  placeholder: string,
  task: string,
  fields: readonly string[],
  extra: Record<string, string> = {},
) {
  const input: Record<string, string> = {};
  for (const field of fields) input[`${field}.$`] = `$.${field}`;
  for (const [k, v] of Object.entries(extra)) input[`${k}.$`] = v;
  return {
    Resource: 'arn:aws:states:::lambda:invoke',
    Parameters: { FunctionName: `\${${placeholder}}`, Payload: { task, input } },
  };
}

/** The ASL of a {@link SingleStepFlow}. */
export function singleStepDefinition(flow: SingleStepFlow): Record<string, unknown> {
  const { step, compensate, fail } = flow;
  return {
    Comment: flow.comment,
    StartAt: step.state,
    States: {
      [step.state]: {
        Type: 'Task',
        Comment: step.comment,
        ...invoke(flow.functionPlaceholder, step.task, flow.inputFields),
        TimeoutSeconds: step.timeoutSeconds,
        Retry: retry(2, 4),
        ResultPath: '$.result',
        ResultSelector: { 'value.$': '$.Payload' },
        Catch: [{ ErrorEquals: ['States.ALL'], ResultPath: '$.error', Next: 'Compensate' }],
        End: true,
      },
      Compensate: {
        Type: 'Task',
        Comment: compensate.task,
        ...invoke(flow.functionPlaceholder, compensate.task, flow.inputFields, { error: '$.error' }),
        TimeoutSeconds: compensate.timeoutSeconds ?? 300,
        Retry: retry(2, 4),
        ResultPath: '$.compensation',
        ResultSelector: { done: true },
        Next: 'Failed',
      },
      Failed: { Type: 'Fail', Error: fail.error, Cause: fail.cause },
    },
  };
}
