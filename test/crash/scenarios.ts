/**
 * The crash matrix's scenarios: each flow, started the way an operator starts it, with what it
 * needs made first and the repeat an operator makes after a failure.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { FlowName } from '../../functions/core/ports';
import { startImageServer } from '../support/image-server';
import type { CrashStack } from './crash-stack';
import type { Request, Scenario } from './matrix';

const exec = promisify(execFile);
const MiB = 2 ** 20;

/** What several scenarios share, made once per run. */
interface World {
  templateUrl: string;
  poolId: string;
  secondPoolId: string;
  secondImageStoreId: string;
  maintenanceStoreId: string;
  close(): Promise<void>;
}

let world: World | undefined;
let shares = 0;

async function share(t: CrashStack, name: string): Promise<string> {
  const dir = path.join(t.dataDir, 'shares', `${name}-${++shares}`);
  await mkdir(dir, { recursive: true });
  return dir;
}

function nfsStore(name: string, mountPath: string) {
  return {
    name,
    provider: 'nfs',
    role: 'primary',
    scope: { type: 'cluster', zoneId: 'zone-1', clusterId: 'cluster-1' },
    capacityBytes: 50 * 2 ** 30,
    details: { server: '127.0.0.1', export: `/${name}`, mountPath },
  };
}

async function must(t: CrashStack, what: string, r: Request): Promise<Record<string, any>> {
  const { answer, job } = await t.run(r.method, r.route, r.body);
  if (answer.status >= 300 || (job && job.state !== 'succeeded')) {
    throw new Error(
      `preparing ${what}: ${answer.status} ${JSON.stringify(job ?? answer.body).slice(0, 600)}`,
    );
  }
  return answer.body;
}

/** The shared parts: an image server with a real qcow2, a second pool, a second image store. */
export async function makeWorld(t: CrashStack): Promise<World> {
  if (world) return world;
  const image = path.join(t.dataDir, 'base.qcow2');
  await exec('qemu-img', ['create', '-f', 'qcow2', image, '32M']);
  await exec('qemu-io', ['-c', 'write -P 0xab 0 2M', image]);
  const server = await startImageServer();
  server.serve('/base.qcow2', { kind: 'file', path: image });
  const pools = (await t.call('GET', '/stores?role=primary')).body.items;
  const images = (await t.call('GET', '/stores?role=image')).body.items;
  const second = await must(t, 'a second pool', {
    method: 'POST',
    route: '/stores',
    body: nfsStore('pool-b', await share(t, 'pool-b')),
  });
  const quiet = await must(t, 'a store for maintenance', {
    method: 'POST',
    route: '/stores',
    body: nfsStore('pool-m', await share(t, 'pool-m')),
  });
  const imageStore = await must(t, 'a second image store', {
    method: 'POST',
    route: '/stores',
    body: {
      name: 'images-b',
      provider: 's3',
      role: 'image',
      scope: { type: 'zone', zoneId: 'zone-1' },
      details: { bucket: images[0].details.bucket, prefix: 'second/' },
    },
  });
  world = {
    templateUrl: server.url('/base.qcow2'),
    poolId: pools[0].id,
    secondPoolId: second.store.id,
    secondImageStoreId: imageStore.store.id,
    maintenanceStoreId: quiet.store.id,
    close: () => server.close(),
  };
  return world;
}

/** The primary stores on a share. */
async function storesOn(t: CrashStack, mountPath: string): Promise<{ id: string; status: string }[]> {
  const stores = (await t.call('GET', '/stores?role=primary')).body.items as {
    id: string;
    status: string;
    details: { mountPath?: string };
  }[];
  return stores.filter((s) => s.details.mountPath === mountPath);
}

async function blankVolume(t: CrashStack, name: string, sizeBytes = 16 * MiB): Promise<string> {
  const w = await makeWorld(t);
  const body = await must(t, `volume ${name}`, {
    method: 'POST',
    route: '/volumes',
    body: { name, zoneId: 'zone-1', sizeBytes, storeId: w.poolId },
  });
  return String(body.volume.id);
}

