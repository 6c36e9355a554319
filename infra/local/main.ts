/**
 * `npm start`: brings up the embedded stack on 127.0.0.1:8787 (STRATA_PORT) with its data under
 * .strata/ (STRATA_DATA_DIR), shows what it set up, and runs until Ctrl-C.
 */
import path from 'node:path';
import { createJsonLogger } from '../../drivers/sdk/logger.js';
import type { DataStore, Host, Job } from '../../functions/core/model.js';
import { startEmbeddedStack } from './embedded-stack.js';

process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

function gib(bytes: number): string {
  return `${(bytes / 2 ** 30).toFixed(1)} GiB`;
}

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) => `  ${r.map((c, i) => c.padEnd(widths[i]!)).join('  ')}`.trimEnd()).join('\n');
}

async function main(): Promise<void> {
  const port = Number.parseInt(process.env.STRATA_PORT ?? '8787', 10);
  if (!Number.isInteger(port) || port < 0 || port > 65535)
    throw new Error(`STRATA_PORT is not a port: ${process.env.STRATA_PORT}`);
  const dataDir = path.resolve(process.env.STRATA_DATA_DIR ?? '.strata');
  const logger = createJsonLogger({ minLevel: process.env.STRATA_LOG_LEVEL === 'debug' ? 'debug' : 'warn' });

  console.log(`Starting Strata (data in ${dataDir}) …`);
  const started = Date.now();
  const stack = await startEmbeddedStack({
    dataDir,
    port,
    logger,
    ...(process.env.STRATA_FETCH_ALLOWLIST !== undefined
      ? { fetchAllowlist: process.env.STRATA_FETCH_ALLOWLIST }
      : {}),
  });

  let stopping = false;
  const shutdown = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    console.log(`\n${signal}: stopping Strata …`);
    await stack.stop();
    console.log('Stopped cleanly.');
    process.exit(0);
  };
  process.on('SIGINT', () => void shutdown('SIGINT'));
  process.on('SIGTERM', () => void shutdown('SIGTERM'));

  const get = async <T>(route: string): Promise<T> =>
    (await (
      await fetch(`${stack.url}${route}`, {
        headers: { authorization: `Bearer ${stack.apiTokens.readOnly}` },
      })
    ).json()) as T;
  const hosts = (await get<{ items: Host[] }>('/hosts?limit=100')).items;
  const stores = (await get<{ items: DataStore[] }>('/stores?limit=100')).items;
  const policies = stack.scheduler.names().length;

  if (stack.bootstrapJobs.length) {
    console.log(
      '\nFirst start: registered (and probed) the default hosts and added the default stores through real workflows:',
    );
    console.log(
      table([
        ['JOB', 'KIND', 'STATE', 'RESULT'],
        ...stack.bootstrapJobs.map((j: Job) => [
          j.id,
          j.kind,
          j.state,
          j.error
            ? j.error.message
            : j.kind === 'host.probe'
              ? `build ${String(j.result?.build ?? '?').slice(0, 12)}, ready ${String(j.result?.ready)}`
              : JSON.stringify(j.result?.attachedHosts ?? []),
        ]),
      ]),
    );
  }
  console.log('\nHosts:');
  console.log(
    table([
      ['ID', 'ZONE/CLUSTER', 'STATUS', 'ATTACHED STORES', 'RUNTIME'],
      ...hosts.map((h) => [
        h.id,
        `${h.zoneId}/${h.clusterId}`,
        h.status,
        String(h.attachedStoreIds.length),
        h.runtime
          ? `build ${h.runtime.build.slice(0, 12)}${h.runtime.current ? '' : ' (upgrade!)'}`
          : 'not probed',
      ]),
    ]),
  );
  console.log('\nData stores:');
  console.log(
    table([
      ['ID', 'NAME', 'PROVIDER', 'ROLE', 'STATUS', 'CAPACITY'],
      ...stores.map((s) => [s.id, s.name, s.provider, s.role, s.status, gib(s.capacityBytes)]),
    ]),
  );
  const cli = 'node bin/strata.js';
  // The CLI finds the tokens in the default data directory by itself; elsewhere it is told where.
  const env = [
    port === 8787 ? '' : `STRATA_PORT=${new URL(stack.url).port} `,
    dataDir === path.resolve('.strata') ? '' : `STRATA_DATA_DIR=${dataDir} `,
  ].join('');
  console.log(`
Strata is up in ${((Date.now() - started) / 1000).toFixed(1)} s.
  API        ${stack.url}  (OpenAPI at ${stack.url}/openapi.json)
  Assembly   ${stack.deployment.assembly.dir} (stack ${stack.deployment.stackName}, account ${stack.account.accountId}, ${stack.account.region})
  DynamoDB   ${stack.endpoints.dynamoProxy} (IAM-checked, in front of DynamoDB Local at ${stack.endpoints.dynamo})
  S3         ${stack.endpoints.s3Proxy} (IAM-checked, in front of s3rver, files under ${path.join(dataDir, 's3')})
  Step Fns   ${stack.endpoints.sfn}   SSM ${stack.endpoints.ssm}   Scheduler ${stack.endpoints.scheduler}
  Functions  ${stack.functions.size}, logs under ${path.join(dataDir, 'logs')}
  API tokens ${stack.apiTokensFile} (mode 0600, new on every start): one bearer token per caller
             role (readOnly, operator, admin). The CLI reads it from there as admin (STRATA_API_ROLE
             picks another role, STRATA_API_TOKEN overrides); other clients send
             Authorization: Bearer <token>. Without one the API answers 401.
  Schedules  ${policies} snapshot ${policies === 1 ? 'policy' : 'policies'} in the local EventBridge Scheduler

Try, in another terminal:
  ${env}${cli} hosts list
  ${env}${cli} stores list
  ${env}${cli} stores maintain <store-id>            # watch the maintenance workflow
  ${env}${cli} stores cancel-maintenance <store-id>
  ${env}${cli} jobs list
  ${env}${cli} snapshot-policies list

Press Ctrl-C to stop.`);
}

main().catch((e: unknown) => {
  console.error(`Strata could not start: ${(e as Error).message}`);
  process.exit(1);
});
