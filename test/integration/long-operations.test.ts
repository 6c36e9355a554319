/**
 * Long operations on the assembly-run stack: host waits live in the state machine, leases are
 * renewed while the work lives, and the reconciler recovers a dead flow once — after stopping its
 * execution and its host command — with the flow's own compensation giving back what it reserved.
 *
 * Every run of a host step here may wait on a host for 50 ms, far shorter than any host operation,
 * so every host step of these flows suspends and its loop turns (the stand-in for an operation that
 * outlives every Lambda limit). A host is frozen with SIGSTOP to make an operation hang.
 */
import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { UpdateCommand } from '@aws-sdk/lib-dynamodb';
import { itemKey } from '../../functions/adapters/aws/table-keys';
import type { EntityKey, Repository } from '../../functions/core/ports';
import { type ImageServer, startImageServer } from '../support/image-server';
import { tempDir } from '../support/integration';
import { startTestStack, type TestStack } from '../support/stack';

const exec = promisify(execFile);
const MiB = 2 ** 20;
let t: TestStack;
let server: ImageServer;

beforeAll(async () => {
  server = await startImageServer();
  t = await startTestStack({ hostWaitBudgetMs: 50, fetchAllowlist: '127.0.0.1' });
}, 90_000);

afterAll(async () => {
  for (const h of t?.stack.hosts ?? []) h.resume();
  await t?.stack.stop();
  await server?.close();
});

