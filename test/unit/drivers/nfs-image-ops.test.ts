import { copyFile, mkdir, mkdtemp, readdir, rename, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { nfsHostOperations } from '../../../drivers/nfs/host-ops.js';
import { createNfsProvider } from '../../../drivers/nfs/provider.js';
import {
  createNfsTemplateInstallStrategy,
  NFS_TEMPLATE_INSTALL_STRATEGY,
} from '../../../drivers/nfs/template-install.js';
import { HostStorage } from '../../../drivers/sdk/host-config.js';
import { createInProcessHostInvoker } from '../../../drivers/sdk/host-runtime.js';
import { createTestDriverContext } from '../../../drivers/sdk/testing.js';
import type { DataStoreInfo, HostInvoker } from '../../../drivers/sdk/types.js';
import {
  type ImageServer,
  MiB,
  makeTestImages,
  run,
  sha256,
  startImageServer,
  type TestImages,
} from './nfs-image-server.js';

jest.setTimeout(30_000);

let root: string;
let share: string;
let share2: string;
let outside: string;
let images: TestImages;
let server: ImageServer;
let host: HostInvoker;
let progress: { percent: number; detail?: Record<string, unknown> }[];

beforeAll(async () => {
  const fixtures = await mkdtemp(join(tmpdir(), 'strata-nfs-images-'));
  images = await makeTestImages(fixtures);
  server = await startImageServer({
    'image.qcow2': images.qcow2,
    'image.raw': images.raw,
    'backed.qcow2': images.backed,
  });
});
afterAll(async () => {
  await server.close();
  await rm(join(images.raw, '..'), { recursive: true, force: true });
});

beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'strata-nfs-img-'));
  share = join(root, 'share');
  share2 = join(root, 'share2');
  outside = join(root, 'outside');
  await Promise.all([mkdir(share), mkdir(share2), mkdir(outside)]);
  progress = [];
  host = createInProcessHostInvoker({
    // The storage roots its host may touch (as /etc/strata/host.json says on a host): the test's
    // temp dir, and the fixtures' dir, which `compare` reads as a second mount.
    storage: HostStorage.fromConfig({
      storageRoots: [
        { path: root, kind: 'directory' },
        { path: join(images.raw, '..'), kind: 'directory' },
      ],
    }),
    operationSets: [nfsHostOperations],
    workDirRoot: join(root, 'hosts'),
    onProgress: (_hostId, event) => progress.push({ percent: event.percent, detail: event.detail }),
  });
  server.hits.clear();
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

const call = <T = Record<string, unknown>>(
  operation: string,
  args: Record<string, unknown>,
  jobId = 'job-1',
) => host.run<T>('host-1', { provider: 'nfs', operation, args, jobId });
const failure = (promise: Promise<unknown>) =>
  promise.then(
    () => ({ code: 'resolved', retryable: undefined as boolean | undefined }),
    (e: { code?: string; retryable?: boolean }) => ({ code: String(e.code), retryable: e.retryable }),
  );
const fetchArgs = (extra: Record<string, unknown> = {}) => ({
  mountPath: share,
  path: 'templates/t.qcow2',
  url: server.url('/files/image.qcow2'),
  sourceFormat: 'qcow2',
  ...extra,
});
const listAll = async (dir: string) => (await readdir(dir, { recursive: true })).sort();
const qemuInfoJson = async (file: string) =>
  JSON.parse((await run('qemu-img', ['info', '--output=json', '-U', file])).stdout) as Record<
    string,
    unknown
  >;
// The reference image, as a "mount" the compare op can read.
const reference = (name: 'image.raw' | 'image.qcow2') => ({
  mountPath: join(images.raw, '..'),
  path: name,
  format: name.endsWith('raw') ? 'raw' : 'qcow2',
});

