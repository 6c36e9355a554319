/**
 * VolumeService end to end on the embedded stack: a real qcow2 template registered through the
 * API, installed once on the nfs pool (a directory every local host mounts) and cloned by 20
 * concurrent volume creations; blank volumes; placement explanations; access; deletes that evict
 * the cache and give the capacity back; a failing install that leaves nothing behind.
 */
import { execFile } from 'node:child_process';
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { DeleteObjectCommand } from '@aws-sdk/client-s3';
import { type ImageServer, startImageServer } from '../support/image-server';
import { tempDir } from '../support/integration';
import { startTestStack, type TestStack } from '../support/stack';

const exec = promisify(execFile);

let t: TestStack;
let server: ImageServer;
let image: string;
let templateId: string;
let pool: { id: string; details: { mountPath: string } };

async function qemuImg(...args: string[]): Promise<{ stdout: string; code: number }> {
  try {
    const { stdout } = await exec('qemu-img', args);
    return { stdout, code: 0 };
  } catch (e) {
    return {
      stdout: String((e as { stdout?: string }).stdout ?? ''),
      code: Number((e as { code?: number }).code ?? 1),
    };
  }
}

async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (entry.isFile() && !entry.name.startsWith('.strata-probe')) {
      out.push(path.relative(dir, path.join(entry.parentPath, entry.name)));
    }
  }
  return out.sort();
}

beforeAll(async () => {
  const dir = await tempDir('strata-volumes-');
  image = path.join(dir, 'template.qcow2');
  await qemuImg('create', '-f', 'qcow2', image, '256M');
  await exec('qemu-io', ['-c', 'write -P 0x5a 0 8M', '-c', 'write -P 0xa5 128M 4M', image]);
  server = await startImageServer();
  server.serve('/template.qcow2', { kind: 'file', path: image });
  t = await startTestStack({ fetchAllowlist: '127.0.0.1' });
  const reg = await t.call('POST', '/templates', {
    name: 'vm-template',
    url: server.url('/template.qcow2'),
    format: 'qcow2',
    zoneId: 'zone-1',
  });
  expect((await t.waitForJob(reg.body.job.id)).state).toBe('succeeded');
  templateId = reg.body.template.id;
  pool = (await t.call('GET', '/stores?role=primary')).body.items.find(
    (s: { name: string }) => s.name === 'nfs-primary-1',
  );
}, 120_000);

afterAll(async () => {
  await t?.stack.stop();
  await server?.close();
});

