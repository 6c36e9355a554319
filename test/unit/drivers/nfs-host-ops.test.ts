import { mkdir, mkdtemp, readdir, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { nfsHostOperations } from '../../../drivers/nfs/host-ops.js';
import { createNfsProvider } from '../../../drivers/nfs/provider.js';
import { HostOperationError } from '../../../drivers/sdk/errors.js';
import { HostStorage } from '../../../drivers/sdk/host-config.js';
import { createInProcessHostInvoker } from '../../../drivers/sdk/host-runtime.js';
import { createTestDriverContext } from '../../../drivers/sdk/testing.js';
import type { DataStoreInfo, HostInfo, HostInvoker } from '../../../drivers/sdk/types.js';

const MiB = 1024 * 1024;
let root: string;
let share: string;
let outside: string;
let host: HostInvoker;

beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'strata-nfs-ops-'));
  share = join(root, 'share');
  outside = join(root, 'outside');
  await mkdir(share);
  await mkdir(outside);
  await writeFile(join(outside, 'secret.qcow2'), 'not yours');
  host = createInProcessHostInvoker({
    // The test's temp dir is the one storage root its host may touch (as /etc/strata/host.json says on a host).
    storage: HostStorage.fromConfig({ storageRoots: [{ path: root, kind: 'directory' }] }),
    operationSets: [nfsHostOperations],
    workDirRoot: join(root, 'hosts'),
  });
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

const call = (operation: string, args: Record<string, unknown>, jobId = 'job-1') =>
  host.run<Record<string, unknown>>('host-1', { provider: 'nfs', operation, args, jobId });
const codeOf = (promise: Promise<unknown>) =>
  promise.then(
    () => 'resolved',
    (e: unknown) => (e instanceof HostOperationError ? e.hostError.code : String(e)),
  );

