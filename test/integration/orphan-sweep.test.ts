/**
 * The orphan sweep on the embedded stack (the synthesized assembly: the API route, the orphan-sweep
 * flow, the store-tasks function with its own role, the S3 proxy). On the default image store it
 * plants at least 100 orphans of each kind — objects no row owns, abandoned multipart uploads,
 * chunks no manifest holds (indexed and not), stale collection claims — next to look-alikes that
 * must survive: objects outside Strata's prefixes, young objects, uploads and chunks, an object
 * named after a live template, chunks held by a running job. The dry run reports every orphan and
 * deletes nothing; the real run deletes exactly the orphans; a second run finds nothing.
 */
import { createHash } from 'node:crypto';
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import {
  AbortMultipartUploadCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  type S3Client as S3,
  S3Client,
} from '@aws-sdk/client-s3';
import { DynamoDBDocumentClient } from '@aws-sdk/lib-dynamodb';
import { DynamoRepository } from '../../functions/adapters/aws/dynamo-repository';
import { STALE_CLAIM_MS } from '../../functions/core/ports';
import { localDynamoClientConfig } from '../../infra/local/dynamodb-local';
import { localS3ClientConfig } from '../../infra/local/s3-emulator';
import { integrationEndpoints } from '../support/integration';
import { startTestStack, type TestStack } from '../support/stack';

const N = 100;
/** The sweep's windows in this test, in seconds (its schema's minimum is 1 for this reason). */
const WINDOW = 10;
const LOOKALIKES = 10;
const hash = (s: string) => createHash('sha256').update(s).digest('hex');
const chunkKey = (h: string) => `backups/chunks/${h.slice(0, 2)}/${h}`;

let t: TestStack;
let proxied: S3;
/** Template uploads are started by the api function (store-tasks may only list and abort them). */
let uploader: S3;
let storeId: string;
let past: DynamoRepository;

/** The default image store's prefix in its bucket; the paths below are relative to it. */
const P = 'images/';

async function put(key: string) {
  await t.s3.send(new PutObjectCommand({ Bucket: t.imageBucket, Key: P + key, Body: `body of ${key}` }));
}

async function keys(prefix = ''): Promise<Set<string>> {
  const found = new Set<string>();
  let token: string | undefined;
  do {
    const page = await t.s3.send(
      new ListObjectsV2Command({ Bucket: t.imageBucket, Prefix: prefix, ContinuationToken: token }),
    );
    for (const o of page.Contents ?? []) if (o.Key?.startsWith(P)) found.add(o.Key.slice(P.length));
    token = page.NextContinuationToken;
  } while (token);
  return found;
}

async function upload(key: string) {
  await uploader.send(new CreateMultipartUploadCommand({ Bucket: t.imageBucket, Key: P + key }));
}

async function sweep(dryRun: boolean) {
  const res = await t.run('POST', '/sweeps', {
    dryRun,
    storeIds: [storeId],
    objectGraceSeconds: WINDOW,
    uploadGraceSeconds: WINDOW,
    chunkGraceSeconds: WINDOW,
  });
  expect(res.status).toBe(202);
  expect(res.job).toMatchObject({ state: 'succeeded' });
  return res.job.result;
}

const orphans = {
  objects: Array.from({ length: N }, (_, i) => `templates/tpl-gone-${i}/tpl-gone-${i}.qcow2`),
  uploads: Array.from({ length: N }, (_, i) => `templates/tpl-up-${i}/tpl-up-${i}.qcow2`),
  unheld: Array.from({ length: N }, (_, i) => hash(`unheld ${i}`)),
  unindexed: Array.from({ length: N }, (_, i) => hash(`unindexed ${i}`)),
  claimed: Array.from({ length: N }, (_, i) => hash(`claimed ${i}`)),
};
const lookalikes = {
  outside: Array.from({ length: LOOKALIKES }, (_, i) => `elsewhere/tpl-gone-${i}.qcow2`),
  young: Array.from({ length: LOOKALIKES }, (_, i) => `volumes/vol-young-${i}.qcow2`),
  live: Array.from({ length: LOOKALIKES }, (_, i) => `templates/tpl-live/part-${i}`),
  youngUploads: Array.from({ length: LOOKALIKES }, (_, i) => `templates/tpl-later-${i}/x.qcow2`),
  held: Array.from({ length: LOOKALIKES }, (_, i) => hash(`held ${i}`)),
  youngChunks: Array.from({ length: LOOKALIKES }, (_, i) => hash(`young chunk ${i}`)),
};

