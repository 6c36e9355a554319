/**
 * Lazy restore through the API on the embedded stack: `POST /volumes {fromSnapshotId, restoreFrom:
 * 'backup', lazy: true}` runs volume-create with the volume Hydrating while the host's daemon
 * fetches the chunks, then flattens it; the result equals the snapshot and depends on nothing.
 */
import { execFile } from 'node:child_process';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import {
  DeleteObjectCommand,
  GetObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
} from '@aws-sdk/client-s3';
import { chunkObjectKey } from '../../drivers/sdk/backup-manifest';
import { EnvName } from '../../functions/env-names';
import { startImageServer } from '../support/image-server';
import { tempDir } from '../support/integration';
import { qemuCompare } from '../support/qemu-compare';
import { startTestStack, type TestStack } from '../support/stack';

const exec = promisify(execFile);

describe('lazy restore of a backup', () => {
  let t: TestStack;
  let server: Awaited<ReturnType<typeof startImageServer>>;
  let refs: string;

  beforeAll(async () => {
    refs = await tempDir('strata-lazy-refs-');
    const template = path.join(refs, 'template.qcow2');
    await exec('qemu-img', ['create', '-f', 'qcow2', template, '64M']);
    await exec('qemu-io', ['-c', 'write -P 0x5a 0 6M', '-c', 'write -P 0xa5 40M 2M', template]);
    server = await startImageServer();
    server.serve('/template.qcow2', { kind: 'file', path: template });
    // Lists renewed once a second old: every hydration here that waits renews its URLs.
    t = await startTestStack({
      fetchAllowlist: '127.0.0.1',
      hostWaitBudgetMs: 300,
      functionEnvironment: { [EnvName.LazyRenewSeconds]: '1' },
    });
  }, 120_000);

  /** `POST /volumes` restoring a snapshot's backup lazily onto a pool. */
  const restoreLazily = (name: string, storeId: string, snapshotId: string) =>
    t.call('POST', '/volumes', {
      name,
      zoneId: 'zone-1',
      storeId,
      fromSnapshotId: snapshotId,
      restoreFrom: 'backup',
      lazy: true,
    });

  /** The backup manifest of a snapshot, read from the image store. */
  const manifestOf = async (snapshotId: string) => {
    const listed = await t.s3.send(
      new ListObjectsV2Command({ Bucket: t.imageBucket, Prefix: 'images/backups/manifests/' }),
    );
    const key = listed.Contents?.map((o) => o.Key ?? '').find((k) => k.includes(snapshotId));
    const body = await t.s3.send(new GetObjectCommand({ Bucket: t.imageBucket, Key: key }));
    return JSON.parse(await body.Body!.transformToString()) as { chunks: Array<string | null> };
  };

  afterAll(async () => {
    await t?.stack.stop();
    await server?.close();
  });

  it('restores lazily: Hydrating with progress, then Ready, flattened, equal to the snapshot; a damaged chunk ends in Error, cleaned up', async () => {
    const reg = await t.call('POST', '/templates', {
      name: 'lazy-template',
      url: server.url('/template.qcow2'),
      format: 'qcow2',
      zoneId: 'zone-1',
    });
    expect((await t.waitForJob(reg.body.job.id)).state).toBe('succeeded');
    const pool = (await t.call('GET', '/stores?role=primary')).body.items.find(
      (s: { name: string }) => s.name === 'nfs-primary-1',
    ) as { id: string; details: { mountPath: string } };
    const created = await t.call('POST', '/volumes', {
      name: 'lazy-source',
      zoneId: 'zone-1',
      templateId: reg.body.template.id,
      storeId: pool.id,
    });
    expect((await t.waitForJob(created.body.job.id)).state).toBe('succeeded');
    const source = (await t.call('GET', `/volumes/${created.body.volume.id}`)).body;
    const sourceFile = path.join(pool.details.mountPath, source.path);
    await exec('qemu-io', ['-c', 'write -P 0x33 20M 4M', sourceFile]);
    const expected = path.join(refs, 'expected.qcow2');
    await exec('qemu-img', ['convert', '-O', 'qcow2', sourceFile, expected]);
    const taken = await t.call('POST', `/volumes/${source.id}/snapshots`, {
      name: 'lazy-snap',
      backup: true,
    });
    expect((await t.waitForJob(taken.body.job.id, 60_000)).state).toBe('succeeded');
    const snapshotId = taken.body.snapshot.id as string;

    // lazy without restoreFrom: 'backup' is refused, naming the field.
    for (const body of [
      { fromSnapshotId: snapshotId, lazy: true },
      { fromSnapshotId: snapshotId, restoreFrom: 'primary', lazy: true },
      { fromSnapshotId: snapshotId, restoreFrom: 'backup', lazy: 'yes' },
    ]) {
      const bad = await t.call('POST', '/volumes', { name: 'lazy-bad', zoneId: 'zone-1', ...body });
      expect(bad.status).toBe(400);
      expect(JSON.stringify(bad.body.error)).toContain('lazy');
    }

    const res = await restoreLazily('lazy-restored', pool.id, snapshotId);
    expect(res.status).toBe(202);
    const statuses = new Set<string>();
    let job:
      | {
          state: string;
          progressDetail?: Record<string, unknown>;
          error?: unknown;
          hostCommands?: Record<string, { hostId: string }>;
        }
      | undefined;
    for (let i = 0; i < 2400; i++) {
      statuses.add((await t.call('GET', `/volumes/${res.body.volume.id}`)).body.status);
      job = (await t.call('GET', `/jobs/${res.body.job.id}`)).body;
      if (job?.progressDetail?.phase === 'hydrating') statuses.add('progress:hydrating');
      if (job?.state === 'succeeded' || job?.state === 'failed') break;
      await new Promise((r) => setTimeout(r, 25));
    }
    expect({ state: job?.state, error: job?.error }).toEqual({ state: 'succeeded', error: undefined });
    const volume = (await t.call('GET', `/volumes/${res.body.volume.id}`)).body;
    expect(volume).toMatchObject({ status: 'Ready', lazyRestore: true });
    expect(volume.hydrationHostId).toBeUndefined();
    // Every host command of the restore went to the one host serving the export.
    const commands = Object.entries(job?.hostCommands ?? {}).filter(([k]) => k.includes(':lazyRestore'));
    expect([...new Set(commands.map(([k]) => k.split(':')[1]))].sort()).toEqual(
      expect.arrayContaining(['lazyRestoreFinish', 'lazyRestoreStart', 'lazyRestoreWait']),
    );
    // Besides those three, only renewals (lazyRestoreStatus calls named renewal-<n>).
    expect(
      commands
        .map(([k]) => k.split(':').slice(1).join(':'))
        .filter((k) => !/^lazyRestore(Start|Wait|Finish):0$/.test(k))
        .every((k) => /^lazyRestoreStatus:renewal-\d+$/.test(k)),
    ).toBe(true);
    expect(new Set(commands.map(([, c]) => c.hostId)).size).toBe(1);
    expect(
      [...statuses].every((s) => ['Creating', 'Hydrating', 'Ready', 'progress:hydrating'].includes(s)),
    ).toBe(true);

    const file = path.join(pool.details.mountPath, volume.path);
    const { stdout } = await exec('qemu-img', ['info', '--output=json', '-f', 'qcow2', file]);
    expect(JSON.parse(stdout)['backing-filename']).toBeUndefined();
    expect(await qemuCompare(expected, file)).toBe(0);
    // The restore's state directory is gone (and with it the daemon's socket and cache).
    const lazyDirs = await readdir(path.join(pool.details.mountPath, '.strata', 'lazy')).catch(() => []);
    expect(lazyDirs).not.toContain(volume.id);

    const del = await t.call('DELETE', `/volumes/${volume.id}`);
    expect((await t.waitForJob(del.body.job.id)).state).toBe('succeeded');

    // A chunk damaged in the store: reads of it fail, the job fails naming it, and the volume ends
    // in Error with no file, no daemon state and no space held.
    const manifest = await manifestOf(snapshotId);
    const victim = manifest.chunks.find((c): c is string => c !== null)!;
    await t.s3.send(
      new PutObjectCommand({
        Bucket: t.imageBucket,
        Key: `images/${chunkObjectKey('backups/chunks', victim)}`,
        Body: Buffer.alloc(4 * 2 ** 20, 0x99),
      }),
    );
    const doomed = await restoreLazily('lazy-doomed', pool.id, snapshotId);
    expect(doomed.status).toBe(202);
    const failed = await t.waitForJob(doomed.body.job.id, 120_000);
    expect(failed.state).toBe('failed');
    expect(JSON.stringify(failed.error)).toContain('ChecksumMismatch');
    const broken = (await t.call('GET', `/volumes/${doomed.body.volume.id}`)).body;
    expect(broken).toMatchObject({ status: 'Error' });
    expect(broken.path).toBeUndefined();
    expect(broken.statusReason).toContain('damaged');
    const files = await readdir(path.join(pool.details.mountPath, 'volumes'));
    expect(files.filter((f) => f.includes(doomed.body.volume.id))).toEqual([]);
    const dirs = await readdir(path.join(pool.details.mountPath, '.strata', 'lazy')).catch(() => []);
    expect(dirs).not.toContain(doomed.body.volume.id);
  }, 300_000);

  it('renews the export URLs while a hydration outlasts them, and the daemon fetches with the new ones', async () => {
    const pool = (await t.call('GET', '/stores?role=primary')).body.items.find(
      (s: { name: string }) => s.name === 'nfs-primary-1',
    ) as { id: string; details: { mountPath: string } };
    const created = await t.call('POST', '/volumes', {
      name: 'renew-source',
      zoneId: 'zone-1',
      sizeBytes: 32 * 2 ** 20,
      storeId: pool.id,
    });
    expect((await t.waitForJob(created.body.job.id)).state).toBe('succeeded');
    const source = (await t.call('GET', `/volumes/${created.body.volume.id}`)).body;
    const sourceFile = path.join(pool.details.mountPath, source.path);
    await exec('qemu-io', ['-c', 'write -P 0x42 0 4M', '-c', 'write -P 0x24 16M 4M', sourceFile]);
    const expected = path.join(refs, 'renew-expected.qcow2');
    await exec('qemu-img', ['convert', '-O', 'qcow2', sourceFile, expected]);
    const taken = await t.call('POST', `/volumes/${source.id}/snapshots`, { name: 'renew', backup: true });
    expect((await t.waitForJob(taken.body.job.id, 60_000)).state).toBe('succeeded');
    const snapshotId = taken.body.snapshot.id as string;

    // One chunk held back from the store: hydration cannot end until it is back.
    const manifest = await manifestOf(snapshotId);
    const held = manifest.chunks[4]!;
    expect(held).toMatch(/^[0-9a-f]{64}$/);
    const heldKey = `images/${chunkObjectKey('backups/chunks', held)}`;
    const heldBytes = Buffer.from(
      await (
        await t.s3.send(new GetObjectCommand({ Bucket: t.imageBucket, Key: heldKey }))
      ).Body!.transformToByteArray(),
    );
    await t.s3.send(new DeleteObjectCommand({ Bucket: t.imageBucket, Key: heldKey }));

    const res = await restoreLazily('renewed', pool.id, snapshotId);
    expect(res.status).toBe(202);
    const volumeId = res.body.volume.id as string;
    const chunksFile = path.join(pool.details.mountPath, '.strata', 'lazy', volumeId, 'chunks.json');
    const urlOf = async () =>
      (JSON.parse(await readFile(chunksFile, 'utf8')) as Array<{ url: string } | null>)[0]?.url;
    let first: string | undefined;
    let volume: { status: string; hydrationUrls?: { renewals: number } } | undefined;
    for (let i = 0; i < 600; i++) {
      volume = (await t.call('GET', `/volumes/${volumeId}`)).body;
      if (volume?.status === 'Hydrating') {
        first ??= await urlOf();
        if ((volume.hydrationUrls?.renewals ?? 0) >= 2) break;
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(volume?.status).toBe('Hydrating');
    expect(volume?.hydrationUrls?.renewals).toBeGreaterThanOrEqual(2);
    // The host holds a list with other URLs for the same chunks, and the daemon took it.
    expect(first).toMatch(/^http/);
    expect(await urlOf()).not.toBe(first);
    const logFile = path.join(path.dirname(chunksFile), 'daemon.log');

    // Its next try at the held chunk reads the renewed list first (tries back off 1, 2, 4, 8 s).
    const reloaded = async () => (await readFile(logFile, 'utf8')).includes('chunk list reloaded');
    for (let i = 0; i < 800 && !(await reloaded()); i++) await new Promise((r) => setTimeout(r, 50));
    expect(await reloaded()).toBe(true);

    // The chunk is back: the daemon fetches it with a renewed URL and the restore completes.
    await t.s3.send(new PutObjectCommand({ Bucket: t.imageBucket, Key: heldKey, Body: heldBytes }));
    const job = await t.waitForJob(res.body.job.id, 120_000);
    expect({ state: job.state, error: job.error }).toEqual({ state: 'succeeded', error: undefined });
    const done = (await t.call('GET', `/volumes/${volumeId}`)).body;
    expect(done.status).toBe('Ready');
    expect(done.hydrationUrls).toBeUndefined();
    const renewals = Object.keys(job.hostCommands ?? {}).filter((k) =>
      k.includes(':lazyRestoreStatus:renewal-'),
    );
    expect(renewals.length).toBeGreaterThanOrEqual(2);
    expect(await qemuCompare(expected, path.join(pool.details.mountPath, done.path))).toBe(0);
    const del = await t.call('DELETE', `/volumes/${volumeId}`);
    expect((await t.waitForJob(del.body.job.id)).state).toBe('succeeded');
  }, 240_000);
});
