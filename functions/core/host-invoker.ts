/**
 * Runs a provider's host operation on one host through the endpoint channel and waits for its
 * result — for seconds inside a workflow step, which then suspends (step-scope.ts). Requests are
 * typed data (validated again on the host), never shell strings.
 */
import { createHash } from 'node:crypto';
import { driverErrorFromHostError } from '../../drivers/sdk/errors.js';
import type { HostCall, HostInvoker } from '../../drivers/sdk/types.js';
import { UnavailableError } from './errors.js';
import { newId } from './ids.js';
import { type HostCommandRecord, HostStatus, JobState } from './model.js';
import type { EndpointChannel, Repository } from './ports.js';
import { currentStep } from './step-scope.js';

export interface ChannelHostInvokerOptions {
  repo: Repository;
  channel: EndpointChannel;
  /** The job the calls are made for (the fencing token), unless a call names its own. */
  jobId: string;
  defaultDeadlineSeconds?: number;
  /** The host runtime build the control plane expects (sent as the request's `build`). */
  build?: string;
  /** First poll interval; doubles up to `maxPollMs`. */
  pollMs?: number;
  /**
   * Longest wait between two polls, which bounds how late a finished command is noticed. SSM's
   * GetCommandInvocation is rate-limited, so the AWS default is 2 s; a local channel can poll faster.
   */
  maxPollMs?: number;
  /** Longest Wait a suspended step asks the state machine for (default 30 s). */
  maxWaitSeconds?: number;
  onProgress?: (hostId: string, percent: number, detail?: Record<string, unknown>) => void | Promise<void>;
  onDispatch?: (hostId: string, delta: 1 | -1) => void;
  sleep?: (ms: number) => Promise<void>;
}

/** Sends of one recorded call before a retryable host failure becomes final. */
export const MAX_HOST_ATTEMPTS = 4;

const defaultSleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** The error a call reports once its last attempt failed: never retryable. */
function finalAfterAttempts(error: HostCommandRecord['error'], attempt: number) {
  const last = error ?? { code: 'HostOperationFailed', message: 'host reported failure', retryable: false };
  return last.retryable
    ? {
        code: 'HostOperationFailed',
        message: `${last.message} (${last.code}, after ${attempt} attempts)`,
        retryable: false,
      }
    : last;
}

/** The request id of a recorded call: the same for every run of the step, new for each attempt. */
export function stepRequestId(jobId: string, callKey: string, attempt: number): string {
  return `req-${createHash('sha256').update(`${jobId}\n${callKey}\n${attempt}`).digest('hex').slice(0, 32)}`;
}

/**
 * Inside a workflow step (a {@link StepScope}), each call is recorded on the job under its call key
 * before it is awaited, and a later run of the step finds it there: it polls the same command, or
 * — when a run already saw that command fail — sends a new attempt. A call that is still running
 * when the step's wait budget is spent suspends the step (see step-scope.ts). Outside a step (unit
 * tests, tools) a call simply waits until the operation's deadline.
 */
export class ChannelHostInvoker implements HostInvoker {
  constructor(private readonly options: ChannelHostInvokerOptions) {}