beforeAll(async () => {
  t = await startTestStack();
  const stores = (await t.call('GET', '/stores?role=image')).body.items as Array<{
    id: string;
    provider: string;
  }>;
  storeId = stores.find((s) => s.provider === 's3')!.id;
  const creds = t.stack.credentialsFor('StoreTasksRole');
  proxied = new S3Client({ ...localS3ClientConfig(t.stack.endpoints.s3Proxy), credentials: creds });
  uploader = new S3Client({
    ...localS3ClientConfig(t.stack.endpoints.s3Proxy),
    credentials: t.stack.credentialsFor('ApiRole'),
  });
  const doc = DynamoDBDocumentClient.from(
    new DynamoDBClient(localDynamoClientConfig(integrationEndpoints().dynamo)),
    {
      marshallOptions: { removeUndefinedValues: true },
    },
  );
  // Claims made by a collector that died half an hour ago.
  past = new DynamoRepository({
    tableName: t.stack.tableName,
    client: doc,
    clock: { now: () => new Date(Date.now() - STALE_CLAIM_MS - 10 * 60_000) },
  });

  // A live template and a running job, which look-alikes name.
  await t.repo.create('Template', {
    id: 'tpl-live',
    name: 'live',
    format: 'qcow2',
    kind: 'template',
    status: 'Ready',
  } as never);
  await t.repo.create('Job', {
    id: 'job-backup-running',
    kind: 'snapshot.backup',
    target: { type: 'snapshot', id: 'snap-x' },
    state: 'running',
    progress: 10,
  });

  // The old ones.
  for (const key of [...orphans.objects, ...lookalikes.outside, ...lookalikes.live]) await put(key);
  // Outside the store's prefix altogether: not the store's to judge.
  await t.s3.send(
    new PutObjectCommand({ Bucket: t.imageBucket, Key: 'templates/tpl-gone-0/x.qcow2', Body: 'x' }),
  );
  for (const key of orphans.uploads) await upload(key);
  await t.repo.chunks.pin(storeId, orphans.unheld, 'snap-deleted');
  await t.repo.chunks.release(storeId, orphans.unheld, 'snap-deleted', { collect: false });
  for (const h of [...orphans.unheld, ...orphans.unindexed, ...orphans.claimed]) await put(chunkKey(h));
  await past.chunks.pin(storeId, orphans.claimed, 'snap-gone');
  const { collectable } = await past.chunks.release(storeId, orphans.claimed, 'snap-gone', { collect: true });
  expect(collectable).toHaveLength(N);
  await t.repo.chunks.pin(storeId, lookalikes.held, 'job-backup-running');
  for (const h of lookalikes.held) await put(chunkKey(h));

  await new Promise((r) => setTimeout(r, (WINDOW + 1) * 1000));
}, 240_000);

/** Young look-alikes: written just before a sweep, well inside its windows. */
async function plantYoung() {
  for (const key of lookalikes.young) await put(key);
  for (const key of lookalikes.youngUploads) await upload(key);
  await t.repo.chunks.pin(storeId, lookalikes.youngChunks, 'snap-deleted-later');
  await t.repo.chunks.release(storeId, lookalikes.youngChunks, 'snap-deleted-later', { collect: false });
  for (const h of lookalikes.youngChunks) await put(chunkKey(h));
}

