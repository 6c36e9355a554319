/**
 * The embedded stack: the synthesized cloud assembly (cdk.out), run on one machine. What `cdk deploy`
 * creates is created here from the same template:
 *
 * - the table in DynamoDB Local and the buckets in s3rver, behind authorizing proxies;
 * - each Lambda function from its bundled asset, in its own containers, with the template's
 *   handler, timeout, memory and environment, signed in as its own role;
 * - each state machine from its synthesized definition, run by aws-local-stepfunctions behind a local
 *   Step Functions endpoint;
 * - the API's synthesized routes on a local HTTP server calling the API function;
 * - the SSM documents on a local Run Command endpoint whose local hosts are onboarded by the
 *   template's State Manager association (the install document), then receive work only through
 *   the run document;
 * - the schedule group on a local EventBridge Scheduler endpoint, and the scheduled rule that runs
 *   the reconciler.
 *
 * Every local endpoint verifies SigV4 and evaluates the call against the caller's synthesized IAM
 * policies; the SDK clients inside the functions find the endpoints through the standard
 * `AWS_ENDPOINT_URL_<SERVICE>` variables. Nothing of Strata's own code runs in this process: it is the
 * cloud, not the application.
 */
import { createHash, randomBytes, randomInt } from 'node:crypto';
import { mkdir, readFile, rm, statfs, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { CreateBucketCommand, HeadBucketCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { createJsonLogger } from '../../drivers/sdk/logger.js';
import type { Logger } from '../../drivers/sdk/types.js';
import type { Job } from '../../functions/core/model.js';
import { EnvName } from '../../functions/env-names.js';
import { API_CALLER_ROLE_IDS } from '../aws/constructs/api-callers.js';
import { startLocalApiServer } from './api-server.js';
import { API_CALLER_ROLES, type ApiTokens, newApiTokens, writeApiTokens } from './api-tokens.js';
import { DEFAULT_ASSEMBLY_DIR, ensureAssembly, loadAssembly } from './assembly/cloud-assembly.js';
import { LocalDeployment, type LocalFunction, type LocalRole } from './assembly/deployment.js';
import { startDynamoProxy } from './aws/dynamodb-proxy.js';
import { IamAuthorizer, type NamedPolicy } from './aws/iam-authorizer.js';
import {
  type LocalAccount,
  type LocalAwsCredentials,
  LocalCredentialStore,
  type Principal,
  principalOf,
} from './aws/principals.js';
import { startS3Proxy } from './aws/s3-proxy.js';
import { type LocalScheduler, startSchedulerService } from './aws/scheduler-service.js';
import { LocalStepFunctions } from './aws/sfn-service.js';
import { LocalSsm } from './aws/ssm-service.js';
import {
  type DynamoLocal,
  ensureTable,
  localDynamoClientConfig,
  startDynamoLocal,
  tableFromTemplate,
} from './dynamodb-local.js';
import type { LocalFaults } from './faults.js';
import { LocalHost } from './hosts/local-host.js';
import { LocalLambdaFunction } from './lambda/local-function.js';
import { localS3ClientConfig, type S3Emulator, startS3EmulatorProcess } from './s3-emulator.js';

export const LOCAL_ZONE = 'zone-1';
export const LOCAL_CLUSTER = 'cluster-1';
const REGION_FALLBACK = 'us-east-1';

export interface EmbeddedStackOptions {
  /** Everything persistent lives here (DynamoDB Local files, S3 objects, hosts, the share, logs). */
  dataDir: string;
  /** API port on 127.0.0.1; 0 picks a free one. */
  port: number;
  hostCount?: number;
  /** How many of the local hosts the first start registers with Strata (default: all of them). */
  registerHosts?: number;
  /** Reuse running emulators instead of starting them (tests). */
  dynamoEndpoint?: string;
  s3Endpoint?: string;
  /** Register the default hosts and stores on first start. Default true. */
  bootstrap?: boolean;
  logger?: Logger;
  /** How often the reconciler's scheduled rule fires. Default: the rule's own rate; 0 turns it off. */
  reconcileEverySeconds?: number;
  /** Scales Wait states and Retry pauses in the workflows (tests shorten them). */
  waitTimeScale?: number;
  /**
   * Variables set on top of every function's template environment: the host-polling knobs
   * (STRATA_HOST_POLL_MS and friends) that the embedded stack and tests tune. Nothing else.
   */
  functionEnvironment?: Partial<Record<EnvName, string>>;
  /** Extra hosts/CIDRs template URLs may reach (the functions' STRATA_FETCH_ALLOWLIST). */
  fetchAllowlist?: string;
  /** The clock the local Scheduler reads (tests move it to just before a slot). */
  schedulerClock?: { now(): Date };
  /** Where the cloud assembly is (synthesized there when stale). Default cdk.out. */
  assemblyDir?: string;
  /**
   * Test only: rewrites the synthesized policies before they are enforced, to prove a call outside a
   * role's policy is denied. Never used by `npm start`.
   */
  narrowPolicies?: (role: LocalRole) => NamedPolicy[];
  /**
   * Test only (the crash matrix, test/crash): kills a container, a host command or the executions
   * at a chosen point. Never used by `npm start`.
   */
  faults?: LocalFaults;
}

export interface EmbeddedStack {
  url: string;
  dataDir: string;
  /** The API's bearer tokens, one per caller role (new on every start), and the 0600 file holding them. */
  apiTokens: ApiTokens;
  apiTokensFile: string;
  deployment: LocalDeployment;
  account: LocalAccount;
  /** The physical names tests and tools need. */
  tableName: string;
  imageBucket: string;
  commandOutputBucket: string;
  endpoints: {
    dynamo: string;
    s3: string;
    dynamoProxy: string;
    s3Proxy: string;
    sfn: string;
    ssm: string;
    scheduler: string;
  };
  stepFunctions: LocalStepFunctions;
  ssm: LocalSsm;
  scheduler: LocalScheduler;
  hosts: LocalHost[];
  functions: Map<string, LocalLambdaFunction>;
  /** Credentials that stand for a role of the stack (by logical id prefix, e.g. `ApiRole`). */
  credentialsFor(roleLogicalIdPrefix: string, session?: string): LocalAwsCredentials;
  /** Invokes a function by its logical id prefix (`Api`, `StoreTasks`, …). */
  invoke(functionLogicalIdPrefix: string, event: unknown): Promise<unknown>;
  /** The jobs the first-start bootstrap ran (empty on later starts). */
  bootstrapJobs: Job[];
  stop(): Promise<void>;
}

interface DeploymentState {
  accountId: string;
  suffix: string;
}

/** The account and suffix of a data directory: made once, kept so physical names stay the same. */
async function deploymentState(dataDir: string): Promise<DeploymentState> {
  const file = path.join(dataDir, 'deployment.json');
  try {
    const state = JSON.parse(await readFile(file, 'utf8')) as DeploymentState;
    if (/^\d{12}$/.test(state.accountId) && /^[A-Z0-9]{12}$/.test(state.suffix)) return state;
  } catch {
    // first start
  }
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789';
  const suffix = [...randomBytes(12)].map((b) => alphabet[b % alphabet.length]).join('');
  const accountId = String(randomInt(100_000_000_000, 999_999_999_999));
  const state = { accountId, suffix };
  await writeFile(file, `${JSON.stringify(state, null, 2)}\n`);
  return state;
}

/** A managed-instance id (`mi-` + 17 hex digits) for a local host, stable for the data directory. */
function instanceIdFor(suffix: string, name: string): string {
  return `mi-${createHash('sha256').update(`${suffix}/${name}`).digest('hex').slice(0, 17)}`;
}

function byPrefix<T extends { logicalId: string }>(items: readonly T[], prefix: string, what: string): T {
  const found = items.filter((i) => i.logicalId.startsWith(prefix));
  if (found.length !== 1)
    throw new Error(`expected one ${what} whose logical id starts with ${prefix}, found ${found.length}`);
  return found[0]!;
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

    const { dir } = await ensureAssembly({ dir: options.assemblyDir ?? DEFAULT_ASSEMBLY_DIR, logger });
    const assembly = loadAssembly(dir);
    const state = await deploymentState(dataDir);
    const account: LocalAccount = {
      accountId: state.accountId,
      region: assembly.region ?? REGION_FALLBACK,
      partition: 'aws',
    };
    const deployment = new LocalDeployment(assembly, account, state.suffix);

    // The emulators the proxies front.
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

    // What CloudFormation would create: the table, the buckets, the published file assets.
    const admin = new DynamoDBClient(localDynamoClientConfig(dynamo.endpoint));
    stops.push(() => admin.destroy());
    for (const table of deployment.tables()) {
      const { definition, ttlAttribute } = tableFromTemplate(table.name, table.properties);
      await ensureTable(admin, table.name, { definition, ...(ttlAttribute ? { ttlAttribute } : {}) });
    }
    const adminS3 = new S3Client(localS3ClientConfig(s3.endpoint));
    stops.push(() => adminS3.destroy());
    const buckets = deployment.buckets();
    for (const bucket of buckets) await ensureBucket(adminS3, bucket.name);
    for (const asset of deployment.assets()) {
      // Function code runs from the asset directory itself; file assets are published as cdk deploy does.
      if (asset.packaging !== 'file') continue;
      await ensureBucket(adminS3, asset.bucket);
      await adminS3.send(
        new PutObjectCommand({ Bucket: asset.bucket, Key: asset.key, Body: await readFile(asset.source) }),
      );
    }

    // IAM: each role's synthesized policies, and credentials standing for the roles.
    const roles = deployment.roles();
    const authorizer = new IamAuthorizer({
      roles: new Map(
        roles.map((role) => [
          role.arn,
          options.narrowPolicies ? options.narrowPolicies(role) : role.policies,
        ]),
      ),
      onDecision: (request, allowed, reason) => {
        if (!allowed)
          logger.warn('local IAM denied a call', {
            principal: request.principal.arn,
            action: request.action,
            resource: request.resource,
            reason,
          });
      },
    });
    const credentials = new LocalCredentialStore();
    const credentialsFor = (prefix: string, session = 'local') =>
      credentials.issue(byPrefix(roles, prefix, 'role').arn, session);

    const faults = options.faults;
    const dynamoProxy = await startDynamoProxy({
      upstream: dynamo.endpoint,
      credentials,
      authorizer,
      account,
      ...(faults ? { faults } : {}),
      logger,
    });
    stops.push(() => dynamoProxy.close());
    const policies = new Map(buckets.flatMap((b) => (b.policy ? [[b.name, b.policy] as const] : [])));
    const s3Proxy = await startS3Proxy({
      upstream: s3.endpoint,
      credentials,
      authorizer,
      account,
      bucketPolicy: (bucket) => policies.get(bucket),
      ...(faults ? { faults } : {}),
      logger,
    });
    stops.push(() => s3Proxy.close());

    // Hosts: tagged as the association targets them, signed in as the host role.
    const associations = deployment.associations();
    const tags: Record<string, string> = {};
    for (const target of associations.flatMap((a) => a.targets)) {
      if (target.Key.startsWith('tag:') && target.Values[0]) tags[target.Key.slice(4)] = target.Values[0];
    }
    const hostRole = roles.find((role) => role.logicalId.startsWith('HostsHostRole'));
    if (!hostRole) throw new Error('the template has no host role (HostsHostRole)');
    const hosts: LocalHost[] = [];
    for (let i = 1; i <= (options.hostCount ?? 2); i++) {
      const name = `local-host-${i}`;
      hosts.push(
        new LocalHost({
          name,
          instanceId: instanceIdFor(state.suffix, name),
          root: path.join(dataDir, 'hosts', name),
          tags,
          credentials: credentials.issue(hostRole.arn, instanceIdFor(state.suffix, name)),
          region: account.region,
          s3Endpoint: s3Proxy.url,
          // The host's own PATH, with this Node.js first (the runtime's prerequisite).
          environment: { PATH: `${path.dirname(process.execPath)}:${process.env.PATH ?? '/usr/bin:/bin'}` },
          logger,
        }),
      );
    }
    // Each host's own configuration, written as an operator does at onboarding: the roots its
    // runtime may touch are the stack's share directories (`primary/` holds the default share,
    // `shares/` those tests add) and `nfs/`, where real NFS exports may be mounted (checked in
    // /proc/self/mountinfo like on a real host). No store can reach anything else.
    const storageRoots = [
      { path: path.resolve(dataDir, 'primary'), kind: 'directory' },
      { path: path.resolve(dataDir, 'shares'), kind: 'directory' },
      { path: path.resolve(dataDir, 'nfs'), kind: 'nfs' },
    ] as const;
    for (const root of storageRoots) await mkdir(root.path, { recursive: true });
    for (const host of hosts) await host.configure({ storageRoots: [...storageRoots] });
    const ssm = new LocalSsm({
      account,
      credentials,
      authorizer,
      documents: deployment.documents(),
      hosts,
      ...(faults ? { faults } : {}),
      logger,
    });
    await ssm.start();
    stops.push(() => ssm.stop());

    // Functions, and Step Functions calling them.
    const functions = new Map<string, LocalLambdaFunction>();
    const invoke = (functionArn: string, payload: unknown) => {
      const fn = functions.get(functionArn);
      if (!fn)
        throw Object.assign(new Error(`Function not found: ${functionArn}`), {
          name: 'ResourceNotFoundException',
        });
      return fn.invoke(payload);
    };
    const stepFunctions = new LocalStepFunctions({
      credentials,
      authorizer,
      machines: deployment.stateMachines(),
      functionArns: deployment.functions().map((f) => f.arn),
      invoke,
      ...(options.waitTimeScale !== undefined ? { waitTimeScale: options.waitTimeScale } : {}),
      ...(faults ? { faults } : {}),
      logger,
    });
    await stepFunctions.start();
    stops.push(() => stepFunctions.stop());

    // EventBridge Scheduler: a firing starts the target as the schedule's role, as Scheduler does.
    const scheduler = await startSchedulerService({
      account,
      credentials,
      authorizer,
      groups: deployment.scheduleGroups(),
      stateFile: path.join(dataDir, 'scheduler', 'schedules.json'),
      ...(options.schedulerClock ? { clock: options.schedulerClock } : {}),
      ...(faults ? { faults } : {}),
      logger,
      invoke: async ({ target }) => {
        await authorizer.authorize({
          principal: principalOf(target.RoleArn, 'scheduler'),
          action: 'states:StartExecution',
          resource: target.Arn,
        });
        await stepFunctions.runner.start(target.Arn, undefined, JSON.parse(target.Input ?? '{}'));
      },
    });
    stops.push(() => scheduler.close());

    const endpoints = {
      dynamo: dynamo.endpoint,
      s3: s3.endpoint,
      dynamoProxy: dynamoProxy.url,
      s3Proxy: s3Proxy.url,
      sfn: stepFunctions.url,
      ssm: ssm.url,
      scheduler: scheduler.url,
    };
    for (const fn of deployment.functions()) {
      const local = new LocalLambdaFunction({
        fn,
        environment: functionEnvironment(
          fn,
          credentials.issue(fn.roleArn, fn.name),
          account,
          endpoints,
          options,
        ),
        logFile: path.join(dataDir, 'logs', `${fn.name}.log`),
        // Beside the bundles it caches (a build directory: deleting it only costs the next start).
        codeCacheDir: path.join(dir, '.strata-code-cache'),
        // Each container signs as its own session of the function's role (as each Lambda
        // execution environment gets its own credentials).
        credentialsFor: (session) => credentials.issue(fn.roleArn, session),
        ...(faults ? { faults } : {}),
        logger,
      });
      functions.set(fn.arn, local);
      stops.push(() => local.stop());
    }
    faults?.bind({
      killContainer: async (session) => {
        for (const fn of functions.values()) if (await fn.crash(session)) return;
      },
      loseExecutions: async () => stepFunctions.runner.loseAll(),
    });
    // Loading every bundle once now turns a broken bundle into a start-up error.
    await Promise.all([...functions.values()].map((fn) => fn.warm()));

    // Hosts are onboarded by State Manager running the install document on them.
    for (const association of associations) {
      const invocations = await ssm.applyAssociation(association);
      const failed = invocations.filter((i) => i.status !== 'Success');
      if (failed.length) {
        const detail = failed
          .map(
            (i) =>
              `${i.instanceId}: ${i.plugins.map((p) => `${p.name} ${p.status} ${p.stderr.trim()}`).join('; ')}`,
          )
          .join('\n');
        throw new Error(`association ${association.name} failed on ${failed.length} host(s):\n${detail}`);
      }
    }

    const api = deployment.api();
    if (!api) throw new Error('the template has no REST API');
    // A bearer token per API caller role, each a session of the role the template synthesizes, so
    // the same execute-api policies decide here what they decide behind API Gateway.
    const apiTokens = newApiTokens();
    const apiTokensFile = await writeApiTokens(dataDir, apiTokens);
    const principals = Object.fromEntries(
      API_CALLER_ROLES.map((role) => [
        role,
        principalOf(byPrefix(roles, API_CALLER_ROLE_IDS[role], 'role').arn, `local-${role}`),
      ]),
    ) as Record<(typeof API_CALLER_ROLES)[number], Principal>;
    const server = await startLocalApiServer({
      api,
      accountId: account.accountId,
      auth: { tokens: apiTokens, principals, authorizer, region: account.region },
      invoke,
      port: options.port,
    });
    stops.push(() => server.close());

    // The scheduled rule that runs the reconciler.
    for (const rule of deployment.rules()) {
      const every = options.reconcileEverySeconds ?? rateSeconds(rule.scheduleExpression);
      if (!rule.enabled || !every) continue;
      const timer = setInterval(() => {
        for (const { arn, input } of rule.targets) {
          invoke(arn, input ?? scheduledEvent(account, rule.logicalId)).catch((e: unknown) =>
            logger.error('scheduled rule target failed', {
              rule: rule.logicalId,
              error: (e as Error).message,
            }),
          );
        }
      }, every * 1000);
      timer.unref();
      stops.push(() => clearInterval(timer));
    }

    const outputs = deployment.outputs();
    const stack: EmbeddedStack = {
      url: server.url,
      dataDir,
      apiTokens,
      apiTokensFile,
      deployment,
      account,
      tableName: outputs.TableName ?? '',
      imageBucket: outputs.ImageBucketName ?? '',
      commandOutputBucket: outputs.CommandOutputBucketName ?? '',
      endpoints,
      stepFunctions,
      ssm,
      scheduler,
      hosts,
      functions,
      credentialsFor,
      invoke: (prefix, event) => invoke(byPrefix(deployment.functions(), prefix, 'function').arn, event),
      bootstrapJobs: [],
      stop: stopAll,
    };
    if (options.bootstrap !== false) {
      stack.bootstrapJobs = await bootstrap(stack, options.registerHosts ?? options.hostCount ?? 2);
    }
    return stack;
  } catch (e) {
    await stopAll();
    throw e;
  }
}

/** A function's environment: the template's, what Lambda adds, and the local endpoints. */
function functionEnvironment(
  fn: LocalFunction,
  creds: LocalAwsCredentials,
  account: LocalAccount,
  endpoints: { dynamoProxy: string; s3Proxy: string; sfn: string; ssm: string; scheduler: string },
  options: EmbeddedStackOptions,
): Record<string, string> {
  return {
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    TZ: 'UTC',
    LANG: 'en_US.UTF-8',
    ...fn.environment,
    ...(options.fetchAllowlist !== undefined && EnvName.FetchAllowlist in fn.environment
      ? { [EnvName.FetchAllowlist]: options.fetchAllowlist }
      : {}),
    // Local commands end in milliseconds, not SSM's seconds: poll them faster than on AWS.
    [EnvName.HostPollMs]: '50',
    [EnvName.HostMaxPollMs]: '200',
    ...options.functionEnvironment,
    AWS_REGION: account.region,
    AWS_DEFAULT_REGION: account.region,
    AWS_ACCESS_KEY_ID: creds.accessKeyId,
    AWS_SECRET_ACCESS_KEY: creds.secretAccessKey,
    AWS_SESSION_TOKEN: creds.sessionToken,
    AWS_LAMBDA_FUNCTION_NAME: fn.name,
    AWS_LAMBDA_FUNCTION_VERSION: '$LATEST',
    AWS_LAMBDA_FUNCTION_MEMORY_SIZE: String(fn.memoryMb),
    AWS_LAMBDA_LOG_GROUP_NAME: `/aws/lambda/${fn.name}`,
    AWS_LAMBDA_LOG_STREAM_NAME: 'local',
    AWS_EXECUTION_ENV: 'AWS_Lambda_nodejs',
    LAMBDA_TASK_ROOT: fn.codeDir,
    STRATA_LOCAL_FUNCTION_ARN: fn.arn,
    AWS_ENDPOINT_URL_DYNAMODB: endpoints.dynamoProxy,
    AWS_ENDPOINT_URL_S3: endpoints.s3Proxy,
    AWS_ENDPOINT_URL_SFN: endpoints.sfn,
    AWS_ENDPOINT_URL_SSM: endpoints.ssm,
    AWS_ENDPOINT_URL_SCHEDULER: endpoints.scheduler,
  };
}

/** Seconds of a `rate(N unit)` expression; undefined for anything else. */
function rateSeconds(expression: string | undefined): number | undefined {
  const m = /^rate\((\d+) (minute|minutes|hour|hours|day|days)\)$/.exec(expression ?? '');
  if (!m) return undefined;
  const unit = m[2]!.startsWith('minute') ? 60 : m[2]!.startsWith('hour') ? 3600 : 86_400;
  return Number(m[1]) * unit;
}

/** What EventBridge hands a rule's Lambda target. */
function scheduledEvent(account: LocalAccount, rule: string): Record<string, unknown> {
  return {
    version: '0',
    id: randomBytes(16).toString('hex'),
    'detail-type': 'Scheduled Event',
    source: 'aws.events',
    account: account.accountId,
    time: new Date().toISOString(),
    region: account.region,
    resources: [`arn:aws:events:${account.region}:${account.accountId}:rule/${rule}`],
    detail: {},
  };
}

/** A call to the stack's own API, as an operator makes it (bootstrap only). */
interface ApiAnswer {
  status: number;
  // biome-ignore lint/suspicious/noExplicitAny: the API's JSON, read field by field right here
  body: any;
}

async function api(
  stack: Pick<EmbeddedStack, 'url' | 'apiTokens'>,
  method: string,
  route: string,
  body?: unknown,
): Promise<ApiAnswer> {
  const res = await fetch(`${stack.url}${route}`, {
    method,
    // The bootstrap adds hosts and stores as an operator would.
    headers: { 'content-type': 'application/json', authorization: `Bearer ${stack.apiTokens.operator}` },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  const text = await res.text();
  const parsed = text ? JSON.parse(text) : undefined;
  if (!res.ok && res.status !== 409) throw new Error(`${method} ${route}: ${res.status} ${text}`);
  return { status: res.status, body: parsed };
}

async function finished(
  stack: Pick<EmbeddedStack, 'url' | 'apiTokens'>,
  jobId: string,
  timeoutMs = 120_000,
): Promise<Job> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const { body } = await api(stack, 'GET', `/jobs/${jobId}`);
    if (body.state === 'succeeded' || body.state === 'failed') return body as Job;
    if (Date.now() > until) throw new Error(`job ${jobId} still ${body.state} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * First start: the local hosts registered in one cluster, an nfs primary store (a directory standing
 * in for the share every host mounts) and an s3 image store, all through the API as an operator
 * would. Later starts find them and do nothing.
 */
async function bootstrap(stack: EmbeddedStack, hostCount: number): Promise<Job[]> {
  const jobs: string[] = [];
  for (const host of stack.hosts.slice(0, hostCount)) {
    const { status, body } = await api(stack, 'POST', '/hosts', {
      name: host.name,
      zoneId: LOCAL_ZONE,
      clusterId: LOCAL_CLUSTER,
      instanceId: host.instanceId,
      hypervisor: 'kvm',
    });
    if (status === 201 && body.probeJobId) jobs.push(body.probeJobId);
  }
  const { body: existing } = await api(stack, 'GET', '/stores?limit=1');
  if (existing.items.length === 0) {
    const share = path.join(stack.dataDir, 'primary', 'nfs-1');
    await mkdir(share, { recursive: true });
    const fs = await statfs(share);
    const primary = await api(stack, 'POST', '/stores', {
      name: 'nfs-primary-1',
      provider: 'nfs',
      role: 'primary',
      scope: { type: 'cluster', zoneId: LOCAL_ZONE, clusterId: LOCAL_CLUSTER },
      capacityBytes: fs.blocks * fs.bsize,
      details: { server: '127.0.0.1', export: '/nfs-1', mountPath: share },
    });
    jobs.push(primary.body.job.id);
    const image = await api(stack, 'POST', '/stores', {
      name: 'images-1',
      provider: 's3',
      role: 'image',
      scope: { type: 'zone', zoneId: LOCAL_ZONE },
      details: { bucket: stack.imageBucket, prefix: 'images/' },
    });
    jobs.push(image.body.job.id);
  }
  return Promise.all(jobs.map((id) => finished(stack, id)));
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