describe('volumes from a template', () => {
  const ids: string[] = [];

  it('20 concurrent creations install the template once and make 20 Ready linked clones', async () => {
    const started = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        t.call('POST', '/volumes', { name: `vm-${i}`, zoneId: 'zone-1', templateId, storeId: pool.id }),
      ),
    );
    for (const res of started) expect(res.status).toBe(202);
    const jobs = await Promise.all(started.map((r) => t.waitForJob(r.body.job.id, 180_000)));
    expect(jobs.map((j) => j.state)).toEqual(Array(20).fill('succeeded'));
    ids.push(...started.map((r) => r.body.volume.id));

    const tpl = (await t.call('GET', `/templates/${templateId}`)).body;
    const caches = tpl.copies.filter((c: { storeRole: string }) => c.storeRole === 'primary');
    expect(caches).toHaveLength(1);
    expect(caches[0]).toMatchObject({ storeId: pool.id, status: 'Ready', refCount: 20 });
    const files = await filesUnder(pool.details.mountPath);
    expect(files.filter((f) => f.startsWith('templates/'))).toHaveLength(1);
    expect(files.filter((f) => f.startsWith('volumes/'))).toHaveLength(20);
  }, 240_000);

  it('each clone passes qemu-img check and reads back the template content', async () => {
    for (const id of ids) {
      const volume = (await t.call('GET', `/volumes/${id}`)).body;
      expect(volume).toMatchObject({ status: 'Ready', storeId: pool.id, mode: 'linked' });
      const file = path.join(pool.details.mountPath, volume.path);
      expect((await qemuImg('check', file)).code).toBe(0);
      expect((await qemuImg('compare', image, file)).code).toBe(0);
      const info = JSON.parse((await qemuImg('info', '--output=json', file)).stdout);
      expect(info['backing-filename']).toBeDefined();
    }
  }, 120_000);

  it('reserves each volume on the pool (allocatedBytes)', async () => {
    const store = (await t.call('GET', `/stores/${pool.id}`)).body;
    expect(store.allocatedBytes).toBe(20 * 256 * 2 ** 20);
  });

  it('grants and revokes a host access to a volume', async () => {
    const granted = await t.run('POST', `/volumes/${ids[0]}/access`, { hostId: t.hostId(1) });
    expect(granted.status).toBe(202);
    expect(granted.job).toMatchObject({ state: 'succeeded', kind: 'volume.grantAccess' });
    expect(granted.job.result.uri).toBe(
      `file://${path.join(pool.details.mountPath, (await t.call('GET', `/volumes/${ids[0]}`)).body.path)}`,
    );
    expect((await t.call('GET', `/volumes/${ids[0]}`)).body.accessHostIds).toEqual([t.hostId(1)]);
    // a volume with access cannot be deleted
    expect((await t.call('DELETE', `/volumes/${ids[0]}`)).status).toBe(409);
    expect((await t.run('DELETE', `/volumes/${ids[0]}/access/${t.hostId(1)}`)).job?.state).toBe('succeeded');
    expect((await t.call('GET', `/volumes/${ids[0]}`)).body.accessHostIds).toEqual([]);
    expect((await t.call('DELETE', `/volumes/${ids[0]}/access/${t.hostId(1)}`)).status).toBe(404);
  });

  it('refuses to delete the template while clones use it', async () => {
    const res = await t.call('DELETE', `/templates/${templateId}`);
    expect(res.status).toBe(409);
    expect(res.body.error.code).toBe('NotAllowed');
  });

  it('deleting every clone evicts the cache and returns the capacity to zero', async () => {
    const started = await Promise.all(ids.map((id) => t.call('DELETE', `/volumes/${id}`)));
    for (const res of started) expect(res.status).toBe(202);
    const jobs = await Promise.all(started.map((r) => t.waitForJob(r.body.job.id, 120_000)));
    expect(jobs.map((j) => j.state)).toEqual(Array(20).fill('succeeded'));
    expect(jobs.filter((j) => j.result.evictedCache)).toHaveLength(1);
    expect(await filesUnder(pool.details.mountPath)).toEqual([]);
    const inventory = (await t.run('POST', `/stores/${pool.id}/inventory`)).job;
    expect(inventory.result.objects).toEqual([]);
    expect((await t.call('GET', `/stores/${pool.id}`)).body.allocatedBytes).toBe(0);
    const tpl = (await t.call('GET', `/templates/${templateId}`)).body;
    expect(tpl.copies.filter((c: { storeRole: string }) => c.storeRole === 'primary')).toEqual([]);
  }, 180_000);
});

