/**
 * Builds Strata for a Lambda container from its environment (set by the CDK stack through
 * EnvName). Built once per container on first use, never at import time.
 */
import { S3Client } from '@aws-sdk/client-s3';
import { createBuiltinRegistry } from '../../drivers/builtin.js';
import { S3_CLIENT_SERVICE } from '../../drivers/s3/client.js';
import { createJsonLogger } from '../../drivers/sdk/logger.js';
import { DynamoRepository } from '../adapters/aws/dynamo-repository.js';
import { EventBridgeSchedules } from '../adapters/aws/scheduler-schedules.js';
import { StepFunctionsWorkflows } from '../adapters/aws/sfn-workflows.js';
import { SsmEndpointChannel } from '../adapters/aws/ssm-channel.js';
import { SafeUrlFetcher } from '../adapters/http/url-fetcher.js';
import type { FlowName } from '../core/ports.js';
import { Strata } from '../core/strata.js';
import { EnvName } from '../env-names.js';

let strata: Strata | undefined;

function required(name: EnvName): string {
  const value = process.env[name];
  if (!value) throw new Error(`environment variable ${name} is not set`);
  return value;
}

export function awsStrata(): Strata {
  strata ??= buildAwsStrata(process.env);
  return strata;
}

export function buildAwsStrata(env: NodeJS.ProcessEnv): Strata {
  const logger = createJsonLogger({
    minLevel: (env[EnvName.LogLevel] as 'debug' | 'info' | 'warn' | 'error' | undefined) ?? 'info',
  });
  // Presigned URLs and streamed uploads need checksums only where S3 requires them (see TOOLCHAIN.md).
  const s3 = new S3Client({
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    ...(env[EnvName.S3Endpoint] ? { endpoint: env[EnvName.S3Endpoint], forcePathStyle: true } : {}),
  });
  return new Strata({
    repo: new DynamoRepository({
      tableName: required(EnvName.TableName),
      clientConfig: env[EnvName.DynamoEndpoint] ? { endpoint: env[EnvName.DynamoEndpoint] } : {},
    }),
    channel: new SsmEndpointChannel({
      documentName: required(EnvName.SsmDocumentName),
      outputBucket: env[EnvName.SsmOutputBucket],
      outputPrefix: env[EnvName.SsmOutputPrefix],
      s3Client: s3,
    }),
    workflows: new StepFunctionsWorkflows({
      stateMachineArns: JSON.parse(env[EnvName.StateMachineArns] ?? '{}') as Partial<
        Record<FlowName, string>
      >,
    }),
    // Only the api function manages policies (it alone gets the schedule group); the others need none.
    scheduler: EventBridgeSchedules.fromEnv(env),
    registry: createBuiltinRegistry(),
    fetcher: new SafeUrlFetcher({ allowlist: env[EnvName.FetchAllowlist] }),
    logger,
    driverServices: { [S3_CLIENT_SERVICE]: () => s3 },
    // The task function may run 15 minutes: a resumable step hands over to its retry well before.
    hostWaitBudgetMs: 12 * 60 * 1000,
  });
}
