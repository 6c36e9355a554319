/**
 * Helpers for tests of the `integration` jest project. The emulators are shared by the whole run
 * (see ./global-setup.ts); each test gets its own table, bucket and directories, so files can run in
 * parallel without seeing each other's data. Everything created here is cleaned up in an `afterAll`
 * registered on import, so tests cannot leak sockets that would keep jest from exiting.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { DynamoDBDocumentClient } from '@aws-sdk/lib-dynamodb';
import { EnvName } from '../../functions/env-names.js';
import { ensureTable, localDynamoClientConfig } from '../../infra/local/dynamodb-local.js';
import { localS3ClientConfig } from '../../infra/local/s3-emulator.js';

const cleanups: (() => Promise<unknown> | unknown)[] = [];

// Registered when a test file imports this module (hooks cannot be added from inside a test), so it
// sits in the file's root block: hooks inside the file's describe blocks run before it, but root-level
// afterAll hooks declared in the file run after it (jest-circus keeps declaration order). Stop what
// uses these dirs and clients in a describe-level hook.
afterAll(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

function onCleanup(fn: () => Promise<unknown> | unknown): void {
  cleanups.push(fn);
}

/** The shared emulators' endpoints; a clear error when the test runs outside the integration project. */
export function integrationEndpoints(): { dynamo: string; s3: string } {
  const dynamo = process.env[EnvName.DynamoEndpoint];
  const s3 = process.env[EnvName.S3Endpoint];
  if (!dynamo || !s3) {
    throw new Error(
      `${EnvName.DynamoEndpoint} / ${EnvName.S3Endpoint} are not set: run integration tests with ` +
        '`jest --selectProjects integration` so that test/support/global-setup.ts starts the emulators',
    );
  }
  return { dynamo, s3 };
}

/** A name no other test in this run uses (lowercase, valid for tables and buckets). */
export function uniqueName(prefix: string): string {
  return `${prefix}-${process.pid}-${Date.now().toString(36)}-${randomBytes(3).toString('hex')}`;
}

/** A new table with Strata's schema, and clients for it. */
export async function freshTable(
  prefix = 'strata-it',
): Promise<{ client: DynamoDBClient; doc: DynamoDBDocumentClient; tableName: string }> {
  const client = new DynamoDBClient(localDynamoClientConfig(integrationEndpoints().dynamo));
  onCleanup(() => client.destroy());
  const tableName = uniqueName(prefix);
  await ensureTable(client, tableName);
  // Same marshalling as the repository adapter, so tests read and write items the way it does.
  const doc = DynamoDBDocumentClient.from(client, { marshallOptions: { removeUndefinedValues: true } });
  return { client, doc, tableName };
}

/** A new, empty bucket in the shared S3 emulator, and a client configured for the emulator. */
export async function freshBucket(prefix = 'strata-it'): Promise<{ s3: S3Client; bucket: string }> {
  const s3 = new S3Client(localS3ClientConfig(integrationEndpoints().s3));
  onCleanup(() => s3.destroy());
  const bucket = uniqueName(prefix);
  await s3.send(new CreateBucketCommand({ Bucket: bucket }));
  return { s3, bucket };
}

/** A new directory under the OS temp dir, removed after the file's tests. */
export async function tempDir(prefix = 'strata-it-'): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), prefix));
  onCleanup(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/**
 * Polls `predicate` until it returns something truthy and returns that. For state that settles
 * asynchronously (a child process, a workflow); prefer awaiting a promise when there is one.
 */
export async function waitUntil<T>(
  predicate: () => T | Promise<T>,
  timeoutMs = 10_000,
  intervalMs = 25,
): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const value = await predicate();
      if (value) return value as NonNullable<T>;
    } catch (error) {
      lastError = error;
    }
    if (Date.now() > deadline) {
      const why = lastError instanceof Error ? ` (last error: ${lastError.message})` : '';
      throw new Error(`condition not met within ${timeoutMs} ms${why}`);
    }
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}