describe('nfs host operations', () => {
  describe('path confinement', () => {
    it.each([
      ['a parent escape', '../outside/secret.qcow2'],
      ['a nested parent escape', 'volumes/../../outside/secret.qcow2'],
      ['an absolute path', '/etc/passwd'],
      ['a dot segment', './volumes/v.qcow2'],
      ['an empty segment', 'volumes//v.qcow2'],
      ['a backslash', 'volumes\\..\\v.qcow2'],
    ])('refuses %s as invalid arguments for every operation', async (_label, path) => {
      const attempts = [
        call('create', { mountPath: share, path, sizeBytes: MiB }),
        call('delete', { mountPath: share, path }),
        call('info', { mountPath: share, path }),
        call('resize', { mountPath: share, path, sizeBytes: MiB }),
        call('snapshot', { mountPath: share, path, snapshotId: 's1' }),
        call('copy', {
          src: { mountPath: share, path, format: 'qcow2' },
          dst: { mountPath: share, path: 'x.qcow2', format: 'qcow2' },
        }),
        call('copy', {
          src: { mountPath: share, path: 'x.qcow2', format: 'qcow2' },
          dst: { mountPath: share, path, format: 'qcow2' },
        }),
      ];

      const codes = await Promise.all(attempts.map(codeOf));

      expect(codes).toEqual(Array(attempts.length).fill('InvalidArguments'));
    });

    it('refuses to follow a symlinked directory out of the share', async () => {
      await symlink(outside, join(share, 'volumes'));

      const codes = await Promise.all([
        codeOf(call('create', { mountPath: share, path: 'volumes/v.qcow2', sizeBytes: MiB })),
        codeOf(call('delete', { mountPath: share, path: 'volumes/secret.qcow2' })),
        codeOf(call('info', { mountPath: share, path: 'volumes/secret.qcow2' })),
      ]);

      expect(codes).toEqual(['InvalidInput', 'InvalidInput', 'InvalidInput']);
      expect(await readdir(outside)).toEqual(['secret.qcow2']);
    });

    it('refuses a symlinked file even when it points inside the share', async () => {
      await call('create', { mountPath: share, path: 'volumes/real.qcow2', sizeBytes: MiB });
      await symlink(join(share, 'volumes', 'real.qcow2'), join(share, 'volumes', 'link.qcow2'));

      await expect(codeOf(call('delete', { mountPath: share, path: 'volumes/link.qcow2' }))).resolves.toBe(
        'InvalidInput',
      );
      expect((await stat(join(share, 'volumes', 'real.qcow2'))).isFile()).toBe(true);
    });

    it('refuses a linked clone whose base lies outside the share', async () => {
      await expect(
        codeOf(
          call('create', {
            mountPath: share,
            path: 'volumes/c.qcow2',
            backingPath: '../outside/secret.qcow2',
          }),
        ),
      ).resolves.toBe('InvalidArguments');
    });

    it('refuses a relative mount path', async () => {
      await expect(codeOf(call('checkMount', { mountPath: 'share' }))).resolves.toBe('InvalidArguments');
    });
  });

  describe('create', () => {
    it('writes no file under the final name when qemu-img fails, and leaves no temporary behind', async () => {
      const attempt = call('create', {
        mountPath: share,
        path: 'volumes/clone.qcow2',
        backingPath: 'templates/missing.qcow2',
      });

      await expect(codeOf(attempt)).resolves.toBe('ObjectNotFound');
      expect(await readdir(share)).toEqual(['volumes']);
      expect(await readdir(join(share, 'volumes'))).toEqual([]);
    });

    it('makes a linked clone whose base is recorded relative to the clone', async () => {
      await call('create', { mountPath: share, path: 'templates/t.qcow2', sizeBytes: 2 * MiB });

      const clone = await call('create', {
        mountPath: share,
        path: 'volumes/v.qcow2',
        backingPath: 'templates/t.qcow2',
      });
      const info = await call('info', { mountPath: share, path: 'volumes/v.qcow2' });

      expect(clone).toMatchObject({ virtualSizeBytes: 2 * MiB, format: 'qcow2' });
      expect(info).toMatchObject({ backingPath: 'templates/t.qcow2' });
    });
  });

  describe('checkMount', () => {
    it('proves the share writable and leaves no probe file', async () => {
      const result = await call('checkMount', { mountPath: share }, 'job-probe');

      expect(result).toMatchObject({ mountPath: share });
      expect(await readdir(share)).toEqual([]);
    });

    it('reports a missing mount as retryable Unavailable naming the host', async () => {
      const error = await call('checkMount', { mountPath: join(root, 'not-mounted') }).catch((e) => e);

      expect(error).toBeInstanceOf(HostOperationError);
      expect((error as HostOperationError).hostError).toMatchObject({ code: 'Unavailable', retryable: true });
      expect((error as Error).message).toMatch(/host-1/);
    });
  });
});

describe('NfsLifeCycle.attachCluster', () => {
  it('fails naming every host that cannot use the share', async () => {
    const provider = createNfsProvider();
    const store: DataStoreInfo = {
      id: 'ds-1',
      name: 'ds-1',
      provider: 'nfs',
      role: 'primary',
      scope: { type: 'cluster', zoneId: 'z1', clusterId: 'c1' },
      details: { server: '10.0.0.5', export: '/srv/nfs', mountPath: share },
      capacityBytes: 0,
    };
    const hosts: HostInfo[] = ['good-host', 'bad-host'].map((id) => ({
      id,
      name: id,
      zoneId: 'z1',
      clusterId: 'c1',
      hypervisor: 'kvm',
    }));
    // bad-host sees an empty directory where the share should be mounted: simulate with a file.
    const inner = createInProcessHostInvoker({
      // The test's temp dir is the one storage root its host may touch (as /etc/strata/host.json says on a host).
      storage: HostStorage.fromConfig({ storageRoots: [{ path: root, kind: 'directory' }] }),
      operationSets: [nfsHostOperations],
      workDirRoot: join(root, 'hosts'),
    });
    const ctx = createTestDriverContext({
      host: {
        run: (hostId, c) =>
          inner.run(hostId, hostId === 'bad-host' ? { ...c, args: { mountPath: join(root, 'missing') } } : c),
      },
    });

    const error = await provider.lifecycle.attachCluster({ store, ctx, hosts }).catch((e) => e);

    expect(error).toMatchObject({ code: 'Unavailable' });
    expect((error as Error).message).toMatch(/bad-host/);
    expect((error as Error).message).not.toMatch(/good-host/);
  });
});
