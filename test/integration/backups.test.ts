/**
 * Backup to the image store and restore, end to end on the embedded stack: a volume cloned from a
 * real template, written by qemu-io (as a VM would) over five rounds, each round snapshotted and
 * backed up; every backup restored into a new volume and compared byte for byte with a reference
 * the test kept; backups deleted in a scrambled order while the survivors keep restoring; chunks
 * collected once no backup holds them; a backup cut off mid-upload on real HTTP, then retried.
 */
import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3';
import { decodeHostRequest } from '../../drivers/sdk/host-protocol';
import { JobService } from '../../functions/core/services/job-service';
import { snapshotMachine } from '../../functions/core/state-machines';
import { startFaultProxy } from '../support/fault-proxy';
import { startImageServer } from '../support/image-server';
import { integrationEndpoints, tempDir } from '../support/integration';
import { qemuCompare } from '../support/qemu-compare';
import { startTestStack, type TestStack } from '../support/stack';

const exec = promisify(execFile);
const MiB = 2 ** 20;
const CHUNK = 4 * MiB;

async function keys(s3: S3Client, bucket: string, prefix: string): Promise<string[]> {
  const out: string[] = [];
  let token: string | undefined;
  do {
    const page = await s3.send(
      new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ContinuationToken: token }),
    );
    for (const o of page.Contents ?? []) if (o.Key) out.push(o.Key);
    token = page.NextContinuationToken;
  } while (token);
  return out;
}

interface Pool {
  id: string;
  details: { mountPath: string };
}

async function primaryPool(t: TestStack): Promise<Pool> {
  return (await t.call('GET', '/stores?role=primary')).body.items.find(
    (s: { name: string }) => s.name === 'nfs-primary-1',
  );
}

/** Restores a snapshot into a new volume and returns the file on the pool. */
async function restore(t: TestStack, pool: Pool, snapshotId: string, from: 'backup' | 'primary' | 'auto') {
  const res = await t.call('POST', '/volumes', {
    name: `restore-${snapshotId.slice(-6)}`,
    zoneId: 'zone-1',
    storeId: pool.id,
    fromSnapshotId: snapshotId,
    restoreFrom: from,
  });
  expect(res.status).toBe(202);
  const job = await t.waitForJob(res.body.job.id, 60_000);
  expect(job).toMatchObject({ state: 'succeeded' });
  const volume = (await t.call('GET', `/volumes/${res.body.volume.id}`)).body;
  return { id: volume.id as string, file: path.join(pool.details.mountPath, volume.path) };
}

