/**
 * Builds Strata for a Lambda container from its environment (set by the CDK stack through
 * EnvName). Built once per container on first use, never at import time.
 *
 * Each function is given only what its role allows: the API function has no host channel, the task
 * functions no schedule group, and so on. Every port is therefore built lazily, on the first call
 * that uses it, from the variables that capability needs; a function missing one fails exactly the
 * calls that need it with a {@link NotConfiguredError} naming the variable, never every request.
 *
 * The SDK clients find their endpoints the standard way (`AWS_ENDPOINT_URL_<SERVICE>`), which is how
 * the embedded stack points the very same bundles at its local services.
 */
import { S3Client } from '@aws-sdk/client-s3';
import { createBuiltinRegistry } from '../../drivers/builtin.js';
import { S3_CLIENT_SERVICE } from '../../drivers/s3/client.js';
import { createJsonLogger } from '../../drivers/sdk/logger.js';
import { lazy } from '../adapters/aws/clients.js';
import { DynamoRepository } from '../adapters/aws/dynamo-repository.js';
import { EventBridgeSchedules } from '../adapters/aws/scheduler-schedules.js';
import { StepFunctionsWorkflows } from '../adapters/aws/sfn-workflows.js';
import { SsmEndpointChannel } from '../adapters/aws/ssm-channel.js';
import { SafeUrlFetcher } from '../adapters/http/url-fetcher.js';
import { NotConfiguredError } from '../core/errors.js';
import type { EndpointChannel, Repository, SchedulerPort, WorkflowPort } from '../core/ports.js';
import { Strata } from '../core/strata.js';
import { EnvName } from '../env-names.js';

let strata: Strata | undefined;

export function awsStrata(): Strata {
  strata ??= buildAwsStrata(process.env);
  return strata;
}

/** The value of `name`, or a NotConfiguredError saying which capability needs it. */
export function requireEnv(env: NodeJS.ProcessEnv, name: EnvName, capability: string): string {
  const value = env[name];
  if (!value) {
    const fn = env.AWS_LAMBDA_FUNCTION_NAME ? `function ${env.AWS_LAMBDA_FUNCTION_NAME}` : 'this function';
    throw new NotConfiguredError(`${capability} is not available in ${fn}: ${name} is not set`, {
      variable: name,
    });
  }
  return value;
}

/**
 * A stand-in for a port that builds the real one on the first method call. A build that fails
 * (a missing variable) fails that call, and the next call tries again.
 */
export function deferred<T extends object>(build: () => T): T {
  let built: T | undefined;
  const target = () => {
    built ??= build();
    return built;
  };
  return new Proxy({} as T, {
    get(_, property) {
      const port = target();
      const value = Reflect.get(port, property, port) as unknown;
      return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(port) : value;
    },
  });
}

/** Milliseconds from an optional variable; the default when unset. */
function millis(env: NodeJS.ProcessEnv, name: EnvName, fallback: number): number {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isFinite(value) || value < 0) throw new Error(`${name} must be a number of milliseconds`);
  return value;
}

export function buildAwsStrata(env: NodeJS.ProcessEnv): Strata {
  const logger = createJsonLogger({
    minLevel: (env[EnvName.LogLevel] as 'debug' | 'info' | 'warn' | 'error' | undefined) ?? 'info',
  });
  // Presigned URLs and streamed uploads need checksums only where S3 requires them (see TOOLCHAIN.md).
  const s3 = lazy(
    () =>
      new S3Client({
        requestChecksumCalculation: 'WHEN_REQUIRED',
        responseChecksumValidation: 'WHEN_REQUIRED',
      }),
  );

  const repo = deferred<Repository>(
    () => new DynamoRepository({ tableName: requireEnv(env, EnvName.TableName, 'the data table') }),
  );
  const channel = deferred<EndpointChannel>(
    () =>
      new SsmEndpointChannel({
        documentName: requireEnv(env, EnvName.SsmDocumentName, 'the host channel (SSM Run Command)'),
        outputBucket: env[EnvName.SsmOutputBucket],
        outputPrefix: env[EnvName.SsmOutputPrefix],
        s3Client: s3(),
      }),
  );
  const workflows = deferred<WorkflowPort>(() => {
    requireEnv(env, EnvName.StateMachineArns, 'starting workflows');
    return StepFunctionsWorkflows.fromEnv(env);
  });
  const scheduler = deferred<SchedulerPort>(() => {
    requireEnv(env, EnvName.SchedulerGroup, 'snapshot-policy schedules');
    const built = EventBridgeSchedules.fromEnv(env);
    if (!built) throw new NotConfiguredError('snapshot-policy schedules are not configured');
    return built;
  });

  return new Strata({
    repo,
    channel,
    workflows,
    scheduler,
    registry: createBuiltinRegistry({
      s3: { allowedBuckets: allowedImageBuckets(env) },
    }),
    fetcher: new SafeUrlFetcher({ allowlist: env[EnvName.FetchAllowlist] }),
    logger,
    driverServices: { [S3_CLIENT_SERVICE]: () => s3() },
    ...(env[EnvName.HostBuild] ? { hostBuild: env[EnvName.HostBuild] } : {}),
    hostPollMs: millis(env, EnvName.HostPollMs, 100),
    hostMaxPollMs: millis(env, EnvName.HostMaxPollMs, 2000),
    // A step waits on a host for seconds, then suspends and the state machine waits (step-scope.ts).
    hostWaitBudgetMs: millis(env, EnvName.HostWaitBudgetMs, 10_000),
    ...(env[EnvName.HostMaxWaitSeconds]
      ? { hostMaxWaitSeconds: Number(env[EnvName.HostMaxWaitSeconds]) }
      : {}),
  });
}

/**
 * The buckets this deployment's functions hold IAM grants for (STRATA_IMAGE_BUCKETS, comma-separated,
 * which includes the stack's own). Undefined when unset: then no bucket is refused up front.
 */
function allowedImageBuckets(env: NodeJS.ProcessEnv): string[] | undefined {
  const raw = env[EnvName.ImageBuckets];
  if (!raw) return undefined;
  return raw
    .split(',')
    .map((b) => b.trim())
    .filter(Boolean);
}
