/**
 * Resumable host calls on DynamoDB Local: a step whose function runs out of time hands over with
 * HostStillRunningError, and the retried step waits for the same command instead of starting the
 * operation again (what keeps a long backup alive across 15-minute Lambda invocations).
 */
import { HostStillRunningError } from '../../drivers/sdk/errors';
import { DynamoRepository } from '../../functions/adapters/aws/dynamo-repository';
import { ChannelHostInvoker } from '../../functions/core/host-invoker';
import type { Host } from '../../functions/core/model';
import type { CommandStatus, EndpointChannel } from '../../functions/core/ports';
import { JobService } from '../../functions/core/services/job-service';
import { freshTable } from '../support/integration';

let repo: DynamoRepository;
let jobs: JobService;

beforeAll(async () => {
  const { doc, tableName } = await freshTable('resume');
  repo = new DynamoRepository({ tableName, client: doc });
  jobs = new JobService(repo);
  for (const id of ['host-a', 'host-b']) {
    await repo.create('Host', {
      id,
      name: id,
      zoneId: 'zone-1',
      clusterId: 'c-1',
      instanceId: id,
      hypervisor: 'kvm',
      status: 'Up',
      attachedStoreIds: [],
    } as Omit<Host, 'version' | 'createdAt' | 'updatedAt'>);
  }
});

/** A channel whose commands finish after `pollsToFinish` status calls. */
function slowChannel(pollsToFinish: number) {
  const sent: Array<{ hostId: string; requestId: string }> = [];
  const polls = new Map<string, number>();
  const channel: EndpointChannel = {
    async send(host, request) {
      sent.push({ hostId: host.id, requestId: request.requestId });
      const commandId = `cmd-${sent.length}`;
      polls.set(commandId, 0);
      return { commandId };
    },
    async status(_host, commandId): Promise<CommandStatus> {
      const n = (polls.get(commandId) ?? 0) + 1;
      polls.set(commandId, n);
      return n >= pollsToFinish
        ? { state: 'succeeded', progress: 100, result: { commandId } }
        : { state: 'running', progress: n };
    },
  };
  return { channel, sent };
}

function invoker(
  channel: EndpointChannel,
  jobId: string,
  options: { resumeKey?: string; waitBudgetMs?: number },
) {
  return new ChannelHostInvoker({ repo, channel, jobId, pollMs: 5, maxPollMs: 5, ...options });
}

const call = { provider: 'nfs', operation: 'backupChunks', args: { phase: 'scan' } };

describe('resumable host calls', () => {
  it('hands over when the budget runs out, and the next run waits for the same command', async () => {
    const job = await jobs.create('snapshot.backup', { type: 'snapshot', id: 'snap-1' });
    await jobs.started(job.id, 'exec-1');
    const { channel, sent } = slowChannel(40);
    const first = invoker(channel, job.id, { resumeKey: 'scan', waitBudgetMs: 50 });
    await expect(first.run('host-a', call)).rejects.toBeInstanceOf(HostStillRunningError);
    // The retry may be sent to another host by the selector: it stays with the one running it.
    const second = invoker(channel, job.id, { resumeKey: 'scan' });
    await expect(second.run('host-b', call)).resolves.toEqual({ commandId: 'cmd-1' });
    expect(sent).toHaveLength(1);
    expect((await jobs.get(job.id)).hostCommands).toMatchObject({
      'scan:backupChunks:0': { hostId: 'host-a', commandId: 'cmd-1' },
    });
  });

  it('numbers the calls of one step, so a second call is not mistaken for the first', async () => {
    const job = await jobs.create('snapshot.backup', { type: 'snapshot', id: 'snap-2' });
    await jobs.started(job.id, 'exec-2');
    const { channel, sent } = slowChannel(2);
    const step = invoker(channel, job.id, { resumeKey: 'upload' });
    expect(await step.run('host-a', call)).toEqual({ commandId: 'cmd-1' });
    expect(await step.run('host-a', call)).toEqual({ commandId: 'cmd-2' });
    expect(sent).toHaveLength(2);
  });

  it('without a resume key, every run sends its own command and waits to the deadline', async () => {
    const job = await jobs.create('volume.create', { type: 'volume', id: 'vol-1' });
    await jobs.started(job.id, 'exec-3');
    const { channel, sent } = slowChannel(10);
    const plain = invoker(channel, job.id, { waitBudgetMs: 1 });
    await expect(plain.run('host-a', call)).resolves.toEqual({ commandId: 'cmd-1' });
    expect(sent).toHaveLength(1);
    expect((await jobs.get(job.id)).hostCommands).toBeUndefined();
  });
});
