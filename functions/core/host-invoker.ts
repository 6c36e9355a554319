/**
 * Runs a provider's host operation on one host through the endpoint channel and waits for its
 * result. Requests are typed data (validated again on the host), never shell strings.
 */
import { driverErrorFromHostError, HostStillRunningError } from '../../drivers/sdk/errors.js';
import type { HostCall, HostInvoker } from '../../drivers/sdk/types.js';
import { UnavailableError } from './errors.js';
import { newId } from './ids.js';
import { HostStatus, JobState } from './model.js';
import type { EndpointChannel, Repository } from './ports.js';

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
  onProgress?: (hostId: string, percent: number, detail?: Record<string, unknown>) => void | Promise<void>;
  onDispatch?: (hostId: string, delta: 1 | -1) => void;
  sleep?: (ms: number) => Promise<void>;
  /**
   * Makes the calls resumable: each call is recorded on the job under `<resumeKey>:<operation>:<n>`
   * (n counts the calls made through this invoker), and a later invoker with the same key waits for
   * the recorded command instead of sending a new one.
   */
  resumeKey?: string;
  /**
   * How long one run may wait before giving up with HostStillRunningError (the command goes on;
   * a retried step resumes it). Only with `resumeKey`. Unset: wait until the operation's deadline.
   */
  waitBudgetMs?: number;
}

const defaultSleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

export class ChannelHostInvoker implements HostInvoker {
  private calls = 0;

  constructor(private readonly options: ChannelHostInvokerOptions) {}

  async run<T = unknown>(chosenHostId: string, call: HostCall): Promise<T> {
    const { repo, channel } = this.options;
    const jobId = call.jobId ?? this.options.jobId;
    const key = this.options.resumeKey
      ? `${this.options.resumeKey}:${call.operation}:${this.calls++}`
      : undefined;
    const job = key ? await repo.get({ type: 'Job', id: jobId }) : undefined;
    const earlier = key ? job?.hostCommands?.[key] : undefined;
    // A resumed call stays with the host already running it.
    const hostId = earlier?.hostId ?? chosenHostId;
    const host = await repo.require({ type: 'Host', id: hostId });
    if (host.status !== HostStatus.Up) {
      throw new UnavailableError(`host ${hostId} is ${host.status}`, { hostId, state: host.status });
    }
    const deadlineSeconds = call.deadlineSeconds ?? this.options.defaultDeadlineSeconds ?? 900;
    const request = {
      version: 1 as const,
      requestId: newId('req'),
      jobId,
      hostId,
      provider: call.provider,
      operation: call.operation,
      args: call.args,
      deadlineSeconds,
      ...(this.options.build ? { build: this.options.build } : {}),
    };
    const sleep = this.options.sleep ?? defaultSleep;
    this.options.onDispatch?.(hostId, 1);
    try {
      let commandId = earlier?.commandId;
      let sentAt = earlier ? Date.parse(earlier.sentAt) : Date.now();
      if (!commandId) {
        ({ commandId } = await channel.send(host, request));
        sentAt = Date.now();
        if (key) {
          await repo.updateWhere(
            { type: 'Job', id: jobId },
            { field: 'state', oneOf: [JobState.Pending, JobState.Running] },
            {
              hostCommands: {
                ...(job?.hostCommands ?? {}),
                [key]: { hostId, commandId, sentAt: new Date(sentAt).toISOString() },
              },
            },
          );
        }
      }
      // The host aborts at its deadline; allow for delivery and reporting on top of it.
      const giveUpAt = sentAt + (deadlineSeconds + 60) * 1000;
      const budgetEnd =
        key && this.options.waitBudgetMs !== undefined ? Date.now() + this.options.waitBudgetMs : undefined;
      let interval = this.options.pollMs ?? 100;
      let lastProgress = -1;
      for (;;) {
        const status = await channel.status(host, commandId);
        if (status.state === 'succeeded') return status.result as T;
        if (status.state === 'failed') {
          throw driverErrorFromHostError(
            status.error ?? {
              code: 'HostOperationFailed',
              message: 'host reported failure',
              retryable: false,
            },
            { hostId, operation: call.operation, commandId },
          );
        }
        if (status.progress !== undefined && status.progress !== lastProgress) {
          lastProgress = status.progress;
          await this.options.onProgress?.(hostId, status.progress, status.progressDetail);
        }
        if (budgetEnd !== undefined && Date.now() > budgetEnd && Date.now() <= giveUpAt) {
          throw new HostStillRunningError(
            `host ${hostId} is still running ${call.operation} (command ${commandId}); the step resumes it`,
            { context: { hostId, commandId } },
          );
        }
        if (Date.now() > giveUpAt) {
          throw new UnavailableError(`host ${hostId} did not finish ${call.operation} in time`, {
            hostId,
            commandId,
          });
        }
        await sleep(interval);
        interval = Math.min(interval * 2, this.options.maxPollMs ?? 2000);
      }
    } finally {
      this.options.onDispatch?.(hostId, -1);
    }
  }
}
