/**
 * Image safety end to end on the embedded stack: hostile images built with qemu-img, mkisofs and
 * byte patches (../support/hostile-images.ts) are registered by URL from a real HTTP server and
 * uploaded through presigned multipart URLs; every one ends failed with its refusal, leaving no
 * object behind. Safe images of the other formats end Ready with qemu-img info's virtual size.
 */
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { promisify } from 'node:util';
import { ListObjectsV2Command } from '@aws-sdk/client-s3';
import { type BuiltImage, buildHostileImages, buildSafeImages } from '../support/hostile-images';
import { type ImageServer, startImageServer } from '../support/image-server';
import { tempDir } from '../support/integration';
import { startTestStack, type TestStack } from '../support/stack';

const exec = promisify(execFile);

let t: TestStack;
let server: ImageServer;
let hostile: BuiltImage[];
let safe: BuiltImage[];

/** What each refusal says in the job's error (the public text of UnsafeImageError / FormatMismatchError). */
const MESSAGE: Record<string, RegExp> = {
  'unsupported-feature': /unsupported feature: unknown incompatible feature bit/,
  'external-data-file': /keeps its data in another file/,
  'multiple-formats': /matches more than one format \(qcow2, iso\)/,
  malformed: /header is malformed: stream footer marker invalid/,
};

const HOSTILE = [
  'qcow2 with an unknown incompatible feature bit',
  'vmdk monolithicFlat descriptor (extent in flat-flat.vmdk)',
  'ISO 9660 with a qcow2 header in its system area, declared qcow2',
  'streamOptimized vmdk with an invalid footer marker',
];
const SAFE = [
  'vmdk streamOptimized, 10 MiB + 512 B',
  'vmdk streamOptimized with a footer at the end',
  'ISO 9660 + UDF bridge',
  'raw, 3 MiB + 7 B',
  'vhd dynamic, 10 MiB + 512 B',
  'vhd fixed, 1 MiB',
];

const find = (images: BuiltImage[], name: string) => images.find((i) => i.name === name)!;

function templateBody(image: BuiltImage, name: string) {
  return image.declared === 'iso'
    ? { name, type: 'iso', format: 'iso', zoneId: 'zone-1' }
    : { name, format: image.declared, zoneId: 'zone-1' };
}

async function register(image: BuiltImage, name: string) {
  server.serve(`/${name}`, { kind: 'file', path: image.path });
  const res = await t.call('POST', '/templates', {
    ...templateBody(image, name),
    url: server.url(`/${name}`),
  });
  expect(res.status).toBe(202);
  return { job: await t.waitForJob(res.body.job.id), templateId: res.body.template.id as string };
}

async function upload(image: BuiltImage, name: string) {
  const bytes = await readFile(image.path);
  const start = await t.call('POST', '/templates/uploads', {
    ...templateBody(image, name),
    sizeBytes: bytes.length,
  });
  expect(start.status).toBe(201);
  const { upload: session, template } = start.body;
  const parts: { partNumber: number; etag: string }[] = [];
  for (const part of session.parts) {
    const from = (part.partNumber - 1) * session.partSizeBytes;
    const res = await fetch(part.url, {
      method: 'PUT',
      body: bytes.subarray(from, from + session.partSizeBytes),
    });
    expect(res.status).toBe(200);
    parts.push({ partNumber: part.partNumber, etag: res.headers.get('etag')! });
  }
  const done = await t.call(
    'POST',
    `/templates/${template.id}/uploads/${encodeURIComponent(session.uploadId)}/complete`,
    { parts },
  );
  expect(done.status).toBe(202);
  return { job: await t.waitForJob(done.body.job.id), templateId: template.id as string };
}

async function keysOf(templateId: string): Promise<string[]> {
  const out = await t.s3.send(new ListObjectsV2Command({ Bucket: t.imageBucket }));
  return (out.Contents ?? []).map((o) => o.Key!).filter((k) => k.includes(templateId));
}

async function qemuVirtualSize(image: BuiltImage): Promise<number> {
  const { stdout } = await exec('qemu-img', ['info', '--output=json', '-f', image.qemuFormat, image.path]);
  return (JSON.parse(stdout) as { 'virtual-size': number })['virtual-size'];
}

beforeAll(async () => {
  const dir = await tempDir('strata-image-safety-');
  [hostile, safe] = await Promise.all([buildHostileImages(dir), buildSafeImages(dir)]);
  server = await startImageServer();
  t = await startTestStack({ fetchAllowlist: '127.0.0.1' });
}, 90_000);

afterAll(async () => {
  await t?.stack.stop();
  await server?.close();
});

describe('hostile images', () => {
  it.each(HOSTILE)('%s: registered by URL and uploaded, both end failed and leave nothing', async (name) => {
    const image = find(hostile, name);
    const slug = `hostile-${HOSTILE.indexOf(name)}`;
    for (const [how, outcome] of [
      ['register', await register(image, `${slug}.img`)],
      ['upload', await upload(image, `${slug}-up`)],
    ] as const) {
      expect({ how, state: outcome.job.state }).toEqual({ how, state: 'failed' });
      expect(outcome.job.error.message).toMatch(MESSAGE[image.refusal!]!);
      const tpl = (await t.call('GET', `/templates/${outcome.templateId}`)).body;
      expect(tpl.status).not.toBe('Ready');
      expect(await keysOf(outcome.templateId)).toEqual([]);
    }
  });
});

describe('safe images', () => {
  it.each(SAFE)('%s: registered by URL, ends Ready with qemu-img info virtual size', async (name) => {
    const image = find(safe, name);
    const { job, templateId } = await register(image, `safe-${SAFE.indexOf(name)}.img`);

    expect(job.state).toBe('succeeded');
    const tpl = (await t.call('GET', `/templates/${templateId}`)).body;
    expect(tpl).toMatchObject({ status: 'Ready', virtualSizeBytes: await qemuVirtualSize(image) });
  });

  it('an odd-size raw uploaded through presigned parts ends Ready with qemu-img info virtual size', async () => {
    const image = find(safe, 'raw, 3 MiB + 7 B');
    const { job, templateId } = await upload(image, 'safe-upload');

    expect(job.state).toBe('succeeded');
    const tpl = (await t.call('GET', `/templates/${templateId}`)).body;
    expect(tpl).toMatchObject({ status: 'Ready', virtualSizeBytes: await qemuVirtualSize(image) });
  });
});
