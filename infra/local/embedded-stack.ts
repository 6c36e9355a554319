/**
 * The embedded stack: Strata on one machine with the same handlers, workflow definitions and host
 * code as on AWS. Only the adapters differ: DynamoDB Local for the table, s3rver for the image
 * store, aws-local-stepfunctions for the workflows, child processes for the hypervisor hosts.
 */
import { mkdir, readFile, rm, statfs, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { CreateBucketCommand, HeadBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { DynamoDBDocumentClient } from '@aws-sdk/lib-dynamodb';
import { createBuiltinRegistry } from '../../drivers/builtin.js';
import { createJsonLogger } from '../../drivers/sdk/logger.js';
import type { Logger } from '../../drivers/sdk/types.js';
import { DynamoRepository } from '../../functions/adapters/aws/dynamo-repository.js';
import { SafeUrlFetcher } from '../../functions/adapters/http/url-fetcher.js';
import { LocalProcessChannel } from '../../functions/adapters/local/process-channel.js';
import { ConflictError } from '../../functions/core/errors.js';
import type { Job } from '../../functions/core/model.js';
import { type Clock, FlowName } from '../../functions/core/ports.js';
import { Strata } from '../../functions/core/strata.js';
import { EnvName } from '../../functions/env-names.js';
import { createApiHandler } from '../../functions/handlers/api/handler.js';
import { createImageTasksHandler } from '../../functions/handlers/image-tasks-handler.js';
import { createReconcilerHandler } from '../../functions/handlers/reconciler-handler.js';
import { createStoreTasksHandler } from '../../functions/handlers/store-tasks-handler.js';
import { loadFlowDefinition } from '../../statemachines/definitions.js';
import { bundleHostRuntime } from '../host-runtime-bundle.js';
import { type LocalApiServer, type ProxyHandler, startLocalApiServer } from './api-server.js';
import {
  type DynamoLocal,
  ensureTable,
  localDynamoClientConfig,
  startDynamoLocal,
} from './dynamodb-local.js';
import { lambdaContext } from './lambda-context.js';
import { LocalPolicyScheduler } from './policy-scheduler.js';
import { localS3ClientConfig, type S3Emulator, startS3EmulatorProcess } from './s3-emulator.js';
import { LocalWorkflowRunner } from './workflow-runner.js';

export const LOCAL_ZONE = 'zone-1';
export const LOCAL_CLUSTER = 'cluster-1';
const STORE_TASKS_ARN = 'arn:aws:lambda:local:000000000000:function:strata-store-tasks';
const IMAGE_TASKS_ARN = 'arn:aws:lambda:local:000000000000:function:strata-image-tasks';

export interface EmbeddedStackOptions {
  /** Everything persistent lives here (DynamoDB Local files, S3 objects, host work dirs, the share). */
  dataDir: string;
  /** API port on 127.0.0.1; 0 picks a free one. */
  port: number;
  hostCount?: number;
  /** Reuse running emulators instead of starting them (tests). */
  dynamoEndpoint?: string;
  s3Endpoint?: string;
  tableName?: string;
  imageBucket?: string;
  /** Register the default hosts and stores on first start. Default true. */
  bootstrap?: boolean;
  logger?: Logger;
  /** How often the in-process scheduler runs the reconciler. Default 60 s; 0 turns it off. */
  reconcileEverySeconds?: number;
  /** Scales Wait states and Retry pauses in the workflows (tests shorten them). */
  waitTimeScale?: number;
  /** Host command polling interval in ms. */
  hostPollMs?: number;
  /** How long a resumable step waits for its host command before a retry resumes it (tests). */
  hostWaitBudgetMs?: number;
  /** Extra hosts/CIDRs template URLs may reach (STRATA_FETCH_ALLOWLIST); none by default. */
  fetchAllowlist?: string;
  /** The clock the in-process snapshot-policy scheduler reads (tests move it to just before a slot). */
  policyClock?: Clock;
}

export interface EmbeddedStack {
  url: string;
  dataDir: string;
  strata: Strata;
  runner: LocalWorkflowRunner;
  /** Snapshot-policy schedules (what EventBridge Scheduler is on AWS). */
  policyScheduler: LocalPolicyScheduler;
  endpoints: { dynamo: string; s3: string };
  /** The jobs the first-start bootstrap ran (empty on later starts). */
  bootstrapJobs: Job[];
  stop(): Promise<void>;
}

/** Starts everything; on failure, whatever already started is stopped again. */
export async function startEmbeddedStack(options: EmbeddedStackOptions): Promise<EmbeddedStack> {
  const dataDir = path.resolve(options.dataDir);
  const logger = options.logger ?? createJsonLogger({ minLevel: 'warn' });
  const stops: (() => Promise<unknown> | unknown)[] = [];
  const stopAll = async () => {
    for (const stop of stops.splice(0).reverse()) {
      try {
        await stop();
      } catch (e) {
        logger.warn('stop step failed', { error: (e as Error).message });
      }
    }
  };
  try {
    await mkdir(dataDir, { recursive: true });
    await takeLock(dataDir);
    stops.push(() => rm(path.join(dataDir, 'stack.pid'), { force: true }));

    let dynamo: Pick<DynamoLocal, 'endpoint'> = { endpoint: options.dynamoEndpoint ?? '' };
    if (!options.dynamoEndpoint) {
      const started = await startDynamoLocal({ dataDir: path.join(dataDir, 'dynamodb') });
      stops.push(() => started.stop());
      dynamo = started;
    }
    let s3: Pick<S3Emulator, 'endpoint'> = { endpoint: options.s3Endpoint ?? '' };
    if (!options.s3Endpoint) {
      const started = await startS3EmulatorProcess({ dir: path.join(dataDir, 's3') });
      stops.push(() => started.stop());
      s3 = started;
    }

    const tableName = options.tableName ?? 'strata';
    const imageBucket = options.imageBucket ?? 'strata-images';
    const dynamoClient = new DynamoDBClient(localDynamoClientConfig(dynamo.endpoint));
    stops.push(() => dynamoClient.destroy());
    await ensureTable(dynamoClient, tableName);
    const s3Client = new S3Client(localS3ClientConfig(s3.endpoint));
    stops.push(() => s3Client.destroy());
    await ensureBucket(s3Client, imageBucket);

    // Local hosts run the same bundled host runtime that SSM installs on real hosts.
    const hostRuntime = bundleHostRuntime(path.join(dataDir, 'host-runtime', 'strata-host.js'));
    const channel = new LocalProcessChannel({
      hostsRoot: path.join(dataDir, 'hosts'),
      command: [process.execPath, hostRuntime],
    });
    stops.push(() => channel.stop());

    const registry = createBuiltinRegistry();

    // The workflows call back into the same Strata, so the runner is created first and bound late.
    let strata: Strata | undefined;
    const storeTasks = createStoreTasksHandler(() => strata!);
    const imageTasks = createImageTasksHandler(() => strata!);
    const runner = new LocalWorkflowRunner({
      definitions: Object.fromEntries(
        Object.values(FlowName).map((flow) => [
          flow,
          loadFlowDefinition(flow, {
            StoreTasksFunctionArn: STORE_TASKS_ARN,
            ImageTasksFunctionArn: IMAGE_TASKS_ARN,
          }),
        ]),
      ),
      lambdas: {
        [STORE_TASKS_ARN]: (event) => storeTasks(event, lambdaContext('strata-store-tasks')),
        [IMAGE_TASKS_ARN]: (event) => imageTasks(event, lambdaContext('strata-image-tasks')),
      },
      waitTimeScale: options.waitTimeScale,
      logger,
    });
    stops.push(() => runner.stop());

    // Stopped before the runner (stops run in reverse), so no firing reaches a stopped runner.
    const policyScheduler = new LocalPolicyScheduler({
      workflows: runner,
      clock: options.policyClock,
      logger,
    });
    stops.push(() => policyScheduler.stop());

    strata = new Strata({
      repo: new DynamoRepository({
        tableName,
        client: DynamoDBDocumentClient.from(dynamoClient, {
          marshallOptions: { removeUndefinedValues: true },
        }),
      }),
      channel,
      workflows: runner,
      scheduler: policyScheduler,
      registry,
      fetcher: new SafeUrlFetcher({
        allowlist: options.fetchAllowlist ?? process.env[EnvName.FetchAllowlist],
      }),
      logger,
      driverServices: { s3Client: () => s3Client },
      hostPollMs: options.hostPollMs ?? 50,
      ...(options.hostWaitBudgetMs !== undefined ? { hostWaitBudgetMs: options.hostWaitBudgetMs } : {}),
      // Local commands are child processes: polling them costs nothing, so notice completion quickly.
      hostMaxPollMs: 200,
    });

    await policyScheduler.start(await strata.policies.all());

    const api: LocalApiServer = await startLocalApiServer({
      handler: createApiHandler({ getStrata: () => strata!, logger }) as unknown as ProxyHandler,
      port: options.port,
    });
    stops.push(() => api.close());

    const every = options.reconcileEverySeconds ?? 60;
    if (every > 0) {
      const reconcile = createReconcilerHandler(() => strata!);
      const timer = setInterval(() => {
        reconcile({}, lambdaContext('strata-reconciler')).catch((e: unknown) =>
          logger.error('reconciler failed', { error: (e as Error).message }),
        );
      }, every * 1000);
      timer.unref();
      stops.push(() => clearInterval(timer));
    }

    const bootstrapJobs =
      options.bootstrap === false
        ? []
        : await bootstrap(strata, runner, { dataDir, hostCount: options.hostCount ?? 2, imageBucket });

    return {
      url: api.url,
      dataDir,
      strata,
      runner,
      policyScheduler,
      endpoints: { dynamo: dynamo.endpoint, s3: s3.endpoint },
      bootstrapJobs,
      stop: stopAll,
    };
  } catch (e) {
    await stopAll();
    throw e;
  }
}

/**
 * First start: two hosts in one cluster, an nfs primary store (a directory standing in for the
 * share every host mounts) and an s3 image store. Later starts find them and do nothing.
 */
async function bootstrap(
  strata: Strata,
  runner: LocalWorkflowRunner,
  options: { dataDir: string; hostCount: number; imageBucket: string },
): Promise<Job[]> {
  for (let i = 1; i <= options.hostCount; i++) {
    await strata.hosts
      .register({
        name: `local-host-${i}`,
        zoneId: LOCAL_ZONE,
        clusterId: LOCAL_CLUSTER,
        instanceId: `local-host-${i}`,
        hypervisor: 'kvm',
      })
      .catch((e: unknown) => {
        if (!(e instanceof ConflictError)) throw e;
      });
  }
  const existing = await strata.stores.list({}, { limit: 1 });
  if (existing.items.length > 0) return [];

  const share = path.join(options.dataDir, 'primary', 'nfs-1');
  await mkdir(share, { recursive: true });
  const fs = await statfs(share);
  const jobs: Job[] = [];
  const primary = await strata.stores.add({
    name: 'nfs-primary-1',
    provider: 'nfs',
    role: 'primary',
    scope: { type: 'cluster', zoneId: LOCAL_ZONE, clusterId: LOCAL_CLUSTER },
    capacityBytes: fs.blocks * fs.bsize,
    details: { server: '127.0.0.1', export: '/nfs-1', mountPath: share },
  });
  jobs.push(primary.job);
  const image = await strata.stores.add({
    name: 'images-1',
    provider: 's3',
    role: 'image',
    scope: { type: 'zone', zoneId: LOCAL_ZONE },
    details: { bucket: options.imageBucket, prefix: 'images/' },
  });
  jobs.push(image.job);
  for (const job of jobs) if (job.executionId) await runner.waitFor(job.executionId);
  return Promise.all(jobs.map((j) => strata.jobs.get(j.id)));
}

async function ensureBucket(s3: S3Client, bucket: string): Promise<void> {
  try {
    await s3.send(new HeadBucketCommand({ Bucket: bucket }));
  } catch {
    await s3.send(new CreateBucketCommand({ Bucket: bucket }));
  }
}

/** One stack per data directory: DynamoDB Local and s3rver cannot share their files. */
async function takeLock(dataDir: string): Promise<void> {
  const lock = path.join(dataDir, 'stack.pid');
  const pid = Number.parseInt(await readFile(lock, 'utf8').catch(() => ''), 10);
  if (pid && pid !== process.pid && isAlive(pid)) {
    throw new Error(
      `another Strata stack (pid ${pid}) is using ${dataDir}; set STRATA_DATA_DIR to run a second one`,
    );
  }
  await writeFile(lock, String(process.pid));
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
