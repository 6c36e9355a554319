/**
 * No grant outlives its step (issue 11): a template install, a staged migration, a backup, a
 * restore and an operator upload with an Idempotency-Key run on the embedded stack while the test
 * records every SSM command's parameters and, from a send hook (before the host runs, while the
 * plan still exists), the plan files the commands point at (`uploadsUrl`, the restore's
 * `chunkPagesUrl` index and the pages it names). Every
 * presigned URL found must expire within 30 minutes of its signing (these objects are small, so
 * grants.ts gives them its 15-minute base plus seconds), idempotency records must hold no
 * signature at all, and no plan may be left once the jobs end.
 */
import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { ListObjectsV2Command } from '@aws-sdk/client-s3';
import { DynamoDBDocumentClient, ScanCommand } from '@aws-sdk/lib-dynamodb';
import { decodeHostRequest } from '../../drivers/sdk/host-protocol';
import { localDynamoClientConfig } from '../../infra/local/dynamodb-local';
import { startImageServer } from '../support/image-server';
import { integrationEndpoints, tempDir } from '../support/integration';
import { startTestStack, type TestStack } from '../support/stack';

const exec = promisify(execFile);
const MiB = 2 ** 20;
/** The bound for these small objects: grants.ts's base (15 min) plus seconds, well under this. */
const BOUND_SECONDS = 30 * 60;

/** Every presigned URL in a text (a JSON document, a decoded request), unescaped. */
function presignedUrls(text: string): string[] {
  return [...text.matchAll(/https?:\/\/[^"\s\\]+X-Amz-[^"\s\\]*/g)].map((m) => m[0].replace(/\\u0026/g, '&'));
}

/** Seconds from signing to expiry of a presigned URL (X-Amz-Date + X-Amz-Expires). */
function lifetime(url: string): { expires: number; signedAt: number } {
  const q = new URL(url).searchParams;
  const date = q.get('X-Amz-Date');
  const expires = Number(q.get('X-Amz-Expires'));
  if (!date || !Number.isFinite(expires)) throw new Error(`not a presigned URL: ${url.slice(0, 120)}`);
  const signedAt = Date.parse(
    `${date.slice(0, 4)}-${date.slice(4, 6)}-${date.slice(6, 8)}T${date.slice(9, 11)}:${date.slice(11, 13)}:${date.slice(13, 15)}Z`,
  );
  return { expires, signedAt };
}