async function until<T>(what: string, probe: () => Promise<T | undefined>, ms = 60_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** How many times the execution entered each state. */
function visits(executionArn: string): Map<string, number> {
  const counts = new Map<string, number>();
  const events = t.stack.stepFunctions.runner.history(executionArn) as unknown as readonly {
    type: string;
    state?: { name: string };
  }[];
  for (const e of events) {
    if (e.type === 'StateEntered' && e.state) counts.set(e.state.name, (counts.get(e.state.name) ?? 0) + 1);
  }
  return counts;
}

/** Sets a lease's expiry, as if its holder had been silent for that long (time travel, not a write path). */
async function setLeaseExpiry(repo: Repository, key: EntityKey, at: Date) {
  const doc = (repo as unknown as { client: { send(c: unknown): Promise<unknown> } }).client;
  const tableName = (repo as unknown as { tableName: string }).tableName;
  const past = at.toISOString();
  await doc.send(
    new UpdateCommand({
      TableName: tableName,
      Key: itemKey(key),
      ConditionExpression: 'attribute_exists(pk)',
      UpdateExpression: 'SET #l.#e = :p, leaseExpiresAt = :p',
      ExpressionAttributeNames: { '#l': 'lease', '#e': 'expiresAt' },
      ExpressionAttributeValues: { ':p': past },
    }),
  );
}

async function reconcile(): Promise<{
  recovered: { job: string; to: string }[];
  deferred: { job: string }[];
}> {
  return (await t.stack.invoke('Reconciler', {})) as never;
}

describe('long operations', () => {
  it('a host step that outlives every run budget succeeds: it suspends, the state machine waits, one command per call', async () => {
    const pool = (await t.call('GET', '/stores?role=primary')).body.items[0];
    const created = await t.run('POST', '/volumes', { name: 'long', zoneId: 'zone-1', sizeBytes: 128 * MiB });
    expect(created.job?.state).toBe('succeeded');
    const volume = (await t.call('GET', `/volumes/${created.body.volume.id}`)).body;
    await exec('qemu-io', ['-c', 'write -P 0x5a 0 48M', path.join(pool.details.mountPath, volume.path)]);

    const taken = await t.call('POST', `/volumes/${volume.id}/snapshots`, { name: 'long', backup: true });
    expect(taken.status).toBe(202);
    const job = await t.waitForJob(taken.body.job.id, 120_000);
    expect(job.state).toBe('succeeded');
    expect((await t.call('GET', `/snapshots/${taken.body.snapshot.id}`)).body.status).toBe('BackedUp');

    // The backup's loops turned: its host steps ran more than once, waiting in between.
    const seen = visits(job.executionId);
    const waits = [...seen].filter(([name]) => name.endsWith('(wait)')).reduce((n, [, c]) => n + c, 0);
    expect(waits).toBeGreaterThan(1);
    // Each recorded call was sent once: every run after the first picked up the same command.
    const commands = Object.values(job.hostCommands ?? {}) as { commandId: string; attempt: number }[];
    expect(commands.length).toBeGreaterThan(0);
    expect(new Set(commands.map((c) => c.commandId)).size).toBe(commands.length);
    expect(commands.every((c) => c.attempt === 1)).toBe(true);
  }, 180_000);

  it('a live flow keeps its lease; a dead one is recovered once: execution stopped, host command ended, reservation given back', async () => {
    const pool = (await t.call('GET', '/stores?role=primary')).body.items[0];
    const created = await t.run('POST', '/volumes', {
      name: 'frozen',
      zoneId: 'zone-1',
      sizeBytes: 64 * MiB,
    });
    const volumeId = created.body.volume.id as string;
    const allocatedBefore = (await t.call('GET', `/stores/${pool.id}`)).body.allocatedBytes as number;

    // The host hangs mid-operation: the resize's command starts, frozen.
    for (const h of t.stack.hosts) h.pause();
    const resize = await t.call('POST', `/volumes/${volumeId}/resize`, { sizeBytes: 96 * MiB });
    expect(resize.status).toBe(202);
    const jobId = resize.body.job.id as string;
    await until('the resize command recorded', async () => {
      const job = (await t.call('GET', `/jobs/${jobId}`)).body;
      return Object.keys(job.hostCommands ?? {}).length > 0 ? job : undefined;
    });
    expect((await t.call('GET', `/stores/${pool.id}`)).body.allocatedBytes).toBe(allocatedBefore + 32 * MiB);

    // Alive: its lease is about to run out, but the next turn of the loop renews it, and the
    // reconciler leaves it alone even after the old expiry has passed.
    const volumeKey = { type: 'Volume' as const, id: volumeId };
    const soon = new Date(Date.now() + 2_000);
    await setLeaseExpiry(t.repo, volumeKey, soon);
    await until('a heartbeat', async () => {
      const at = (await t.repo.require(volumeKey)).lease!.expiresAt;
      return Date.parse(at) > Date.now() + 10 * 60_000 ? at : undefined;
    });
    await new Promise((r) => setTimeout(r, Math.max(0, soon.getTime() - Date.now()) + 200));
    for (let i = 0; i < 3; i++) expect((await reconcile()).recovered.map((r) => r.job)).not.toContain(jobId);
    expect((await t.repo.require(volumeKey)).status).toBe('Resizing');

    // Dead: the execution is lost (no more heartbeats), and its lease runs out.
    const executionId = (await t.call('GET', `/jobs/${jobId}`)).body.executionId as string;
    await t.stack.stepFunctions.runner.abort(executionId);
    // The step it was running outlives the execution (as on AWS) and renews the lease as it ends:
    // the lease runs out only after that.
    await until('the aborted step has ended', async () =>
      [...t.stack.functions.values()].every((f) => f.inFlight() === 0) ? true : undefined,
    );
    await setLeaseExpiry(t.repo, volumeKey, new Date(Date.now() - 60_000));

    // The frozen command is cancelled first; the recovery waits until it has really ended.
    const pass1 = await reconcile();
    expect(pass1.recovered.map((r) => r.job)).not.toContain(jobId);
    expect(pass1.deferred.map((d) => d.job)).toContain(jobId);
    expect((await t.repo.require({ type: 'Volume', id: volumeId })).status).toBe('Resizing');

    // SIGKILL follows the cancel's SIGTERM after five seconds, even for a frozen process.
    const recovered = await until(
      'the recovery',
      async () => {
        const pass = await reconcile();
        return pass.recovered.find((r) => r.job === jobId);
      },
      30_000,
    );
    expect(recovered).toMatchObject({ type: 'Volume', id: volumeId, to: 'compensated' });
    const volume = (await t.call('GET', `/volumes/${volumeId}`)).body;
    expect({ status: volume.status, sizeBytes: volume.sizeBytes }).toEqual({
      status: 'Ready',
      sizeBytes: 64 * MiB,
    });
    expect((await t.call('GET', `/stores/${pool.id}`)).body.allocatedBytes).toBe(allocatedBefore);
    expect((await t.call('GET', `/jobs/${jobId}`)).body).toMatchObject({
      state: 'failed',
      error: { code: 'LeaseExpired' },
    });

    // Once: a second pass finds nothing, and the volume works again.
    expect((await reconcile()).recovered.map((r) => r.job)).not.toContain(jobId);
    for (const h of t.stack.hosts) h.resume();
    expect((await t.run('POST', `/volumes/${volumeId}/resize`, { sizeBytes: 96 * MiB })).job?.state).toBe(
      'succeeded',
    );
  }, 180_000);
});

describe('a step replayed after its switch-over', () => {
  it('a migration whose last step suspends on its host calls still removes the source and evicts the unused template cache', async () => {
    const image = path.join(await tempDir('strata-long-migrate-'), 'small.qcow2');
    await exec('qemu-img', ['create', '-f', 'qcow2', image, '32M']);
    server.serve('/small.qcow2', { kind: 'file', path: image });
    const reg = await t.call('POST', '/templates', {
      name: 'small',
      url: server.url('/small.qcow2'),
      format: 'qcow2',
      zoneId: 'zone-1',
    });
    expect((await t.waitForJob(reg.body.job.id, 120_000)).state).toBe('succeeded');
    const templateId = reg.body.template.id as string;
    const pool = (await t.call('GET', '/stores?role=primary')).body.items[0];
    const share = await t.newShare('nfs-replay');
    const added = await t.call('POST', '/stores', {
      name: 'nfs-replay',
      provider: 'nfs',
      role: 'primary',
      scope: { type: 'cluster', zoneId: 'zone-1', clusterId: 'cluster-1' },
      capacityBytes: 10 * 2 ** 30,
      details: { server: '127.0.0.1', export: '/replay', mountPath: share },
    });
    expect((await t.waitForJob(added.body.job.id)).state).toBe('succeeded');
    const created = await t.call('POST', '/volumes', {
      name: 'replayed',
      zoneId: 'zone-1',
      templateId,
      storeId: pool.id,
    });
    expect((await t.waitForJob(created.body.job.id, 120_000)).state).toBe('succeeded');
    const volumeId = created.body.volume.id as string;

    const res = await t.call('POST', `/volumes/${volumeId}/migrate`, { storeId: added.body.store.id });
    expect(res.status).toBe(202);
    const job = await t.waitForJob(res.body.job.id, 120_000);
    expect(job.state).toBe('succeeded');
    // The last step sent the source's delete and the cache's delete, and ran again in between.
    expect(Object.keys(job.hostCommands ?? {}).filter((k) => k.startsWith('finishMigrate:'))).toHaveLength(2);
    expect(visits(job.executionId).get('Finish')).toBeGreaterThan(1);

    const volume = (await t.call('GET', `/volumes/${volumeId}`)).body;
    expect(volume).toMatchObject({ status: 'Ready', storeId: added.body.store.id, mode: 'full' });
    expect(volume.migratedFrom).toBeUndefined();
    expect(volume.lease).toBeUndefined();
    // The cache entry no volume uses any more is gone, row and file, once the job has ended.
    const tpl = (await t.call('GET', `/templates/${templateId}`)).body;
    expect(tpl.copies.filter((c: { storeRole: string }) => c.storeRole === 'primary')).toEqual([]);
    const inventory = (await t.run('POST', `/stores/${pool.id}/inventory`)).job;
    expect(
      inventory.result.objects.filter(
        (o: { path: string }) => o.path.includes(templateId) || o.path.includes(volumeId),
      ),
    ).toEqual([]);

    const del = await t.call('DELETE', `/volumes/${volumeId}`);
    expect((await t.waitForJob(del.body.job.id)).state).toBe('succeeded');
    expect((await t.call('DELETE', `/templates/${templateId}`)).status).toBe(204);
  }, 180_000);
});
