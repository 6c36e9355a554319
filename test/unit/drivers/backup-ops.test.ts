import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readdir, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { GetObjectCommand, ListObjectsV2Command, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import type {
  BackupScanResult,
  BackupUploadResult,
  RestoreChunksResult,
} from '../../../drivers/nfs/backup-ops.js';
import { nfsHostOperations } from '../../../drivers/nfs/host-ops.js';
import { type BackupManifest, buildManifest, chunkObjectKey } from '../../../drivers/sdk/backup-manifest.js';
import { HostOperationError } from '../../../drivers/sdk/errors.js';
import { HostStorage } from '../../../drivers/sdk/host-config.js';
import { createInProcessHostInvoker } from '../../../drivers/sdk/host-runtime.js';
import type { HostInvoker } from '../../../drivers/sdk/types.js';
import { localS3ClientConfig, type S3Emulator, startS3Emulator } from '../../../infra/local/s3-emulator.js';

jest.setTimeout(60_000);

const run = promisify(execFile);
const KiB = 1024;
const CHUNK = 256 * KiB;
const SIZE = 4 * 1024 * KiB; // 16 chunks
const BUCKET = 'backups';
const PREFIX = 'chunks';

let root: string;
let share: string;
let s3dir: string;
let emulator: S3Emulator;
let s3: S3Client;
let host: HostInvoker;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'strata-backup-'));
  share = join(root, 'share');
  s3dir = join(root, 's3');
  await mkdir(join(share, 'volumes'), { recursive: true });
  emulator = await startS3Emulator({ dir: s3dir, buckets: [BUCKET] });
  s3 = new S3Client(localS3ClientConfig(emulator.endpoint));
  host = createInProcessHostInvoker({
    // The test's temp dir is the one storage root its host may touch (as /etc/strata/host.json says on a host).
    storage: HostStorage.fromConfig({ storageRoots: [{ path: root, kind: 'directory' }] }),
    operationSets: [nfsHostOperations],
    workDirRoot: join(root, 'hosts'),
  });
});
afterAll(async () => {
  s3?.destroy();
  await emulator?.stop();
  await rm(root, { recursive: true, force: true });
});

const vol = (name: string) => join(share, 'volumes', name);
const qemuIo = (file: string, ...commands: string[]) =>
  run('qemu-io', ['-f', 'qcow2', ...commands.flatMap((c) => ['-c', c]), file]);
const compare = async (a: string, b: string) => {
  try {
    await run('qemu-img', ['compare', '-f', 'qcow2', '-F', 'qcow2', a, b]);
    return true;
  } catch {
    return false;
  }
};
const call = <T>(operation: string, args: Record<string, unknown>, jobId = 'job-1') =>
  host.run<T>('host-1', { provider: 'nfs', operation, args, jobId });

// What the control plane will do: list the store, scan, presign PUTs for what is missing, upload.
async function knownChunks(): Promise<string[]> {
  const out = await s3.send(new ListObjectsV2Command({ Bucket: BUCKET, Prefix: `${PREFIX}/` }));
  return (out.Contents ?? []).map((o) => o.Key!.split('/').pop()!);
}
async function backup(
  path: string,
  snapshotId: string,
  previous?: { manifest: BackupManifest; changedExtents: Array<{ start: number; length: number }> },
) {
  const common = { mountPath: share, path: `volumes/${path}`, chunkSizeBytes: CHUNK };
  const scan = await call<BackupScanResult>('backupChunks', {
    ...common,
    phase: 'scan',
    knownChunks: await knownChunks(),
    ...(previous
      ? { previousChunks: previous.manifest.chunks, changedExtents: previous.changedExtents }
      : {}),
  });
  const uploads = await Promise.all(
    scan.missing.map(async ({ index, sha256 }) => ({
      index,
      sha256,
      url: await getSignedUrl(
        s3,
        new PutObjectCommand({ Bucket: BUCKET, Key: chunkObjectKey(PREFIX, sha256) }),
        { expiresIn: 600 },
      ),
    })),
  );
  const upload = await call<BackupUploadResult>('backupChunks', { ...common, phase: 'upload', uploads });
  const manifest = buildManifest({
    volumeId: 'vol-1',
    snapshotId,
    virtualSizeBytes: scan.virtualSizeBytes,
    chunkSizeBytes: scan.chunkSizeBytes,
    chunks: scan.chunks,
    ...(previous ? { parentSnapshotId: previous.manifest.snapshotId } : {}),
  });
  return { scan, upload, manifest };
}
async function restoreArgs(manifest: BackupManifest, path: string) {
  return {
    mountPath: share,
    path: `volumes/${path}`,
    virtualSizeBytes: manifest.virtualSizeBytes,
    chunkSizeBytes: manifest.chunkSizeBytes,
    chunks: await Promise.all(
      manifest.chunks.map(async (sha256, index) =>
        sha256 === null
          ? null
          : {
              index,
              sha256,
              url: await getSignedUrl(
                s3,
                new GetObjectCommand({ Bucket: BUCKET, Key: chunkObjectKey(PREFIX, sha256) }),
                { expiresIn: 600 },
              ),
            },
      ),
    ),
  };
}
// Depth-0 data extents of an overlay: what changed since its backing file was frozen.
async function changedExtents(file: string) {
  const { stdout } = await run('qemu-img', ['map', '--output=json', '-f', 'qcow2', file]);
  return (JSON.parse(stdout) as Array<{ start: number; length: number; depth: number; data: boolean }>)
    .filter((e) => e.depth === 0 && e.data)
    .map(({ start, length }) => ({ start, length }));
}