describe('fetchImage', () => {
  it('installs a qcow2 from a URL, verifying its sha256, and reports byte progress', async () => {
    const result = await call('fetchImage', fetchArgs({ expectedSha256: images.qcow2Sha256.toUpperCase() }));

    expect(result).toMatchObject({
      path: 'templates/t.qcow2',
      format: 'qcow2',
      virtualSizeBytes: images.virtualSizeBytes,
      sha256: images.qcow2Sha256,
    });
    expect(await sha256(join(share, 'templates/t.qcow2'))).toBe(images.qcow2Sha256);
    expect(await listAll(share)).toEqual(['templates', 'templates/t.qcow2']);
    const bytes = progress.map((p) => p.detail?.bytes).filter((b): b is number => typeof b === 'number');
    expect(Math.max(...bytes)).toBe(result.sizeBytes);
    expect(progress.at(-1)?.percent).toBe(100);
  });

  it('converts a raw image to qcow2 and the result holds the same content', async () => {
    const result = await call(
      'fetchImage',
      fetchArgs({
        url: server.url('/files/image.raw'),
        sourceFormat: 'raw',
        expectedSha256: images.rawSha256,
      }),
    );

    expect(result).toMatchObject({ format: 'qcow2', virtualSizeBytes: images.virtualSizeBytes });
    expect((await qemuInfoJson(join(share, 'templates/t.qcow2'))).format).toBe('qcow2');
    await expect(
      call('compare', { a: { mountPath: share, path: 'templates/t.qcow2' }, b: reference('image.raw') }),
    ).resolves.toEqual({ identical: true });
    expect(await listAll(share)).toEqual(['templates', 'templates/t.qcow2']);
  });

  it('fails with a non-retryable ChecksumMismatch and leaves nothing behind', async () => {
    const outcome = await failure(call('fetchImage', fetchArgs({ expectedSha256: 'ab'.repeat(32) })));

    expect(outcome).toEqual({ code: 'ChecksumMismatch', retryable: false });
    expect(await listAll(share)).toEqual(['templates']);
  });

  it('treats a connection closed early as retryable, with no file under the final name and no temporary', async () => {
    const outcome = await failure(call('fetchImage', fetchArgs({ url: server.url('/short/image.qcow2') })));

    expect(outcome).toEqual({ code: 'Unavailable', retryable: true });
    expect(await listAll(share)).toEqual(['templates']);
  });

  it('gives up on a server that stops sending, and cleans up', async () => {
    const started = Date.now();
    const outcome = await failure(
      call('fetchImage', fetchArgs({ url: server.url('/stall/image.qcow2'), stallTimeoutSeconds: 1 })),
    );

    expect(outcome).toEqual({ code: 'Unavailable', retryable: true });
    expect(Date.now() - started).toBeLessThan(10_000);
    expect(await listAll(share)).toEqual(['templates']);
  });

  it('maps HTTP statuses: 404 not found, 503 retryable, 403 (expired URL) not retryable', async () => {
    const outcomes = await Promise.all(
      [404, 503, 403].map((s, i) =>
        failure(call('fetchImage', fetchArgs({ url: server.url(`/status/${s}`), path: `t/${i}.qcow2` }))),
      ),
    );

    expect(outcomes).toEqual([
      { code: 'ObjectNotFound', retryable: false },
      { code: 'Unavailable', retryable: true },
      { code: 'DownloadFailed', retryable: false },
    ]);
    expect(await listAll(join(share, 't'))).toEqual([]);
  });

  it('refuses an image whose header names a backing file, and cleans up', async () => {
    const outcome = await failure(call('fetchImage', fetchArgs({ url: server.url('/files/backed.qcow2') })));

    // The host's own inspection refuses it before qemu-img opens the file.
    expect(outcome.code).toBe('UnsafeImage');
    expect(await listAll(share)).toEqual(['templates']);
  });

  it('refuses bytes that are not the declared format', async () => {
    const outcome = await failure(call('fetchImage', fetchArgs({ url: server.url('/files/image.raw') })));

    expect(outcome.code).not.toBe('resolved');
    expect(await listAll(share)).toEqual(['templates']);
  });

  it('is idempotent: a repeat returns the installed image without downloading again', async () => {
    const first = await call('fetchImage', fetchArgs({ expectedSha256: images.qcow2Sha256 }), 'job-1');
    const second = await call('fetchImage', fetchArgs({ expectedSha256: images.qcow2Sha256 }), 'job-2');
    const converted = await call(
      'fetchImage',
      fetchArgs({ path: 'templates/r.qcow2', url: server.url('/files/image.raw'), sourceFormat: 'raw' }),
      'job-3',
    );
    const convertedAgain = await call(
      'fetchImage',
      fetchArgs({
        path: 'templates/r.qcow2',
        url: server.url('/files/image.raw'),
        sourceFormat: 'raw',
        virtualSizeBytes: images.virtualSizeBytes,
      }),
      'job-4',
    );

    expect(second).toEqual(first);
    expect(convertedAgain).toMatchObject({
      path: converted.path,
      virtualSizeBytes: converted.virtualSizeBytes,
    });
    expect(server.hits.get('/files/image.qcow2')).toBe(1);
    expect(server.hits.get('/files/image.raw')).toBe(1);
  });

  it('refuses to treat another image under the final name as installed', async () => {
    await call('fetchImage', fetchArgs());

    const outcomes = await Promise.all([
      failure(call('fetchImage', fetchArgs({ expectedSha256: 'cd'.repeat(32) }), 'job-2')),
      failure(call('fetchImage', fetchArgs({ virtualSizeBytes: 4 * MiB }), 'job-3')),
    ]);

    expect(outcomes.map((o) => o.code)).toEqual(['Conflict', 'Conflict']);
    expect(server.hits.get('/files/image.qcow2')).toBe(1);
  });

  it.each([
    ['a file URL', { url: 'file:///etc/passwd' }],
    ['an ftp URL', { url: 'ftp://127.0.0.1/image.qcow2' }],
    ['a URL with credentials', { url: 'http://user:pw@127.0.0.1/image.qcow2' }],
    ['a shell-looking string', { url: '$(touch /tmp/pwned)' }],
    ['a parent escape', { path: '../outside/t.qcow2' }],
    ['an absolute path', { path: '/tmp/t.qcow2' }],
    ['a bad checksum', { expectedSha256: 'xyz' }],
    ['a vmdk source', { sourceFormat: 'vmdk' }],
    ['a relative mount path', { mountPath: 'share' }],
  ])('refuses %s as invalid arguments', async (_label, extra) => {
    await expect(failure(call('fetchImage', fetchArgs(extra)))).resolves.toMatchObject({
      code: 'InvalidArguments',
    });
    expect(server.hits.size).toBe(0);
    expect(await listAll(outside)).toEqual([]);
  });

  it('refuses to write through a symlinked directory out of the share', async () => {
    await symlink(outside, join(share, 'templates'));

    await expect(failure(call('fetchImage', fetchArgs()))).resolves.toMatchObject({ code: 'InvalidInput' });
    expect(await listAll(outside)).toEqual([]);
  });
});