describe('a template deleted while volumes are being created from it', () => {
  it('every create accepted with 202 succeeds: the delete is refused while an accepted create holds the template', async () => {
    const reg = await t.call('POST', '/templates', {
      name: 'raced-template',
      url: server.url('/template.qcow2'),
      format: 'qcow2',
      zoneId: 'zone-1',
    });
    expect((await t.waitForJob(reg.body.job.id)).state).toBe('succeeded');
    const raced: string = reg.body.template.id;

    const creates = Array.from({ length: 6 }, (_, i) =>
      t.call('POST', '/volumes', {
        name: `raced-${i}`,
        zoneId: 'zone-1',
        templateId: raced,
        storeId: pool.id,
      }),
    );
    const deleted = t.call('DELETE', `/templates/${raced}`);
    const answers = await Promise.all(creates);
    const del = await deleted;

    const accepted = answers.filter((r) => r.status === 202);
    for (const r of answers.filter((a) => a.status !== 202)) {
      expect(r.status).toBe(409);
      expect(r.body.error.field).toBe('templateId');
    }
    const jobs = await Promise.all(accepted.map((r) => t.waitForJob(r.body.job.id, 180_000)));
    expect(jobs.map((j) => j.state)).toEqual(Array(accepted.length).fill('succeeded'));
    // The delete went through exactly when no create was accepted before it.
    if (del.status === 204) expect(accepted).toEqual([]);
    else {
      expect(del.status).toBe(409);
      expect(del.body.error.code).toBe('NotAllowed');
      expect(accepted.length).toBeGreaterThan(0);
    }

    // Once its volumes are gone, nothing holds the template and it can be deleted.
    const removals = await Promise.all(accepted.map((r) => t.call('DELETE', `/volumes/${r.body.volume.id}`)));
    await Promise.all(removals.map((r) => t.waitForJob(r.body.job.id, 120_000)));
    if (del.status !== 204) {
      const tpl = (await t.call('GET', `/templates/${raced}`)).body;
      expect(tpl.pendingVolumes ?? 0).toBe(0);
      expect(tpl.deletingSince).toBeUndefined();
      expect((await t.call('DELETE', `/templates/${raced}`)).status).toBe(204);
    }
    expect((await t.call('GET', `/templates/${raced}`)).status).toBe(404);
    const late = await t.call('POST', '/volumes', { name: 'late', zoneId: 'zone-1', templateId: raced });
    expect(late.status).toBe(422);
  }, 300_000);

  it('a create accepted a moment before the delete keeps its template', async () => {
    const reg = await t.call('POST', '/templates', {
      name: 'held-template',
      url: server.url('/template.qcow2'),
      format: 'qcow2',
      zoneId: 'zone-1',
    });
    expect((await t.waitForJob(reg.body.job.id)).state).toBe('succeeded');
    const held: string = reg.body.template.id;
    const created = await t.call('POST', '/volumes', { name: 'held', zoneId: 'zone-1', templateId: held });
    expect(created.status).toBe(202);
    const del = await t.call('DELETE', `/templates/${held}`);
    expect(del.status).toBe(409);
    expect(del.body.error.code).toBe('NotAllowed');
    expect((await t.waitForJob(created.body.job.id, 180_000)).state).toBe('succeeded');
    const removed = await t.call('DELETE', `/volumes/${created.body.volume.id}`);
    expect((await t.waitForJob(removed.body.job.id, 120_000)).state).toBe('succeeded');
    expect((await t.call('DELETE', `/templates/${held}`)).status).toBe(204);
  }, 300_000);
});