/** Waits for a job, checking on the way that its progress never goes backwards. */
async function watchJob(t: TestStack, jobId: string) {
  const seen: number[] = [];
  for (let i = 0; i < 1200; i++) {
    const job = (await t.call('GET', `/jobs/${jobId}`)).body;
    seen.push(job.progress);
    if (job.state === 'succeeded' || job.state === 'failed') {
      expect({ jobId, seen }).toEqual({ jobId, seen: [...seen].sort((a, b) => a - b) });
      return job;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`job ${jobId} did not finish`);
}

async function dropVolume(t: TestStack, id: string): Promise<void> {
  const del = await t.call('DELETE', `/volumes/${id}`);
  expect((await t.waitForJob(del.body.job.id)).state).toBe('succeeded');
}

describe('incremental backup to the image store, and restore', () => {
  let t: TestStack;
  let server: Awaited<ReturnType<typeof startImageServer>>;
  let refs: string;

  beforeAll(async () => {
    refs = await tempDir('strata-backup-refs-');
    const template = path.join(refs, 'template.qcow2');
    await exec('qemu-img', ['create', '-f', 'qcow2', template, '64M']);
    await exec('qemu-io', ['-c', 'write -P 0x5a 0 6M', '-c', 'write -P 0xa5 40M 2M', template]);
    server = await startImageServer();
    server.serve('/template.qcow2', { kind: 'file', path: template });
    // Steps hand over to a retry after 300 ms of waiting on a host, so most scans, uploads and
    // restores below are resumed at least once through the workflow's Strata.StillRunning retry.
    t = await startTestStack({ fetchAllowlist: '127.0.0.1', hostWaitBudgetMs: 300 });
  }, 120_000);

  afterAll(async () => {
    await t?.stack.stop();
    await server?.close();
  });

  it('backs up five rounds moving only changed chunks; every backup restores alone; deletes in any order; GC', async () => {
    const reg = await t.call('POST', '/templates', {
      name: 'backup-template',
      url: server.url('/template.qcow2'),
      format: 'qcow2',
      zoneId: 'zone-1',
    });
    expect((await t.waitForJob(reg.body.job.id)).state).toBe('succeeded');
    const pool = await primaryPool(t);
    const created = await t.call('POST', '/volumes', {
      name: 'guarded',
      zoneId: 'zone-1',
      templateId: reg.body.template.id,
      storeId: pool.id,
    });
    expect((await t.waitForJob(created.body.job.id)).state).toBe('succeeded');
    const volume = (await t.call('GET', `/volumes/${created.body.volume.id}`)).body;
    const file = path.join(pool.details.mountPath, volume.path);

    const snapshots: string[] = [];
    const results: Array<Record<string, number | boolean>> = [];
    // Every host command sent, as `operation` or `operation:phase`.
    let sent: string[] = [];
    const stopCounting = t.stack.ssm.onSend((parameters) => {
      if (!parameters.Request) return;
      const { operation, args } = decodeHostRequest(parameters.Request);
      const phase = (args as { phase?: string }).phase;
      sent.push(phase ? `${operation}:${phase}` : operation);
    });
    for (let round = 1; round <= 5; round++) {
      sent = [];
      // One whole chunk rewritten each round, and in round 3 a small write into round 1's chunk.
      const offset = (8 + 4 * round) * MiB;
      const writes = ['-c', `write -P ${0x20 + round} ${offset} 4M`];
      if (round === 3) writes.push('-c', `write -P 0x77 ${12 * MiB + 512 * 1024} 64k`);
      await exec('qemu-io', [...writes, file]);
      await exec('qemu-img', ['convert', '-O', 'qcow2', file, path.join(refs, `r${round}.qcow2`)]);
      // Rounds 1–3 ask for the backup with the snapshot; 4–5 back an existing snapshot up.
      const viaTake = round <= 3;
      const taken = await t.call('POST', `/volumes/${volume.id}/snapshots`, {
        name: `round-${round}`,
        backup: viaTake,
      });
      expect(taken.status).toBe(202);
      let job = await watchJob(t, taken.body.job.id);
      expect({ state: job.state, error: job.error }).toEqual({ state: 'succeeded', error: undefined });
      if (viaTake) {
        // Take and back up: two host commands, the snapshot and one backup pass.
        expect({ round, sent }).toEqual({ round, sent: ['takeChainSnapshot', 'backupChunks:scan'] });
      } else {
        sent = [];
        const started = await t.call('POST', `/snapshots/${taken.body.snapshot.id}/backup`);
        expect(started.status).toBe(202);
        job = await watchJob(t, started.body.job.id);
        expect({ state: job.state, error: job.error }).toEqual({ state: 'succeeded', error: undefined });
        // A backup alone: one host command reads, hashes and uploads.
        expect({ round, sent }).toEqual({ round, sent: ['backupChunks:scan'] });
      }
      snapshots.push(taken.body.snapshot.id);
      results.push(job.result);
      const snap = (await t.call('GET', `/snapshots/${taken.body.snapshot.id}`)).body;
      expect(snap.status).toBe('BackedUp');
      expect(snap.copies.map((c: { storeRole?: string }) => c.storeRole).sort()).toEqual([
        'image',
        'primary',
      ]);
    }
    stopCounting();

    // The first backup read every allocated chunk; each later one only what changed.
    const [first, ...later] = results;
    // Template data in chunks 0, 1 (0–6M) and 10 (40–42M), round 1's write in chunk 3.
    expect(first).toMatchObject({ incremental: false, chunksTotal: 16, chunksUploaded: 4 });
    expect(first?.bytesUploaded).toBe(4 * CHUNK);
    for (const [i, r] of later.entries()) {
      const changedChunks = i + 2 === 3 ? 2 : 1;
      expect(r).toMatchObject({ incremental: true, chunksTotal: 16, chunksChanged: changedChunks });
      expect(r.bytesUploaded).toBe(changedChunks * CHUNK);
      expect(Number(r.bytesUploaded) / (changedChunks * CHUNK)).toBeLessThanOrEqual(1.25);
      // Each changed chunk read once (the pass that hashes it uploads it), never the whole disk.
      expect(r.bytesRead).toBe(changedChunks * CHUNK);
      expect(Number(r.chunksReused)).toBeGreaterThanOrEqual(Number(first?.chunksUploaded) - 1);
    }

    // Every backup restores on its own, byte for byte; and from primary storage too.
    for (const [i, id] of snapshots.entries()) {
      const restored = await restore(t, pool, id, 'backup');
      expect(await qemuCompare(path.join(refs, `r${i + 1}.qcow2`), restored.file)).toBe(0);
      await dropVolume(t, restored.id);
    }
    const fromPrimary = await restore(t, pool, snapshots[1] as string, 'primary');
    expect(await qemuCompare(path.join(refs, 'r2.qcow2'), fromPrimary.file)).toBe(0);
    await dropVolume(t, fromPrimary.id);

    // Delete backups in a scrambled order; after each, every survivor still restores exactly.
    const order = [2, 0, 4, 1, 3];
    const alive = new Set(order);
    for (const victim of order.slice(0, 3)) {
      const res = await t.run('DELETE', `/snapshots/${snapshots[victim]}?from=image`);
      expect(res.job?.state).toBe('succeeded');
      alive.delete(victim);
      const snap = (await t.call('GET', `/snapshots/${snapshots[victim]}`)).body;
      expect(snap.status).toBe('CreatedOnPrimary');
      for (const survivor of alive) {
        const restored = await restore(t, pool, snapshots[survivor] as string, 'backup');
        expect(await qemuCompare(path.join(refs, `r${survivor + 1}.qcow2`), restored.file)).toBe(0);
        await dropVolume(t, restored.id);
      }
    }
    const manifestsLeft = await keys(t.s3, t.imageBucket, 'images/backups/manifests/');
    expect(manifestsLeft).toHaveLength(2);

    // Revert the volume to an older snapshot (its layer on primary storage) and check it.
    expect((await t.run('POST', `/snapshots/${snapshots[1]}/revert`)).job?.state).toBe('succeeded');
    expect(await qemuCompare(path.join(refs, 'r2.qcow2'), file)).toBe(0);

    // With the last backups gone, no chunk is left behind, and no plan either.
    for (const survivor of alive) {
      expect((await t.run('DELETE', `/snapshots/${snapshots[survivor]}?from=image`)).job?.state).toBe(
        'succeeded',
      );
    }
    expect(await keys(t.s3, t.imageBucket, 'images/backups/')).toEqual([]);

    for (const id of snapshots)
      expect((await t.run('DELETE', `/snapshots/${id}`)).job?.state).toBe('succeeded');
    await dropVolume(t, volume.id);
  }, 600_000);

  it('refuses bad input naming the field, and changes nothing', async () => {
    const missing = await t.call('POST', '/snapshots/snap-nope/backup');
    expect(missing.status).toBe(404);
    const both = await t.call('POST', '/volumes', {
      name: 'x',
      zoneId: 'zone-1',
      templateId: 'tpl-1',
      fromSnapshotId: 'snap-1',
    });
    expect(both.status).toBe(400);
    expect(JSON.stringify(both.body.error)).toContain('fromSnapshotId');
    const unknown = await t.call('POST', '/volumes', {
      name: 'x',
      zoneId: 'zone-1',
      fromSnapshotId: 'snap-nope',
    });
    expect(unknown.status).toBe(422);
    expect(unknown.body.error.field).toBe('fromSnapshotId');
    const badFrom = await t.call('DELETE', '/snapshots/snap-nope?from=tape');
    expect(badFrom.status).toBe(400);
  });
});

describe('a backup cut off mid-upload', () => {
  let t: TestStack;
  let proxy: Awaited<ReturnType<typeof startFaultProxy>>;
  let refs: string;

  beforeAll(async () => {
    refs = await tempDir('strata-backup-fault-');
    proxy = await startFaultProxy(integrationEndpoints().s3);
    t = await startTestStack({ s3Endpoint: proxy.url });
  }, 120_000);

  afterAll(async () => {
    await t?.stack.stop();
    await proxy?.close();
  });

  it('leaves the snapshot restorable from primary, no manifest and nothing staged; the retry backs it up', async () => {
    const pool = await primaryPool(t);
    const created = await t.call('POST', '/volumes', {
      name: 'flaky',
      zoneId: 'zone-1',
      sizeBytes: 64 * MiB,
      storeId: pool.id,
    });
    await t.waitForJob(created.body.job.id);
    const volume = (await t.call('GET', `/volumes/${created.body.volume.id}`)).body;
    const file = path.join(pool.details.mountPath, volume.path);
    const writes = Array.from({ length: 8 }, (_, i) => ['-c', `write -P ${0x40 + i} ${i * 4}M 4M`]).flat();
    await exec('qemu-io', [...writes, file]);
    await exec('qemu-img', ['convert', '-O', 'qcow2', file, path.join(refs, 'ref.qcow2')]);
    const taken = await t.call('POST', `/volumes/${volume.id}/snapshots`, { name: 'before-the-fault' });
    await t.waitForJob(taken.body.job.id);
    const snapshotId = taken.body.snapshot.id as string;

    // Three chunk uploads go through, every later one fails (as an outage mid-upload would). The
    // host POSTs chunks under the job's staging prefix; the S3 proxy stores each with a PUT.
    proxy.setRule({
      match: (method, p) => method === 'PUT' && /\/backups\/plans\/[^/]+\/staging\//.test(p),
      passFirst: 3,
      status: 503,
    });
    const first = await t.call('POST', `/snapshots/${snapshotId}/backup`);
    expect(first.status).toBe(202);
    const failed = await t.waitForJob(first.body.job.id, 120_000);
    expect(failed.state).toBe('failed');
    expect(proxy.failed()).toBeGreaterThan(0);
    const after = (await t.call('GET', `/snapshots/${snapshotId}`)).body;
    expect(after.status).toBe('CreatedOnPrimary');
    expect(after.copies.filter((c: { storeRole?: string }) => c.storeRole === 'image')).toEqual([]);
    expect(await keys(t.s3, t.imageBucket, 'images/backups/manifests/')).toEqual([]);
    // What the failed pass staged went with the job's plans; nothing reached the chunk store.
    expect(await keys(t.s3, t.imageBucket, 'images/backups/plans/')).toEqual([]);
    expect(await keys(t.s3, t.imageBucket, 'images/backups/chunks/')).toEqual([]);

    const fromPrimary = await restore(t, pool, snapshotId, 'primary');
    expect(await qemuCompare(path.join(refs, 'ref.qcow2'), fromPrimary.file)).toBe(0);
    await dropVolume(t, fromPrimary.id);

    proxy.setRule(undefined);
    const retry = await t.call('POST', `/snapshots/${snapshotId}/backup`);
    const done = await t.waitForJob(retry.body.job.id, 60_000);
    expect(done.state).toBe('succeeded');
    expect(done.result).toMatchObject({
      chunksUploaded: 8,
      bytesUploaded: 8 * 4 * MiB,
      bytesRead: 8 * 4 * MiB,
    });
    const restored = await restore(t, pool, snapshotId, 'backup');
    expect(await qemuCompare(path.join(refs, 'ref.qcow2'), restored.file)).toBe(0);
    await dropVolume(t, restored.id);

    // Drop the primary layer and then the volume itself: the backup outlives both and restores.
    expect((await t.run('DELETE', `/snapshots/${snapshotId}?from=primary`)).job?.state).toBe('succeeded');
    const backupOnly = (await t.call('GET', `/snapshots/${snapshotId}`)).body;
    expect(backupOnly.status).toBe('BackedUp');
    expect(backupOnly.copies.map((c: { storeRole?: string }) => c.storeRole)).toEqual(['image']);
    await dropVolume(t, volume.id);
    const afterVolume = await restore(t, pool, snapshotId, 'auto');
    expect(await qemuCompare(path.join(refs, 'ref.qcow2'), afterVolume.file)).toBe(0);
    await dropVolume(t, afterVolume.id);
    const deleted = await t.run('DELETE', `/snapshots/${snapshotId}`);
    expect({ state: deleted.job?.state, error: deleted.job?.error }).toEqual({
      state: 'succeeded',
      error: undefined,
    });
    expect(await keys(t.s3, t.imageBucket, 'images/backups/')).toEqual([]);
  }, 300_000);

  it('the reconciler compensates a backup whose workflow was lost: copy removed, snapshot back on primary, job failed', async () => {
    const pool = await primaryPool(t);
    const created = await t.call('POST', '/volumes', {
      name: 'orphaned',
      zoneId: 'zone-1',
      sizeBytes: 16 * MiB,
      storeId: pool.id,
    });
    await t.waitForJob(created.body.job.id);
    const volume = (await t.call('GET', `/volumes/${created.body.volume.id}`)).body;
    await exec('qemu-io', ['-c', 'write -P 0x61 0 4M', path.join(pool.details.mountPath, volume.path)]);
    const taken = await t.call('POST', `/volumes/${volume.id}/snapshots`, { name: 'lost' });
    await t.waitForJob(taken.body.job.id);
    const snapshotId = taken.body.snapshot.id as string;
    const { repo } = t;
    const image = (await t.call('GET', '/stores?role=image')).body.items[0];

    // As if the flow died after its scan: the snapshot leased for 1 s, a copy row, a chunk held.
    const jobId = 'job-lost-backup';
    await new JobService(repo).create('snapshot.backup', { type: 'snapshot', id: snapshotId }, jobId);
    // What starting the flow records on the job: the reconciler runs that flow's compensation.
    await repo.updateWhere(
      { type: 'Job', id: jobId },
      { field: 'state', oneOf: ['pending'] },
      { flow: 'snapshot-backup', flowInput: { jobId, snapshotId } },
    );
    const snap = await repo.require({ type: 'Snapshot', id: snapshotId });
    await repo.transition({
      key: { type: 'Snapshot', id: snapshotId },
      machine: snapshotMachine,
      from: 'CreatedOnPrimary',
      to: 'BackingUp',
      expectedVersion: snap.version,
      lease: { owner: jobId, ttlSeconds: 1 },
    });
    await repo.create('SnapshotInStore', {
      snapshotId,
      storeId: image.id,
      storeRole: 'image',
      status: 'Creating',
      path: `backups/manifests/${volume.id}/${snapshotId}.json`,
      lease: { owner: jobId, expiresAt: new Date(Date.now() + 1000).toISOString() },
    });
    const sha = 'ab'.repeat(32);
    await repo.chunks.pin(image.id, [sha], snapshotId);
    await new Promise((r) => setTimeout(r, 1500));

    // The reconciler function, invoked as its scheduled rule invokes it.
    const { recovered } = (await t.stack.invoke('Reconciler', {})) as { recovered: { job: string }[] };
    expect(recovered.map((r) => r.job)).toContain(jobId);
    const after = (await t.call('GET', `/snapshots/${snapshotId}`)).body;
    expect(after.status).toBe('CreatedOnPrimary');
    expect(after.copies.filter((c: { storeRole?: string }) => c.storeRole === 'image')).toEqual([]);
    expect((await t.call('GET', `/jobs/${jobId}`)).body).toMatchObject({
      state: 'failed',
      error: { code: 'LeaseExpired' },
    });
    // No plan was written, so nothing knew what to release: the hold is kept (a space leak, not
    // data loss). With a plan (the scan wrote one), compensation releases exactly its chunks.
    expect((await repo.chunks.holders(image.id, sha))?.holders).toEqual([snapshotId]);
    await repo.chunks.release(image.id, [sha], snapshotId, { collect: true });

    // And the snapshot backs up normally afterwards.
    const retry = await t.call('POST', `/snapshots/${snapshotId}/backup`);
    expect((await t.waitForJob(retry.body.job.id, 60_000)).state).toBe('succeeded');
    expect((await t.run('DELETE', `/snapshots/${snapshotId}`)).job?.state).toBe('succeeded');
    await dropVolume(t, volume.id);
  }, 120_000);
});
