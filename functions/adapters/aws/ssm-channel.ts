/**
 * The endpoint channel on AWS: host requests travel as SSM Run Command invocations of Strata's own
 * document (never AWS-RunShellScript), whose single `Request` parameter only admits base64. The
 * host runtime prints newline-delimited JSON events on stdout; this adapter reads them back from
 * GetCommandInvocation, or from the S3 output copy when SSM truncated the inline output.
 */
import { GetObjectCommand, S3Client, type S3ClientConfig } from '@aws-sdk/client-s3';
import {
  CancelCommandCommand,
  GetCommandInvocationCommand,
  type GetCommandInvocationCommandOutput,
  SendCommandCommand,
  SSMClient,
  type SSMClientConfig,
} from '@aws-sdk/client-ssm';
import {
  encodeHostRequest,
  type HostError,
  type HostRequest,
  parseHostOutput,
} from '../../../drivers/sdk/host-protocol.js';
import { InputError, PayloadTooLargeError, UnavailableError } from '../../core/errors.js';
import type { Host } from '../../core/model.js';
import type { CommandStatus, EndpointChannel } from '../../core/ports.js';
import { errorName, lazy } from './clients.js';

/** The document parameter that carries the base64 request. The CDK stack declares the same name. */
export const HOST_REQUEST_PARAMETER = 'Request';

/** The one step of the run document; SSM names the S3 output folder after it. */
export const HOST_STEP_NAME = 'runStrataHost';

/**
 * Longest base64 request the document accepts. SSM caps the size of a command's parameters, so
 * requests stay small: bulk data moves through S3 presigned URLs carried in `args`, never inline.
 */
export const HOST_REQUEST_MAX_BASE64_CHARS = 16_384;

/** Regex (as the document's allowedPattern) admitting exactly what encodeHostRequest produces. */
export const HOST_REQUEST_ALLOWED_PATTERN = `^[A-Za-z0-9+/=]{1,${HOST_REQUEST_MAX_BASE64_CHARS}}$`;

/** GetCommandInvocation returns at most this many characters of stdout inline. */
export const SSM_INLINE_OUTPUT_LIMIT = 24_000;

/** SSM's folder for the aws:runShellScript plugin in the S3 output layout. */
const SHELL_PLUGIN_FOLDER = 'awsrunShellScript';

const SSM_COMMENT_MAX = 100;
const DEFAULT_DELIVERY_TIMEOUT_SECONDS = 600;
/** SendCommand's own bounds for TimeoutSeconds. */
const MIN_DELIVERY_TIMEOUT_SECONDS = 30;
const MAX_DELIVERY_TIMEOUT_SECONDS = 2_592_000;
const INSTANCE_ID = /^(mi-[0-9a-f]{17}|i-[0-9a-f]{8}([0-9a-f]{9})?)$/;
/**
 * How long after a command ended its full output may still be on its way to S3 (the agent uploads
 * it after reporting the status). Past this a missing object is an error, not "still running".
 */
export const OUTPUT_UPLOAD_GRACE_MS = 60_000;
/** The shell's "command not found": the host runtime is not installed on that host. */
const EXIT_COMMAND_NOT_FOUND = 127;

export interface SsmEndpointChannelOptions {
  /** A ready client (tests, custom middleware). Otherwise one is built on first use. */
  client?: SSMClient;
  clientConfig?: SSMClientConfig;
  /** Reads full stdout from the command output bucket when SSM truncated it inline. */
  s3Client?: S3Client;
  s3ClientConfig?: S3ClientConfig;
  /** Name of Strata's run document (env STRATA_SSM_DOCUMENT). */
  documentName: string;
  /** Where SSM copies full command output (env STRATA_SSM_OUTPUT_BUCKET / _PREFIX). */
  outputBucket?: string;
  outputPrefix?: string;
  /**
   * How long SSM may wait to deliver the command to an offline host before giving up (SendCommand
   * `TimeoutSeconds`). How long the operation may run is the request's own `deadlineSeconds`.
   */
  timeoutSeconds?: number;
  /** What "now" is (tests). */
  now?: () => number;
}