describe('blank volumes and placement', () => {
  it('creates a blank qcow2 of the requested size, grows and shrinks it, and deletes it', async () => {
    const res = await t.call('POST', '/volumes', { name: 'blank', zoneId: 'zone-1', sizeBytes: 2 * 2 ** 30 });
    expect(res.status).toBe(202);
    expect((await t.waitForJob(res.body.job.id)).state).toBe('succeeded');
    const volume = (await t.call('GET', `/volumes/${res.body.volume.id}`)).body;
    const info = JSON.parse(
      (await qemuImg('info', '--output=json', path.join(pool.details.mountPath, volume.path))).stdout,
    );
    expect(info['virtual-size']).toBe(2 * 2 ** 30);
    expect(info['backing-filename']).toBeUndefined();

    // grow: the extra space is reserved on the pool, the file really grows
    const grow = await t.call('POST', `/volumes/${volume.id}/resize`, { sizeBytes: 3 * 2 ** 30 });
    expect(grow.status).toBe(202);
    expect((await t.waitForJob(grow.body.job.id)).state).toBe('succeeded');
    const file = path.join(pool.details.mountPath, volume.path);
    expect(JSON.parse((await qemuImg('info', '--output=json', file)).stdout)['virtual-size']).toBe(
      3 * 2 ** 30,
    );
    expect((await t.call('GET', `/stores/${pool.id}`)).body.allocatedBytes).toBe(3 * 2 ** 30);
    // shrinking needs the explicit flag
    const refused = await t.call('POST', `/volumes/${volume.id}/resize`, { sizeBytes: 2 ** 30 });
    expect(refused.status).toBe(400);
    expect(refused.body.error.field).toBe('allowShrink');
    const shrink = await t.call('POST', `/volumes/${volume.id}/resize`, {
      sizeBytes: 2 ** 30,
      allowShrink: true,
    });
    expect((await t.waitForJob(shrink.body.job.id)).state).toBe('succeeded');
    expect(JSON.parse((await qemuImg('info', '--output=json', file)).stdout)['virtual-size']).toBe(2 ** 30);
    expect((await t.call('GET', `/stores/${pool.id}`)).body.allocatedBytes).toBe(2 ** 30);
    expect((await qemuImg('check', file)).code).toBe(0);

    const del = await t.call('DELETE', `/volumes/${volume.id}`);
    expect((await t.waitForJob(del.body.job.id)).state).toBe('succeeded');
    expect((await t.call('GET', `/volumes/${volume.id}`)).status).toBe(404);
  });

  it('lets exactly one of several conflicting operations on a volume proceed; the others get 409 with the state', async () => {
    const res = await t.call('POST', '/volumes', { name: 'contended', zoneId: 'zone-1', sizeBytes: 2 ** 30 });
    await t.waitForJob(res.body.job.id);
    const id = res.body.volume.id;
    const answers = await Promise.all([
      t.call('POST', `/volumes/${id}/resize`, { sizeBytes: 2 * 2 ** 30 }),
      t.call('POST', `/volumes/${id}/resize`, { sizeBytes: 3 * 2 ** 30 }),
      t.call('DELETE', `/volumes/${id}`),
    ]);
    const accepted = answers.filter((a) => a.status === 202);
    const refused = answers.filter((a) => a.status === 409);
    expect(accepted).toHaveLength(1);
    expect(refused).toHaveLength(2);
    for (const r of refused) expect(['Resizing', 'Destroying', 'Ready']).toContain(r.body.error.state);
    await t.waitForJob(accepted[0]!.body.job.id);
    const now = await t.call('GET', `/volumes/${id}`);
    if (now.status === 200) {
      const del = await t.call('DELETE', `/volumes/${id}`);
      await t.waitForJob(del.body.job.id);
    }
    expect((await t.call('GET', `/stores/${pool.id}`)).body.allocatedBytes).toBe(0);
  });

  it('explains the placement on a dry run and changes nothing', async () => {
    const before = (await t.call('GET', `/stores/${pool.id}`)).body.allocatedBytes;
    const res = await t.call('POST', '/volumes?dryRun=true', {
      name: 'x',
      zoneId: 'zone-1',
      sizeBytes: 2 ** 30,
    });
    expect(res.status).toBe(200);
    expect(res.body.placement.chosen.storeId).toBe(pool.id);
    expect(res.body.placement.candidates[0].reason).toMatch(/chosen/);
    expect((await t.call('GET', `/stores/${pool.id}`)).body.allocatedBytes).toBe(before);
    expect((await t.call('GET', '/volumes')).body.items).toEqual([]);

    const tooBig = await t.call('POST', '/volumes?dryRun=true', {
      name: 'x',
      zoneId: 'zone-1',
      sizeBytes: 2 ** 52,
    });
    expect(tooBig.body.placement.chosen).toBeUndefined();
    expect(tooBig.body.placement.candidates[0].reason).toMatch(/rejected/);
  });

  it('answers 422 naming sizeBytes when nothing has room, and reserves nothing', async () => {
    const res = await t.call('POST', '/volumes', { name: 'huge', zoneId: 'zone-1', sizeBytes: 2 ** 52 });
    expect(res.status).toBe(422);
    expect(res.body.error.field).toBe('sizeBytes');
    expect((await t.call('GET', `/stores/${pool.id}`)).body.allocatedBytes).toBe(0);
  });

  it.each([
    ['no size and no template', { name: 'x', zoneId: 'zone-1' }, 'sizeBytes'],
    ['a negative size', { name: 'x', zoneId: 'zone-1', sizeBytes: -5 }, 'sizeBytes'],
    ['an unknown template', { name: 'x', zoneId: 'zone-1', templateId: 'tpl-nope' }, 'templateId'],
    ['an unknown field', { name: 'x', zoneId: 'zone-1', sizeBytes: 1, colour: 'red' }, 'colour'],
  ])('answers 4xx naming the field for %s', async (_case, body, field) => {
    const res = await t.call('POST', '/volumes', body);
    expect(res.status).toBeGreaterThanOrEqual(400);
    expect(res.status).toBeLessThan(500);
    expect(res.body.error.field).toBe(field);
  });
});

