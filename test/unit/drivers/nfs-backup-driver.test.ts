import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { GetObjectCommand, ListObjectsV2Command, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import type { BackupScanResult } from '../../../drivers/nfs/backup-ops.js';
import { NfsDriver } from '../../../drivers/nfs/driver.js';
import { nfsHostOperations } from '../../../drivers/nfs/host-ops.js';
import { createNfsProvider } from '../../../drivers/nfs/provider.js';
import { type BackupManifest, buildManifest, chunkObjectKey } from '../../../drivers/sdk/backup-manifest.js';
import { DriverError } from '../../../drivers/sdk/errors.js';
import { HostStorage } from '../../../drivers/sdk/host-config.js';
import { createInProcessHostInvoker } from '../../../drivers/sdk/host-runtime.js';
import { createTestDriverContext } from '../../../drivers/sdk/testing.js';
import {
  type ChunkScanOptions,
  type DataObjectRef,
  type DataStoreInfo,
  type HostInvoker,
  isBackupCapable,
} from '../../../drivers/sdk/types.js';
import { localS3ClientConfig, type S3Emulator, startS3Emulator } from '../../../infra/local/s3-emulator.js';

// Real qemu-img / qemu-nbd runs, many per test, on a 2-core machine.
jest.setTimeout(60_000);

const run = promisify(execFile);
const KiB = 1024;
const MiB = 1024 * KiB;
const CHUNK = 256 * KiB;
const SIZE = 4 * MiB; // 16 chunks
const BUCKET = 'backups';
const PREFIX = 'chunks';
const VOL = 'volumes/vol-1.qcow2';
const snap = (id: string) => `snapshots/vol-1/${id}.qcow2`;

let root: string;
let share: string;
let emulator: S3Emulator;
let s3: S3Client;
let host: HostInvoker;
let driver: NfsDriver;
let planNumber = 0;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'strata-nfs-backup-'));
  emulator = await startS3Emulator({ dir: join(root, 's3'), buckets: [BUCKET] });
  s3 = new S3Client(localS3ClientConfig(emulator.endpoint));
});
afterAll(async () => {
  s3?.destroy();
  await emulator?.stop();
  await rm(root, { recursive: true, force: true });
});

// A fresh share per test: a template with data in chunks 0 and 8, and vol-1 as a linked clone of it.
beforeEach(async () => {
  share = await mkdtemp(join(root, 'share-'));
  await mkdir(join(share, 'templates'));
  host = createInProcessHostInvoker({
    // The test's temp dir is the one storage root its host may touch (as /etc/strata/host.json says on a host).
    storage: HostStorage.fromConfig({ storageRoots: [{ path: root, kind: 'directory' }] }),
    operationSets: [nfsHostOperations],
    workDirRoot: join(share, '.hosts'),
  });
  driver = createNfsProvider().driver as NfsDriver;
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', join(share, 'templates/t.qcow2'), String(SIZE)]);
  await qemuIo('templates/t.qcow2', 'write -P 0x01 0 64k', 'write -P 0x02 2M 64k');
  await host.run('host-1', {
    provider: 'nfs',
    operation: 'clone',
    args: { mountPath: share, path: VOL, sourcePath: 'templates/t.qcow2' },
    jobId: 'job-clone',
  });
});
afterEach(() => {
  jest.restoreAllMocks();
});

const store = (): DataStoreInfo => ({
  id: 'ds-1',
  name: 'ds-1',
  provider: 'nfs',
  role: 'primary',
  scope: { type: 'cluster', zoneId: 'z1', clusterId: 'c1' },
  details: { server: 'nfs.example.internal', export: '/srv/ds-1', mountPath: share },
  capacityBytes: 1 << 30,
});
const volume: DataObjectRef = { kind: 'volume', id: 'vol-1', format: 'qcow2', path: VOL };
const snapshot = (id: string): DataObjectRef => ({ kind: 'snapshot', id, parent: volume });
const base = () => ({
  store: store(),
  ctx: createTestDriverContext({ host }),
  hostId: 'host-1',
  object: volume,
});

