import { execFile } from 'node:child_process';
import * as fsPromises from 'node:fs/promises';
import { mkdir, mkdtemp, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { NfsDriver } from '../../../drivers/nfs/driver.js';
import { nfsHostOperations } from '../../../drivers/nfs/host-ops.js';
import { createNfsProvider } from '../../../drivers/nfs/provider.js';
import { HostOperationError } from '../../../drivers/sdk/errors.js';
import { HostStorage } from '../../../drivers/sdk/host-config.js';
import { createInProcessHostInvoker } from '../../../drivers/sdk/host-runtime.js';
import { createTestDriverContext } from '../../../drivers/sdk/testing.js';
import type { DataObjectRef, DataStoreInfo, HostInvoker } from '../../../drivers/sdk/types.js';

// The real module object (an `import * as` namespace is a copy under swc), so a spy reaches the ops.
const fsModule: typeof fsPromises = require('node:fs/promises');
const run = promisify(execFile);
// Real qemu-img runs, many per test, on a 2-core machine.
jest.setTimeout(60_000);
const KiB = 1024;
const MiB = 1024 * KiB;
const VOL = 'volumes/vol-1.qcow2';
const snap = (id: string) => `snapshots/vol-1/${id}.qcow2`;

let root: string;
let share: string;
let outside: string;
let refs: string;
let host: HostInvoker;

beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'strata-nfs-snap-'));
  share = join(root, 'share');
  outside = join(root, 'outside');
  refs = join(root, 'refs');
  await Promise.all([mkdir(share), mkdir(outside), mkdir(refs)]);
  host = createInProcessHostInvoker({
    // The test's temp dir is the one storage root its host may touch (as /etc/strata/host.json says on a host).
    storage: HostStorage.fromConfig({ storageRoots: [{ path: root, kind: 'directory' }] }),
    operationSets: [nfsHostOperations],
    workDirRoot: join(root, 'hosts'),
  });
  // A template cache entry with data of its own, and a volume as a linked clone of it.
  await mkdir(join(share, 'templates'));
  await qemuImg('create', '-q', '-f', 'qcow2', join(share, 'templates/t.qcow2'), String(8 * MiB));
  await qemuIo(join(share, 'templates/t.qcow2'), 'write -P 0x01 0 64k', 'write -P 0x02 4M 64k');
  await call('clone', { mountPath: share, path: VOL, sourcePath: 'templates/t.qcow2' });
});
afterEach(async () => {
  jest.restoreAllMocks();
  await rm(root, { recursive: true, force: true });
});

const call = <T = Record<string, unknown>>(
  operation: string,
  args: Record<string, unknown>,
  jobId = 'job-1',
) => host.run<T>('host-1', { provider: 'nfs', operation, args, jobId });
const codeOf = (promise: Promise<unknown>) =>
  promise.then(
    () => 'resolved',
    (e: unknown) => (e instanceof HostOperationError ? e.hostError.code : String(e)),
  );
const chain = (snapshotPath: string) => ({ mountPath: share, volumePath: VOL, snapshotPath });

async function qemuImg(...args: string[]): Promise<string> {
  return (await run('qemu-img', args)).stdout;
}
async function qemuIo(file: string, ...commands: string[]): Promise<void> {
  await run('qemu-io', ['-f', 'qcow2', ...commands.flatMap((c) => ['-c', c]), file]);
}
async function info(path: string): Promise<Record<string, unknown>> {
  return JSON.parse(await qemuImg('info', '--output=json', '-f', 'qcow2', join(share, path)));
}
// A flattened copy of what `path` reads now, to compare with later.
async function reference(path: string, name: string): Promise<string> {
  const out = join(refs, `${name}.qcow2`);
  await qemuImg('convert', '-f', 'qcow2', '-O', 'qcow2', join(share, path), out);
  return out;
}
async function sameAs(path: string, ref: string): Promise<boolean> {
  try {
    await run('qemu-img', ['compare', '-q', '-f', 'qcow2', '-F', 'qcow2', join(share, path), ref]);
    return true;
  } catch (error) {
    if ((error as { code?: number }).code === 1) return false;
    throw error;
  }
}

