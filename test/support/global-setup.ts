/**
 * Starts the emulators the `integration` jest project shares: one DynamoDB Local (in memory) and one
 * s3rver (in a temp dir). Starting them once per run instead of per file keeps the suite fast; tests
 * isolate themselves with fresh tables and buckets (see ./integration.ts).
 *
 * Jest runs this in its parent process before it creates the workers, and both the workers and the
 * in-band runner see the parent's environment, so `process.env` is how the endpoints reach the tests
 * (checked by test/integration/local-harness.test.ts).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { require as tsxRequire } from 'tsx/cjs/api';
import type * as EnvNames from '../../functions/env-names.js';
import type * as CloudAssembly from '../../infra/local/assembly/cloud-assembly.js';
import type * as DynamoLocal from '../../infra/local/dynamodb-local.js';
import type * as S3Emulator from '../../infra/local/s3-emulator.js';

// Jest loads this file with plain Node resolution (only test files get jest's resolver), which does not
// map our `.js` import specifiers to `.ts` sources; tsx's scoped require does, without a global hook.
const load = <T>(file: string): T => tsxRequire(file, __filename) as T;

/** What global-teardown needs; globalSetup and globalTeardown share the parent's globalThis. */
export interface IntegrationEmulators {
  stop(): Promise<void>;
}

/** Also spelled out in global-teardown.ts, which cannot import this file (see `load` below). */
export const EMULATORS_KEY = '__strataIntegrationEmulators';

export default async function globalSetup(): Promise<void> {
  const { EnvName } = load<typeof EnvNames>('../../functions/env-names.ts');
  const { startDynamoLocal } = load<typeof DynamoLocal>('../../infra/local/dynamodb-local.ts');
  const { startS3Emulator } = load<typeof S3Emulator>('../../infra/local/s3-emulator.ts');
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = 'true';
  // Every test stack runs the synthesized assembly: synthesize it once, here, when the sources changed.
  const { ensureAssembly } = load<typeof CloudAssembly>('../../infra/local/assembly/cloud-assembly.ts');
  await ensureAssembly();
  const s3Dir = await mkdtemp(path.join(os.tmpdir(), 'strata-it-s3-'));
  const [dynamo, s3] = await Promise.allSettled([startDynamoLocal(), startS3Emulator({ dir: s3Dir })]);
  const stop = async () => {
    await Promise.allSettled([
      dynamo.status === 'fulfilled' ? dynamo.value.stop() : undefined,
      s3.status === 'fulfilled' ? s3.value.stop() : undefined,
    ]);
    await rm(s3Dir, { recursive: true, force: true });
  };
  if (dynamo.status === 'rejected' || s3.status === 'rejected') {
    // A half-started pair would keep jest's parent process alive forever (the JVM is its child).
    await stop();
    throw dynamo.status === 'rejected' ? dynamo.reason : (s3 as PromiseRejectedResult).reason;
  }
  process.env[EnvName.DynamoEndpoint] = dynamo.value.endpoint;
  process.env[EnvName.S3Endpoint] = s3.value.endpoint;
  const emulators: IntegrationEmulators = { stop };
  (globalThis as Record<string, unknown>)[EMULATORS_KEY] = emulators;
}