async function template(t: CrashStack, name: string): Promise<string> {
  const w = await makeWorld(t);
  const body = await must(t, `template ${name}`, {
    method: 'POST',
    route: '/templates',
    body: { name, url: w.templateUrl, format: 'qcow2', zoneId: 'zone-1' },
  });
  return String(body.template.id);
}

/**
 * A blank volume with 1 MiB of random data written into it (qemu-io, through qcow2): its backup's
 * chunks are its own, so no later case can make a chunk that one case leaked look held again.
 */
async function filledVolume(t: CrashStack, name: string): Promise<string> {
  const volumeId = await blankVolume(t, name);
  await fill(t, volumeId, 0);
  return volumeId;
}

/** Writes 1 MiB of random data at `offsetMiB` into the volume's active layer. */
async function fill(t: CrashStack, volumeId: string, offsetMiB: number): Promise<void> {
  const volume = await get(t, `/volumes/${volumeId}`);
  const store = await get(t, `/stores/${String(volume.storeId)}`);
  const file = path.join(String(store.details.mountPath), String(volume.path));
  const data = path.join(os.tmpdir(), `strata-crash-fill-${process.pid}`);
  await writeFile(data, randomBytes(MiB));
  await exec('qemu-io', ['-f', 'qcow2', '-c', `write -q -s ${data} ${offsetMiB}M 1M`, file]);
  await rm(data, { force: true });
}

/** A volume with a full backup (`parentId`) and a later snapshot of new data in another chunk. */
async function backedUpTwice(t: CrashStack, name: string, backupSecond: boolean) {
  const volumeId = await filledVolume(t, name);
  const parentId = await snapshotOf(t, volumeId, true);
  await fill(t, volumeId, 8);
  return { volumeId, parentId, snapshotId: await snapshotOf(t, volumeId, backupSecond) };
}

async function snapshotOf(t: CrashStack, volumeId: string, backup = false): Promise<string> {
  const body = await must(t, 'a snapshot', {
    method: 'POST',
    route: `/volumes/${volumeId}/snapshots`,
    body: { name: 'prepared', backup },
  });
  return String(body.snapshot.id);
}

async function get(t: CrashStack, route: string) {
  const { status, body } = await t.call('GET', route);
  return status === 200 ? body : undefined;
}

/** Repeat `r` unless `done` says what it asked for is already there. */
function unless(
  done: (t: CrashStack, p: Record<string, string>) => Promise<boolean>,
  r: (p: Record<string, string>) => Request,
) {
  return async (t: CrashStack, p: Record<string, string>) => ((await done(t, p)) ? undefined : r(p));
}

const resize = (p: Record<string, string>): Request => ({
  method: 'POST',
  route: `/volumes/${p.volumeId}/resize`,
  body: { sizeBytes: 32 * MiB },
});
const migrate = (p: Record<string, string>): Request => ({
  method: 'POST',
  route: `/volumes/${p.volumeId}/migrate`,
  body: { storeId: p.to },
});
const grant = (p: Record<string, string>): Request => ({
  method: 'POST',
  route: `/volumes/${p.volumeId}/access`,
  body: { hostId: p.hostId },
});
const revoke = (p: Record<string, string>): Request => ({
  method: 'DELETE',
  route: `/volumes/${p.volumeId}/access/${p.hostId}`,
});
const backup = (p: Record<string, string>): Request => ({
  method: 'POST',
  route: `/snapshots/${p.snapshotId}/backup`,
});
const deleteSnapshot = (p: Record<string, string>): Request => ({
  method: 'DELETE',
  route: `/snapshots/${p.snapshotId}`,
});
const deleteImage = (p: Record<string, string>): Request => ({
  method: 'DELETE',
  route: `/snapshots/${p.snapshotId}?from=image`,
});
const copy = (p: Record<string, string>): Request => ({
  method: 'POST',
  route: `/templates/${p.templateId}/copies`,
  body: { storeId: p.storeId },
});
const maintenance = (p: Record<string, string>): Request => ({
  method: 'POST',
  route: `/stores/${p.storeId}/maintenance`,
});