// template ← s1 ← s2 ← s3 ← active, with known writes between the snapshots.
async function buildChain() {
  const vol = join(share, VOL);
  await qemuIo(vol, 'write -P 0x11 0 64k');
  const r1 = await reference(VOL, 'r1');
  await call('takeChainSnapshot', chain(snap('s1')));
  await qemuIo(vol, 'write -P 0x22 1M 128k', 'write -z 2M 64k', 'write -P 0x23 4M 64k');
  const r2 = await reference(VOL, 'r2');
  await call('takeChainSnapshot', chain(snap('s2')));
  await qemuIo(vol, 'write -P 0x33 3M 64k');
  const r3 = await reference(VOL, 'r3');
  await call('takeChainSnapshot', chain(snap('s3')));
  await qemuIo(vol, 'write -P 0x44 5M 64k');
  const rActive = await reference(VOL, 'active');
  return { r1, r2, r3, rActive };
}

describe('nfs external snapshot chains', () => {
  it('freezes the active layer and keeps the volume path, with relative backing references', async () => {
    const { r1, r2, r3, rActive } = await buildChain();

    expect(await info(VOL)).toMatchObject({
      'backing-filename': '../snapshots/vol-1/s3.qcow2',
      'backing-filename-format': 'qcow2',
    });
    expect((await info(snap('s3')))['backing-filename']).toBe('s2.qcow2');
    expect((await info(snap('s2')))['backing-filename']).toBe('s1.qcow2');
    // s1 used to be the clone in volumes/: its base reference was rewritten for its new directory.
    expect((await info(snap('s1')))['backing-filename']).toBe('../../templates/t.qcow2');
    expect(await sameAs(snap('s1'), r1)).toBe(true);
    expect(await sameAs(snap('s2'), r2)).toBe(true);
    expect(await sameAs(snap('s3'), r3)).toBe(true);
    expect(await sameAs(VOL, rActive)).toBe(true);
    // No intent records or temporaries left behind.
    expect((await readdir(join(share, 'snapshots/vol-1'))).sort()).toEqual([
      's1.qcow2',
      's2.qcow2',
      's3.qcow2',
    ]);
    expect(await readdir(join(share, 'volumes'))).toEqual(['vol-1.qcow2']);
  });

  it('lists exactly the extents written between two snapshots', async () => {
    await buildChain();

    const s2 = await call('snapshotChanges', { mountPath: share, snapshotPath: snap('s2') });
    expect(s2).toEqual({
      extents: [
        { start: 1 * MiB, length: 128 * KiB, zero: false },
        { start: 2 * MiB, length: 64 * KiB, zero: true },
        { start: 4 * MiB, length: 64 * KiB, zero: false },
      ],
      virtualSizeBytes: 8 * MiB,
      backingPath: snap('s1'),
    });
    const s1 = await call('snapshotChanges', { mountPath: share, snapshotPath: snap('s1') });
    expect(s1).toMatchObject({
      extents: [{ start: 0, length: 64 * KiB, zero: false }],
      backingPath: 'templates/t.qcow2',
    });
    const s3 = await call('snapshotChanges', { mountPath: share, snapshotPath: snap('s3') });
    expect(s3.extents).toEqual([{ start: 3 * MiB, length: 64 * KiB, zero: false }]);
  });

  it('lists every data extent through the chain for a full first backup (zeros left out)', async () => {
    await buildChain();

    const full = await call('allocatedExtents', { mountPath: share, path: snap('s2') });
    expect(full).toEqual({
      extents: [
        { start: 0, length: 64 * KiB, zero: false },
        { start: 1 * MiB, length: 128 * KiB, zero: false },
        { start: 4 * MiB, length: 64 * KiB, zero: false },
      ],
      virtualSizeBytes: 8 * MiB,
    });
  });

  it('reverts to any snapshot, and later snapshots stay valid', async () => {
    const { r1, r2, r3 } = await buildChain();

    await call('revertChainSnapshot', chain(snap('s1')));
    expect(await sameAs(VOL, r1)).toBe(true);
    expect((await info(VOL))['backing-filename']).toBe('../snapshots/vol-1/s1.qcow2');
    expect(await sameAs(snap('s2'), r2)).toBe(true);
    expect(await sameAs(snap('s3'), r3)).toBe(true);

    await qemuIo(join(share, VOL), 'write -P 0x55 0 64k');
    await call('revertChainSnapshot', chain(snap('s3')));
    expect(await sameAs(VOL, r3)).toBe(true);
    await call('revertChainSnapshot', chain(snap('s3')), 'job-2');
    expect(await sameAs(VOL, r3)).toBe(true);
    expect(await readdir(join(share, 'volumes'))).toEqual(['vol-1.qcow2']);
  });

  it('deletes a middle snapshot by merging it into its child', async () => {
    const { r1, r3, rActive } = await buildChain();

    const result = await call('deleteChainSnapshot', chain(snap('s2')));
    expect(result).toEqual({ deleted: true, rebased: [snap('s3')] });
    expect((await readdir(join(share, 'snapshots/vol-1'))).sort()).toEqual(['s1.qcow2', 's3.qcow2']);
    expect((await info(snap('s3')))['backing-filename']).toBe('s1.qcow2');
    expect(await sameAs(snap('s1'), r1)).toBe(true);
    expect(await sameAs(snap('s3'), r3)).toBe(true);
    expect(await sameAs(VOL, rActive)).toBe(true);
    // s3 now holds what s2 changed as well: its changes are relative to s1. s2's zeroed range at 2M
    // is not among them because s1 already reads zeros there (a safe rebase copies differences only).
    const changes = await call<{ extents: { start: number }[] }>('snapshotChanges', {
      mountPath: share,
      snapshotPath: snap('s3'),
    });
    expect(changes.extents.map((e) => e.start)).toEqual([1 * MiB, 3 * MiB, 4 * MiB]);

    await expect(call('deleteChainSnapshot', chain(snap('s2')), 'job-2')).resolves.toEqual({
      deleted: false,
      rebased: [],
    });
  });

  it('deletes the newest snapshot by merging it into the active layer, and the oldest onto the template', async () => {
    const { r2, rActive } = await buildChain();

    await expect(call('deleteChainSnapshot', chain(snap('s3')))).resolves.toEqual({
      deleted: true,
      rebased: [VOL],
    });
    expect((await info(VOL))['backing-filename']).toBe('../snapshots/vol-1/s2.qcow2');
    await expect(call('deleteChainSnapshot', chain(snap('s1')))).resolves.toEqual({
      deleted: true,
      rebased: [snap('s2')],
    });
    expect((await info(snap('s2')))['backing-filename']).toBe('../../templates/t.qcow2');
    expect(await sameAs(snap('s2'), r2)).toBe(true);
    expect(await sameAs(VOL, rActive)).toBe(true);
  });

  it('deletes a snapshot with two children after a revert', async () => {
    const { r2 } = await buildChain();
    await call('revertChainSnapshot', chain(snap('s1')));
    await qemuIo(join(share, VOL), 'write -P 0x66 6M 64k');
    const rActive = await reference(VOL, 'after-revert');

    const result = await call<{ deleted: boolean; rebased: string[] }>(
      'deleteChainSnapshot',
      chain(snap('s1')),
    );
    expect(result.deleted).toBe(true);
    expect(result.rebased.sort()).toEqual([snap('s2'), VOL].sort());
    expect((await info(VOL))['backing-filename']).toBe('../templates/t.qcow2');
    expect((await info(snap('s2')))['backing-filename']).toBe('../../templates/t.qcow2');
    expect(await sameAs(VOL, rActive)).toBe(true);
    expect(await sameAs(snap('s2'), r2)).toBe(true);
  });

  it('deletes the only snapshot of a blank volume (no base) by flattening it into the volume', async () => {
    await call('create', { mountPath: share, path: 'volumes/blank.qcow2', sizeBytes: 4 * MiB });
    const blank = { mountPath: share, volumePath: 'volumes/blank.qcow2' };
    await qemuIo(join(share, 'volumes/blank.qcow2'), 'write -P 0x77 0 64k');
    await call('takeChainSnapshot', { ...blank, snapshotPath: 'snapshots/blank/b1.qcow2' });
    await qemuIo(join(share, 'volumes/blank.qcow2'), 'write -P 0x78 1M 64k');
    const ref = await reference('volumes/blank.qcow2', 'blank');
    expect(
      await call('snapshotChanges', { mountPath: share, snapshotPath: 'snapshots/blank/b1.qcow2' }),
    ).toEqual({ extents: [{ start: 0, length: 64 * KiB, zero: false }], virtualSizeBytes: 4 * MiB });

    await call('deleteChainSnapshot', { ...blank, snapshotPath: 'snapshots/blank/b1.qcow2' });
    expect((await info('volumes/blank.qcow2'))['backing-filename']).toBeUndefined();
    expect(await sameAs('volumes/blank.qcow2', ref)).toBe(true);
  });

  it('repeats a take without extending the chain', async () => {
    await qemuIo(join(share, VOL), 'write -P 0x11 0 64k');
    const first = await call('takeChainSnapshot', chain(snap('s1')));
    await qemuIo(join(share, VOL), 'write -P 0x12 1M 64k');
    const again = await call('takeChainSnapshot', chain(snap('s1')), 'job-2');

    expect(again).toEqual(first);
    expect(first).toMatchObject({
      path: snap('s1'),
      virtualSizeBytes: 8 * MiB,
      format: 'qcow2',
      backingPath: 'templates/t.qcow2',
    });
    expect((await info(VOL))['backing-filename']).toBe('../snapshots/vol-1/s1.qcow2');
    // The write after the snapshot is still in the active layer.
    const changes = await call<{ extents: unknown[] }>('allocatedExtents', { mountPath: share, path: VOL });
    expect(changes.extents).toContainEqual({ start: 1 * MiB, length: 64 * KiB, zero: false });
  });

  describe('crash recovery', () => {
    it('finishes a take interrupted after the move, before the new overlay was in place', async () => {
      await qemuIo(join(share, VOL), 'write -P 0x11 0 64k');
      const r1 = await reference(VOL, 'r1');
      // The first rename is the move of the volume; the second would put the overlay in place.
      const realRename = fsModule.rename;
      let renames = 0;
      const spy = jest.spyOn(fsModule, 'rename').mockImplementation(async (from, to) => {
        if (String(to).endsWith(VOL) && ++renames === 1 && String(from).includes('.tmp')) {
          throw Object.assign(new Error('host lost power'), { code: 'EIO' });
        }
        return realRename(from, to);
      });
      const crashed = await codeOf(call('takeChainSnapshot', chain(snap('s1'))));
      spy.mockRestore();
      expect(crashed).not.toBe('resolved');
      expect(await readdir(join(share, 'volumes'))).toEqual([]);
      expect(await readdir(join(share, 'snapshots/vol-1'))).toContain('.s1.qcow2.take.json');
      // Nothing else may run on the volume until the take is finished.
      await expect(codeOf(call('revertChainSnapshot', chain(snap('s1'))))).resolves.toBe('Conflict');
      await expect(codeOf(call('takeChainSnapshot', chain(snap('s2'))))).resolves.toBe('Conflict');
      await expect(codeOf(call('deleteChainSnapshot', chain(snap('s1'))))).resolves.toBe('Conflict');

      await call('takeChainSnapshot', chain(snap('s1')), 'job-2');
      expect(await readdir(join(share, 'snapshots/vol-1'))).toEqual(['s1.qcow2']);
      expect((await info(VOL))['backing-filename']).toBe('../snapshots/vol-1/s1.qcow2');
      expect(await sameAs(VOL, r1)).toBe(true);
      expect(await sameAs(snap('s1'), r1)).toBe(true);
    });

    it('finishes a take from the state the plain mv leaves (intent recorded, file moved, nothing else)', async () => {
      await qemuIo(join(share, VOL), 'write -P 0x11 0 64k');
      const r1 = await reference(VOL, 'r1');
      await mkdir(join(share, 'snapshots/vol-1'), { recursive: true });
      await writeFile(
        join(share, 'snapshots/vol-1/.s1.qcow2.take.json'),
        JSON.stringify({
          version: 1,
          volumePath: VOL,
          snapshotPath: snap('s1'),
          backingPath: 'templates/t.qcow2',
          backingFormat: 'qcow2',
        }),
      );
      await rename(join(share, VOL), join(share, snap('s1')));

      await call('takeChainSnapshot', chain(snap('s1')), 'job-2');
      expect((await info(snap('s1')))['backing-filename']).toBe('../../templates/t.qcow2');
      expect(await sameAs(VOL, r1)).toBe(true);
      expect(await readdir(join(share, 'snapshots/vol-1'))).toEqual(['s1.qcow2']);
    });

    it('drops the intent of a take that completed but crashed before cleaning up', async () => {
      await call('takeChainSnapshot', chain(snap('s1')));
      await writeFile(
        join(share, 'snapshots/vol-1/.s1.qcow2.take.json'),
        JSON.stringify({
          version: 1,
          volumePath: VOL,
          snapshotPath: snap('s1'),
          backingPath: 'templates/t.qcow2',
          backingFormat: 'qcow2',
        }),
      );
      await call('takeChainSnapshot', chain(snap('s1')), 'job-2');
      expect(await readdir(join(share, 'snapshots/vol-1'))).toEqual(['s1.qcow2']);
    });

    it('refuses to guess when the volume is gone and no intent explains it', async () => {
      await mkdir(join(share, 'snapshots/vol-1'), { recursive: true });
      await rename(join(share, VOL), join(share, snap('s1')));
      await expect(codeOf(call('takeChainSnapshot', chain(snap('s1'))))).resolves.toBe('Conflict');
    });

    it('resumes a delete that rebased the children but did not remove the file', async () => {
      const { r3 } = await buildChain();
      const s2Copy = join(root, 's2-copy.qcow2');
      await fsPromises.copyFile(join(share, snap('s2')), s2Copy);
      await call('deleteChainSnapshot', chain(snap('s2')));
      // Put the file back as if the unlink never happened: no child references it any more.
      await fsPromises.copyFile(s2Copy, join(share, snap('s2')));
      await expect(call('deleteChainSnapshot', chain(snap('s2')), 'job-2')).resolves.toEqual({
        deleted: true,
        rebased: [],
      });
      expect(await sameAs(snap('s3'), r3)).toBe(true);
    });
  });

  describe('path confinement', () => {
    it.each([
      ['a parent escape', '../outside/x.qcow2'],
      ['an absolute path', '/etc/x.qcow2'],
      ['a dot segment', './snapshots/x.qcow2'],
    ])('refuses %s as invalid arguments for every operation', async (_label, path) => {
      const codes = await Promise.all([
        codeOf(call('takeChainSnapshot', chain(path))),
        codeOf(call('takeChainSnapshot', { ...chain(snap('s1')), volumePath: path })),
        codeOf(call('revertChainSnapshot', chain(path))),
        codeOf(call('deleteChainSnapshot', chain(path))),
        codeOf(call('snapshotChanges', { mountPath: share, snapshotPath: path })),
        codeOf(call('allocatedExtents', { mountPath: share, path })),
      ]);
      expect(codes).toEqual(Array(codes.length).fill('InvalidArguments'));
    });

    it('refuses a snapshot whose backing chain leaves the share, at any depth', async () => {
      await qemuImg('create', '-q', '-f', 'qcow2', join(outside, 'secret.qcow2'), String(MiB));
      await mkdir(join(share, 'snapshots/vol-1'), { recursive: true });
      // evil ← mid ← outside/secret: the first hop stays on the share, the second does not.
      await qemuImg(
        'create',
        '-q',
        '-f',
        'qcow2',
        '-b',
        join(outside, 'secret.qcow2'),
        '-F',
        'qcow2',
        join(share, 'snapshots/vol-1/mid.qcow2'),
      );
      await qemuImg(
        'create',
        '-q',
        '-f',
        'qcow2',
        '-b',
        'mid.qcow2',
        '-F',
        'qcow2',
        join(share, 'snapshots/vol-1/evil.qcow2'),
      );
      const codes = await Promise.all([
        codeOf(call('snapshotChanges', { mountPath: share, snapshotPath: snap('evil') })),
        codeOf(call('allocatedExtents', { mountPath: share, path: snap('evil') })),
        codeOf(call('revertChainSnapshot', chain(snap('evil')))),
        codeOf(call('deleteChainSnapshot', chain(snap('evil')))),
      ]);
      expect(codes).toEqual(['Conflict', 'Conflict', 'Conflict', 'Conflict']);
      expect((await info(VOL))['backing-filename']).toBe('../templates/t.qcow2');
    });

    it('refuses a symlinked snapshot path', async () => {
      await mkdir(join(share, 'snapshots/vol-1'), { recursive: true });
      await fsPromises.symlink(join(outside, 'x.qcow2'), join(share, snap('s1')));
      await expect(codeOf(call('takeChainSnapshot', chain(snap('s1'))))).resolves.toBe('InvalidInput');
      await expect(codeOf(call('revertChainSnapshot', chain(snap('s1'))))).resolves.toBe('InvalidInput');
    });

    it('refuses a volume that is its own snapshot', async () => {
      await expect(codeOf(call('takeChainSnapshot', chain(VOL)))).resolves.toBe('InvalidArguments');
    });

    it('never treats a file outside snapshots/<volume>/ as a snapshot layer (a template has clones everywhere)', async () => {
      const codes = await Promise.all([
        codeOf(call('deleteChainSnapshot', chain('templates/t.qcow2'))),
        codeOf(call('revertChainSnapshot', chain('templates/t.qcow2'))),
        codeOf(call('takeChainSnapshot', chain('volumes/other.qcow2'))),
        codeOf(call('takeChainSnapshot', { ...chain(snap('s1')), volumePath: snap('s0') })),
        codeOf(call('snapshotChanges', { mountPath: share, snapshotPath: 'templates/t.qcow2' })),
      ]);
      expect(codes).toEqual(Array(codes.length).fill('InvalidArguments'));
      expect(await readdir(join(share, 'templates'))).toEqual(['t.qcow2']);
    });
  });

  describe('NfsDriver', () => {
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

    it('takes, reports changes, reverts and deletes external snapshots', async () => {
      const driver = createNfsProvider().driver as NfsDriver;
      const ctx = createTestDriverContext({ host });
      const base = { store: store(), ctx, hostId: 'host-1', object: volume };
      await qemuIo(join(share, VOL), 'write -P 0x11 0 64k');
      const r1 = await reference(VOL, 'r1');

      const taken = await driver.takeSnapshot({ ...base, snapshot: snapshot('s1') });
      expect(taken).toMatchObject({ path: snap('s1'), virtualSizeBytes: 8 * MiB, format: 'qcow2' });
      await qemuIo(join(share, VOL), 'write -P 0x22 1M 64k');
      await driver.takeSnapshot({ ...base, snapshot: snapshot('s2') });
      await expect(driver.snapshotChanges({ ...base, snapshot: snapshot('s2') })).resolves.toEqual({
        extents: [{ start: 1 * MiB, length: 64 * KiB, zero: false }],
        virtualSizeBytes: 8 * MiB,
        backingPath: snap('s1'),
      });
      const full = await driver.snapshotAllocatedExtents({ ...base, snapshot: snapshot('s1') });
      expect(full.extents.map((e) => e.start)).toEqual([0, 4 * MiB]);

      await driver.revertSnapshot({ ...base, snapshot: snapshot('s1') });
      expect(await sameAs(VOL, r1)).toBe(true);
      await expect(driver.deleteSnapshot({ ...base, snapshot: snapshot('s1') })).resolves.toMatchObject({
        deleted: true,
      });
      expect(await sameAs(VOL, r1)).toBe(true);
      // deleteAsync of a snapshot ref merges too, and finds the volume from the conventional path.
      await driver.deleteAsync({
        ...base,
        object: { kind: 'snapshot', id: 's2', path: snap('s2') },
      });
      expect(await readdir(join(share, 'snapshots/vol-1'))).toEqual([]);
      expect(await sameAs(VOL, r1)).toBe(true);
    });

    it('still reverts and deletes legacy internal snapshots (`<image>@<id>`)', async () => {
      const driver = createNfsProvider().driver as NfsDriver;
      const ctx = createTestDriverContext({ host });
      const base = { store: store(), ctx, hostId: 'host-1', object: volume };
      await qemuIo(join(share, VOL), 'write -P 0x11 0 64k');
      const r1 = await reference(VOL, 'r1');
      await call('snapshot', { mountPath: share, path: VOL, snapshotId: 'old' });
      await qemuIo(join(share, VOL), 'write -P 0x22 0 64k');
      const legacy: DataObjectRef = { kind: 'snapshot', id: 'old', path: `${VOL}@old` };

      await driver.revertSnapshot({ ...base, snapshot: legacy });
      expect(await sameAs(VOL, r1)).toBe(true);
      await expect(driver.deleteSnapshot({ ...base, snapshot: legacy })).resolves.toEqual({
        deleted: true,
        rebased: [],
      });
    });
  });
});
