/**
 * Snapshots on primary storage, end to end on the embedded stack: a volume written by qemu-io (as a
 * VM would), snapshots taken through the snapshot-take workflow as an external qcow2 chain, reverts
 * to any snapshot, deletes that merge into what depends on them.
 */
import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { tempDir } from '../support/integration';
import { qemuCompare } from '../support/qemu-compare';
import { startTestStack, type TestStack } from '../support/stack';

const exec = promisify(execFile);
let t: TestStack;
let refs: string;

beforeAll(async () => {
  refs = await tempDir('strata-snap-refs-');
  t = await startTestStack();
}, 60_000);

afterAll(async () => {
  await t?.stack.stop();
});

describe('snapshots on primary storage', () => {
  it('takes, reverts to any snapshot, and deletes with merging, keeping every survivor intact', async () => {
    const pool = (await t.call('GET', '/stores?role=primary')).body.items[0];
    const created = await t.call('POST', '/volumes', {
      name: 'snappy',
      zoneId: 'zone-1',
      sizeBytes: 64 * 2 ** 20,
    });
    await t.waitForJob(created.body.job.id);
    const volume = (await t.call('GET', `/volumes/${created.body.volume.id}`)).body;
    const file = path.join(pool.details.mountPath, volume.path);

    const snapshots: string[] = [];
    for (let i = 1; i <= 3; i++) {
      await exec('qemu-io', ['-c', `write -P ${0x10 * i} ${(i - 1) * 8}M 4M`, file]);
      await exec('qemu-img', ['convert', '-O', 'qcow2', file, path.join(refs, `s${i}.qcow2`)]);
      const res = await t.call('POST', `/volumes/${volume.id}/snapshots`, { name: `s${i}` });
      expect(res.status).toBe(202);
      const job = await t.waitForJob(res.body.job.id);
      expect(job.state).toBe('succeeded');
      snapshots.push(res.body.snapshot.id);
      const snap = (await t.call('GET', `/snapshots/${res.body.snapshot.id}`)).body;
      expect(snap.status).toBe('CreatedOnPrimary');
      expect(snap.copies[0]).toMatchObject({ storeId: pool.id, status: 'Ready' });
    }
    await exec('qemu-io', ['-c', 'write -P 0x99 40M 4M', file]);
    expect((await t.call('GET', `/snapshots?volumeId=${volume.id}`)).body.items).toHaveLength(3);

    // a volume with snapshots is not deleted (nor migrated) from under them
    const refused = await t.call('DELETE', `/volumes/${volume.id}`);
    expect(refused.status).toBe(409);
    expect(refused.body.error.dependents).toHaveLength(3);

    // revert to the oldest, then to the newest: any snapshot, not only the latest
    expect((await t.run('POST', `/snapshots/${snapshots[0]}/revert`)).job?.state).toBe('succeeded');
    expect(await qemuCompare(path.join(refs, 's1.qcow2'), file)).toBe(0);
    expect((await t.run('POST', `/snapshots/${snapshots[2]}/revert`)).job?.state).toBe('succeeded');
    expect(await qemuCompare(path.join(refs, 's3.qcow2'), file)).toBe(0);
    expect((await t.call('GET', `/volumes/${volume.id}`)).body.status).toBe('Ready');

    // delete the middle one: merged into its child, the others still revert correctly
    expect((await t.run('DELETE', `/snapshots/${snapshots[1]}`)).job?.state).toBe('succeeded');
    expect((await t.call('GET', `/snapshots/${snapshots[1]}`)).status).toBe(404);
    expect(await qemuCompare(path.join(refs, 's3.qcow2'), file)).toBe(0);
    await t.run('POST', `/snapshots/${snapshots[0]}/revert`);
    expect(await qemuCompare(path.join(refs, 's1.qcow2'), file)).toBe(0);
    await t.run('POST', `/snapshots/${snapshots[2]}/revert`);
    expect(await qemuCompare(path.join(refs, 's3.qcow2'), file)).toBe(0);

    for (const id of [snapshots[0], snapshots[2]])
      expect((await t.run('DELETE', `/snapshots/${id}`)).job?.state).toBe('succeeded');
    expect(await qemuCompare(path.join(refs, 's3.qcow2'), file)).toBe(0);
    const del = await t.call('DELETE', `/volumes/${volume.id}`);
    expect((await t.waitForJob(del.body.job.id)).state).toBe('succeeded');
  }, 180_000);

  it('refuses a snapshot while another operation holds the volume, with 409 and the state', async () => {
    const created = await t.call('POST', '/volumes', { name: 'busy', zoneId: 'zone-1', sizeBytes: 2 ** 26 });
    await t.waitForJob(created.body.job.id);
    const id = created.body.volume.id;
    const [a, b] = await Promise.all([
      t.call('POST', `/volumes/${id}/snapshots`, { name: 'a' }),
      t.call('POST', `/volumes/${id}/snapshots`, { name: 'b' }),
    ]);
    expect([a.status, b.status].sort()).toEqual([202, 409]);
    const winner = a.status === 202 ? a : b;
    const loser = a.status === 202 ? b : a;
    expect(loser.body.error.state).toBe('Snapshotting');
    await t.waitForJob(winner.body.job.id);
    expect((await t.run('DELETE', `/snapshots/${winner.body.snapshot.id}`)).job?.state).toBe('succeeded');
    const del = await t.call('DELETE', `/volumes/${id}`);
    expect((await t.waitForJob(del.body.job.id)).state).toBe('succeeded');
  });

  it('refuses take, revert and a merging delete with 409 naming the host while a host has access, and allows them after revoke', async () => {
    const created = await t.call('POST', '/volumes', {
      name: 'in-use',
      zoneId: 'zone-1',
      sizeBytes: 2 ** 26,
    });
    await t.waitForJob(created.body.job.id);
    const id = created.body.volume.id;
    const first = await t.call('POST', `/volumes/${id}/snapshots`, { name: 'before' });
    expect((await t.waitForJob(first.body.job.id)).state).toBe('succeeded');
    const snapshotId = first.body.snapshot.id;
    const host = t.hostId(1);
    expect((await t.run('POST', `/volumes/${id}/access`, { hostId: host })).job?.state).toBe('succeeded');
    const before = (await t.call('GET', `/volumes/${id}`)).body;

    const take = await t.call('POST', `/volumes/${id}/snapshots`, { name: 'while-running' });
    const revert = await t.call('POST', `/snapshots/${snapshotId}/revert`);
    const merge = await t.call('DELETE', `/snapshots/${snapshotId}`);
    for (const res of [take, revert, merge]) {
      expect(res.status).toBe(409);
      expect(res.body.error.message).toContain(host);
      expect(res.body.error.hostId).toBe(host);
    }
    // Nothing changed: the volume, its snapshot and its snapshot list are as they were.
    const after = (await t.call('GET', `/volumes/${id}`)).body;
    expect({ status: after.status, version: after.version }).toEqual({
      status: before.status,
      version: before.version,
    });
    expect((await t.call('GET', `/snapshots/${snapshotId}`)).body.status).toBe('CreatedOnPrimary');
    expect((await t.call('GET', `/snapshots?volumeId=${id}`)).body.items).toHaveLength(1);

    expect((await t.run('DELETE', `/volumes/${id}/access/${host}`)).job?.state).toBe('succeeded');
    const again = await t.call('POST', `/volumes/${id}/snapshots`, { name: 'after-revoke' });
    expect(again.status).toBe(202);
    expect((await t.waitForJob(again.body.job.id)).state).toBe('succeeded');
  });
});
