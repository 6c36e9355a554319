/**
 * ImageService end to end on the embedded stack: real qcow2 images made with qemu-img, served by a
 * real HTTP server, registered through the API into the S3 emulator by the template-ingest workflow;
 * uploaded through the CLI with presigned multipart URLs; copied to a second image store; deleted.
 */

import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import {
  CreateBucketCommand,
  GetObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
} from '@aws-sdk/client-s3';
import { run } from '../../cli/main';
import { type ImageServer, startImageServer } from '../support/image-server';
import { tempDir, uniqueName } from '../support/integration';
import { startTestStack, type TestStack } from '../support/stack';

const exec = promisify(execFile);

let t: TestStack;
let server: ImageServer;
let dir: string;
let image: string;
let imageSha256: string;
let secondStoreId: string;
let secondBucket: string;

async function qemuImg(...args: string[]): Promise<string> {
  return (await exec('qemu-img', args)).stdout;
}

async function sha256(file: string): Promise<string> {
  return createHash('sha256')
    .update(await readFile(file))
    .digest('hex');
}

async function objectsIn(bucket: string, prefix?: string): Promise<string[]> {
  const out = await t.s3.send(
    new ListObjectsV2Command({ Bucket: bucket, ...(prefix ? { Prefix: prefix } : {}) }),
  );
  return (out.Contents ?? []).map((o) => o.Key!).filter((k) => !k.includes('.strata-probe'));
}

async function openUploads(bucket: string): Promise<number> {
  try {
    const out = await t.s3.send(new ListMultipartUploadsCommand({ Bucket: bucket }));
    return out.Uploads?.length ?? 0;
  } catch {
    return 0; // the emulator cannot list uploads; real S3 can (covered by the s3 driver's unit tests)
  }
}

async function objectSha256(bucket: string, key: string): Promise<string> {
  const out = await t.s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
  return createHash('sha256')
    .update(Buffer.from(await out.Body!.transformToByteArray()))
    .digest('hex');
}

async function register(body: Record<string, unknown>) {
  return t.call('POST', '/templates', { format: 'qcow2', zoneId: 'zone-1', ...body });
}

beforeAll(async () => {
  dir = await tempDir('strata-templates-');
  // A real qcow2: 64 MiB virtual, with written patterns (as a VM would leave them).
  image = path.join(dir, 'base.qcow2');
  await qemuImg('create', '-f', 'qcow2', image, '64M');
  await exec('qemu-io', ['-c', 'write -P 0xab 0 4M', '-c', 'write -P 0xcd 32M 2M', image]);
  imageSha256 = await sha256(image);
  server = await startImageServer();
  server.serve('/base.qcow2', { kind: 'file', path: image });
  t = await startTestStack({ fetchAllowlist: '127.0.0.1' });

  // The deployment grants its functions the stack's own image bucket (and any extraImageBuckets):
  // a second image store lives there under its own prefix.
  secondBucket = t.imageBucket;
  const res = await t.call('POST', '/stores', {
    name: 'images-b',
    provider: 's3',
    role: 'image',
    scope: { type: 'zone', zoneId: 'zone-1' },
    details: { bucket: secondBucket, prefix: 'second/' },
  });
  expect((await t.waitForJob(res.body.job.id)).state).toBe('succeeded');
  secondStoreId = res.body.store.id;
}, 90_000);

afterAll(async () => {
  await t?.stack.stop();
  await server?.close();
});