  async run<T = unknown>(chosenHostId: string, call: HostCall): Promise<T> {
    const { repo, channel } = this.options;
    const jobId = call.jobId ?? this.options.jobId;
    const scope = currentStep();
    if (scope?.isSuspended)
      return scope.suspend({ seconds: 1, hostId: chosenHostId, commandId: '', operation: call.operation });
    const key = scope?.nextCallKey(call.operation, call.callKey);
    const job = key ? await repo.get({ type: 'Job', id: jobId }) : undefined;
    const recorded = key ? job?.hostCommands?.[key] : undefined;
    // A run that already saw this command fail sends a new attempt; otherwise the call stays with
    // the command (and the host) recorded.
    const earlier = recorded && !recorded.failed ? recorded : undefined;
    const attempt = recorded ? (recorded.failed ? recorded.attempt + 1 : recorded.attempt) : 1;
    const hostId = earlier?.hostId ?? chosenHostId;
    if (key && recorded?.failed && recorded.attempt >= MAX_HOST_ATTEMPTS) {
      // Every attempt is spent: report the last failure as final and send nothing more, whatever a
      // caller above made of the error (a driver that wraps it as retryable only burns the step's
      // own, bounded, Retry budget now; nothing suspends, so those counters are not restarted).
      throw driverErrorFromHostError(finalAfterAttempts(recorded.error, recorded.attempt), {
        hostId: recorded.hostId,
        operation: call.operation,
        commandId: recorded.commandId,
      });
    }
    const host = await repo.require({ type: 'Host', id: hostId });
    if (host.status !== HostStatus.Up) {
      throw new UnavailableError(`host ${hostId} is ${host.status}`, { hostId, state: host.status });
    }
    const deadlineSeconds = call.deadlineSeconds ?? this.options.defaultDeadlineSeconds ?? 900;
    const requestId = key ? stepRequestId(jobId, key, attempt) : newId('req');
    const request = {
      version: 1 as const,
      requestId,
      jobId,
      hostId,
      provider: call.provider,
      operation: call.operation,
      args: call.args,
      deadlineSeconds,
      ...(this.options.build ? { build: this.options.build } : {}),
    };
    const sleep = this.options.sleep ?? defaultSleep;
    const record = (value: HostCommandRecord) =>
      repo.putMapEntry({ type: 'Job', id: jobId }, 'hostCommands', key!, value, {
        field: 'state',
        oneOf: [JobState.Pending, JobState.Running],
      });
    this.options.onDispatch?.(hostId, 1);
    let dispatched = true;
    const undispatch = () => {
      if (dispatched) this.options.onDispatch?.(hostId, -1);
      dispatched = false;
    };
    try {
      let commandId = earlier?.commandId;
      let sentAt = earlier ? Date.parse(earlier.sentAt) : Date.now();
      let entry = earlier;
      if (!commandId) {
        ({ commandId } = await channel.send(host, request));
        sentAt = Date.now();
        if (key) {
          entry = { hostId, commandId, requestId, sentAt: new Date(sentAt).toISOString(), attempt };
          await record(entry);
        }
      }
      // The host aborts at its deadline; allow for delivery and reporting on top of it.
      const giveUpAt = sentAt + (deadlineSeconds + 60) * 1000;
      const budgetEnd = scope ? Date.now() + scope.waitBudgetMs : undefined;
      let interval = this.options.pollMs ?? 100;
      let lastProgress = -1;
      for (;;) {
        const status = await channel.status(host, commandId);
        if (status.state === 'succeeded') return status.result as T;
        if (status.state === 'failed') {
          const error = status.error ?? {
            code: 'HostOperationFailed',
            message: 'host reported failure',
            retryable: false,
          };
          // Seen failing: a retry of the step sends again instead of finding this failure.
          if (key && entry) await record({ ...entry, failed: true, error });
          // A host step's Retry counters start again each time its wait loop re-enters it, so the
          // attempts are counted here: after the last one, the failure is final.
          const final = key && attempt >= MAX_HOST_ATTEMPTS ? finalAfterAttempts(error, attempt) : error;
          throw driverErrorFromHostError(final, { hostId, operation: call.operation, commandId });
        }
        if (status.progress !== undefined && status.progress !== lastProgress) {
          lastProgress = status.progress;
          await this.options.onProgress?.(hostId, status.progress, status.progressDetail);
        }
        if (Date.now() > giveUpAt) {
          if (key && entry)
            await record({
              ...entry,
              failed: true,
              error: {
                code: 'Unavailable',
                message: `did not finish ${call.operation} in time`,
                retryable: true,
              },
            });
          throw new UnavailableError(`host ${hostId} did not finish ${call.operation} in time`, {
            hostId,
            commandId,
          });
        }
        if (scope && budgetEnd !== undefined && Date.now() + interval > budgetEnd) {
          // Longer than this run may wait: the state machine waits instead, then runs the step again.
          undispatch();
          const runningFor = (Date.now() - sentAt) / 1000;
          const seconds = Math.max(
            1,
            Math.min(this.options.maxWaitSeconds ?? 30, Math.round(runningFor / 10)),
          );
          return scope.suspend<T>({ seconds, hostId, commandId, operation: call.operation });
        }
        await sleep(interval);
        interval = Math.min(interval * 2, this.options.maxPollMs ?? 2000);
      }
    } finally {
      undispatch();
    }
  }
}