describe('backup to the image store (qemu-nbd + s3rver)', () => {
  let full: Awaited<ReturnType<typeof backup>>;
  let incremental: Awaited<ReturnType<typeof backup>>;

  it('full backup: reads allocated extents only, dedups equal chunks, never stores zeros', async () => {
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', vol('base.qcow2'), String(SIZE)]);
    await qemuIo(
      vol('base.qcow2'),
      `write -P 0x11 0 ${CHUNK}`, // chunk 0
      `write -P 0x33 ${CHUNK} ${CHUNK}`, // chunk 1
      `write -P 0x22 ${4 * CHUNK} ${CHUNK}`, // chunk 4
      `write -P 0x11 ${8 * CHUNK} ${CHUNK}`, // chunk 8, same bytes as chunk 0
      `write -z ${10 * CHUNK} ${CHUNK}`, // chunk 10: zero cluster, not data
      `write -P 0x00 ${12 * CHUNK} ${CHUNK}`, // chunk 12: allocated, but zeros
    );

    full = await backup('base.qcow2', 'snap-1');

    const { chunks, counters, missing } = full.scan;
    expect(chunks).toHaveLength(16);
    expect(chunks[0]).toMatch(/^[0-9a-f]{64}$/);
    expect(chunks[8]).toBe(chunks[0]);
    expect(new Set([chunks[0], chunks[1], chunks[4]]).size).toBe(3);
    expect(chunks.filter((c) => c === null)).toHaveLength(12);
    expect(missing).toHaveLength(3);
    expect(counters).toEqual({
      bytesRead: 5 * CHUNK,
      bytesUploaded: 0,
      chunksTotal: 16,
      chunksChanged: 4,
      chunksReused: 1,
      zeroChunks: 12,
    });
    expect(full.upload).toEqual({
      phase: 'upload',
      chunksUploaded: 3,
      bytesRead: 3 * CHUNK,
      bytesUploaded: 3 * CHUNK,
    });
    expect((await knownChunks()).sort()).toEqual(missing.map((m) => m.sha256).sort());
  });

  it('restores a full backup into an identical new volume', async () => {
    const result = await call<RestoreChunksResult>(
      'restoreChunks',
      await restoreArgs(full.manifest, 'r1.qcow2'),
    );

    expect(result).toMatchObject({
      restored: true,
      chunksFetched: 4,
      bytesDownloaded: 4 * CHUNK,
      zeroChunks: 12,
    });
    expect(await compare(vol('base.qcow2'), vol('r1.qcow2'))).toBe(true);
    const again = await call<RestoreChunksResult>(
      'restoreChunks',
      await restoreArgs(full.manifest, 'r1.qcow2'),
      'job-2',
    );
    expect(again.restored).toBe(false);
  });

  it('incremental backup reads and uploads only the changed chunks', async () => {
    // The snapshot freezes base; writes go to the overlay, which becomes the next snapshot layer.
    await run('qemu-img', [
      'create',
      '-q',
      '-f',
      'qcow2',
      '-b',
      'base.qcow2',
      '-F',
      'qcow2',
      vol('snap-2.qcow2'),
    ]);
    await qemuIo(
      vol('snap-2.qcow2'),
      `write -P 0x44 ${2 * CHUNK} ${CHUNK}`,
      `write -P 0x55 ${3 * CHUNK} ${CHUNK}`,
    );
    const extents = await changedExtents(vol('snap-2.qcow2'));

    incremental = await backup('snap-2.qcow2', 'snap-2', {
      manifest: full.manifest,
      changedExtents: extents,
    });

    const { chunks, counters, missing, computed } = incremental.scan;
    expect(computed.map((c) => c.index)).toEqual([2, 3]);
    expect(missing.map((m) => m.index)).toEqual([2, 3]);
    expect(chunks.filter((_, i) => i !== 2 && i !== 3)).toEqual(
      full.manifest.chunks.filter((_, i) => i !== 2 && i !== 3),
    );
    expect(counters).toEqual({
      bytesRead: 2 * CHUNK,
      bytesUploaded: 0,
      chunksTotal: 16,
      chunksChanged: 2,
      chunksReused: 4,
      zeroChunks: 10,
    });
    expect(incremental.upload.bytesUploaded).toBe(2 * CHUNK);
    expect(incremental.manifest.parentSnapshotId).toBe('snap-1');
  });

  it('restores the incremental as the volume was at that snapshot, and the full one still', async () => {
    // Later writes land in a newer overlay and must not show in the restore.
    await run('qemu-img', [
      'create',
      '-q',
      '-f',
      'qcow2',
      '-b',
      'snap-2.qcow2',
      '-F',
      'qcow2',
      vol('active.qcow2'),
    ]);
    await qemuIo(vol('active.qcow2'), `write -P 0x66 0 ${CHUNK}`);

    await call('restoreChunks', await restoreArgs(incremental.manifest, 'r2.qcow2'));
    await call('restoreChunks', await restoreArgs(full.manifest, 'r3.qcow2'));

    expect(await compare(vol('snap-2.qcow2'), vol('r2.qcow2'))).toBe(true);
    expect(await compare(vol('active.qcow2'), vol('r2.qcow2'))).toBe(false);
    expect(await compare(vol('base.qcow2'), vol('r3.qcow2'))).toBe(true);
  });

  it('backs up an empty volume as all zero chunks without uploading anything', async () => {
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', vol('empty.qcow2'), String(SIZE + 100 * KiB)]);

    const result = await backup('empty.qcow2', 'snap-e');

    expect(result.scan.chunks).toEqual(new Array(17).fill(null));
    expect(result.scan.counters).toMatchObject({
      bytesRead: 0,
      chunksTotal: 17,
      zeroChunks: 17,
      chunksReused: 0,
    });
    expect(result.upload.chunksUploaded).toBe(0);
    await call('restoreChunks', await restoreArgs(result.manifest, 'r-empty.qcow2'));
    expect(await compare(vol('empty.qcow2'), vol('r-empty.qcow2'))).toBe(true);
  });

  it('fails a restore whose chunk was corrupted on the server, naming it, and leaves no file', async () => {
    const victim = incremental.manifest.chunks[3]!;
    await s3.send(
      new PutObjectCommand({
        Bucket: BUCKET,
        Key: chunkObjectKey(PREFIX, victim),
        Body: Buffer.alloc(CHUNK, 0x99),
      }),
    );
    const before = await readdir(join(share, 'volumes'));

    const error = await call(
      'restoreChunks',
      await restoreArgs(incremental.manifest, 'r4.qcow2'),
      'job-9',
    ).then(
      () => undefined,
      (e: unknown) => e,
    );

    expect(error).toBeInstanceOf(HostOperationError);
    const hostError = (error as HostOperationError).hostError;
    expect(hostError).toMatchObject({ code: 'ChecksumMismatch', retryable: false });
    expect(hostError.message).toContain('chunk 3');
    expect(hostError.message).toContain(victim);
    expect(await readdir(join(share, 'volumes'))).toEqual(before);
  });

  it('refuses an upload whose chunk no longer has the scanned hash', async () => {
    const code = await call('backupChunks', {
      mountPath: share,
      path: 'volumes/base.qcow2',
      chunkSizeBytes: CHUNK,
      phase: 'upload',
      uploads: [{ index: 0, sha256: 'f'.repeat(64), url: `${emulator.endpoint}/${BUCKET}/x` }],
    }).then(
      () => 'resolved',
      (e: unknown) => (e as HostOperationError).hostError.code,
    );
    expect(code).toBe('Conflict');
  });

  it('refuses paths outside the share and incremental scans without a previous list', async () => {
    const codeOf = (args: Record<string, unknown>) =>
      call('backupChunks', { mountPath: share, chunkSizeBytes: CHUNK, phase: 'scan', ...args }).then(
        () => 'resolved',
        (e: unknown) => (e as HostOperationError).hostError.code,
      );
    expect(await codeOf({ path: '../outside.qcow2' })).toBe('InvalidArguments');
    expect(await codeOf({ path: 'volumes/base.qcow2', changedExtents: [] })).toBe('InvalidArguments');
    expect(await codeOf({ path: 'volumes/base.qcow2', chunkSizeBytes: 1000 })).toBe('InvalidArguments');
  });
});

