/**
 * Verified backup chunks, end to end on the embedded stack: every chunk is stored with its
 * SHA-256 checksum (signed into the host's presigned PUT, checked by the S3 endpoint), a chunk
 * altered in the store is found by a verify job (the job names it and the backups holding it), the
 * next backup uploads it again from primary storage instead of reusing it, and every backup then
 * restores byte for byte; a chunk stored without a checksum (as before checksums) is not reused.
 */
import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { HeadObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { DynamoDBDocumentClient, UpdateCommand } from '@aws-sdk/lib-dynamodb';
import { chunkObjectKey } from '../../drivers/sdk/backup-manifest';
import { localDynamoClientConfig } from '../../infra/local/dynamodb-local';
import { integrationEndpoints, tempDir } from '../support/integration';
import { qemuCompare } from '../support/qemu-compare';
import { startTestStack, type TestStack } from '../support/stack';

const exec = promisify(execFile);
const MiB = 2 ** 20;
const CHUNK = 4 * MiB;

interface Pool {
  id: string;
  details: { mountPath: string };
}

describe('verified backup chunks', () => {
  let t: TestStack;
  let refs: string;
  let doc: DynamoDBDocumentClient;

  beforeAll(async () => {
    refs = await tempDir('strata-verify-refs-');
    t = await startTestStack();
    doc = DynamoDBDocumentClient.from(
      new DynamoDBClient(localDynamoClientConfig(integrationEndpoints().dynamo)),
    );
  }, 120_000);

  afterAll(async () => {
    doc?.destroy();
    await t?.stack.stop();
  });

  const chunkKey = (sha: string) => `images/${chunkObjectKey('backups/chunks', sha)}`;
  /** The checksum the S3 endpoint recorded with the chunk (read from s3rver itself). */
  const storedChecksum = async (sha: string) =>
    (await t.s3.send(new HeadObjectCommand({ Bucket: t.imageBucket, Key: chunkKey(sha) }))).Metadata?.[
      'strata-internal-checksum-sha256'
    ];

  async function snapshotAndBackup(volumeId: string, name: string) {
    const taken = await t.call('POST', `/volumes/${volumeId}/snapshots`, { name, backup: true });
    expect(taken.status).toBe(202);
    const job = await t.waitForJob(taken.body.job.id, 120_000);
    expect({ state: job.state, error: job.error }).toEqual({ state: 'succeeded', error: undefined });
    return { snapshotId: taken.body.snapshot.id as string, result: job.result };
  }

  async function manifestOf(snapshotId: string): Promise<{ chunks: Array<string | null> }> {
    const snap = (await t.call('GET', `/snapshots/${snapshotId}`)).body;
    const copy = snap.copies.find((c: { storeRole?: string }) => c.storeRole === 'image');
    const { GetObjectCommand } = await import('@aws-sdk/client-s3');
    const out = await t.s3.send(new GetObjectCommand({ Bucket: t.imageBucket, Key: `images/${copy.path}` }));
    return JSON.parse(await out.Body!.transformToString());
  }

  async function restoreFile(pool: Pool, snapshotId: string) {
    const res = await t.call('POST', '/volumes', {
      name: `restore-${snapshotId.slice(-6)}`,
      zoneId: 'zone-1',
      storeId: pool.id,
      fromSnapshotId: snapshotId,
      restoreFrom: 'backup',
    });
    expect(res.status).toBe(202);
    const job = await t.waitForJob(res.body.job.id, 120_000);
    const volume = (await t.call('GET', `/volumes/${res.body.volume.id}`)).body;
    return { job, id: volume.id as string, file: path.join(pool.details.mountPath, volume.path ?? '') };
  }

  async function verify(storeId: string, body: unknown = {}) {
    const res = await t.call('POST', `/stores/${storeId}/verify`, body);
    expect(res.status).toBe(202);
    expect(res.headers.get('location')).toBe(`/jobs/${res.body.job.id}`);
    const job = await t.waitForJob(res.body.job.id, 120_000);
    expect({ state: job.state, error: job.error, kind: job.kind }).toEqual({
      state: 'succeeded',
      error: undefined,
      kind: 'backup.verify',
    });
    return job.result;
  }

  it('finds a chunk altered in the store, re-uploads it on the next backup, and restores byte for byte', async () => {
    const pool: Pool = (await t.call('GET', '/stores?role=primary')).body.items.find(
      (s: { name: string }) => s.name === 'nfs-primary-1',
    );
    const image = (await t.call('GET', '/stores?role=image')).body.items[0];
    const created = await t.call('POST', '/volumes', {
      name: 'verified',
      zoneId: 'zone-1',
      sizeBytes: 32 * MiB,
      storeId: pool.id,
    });
    await t.waitForJob(created.body.job.id);
    const volume = (await t.call('GET', `/volumes/${created.body.volume.id}`)).body;
    const file = path.join(pool.details.mountPath, volume.path);
    const writes = [0, 1, 2, 3].flatMap((i) => ['-c', `write -P ${0x40 + i} ${i * 4}M 4M`]);
    await exec('qemu-io', [...writes, file]);
    await exec('qemu-img', ['convert', '-O', 'qcow2', file, path.join(refs, 'r1.qcow2')]);

    const first = await snapshotAndBackup(volume.id, 'first');
    expect(first.result).toMatchObject({ chunksUploaded: 4, bytesUploaded: 4 * CHUNK });
    const chunks1 = (await manifestOf(first.snapshotId)).chunks.filter((c): c is string => c !== null);
    expect(chunks1).toHaveLength(4);
    // Every chunk was stored with its SHA-256, as the host's PUT carried it and the endpoint checked it.
    for (const sha of chunks1) {
      expect(await storedChecksum(sha)).toBe(Buffer.from(sha, 'hex').toString('base64'));
    }

    // Nothing is damaged yet: a full verify reads every chunk and finds them whole.
    const clean = await verify(image.id);
    expect(clean).toMatchObject({ checked: 4, ok: 4, corrupt: 0, missing: 0, corruptChunks: [] });

    // Chunk 1 altered in the store (right length, other bytes), past the S3 endpoint's checks.
    const victim = chunks1[1] as string;
    await t.s3.send(
      new PutObjectCommand({ Bucket: t.imageBucket, Key: chunkKey(victim), Body: Buffer.alloc(CHUNK, 0x99) }),
    );

    const found = await verify(image.id);
    expect(found).toMatchObject({
      storeId: image.id,
      checked: 4,
      ok: 3,
      corrupt: 1,
      missing: 0,
      corruptChunks: [
        {
          hash: victim,
          path: chunkObjectKey('backups/chunks', victim),
          reason: 'corrupt',
          snapshots: [first.snapshotId],
        },
      ],
      affectedSnapshots: [first.snapshotId],
    });
    // Until it is repaired, a restore that needs it is refused up front.
    const refused = await restoreFile(pool, first.snapshotId);
    expect(refused.job.state).toBe('failed');
    expect(refused.job.error.message).toMatch(/does not hold/);

    // The next backup (chunk 5 written; chunk 1 unchanged, so carried over) uploads chunk 1 again.
    await exec('qemu-io', ['-c', `write -P 0x55 ${5 * 4}M 4M`, file]);
    await exec('qemu-img', ['convert', '-O', 'qcow2', file, path.join(refs, 'r2.qcow2')]);
    const second = await snapshotAndBackup(volume.id, 'second');
    expect(second.result).toMatchObject({ incremental: true, chunksUploaded: 2, bytesUploaded: 2 * CHUNK });
    expect(await storedChecksum(victim)).toBe(Buffer.from(victim, 'hex').toString('base64'));

    // Repaired by content: both backups restore exactly, and a verify finds nothing.
    for (const [snapshotId, ref] of [
      [second.snapshotId, 'r2.qcow2'],
      [first.snapshotId, 'r1.qcow2'],
    ] as const) {
      const restored = await restoreFile(pool, snapshotId);
      expect(restored.job.state).toBe('succeeded');
      expect(await qemuCompare(path.join(refs, ref), restored.file)).toBe(0);
      expect((await t.run('DELETE', `/volumes/${restored.id}`)).job?.state).toBe('succeeded');
    }
    expect(await verify(image.id)).toMatchObject({ checked: 5, ok: 5, corrupt: 0, missing: 0 });

    // A chunk stored as before checksums (no stored checksum, index entry not verified) is not
    // reused: the next backup uploads it again, with its checksum.
    const legacy = chunks1[2] as string;
    await t.s3.send(
      new PutObjectCommand({
        Bucket: t.imageBucket,
        Key: chunkKey(legacy),
        Body: Buffer.alloc(CHUNK, 0x42),
      }),
    );
    await doc.send(
      new UpdateCommand({
        TableName: t.stack.tableName,
        Key: { pk: `CHUNK#${image.id}#${legacy}`, sk: 'META' },
        UpdateExpression: 'REMOVE isVerified, storedAt',
      }),
    );
    // And the backup it is carried over from as written then, before holds followed the lineage
    // (no chunkHolds): the next incremental pins every chunk instead of inheriting unchecked.
    await doc.send(
      new UpdateCommand({
        TableName: t.stack.tableName,
        Key: { pk: `SNAPSHOT#${second.snapshotId}`, sk: `STORE#${image.id}` },
        UpdateExpression: 'REMOVE chunkHolds, inheritsFrom',
        ConditionExpression: 'attribute_exists(pk)',
      }),
    );
    expect(await storedChecksum(legacy)).toBeUndefined();
    await exec('qemu-io', ['-c', `write -P 0x66 ${6 * 4}M 4M`, file]);
    const third = await snapshotAndBackup(volume.id, 'third');
    expect(third.result).toMatchObject({ incremental: true, chunksUploaded: 2 });
    expect(await storedChecksum(legacy)).toBe(Buffer.from(legacy, 'hex').toString('base64'));

    // A bounded or sampled run reads less; the scheduled run goes through the reconciler.
    expect(await verify(image.id, { maxChunks: 2 })).toMatchObject({ checked: 2, ok: 2, maxChunks: 2 });
    const sampled = await verify(image.id, { sample: 0.5 });
    expect(sampled.checked).toBeLessThanOrEqual(6);
    expect(sampled.ok).toBe(sampled.checked);
    const scheduled = (await t.stack.invoke('Reconciler', { verify: { sample: 1 } })) as {
      verify: { started: Array<{ storeId: string; jobId: string }> };
    };
    expect(scheduled.verify.started.map((s) => s.storeId)).toEqual([image.id]);
    const job = await t.waitForJob(scheduled.verify.started[0]!.jobId, 120_000);
    expect(job).toMatchObject({ state: 'succeeded', result: { checked: 6, ok: 6, corrupt: 0 } });
  }, 600_000);

  it('lets an incremental backup inherit the chunk holds it carries over, and hands them on when its parent goes', async () => {
    const pool: Pool = (await t.call('GET', '/stores?role=primary')).body.items.find(
      (s: { name: string }) => s.name === 'nfs-primary-1',
    );
    const image = (await t.call('GET', '/stores?role=image')).body.items[0];
    const created = await t.call('POST', '/volumes', {
      name: 'lineage',
      zoneId: 'zone-1',
      sizeBytes: 16 * MiB,
      storeId: pool.id,
    });
    await t.waitForJob(created.body.job.id);
    const volume = (await t.call('GET', `/volumes/${created.body.volume.id}`)).body;
    const file = path.join(pool.details.mountPath, volume.path);
    const holders = async (sha: string) => {
      const { GetCommand } = await import('@aws-sdk/lib-dynamodb');
      const out = await doc.send(
        new GetCommand({ TableName: t.stack.tableName, Key: { pk: `CHUNK#${image.id}#${sha}`, sk: 'META' } }),
      );
      return out.Item ? [...((out.Item.holders as Set<string> | undefined) ?? [])].sort() : undefined;
    };
    const copyRow = async (snapshotId: string) =>
      (await t.call('GET', `/snapshots/${snapshotId}`)).body.copies.find(
        (c: { storeRole?: string }) => c.storeRole === 'image',
      );
    // Patterns unique to this test, so no chunk is shared with the other test's backups.
    const write = (chunk: number, pattern: number) =>
      exec('qemu-io', ['-c', `write -P ${pattern} ${chunk * 4}M 4M`, file]);
    const ref = async (name: string) => {
      await exec('qemu-img', ['convert', '-O', 'qcow2', file, path.join(refs, name)]);
      return path.join(refs, name);
    };
    for (let i = 0; i < 4; i++) await write(i, 0xa0 + i);
    const a = await snapshotAndBackup(volume.id, 'a');
    const chunksA = (await manifestOf(a.snapshotId)).chunks as string[];
    expect(chunksA.every((c) => c !== null)).toBe(true);
    for (const sha of chunksA) expect(await holders(sha)).toEqual([a.snapshotId]);
    expect(await copyRow(a.snapshotId)).toMatchObject({ chunkHolds: 'own' });

    await write(1, 0xb1);
    const refB = await ref('lineage-b.qcow2');
    const b = await snapshotAndBackup(volume.id, 'b');
    expect(b.result).toMatchObject({ incremental: true, chunksUploaded: 1 });
    const chunksB = (await manifestOf(b.snapshotId)).chunks as string[];
    // Only the chunk it computed is pinned by b; the three it carried over stay a's alone.
    expect(await holders(chunksB[1]!)).toEqual([b.snapshotId]);
    for (const i of [0, 2, 3]) expect(await holders(chunksB[i]!)).toEqual([a.snapshotId]);
    expect(await copyRow(b.snapshotId)).toMatchObject({ chunkHolds: 'lineage', inheritsFrom: a.snapshotId });

    await write(2, 0xc2);
    const refC = await ref('lineage-c.qcow2');
    const c = await snapshotAndBackup(volume.id, 'c');
    const chunksC = (await manifestOf(c.snapshotId)).chunks as string[];
    expect(await holders(chunksC[2]!)).toEqual([c.snapshotId]);
    expect(await holders(chunksC[1]!)).toEqual([b.snapshotId]);
    expect(await copyRow(c.snapshotId)).toMatchObject({ chunkHolds: 'lineage', inheritsFrom: b.snapshotId });

    // a goes: b takes over the holds on what both name, and holds all of its own from then on.
    expect((await t.run('DELETE', `/snapshots/${a.snapshotId}?from=image`)).job?.state).toBe('succeeded');
    for (const i of [0, 2, 3]) expect(await holders(chunksB[i]!)).toEqual([b.snapshotId]);
    expect(await copyRow(b.snapshotId)).toMatchObject({ chunkHolds: 'own' });
    expect((await copyRow(b.snapshotId)).inheritsFrom).toBeUndefined();
    expect(await copyRow(c.snapshotId)).toMatchObject({ inheritsFrom: b.snapshotId });
    expect(await holders(chunksA[1]!)).toBeUndefined();
    const restoredB = await restoreFile(pool, b.snapshotId);
    expect(restoredB.job.state).toBe('succeeded');
    expect(await qemuCompare(refB, restoredB.file)).toBe(0);
    expect((await t.run('DELETE', `/volumes/${restoredB.id}`)).job?.state).toBe('succeeded');

    // b goes: c takes over; b's own chunk 2 (overwritten in c) is collected.
    expect((await t.run('DELETE', `/snapshots/${b.snapshotId}?from=image`)).job?.state).toBe('succeeded');
    for (const i of [0, 1, 3]) expect(await holders(chunksC[i]!)).toEqual([c.snapshotId]);
    expect(await holders(chunksB[2]!)).toBeUndefined();
    const restored = await restoreFile(pool, c.snapshotId);
    expect(restored.job.state).toBe('succeeded');
    expect(await qemuCompare(refC, restored.file)).toBe(0);
    expect((await t.run('DELETE', `/volumes/${restored.id}`)).job?.state).toBe('succeeded');

    // The last one goes: none of the lineage's chunks is left in the index.
    expect((await t.run('DELETE', `/snapshots/${c.snapshotId}?from=image`)).job?.state).toBe('succeeded');
    for (const sha of new Set([...chunksA, ...chunksB, ...chunksC]))
      expect(await holders(sha)).toBeUndefined();
  }, 300_000);

  it('refuses a verify of a store that holds no chunks, and bad options, starting nothing', async () => {
    const pool = (await t.call('GET', '/stores?role=primary')).body.items[0];
    const before = (await t.call('GET', '/jobs?kind=backup.verify')).body.items.length;
    expect((await t.call('POST', `/stores/${pool.id}/verify`, {})).status).toBe(422);
    const image = (await t.call('GET', '/stores?role=image')).body.items[0];
    for (const body of [{ sample: 0 }, { sample: 2 }, { maxChunks: 0 }, { other: true }]) {
      const res = await t.call('POST', `/stores/${image.id}/verify`, body);
      expect(res.status).toBe(400);
    }
    expect((await t.call('POST', '/stores/ds-nope/verify', {})).status).toBe(404);
    expect((await t.call('GET', '/jobs?kind=backup.verify')).body.items.length).toBe(before);
  });
});
