/**
 * The host's own storage configuration: the loader, the confinement of mount paths to the roots it
 * lists (symlinks resolved, nfs mounts checked through a fake mountinfo), the wrapper that applies
 * it to every nfs host operation before anything is written, and the caps on listings.
 */
import { mkdir, mkdtemp, readdir, realpath, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { nfsHostOperations } from '../../../drivers/nfs/host-ops.js';
import { HostOperationError } from '../../../drivers/sdk/errors.js';
import { HostStorage, loadHostStorage, parseMountInfo } from '../../../drivers/sdk/host-config.js';
import { createInProcessHostInvoker } from '../../../drivers/sdk/host-runtime.js';

let root: string;
/** A directory root, and an nfs root whose mounts a fake mountinfo lists. */
let dirRoot: string;
let nfsRoot: string;
let mountInfo: string;

beforeEach(async () => {
  root = await realpath(await mkdtemp(join(tmpdir(), 'strata-host-config-')));
  dirRoot = join(root, 'shares');
  nfsRoot = join(root, 'mnt');
  mountInfo = join(root, 'mountinfo');
  await mkdir(dirRoot);
  await mkdir(nfsRoot);
  await writeFile(mountInfo, '22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n');
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

const storage = (extra: Record<string, unknown> = {}) =>
  HostStorage.fromConfig(
    {
      storageRoots: [
        { path: dirRoot, kind: 'directory' },
        { path: nfsRoot, kind: 'nfs' },
      ],
      ...extra,
    },
    { mountInfoPath: mountInfo },
  );

const nfsLine = (mountPoint: string, source: string, fsType = 'nfs4') =>
  `40 22 0:50 / ${mountPoint.replaceAll(' ', '\\040')} rw,relatime shared:7 - ${fsType} ${source} rw,vers=4.2\n`;

async function refusal(
  promise: Promise<unknown>,
): Promise<{ code?: string; retryable?: boolean; message: string }> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!(error instanceof Error)) throw new Error('expected a refusal, got a result');
  return error as Error & { code?: string; retryable?: boolean };
}

describe('loadHostStorage', () => {
  it('reads a valid file, with defaults for the listing caps', async () => {
    const file = join(root, 'host.json');
    await writeFile(file, JSON.stringify({ storageRoots: [{ path: '/mnt/strata/', kind: 'nfs' }] }));

    const loaded = await loadHostStorage(file);

    expect(loaded.config).toEqual({
      storageRoots: [{ path: '/mnt/strata', kind: 'nfs' }],
      maxListEntries: 100_000,
      maxListDepth: 16,
    });
  });

  it.each([
    ['a missing file', undefined, /does not exist/],
    ['not JSON', '{storageRoots:', /is not JSON/],
    ['no roots', JSON.stringify({ storageRoots: [] }), /storageRoots/],
    ['a root at /', JSON.stringify({ storageRoots: [{ path: '/', kind: 'nfs' }] }), /storageRoots\.0\.path/],
    ['a root at /etc', JSON.stringify({ storageRoots: [{ path: '/etc', kind: 'directory' }] }), /system/],
    [
      'a root in /usr',
      JSON.stringify({ storageRoots: [{ path: '/usr/lib/x', kind: 'directory' }] }),
      /system/,
    ],
    ['a root holding /etc', JSON.stringify({ storageRoots: [{ path: '/', kind: 'directory' }] }), /path/],
    ['a root in /dev', JSON.stringify({ storageRoots: [{ path: '/dev/shm', kind: 'directory' }] }), /system/],
    ['a relative root', JSON.stringify({ storageRoots: [{ path: 'mnt', kind: 'nfs' }] }), /path/],
    ['a root with ..', JSON.stringify({ storageRoots: [{ path: '/mnt/../etc', kind: 'nfs' }] }), /path/],
    ['an unknown kind', JSON.stringify({ storageRoots: [{ path: '/mnt/a', kind: 'ceph' }] }), /kind/],
    [
      'an unknown key',
      JSON.stringify({ storageRoots: [{ path: '/mnt/a', kind: 'nfs' }], roots: [] }),
      /roots/,
    ],
    [
      'a zero cap',
      JSON.stringify({ storageRoots: [{ path: '/mnt/a', kind: 'nfs' }], maxListEntries: 0 }),
      /maxListEntries/,
    ],
  ])('refuses every storage check for %s, saying why', async (_label, text, reason) => {
    const file = join(root, 'host.json');
    if (text !== undefined) await writeFile(file, text);

    const loaded = await loadHostStorage(file);
    const error = await refusal(loaded.confineMount(dirRoot));

    expect(loaded.config).toBeUndefined();
    expect(error).toMatchObject({ code: 'HostNotConfigured', retryable: false });
    expect(error.message).toContain(file);
    expect(error.message).toMatch(reason);
  });
});

describe('HostStorage.confineMount', () => {
  it('accepts a directory root itself and a directory under it, answering the real path', async () => {
    await mkdir(join(dirRoot, 'ds-1'));

    await expect(storage().confineMount(dirRoot)).resolves.toMatchObject({ realPath: dirRoot });
    await expect(storage().confineMount(`${dirRoot}/ds-1/`)).resolves.toMatchObject({
      realPath: join(dirRoot, 'ds-1'),
      root: { kind: 'directory' },
    });
  });

  it.each(['/etc', '/root', '/usr/bin', '/dev/shm', '/', '/tmp'])(
    'refuses %s: outside every storage root',
    async (mountPath) => {
      const error = await refusal(storage().confineMount(mountPath, { hostId: 'host-1' }));

      expect(error).toMatchObject({ code: 'PathNotAllowed', retryable: false });
      expect(error.message).toContain('outside the storage roots');
      expect(error.message).toContain('host-1');
    },
  );

  it('refuses a sibling that only shares the root as a string prefix', async () => {
    await mkdir(`${dirRoot}-evil`);

    await expect(storage().confineMount(`${dirRoot}-evil`)).rejects.toMatchObject({ code: 'PathNotAllowed' });
  });

  it.each(['../..', `${dirRoot}/../..`, `${dirRoot}/./x`, `${dirRoot}//x`])(
    'refuses %s: not a plain absolute path',
    async (mountPath) => {
      await expect(storage().confineMount(mountPath)).rejects.toMatchObject({ code: 'PathNotAllowed' });
    },
  );

  it('refuses a symlink inside the root that points at /etc, and a path through it', async () => {
    await symlink('/etc', join(dirRoot, 'to-etc'));

    const direct = await refusal(storage().confineMount(join(dirRoot, 'to-etc')));
    const through = await refusal(storage().confineMount(join(dirRoot, 'to-etc', 'no-such-dir')));
    const existing = await refusal(storage().confineMount(join(dirRoot, 'to-etc', 'ssl')));

    expect(direct).toMatchObject({ code: 'PathNotAllowed' });
    expect(direct.message).toContain('resolves to /etc');
    expect(through).toMatchObject({ code: 'PathNotAllowed' });
    expect(existing).toMatchObject({ code: 'PathNotAllowed' });
  });

  it('accepts a symlink that stays inside the root', async () => {
    await mkdir(join(dirRoot, 'real'));
    await symlink(join(dirRoot, 'real'), join(dirRoot, 'alias'));

    await expect(storage().confineMount(join(dirRoot, 'alias'))).resolves.toMatchObject({
      realPath: join(dirRoot, 'real'),
    });
  });

  it('reports a missing mount path in a root as retryable Unavailable', async () => {
    const error = await refusal(storage().confineMount(join(dirRoot, 'gone'), { hostId: 'host-2' }));

    expect(error).toMatchObject({ code: 'Unavailable', retryable: true });
    expect(error.message).toMatch(/does not exist on host host-2/);
  });

  describe('an nfs root', () => {
    it('refuses an unmounted directory: not a mount point', async () => {
      await mkdir(join(nfsRoot, 'ds-1'));

      const error = await refusal(storage().confineMount(join(nfsRoot, 'ds-1')));

      expect(error).toMatchObject({ code: 'Unavailable' });
      expect(error.message).toContain('is not a mount point');
    });

    it('accepts a directory mountinfo shows as an nfs mount of the declared server:export', async () => {
      await mkdir(join(nfsRoot, 'ds 1'));
      await writeFile(mountInfo, nfsLine(join(nfsRoot, 'ds 1'), '10.0.0.5:/srv/ds-1'), { flag: 'a' });

      await expect(
        storage().confineMount(join(nfsRoot, 'ds 1'), {
          expected: { server: '10.0.0.5', export: '/srv/ds-1/' },
        }),
      ).resolves.toMatchObject({ root: { kind: 'nfs' } });
      // Without a declared source any nfs mount there will do (operations other than checkMount).
      await expect(storage().confineMount(join(nfsRoot, 'ds 1'))).resolves.toBeDefined();
    });

    it('refuses a mount of another server:export', async () => {
      await mkdir(join(nfsRoot, 'ds-1'));
      await writeFile(mountInfo, nfsLine(join(nfsRoot, 'ds-1'), '10.0.0.9:/srv/other'), { flag: 'a' });

      const error = await refusal(
        storage().confineMount(join(nfsRoot, 'ds-1'), {
          expected: { server: '10.0.0.5', export: '/srv/ds-1' },
        }),
      );

      expect(error).toMatchObject({ code: 'MountMismatch', retryable: false });
      expect(error.message).toContain('has 10.0.0.9:/srv/other mounted, not 10.0.0.5:/srv/ds-1');
    });

    it('refuses a mount that is not nfs (a tmpfs where the share should be)', async () => {
      await mkdir(join(nfsRoot, 'ds-1'));
      await writeFile(mountInfo, nfsLine(join(nfsRoot, 'ds-1'), 'tmpfs', 'tmpfs'), { flag: 'a' });

      await expect(storage().confineMount(join(nfsRoot, 'ds-1'))).rejects.toMatchObject({
        code: 'MountMismatch',
      });
    });

    it('takes the mount on top when two are stacked on one mount point', async () => {
      await mkdir(join(nfsRoot, 'ds-1'));
      await writeFile(
        mountInfo,
        nfsLine(join(nfsRoot, 'ds-1'), '10.0.0.5:/srv/ds-1') +
          nfsLine(join(nfsRoot, 'ds-1'), 'tmpfs', 'tmpfs'),
        { flag: 'a' },
      );

      await expect(storage().confineMount(join(nfsRoot, 'ds-1'))).rejects.toMatchObject({
        code: 'MountMismatch',
      });
    });
  });
});

describe('parseMountInfo', () => {
  it('reads the mount point, type and source past the optional fields, decoding escapes', () => {
    expect(
      parseMountInfo(
        '36 35 98:0 /mnt1 /mnt/a\\040b rw,noatime master:1 shared:2 - nfs [fe80::1]:/srv rw\nnot a line\n',
      ),
    ).toEqual([{ mountPoint: '/mnt/a b', fsType: 'nfs', source: '[fe80::1]:/srv' }]);
  });
});

describe('every nfs host operation goes through the confinement first', () => {
  const hostWith = (s: HostStorage | undefined) =>
    createInProcessHostInvoker({
      operationSets: [nfsHostOperations],
      workDirRoot: join(root, 'hosts'),
      ...(s ? { storage: s } : {}),
    });
  const call = (s: HostStorage | undefined, operation: string, args: Record<string, unknown>) =>
    hostWith(s).run('host-1', { provider: 'nfs', operation, args, jobId: 'job-1' });
  const probesIn = async (dir: string) =>
    (await readdir(dir).catch(() => [] as string[])).filter((f) => f.startsWith('.strata-probe'));

  it('refuses checkMount at /etc, /root and a symlink to /etc, writing no probe', async () => {
    await symlink('/etc', join(dirRoot, 'to-etc'));
    for (const mountPath of ['/etc', '/root', join(dirRoot, 'to-etc')]) {
      const error = await refusal(call(storage(), 'checkMount', { mountPath }));

      expect(error).toBeInstanceOf(HostOperationError);
      expect(error).toMatchObject({ code: 'PathNotAllowed' });
      expect(await probesIn(mountPath)).toEqual([]);
    }
  });

  it('refuses everything on a host without configuration', async () => {
    const error = await refusal(call(undefined, 'checkMount', { mountPath: dirRoot }));

    expect(error).toMatchObject({ code: 'HostNotConfigured', retryable: false });
    expect(await probesIn(dirRoot)).toEqual([]);
  });

  it('checks a mount path nested in the arguments (copy to /etc)', async () => {
    const error = await refusal(
      call(storage(), 'copy', {
        src: { mountPath: dirRoot, path: 'a.qcow2', format: 'qcow2' },
        dst: { mountPath: '/etc', path: 'a.qcow2', format: 'qcow2' },
      }),
    );

    expect(error).toMatchObject({ code: 'PathNotAllowed' });
  });

  it('writes no probe into an unmounted directory of an nfs root, and checks the declared export', async () => {
    const mount = join(nfsRoot, 'ds-1');
    await mkdir(mount);
    const args = { mountPath: mount, server: '10.0.0.5', export: '/srv/ds-1' };

    const unmounted = await refusal(call(storage(), 'checkMount', args));
    await writeFile(mountInfo, nfsLine(mount, '10.0.0.9:/srv/other'), { flag: 'a' });
    const wrong = await refusal(call(storage(), 'checkMount', args));

    expect(unmounted.message).toContain('is not a mount point on host host-1');
    expect(wrong).toMatchObject({ code: 'MountMismatch' });
    expect(await readdir(mount)).toEqual([]);

    await writeFile(mountInfo, nfsLine(mount, '10.0.0.5:/srv/ds-1'), { flag: 'a' });
    await expect(call(storage(), 'checkMount', args)).resolves.toMatchObject({ mountPath: mount });
    expect(await readdir(mount)).toEqual([]);
  });

  describe('listing', () => {
    it('stops with ListingTooLarge past maxListEntries', async () => {
      for (let i = 0; i < 6; i++) await writeFile(join(dirRoot, `f-${i}.qcow2`), '');

      const capped = await refusal(call(storage({ maxListEntries: 5 }), 'list', { mountPath: dirRoot }));
      const fits = (await call(storage({ maxListEntries: 6 }), 'list', { mountPath: dirRoot })) as {
        objects: unknown[];
      };

      expect(capped).toMatchObject({ code: 'ListingTooLarge' });
      expect(capped.message).toContain('more than 5 entries');
      expect(fits.objects).toHaveLength(6);
    });

    it('stops with ListingTooLarge past maxListDepth', async () => {
      await mkdir(join(dirRoot, 'a', 'b', 'c'), { recursive: true });
      await writeFile(join(dirRoot, 'a', 'b', 'c', 'deep.qcow2'), '');

      const capped = await refusal(call(storage({ maxListDepth: 2 }), 'list', { mountPath: dirRoot }));
      const fits = (await call(storage({ maxListDepth: 3 }), 'list', { mountPath: dirRoot })) as {
        objects: { path: string }[];
      };

      expect(capped).toMatchObject({ code: 'ListingTooLarge' });
      expect(fits.objects.map((o) => o.path)).toEqual(['a/b/c/deep.qcow2']);
    });

    it('does not follow symlinks out of the share', async () => {
      const outside = join(root, 'outside');
      await mkdir(outside);
      await writeFile(join(outside, 'secret.qcow2'), '');
      await symlink(outside, join(dirRoot, 'escape'));
      await symlink(join(outside, 'secret.qcow2'), join(dirRoot, 'secret.qcow2'));

      const listed = (await call(storage(), 'list', { mountPath: dirRoot })) as { objects: unknown[] };

      expect(listed.objects).toEqual([]);
    });
  });
});
