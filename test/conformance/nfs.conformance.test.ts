import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { nfsHostOperations } from '../../drivers/nfs/host-ops.js';
import { createNfsProvider } from '../../drivers/nfs/provider.js';
import { describeDriverConformance } from '../../drivers/sdk/conformance.js';
import { HostStorage } from '../../drivers/sdk/host-config.js';
import { createInProcessHostInvoker } from '../../drivers/sdk/host-runtime.js';
import { createTestDriverContext } from '../../drivers/sdk/testing.js';
import type { DataStoreInfo, HostInfo } from '../../drivers/sdk/types.js';
import { makeTestImages, startImageServer } from '../unit/drivers/nfs-image-server.js';

const run = promisify(execFile);

// Two hosts (two work dirs) see the same two shares, as two hypervisors of one cluster would.
describeDriverConformance('nfs', async () => {
  const root = await mkdtemp(join(tmpdir(), 'strata-nfs-conf-'));
  const shareA = join(root, 'share-a');
  const shareB = join(root, 'share-b');
  await mkdir(shareA);
  await mkdir(shareB);
  const store = (id: string, mountPath: string): DataStoreInfo => ({
    id,
    name: id,
    provider: 'nfs',
    role: 'primary',
    scope: { type: 'cluster', zoneId: 'z1', clusterId: 'c1' },
    details: { server: 'nfs.example.internal', export: `/srv/${id}`, mountPath },
    capacityBytes: 1 << 30,
  });
  const hosts: HostInfo[] = ['host-1', 'host-2'].map((id) => ({
    id,
    name: id,
    zoneId: 'z1',
    clusterId: 'c1',
    hypervisor: 'kvm',
  }));
  const host = createInProcessHostInvoker({
    // The test's temp dir is the one storage root its host may touch (as /etc/strata/host.json says on a host).
    storage: HostStorage.fromConfig({ storageRoots: [{ path: root, kind: 'directory' }] }),
    operationSets: [nfsHostOperations],
    workDirRoot: join(root, 'hosts'),
  });
  const mountOf = (s: DataStoreInfo) => s.details.mountPath as string;
  // Templates come from an HTTP server on 127.0.0.1, as a presigned image-store URL would serve them.
  const fixtures = join(root, 'fixtures');
  await mkdir(fixtures);
  const images = await makeTestImages(fixtures);
  const server = await startImageServer({ 'image.raw': images.raw });
  let n = 0;

  return {
    provider: createNfsProvider(),
    store: store('ds-a', shareA),
    secondStore: store('ds-b', shareB),
    ctx: createTestDriverContext({ host }),
    hosts,
    async readObject(s, path) {
      const out = join(root, `read-${n++}.raw`);
      await run('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', join(mountOf(s), path), out]);
      try {
        return await readFile(out);
      } finally {
        await rm(out, { force: true });
      }
    },
    async mutateObject(s, path) {
      const pattern = String(0x10 + (n++ % 0xe0));
      await run('qemu-io', ['-f', 'qcow2', '-c', `write -P ${pattern} 0 64k`, join(mountOf(s), path)]);
    },
    templateSource: {
      url: server.url('/files/image.raw'),
      format: 'raw',
      sha256: images.rawSha256,
      virtualSizeBytes: images.virtualSizeBytes,
    },
    teardown: async () => {
      await server.close();
      await rm(root, { recursive: true, force: true });
    },
  };
});