/** The young look-alikes grow old while the test runs: take them away before the second run. */
async function removeYoung() {
  for (const key of [...lookalikes.young, ...lookalikes.youngChunks.map(chunkKey)]) {
    await t.s3.send(new DeleteObjectCommand({ Bucket: t.imageBucket, Key: P + key }));
  }
  const listed = await proxied.send(new ListMultipartUploadsCommand({ Bucket: t.imageBucket }));
  for (const u of listed.Uploads ?? []) {
    if (lookalikes.youngUploads.includes(u.Key!.slice(P.length))) {
      await proxied.send(
        new AbortMultipartUploadCommand({ Bucket: t.imageBucket, Key: u.Key!, UploadId: u.UploadId! }),
      );
    }
  }
  const { collectable } = await t.repo.chunks.release(storeId, lookalikes.youngChunks, 'none', {
    collect: true,
  });
  await t.repo.chunks.forget(storeId, collectable);
}

afterAll(async () => {
  proxied?.destroy();
  uploader?.destroy();
  await t?.stack.stop();
});

describe('orphan sweep', () => {
  it('the dry run reports every orphan, of every kind, and deletes nothing', async () => {
    const before = await keys();
    const report = await sweep(true);
    expect(report.counts).toEqual({ object: N, upload: N, chunk: 2 * N, claim: N });
    expect(report.deleted).toBe(0);
    const refs = new Set((report.findings as Array<{ ref: string }>).map((f) => f.ref));
    for (const path of orphans.objects) expect(refs.has(path)).toBe(true);
    for (const h of [...orphans.unheld, ...orphans.unindexed]) expect(refs.has(h)).toBe(true);
    // Only the first 500 findings are kept on the job; the counts cover them all.
    expect(report.findingsTruncated).toBe(false);
    expect(await keys()).toEqual(before);
  }, 120_000);

  it('the real run deletes exactly the orphans; a second run finds nothing', async () => {
    await plantYoung();
    const report = await sweep(false);
    expect(report.counts).toEqual({ object: N, upload: N, chunk: 2 * N, claim: N });
    expect(
      (report.findings as Array<{ action: string }>).filter((f) => f.action !== 'deleted').slice(0, 2),
    ).toEqual([]);
    expect(report.failed).toBe(0);
    expect(report.deleted).toBe(5 * N);

    const left = await keys();
    for (const path of orphans.objects) expect(left.has(path)).toBe(false);
    for (const h of [...orphans.unheld, ...orphans.unindexed, ...orphans.claimed]) {
      expect(left.has(chunkKey(h))).toBe(false);
      expect(await t.repo.chunks.holders(storeId, h)).toBeUndefined();
    }
    // Every look-alike is still there.
    for (const path of [...lookalikes.outside, ...lookalikes.young, ...lookalikes.live]) {
      expect(left.has(path)).toBe(true);
    }
    for (const h of [...lookalikes.held, ...lookalikes.youngChunks]) expect(left.has(chunkKey(h))).toBe(true);
    const root = await t.s3.send(new ListObjectsV2Command({ Bucket: t.imageBucket, Prefix: 'templates/' }));
    expect(root.Contents?.map((o) => o.Key)).toEqual(['templates/tpl-gone-0/x.qcow2']);
    expect((await t.repo.chunks.holders(storeId, lookalikes.held[0]!))?.holders).toEqual([
      'job-backup-running',
    ]);

    const uploadsLeft = await proxied.send(new ListMultipartUploadsCommand({ Bucket: t.imageBucket }));
    expect((uploadsLeft.Uploads ?? []).map((u) => u.Key!.slice(P.length)).sort()).toEqual(
      [...lookalikes.youngUploads].sort(),
    );

    await removeYoung();
    const again = await sweep(false);
    expect(again.counts).toEqual({ object: 0, upload: 0, chunk: 0, claim: 0 });
  }, 180_000);

  it('is recorded as a job that lists its findings, and refuses bad options naming the field', async () => {
    const bad = await t.call('POST', '/sweeps', { dryRun: 'yes' });
    expect(bad.status).toBe(400);
    expect(JSON.stringify(bad.body)).toContain('dryRun');
    const jobs = await t.call('GET', '/jobs?kind=reconcile.sweep&limit=100');
    expect(jobs.status).toBe(200);
  });
});