describe('register from a URL', () => {
  let templateId: string;

  it('with the right checksum ends Ready with the virtual size qemu-img reports', async () => {
    const res = await register({
      name: 'base',
      url: server.url('/base.qcow2'),
      checksum: `{sha256}${imageSha256}`,
    });
    expect(res.status).toBe(202);
    expect(res.headers.get('location')).toBe(`/jobs/${res.body.job.id}`);
    const job = await t.waitForJob(res.body.job.id);
    expect(job.state).toBe('succeeded');
    templateId = res.body.template.id;

    const tpl = (await t.call('GET', `/templates/${templateId}`)).body;
    const info = JSON.parse(await qemuImg('info', '--output=json', image));
    expect(tpl).toMatchObject({
      status: 'Ready',
      virtualSizeBytes: info['virtual-size'],
      checksum: `{sha256}${imageSha256}`,
    });
    expect(tpl.copies).toHaveLength(1);
    const copy = tpl.copies[0];
    expect(copy).toMatchObject({ status: 'Ready', checksum: `{sha256}${imageSha256}`, progress: 100 });
    expect(copy.sizeBytes).toBe((await readFile(image)).length);
    // Paths are relative to the store's prefix (`images/` for the bootstrap store).
    expect(await objectSha256(t.imageBucket, `images/${copy.path}`)).toBe(imageSha256);
  });

  it('without a checksum records the sha256 it computed', async () => {
    const res = await register({ name: 'no-sum', url: server.url('/base.qcow2') });
    expect((await t.waitForJob(res.body.job.id)).state).toBe('succeeded');
    const tpl = (await t.call('GET', `/templates/${res.body.template.id}`)).body;
    expect(tpl.checksum).toBe(`{sha256}${imageSha256}`);
  });

  it('accepts a bare md5 checksum', async () => {
    const md5 = createHash('md5')
      .update(await readFile(image))
      .digest('hex');
    const res = await register({ name: 'md5', url: server.url('/base.qcow2'), checksum: md5 });
    expect((await t.waitForJob(res.body.job.id)).state).toBe('succeeded');
  });

  it('with a wrong checksum ends Failed with the reason and leaves nothing in the bucket', async () => {
    const before = await objectsIn(t.imageBucket);
    const wrong = 'f'.repeat(64);
    const res = await register({ name: 'bad-sum', url: server.url('/base.qcow2'), checksum: wrong });
    const job = await t.waitForJob(res.body.job.id);
    expect(job.state).toBe('failed');
    expect(job.error.message).toContain('checksum mismatch');
    const tpl = (await t.call('GET', `/templates/${res.body.template.id}`)).body;
    expect(tpl.status).toBe('Failed');
    expect(tpl.copies[0].statusReason).toContain('checksum mismatch');
    expect(await objectsIn(t.imageBucket)).toEqual(before);
    expect(await openUploads(t.imageBucket)).toBe(0);
  });

  it('refuses a qcow2 with a backing file (it could read host files)', async () => {
    const child = path.join(dir, 'child.qcow2');
    await qemuImg('create', '-f', 'qcow2', '-b', image, '-F', 'qcow2', child);
    server.serve('/child.qcow2', { kind: 'file', path: child });
    const res = await register({ name: 'child', url: server.url('/child.qcow2') });
    const job = await t.waitForJob(res.body.job.id);
    expect(job.state).toBe('failed');
    expect(job.error.message).toMatch(/depends on another file/);
  });

  it('refuses a qcow2 declared as raw', async () => {
    const res = await register({ name: 'liar', url: server.url('/base.qcow2'), format: 'raw' });
    const job = await t.waitForJob(res.body.job.id);
    expect(job.state).toBe('failed');
    expect(job.error.message).toMatch(/qcow2/);
  });

  it('ends Failed on a truncated download and on a lying Content-Length', async () => {
    server.serve('/truncated.qcow2', { kind: 'truncated', path: image, sendBytes: 100_000 });
    server.serve('/lying.qcow2', { kind: 'lying-length', path: image, claimBytes: 50_000 });
    for (const p of ['/truncated.qcow2', '/lying.qcow2']) {
      const before = await objectsIn(t.imageBucket);
      const res = await register({ name: 'broken', url: server.url(p) });
      const job = await t.waitForJob(res.body.job.id);
      expect({ p, state: job.state }).toEqual({ p, state: 'failed' });
      expect(await objectsIn(t.imageBucket)).toEqual(before);
    }
  });

  it('ends Failed when a redirect leads to an internal address, fetching nothing there', async () => {
    server.serve('/to-metadata', { kind: 'redirect', location: 'http://169.254.169.254/latest/meta-data/' });
    const res = await register({ name: 'ssrf', url: server.url('/to-metadata') });
    const job = await t.waitForJob(res.body.job.id);
    expect(job.state).toBe('failed');
    expect(job.error.message).toMatch(/169\.254\.169\.254|link-local|metadata/i);
  });

  it.each([
    ['a non-http scheme', 'file:///etc/passwd'],
    ['credentials in the URL', 'http://user:pass@example.com/a.qcow2'],
    ['a loopback IPv6 literal', 'http://[::1]/a.qcow2'],
    ['the metadata address', 'http://169.254.169.254/latest/meta-data/'],
    ['a decimal IP for the metadata address', 'http://2852039166/'],
    ['an IPv4-mapped private address', 'http://[::ffff:10.0.0.1]/a.qcow2'],
  ])('answers 400 up front for %s, and creates nothing', async (_case, url) => {
    const before = (await t.call('GET', '/templates?limit=100')).body.items.length;
    const res = await register({ name: 'ssrf', url });
    expect(res.status).toBe(400);
    expect(res.body.error.field).toBe('url');
    expect((await t.call('GET', '/templates?limit=100')).body.items.length).toBe(before);
  });

  it.each([
    ['an unknown format', { format: 'vdi' }, 'format'],
    ['an ISO with a disk format', { type: 'iso', format: 'qcow2' }, 'format'],
    ['a malformed checksum', { checksum: 'not-hex' }, 'checksum'],
    ['no zone and no store', { zoneId: undefined }, 'zoneId'],
    ['an unknown field', { colour: 'red' }, 'colour'],
  ])('answers 4xx naming the field for %s', async (_case, patch, field) => {
    const res = await register({ name: 'x', url: server.url('/base.qcow2'), ...patch });
    expect(res.status).toBeGreaterThanOrEqual(400);
    expect(res.status).toBeLessThan(500);
    expect(res.body.error.field).toBe(field);
  });

  it('refuses with 422 an s3 image store in a bucket the deployment holds no grant for, and adds nothing', async () => {
    const foreign = uniqueName('images-x');
    await t.s3.send(new CreateBucketCommand({ Bucket: foreign }));
    const before = (await t.call('GET', '/stores?limit=100')).body.items.length;
    const res = await t.call('POST', '/stores', {
      name: 'images-x',
      provider: 's3',
      role: 'image',
      scope: { type: 'zone', zoneId: 'zone-1' },
      details: { bucket: foreign },
    });
    expect(res.status).toBe(422);
    expect(res.body.error.field).toBe('details.bucket');
    expect(res.body.error.message).toContain('extraImageBuckets');
    expect((await t.call('GET', '/stores?limit=100')).body.items.length).toBe(before);
  });

  it('copies a Ready template to a second image store with identical bytes, then deletes it from both', async () => {
    const res = await t.call('POST', `/templates/${templateId}/copies`, { storeId: secondStoreId });
    expect(res.status).toBe(202);
    const job = await t.waitForJob(res.body.job.id);
    expect(job.state).toBe('succeeded');
    expect(job.result.via).toBe('source-driver:s3');
    const tpl = (await t.call('GET', `/templates/${templateId}`)).body;
    const second = tpl.copies.find((c: { storeId: string }) => c.storeId === secondStoreId);
    expect(second.status).toBe('Ready');
    const keys = await objectsIn(secondBucket, 'second/');
    expect(keys).toHaveLength(1);
    expect(await objectSha256(secondBucket, keys[0]!)).toBe(imageSha256);
    expect(tpl.copies.every((c: { status: string }) => c.status === 'Ready')).toBe(true);

    // copying again to the same store is a conflict
    expect((await t.call('POST', `/templates/${templateId}/copies`, { storeId: secondStoreId })).status).toBe(
      409,
    );

    expect((await t.call('DELETE', `/templates/${templateId}`)).status).toBe(204);
    expect((await t.call('GET', `/templates/${templateId}`)).status).toBe(404);
    expect(await objectsIn(secondBucket, 'second/')).toEqual([]);
    const firstKeys = await objectsIn(t.imageBucket, 'images/');
    expect(firstKeys.some((k) => k.includes(templateId))).toBe(false);
  });

  it('refuses to delete a template whose primary-storage cache copy is referenced', async () => {
    const res = await register({ name: 'in-use', url: server.url('/base.qcow2') });
    await t.waitForJob(res.body.job.id);
    const id = res.body.template.id;
    const primary = (await t.call('GET', '/stores?role=primary')).body.items[0];
    await t.repo.create('TemplateInStore', {
      templateId: id,
      storeId: primary.id,
      storeRole: 'primary',
      status: 'Ready',
      refCount: 2,
      path: `templates/${id}.qcow2`,
    });
    const refused = await t.call('DELETE', `/templates/${id}`);
    expect(refused.status).toBe(409);
    expect(refused.body.error.code).toBe('NotAllowed');
    expect(refused.body.error.dependents[0]).toContain(primary.id);
    expect((await t.call('GET', `/templates/${id}`)).body.status).toBe('Ready');
  });
});

