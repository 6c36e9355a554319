import { existsSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import type { HostRequest } from '../../drivers/sdk/host-protocol.js';
import { LocalProcessChannel } from '../../functions/adapters/local/process-channel.js';
import type { Host } from '../../functions/core/model.js';
import type { CommandStatus } from '../../functions/core/ports.js';
import { tempDir, waitUntil } from '../support/integration.js';

const HOST_MAIN = path.join(__dirname, '..', '..', 'drivers', 'host-main.ts');

const host: Host = {
  id: 'h-1',
  name: 'local-host-1',
  zoneId: 'z1',
  clusterId: 'c1',
  instanceId: 'local-host-1',
  hypervisor: 'kvm',
  status: 'Up',
  attachedStoreIds: [],
  version: 1,
  createdAt: '2030-01-01T00:00:00.000Z',
  updatedAt: '2030-01-01T00:00:00.000Z',
};

function checkMount(requestId: string, mountPath: string): HostRequest {
  return {
    version: 1,
    requestId,
    jobId: 'job-1',
    hostId: host.id,
    provider: 'nfs',
    operation: 'checkMount',
    args: { mountPath },
    deadlineSeconds: 60,
  };
}

async function settle(channel: LocalProcessChannel, commandId: string): Promise<CommandStatus> {
  // A cold `node --import tsx` start compiles the runtime first: allow it time on a busy machine.
  return waitUntil(async () => {
    const status = await channel.status(host, commandId);
    return status.state === 'succeeded' || status.state === 'failed' ? status : undefined;
  }, 30_000);
}

// Guarded so this file stays green while drivers/host-main.ts is absent from a checkout.
const describeWithRuntime = existsSync(HOST_MAIN) ? describe : describe.skip;

describeWithRuntime('LocalProcessChannel with the real host runtime (default command)', () => {
  let channel: LocalProcessChannel;
  let hostsRoot: string;

  beforeAll(async () => {
    hostsRoot = await tempDir('strata-it-real-hosts-');
    channel = new LocalProcessChannel({ hostsRoot });
  });

  afterAll(() => channel.stop());

  it("runs the nfs provider's checkMount on a directory and returns its capacity", async () => {
    const share = await tempDir('strata-it-share-');

    const { commandId } = await channel.send(host, checkMount('check-ok', share));
    const status = await settle(channel, commandId);

    expect(status).toMatchObject({ state: 'succeeded', result: { mountPath: share } });
    const result = status.result as { freeBytes: number; totalBytes: number };
    expect(result.totalBytes).toBeGreaterThan(0);
    expect(result.freeBytes).toBeGreaterThan(0);
    // The write probe is cleaned up.
    expect(await readdir(share)).toEqual([]);
  }, 40_000);

  it('reports a missing mount as a failed command with the driver error', async () => {
    const missing = path.join(await tempDir('strata-it-share-'), 'not-mounted');

    const { commandId } = await channel.send(host, checkMount('check-missing', missing));
    const status = await settle(channel, commandId);

    expect(status).toMatchObject({ state: 'failed', error: { code: 'Unavailable', retryable: true } });
    expect(status.error?.message).toMatch(/does not exist/);
  }, 40_000);
});