describe('migrate', () => {
  it('moves a linked clone to another store with its data intact, keeping its id, then removes the source', async () => {
    const share = await t.newShare('nfs-b');
    const added = await t.call('POST', '/stores', {
      name: 'nfs-b',
      provider: 'nfs',
      role: 'primary',
      scope: { type: 'cluster', zoneId: 'zone-1', clusterId: 'cluster-1' },
      capacityBytes: 50 * 2 ** 30,
      details: { server: '127.0.0.1', export: '/b', mountPath: share },
    });
    expect((await t.waitForJob(added.body.job.id)).state).toBe('succeeded');
    const target = added.body.store.id;

    const created = await t.call('POST', '/volumes', {
      name: 'mover',
      zoneId: 'zone-1',
      templateId,
      storeId: pool.id,
    });
    expect((await t.waitForJob(created.body.job.id)).state).toBe('succeeded');
    const before = (await t.call('GET', `/volumes/${created.body.volume.id}`)).body;
    const sourceFile = path.join(pool.details.mountPath, before.path);
    // a VM wrote to it
    await exec('qemu-io', ['-c', 'write -P 0x77 64M 1M', sourceFile]);
    const reference = path.join(share, '..', 'reference.qcow2');
    await qemuImg('convert', '-O', 'qcow2', sourceFile, reference);

    const res = await t.call('POST', `/volumes/${before.id}/migrate`, { storeId: target });
    expect(res.status).toBe(202);
    expect(res.body.volume.status).toBe('Migrating');
    const job = await t.waitForJob(res.body.job.id, 120_000);
    expect(job.state).toBe('succeeded');
    expect(job.result.via).toMatch(/^host:/);

    const after = (await t.call('GET', `/volumes/${before.id}`)).body;
    expect(after).toMatchObject({ id: before.id, status: 'Ready', storeId: target, mode: 'full' });
    const destFile = path.join(share, after.path);
    expect((await qemuImg('compare', reference, destFile)).code).toBe(0);
    const info = JSON.parse((await qemuImg('info', '--output=json', destFile)).stdout);
    expect(info['backing-filename']).toBeUndefined();
    expect(await filesUnder(pool.details.mountPath)).toEqual([]); // source file and the unused cache are gone
    // ...and so is the cache's row: the step's host waits replay it, and the eviction is part of
    // the job, not something left Destroying under the finished job's lease.
    const tpl = (await t.call('GET', `/templates/${templateId}`)).body;
    expect(tpl.copies.filter((c: { storeRole: string }) => c.storeRole === 'primary')).toEqual([]);
    expect(after.migratedFrom).toBeUndefined();
    expect(after.lease).toBeUndefined();
    expect((await t.call('GET', `/stores/${pool.id}`)).body.allocatedBytes).toBe(0);
    expect((await t.call('GET', `/stores/${target}`)).body.allocatedBytes).toBe(after.sizeBytes);

    // migrating to where it is already is refused
    expect((await t.call('POST', `/volumes/${before.id}/migrate`, { storeId: target })).status).toBe(400);
    const del = await t.call('DELETE', `/volumes/${before.id}`);
    expect((await t.waitForJob(del.body.job.id)).state).toBe('succeeded');
    expect(await filesUnder(share)).toEqual([]);
  }, 180_000);

  it('a failure after the switch-over rolls forward: the volume stays on the destination, the job succeeds with a warning', async () => {
    const share = await t.newShare('nfs-forward');
    const added = await t.call('POST', '/stores', {
      name: 'nfs-forward',
      provider: 'nfs',
      role: 'primary',
      scope: { type: 'cluster', zoneId: 'zone-1', clusterId: 'cluster-1' },
      capacityBytes: 50 * 2 ** 30,
      details: { server: '127.0.0.1', export: '/forward', mountPath: share },
    });
    expect((await t.waitForJob(added.body.job.id)).state).toBe('succeeded');
    const created = await t.call('POST', '/volumes', {
      name: 'forward',
      zoneId: 'zone-1',
      sizeBytes: 64 * 2 ** 20,
      storeId: pool.id,
    });
    expect((await t.waitForJob(created.body.job.id)).state).toBe('succeeded');
    const before = (await t.call('GET', `/volumes/${created.body.volume.id}`)).body;
    const sourceFile = path.join(pool.details.mountPath, before.path);
    await exec('qemu-io', ['-c', 'write -P 0x5a 0 1M', sourceFile]);
    // The source can be read (the copy works) but not removed, by anyone, root included: the last
    // step fails after the switch-over, and so does the compensation's second try at the removal.
    await exec('chattr', ['+i', sourceFile]);
    try {
      const res = await t.call('POST', `/volumes/${before.id}/migrate`, { storeId: added.body.store.id });
      expect(res.status).toBe(202);
      const job = await t.waitForJob(res.body.job.id, 120_000);
      expect(job.state).toBe('succeeded');
      expect(job.result).toMatchObject({ volumeId: before.id, storeId: added.body.store.id });
      expect(job.result.warning).toMatch(/removing the source copy on .* failed/);
      // The flow ends in its Succeed state, not in its Fail one.
      const execution = await t.stack.stepFunctions.runner.waitFor(job.executionId);
      expect(execution.status).toBe('SUCCEEDED');
      const entered = (
        t.stack.stepFunctions.runner.history(job.executionId) as unknown as {
          type: string;
          state?: { name: string };
        }[]
      )
        .filter((e) => e.type === 'StateEntered')
        .map((e) => e.state?.name);
      expect(entered).toEqual(expect.arrayContaining(['Compensate', 'RolledForward?', 'Migrated']));
      const after = (await t.call('GET', `/volumes/${before.id}`)).body;
      expect(after).toMatchObject({ status: 'Ready', storeId: added.body.store.id });
      expect(after.statusReason).toMatch(/^migrated to /);
      expect(after.migratedFrom).toBeUndefined();
      expect(after.lease).toBeUndefined();
      await exec('qemu-io', ['-r', '-c', 'read -P 0x5a 0 1M', path.join(share, after.path)]);
      // The source's space was given back at the switch-over; its file is left for the sweep.
      expect((await t.call('GET', `/stores/${pool.id}`)).body.allocatedBytes).toBe(0);
      expect(await filesUnder(pool.details.mountPath)).toContain(before.path);
      const del = await t.call('DELETE', `/volumes/${before.id}`);
      expect((await t.waitForJob(del.body.job.id)).state).toBe('succeeded');
    } finally {
      await exec('chattr', ['-i', sourceFile]);
      await exec('rm', ['-f', sourceFile]);
    }
  }, 180_000);
});