describe('grants live no longer than the step that uses them', () => {
  let t: TestStack;
  let server: Awaited<ReturnType<typeof startImageServer>>;
  const plans: Array<{ field: string; text: string }> = [];
  const planFetchErrors: string[] = [];

  beforeAll(async () => {
    const dir = await tempDir('strata-grants-');
    const template = path.join(dir, 'template.qcow2');
    await exec('qemu-img', ['create', '-f', 'qcow2', template, '16M']);
    await exec('qemu-io', ['-c', 'write -P 0x5a 0 2M', template]);
    server = await startImageServer();
    server.serve('/template.qcow2', { kind: 'file', path: template });
    t = await startTestStack({ fetchAllowlist: '127.0.0.1' });
    // Before the command reaches a host: the plan it names exists (it is removed at the job's end).
    t.stack.ssm.onSend(async (parameters) => {
      if (!parameters.Request) return;
      const args = decodeHostRequest(parameters.Request).args as Record<string, unknown>;
      for (const field of ['uploadsUrl', 'chunksUrl', 'chunkPagesUrl'] as const) {
        const url = args[field];
        if (typeof url !== 'string') continue;
        const res = await fetch(url);
        if (!res.ok) {
          planFetchErrors.push(`${field}: ${res.status}`);
          continue;
        }
        const text = await res.text();
        plans.push({ field, text });
        // A paged restore list: the index names its pages, which hold the chunk grants.
        if (field === 'chunkPagesUrl') {
          for (const page of (JSON.parse(text) as { pages: string[] }).pages) {
            const pageRes = await fetch(page);
            if (pageRes.ok) plans.push({ field: 'chunkPagesUrl page', text: await pageRes.text() });
            else planFetchErrors.push(`chunkPagesUrl page: ${pageRes.status}`);
          }
        }
      }
    });
  }, 120_000);

  afterAll(async () => {
    await t?.stack.stop();
    await server?.close();
  });

  it('in SSM parameters, plans and idempotency records', async () => {
    const dynamo = DynamoDBDocumentClient.from(
      new DynamoDBClient(localDynamoClientConfig(integrationEndpoints().dynamo)),
    );
    // Template install onto a pool (volume from template).
    const reg = await t.call('POST', '/templates', {
      name: 'grant-template',
      url: server.url('/template.qcow2'),
      format: 'qcow2',
      zoneId: 'zone-1',
    });
    expect((await t.waitForJob(reg.body.job.id)).state).toBe('succeeded');
    const created = await t.call('POST', '/volumes', {
      name: 'grant-vm',
      zoneId: 'zone-1',
      templateId: reg.body.template.id,
    });
    expect((await t.waitForJob(created.body.job.id, 60_000)).state).toBe('succeeded');
    const volumeId = created.body.volume.id as string;

    // Backup, then restore from it.
    const taken = await t.call('POST', `/volumes/${volumeId}/snapshots`, {
      name: 'grant-snap',
      backup: true,
    });
    expect(taken.status).toBe(202);
    const backupJob = await t.waitForJob(taken.body.job.id, 60_000);
    expect({ state: backupJob.state, error: backupJob.error }).toEqual({
      state: 'succeeded',
      error: undefined,
    });
    const restored = await t.call('POST', '/volumes', {
      name: 'grant-restored',
      zoneId: 'zone-1',
      fromSnapshotId: taken.body.snapshot.id,
      restoreFrom: 'backup',
    });
    expect(restored.status).toBe(202);
    expect((await t.waitForJob(restored.body.job.id, 60_000)).state).toBe('succeeded');

    // Staged migration: two host-local stores no single host reaches.
    const addLocal = async (name: string, hostId: string) => {
      const share = await t.newShare(name);
      const res = await t.call('POST', '/stores', {
        name,
        provider: 'nfs',
        role: 'primary',
        scope: { type: 'host', zoneId: 'zone-1', hostId },
        capacityBytes: 20 * 2 ** 30,
        details: { server: '127.0.0.1', export: `/${name}`, mountPath: share },
      });
      expect((await t.waitForJob(res.body.job.id)).state).toBe('succeeded');
      return res.body.store.id as string;
    };
    const a = await addLocal('grants-a', t.hostId(1));
    const b = await addLocal('grants-b', t.hostId(2));
    const roamer = await t.call('POST', '/volumes', {
      name: 'roamer',
      zoneId: 'zone-1',
      sizeBytes: 8 * MiB,
      storeId: a,
    });
    expect((await t.waitForJob(roamer.body.job.id)).state).toBe('succeeded');
    const moved = await t.call('POST', `/volumes/${roamer.body.volume.id}/migrate`, { storeId: b });
    const moveJob = await t.waitForJob(moved.body.job.id, 120_000);
    expect({ state: moveJob.state, via: moveJob.result?.via }).toEqual({
      state: 'succeeded',
      via: 'image-store',
    });

    // Operator upload with an Idempotency-Key, replayed; then fresh URLs from the parts route.
    const request = { name: 'grant-upload', format: 'raw', sizeBytes: 300 * MiB, zoneId: 'zone-1' };
    const key = { 'idempotency-key': 'grants-upload-1' };
    const first = await t.call('POST', '/templates/uploads', request, key);
    expect(first.status).toBe(201);
    expect(first.body.upload.parts.length).toBeGreaterThanOrEqual(2);
    expect(first.body.upload.parts.every((p: { url: string }) => typeof p.url === 'string')).toBe(true);
    const replay = await t.call('POST', '/templates/uploads', request, key);
    expect(replay.headers.get('idempotent-replayed')).toBe('true');
    expect(replay.body).toMatchObject({
      grantsOmitted: true,
      template: { id: first.body.template.id },
      upload: { uploadId: first.body.upload.uploadId },
    });
    expect(
      replay.body.upload.parts.map((p: { partNumber: number; url: null }) => [p.partNumber, p.url]),
    ).toEqual(first.body.upload.parts.map((p: { partNumber: number }) => [p.partNumber, null]));
    const { template, upload } = first.body;
    const partsPath = `/templates/${template.id}/uploads/${encodeURIComponent(upload.uploadId)}/parts`;
    const renewed = await t.call(
      'POST',
      partsPath,
      { partNumbers: [2, 1] },
      { 'idempotency-key': 'grants-parts-1' },
    );
    expect({ status: renewed.status, error: renewed.body.error }).toEqual({ status: 200, error: undefined });
    expect(renewed.body.parts.map((p: { partNumber: number }) => p.partNumber)).toEqual([1, 2]);
    const grants = [...first.body.upload.parts, ...renewed.body.parts].map((p: { url: string }) =>
      lifetime(p.url),
    );
    // Operator part URLs: 1 h (UPLOAD_GRANT_SECONDS), not the upload's 24 h.
    expect(Math.max(...grants.map((g) => g.expires))).toBe(3600);
    expect((await t.call('POST', partsPath, { partNumbers: [0] })).status).toBe(400);
    expect((await t.call('POST', partsPath, { partNumbers: [99] })).status).toBe(400);
    // Once the upload is abandoned, no more URLs for it.
    expect(
      (await t.call('DELETE', `/templates/${template.id}/uploads/${encodeURIComponent(upload.uploadId)}`))
        .status,
    ).toBe(204);
    expect([404, 409]).toContain((await t.call('POST', partsPath, { partNumbers: [1] })).status);

    // Every SSM command parameter.
    const sent = t.stack.ssm.sentParameters();
    const fromSsm: Array<{ where: string; url: string }> = [];
    for (const parameters of sent) {
      for (const [name, value] of Object.entries(parameters)) {
        const text = name === 'Request' ? JSON.stringify(decodeHostRequest(value)) : value;
        for (const url of presignedUrls(text)) fromSsm.push({ where: `ssm:${name}`, url });
      }
    }
    // The install's sourceUrl, the staging parts and GET, the backup's and restore's plan URLs.
    const operations = sent.filter((p) => p.Request).map((p) => decodeHostRequest(p.Request!).operation);
    expect(fromSsm.length).toBeGreaterThanOrEqual(4);
    expect(operations.length).toBeGreaterThan(0);

    // The backup's one grant for its uploads: a POST policy scoped to its job's staging prefix,
    // living no longer than the other grants of so small a disk.
    const stagings = sent
      .filter((p) => p.Request)
      .map((p) => decodeHostRequest(p.Request!).args as { staging?: { fields: Record<string, string> } })
      .flatMap((a) => (a.staging ? [a.staging] : []));
    expect(stagings).toHaveLength(1);
    const fields = stagings[0]!.fields;
    const policy = JSON.parse(Buffer.from(fields.policy!, 'base64').toString('utf8')) as {
      expiration: string;
      conditions: unknown[];
    };
    const d = fields['x-amz-date']!;
    const postSignedAt = Date.parse(
      `${d.slice(0, 4)}-${d.slice(4, 6)}-${d.slice(6, 8)}T${d.slice(9, 11)}:${d.slice(11, 13)}:${d.slice(13, 15)}Z`,
    );
    const postLifetime = (Date.parse(policy.expiration) - postSignedAt) / 1000;
    expect(postLifetime).toBeGreaterThan(0);
    expect(postLifetime).toBeLessThanOrEqual(BOUND_SECONDS);
    expect(policy.conditions).toContainEqual([
      'starts-with',
      '$key',
      `images/backups/plans/${backupJob.id}/staging/`,
    ]);
    expect(policy.conditions).toContainEqual(['content-length-range', 0, 4 * MiB]);

    // Every plan the commands pointed at: the restore list's index and its pages (the backup
    // needed no upload list).
    expect(planFetchErrors).toEqual([]);
    expect(plans.map((p) => p.field).sort()).toEqual(
      expect.arrayContaining(['chunkPagesUrl', 'chunkPagesUrl page']),
    );
    const fromPlans = plans.flatMap((p) =>
      presignedUrls(p.text).map((url) => ({ where: `plan:${p.field}`, url })),
    );
    expect(fromPlans.length).toBeGreaterThan(0);

    const tooLong = [...fromSsm, ...fromPlans]
      .map((g) => ({ where: g.where, ...lifetime(g.url) }))
      .filter((g) => g.expires <= 0 || g.expires > BOUND_SECONDS);
    expect(tooLong).toEqual([]);

    // Every idempotency record: no signature at all.
    // The whole table, scanned: idempotency items are in no listing index.
    const records: Array<Record<string, unknown>> = [];
    let start: Record<string, unknown> | undefined;
    do {
      const page = await dynamo.send(
        new ScanCommand({ TableName: t.stack.tableName, ExclusiveStartKey: start }),
      );
      records.push(...(page.Items ?? []).filter((i) => i.entityType === 'Idempotency'));
      start = page.LastEvaluatedKey;
    } while (start);
    expect(records.length).toBeGreaterThan(0);
    const signed = records.filter((r) => /X-Amz-Signature/i.test(JSON.stringify(r)));
    expect(signed).toEqual([]);
    expect(records.some((r) => String(r.body).includes('"grantsOmitted":true'))).toBe(true);

    // No plan outlives its job.
    const left = await t.s3.send(
      new ListObjectsV2Command({ Bucket: t.imageBucket, Prefix: 'images/backups/plans/' }),
    );
    expect(left.Contents ?? []).toEqual([]);
  }, 300_000);
});
