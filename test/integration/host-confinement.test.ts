/**
 * Hosts confine every path to the storage roots of their own configuration (issue 11): through the
 * embedded stack, whose local hosts were given `/etc/strata/host.json` at onboarding (roots: the
 * stack's `primary/` and `shares/` directories, and an nfs root `nfs/`), a store at a path the host
 * must not touch ends in Error with the host's reason and nothing is written there; what the control
 * plane can tell by itself (a malformed path, a path overlapping another store's) is a 4xx and no
 * store at all.
 */
import { mkdir, mkdtemp, readdir, rm, stat, symlink } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { startTestStack, type TestStack } from '../support/stack';

let t: TestStack;
/** A directory outside every storage root: a store there must leave it exactly as it was. */
let outside: string;

beforeAll(async () => {
  t = await startTestStack({ hostCount: 2 });
  outside = await mkdtemp(path.join(os.tmpdir(), 'strata-outside-roots-'));
}, 60_000);

afterAll(async () => {
  await t?.stack.stop();
  if (outside) await rm(outside, { recursive: true, force: true });
});

const storeBody = (name: string, mountPath: string) => ({
  name,
  provider: 'nfs',
  role: 'primary',
  scope: { type: 'cluster', zoneId: 'zone-1', clusterId: 'cluster-1' },
  capacityBytes: 2 ** 30,
  details: { server: '127.0.0.1', export: `/${name}`, mountPath },
});

const probes = async (dir: string) =>
  (await readdir(dir).catch(() => [] as string[])).filter((f) => f.startsWith('.strata-probe'));

async function storeNames(): Promise<string[]> {
  return (await t.call('GET', '/stores?limit=100')).body.items.map((s: { name: string }) => s.name);
}

describe('a store at a path no host may touch ends in Error, and nothing is written there', () => {
  let n = 0;
  // Each case: the path, what the host's reason says, and the directory that must stay untouched.
  const cases: [string, () => Promise<{ mountPath: string; watch: string }>, RegExp][] = [
    ['/etc', async () => ({ mountPath: '/etc', watch: '/etc' }), /\/etc is outside the storage roots/],
    ['/root', async () => ({ mountPath: '/root', watch: '/root' }), /\/root is outside the storage roots/],
    [
      'a directory outside the roots',
      async () => ({ mountPath: outside, watch: outside }),
      /is outside the storage roots/,
    ],
    [
      'a symlink to /etc inside a root',
      async () => {
        const link = path.join(t.dataDir, 'shares', 'to-etc');
        await symlink('/etc', link);
        return { mountPath: link, watch: '/etc' };
      },
      /resolves to \/etc, outside its storage root/,
    ],
    [
      'an unmounted directory in the nfs root',
      async () => {
        const dir = path.join(t.dataDir, 'nfs', 'not-mounted');
        await mkdir(dir, { recursive: true });
        return { mountPath: dir, watch: dir };
      },
      /is not a mount point on host .*nothing was written/,
    ],
  ];

  it.each(cases)(
    '%s',
    async (_label, prepare, reason) => {
      const { mountPath, watch } = await prepare();
      const before = await stat(watch);

      const answer = await t.call('POST', '/stores', storeBody(`confined-${++n}`, mountPath));
      expect(answer.status).toBe(202);
      const job = await t.waitForJob(answer.body.job.id, 60_000);
      const store = (await t.call('GET', `/stores/${answer.body.store.id}`)).body;

      expect(job.state).toBe('failed');
      expect(store.status).toBe('Error');
      expect(store.statusReason).toMatch(reason);
      // Both hosts refused it, each by itself.
      for (const n of [1, 2]) expect(store.statusReason).toContain(t.hostId(n));
      expect(await probes(watch)).toEqual([]);
      // A probe written and removed would still have moved the directory's modification time.
      expect((await stat(watch)).mtimeMs).toBe(before.mtimeMs);
      expect((await t.call('DELETE', `/stores/${store.id}`)).status).toBe(204);
    },
    90_000,
  );
});

describe('what the control plane can tell by itself is refused with a 4xx naming details.mountPath', () => {
  let defaultShare: string;
  beforeAll(async () => {
    const stores = (await t.call('GET', '/stores?limit=100')).body.items as {
      name: string;
      details: { mountPath: string };
    }[];
    defaultShare = stores.find((s) => s.name === 'nfs-primary-1')!.details.mountPath;
  });

  it.each([
    ['../..', () => '../..', 400],
    ['a path with ..', () => '/mnt/strata/../../etc', 400],
    ['the default share again', () => defaultShare, 409],
    ['a folder inside the default share', () => path.join(defaultShare, 'inner'), 409],
    ['a directory holding the default share', () => path.dirname(defaultShare), 409],
  ])('%s', async (_label, mountPath, status) => {
    const before = await storeNames();

    const answer = await t.call('POST', '/stores', storeBody('overlapping', mountPath()));

    expect(answer.status).toBe(status);
    expect(answer.body.error.field).toBe('details.mountPath');
    if (status === 409) expect(answer.body.error.message).toContain('of another store');
    expect(await storeNames()).toEqual(before);
    expect(await probes(defaultShare)).toEqual([]);
  });

  it('still takes a share next to the default one', async () => {
    const share = await t.newShare('neighbour');
    const answer = await t.call('POST', '/stores', storeBody('neighbour', share));

    expect(answer.status).toBe(202);
    expect((await t.waitForJob(answer.body.job.id, 60_000)).state).toBe('succeeded');
    expect((await t.call('DELETE', `/stores/${answer.body.store.id}`)).status).toBe(204);
  }, 90_000);
});