// What the control plane does for real disks: the lists travel as presigned JSON objects.
async function putJson(key: string, value: unknown): Promise<string> {
  await s3.send(
    new PutObjectCommand({
      Bucket: BUCKET,
      Key: key,
      Body: JSON.stringify(value),
      ContentType: 'application/json',
    }),
  );
  return getSignedUrl(s3, new GetObjectCommand({ Bucket: BUCKET, Key: key }), { expiresIn: 600 });
}
const presignPut = (sha256: string) =>
  getSignedUrl(s3, new PutObjectCommand({ Bucket: BUCKET, Key: chunkObjectKey(PREFIX, sha256) }), {
    expiresIn: 600,
  });
const hostErrorOf = (promise: Promise<unknown>) =>
  promise.then(
    () => undefined,
    (e: unknown) => (e as HostOperationError).hostError,
  );

describe('lists and manifests as presigned URLs', () => {
  // A function: `share` is only set once beforeAll has run.
  const common = () => ({ mountPath: share, chunkSizeBytes: CHUNK });
  let first: BackupManifest;
  let second: BackupManifest;

  beforeAll(async () => {
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', vol('u1.qcow2'), String(SIZE)]);
    await qemuIo(
      vol('u1.qcow2'),
      `write -P 0x71 0 ${CHUNK}`,
      `write -P 0x72 ${CHUNK} ${CHUNK}`,
      `write -P 0x75 ${5 * CHUNK} ${CHUNK}`,
    );
    first = (await backup('u1.qcow2', 'u-1')).manifest;
    // The next snapshot layer: chunk 2 written, chunk 0 overwritten with zeros (a change too).
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'u1.qcow2', '-F', 'qcow2', vol('u2.qcow2')]);
    await qemuIo(vol('u2.qcow2'), `write -P 0x73 ${2 * CHUNK} ${CHUNK}`, `write -z 0 ${CHUNK}`);
  });

  it('scans incrementally from previousManifestUrl, uploads from uploadsUrl, restores from chunksUrl', async () => {
    const previousManifestUrl = await putJson('manifests/u-1.json', first);

    const scan = await call<BackupScanResult>('backupChunks', {
      ...common(),
      path: 'volumes/u2.qcow2',
      phase: 'scan',
      previousManifestUrl,
      changedExtents: [
        { start: 0, length: CHUNK },
        { start: 2 * CHUNK, length: CHUNK },
      ],
    });

    expect(scan.incremental).toBe(true);
    expect(scan.computed.map((c) => c.index)).toEqual([0, 2]);
    expect(scan.chunks[0]).toBeNull();
    expect(scan.chunks[1]).toBe(first.chunks[1]);
    expect(scan.chunks[5]).toBe(first.chunks[5]);
    expect(scan.counters).toMatchObject({ bytesRead: 2 * CHUNK, chunksChanged: 2, zeroChunks: 13 });

    const plan = await Promise.all(
      scan.missing.map(async ({ index, sha256 }) => ({ index, sha256, url: await presignPut(sha256) })),
    );
    const upload = await call<BackupUploadResult>('backupChunks', {
      ...common(),
      path: 'volumes/u2.qcow2',
      phase: 'upload',
      uploadsUrl: await putJson('plans/u-2-upload.json', plan),
      count: plan.length,
    });
    expect(upload).toEqual({ phase: 'upload', chunksUploaded: 1, bytesRead: CHUNK, bytesUploaded: CHUNK });

    second = buildManifest({
      volumeId: 'vol-u',
      snapshotId: 'u-2',
      virtualSizeBytes: scan.virtualSizeBytes,
      chunkSizeBytes: scan.chunkSizeBytes,
      chunks: scan.chunks,
      parentSnapshotId: 'u-1',
    });
    const { chunks, ...rest } = await restoreArgs(second, 'ru2.qcow2');
    const restored = await call<RestoreChunksResult>('restoreChunks', {
      ...rest,
      chunksUrl: await putJson('plans/u-2-restore.json', chunks),
      count: chunks.length,
    });

    expect(restored).toMatchObject({ restored: true, chunksFetched: 3, zeroChunks: 13 });
    expect(await compare(vol('u2.qcow2'), vol('ru2.qcow2'))).toBe(true);
  });

  it('falls back to a full scan when the previous manifest has another chunk or disk size', async () => {
    const otherChunkSize = buildManifest({
      ...first,
      chunkSizeBytes: 2 * CHUNK,
      chunks: first.chunks.slice(0, 8),
    });
    const otherDiskSize = buildManifest({
      ...first,
      virtualSizeBytes: 2 * SIZE,
      chunks: [...first.chunks, ...first.chunks],
    });

    for (const [name, manifest] of [
      ['chunk', otherChunkSize],
      ['disk', otherDiskSize],
    ] as const) {
      const scan = await call<BackupScanResult>('backupChunks', {
        ...common(),
        path: 'volumes/u2.qcow2',
        phase: 'scan',
        previousManifestUrl: await putJson(`manifests/other-${name}.json`, manifest),
        changedExtents: [{ start: 2 * CHUNK, length: CHUNK }],
      });
      expect(scan.incremental).toBe(false);
      // Only the chunks holding data through the chain were read (0 is a zero cluster on top now).
      expect(scan.computed.map((c) => c.index)).toEqual([1, 2, 5]);
      expect(scan.chunks).toEqual(second.chunks);
      expect(scan.counters.bytesRead).toBe(3 * CHUNK);
    }
  });

  it('retries a list answering 503, fails one answering 403 at once, and reports a missing one', async () => {
    const plan: unknown[] = [];
    const hits: string[] = [];
    const server: Server = createServer((req, res) => {
      hits.push(req.url ?? '');
      if (req.url === '/flaky' && hits.filter((h) => h === '/flaky').length < 3) {
        res.writeHead(503).end();
      } else if (req.url === '/flaky') {
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(plan));
      } else if (req.url === '/expired?X-Amz-Signature=secret') {
        res.writeHead(403).end();
      } else {
        res.writeHead(404).end();
      }
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const uploadFrom = (uploadsUrl: string) =>
      call<BackupUploadResult>('backupChunks', {
        ...common(),
        path: 'volumes/u2.qcow2',
        phase: 'upload',
        uploadsUrl,
      });
    try {
      await expect(uploadFrom(`${base}/flaky`)).resolves.toMatchObject({ chunksUploaded: 0 });
      expect(hits).toEqual(['/flaky', '/flaky', '/flaky']);

      const expired = await hostErrorOf(uploadFrom(`${base}/expired?X-Amz-Signature=secret`));
      expect(expired).toMatchObject({ code: 'TransferFailed', retryable: false });
      expect(expired?.message).toContain('403');
      expect(expired?.message).not.toContain('secret');
      expect(hits.filter((h) => h.startsWith('/expired'))).toHaveLength(1);

      const missing = await hostErrorOf(
        call('backupChunks', {
          ...common(),
          path: 'volumes/u2.qcow2',
          phase: 'scan',
          previousManifestUrl: `${base}/gone`,
          changedExtents: [],
        }),
      );
      expect(missing).toMatchObject({ code: 'ObjectNotFound' });
      expect(missing?.message).toContain('previousManifestUrl');
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
  });

  it('refuses lists that are malformed, of the wrong length, or not as long as count says', async () => {
    const scanWith = (previousManifestUrl: string) =>
      call('backupChunks', {
        ...common(),
        path: 'volumes/u2.qcow2',
        phase: 'scan',
        previousManifestUrl,
      });
    const uploadWith = (args: Record<string, unknown>) =>
      call('backupChunks', { ...common(), path: 'volumes/u2.qcow2', phase: 'upload', ...args });
    const { chunks, ...restore } = await restoreArgs(second, 'never.qcow2');
    const before = await readdir(join(share, 'volumes'));

    const errors = [
      await hostErrorOf(scanWith(await putJson('bad/manifest.json', { version: 1 }))),
      await hostErrorOf(uploadWith({ uploadsUrl: await putJson('bad/not-a-list.json', { uploads: [] }) })),
      await hostErrorOf(
        uploadWith({
          uploadsUrl: await putJson('bad/bad-entry.json', [{ index: 0, sha256: 'nope', url: 'x' }]),
        }),
      ),
      await hostErrorOf(uploadWith({ uploadsUrl: await putJson('bad/empty.json', []), count: 2 })),
      await hostErrorOf(
        call('restoreChunks', { ...restore, chunksUrl: await putJson('bad/short.json', chunks.slice(1)) }),
      ),
      await hostErrorOf(
        call('restoreChunks', {
          ...restore,
          chunksUrl: await putJson('bad/shifted.json', [...chunks.slice(1), chunks[0]]),
        }),
      ),
      await hostErrorOf(
        call('restoreChunks', {
          ...restore,
          chunksUrl: await putJson('bad/count.json', chunks),
          count: chunks.length - 1,
        }),
      ),
    ];

    expect(errors.map((e) => e?.code)).toEqual(Array(errors.length).fill('InvalidInput'));
    expect(errors.map((e) => e?.message.split(':')[0])).toEqual([
      'previousManifestUrl',
      'uploadsUrl',
      'uploadsUrl',
      'uploadsUrl lists 0 chunks, not the 2 expected',
      'chunksUrl lists 15 chunks; the disk has 16',
      'chunksUrl',
      'chunksUrl lists 16 chunks, not the 15 expected',
    ]);
    expect(await readdir(join(share, 'volumes'))).toEqual(before);
  });

  it('needs exactly one of each inline list and its URL form', async () => {
    const url = `${emulator.endpoint}/${BUCKET}/plans/x.json`;
    const path = 'volumes/u2.qcow2';
    const { chunks, ...restore } = await restoreArgs(second, 'never.qcow2');
    const cases: Array<[string, Record<string, unknown>]> = [
      ['backupChunks', { ...common(), path, phase: 'upload' }],
      ['backupChunks', { ...common(), path, phase: 'upload', uploads: [], uploadsUrl: url }],
      [
        'backupChunks',
        { ...common(), path, phase: 'scan', previousChunks: first.chunks, previousManifestUrl: url },
      ],
      [
        'backupChunks',
        {
          ...common(),
          path,
          phase: 'scan',
          previousManifestUrl: url,
          changedExtents: [],
          changesSinceBackingPath: 'volumes/u1.qcow2',
        },
      ],
      ['backupChunks', { ...common(), path, phase: 'scan', changesSinceBackingPath: 'volumes/u1.qcow2' }],
      [
        'backupChunks',
        {
          ...common(),
          path,
          phase: 'scan',
          previousManifestUrl: url,
          changesSinceBackingPath: '../u1.qcow2',
        },
      ],
      ['restoreChunks', restore],
      ['restoreChunks', { ...restore, chunks, chunksUrl: url }],
      ['restoreChunks', { ...restore, chunksUrl: url, chunkPagesUrl: url }],
    ];

    const messages: string[] = [];
    for (const [operation, args] of cases) {
      const error = await hostErrorOf(call(operation, args));
      expect(error?.code).toBe('InvalidArguments');
      messages.push(error?.message ?? '');
    }

    expect(messages[0]).toContain('args.uploadsUrl: give exactly one of uploads (inline) or uploadsUrl');
    expect(messages[1]).toContain('give exactly one of uploads (inline) or uploadsUrl');
    expect(messages[2]).toContain(
      'args.previousManifestUrl: give the previous manifest as previousChunks or as previousManifestUrl, not both',
    );
    expect(messages[3]).toContain(
      'args.changesSinceBackingPath: give changedExtents or changesSinceBackingPath, not both',
    );
    expect(messages[4]).toContain('needs previousChunks or previousManifestUrl');
    expect(messages[5]).toContain('args.changesSinceBackingPath');
    expect(messages[6]).toContain(
      'args.chunksUrl: give exactly one of chunks (inline), chunksUrl or chunkPagesUrl',
    );
    expect(messages[7]).toContain('give exactly one of chunks (inline), chunksUrl or chunkPagesUrl');
    expect(messages[8]).toContain('give exactly one of chunks (inline), chunksUrl or chunkPagesUrl');
  });
});