/**
 * Sends host requests with SSM Run Command and reads back their outcome.
 *
 * @example
 * const channel = new SsmEndpointChannel({
 *   documentName: process.env[EnvName.SsmDocumentName]!,
 *   outputBucket: process.env[EnvName.SsmOutputBucket],
 *   outputPrefix: process.env[EnvName.SsmOutputPrefix],
 * });
 * const { commandId } = await channel.send(host, request);
 * const status = await channel.status(host, commandId);
 */
export class SsmEndpointChannel implements EndpointChannel {
  private readonly ssm: () => SSMClient;
  private readonly s3: () => S3Client;
  private readonly documentName: string;
  private readonly outputBucket?: string;
  private readonly outputPrefix: string;
  private readonly timeoutSeconds: number;
  private readonly now: () => number;

  constructor(options: SsmEndpointChannelOptions) {
    if (!options.documentName)
      throw new InputError('SSM document name is required', { field: 'documentName' });
    const timeout = options.timeoutSeconds ?? DEFAULT_DELIVERY_TIMEOUT_SECONDS;
    if (
      !Number.isInteger(timeout) ||
      timeout < MIN_DELIVERY_TIMEOUT_SECONDS ||
      timeout > MAX_DELIVERY_TIMEOUT_SECONDS
    ) {
      throw new InputError(
        `timeoutSeconds must be an integer between ${MIN_DELIVERY_TIMEOUT_SECONDS} and ${MAX_DELIVERY_TIMEOUT_SECONDS}`,
        { field: 'timeoutSeconds', value: timeout },
      );
    }
    const { client, clientConfig, s3Client, s3ClientConfig } = options;
    this.ssm = client ? () => client : lazy(() => new SSMClient(clientConfig ?? {}));
    this.s3 = s3Client ? () => s3Client : lazy(() => new S3Client(s3ClientConfig ?? {}));
    this.documentName = options.documentName;
    this.outputBucket = options.outputBucket || undefined;
    this.outputPrefix = (options.outputPrefix ?? '').replace(/^\/+|\/+$/g, '');
    this.timeoutSeconds = timeout;
    this.now = options.now ?? Date.now;
  }

  /**
   * SSM has no client token, so a repeated send starts a second invocation; that is safe because the
   * host runtime treats a repeated `requestId` as the same request and host operations are fenced by
   * the job id.
   */
  async send(host: Host, request: HostRequest): Promise<{ commandId: string }> {
    const instanceId = requireInstanceId(host);
    let encoded: string;
    try {
      encoded = encodeHostRequest(request);
    } catch (cause) {
      throw new InputError('host request is malformed', { hostId: host.id }, { cause });
    }
    if (encoded.length > HOST_REQUEST_MAX_BASE64_CHARS) {
      throw new PayloadTooLargeError(
        `host request is ${encoded.length} base64 characters; the SSM document accepts ${HOST_REQUEST_MAX_BASE64_CHARS}`,
        { hostId: host.id, operation: request.operation },
      );
    }
    const output = await this.ssm().send(
      new SendCommandCommand({
        DocumentName: this.documentName,
        InstanceIds: [instanceId],
        Parameters: { [HOST_REQUEST_PARAMETER]: [encoded] },
        Comment: `strata job ${request.jobId} ${request.operation}`.slice(0, SSM_COMMENT_MAX),
        TimeoutSeconds: this.timeoutSeconds,
        ...(this.outputBucket
          ? {
              OutputS3BucketName: this.outputBucket,
              ...(this.outputPrefix ? { OutputS3KeyPrefix: this.outputPrefix } : {}),
            }
          : {}),
      }),
    );
    const commandId = output.Command?.CommandId;
    if (!commandId) throw new UnavailableError('SSM SendCommand returned no command id', { hostId: host.id });
    return { commandId };
  }