describe('upload from the operator machine through the CLI', () => {
  it('uploads a local file with presigned parts and ends Ready after verification', async () => {
    let out = '';
    let err = '';
    const code = await run(
      ['templates', 'upload', image, '--name', 'uploaded', '--zone', 'zone-1', '--json'],
      {
        stdout: {
          write: (s: string) => {
            out += s;
            return true;
          },
        } as never,
        stderr: {
          write: (s: string) => {
            err += s;
            return true;
          },
        } as never,
        env: { STRATA_API_URL: t.url, STRATA_API_TOKEN: t.stack.apiTokens.operator },
      },
    );
    expect({ code, err }).toEqual({ code: 0, err: expect.any(String) });
    const list = (await t.call('GET', '/templates?name=uploaded')).body.items;
    expect(out).toContain(list[0].id);
    expect(list).toHaveLength(1);
    expect(list[0]).toMatchObject({ status: 'Ready', checksum: `{sha256}${imageSha256}` });
    const copy = list[0].copies[0];
    const keys = await objectsIn(t.imageBucket);
    const key = keys.find((k) => k.includes(list[0].id));
    expect(await objectSha256(t.imageBucket, key!)).toBe(imageSha256);
    expect(copy.sizeBytes).toBe((await readFile(image)).length);
  });

  it('fails verification when the uploaded bytes do not match the declared checksum, leaving nothing', async () => {
    const start = await t.call('POST', '/templates/uploads', {
      name: 'bad-upload',
      format: 'qcow2',
      sizeBytes: (await readFile(image)).length,
      checksum: `{sha256}${'0'.repeat(64)}`,
      zoneId: 'zone-1',
    });
    expect(start.status).toBe(201);
    const { upload, template } = start.body;
    const bytes = await readFile(image);
    const parts: { partNumber: number; etag: string }[] = [];
    for (const part of upload.parts) {
      const from = (part.partNumber - 1) * upload.partSizeBytes;
      const res = await fetch(part.url, {
        method: 'PUT',
        body: bytes.subarray(from, from + upload.partSizeBytes),
      });
      expect(res.status).toBe(200);
      parts.push({ partNumber: part.partNumber, etag: res.headers.get('etag')! });
    }
    const done = await t.call(
      'POST',
      `/templates/${template.id}/uploads/${encodeURIComponent(upload.uploadId)}/complete`,
      {
        parts,
      },
    );
    expect(done.status).toBe(202);
    const job = await t.waitForJob(done.body.job.id);
    expect(job.state).toBe('failed');
    expect(job.error.message).toContain('checksum mismatch');
    expect((await objectsIn(t.imageBucket)).some((k) => k.includes(template.id))).toBe(false);
  });

  it('aborts an upload on request and forgets the template', async () => {
    const start = await t.call('POST', '/templates/uploads', {
      name: 'abandoned',
      format: 'raw',
      sizeBytes: 10 * 2 ** 20,
      zoneId: 'zone-1',
    });
    const { upload, template } = start.body;
    expect(
      (await t.call('DELETE', `/templates/${template.id}/uploads/${encodeURIComponent(upload.uploadId)}`))
        .status,
    ).toBe(204);
    expect((await t.call('GET', `/templates/${template.id}`)).status).toBe(404);
  });
});