describe('clone, compare, check, info, copy', () => {
  beforeEach(async () => {
    await call('fetchImage', fetchArgs());
  });

  it('makes a linked clone with a relative backing path that reads back the template', async () => {
    const clone = await call('clone', {
      mountPath: share,
      path: 'volumes/v.qcow2',
      sourcePath: 'templates/t.qcow2',
    });
    const raw = await qemuInfoJson(join(share, 'volumes/v.qcow2'));
    const info = await call('info', { mountPath: share, path: 'volumes/v.qcow2' });

    expect(clone).toMatchObject({
      mode: 'linked',
      backingPath: 'templates/t.qcow2',
      virtualSizeBytes: 2 * MiB,
    });
    expect(raw['backing-filename']).toBe('../templates/t.qcow2');
    expect(raw['backing-filename-format']).toBe('qcow2');
    expect(info).toMatchObject({
      format: 'qcow2',
      virtualSizeBytes: 2 * MiB,
      backingPath: 'templates/t.qcow2',
      backingFormat: 'qcow2',
    });
    expect(typeof info.actualSizeBytes).toBe('number');
    await expect(
      call('compare', {
        a: { mountPath: share, path: 'volumes/v.qcow2' },
        b: { mountPath: share, path: 'templates/t.qcow2' },
      }),
    ).resolves.toEqual({ identical: true });
  });

  it('keeps a linked clone valid when the share is mounted at another path', async () => {
    await call('clone', { mountPath: share, path: 'volumes/v.qcow2', sourcePath: 'templates/t.qcow2' });
    const moved = join(root, 'mounted-elsewhere');
    await rename(share, moved);

    await expect(
      call('compare', { a: { mountPath: moved, path: 'volumes/v.qcow2' }, b: reference('image.raw') }),
    ).resolves.toEqual({ identical: true });
  });

  it('grows a linked clone at creation and by resize, and it stays consistent', async () => {
    await call('clone', {
      mountPath: share,
      path: 'volumes/v.qcow2',
      sourcePath: 'templates/t.qcow2',
      sizeBytes: 4 * MiB,
    });
    await run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x77 3M 64k', join(share, 'volumes/v.qcow2')]);
    const resized = await call('resize', { mountPath: share, path: 'volumes/v.qcow2', sizeBytes: 8 * MiB });
    const checked = await call('check', { mountPath: share, path: 'volumes/v.qcow2' });
    const info = await call('info', { mountPath: share, path: 'volumes/v.qcow2' });

    expect(resized).toMatchObject({ virtualSizeBytes: 8 * MiB });
    expect(checked).toEqual({ ok: true, corruptions: 0, leaks: 0, checkErrors: 0 });
    expect(info).toMatchObject({ backingPath: 'templates/t.qcow2' });
    // The template's extents read through the overlay; the new write is the only difference.
    const { stdout } = await run('qemu-io', [
      '-f',
      'qcow2',
      '-c',
      'read -P 0x5a 0 64k',
      '-c',
      'read -P 0x11 1M 128k',
      '-c',
      'read -P 0x77 3M 64k',
      join(share, 'volumes/v.qcow2'),
    ]);
    expect(stdout).not.toMatch(/Pattern verification failed/);
  });

  it('makes a full copy with no backing file, grown to the requested size', async () => {
    const clone = await call('clone', {
      mountPath: share,
      path: 'volumes/full.qcow2',
      sourcePath: 'templates/t.qcow2',
      mode: 'full',
      sizeBytes: 3 * MiB,
    });
    const info = await call('info', { mountPath: share, path: 'volumes/full.qcow2' });

    expect(clone).toMatchObject({ mode: 'full', virtualSizeBytes: 3 * MiB });
    expect(clone.backingPath).toBeUndefined();
    expect(info.backingPath).toBeUndefined();
    await expect(
      call('compare', {
        a: { mountPath: share, path: 'volumes/full.qcow2' },
        b: { mountPath: share, path: 'templates/t.qcow2' },
      }),
    ).resolves.toEqual({ identical: true });
    await expect(
      call('compare', {
        a: { mountPath: share, path: 'volumes/full.qcow2' },
        b: { mountPath: share, path: 'templates/t.qcow2' },
        strict: true,
      }),
    ).resolves.toEqual({ identical: false });
    await expect(call('check', { mountPath: share, path: 'volumes/full.qcow2' })).resolves.toMatchObject({
      ok: true,
    });
  });

  it('clone is idempotent, and refuses a different clone under the same name or a size below the template', async () => {
    const args = { mountPath: share, path: 'volumes/v.qcow2', sourcePath: 'templates/t.qcow2' };
    const first = await call('clone', args, 'job-1');
    const again = await call('clone', args, 'job-2');

    const outcomes = await Promise.all([
      failure(call('clone', { ...args, mode: 'full' }, 'job-3')),
      failure(call('clone', { ...args, sizeBytes: 4 * MiB }, 'job-4')),
      failure(call('clone', { ...args, path: 'volumes/small.qcow2', sizeBytes: MiB }, 'job-5')),
      failure(call('clone', { ...args, sourcePath: '../outside/x.qcow2' }, 'job-6')),
    ]);

    expect(again).toEqual(first);
    expect(outcomes.map((o) => o.code)).toEqual(['Conflict', 'Conflict', 'InvalidInput', 'InvalidArguments']);
    expect(await listAll(join(share, 'volumes'))).toEqual(['v.qcow2']);
  });

  it('copy of a linked clone to another mount flattens it and compares identical', async () => {
    await call('clone', { mountPath: share, path: 'volumes/v.qcow2', sourcePath: 'templates/t.qcow2' });
    await run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x33 512k 64k', join(share, 'volumes/v.qcow2')]);

    const copied = await call('copy', {
      src: { mountPath: share, path: 'volumes/v.qcow2', format: 'qcow2' },
      dst: { mountPath: share2, path: 'volumes/v.qcow2', format: 'qcow2' },
    });
    const info = await call('info', { mountPath: share2, path: 'volumes/v.qcow2' });
    const raw = await qemuInfoJson(join(share2, 'volumes/v.qcow2'));

    expect(copied).toMatchObject({ virtualSizeBytes: 2 * MiB });
    expect(info.backingPath).toBeUndefined();
    expect(raw['backing-filename']).toBeUndefined();
    await expect(
      call('compare', {
        a: { mountPath: share, path: 'volumes/v.qcow2' },
        b: { mountPath: share2, path: 'volumes/v.qcow2' },
      }),
    ).resolves.toEqual({ identical: true });
    await expect(
      call('compare', {
        a: { mountPath: share2, path: 'volumes/v.qcow2' },
        b: { mountPath: share, path: 'templates/t.qcow2' },
      }),
    ).resolves.toEqual({ identical: false });
  });

  it('check reports corruption instead of failing', async () => {
    const file = join(share, 'volumes/bad.qcow2');
    await mkdir(join(share, 'volumes'));
    await copyFile(join(share, 'templates/t.qcow2'), file);
    // Point the first L1 entry at a cluster past the end of the file.
    const { stdout } = await run('qemu-img', ['info', '--output=json', file]);
    expect(JSON.parse(stdout).format).toBe('qcow2');
    const { open } = await import('node:fs/promises');
    const handle = await open(file, 'r+');
    const header = Buffer.alloc(48);
    await handle.read(header, 0, 48, 0);
    const l1Offset = Number(header.readBigUInt64BE(40));
    const entry = Buffer.alloc(8);
    entry.writeBigUInt64BE((1n << 63n) | 0x7ff0000n);
    await handle.write(entry, 0, 8, l1Offset);
    await handle.close();

    const checked = await call('check', { mountPath: share, path: 'volumes/bad.qcow2' });

    expect(checked.ok).toBe(false);
    expect(Number(checked.corruptions) + Number(checked.checkErrors)).toBeGreaterThan(0);
  });

  it('compare and check refuse paths outside the mount', async () => {
    const outcomes = await Promise.all([
      failure(
        call('compare', {
          a: { mountPath: share, path: '../outside/x.qcow2' },
          b: { mountPath: share, path: 'templates/t.qcow2' },
        }),
      ),
      failure(call('check', { mountPath: share, path: '/etc/passwd' })),
    ]);

    expect(outcomes.map((o) => o.code)).toEqual(['InvalidArguments', 'InvalidArguments']);
  });

  it('checkMount reports capacity from statfs', async () => {
    const result = await call('checkMount', { mountPath: share });

    expect(result.totalBytes).toBeGreaterThan(0);
    expect(result.freeBytes).toBeGreaterThan(0);
    expect(Number(result.freeBytes)).toBeLessThanOrEqual(Number(result.totalBytes));
  });
});