async function qemuIo(path: string, ...commands: string[]): Promise<void> {
  await run('qemu-io', ['-f', 'qcow2', ...commands.flatMap((c) => ['-c', c]), join(share, path)]);
}
async function sameContent(a: string, b: string): Promise<boolean> {
  try {
    await run('qemu-img', ['compare', '-q', '-f', 'qcow2', '-F', 'qcow2', join(share, a), join(share, b)]);
    return true;
  } catch (error) {
    if ((error as { code?: number }).code === 1) return false;
    throw error;
  }
}
async function putJson(key: string, value: unknown): Promise<string> {
  await s3.send(new PutObjectCommand({ Bucket: BUCKET, Key: key, Body: JSON.stringify(value) }));
  return getSignedUrl(s3, new GetObjectCommand({ Bucket: BUCKET, Key: key }), { expiresIn: 600 });
}
const presign = (command: 'get' | 'put', sha256: string) => {
  const key = { Bucket: BUCKET, Key: chunkObjectKey(PREFIX, sha256) };
  const cmd = command === 'get' ? new GetObjectCommand(key) : new PutObjectCommand(key);
  return getSignedUrl(s3, cmd, { expiresIn: 600 });
};
async function storedChunks(): Promise<Set<string>> {
  const out = await s3.send(new ListObjectsV2Command({ Bucket: BUCKET, Prefix: `${PREFIX}/` }));
  return new Set((out.Contents ?? []).map((o) => o.Key!.split('/').pop()!));
}

// What the control plane does: scan, presign PUTs for what its chunk index lacks, upload, write the
// manifest last.
async function backupSnapshot(id: string, previous?: { manifest: BackupManifest; url: string }) {
  const scan = await driver.scanSnapshotChunks({
    ...base(),
    snapshot: snapshot(id),
    chunkSizeBytes: CHUNK,
    ...(previous
      ? { previous: { snapshotId: previous.manifest.snapshotId, manifestUrl: previous.url } }
      : {}),
  });
  const stored = await storedChunks();
  const plan = await Promise.all(
    scan.computed
      .filter((c) => !stored.has(c.sha256))
      .map(async ({ index, sha256 }) => ({ index, sha256, url: await presign('put', sha256) })),
  );
  const upload = await driver.uploadSnapshotChunks({
    ...base(),
    snapshot: snapshot(id),
    chunkSizeBytes: CHUNK,
    uploadsUrl: await putJson(`plans/${++planNumber}.json`, plan),
    count: plan.length,
  });
  const manifest = buildManifest({
    volumeId: 'vol-1',
    snapshotId: id,
    virtualSizeBytes: scan.virtualSizeBytes,
    chunkSizeBytes: scan.chunkSizeBytes,
    chunks: scan.chunks,
    ...(previous ? { parentSnapshotId: previous.manifest.snapshotId } : {}),
  });
  const url = await putJson(`manifests/${planNumber}-${id}.json`, manifest);
  return { scan, upload, manifest, url };
}
async function restore(manifest: BackupManifest, volumeId: string) {
  const list = await Promise.all(
    manifest.chunks.map(async (sha256, index) =>
      sha256 === null ? null : { index, sha256, url: await presign('get', sha256) },
    ),
  );
  // As the control plane sends it: an index naming pages of the non-zero chunks.
  const page = list.filter((entry) => entry !== null);
  const n = ++planNumber;
  const pageUrl = await putJson(`plans/${n}/restore-0.json`, page);
  return driver.restoreChunks({
    ...base(),
    object: { kind: 'volume', id: volumeId, format: 'qcow2' },
    virtualSizeBytes: manifest.virtualSizeBytes,
    chunkSizeBytes: manifest.chunkSizeBytes,
    chunkPagesUrl: await putJson(`plans/${n}/restore.json`, {
      version: 1,
      entries: page.length,
      pages: [pageUrl],
    }),
    count: list.length,
  });
}