export const scenarios: Scenario<Record<string, string>>[] = [
  {
    flow: FlowName.VolumeCreate,
    name: 'blank volume',
    seconds: 28,
    prepare: async () => ({}),
    request: () => ({
      method: 'POST',
      route: '/volumes',
      body: { name: 'crash', zoneId: 'zone-1', sizeBytes: 16 * MiB },
    }),
  },
  {
    flow: FlowName.VolumeCreate,
    name: 'from a template (first install on the pool)',
    seconds: 73,
    prepare: async (t) => ({ templateId: await template(t, 'to-install') }),
    request: (p) => ({
      method: 'POST',
      route: '/volumes',
      body: { name: 'vm', zoneId: 'zone-1', templateId: p.templateId },
    }),
  },
  {
    flow: FlowName.VolumeCreate,
    name: 'lazy restore of a backup (Hydrating, then Ready)',
    seconds: 240,
    reuse: true,
    prepare: async (t) => ({ snapshotId: await snapshotOf(t, await filledVolume(t, 'to-restore'), true) }),
    request: (p) => ({
      method: 'POST',
      route: '/volumes',
      body: {
        name: 'lazy',
        zoneId: 'zone-1',
        fromSnapshotId: p.snapshotId,
        restoreFrom: 'backup',
        lazy: true,
      },
    }),
  },
  {
    flow: FlowName.VolumeResize,
    name: FlowName.VolumeResize,
    seconds: 29,
    prepare: async (t) => ({ volumeId: await blankVolume(t, 'to-resize') }),
    request: resize,
    retry: unless(async (t, p) => {
      const v = await get(t, `/volumes/${p.volumeId}`);
      return v?.status === 'Ready' && v.sizeBytes === 32 * MiB;
    }, resize),
  },
  {
    flow: FlowName.VolumeDelete,
    name: FlowName.VolumeDelete,
    seconds: 37,
    prepare: async (t) => ({ volumeId: await blankVolume(t, 'to-delete') }),
    request: (p) => ({ method: 'DELETE', route: `/volumes/${p.volumeId}` }),
    retry: unless(
      async (t, p) => (await get(t, `/volumes/${p.volumeId}`)) === undefined,
      (p) => ({ method: 'DELETE', route: `/volumes/${p.volumeId}` }),
    ),
  },
  {
    flow: FlowName.VolumeDelete,
    name: "a template's last clone (evicts the pool's cache)",
    seconds: 84,
    prepare: async (t) => {
      const w = await makeWorld(t);
      const templateId = await template(t, 'to-evict');
      const body = await must(t, 'a clone', {
        method: 'POST',
        route: '/volumes',
        body: { name: 'clone', zoneId: 'zone-1', templateId, storeId: w.poolId },
      });
      return { volumeId: String(body.volume.id) };
    },
    request: (p) => ({ method: 'DELETE', route: `/volumes/${p.volumeId}` }),
    retry: unless(
      async (t, p) => (await get(t, `/volumes/${p.volumeId}`)) === undefined,
      (p) => ({ method: 'DELETE', route: `/volumes/${p.volumeId}` }),
    ),
  },
  {
    flow: FlowName.VolumeMigrate,
    name: FlowName.VolumeMigrate,
    seconds: 85,
    prepare: async (t) => ({
      volumeId: await blankVolume(t, 'to-move'),
      to: (await makeWorld(t)).secondPoolId,
    }),
    request: migrate,
    retry: unless(async (t, p) => {
      const v = await get(t, `/volumes/${p.volumeId}`);
      return v?.status === 'Ready' && v.storeId === p.to;
    }, migrate),
  },
  {
    flow: FlowName.VolumeAccess,
    name: 'grant',
    seconds: 33,
    prepare: async (t) => ({ volumeId: await blankVolume(t, 'to-open'), hostId: t.hostId(1) }),
    request: grant,
    retry: unless(
      async (t, p) => ((await get(t, `/volumes/${p.volumeId}`))?.accessHostIds ?? []).includes(p.hostId),
      grant,
    ),
  },
  {
    flow: FlowName.VolumeAccess,
    name: 'revoke',
    seconds: 22,
    prepare: async (t) => {
      const p = { volumeId: await blankVolume(t, 'to-close'), hostId: t.hostId(1) };
      await must(t, 'access', grant(p));
      return p;
    },
    request: revoke,
    retry: unless(
      async (t, p) => !((await get(t, `/volumes/${p.volumeId}`))?.accessHostIds ?? []).includes(p.hostId),
      revoke,
    ),
  },
  {
    flow: FlowName.SnapshotTake,
    name: FlowName.SnapshotTake,
    seconds: 60,
    prepare: async (t) => ({ volumeId: await blankVolume(t, 'to-snapshot') }),
    request: (p) => ({ method: 'POST', route: `/volumes/${p.volumeId}/snapshots`, body: { name: 'crash' } }),
  },
  {
    flow: FlowName.SnapshotBackup,
    name: 'take with backup',
    seconds: 262,
    prepare: async (t) => ({ volumeId: await filledVolume(t, 'to-back-up') }),
    request: (p) => ({
      method: 'POST',
      route: `/volumes/${p.volumeId}/snapshots`,
      body: { name: 'crash', backup: true },
    }),
  },
  {
    flow: FlowName.SnapshotBackup,
    name: 'backup of a snapshot',
    seconds: 119,
    prepare: async (t) => {
      const volumeId = await filledVolume(t, 'backed-later');
      return { volumeId, snapshotId: await snapshotOf(t, volumeId) };
    },
    request: backup,
    retry: unless(
      async (t, p) => (await get(t, `/snapshots/${p.snapshotId}`))?.status === 'BackedUp',
      backup,
    ),
  },
  {
    flow: FlowName.SnapshotBackup,
    name: 'incremental backup, inheriting holds',
    seconds: 219,
    prepare: (t) => backedUpTwice(t, 'backed-twice', false),
    request: backup,
    retry: unless(
      async (t, p) => (await get(t, `/snapshots/${p.snapshotId}`))?.status === 'BackedUp',
      backup,
    ),
  },
  {
    flow: FlowName.SnapshotRevert,
    name: FlowName.SnapshotRevert,
    seconds: 52,
    prepare: async (t) => {
      const volumeId = await blankVolume(t, 'to-revert');
      return { volumeId, snapshotId: await snapshotOf(t, volumeId) };
    },
    request: (p) => ({ method: 'POST', route: `/snapshots/${p.snapshotId}/revert` }),
  },
  {
    flow: FlowName.SnapshotDelete,
    name: 'backed-up snapshot, every copy',
    seconds: 105,
    prepare: async (t) => {
      const volumeId = await filledVolume(t, 'snapshot-to-delete');
      return { volumeId, snapshotId: await snapshotOf(t, volumeId, true) };
    },
    request: deleteSnapshot,
    retry: unless(async (t, p) => (await get(t, `/snapshots/${p.snapshotId}`)) === undefined, deleteSnapshot),
  },
  {
    flow: FlowName.SnapshotDelete,
    name: 'backup an incremental inherits from',
    seconds: 101,
    prepare: (t) => backedUpTwice(t, 'parent-to-delete', true),
    request: (p) => deleteImage({ snapshotId: p.parentId as string }),
    retry: unless(
      async (t, p) => (await get(t, `/snapshots/${p.parentId}`))?.status !== 'BackedUp',
      (p) => deleteImage({ snapshotId: p.parentId as string }),
    ),
  },
  {
    flow: FlowName.SnapshotPolicy,
    name: 'a scheduled run',
    seconds: 60,
    prepare: async (t) => {
      const volumeId = await blankVolume(t, 'on-a-policy');
      const policy = await must(t, 'a policy', {
        method: 'POST',
        route: '/snapshot-policies',
        body: { volumeId, schedule: 'rate(1 day)', keep: 1 },
      });
      return { volumeId, policyId: String(policy.id) };
    },
    // The same slot again is the same snapshot: a repeat delivery takes nothing twice.
    request: (p) => ({
      method: 'START',
      route: FlowName.SnapshotPolicy,
      body: { policyId: p.policyId, scheduledTime: '2026-12-04T00:00:00Z' },
    }),
  },
  {
    flow: FlowName.TemplateIngest,
    name: 'register by URL',
    seconds: 30,
    prepare: async (t) => ({ url: (await makeWorld(t)).templateUrl }),
    request: (p) => ({
      method: 'POST',
      route: '/templates',
      body: { name: 'crash', url: p.url, format: 'qcow2', zoneId: 'zone-1' },
    }),
  },
  {
    flow: FlowName.TemplateCopy,
    name: 'to a second image store',
    seconds: 29,
    prepare: async (t) => ({
      templateId: await template(t, 'to-copy'),
      storeId: (await makeWorld(t)).secondImageStoreId,
    }),
    request: copy,
    retry: unless(async (t, p) => {
      const tpl = await get(t, `/templates/${p.templateId}`);
      return (tpl?.copies ?? []).some(
        (c: { storeId: string; status: string }) => c.storeId === p.storeId && c.status === 'Ready',
      );
    }, copy),
  },
  {
    flow: FlowName.StoreAttach,
    name: 'add an nfs pool',
    seconds: 58,
    prepare: async (t) => ({ mountPath: await share(t, 'added') }),
    request: (p) => ({ method: 'POST', route: '/stores', body: nfsStore(`added-${shares}`, p.mountPath!) }),
    retry: async (t, p) => {
      const mine = (await storesOn(t, p.mountPath!))[0];
      if (mine?.status === 'Up') return undefined;
      // A store the crash left behind (in Error) is deleted first, as an operator would.
      if (mine) await t.call('DELETE', `/stores/${mine.id}`);
      return { method: 'POST', route: '/stores', body: nfsStore(`added-${shares}-again`, p.mountPath!) };
    },
    // Every case adds a store; left there, each later case would attach, sweep and list them all.
    cleanup: async (t, p) => {
      for (const store of await storesOn(t, p.mountPath!)) {
        const { status, body } = await t.call('DELETE', `/stores/${store.id}`);
        if (status >= 300)
          throw new Error(`store ${store.id} not deleted: ${status} ${JSON.stringify(body)}`);
      }
    },
  },
  {
    flow: FlowName.StoreMaintenance,
    name: 'enter maintenance',
    seconds: 44,
    prepare: async (t) => {
      const storeId = (await makeWorld(t)).maintenanceStoreId;
      const store = await get(t, `/stores/${storeId}`);
      if (store?.status !== 'Up')
        await must(t, 'maintenance off', { method: 'DELETE', route: `/stores/${storeId}/maintenance` });
      return { storeId };
    },
    request: maintenance,
    retry: unless(
      async (t, p) => (await get(t, `/stores/${p.storeId}`))?.status === 'Maintenance',
      maintenance,
    ),
  },
  {
    flow: FlowName.StoreInventory,
    name: FlowName.StoreInventory,
    seconds: 45,
    scansAll: true,
    reuse: true,
    prepare: async (t) => ({ storeId: (await makeWorld(t)).poolId }),
    request: (p) => ({ method: 'POST', route: `/stores/${p.storeId}/inventory` }),
  },
  {
    flow: FlowName.HostProbe,
    name: FlowName.HostProbe,
    seconds: 28,
    reuse: true,
    prepare: async (t) => ({ hostId: t.hostId(2) }),
    request: (p) => ({ method: 'POST', route: `/hosts/${p.hostId}/probe` }),
  },
  {
    flow: FlowName.BackupVerify,
    name: 'every chunk of the image store',
    seconds: 108,
    scansAll: true,
    reuse: true,
    prepare: async (t) => {
      const w = await makeWorld(t);
      const volumeId = await filledVolume(t, 'to-verify');
      await must(t, 'a backed-up snapshot', {
        method: 'POST',
        route: `/volumes/${volumeId}/snapshots`,
        body: { name: 'verified', backup: true },
      });
      const images = (await t.call('GET', '/stores?role=image')).body.items as { id: string }[];
      return { storeId: images.find((s) => s.id !== w.secondImageStoreId)!.id };
    },
    request: (p) => ({ method: 'POST', route: `/stores/${p.storeId}/verify`, body: {} }),
  },
  {
    flow: FlowName.OrphanSweep,
    name: FlowName.OrphanSweep,
    seconds: 96,
    scansAll: true,
    prepare: async () => ({}),
    request: () => ({ method: 'POST', route: '/sweeps', body: {} }),
  },
];

export async function closeWorld(): Promise<void> {
  await world?.close();
  world = undefined;
}