describe('a disk whose last chunk is short', () => {
  it('restores a tail chunk of a few bytes (small buffers are hashed from memory of their own)', async () => {
    const size = CHUNK + 1536;
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', vol('tail.qcow2'), String(size)]);
    await qemuIo(vol('tail.qcow2'), `write -P 0x3a 0 ${CHUNK}`, `write -P 0x3b ${CHUNK} 1536`);
    const { manifest } = await backup('tail.qcow2', 'tail-1');

    const restored = await call<RestoreChunksResult>(
      'restoreChunks',
      await restoreArgs(manifest, 'rtail.qcow2'),
    );

    expect(manifest.chunks).toHaveLength(2);
    expect(restored).toMatchObject({ restored: true, chunksFetched: 2, bytesDownloaded: size });
    expect(await compare(vol('tail.qcow2'), vol('rtail.qcow2'))).toBe(true);
  });
});

describe('paged restore lists (chunkPagesUrl)', () => {
  let manifest: BackupManifest;
  /** The manifest's non-zero chunks as pages of `size` entries with presigned chunk GETs. */
  const pagesOf = async (size: number) => {
    const entries = (
      await Promise.all(
        manifest.chunks.map(async (sha256, index) =>
          sha256 === null
            ? null
            : {
                index,
                sha256,
                url: await getSignedUrl(
                  s3,
                  new GetObjectCommand({ Bucket: BUCKET, Key: chunkObjectKey(PREFIX, sha256) }),
                  { expiresIn: 600 },
                ),
              },
        ),
      )
    ).filter((e) => e !== null);
    const pages: (typeof entries)[] = [];
    for (let i = 0; i < entries.length; i += size) pages.push(entries.slice(i, i + size));
    return pages;
  };
  let planNumber = 0;
  const indexOf = async (pages: unknown[][], entries = pages.flat().length) => {
    const n = ++planNumber;
    const urls = await Promise.all(pages.map((page, k) => putJson(`paged/${n}/restore-${k}.json`, page)));
    return putJson(`paged/${n}/restore.json`, { version: 1, entries, pages: urls });
  };
  const restoreWith = (path: string, extra: Record<string, unknown>) =>
    call<RestoreChunksResult>('restoreChunks', {
      mountPath: share,
      path: `volumes/${path}`,
      virtualSizeBytes: manifest.virtualSizeBytes,
      chunkSizeBytes: manifest.chunkSizeBytes,
      count: manifest.chunks.length,
      ...extra,
    });

  beforeAll(async () => {
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', vol('p1.qcow2'), String(SIZE)]);
    // 11 non-zero chunks (two of them equal), 5 zero ones in between.
    const writes = [0, 1, 2, 4, 5, 7, 8, 10, 12, 13, 15].map(
      (i) => `write -P ${i === 13 ? 0x21 : 0x20 + i} ${i * CHUNK} ${CHUNK}`,
    );
    await qemuIo(vol('p1.qcow2'), ...writes);
    manifest = (await backup('p1.qcow2', 'p-1')).manifest;
    expect(manifest.chunks.filter((c) => c !== null)).toHaveLength(11);
  });

  it('restores from pages (the next page fetched while the current one is worked on), identical and sparse', async () => {
    const pages = await pagesOf(3);
    const events: string[] = [];
    // Pages and chunks served through a recording proxy, to see the order the host asks in.
    const proxy = createServer(async (req, res) => {
      const target = decodeURIComponent(new URL(req.url ?? '/', 'http://x').searchParams.get('to') ?? '');
      events.push(new URL(req.url ?? '/', 'http://x').pathname);
      const answer = await fetch(target);
      res.writeHead(answer.status, { 'content-length': answer.headers.get('content-length') ?? '0' });
      res.end(Buffer.from(await answer.arrayBuffer()));
    });
    await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
    const via = (path: string, url: string) =>
      `http://127.0.0.1:${(proxy.address() as AddressInfo).port}${path}?to=${encodeURIComponent(url)}`;
    try {
      const proxied = pages.map((page) => page.map((e) => ({ ...e, url: via(`/chunk/${e.index}`, e.url) })));
      const n = ++planNumber;
      const pageUrls = await Promise.all(
        proxied.map(async (page, k) =>
          via(`/page/${k}`, await putJson(`paged/${n}/restore-${k}.json`, page)),
        ),
      );
      const chunkPagesUrl = await putJson(`paged/${n}/restore.json`, {
        version: 1,
        entries: 11,
        pages: pageUrls,
      });

      const restored = await restoreWith('rp1.qcow2', { chunkPagesUrl, concurrency: 2 });

      expect(restored).toMatchObject({
        restored: true,
        chunksFetched: 11,
        bytesDownloaded: 11 * CHUNK,
        zeroChunks: 5,
      });
      expect(await compare(vol('p1.qcow2'), vol('rp1.qcow2'))).toBe(true);
      expect(events.filter((e) => e.startsWith('/page/'))).toEqual([
        '/page/0',
        '/page/1',
        '/page/2',
        '/page/3',
      ]);
      // Page 1 was asked for before the chunks of page 0 were all asked for.
      const lastOfPage0 = Math.max(...pages[0]!.map((e) => events.indexOf(`/chunk/${e.index}`)));
      expect(events.indexOf('/page/1')).toBeLessThan(lastOfPage0);
      // Zero chunks are never fetched.
      expect(events.filter((e) => e.startsWith('/chunk/')).length).toBe(11);
    } finally {
      await new Promise((resolve) => proxy.close(resolve));
    }
  });

  it('restores with a small byte budget (one chunk at a time) and with the default 256-entry pages', async () => {
    const small = await restoreWith('rp2.qcow2', {
      chunkPagesUrl: await indexOf(await pagesOf(256)),
      maxBytesInFlight: 1024 * 1024,
      concurrency: 8,
    });
    const empty = await call<RestoreChunksResult>('restoreChunks', {
      mountPath: share,
      path: 'volumes/rp-empty.qcow2',
      virtualSizeBytes: SIZE,
      chunkSizeBytes: CHUNK,
      count: 16,
      chunkPagesUrl: await indexOf([]),
    });

    expect(small).toMatchObject({ restored: true, chunksFetched: 11 });
    expect(await compare(vol('p1.qcow2'), vol('rp2.qcow2'))).toBe(true);
    expect(empty).toMatchObject({ restored: true, chunksFetched: 0, zeroChunks: 16 });
  });

  it('refuses pages that are out of order, beyond the disk or not what the index announces, and leaves no file', async () => {
    const pages = await pagesOf(4);
    const before = await readdir(join(share, 'volumes'));
    const beyond = [[{ ...pages[0]![0]!, index: 16 }]];

    const errors = [
      await hostErrorOf(restoreWith('bad1.qcow2', { chunkPagesUrl: await indexOf([pages[1]!, pages[0]!]) })),
      await hostErrorOf(restoreWith('bad2.qcow2', { chunkPagesUrl: await indexOf(beyond) })),
      await hostErrorOf(restoreWith('bad3.qcow2', { chunkPagesUrl: await indexOf(pages, 12) })),
      await hostErrorOf(restoreWith('bad4.qcow2', { chunkPagesUrl: await indexOf(pages, 10) })),
      await hostErrorOf(restoreWith('bad5.qcow2', { chunkPagesUrl: await indexOf(pages, 17) })),
      await hostErrorOf(restoreWith('bad6.qcow2', { chunkPagesUrl: await indexOf(pages), count: 15 })),
      await hostErrorOf(
        restoreWith('bad7.qcow2', { chunkPagesUrl: await putJson('paged/bad-index.json', { pages: [] }) }),
      ),
    ];

    expect(errors.map((e) => e?.code)).toEqual(Array(errors.length).fill('InvalidInput'));
    expect(errors.map((e) => e?.message)).toEqual([
      expect.stringContaining('chunkPagesUrl page 1: chunk index 0 is out of order'),
      expect.stringContaining('chunkPagesUrl page 0: chunk index 16 is out of order or beyond'),
      'chunkPagesUrl: the pages list 11 chunks, not the 12 the index announces',
      'chunkPagesUrl: the pages list at least 11 chunks, not the 10 the index announces',
      'chunkPagesUrl announces 17 chunks; the disk has 16',
      'count is 15, but the disk has 16 chunk indexes',
      expect.stringContaining('chunkPagesUrl: [version]'),
    ]);
    expect(await readdir(join(share, 'volumes'))).toEqual(before);
  });

  it('reports a page that is gone as not found, and removes the temporary file', async () => {
    const pages = await pagesOf(4);
    const missing = await getSignedUrl(s3, new GetObjectCommand({ Bucket: BUCKET, Key: 'paged/none.json' }), {
      expiresIn: 600,
    });
    const urls = await Promise.all(pages.map((page, k) => putJson(`paged/gone/restore-${k}.json`, page)));
    urls[1] = missing;
    const chunkPagesUrl = await putJson('paged/gone/restore.json', { version: 1, entries: 11, pages: urls });
    const before = await readdir(join(share, 'volumes'));

    const error = await hostErrorOf(restoreWith('gone.qcow2', { chunkPagesUrl }));

    expect(error?.code).toBe('ObjectNotFound');
    expect(error?.message).not.toContain('X-Amz-Signature');
    expect(await readdir(join(share, 'volumes'))).toEqual(before);
  });
});