describe('migrate between stores no single host reaches', () => {
  it('stages through the image store: flattened, uploaded, pulled with its sha256 verified, nothing left staged', async () => {
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
      return { id: res.body.store.id as string, share };
    };
    const a = await addLocal('local-a', t.hostId(1));
    const b = await addLocal('local-b', t.hostId(2));
    expect((await t.call('GET', `/hosts/${t.hostId(1)}`)).body.attachedStoreIds).not.toContain(b.id);

    const created = await t.call('POST', '/volumes', {
      name: 'roamer',
      zoneId: 'zone-1',
      sizeBytes: 64 * 2 ** 20,
      storeId: a.id,
    });
    expect((await t.waitForJob(created.body.job.id)).state).toBe('succeeded');
    const before = (await t.call('GET', `/volumes/${created.body.volume.id}`)).body;
    const sourceFile = path.join(a.share, before.path);
    await exec('qemu-io', ['-c', 'write -P 0x42 1M 3M', sourceFile]);
    const reference = path.join(a.share, '..', 'roamer-reference.qcow2');
    await qemuImg('convert', '-O', 'qcow2', sourceFile, reference);

    const res = await t.call('POST', `/volumes/${before.id}/migrate`, { storeId: b.id });
    expect(res.status).toBe(202);
    const job = await t.waitForJob(res.body.job.id, 120_000);
    expect(job.state).toBe('succeeded');
    expect(job.result.via).toBe('image-store');

    const after = (await t.call('GET', `/volumes/${before.id}`)).body;
    expect(after).toMatchObject({ status: 'Ready', storeId: b.id });
    expect((await qemuImg('compare', reference, path.join(b.share, after.path))).code).toBe(0);
    expect(await filesUnder(a.share)).toEqual([]);
    const imageStore = (await t.call('GET', '/stores?role=image')).body.items[0];
    const staged = (await t.run('POST', `/stores/${imageStore.id}/inventory`)).job.result.objects.filter(
      (o: { path: string }) => o.path.includes(before.id),
    );
    expect(staged).toEqual([]);
    const del = await t.call('DELETE', `/volumes/${before.id}`);
    expect((await t.waitForJob(del.body.job.id)).state).toBe('succeeded');
  }, 180_000);
});