describe('NfsDriver as a BackupCapableDriver', () => {
  it('is backup capable', () => {
    expect(isBackupCapable(new NfsDriver())).toBe(true);
    expect(isBackupCapable(createNfsProvider().driver)).toBe(true);
  });

  describe('scanSnapshotChunks and uploadSnapshotChunks', () => {
    it('backs up the first snapshot in full, then the next one reading only the chunks written since', async () => {
      await qemuIo(VOL, 'write -P 0x11 1M 64k'); // chunk 4
      await driver.takeSnapshot({ ...base(), snapshot: snapshot('s1') });
      const first = await backupSnapshot('s1');

      expect(first.scan.incremental).toBe(false);
      expect(first.scan.computed.map((c) => c.index)).toEqual([0, 4, 8]);
      expect(first.scan.counters).toMatchObject({ bytesRead: 3 * CHUNK, chunksTotal: 16, zeroChunks: 13 });
      expect(first.upload).toEqual({ chunksUploaded: 3, bytesRead: 3 * CHUNK, bytesUploaded: 3 * CHUNK });

      // Between s1 and s2: chunk 12 written, chunk 4 written back to zeros (a change too).
      await qemuIo(VOL, 'write -P 0x22 3M 64k', 'write -z 1M 64k');
      await driver.takeSnapshot({ ...base(), snapshot: snapshot('s2') });
      const second = await backupSnapshot('s2', first);

      expect(second.scan.incremental).toBe(true);
      // Chunks 4 and 12 were read, nothing else; 4 is zeros now, so only 12 is a computed hash.
      expect(second.scan.counters).toEqual({
        bytesRead: 2 * CHUNK,
        bytesUploaded: 0,
        chunksTotal: 16,
        chunksChanged: 2,
        chunksReused: 2,
        zeroChunks: 13,
      });
      expect(second.scan.computed).toEqual([{ index: 12, sha256: second.scan.chunks[12] }]);
      expect(second.scan.chunks[4]).toBeNull();
      expect(second.scan.chunks[0]).toBe(first.manifest.chunks[0]);
      expect(second.scan.chunks[8]).toBe(first.manifest.chunks[8]);
      expect(second.upload).toEqual({ chunksUploaded: 1, bytesRead: CHUNK, bytesUploaded: CHUNK });

      // Each backup restores to exactly its snapshot, not to the volume's later state.
      await qemuIo(VOL, 'write -P 0x33 0 64k');
      await expect(restore(second.manifest, 'r2')).resolves.toMatchObject({
        path: 'volumes/r2.qcow2',
        virtualSizeBytes: SIZE,
        format: 'qcow2',
        restored: true,
        chunksFetched: 3,
        bytesDownloaded: 3 * CHUNK,
        zeroChunks: 13,
      });
      await restore(first.manifest, 'r1');
      expect(await sameContent('volumes/r2.qcow2', snap('s2'))).toBe(true);
      expect(await sameContent('volumes/r1.qcow2', snap('s1'))).toBe(true);
      expect(await sameContent('volumes/r2.qcow2', VOL)).toBe(false);
      await expect(restore(second.manifest, 'r2')).resolves.toMatchObject({ restored: false });
    });

    it('hands the host only URLs and paths, never a chunk list', async () => {
      await driver.takeSnapshot({ ...base(), snapshot: snapshot('s1') });
      const first = await backupSnapshot('s1');
      await driver.takeSnapshot({ ...base(), snapshot: snapshot('s2') });
      const spy = jest.spyOn(host, 'run');

      await backupSnapshot('s2', first);

      const [scanRequest, uploadRequest] = spy.mock.calls.map(([, request]) => request);
      expect(scanRequest).toMatchObject({
        operation: 'backupChunks',
        deadlineSeconds: 6 * 3600,
        args: {
          phase: 'scan',
          mountPath: share,
          path: snap('s2'),
          chunkSizeBytes: CHUNK,
          previousManifestUrl: first.url,
          changesSinceBackingPath: snap('s1'),
        },
      });
      expect(Object.keys(scanRequest?.args ?? {})).not.toContain('knownChunks');
      expect(uploadRequest).toMatchObject({ args: { phase: 'upload', count: 0 } });
      expect(JSON.stringify(spy.mock.calls).length).toBeLessThan(8 * KiB);
    });

    it('scans in full when the previous backup is no longer the base: its snapshot was deleted', async () => {
      await qemuIo(VOL, 'write -P 0x11 1M 64k');
      await driver.takeSnapshot({ ...base(), snapshot: snapshot('s1') });
      const first = await backupSnapshot('s1');
      await qemuIo(VOL, 'write -P 0x22 3M 64k');
      await driver.takeSnapshot({ ...base(), snapshot: snapshot('s2') });
      const incremental = (await backupSnapshot('s2', first)).scan;
      expect(incremental.incremental).toBe(true);

      // s1 is merged into s2: s2 now sits on the template, so its own extents are no longer the
      // writes since s1's backup.
      await driver.deleteSnapshot({ ...base(), snapshot: snapshot('s1') });
      const again = (await backupSnapshot('s2', first)).scan;

      expect(again.incremental).toBe(false);
      expect(again.chunks).toEqual(incremental.chunks);
      expect(again.counters.bytesRead).toBe(4 * CHUNK); // chunks 0, 4, 8 and 12: everything with data
    });

    it('scans in full when the previous backup is no longer the base: the volume was reverted', async () => {
      await driver.takeSnapshot({ ...base(), snapshot: snapshot('s1') });
      const first = await backupSnapshot('s1');
      await qemuIo(VOL, 'write -P 0x22 3M 64k');
      await driver.takeSnapshot({ ...base(), snapshot: snapshot('s2') });
      const second = await backupSnapshot('s2', first);
      await driver.revertSnapshot({ ...base(), snapshot: snapshot('s1') });
      await qemuIo(VOL, 'write -P 0x44 1M 64k');
      await driver.takeSnapshot({ ...base(), snapshot: snapshot('s3') });

      // The last backup is s2's, but s3 is built on s1: s2's chunk 12 must not leak into s3's backup.
      const third = await backupSnapshot('s3', second);

      expect(third.scan.incremental).toBe(false);
      expect(third.scan.chunks[12]).toBeNull();
      expect(third.scan.computed.map((c) => c.index)).toEqual([0, 4, 8]);
      await restore(third.manifest, 'r3');
      expect(await sameContent('volumes/r3.qcow2', snap('s3'))).toBe(true);
    });

    it('scans in full when the previous manifest has another chunk size', async () => {
      await driver.takeSnapshot({ ...base(), snapshot: snapshot('s1') });
      const first = await backupSnapshot('s1');
      await qemuIo(VOL, 'write -P 0x22 3M 64k');
      await driver.takeSnapshot({ ...base(), snapshot: snapshot('s2') });
      const coarse = buildManifest({
        ...first.manifest,
        chunkSizeBytes: 2 * CHUNK,
        chunks: Array(8).fill(null),
      });

      const scan = await driver.scanSnapshotChunks({
        ...base(),
        snapshot: snapshot('s2'),
        chunkSizeBytes: CHUNK,
        previous: { snapshotId: 's1', manifestUrl: await putJson('manifests/coarse.json', coarse) },
      });

      expect(scan.incremental).toBe(false);
      expect(scan.computed.map((c) => c.index)).toEqual([0, 8, 12]);
    });

    it("host operation: incremental only when changesSinceBackingPath is exactly the layer's base", async () => {
      await driver.takeSnapshot({ ...base(), snapshot: snapshot('s1') });
      const first = await backupSnapshot('s1');
      await qemuIo(VOL, 'write -P 0x22 3M 64k');
      await driver.takeSnapshot({ ...base(), snapshot: snapshot('s2') });
      const scanWith = (changesSinceBackingPath: string) =>
        host.run<BackupScanResult>('host-1', {
          provider: 'nfs',
          operation: 'backupChunks',
          jobId: 'job-scan',
          args: {
            phase: 'scan',
            mountPath: share,
            path: snap('s2'),
            chunkSizeBytes: CHUNK,
            previousManifestUrl: first.url,
            changesSinceBackingPath,
          },
        });

      const exact = await scanWith(snap('s1'));
      const other = await scanWith('templates/t.qcow2');
      const missing = await scanWith(snap('never'));

      expect(exact).toMatchObject({ incremental: true, computed: [{ index: 12 }] });
      expect(exact.counters.bytesRead).toBe(CHUNK);
      for (const full of [other, missing]) {
        expect(full.incremental).toBe(false);
        expect(full.chunks).toEqual(exact.chunks);
        expect(full.counters.bytesRead).toBe(3 * CHUNK);
      }
    });
  });

  describe('input validation', () => {
    const fieldOf = (promise: Promise<unknown>) =>
      promise.then(
        () => 'resolved',
        (e: unknown) =>
          e instanceof DriverError ? `${e.code}:${String(e.context?.field ?? '')}` : `other:${String(e)}`,
      );

    it('names the bad field and never reaches the host', async () => {
      const spy = jest.spyOn(host, 'run');
      const scan = (over: Partial<ChunkScanOptions>) =>
        driver.scanSnapshotChunks({ ...base(), snapshot: snapshot('s1'), chunkSizeBytes: CHUNK, ...over });
      const url = `${emulator.endpoint}/${BUCKET}/x.json`;
      const restoreWith = (over: Record<string, unknown>) =>
        driver.restoreChunks({
          ...base(),
          object: { kind: 'volume', id: 'r9', format: 'qcow2' },
          virtualSizeBytes: SIZE,
          chunkSizeBytes: CHUNK,
          chunksUrl: url,
          count: 16,
          ...over,
        });

      const results = await Promise.all([
        fieldOf(scan({ chunkSizeBytes: 1000 })),
        fieldOf(scan({ previous: { snapshotId: 's0', manifestUrl: 'file:///etc/passwd' } })),
        fieldOf(scan({ previous: { snapshotId: '../s0', manifestUrl: url } })),
        fieldOf(scan({ snapshot: { kind: 'snapshot', id: 'old', path: `${VOL}@old` } })),
        fieldOf(
          driver.uploadSnapshotChunks({
            ...base(),
            snapshot: snapshot('s1'),
            chunkSizeBytes: CHUNK,
            uploadsUrl: 'not a url',
            count: 0,
          }),
        ),
        fieldOf(
          driver.uploadSnapshotChunks({
            ...base(),
            snapshot: snapshot('s1'),
            chunkSizeBytes: CHUNK,
            uploadsUrl: url,
            count: -1,
          }),
        ),
        fieldOf(restoreWith({ count: 15 })),
        fieldOf(restoreWith({ chunksUrl: undefined })),
        fieldOf(restoreWith({ chunkPagesUrl: url })),
        fieldOf(restoreWith({ chunksUrl: undefined, chunkPagesUrl: 'file:///etc/passwd' })),
        fieldOf(restoreWith({ virtualSizeBytes: 0 })),
        fieldOf(restoreWith({ object: { kind: 'volume', id: 'r9', format: 'raw' } })),
        fieldOf(restoreWith({ object: { kind: 'snapshot', id: 'r9' } })),
      ]);

      expect(results).toEqual([
        'InvalidInput:chunkSizeBytes',
        'InvalidInput:previous.manifestUrl',
        'InvalidInput:previous.snapshotId',
        'Unsupported:snapshot.path',
        'InvalidInput:uploadsUrl',
        'InvalidInput:count',
        'InvalidInput:count',
        'InvalidInput:chunkPagesUrl',
        'InvalidInput:chunkPagesUrl',
        'InvalidInput:chunkPagesUrl',
        'InvalidInput:virtualSizeBytes',
        'InvalidInput:object.format',
        'InvalidInput:object.kind',
      ]);
      expect(spy).not.toHaveBeenCalled();
      expect(await readdir(join(share, 'volumes'))).toEqual(['vol-1.qcow2']);
    });
  });
});