  /** CancelCommand for the host's invocation; a command that already ended is left as it is. */
  async cancel(host: Host, commandId: string): Promise<void> {
    const instanceId = requireInstanceId(host);
    if (!commandId) throw new InputError('command id is required', { field: 'commandId' });
    try {
      await this.ssm().send(new CancelCommandCommand({ CommandId: commandId, InstanceIds: [instanceId] }));
    } catch (error) {
      // Ended (or expired from SSM's history): nothing left to stop.
      if (errorName(error) === 'InvalidCommandId' || errorName(error) === 'DuplicateInstanceId') return;
      throw error;
    }
  }

  async status(host: Host, commandId: string): Promise<CommandStatus> {
    const instanceId = requireInstanceId(host);
    if (!commandId) throw new InputError('command id is required', { field: 'commandId' });
    let invocation: GetCommandInvocationCommandOutput;
    try {
      invocation = await this.ssm().send(
        new GetCommandInvocationCommand({ CommandId: commandId, InstanceId: instanceId }),
      );
    } catch (error) {
      // SSM registers the invocation a moment after SendCommand returns.
      if (errorName(error) === 'InvocationDoesNotExist') return { state: 'pending' };
      throw error;
    }

    switch (invocation.Status) {
      case 'Pending':
      case 'Delayed':
        return { state: 'pending' };
      case 'InProgress':
      case 'Cancelling':
        return withProgress({ state: 'running' }, invocation.StandardOutputContent ?? '');
      case 'Success':
      case 'Failed':
      case 'Cancelled':
      case 'TimedOut':
        return this.finished(host, commandId, invocation);
      default:
        // A status this adapter does not know yet: keep polling rather than guess an outcome.
        return { state: 'pending' };
    }
  }

  private async finished(
    host: Host,
    commandId: string,
    invocation: GetCommandInvocationCommandOutput,
  ): Promise<CommandStatus> {
    const stdout = await this.fullStdout(host, commandId, invocation);
    if (stdout === undefined) {
      const ended = Date.parse(invocation.ExecutionEndDateTime ?? '');
      if (Number.isFinite(ended) && this.now() - ended > OUTPUT_UPLOAD_GRACE_MS) {
        return {
          state: 'failed',
          error: {
            code: 'SsmOutputMissing',
            message:
              `command ${commandId} ended ${invocation.Status} but its full output never reached ` +
              `s3://${this.outputBucket}/${this.outputPrefix}: the host role needs s3:PutObject there`,
            retryable: false,
          },
        };
      }
      // The output was truncated and its S3 copy has not landed yet: ask again shortly.
      return withProgress({ state: 'running' }, invocation.StandardOutputContent ?? '');
    }
    const { progress, result } = parseHostOutput(stdout);
    if (result?.ok === false) return { state: 'failed', error: result.error };
    if (invocation.Status === 'Success') {
      if (result?.ok) return { state: 'succeeded', progress: 100, result: result.result };
      return {
        state: 'failed',
        error: {
          code: 'HostNoResult',
          message: 'the host runtime exited successfully without reporting a result',
          retryable: false,
        },
      };
    }
    return {
      state: 'failed',
      ...(progress ? { progress: progress.percent } : {}),
      error: ssmFailure(invocation),
    };
  }

  /**
   * The whole stdout: inline when it fits, else the S3 copy. Undefined when it was truncated and the
   * copy is not readable yet; the inline prefix when no copy was configured.
   */
  private async fullStdout(
    host: Host,
    commandId: string,
    invocation: GetCommandInvocationCommandOutput,
  ): Promise<string | undefined> {
    const inline = invocation.StandardOutputContent ?? '';
    if (inline.length < SSM_INLINE_OUTPUT_LIMIT) return inline;
    const location = this.outputLocation(host, commandId, invocation.StandardOutputUrl);
    if (!location) return inline;
    try {
      const object = await this.s3().send(new GetObjectCommand(location));
      return (await object.Body?.transformToString('utf8')) ?? inline;
    } catch (error) {
      if (errorName(error) === 'NoSuchKey') return undefined;
      throw error;
    }
  }