describe('failure', () => {
  it('an install that fails on the host leaves no Ready volume, no file, no reservation and no stuck state', async () => {
    const reg = await t.call('POST', '/templates', {
      name: 'doomed',
      url: server.url('/template.qcow2'),
      format: 'qcow2',
      zoneId: 'zone-1',
    });
    await t.waitForJob(reg.body.job.id);
    const tpl = (await t.call('GET', `/templates/${reg.body.template.id}`)).body;
    // The image store loses the object: the host's download will fail mid-install.
    await t.s3.send(new DeleteObjectCommand({ Bucket: t.imageBucket, Key: `images/${tpl.copies[0].path}` }));

    const res = await t.call('POST', '/volumes', { name: 'doomed-vm', zoneId: 'zone-1', templateId: tpl.id });
    const job = await t.waitForJob(res.body.job.id, 120_000);
    expect(job.state).toBe('failed');
    expect(job.error.message.length).toBeGreaterThan(0);
    const volume = (await t.call('GET', `/volumes/${res.body.volume.id}`)).body;
    expect(volume.status).toBe('Error');
    expect(volume.lease).toBeUndefined();
    expect(await filesUnder(pool.details.mountPath)).toEqual([]);
    expect((await t.call('GET', `/stores/${pool.id}`)).body.allocatedBytes).toBe(0);
    const cache = (await t.call('GET', `/templates/${tpl.id}`)).body.copies.find(
      (c: { storeRole: string }) => c.storeRole === 'primary',
    );
    expect(cache?.status ?? 'Failed').toBe('Failed');

    // the Error volume can be deleted
    const del = await t.call('DELETE', `/volumes/${volume.id}`);
    expect((await t.waitForJob(del.body.job.id)).state).toBe('succeeded');
  }, 120_000);
});
