/**
 * An embedded stack for integration tests: the real handlers, workflows and host processes, on the
 * emulators the integration project's global setup started, with its own table, bucket and dirs.
 */
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { S3Client } from '@aws-sdk/client-s3';
import { type EmbeddedStack, startEmbeddedStack } from '../../infra/local/embedded-stack';
import { localS3ClientConfig } from '../../infra/local/s3-emulator';
import { integrationEndpoints, uniqueName } from './integration';

export interface TestStack {
  stack: EmbeddedStack;
  url: string;
  dataDir: string;
  /** The default image store's bucket in the S3 emulator, and a client for it. */
  imageBucket: string;
  s3: S3Client;
  /** JSON over real HTTP; returns status, headers and parsed body. */
  call(
    method: string,
    route: string,
    body?: unknown,
    headers?: Record<string, string>,
  ): Promise<{ status: number; headers: Headers; body: any }>;
  /** Polls a job until it finishes. */
  waitForJob(jobId: string, timeoutMs?: number): Promise<any>;
  /** A new directory acting as an NFS share every local host mounts. */
  newShare(name: string): Promise<string>;
}

export async function startTestStack(
  options: {
    bootstrap?: boolean;
    hostCount?: number;
    fetchAllowlist?: string;
    /** Reach the S3 emulator through this URL instead (e.g. a fault-injecting proxy). */
    s3Endpoint?: string;
    /** Resumable steps hand over to a retry after this long (exercises resumption). */
    hostWaitBudgetMs?: number;
  } = {},
): Promise<TestStack> {
  const endpoints = integrationEndpoints();
  // Not tempDir(): its cleanup may run before the stack has stopped its host processes.
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'strata-stack-'));
  const imageBucket = uniqueName('images');
  const stack = await startEmbeddedStack({
    dataDir,
    port: 0,
    dynamoEndpoint: endpoints.dynamo,
    s3Endpoint: options.s3Endpoint ?? endpoints.s3,
    tableName: uniqueName('stack'),
    imageBucket,
    fetchAllowlist: options.fetchAllowlist,
    bootstrap: options.bootstrap ?? true,
    hostCount: options.hostCount ?? 2,
    reconcileEverySeconds: 0,
    waitTimeScale: 0.01,
    hostPollMs: 20,
    ...(options.hostWaitBudgetMs !== undefined ? { hostWaitBudgetMs: options.hostWaitBudgetMs } : {}),
  });
  const call: TestStack['call'] = async (method, route, body, headers = {}) => {
    const res = await fetch(`${stack.url}${route}`, {
      method,
      headers: { 'content-type': 'application/json', ...headers },
      body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
    });
    const text = await res.text();
    return { status: res.status, headers: res.headers, body: text ? JSON.parse(text) : undefined };
  };
  const s3 = new S3Client(localS3ClientConfig(endpoints.s3));
  const stop = stack.stop;
  stack.stop = async () => {
    s3.destroy();
    await stop();
    await rm(dataDir, { recursive: true, force: true });
  };
  return {
    stack,
    url: stack.url,
    dataDir,
    imageBucket,
    s3,
    call,
    async waitForJob(jobId, timeoutMs = 30_000) {
      const until = Date.now() + timeoutMs;
      for (;;) {
        const { body } = await call('GET', `/jobs/${jobId}`);
        if (body.state === 'succeeded' || body.state === 'failed') return body;
        if (Date.now() > until) throw new Error(`job ${jobId} still ${body.state} after ${timeoutMs} ms`);
        await new Promise((r) => setTimeout(r, 50));
      }
    },
    async newShare(name) {
      const dir = path.join(dataDir, 'shares', name);
      await mkdir(dir, { recursive: true });
      return dir;
    },
  };
}
