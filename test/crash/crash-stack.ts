/**
 * The embedded stack the crash matrix runs on: the synthesized assembly on its own DynamoDB Local and
 * s3rver, with the fault controller wired into every local endpoint, container and host agent. Also
 * what a case needs around it: the API over real HTTP, jobs, a raw view of the table, and the
 * "time travel" that makes a dead flow's leases expire now instead of in an hour.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { DynamoDBDocumentClient, PutCommand, paginateScan, UpdateCommand } from '@aws-sdk/lib-dynamodb';
import { EnvName } from '../../functions/env-names';
import { localDynamoClientConfig } from '../../infra/local/dynamodb-local';
import { type EmbeddedStack, startEmbeddedStack } from '../../infra/local/embedded-stack';
import { LocalFaults } from '../../infra/local/faults';

export interface ApiAnswer {
  status: number;
  body: any;
}

export type Item = Record<string, unknown>;

export interface CrashStack {
  stack: EmbeddedStack;
  faults: LocalFaults;
  dataDir: string;
  call(method: string, route: string, body?: unknown): Promise<ApiAnswer>;
  /** Waits for a job to end; the job, or undefined when it is still running after `ms`. */
  waitForJob(jobId: string, ms?: number): Promise<Item | undefined>;
  /** Calls an asynchronous route and waits for its job (which must exist). */
  run(method: string, route: string, body?: unknown): Promise<{ answer: ApiAnswer; job?: Item }>;
  /**
   * Starts a flow's execution as EventBridge Scheduler does for a schedule (the snapshot-policy
   * flow has no API route); resolves with the execution's end.
   */
  start(flow: string, input: unknown): Promise<{ executionArn: string; status: string }>;
  /** Every item of the table (the stack is small: a scan is the honest view). */
  items(): Promise<Item[]>;
  /** Replaces an item as it is (a repair by hand: leases and lease index attributes dropped). */
  put(item: Item, key: { pk: unknown; sk: unknown }): Promise<void>;
  /** Moves every lease's expiry into the past, as if its holder had been silent for hours. */
  expireLeases(): Promise<number>;
  /** Executions still running, across every state machine. */
  runningExecutions(): string[];
  hostId(n: number): string;
  stop(): Promise<void>;
}

export async function startCrashStack(
  options: { fetchAllowlist?: string; hostWaitBudgetMs?: number } = {},
): Promise<CrashStack> {
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'strata-crash-'));
  const faults = new LocalFaults();
  const stack = await startEmbeddedStack({
    dataDir,
    port: 0,
    bootstrap: true,
    hostCount: 2,
    reconcileEverySeconds: 0,
    waitTimeScale: 0.01,
    ...(options.fetchAllowlist ? { fetchAllowlist: options.fetchAllowlist } : {}),
    functionEnvironment: {
      [EnvName.HostPollMs]: '20',
      [EnvName.HostMaxPollMs]: '100',
      // Long enough that each host step runs in one invocation: the points of a clean run are the
      // points of every run, so each case reaches the one it is for.
      [EnvName.HostWaitBudgetMs]: String(options.hostWaitBudgetMs ?? 10_000),
    },
    faults,
  });
  const dynamo = new DynamoDBClient(localDynamoClientConfig(stack.endpoints.dynamo));
  const doc = DynamoDBDocumentClient.from(dynamo, { marshallOptions: { removeUndefinedValues: true } });
  const call: CrashStack['call'] = async (method, route, body) => {
    const res = await fetch(`${stack.url}${route}`, {
      method,
      headers: { 'content-type': 'application/json', authorization: `Bearer ${stack.apiTokens.admin}` },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    let parsed: unknown = text;
    try {
      parsed = text ? JSON.parse(text) : undefined;
    } catch {
      // not JSON (a gateway error page): kept as text
    }
    return { status: res.status, body: parsed };
  };
  const waitForJob: CrashStack['waitForJob'] = async (jobId, ms = 60_000) => {
    const until = Date.now() + ms;
    for (;;) {
      const { status, body } = await call('GET', `/jobs/${jobId}`);
      if (status === 200 && (body.state === 'succeeded' || body.state === 'failed')) return body;
      if (Date.now() > until) return undefined;
      await sleep(50);
    }
  };
  const items: CrashStack['items'] = async () => {
    const out: Item[] = [];
    for await (const page of paginateScan(
      { client: doc },
      { TableName: stack.tableName, ConsistentRead: true },
    )) {
      out.push(...((page.Items ?? []) as Item[]));
    }
    return out;
  };
  return {
    stack,
    faults,
    dataDir,
    call,
    waitForJob,
    async run(method, route, body) {
      const answer = await call(method, route, body);
      const jobId = answer.body?.job?.id as string | undefined;
      if (answer.status !== 202 || !jobId) return { answer };
      const job = await waitForJob(jobId, 120_000);
      return job ? { answer, job } : { answer };
    },
    items,
    async start(flow, input) {
      const machine = stack.deployment.stateMachines().find((m) => m.name.endsWith(`-${flow}`));
      if (!machine) throw new Error(`no state machine for ${flow}`);
      const runner = stack.stepFunctions.runner;
      const { executionId: executionArn } = await runner.start(machine.arn, undefined, input);
      const until = Date.now() + 120_000;
      for (;;) {
        const { status } = runner.describe(executionArn);
        if (status !== 'RUNNING' || Date.now() > until) return { executionArn, status };
        await sleep(50);
      }
    },
    async put(item, key) {
      const { lease: _l, leasePk: _p, leaseExpiresAt: _e, ...rest } = item;
      await doc.send(new PutCommand({ TableName: stack.tableName, Item: { ...rest, ...key } }));
    },
    async expireLeases() {
      const past = new Date(Date.now() - 3_600_000).toISOString();
      let n = 0;
      for (const item of await items()) {
        if (typeof item.leaseExpiresAt !== 'string') continue;
        try {
          await doc.send(
            new UpdateCommand({
              TableName: stack.tableName,
              Key: { pk: item.pk, sk: item.sk },
              ConditionExpression: 'leaseExpiresAt = :was',
              UpdateExpression: 'SET #l.#e = :p, leaseExpiresAt = :p',
              ExpressionAttributeNames: { '#l': 'lease', '#e': 'expiresAt' },
              ExpressionAttributeValues: { ':p': past, ':was': item.leaseExpiresAt },
            }),
          );
          n += 1;
        } catch (e) {
          // Moved on (released, renewed) since the scan: nothing to expire.
          if ((e as Error).name !== 'ConditionalCheckFailedException') throw e;
        }
      }
      return n;
    },
    runningExecutions: () => stack.stepFunctions.runner.running(),
    hostId(n) {
      const host = stack.hosts[n - 1];
      if (!host) throw new Error(`no local host ${n}`);
      return `host-${host.instanceId}`;
    },
    async stop() {
      dynamo.destroy();
      await stack.stop();
      await rm(dataDir, { recursive: true, force: true, maxRetries: 5, retryDelay: 200 });
    },
  };
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
