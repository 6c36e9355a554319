import { ObjectNotFoundError } from '../../../drivers/sdk/errors';
import type { HostRequest } from '../../../drivers/sdk/host-protocol';
import { HostEndpointSelector } from '../../../functions/core/endpoint-selector';
import { UnavailableError } from '../../../functions/core/errors';
import { ChannelHostInvoker } from '../../../functions/core/host-invoker';
import type { Host } from '../../../functions/core/model';
import type { CommandStatus, EndpointChannel, Repository } from '../../../functions/core/ports';
import type { HostService } from '../../../functions/core/services/host-service';

function host(id: string, overrides: Partial<Host> = {}): Host {
  return {
    id,
    name: id,
    zoneId: 'z1',
    clusterId: 'c1',
    instanceId: `local-${id}`,
    hypervisor: 'kvm',
    status: 'Up',
    attachedStoreIds: ['s1'],
    version: 1,
    createdAt: '',
    updatedAt: '',
    ...overrides,
  };
}

function selectorOver(hosts: Host[], random = () => 0) {
  const service = { all: async () => hosts } as unknown as HostService;
  return new HostEndpointSelector(service, random);
}

describe('HostEndpointSelector.select', () => {
  it('picks only Up hosts that have every store attached', async () => {
    const selector = selectorOver([
      host('down', { status: 'Down' }),
      host('disabled', { status: 'Disabled' }),
      host('one-store'),
      host('both', { attachedStoreIds: ['s1', 's2'] }),
    ]);
    await expect(selector.select({ storeIds: ['s1', 's2'] })).resolves.toMatchObject({ id: 'both' });
  });

  it('honours exclusions', async () => {
    const selector = selectorOver([host('a'), host('b')]);
    await expect(selector.select({ storeIds: ['s1'], excludeHostIds: ['a'] })).resolves.toMatchObject({
      id: 'b',
    });
  });

  it('spreads load: a host with commands in flight is passed over', async () => {
    const selector = selectorOver([host('a'), host('b')]);
    selector.track('a', 1);
    await expect(selector.select({ storeIds: ['s1'] })).resolves.toMatchObject({ id: 'b' });
    selector.track('a', -1);
    selector.track('b', 1);
    await expect(selector.select({ storeIds: ['s1'] })).resolves.toMatchObject({ id: 'a' });
  });

  it('breaks ties at random', async () => {
    const hosts = [host('a'), host('b'), host('c')];
    await expect(selectorOver(hosts, () => 0).select({ storeIds: ['s1'] })).resolves.toMatchObject({
      id: 'a',
    });
    await expect(selectorOver(hosts, () => 0.99).select({ storeIds: ['s1'] })).resolves.toMatchObject({
      id: 'c',
    });
  });

  it('says clearly when no host can do the work', async () => {
    const err = await selectorOver([host('a', { attachedStoreIds: [] })])
      .select({ storeIds: ['s9'] })
      .catch((e) => e);
    expect(err).toBeInstanceOf(UnavailableError);
    expect(err.message).toBe('no Up host has store s9 attached');
  });
});

/** A channel whose commands follow a script of statuses, one per poll. */
class ScriptedChannel implements EndpointChannel {
  sent: HostRequest[] = [];
  constructor(private readonly script: CommandStatus[]) {}
  async send(_host: Host, request: HostRequest) {
    this.sent.push(request);
    return { commandId: `cmd-${this.sent.length}` };
  }
  async status(): Promise<CommandStatus> {
    return this.script.length > 1 ? this.script.shift()! : this.script[0]!;
  }
}

function repoWith(h: Host): Repository {
  return { require: async () => h } as unknown as Repository;
}

describe('ChannelHostInvoker.run', () => {
  const noSleep = async () => undefined;

  it('sends a typed request carrying the job id and returns the result', async () => {
    const channel = new ScriptedChannel([
      { state: 'pending' },
      { state: 'running', progress: 40 },
      { state: 'succeeded', result: { ok: 1 } },
    ]);
    const progress: number[] = [];
    const invoker = new ChannelHostInvoker({
      repo: repoWith(host('h1')),
      channel,
      jobId: 'job-7',
      sleep: noSleep,
      onProgress: (_h, p) => {
        progress.push(p);
      },
    });
    await expect(
      invoker.run('h1', { provider: 'nfs', operation: 'checkMount', args: { mountPath: '/mnt/x' } }),
    ).resolves.toEqual({
      ok: 1,
    });
    expect(channel.sent[0]).toMatchObject({
      version: 1,
      jobId: 'job-7',
      hostId: 'h1',
      provider: 'nfs',
      operation: 'checkMount',
    });
    expect(progress).toEqual([40]);
  });

  it('turns a host failure back into the typed driver error', async () => {
    const channel = new ScriptedChannel([
      { state: 'failed', error: { code: 'ObjectNotFound', message: 'no such file', retryable: false } },
    ]);
    const invoker = new ChannelHostInvoker({
      repo: repoWith(host('h1')),
      channel,
      jobId: 'j',
      sleep: noSleep,
    });
    await expect(invoker.run('h1', { provider: 'nfs', operation: 'info', args: {} })).rejects.toBeInstanceOf(
      ObjectNotFoundError,
    );
  });

  it('refuses to send work to a host that is not Up', async () => {
    const channel = new ScriptedChannel([{ state: 'succeeded' }]);
    const invoker = new ChannelHostInvoker({
      repo: repoWith(host('h1', { status: 'Disabled' })),
      channel,
      jobId: 'j',
    });
    await expect(invoker.run('h1', { provider: 'nfs', operation: 'info', args: {} })).rejects.toBeInstanceOf(
      UnavailableError,
    );
    expect(channel.sent).toHaveLength(0);
  });

  it('reports dispatch and completion so the selector can count load', async () => {
    const events: number[] = [];
    const invoker = new ChannelHostInvoker({
      repo: repoWith(host('h1')),
      channel: new ScriptedChannel([{ state: 'succeeded', result: 1 }]),
      jobId: 'j',
      onDispatch: (_h, d) => events.push(d),
    });
    await invoker.run('h1', { provider: 'nfs', operation: 'info', args: {} });
    expect(events).toEqual([1, -1]);
  });
});
