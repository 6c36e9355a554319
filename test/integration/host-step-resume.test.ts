/**
 * Host steps on DynamoDB Local: a run whose host command outlives its wait budget suspends (the
 * state machine waits, not the Lambda), and the next run of the step picks up the same command —
 * same host, same request id — instead of starting the operation again. A command seen failing is
 * sent again as a new attempt by the step's retry.
 */
import { DynamoRepository } from '../../functions/adapters/aws/dynamo-repository';
import { ChannelHostInvoker, MAX_HOST_ATTEMPTS, stepRequestId } from '../../functions/core/host-invoker';
import type { Host } from '../../functions/core/model';
import type { CommandStatus, EndpointChannel } from '../../functions/core/ports';
import { JobService } from '../../functions/core/services/job-service';
import { runInStep, StepScope } from '../../functions/core/step-scope';
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

/** A channel whose commands finish after `pollsToFinish` status calls (`fail`: they fail then). */
function slowChannel(pollsToFinish: number, fail = false) {
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
      if (n < pollsToFinish) return { state: 'running', progress: n };
      return fail
        ? { state: 'failed', error: { code: 'Unavailable', message: 'disk busy', retryable: true } }
        : { state: 'succeeded', progress: 100, result: { commandId } };
    },
  };
  return { channel, sent };
}

function invoker(channel: EndpointChannel, jobId: string) {
  return new ChannelHostInvoker({ repo, channel, jobId, pollMs: 5, maxPollMs: 5 });
}

/** One run of a step, as the task handler makes it: the value, or the suspension. */
async function runStep<T>(stepKey: string, budgetMs: number, fn: () => Promise<T>) {
  const scope = new StepScope(stepKey, budgetMs);
  const run = runInStep(scope, fn);
  return Promise.race([
    run.then((value) => ({ value }) as const),
    scope.suspended.then((suspended) => ({ suspended }) as const),
  ]);
}

const call = { provider: 'nfs', operation: 'backupChunks', args: { phase: 'scan' } };

describe('host steps', () => {
  it('suspends when the budget runs out, and the next run waits for the same command', async () => {
    const job = await jobs.create('snapshot.backup', { type: 'snapshot', id: 'snap-1' });
    await jobs.started(job.id, 'exec-1');
    const { channel, sent } = slowChannel(40);
    let after = false;
    const first = await runStep('scanBackup', 50, async () => {
      const out = await invoker(channel, job.id).run('host-a', call);
      after = true; // never reached in a suspended run
      return out;
    });
    expect(first).toMatchObject({ suspended: { hostId: 'host-a', commandId: 'cmd-1', seconds: 1 } });
    expect(after).toBe(false);
    // The next run may be offered another host by the selector: it stays with the one running it.
    const second = await runStep('scanBackup', 60_000, () => invoker(channel, job.id).run('host-b', call));
    expect(second).toEqual({ value: { commandId: 'cmd-1' } });
    expect(sent).toEqual([
      { hostId: 'host-a', requestId: stepRequestId(job.id, 'scanBackup:backupChunks:0', 1) },
    ]);
    expect((await jobs.get(job.id)).hostCommands).toMatchObject({
      'scanBackup:backupChunks:0': { hostId: 'host-a', commandId: 'cmd-1', attempt: 1 },
    });
  });

  it('numbers the calls of one step, so a second call is not mistaken for the first', async () => {
    const job = await jobs.create('snapshot.backup', { type: 'snapshot', id: 'snap-2' });
    await jobs.started(job.id, 'exec-2');
    const { channel, sent } = slowChannel(2);
    const out = await runStep('uploadBackup', 60_000, async () => {
      const step = invoker(channel, job.id);
      return [await step.run('host-a', call), await step.run('host-a', call)];
    });
    expect(out).toEqual({ value: [{ commandId: 'cmd-1' }, { commandId: 'cmd-2' }] });
    expect(sent).toHaveLength(2);
    expect(new Set(sent.map((s) => s.requestId)).size).toBe(2);
  });

  it('a retry after a failure the step saw sends a new attempt with a new request id', async () => {
    const job = await jobs.create('volume.resize', { type: 'volume', id: 'vol-2' });
    await jobs.started(job.id, 'exec-4');
    const failing = slowChannel(1, true);
    await expect(
      runStep('resizeOnPool', 60_000, () => invoker(failing.channel, job.id).run('host-a', call)),
    ).rejects.toMatchObject({ code: 'Unavailable' });
    expect((await jobs.get(job.id)).hostCommands?.['resizeOnPool:backupChunks:0']).toMatchObject({
      failed: true,
      attempt: 1,
    });
    const ok = slowChannel(1);
    const retried = await runStep('resizeOnPool', 60_000, () =>
      invoker(ok.channel, job.id).run('host-a', call),
    );
    expect(retried).toEqual({ value: { commandId: 'cmd-1' } });
    expect(ok.sent[0]!.requestId).toBe(stepRequestId(job.id, 'resizeOnPool:backupChunks:0', 2));
    expect(ok.sent[0]!.requestId).not.toBe(failing.sent[0]!.requestId);
  });

  it('after the last attempt a rerun sends nothing and reports the failure as final, however often it runs', async () => {
    const job = await jobs.create('store.add', { type: 'store', id: 'store-2' });
    await jobs.started(job.id, 'exec-6');
    const failing = slowChannel(1, true);
    const errors: Array<{ code: string; retryable: boolean }> = [];
    // Ten runs of the step, as a Retry whose counters restart (or a driver that wraps the error as
    // retryable) would make: only MAX_HOST_ATTEMPTS commands reach the host.
    for (let run = 0; run < 10; run++) {
      await runStep('attachHost@host-a', 60_000, () =>
        invoker(failing.channel, job.id).run('host-a', call),
      ).catch((error) => errors.push(error));
    }
    expect(failing.sent).toHaveLength(MAX_HOST_ATTEMPTS);
    expect(errors.slice(0, MAX_HOST_ATTEMPTS - 1).every((e) => e.retryable)).toBe(true);
    for (const e of errors.slice(MAX_HOST_ATTEMPTS - 1)) {
      expect(e).toMatchObject({ code: 'HostOperationFailed', retryable: false });
      expect((e as unknown as Error).message).toMatch(/disk busy \(Unavailable, after 4 attempts\)/);
    }
  });

  it('parallel branches of one job record their commands without overwriting each other', async () => {
    const job = await jobs.create('store.add', { type: 'store', id: 'store-1' });
    await jobs.started(job.id, 'exec-5');
    const { channel } = slowChannel(1);
    const hosts = Array.from({ length: 8 }, (_, i) => `host-${i % 2 ? 'a' : 'b'}`);
    await Promise.all(
      hosts.map((hostId, i) =>
        runStep(`attachHost@${i}`, 60_000, () => invoker(channel, job.id).run(hostId, call)),
      ),
    );
    expect(Object.keys((await jobs.get(job.id)).hostCommands ?? {}).sort()).toEqual(
      hosts.map((_, i) => `attachHost@${i}:backupChunks:0`).sort(),
    );
  });

  it('outside a step, a call sends its own command, records nothing and waits to the end', async () => {
    const job = await jobs.create('volume.create', { type: 'volume', id: 'vol-1' });
    await jobs.started(job.id, 'exec-3');
    const { channel, sent } = slowChannel(10);
    await expect(invoker(channel, job.id).run('host-a', call)).resolves.toEqual({ commandId: 'cmd-1' });
    expect(sent).toHaveLength(1);
    expect((await jobs.get(job.id)).hostCommands).toBeUndefined();
  });
});