  /** Prefers the URL SSM reports; falls back to SSM's documented key layout under our prefix. */
  private outputLocation(
    host: Host,
    commandId: string,
    url: string | undefined,
  ): { Bucket: string; Key: string } | undefined {
    const fromUrl = url ? parseS3Url(url) : undefined;
    if (fromUrl && (!this.outputBucket || fromUrl.Bucket === this.outputBucket)) return fromUrl;
    if (!this.outputBucket) return undefined;
    const parts = [
      this.outputPrefix,
      commandId,
      host.instanceId,
      SHELL_PLUGIN_FOLDER,
      HOST_STEP_NAME,
      'stdout',
    ];
    return { Bucket: this.outputBucket, Key: parts.filter(Boolean).join('/') };
  }
}

function requireInstanceId(host: Host): string {
  if (!INSTANCE_ID.test(host.instanceId ?? '')) {
    throw new InputError(`host ${host.id} has no valid SSM managed-instance id`, {
      field: 'instanceId',
      hostId: host.id,
      instanceId: host.instanceId,
    });
  }
  return host.instanceId;
}

function withProgress(status: CommandStatus, partialStdout: string): CommandStatus {
  const { progress } = parseHostOutput(partialStdout);
  if (!progress) return status;
  return {
    ...status,
    progress: progress.percent,
    ...(progress.detail ? { progressDetail: progress.detail } : {}),
  };
}

/** SSM's verdict as a HostError, for when the runtime could not report one itself. */
function ssmFailure(invocation: GetCommandInvocationCommandOutput): HostError {
  const details = (invocation.StatusDetails ?? '').replace(/\s+/g, '');
  const exitCode = invocation.ResponseCode;
  const stderr = (invocation.StandardErrorContent ?? '').trim().slice(-500);
  const suffix = [
    exitCode !== undefined && exitCode >= 0 ? `exit code ${exitCode}` : undefined,
    stderr ? `stderr: ${stderr}` : undefined,
  ]
    .filter(Boolean)
    .join('; ');
  const error = (code: string, message: string, retryable: boolean): HostError => ({
    code,
    message: suffix ? `${message} (${suffix})` : message,
    retryable,
  });

  switch (details) {
    // The host was offline or unregistered; another attempt (maybe on another host) can succeed.
    case 'DeliveryTimedOut':
      return error('SsmDeliveryTimedOut', 'the host did not pick up the command in time', true);
    case 'Undeliverable':
      return error('SsmUndeliverable', 'the command could not be delivered to the host', true);
    case 'Terminated':
      return error('SsmTerminated', 'the command was terminated before it finished', true);
    // Running longer again would most likely time out again.
    case 'ExecutionTimedOut':
      return error('SsmExecutionTimedOut', 'the host operation exceeded its time limit', false);
    case 'InvalidPlatform':
      return error('SsmInvalidPlatform', 'the host platform does not support the Strata document', false);
    case 'AccessDenied':
      return error('SsmAccessDenied', 'SSM denied running the command on the host', false);
    default:
      break;
  }
  switch (invocation.Status) {
    case 'Cancelled':
      return error('SsmCancelled', 'the command was cancelled', false);
    case 'TimedOut':
      return error('SsmTimedOut', 'the command timed out', true);
    default:
      if (exitCode === EXIT_COMMAND_NOT_FOUND) {
        return error('HostRuntimeMissing', 'the Strata host runtime is not installed on the host', false);
      }
      // The runtime died before reporting (killed, out of memory); host operations are idempotent.
      return error('SsmCommandFailed', 'the host runtime failed without reporting an error', true);
  }
}

/** Bucket and key from an S3 HTTPS URL, path-style or virtual-hosted. */
export function parseS3Url(url: string): { Bucket: string; Key: string } | undefined {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return undefined;
  }
  const segments = parsed.pathname.split('/').filter(Boolean).map(decodeURIComponent);
  const host = parsed.hostname;
  const virtual = /^(.+)\.s3[.-]/.exec(host);
  if (virtual?.[1] && segments.length > 0) return { Bucket: virtual[1], Key: segments.join('/') };
  if (/^s3[.-]/.test(host) && segments.length > 1) {
    const [bucket, ...key] = segments;
    return { Bucket: bucket!, Key: key.join('/') };
  }
  return undefined;
}