describe(`${NFS_TEMPLATE_INSTALL_STRATEGY} strategy`, () => {
  const pool = (): DataStoreInfo => ({
    id: 'pool-1',
    name: 'pool-1',
    provider: 'nfs',
    role: 'primary',
    scope: { type: 'cluster', zoneId: 'z1', clusterId: 'c1' },
    details: { server: '10.0.0.5', export: '/srv/nfs', mountPath: share },
    capacityBytes: 1 << 30,
  });
  const imageStore: DataStoreInfo = {
    id: 'img-1',
    name: 'img-1',
    provider: 's3',
    role: 'image',
    scope: { type: 'zone', zoneId: 'z1' },
    details: { bucket: 'b' },
    capacityBytes: 0,
  };
  const template = {
    kind: 'template' as const,
    id: 'tpl-1',
    format: 'raw' as const,
    path: 'templates/tpl-1/tpl-1.raw',
  };

  it('is the nfs provider’s templateInstall', () => {
    expect(createNfsProvider().templateInstall?.name).toBe('nfs-cache-then-clone');
  });

  it('installs once into templates/<id>.qcow2, then makes linked (default) and full volumes', async () => {
    const strategy = createNfsTemplateInstallStrategy();
    const ctx = createTestDriverContext({ host });
    const install = () =>
      strategy.install({
        template: { store: imageStore, object: template },
        pool: pool(),
        ctx,
        hostId: 'host-1',
        sourceUrl: server.url('/files/image.raw'),
        expectedSha256: images.rawSha256,
      });

    const cache = await install();
    const again = await install();
    const cacheRef = { store: pool(), object: { ...template, format: 'qcow2' as const, path: cache.path } };
    const linked = await strategy.createVolume({
      cache: cacheRef,
      volume: { kind: 'volume', id: 'vol-1', format: 'qcow2' },
      sizeBytes: 4 * MiB,
      ctx,
      hostId: 'host-1',
    });
    const full = await strategy.createVolume({
      cache: cacheRef,
      volume: { kind: 'volume', id: 'vol-2', format: 'qcow2' },
      sizeBytes: 2 * MiB,
      ctx,
      hostId: 'host-1',
      mode: 'full',
    });

    expect(cache).toEqual({
      path: 'templates/tpl-1.qcow2',
      sizeBytes: expect.any(Number),
      virtualSizeBytes: 2 * MiB,
      format: 'qcow2',
    });
    expect(again).toEqual(cache);
    expect(server.hits.get('/files/image.raw')).toBe(1);
    expect(linked).toMatchObject({ path: 'volumes/vol-1.qcow2', virtualSizeBytes: 4 * MiB, format: 'qcow2' });
    expect(full).toMatchObject({ path: 'volumes/vol-2.qcow2', virtualSizeBytes: 2 * MiB });
    expect(await call('info', { mountPath: share, path: 'volumes/vol-1.qcow2' })).toMatchObject({
      backingPath: 'templates/tpl-1.qcow2',
    });
    expect(
      (await call('info', { mountPath: share, path: 'volumes/vol-2.qcow2' })).backingPath,
    ).toBeUndefined();
    for (const path of ['volumes/vol-1.qcow2', 'volumes/vol-2.qcow2']) {
      await expect(
        call('compare', { a: { mountPath: share, path }, b: reference('image.raw') }),
      ).resolves.toEqual({
        identical: true,
      });
    }
  });

  it('needs a source URL and a format it can read', async () => {
    const strategy = createNfsTemplateInstallStrategy();
    const ctx = createTestDriverContext({ host });
    const base = { template: { store: imageStore, object: template }, pool: pool(), ctx, hostId: 'host-1' };

    await expect(strategy.install(base)).rejects.toMatchObject({ code: 'InvalidInput' });
    await expect(
      strategy.install({ ...base, sourceUrl: server.url('/files/image.raw'), sourceFormat: 'vmdk' }),
    ).rejects.toMatchObject({ code: 'Unsupported' });
    await expect(
      strategy.install({ ...base, pool: { ...pool(), provider: 's3' }, sourceUrl: server.url('/x') }),
    ).rejects.toMatchObject({ code: 'Unsupported' });
  });

  it('surfaces a checksum mismatch as ChecksumMismatch', async () => {
    const strategy = createNfsTemplateInstallStrategy();
    const ctx = createTestDriverContext({ host });

    await expect(
      strategy.install({
        template: { store: imageStore, object: template },
        pool: pool(),
        ctx,
        hostId: 'host-1',
        sourceUrl: server.url('/files/image.raw'),
        expectedSha256: '00'.repeat(32),
      }),
    ).rejects.toMatchObject({ code: 'ChecksumMismatch', retryable: false });
    expect(await listAll(share)).toEqual(['templates']);
  });
});
