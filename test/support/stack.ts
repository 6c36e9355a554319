/**
 * An embedded stack for integration tests: the synthesized assembly (bundled functions, state
 * machine definitions, API routes, SSM documents, IAM policies) run on the emulators the
 * integration project's global setup started, with its own account, table, buckets and dirs.
 */
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { S3Client } from '@aws-sdk/client-s3';
import { DynamoDBDocumentClient } from '@aws-sdk/lib-dynamodb';
import { DynamoRepository } from '../../functions/adapters/aws/dynamo-repository';
import type { Repository } from '../../functions/core/ports';
import { EnvName } from '../../functions/env-names';
import { localDynamoClientConfig } from '../../infra/local/dynamodb-local';
import {
  type EmbeddedStack,
  type EmbeddedStackOptions,
  startEmbeddedStack,
} from '../../infra/local/embedded-stack';
import { localS3ClientConfig } from '../../infra/local/s3-emulator';
import { integrationEndpoints } from './integration';

export interface TestStack {
  stack: EmbeddedStack;
  url: string;
  dataDir: string;
  /** The default image store's bucket in the S3 emulator, and a client for it (direct, not IAM-checked). */
  imageBucket: string;
  s3: S3Client;
  /** The stack's table, read and written directly (as an administrator would, not through a role). */
  repo: Repository;
  /** JSON over real HTTP, as the admin caller role by default; returns status, headers and parsed body. */
  call(
    method: string,
    route: string,
    body?: unknown,
    headers?: Record<string, string>,
  ): Promise<{ status: number; headers: Headers; body: any }>;
  /** Polls a job until it finishes. */
  waitForJob(jobId: string, timeoutMs?: number): Promise<any>;
  /**
   * Calls an asynchronous route and waits for its job: the final job, or the error answer when the
   * route refused (no job).
   */
  run(method: string, route: string, body?: unknown): Promise<{ status: number; job?: any; body: any }>;
  /** The id Strata gives local host n (1-based): `host-<its managed-instance id>`. */
  hostId(n: number): string;
  /** A new directory acting as an NFS share every local host mounts. */
  newShare(name: string): Promise<string>;
}

export async function startTestStack(
  options: {
    bootstrap?: boolean;
    hostCount?: number;
    /** How many of the hosts the bootstrap registers (the rest can join in a test). */
    registerHosts?: number;
    fetchAllowlist?: string;
    /** Reach the S3 emulator through this URL instead (e.g. a fault-injecting proxy). */
    s3Endpoint?: string;
    /** Resumable steps hand over to a retry after this long (exercises resumption). */
    hostWaitBudgetMs?: number;
    /** Test-only policy narrowing (see EmbeddedStackOptions.narrowPolicies). */
    narrowPolicies?: EmbeddedStackOptions['narrowPolicies'];
    schedulerClock?: EmbeddedStackOptions['schedulerClock'];
    /** More function environment (EnvName knobs), on top of the polling knobs set here. */
    functionEnvironment?: EmbeddedStackOptions['functionEnvironment'];
  } = {},
): Promise<TestStack> {
  const endpoints = integrationEndpoints();
  // Not tempDir(): its cleanup may run before the stack has stopped its host processes.
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'strata-stack-'));
  const stack = await startEmbeddedStack({
    dataDir,
    port: 0,
    dynamoEndpoint: endpoints.dynamo,
    s3Endpoint: options.s3Endpoint ?? endpoints.s3,
    ...(options.fetchAllowlist !== undefined ? { fetchAllowlist: options.fetchAllowlist } : {}),
    bootstrap: options.bootstrap ?? true,
    hostCount: options.hostCount ?? 2,
    ...(options.registerHosts !== undefined ? { registerHosts: options.registerHosts } : {}),
    reconcileEverySeconds: 0,
    waitTimeScale: 0.01,
    functionEnvironment: {
      [EnvName.HostPollMs]: '20',
      [EnvName.HostMaxPollMs]: '100',
      // Short, so host steps suspend and their loops turn many times in every flow.
      [EnvName.HostWaitBudgetMs]: String(options.hostWaitBudgetMs ?? 300),
      ...options.functionEnvironment,
    },
    ...(options.narrowPolicies ? { narrowPolicies: options.narrowPolicies } : {}),
    ...(options.schedulerClock ? { schedulerClock: options.schedulerClock } : {}),
  });
  const imageBucket = stack.imageBucket;
  const call: TestStack['call'] = async (method, route, body, headers = {}) => {
    const res = await fetch(`${stack.url}${route}`, {
      method,
      // As the admin caller role unless a test sends its own Authorization (t.stack.apiTokens).
      headers: {
        'content-type': 'application/json',
        authorization: `Bearer ${stack.apiTokens.admin}`,
        ...headers,
      },
      body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
    });
    const text = await res.text();
    return { status: res.status, headers: res.headers, body: text ? JSON.parse(text) : undefined };
  };
  const s3 = new S3Client(localS3ClientConfig(endpoints.s3));
  const dynamo = new DynamoDBClient(localDynamoClientConfig(endpoints.dynamo));
  const repo = new DynamoRepository({
    tableName: stack.tableName,
    client: DynamoDBDocumentClient.from(dynamo, { marshallOptions: { removeUndefinedValues: true } }),
  });
  const stop = stack.stop;
  stack.stop = async () => {
    s3.destroy();
    dynamo.destroy();
    await stop();
    await rm(dataDir, { recursive: true, force: true, maxRetries: 5, retryDelay: 200 });
  };
  const waitForJob: TestStack['waitForJob'] = async (jobId, timeoutMs = 30_000) => {
    const until = Date.now() + timeoutMs;
    for (;;) {
      const { body } = await call('GET', `/jobs/${jobId}`);
      if (body.state === 'succeeded' || body.state === 'failed') return body;
      if (Date.now() > until)
        throw new Error(
          `job ${jobId} still ${body.state} after ${timeoutMs} ms: ${JSON.stringify(body).slice(0, 3000)}`,
        );
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  return {
    stack,
    url: stack.url,
    dataDir,
    imageBucket,
    s3,
    repo,
    call,
    waitForJob,
    hostId(n) {
      const host = stack.hosts[n - 1];
      if (!host) throw new Error(`the stack has no local host ${n}`);
      return `host-${host.instanceId}`;
    },
    async run(method, route, body) {
      const answer = await call(method, route, body);
      if (answer.status !== 202) return { status: answer.status, body: answer.body };
      const job = await waitForJob(answer.body.job.id, 60_000);
      return { status: answer.status, job, body: answer.body };
    },
    async newShare(name) {
      const dir = path.join(dataDir, 'shares', name);
      await mkdir(dir, { recursive: true });
      return dir;
    },
  };
}
