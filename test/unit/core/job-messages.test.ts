import { causeMessage, JobService, publicMessage } from '../../../functions/core/services/job-service';

describe('publicMessage', () => {
  it('drops stack frames and source paths, keeping what happened', () => {
    const text = [
      "TypeError: Cannot read properties of undefined (reading 'path')",
      '    at VolumeCreateFlow.createOnPool (/var/task/functions/core/services/volumes/create.ts:120:31)',
      '    at async file:///work/main/functions/handlers/task-handler.ts:41:26',
    ].join('\n');
    expect(publicMessage(text)).toBe("TypeError: Cannot read properties of undefined (reading 'path')");
    expect(publicMessage('qemu-img failed in /opt/strata/host-main.cjs:10:2 on the pool')).toBe(
      'qemu-img failed in host-main.cjs on the pool',
    );
  });

  it('leaves an ordinary message and a store path alone, and caps the length', () => {
    expect(publicMessage('volume vol-1 is Destroying')).toBe('volume vol-1 is Destroying');
    expect(publicMessage('mount /srv/nfs/pool-1 is not a mount of 10.0.0.1:/export')).toBe(
      'mount /srv/nfs/pool-1 is not a mount of 10.0.0.1:/export',
    );
    expect(publicMessage('x'.repeat(5000))).toHaveLength(1000);
  });
});

it('JobService.fail records the public message', async () => {
  const writes: Record<string, unknown>[] = [];
  const repo = {
    updateWhere: async (_key: unknown, _when: unknown, changes: Record<string, unknown>) => {
      writes.push(changes);
      return changes;
    },
  };
  await new JobService(repo as never).fail('job-1', {
    code: 'Boom',
    message: 'Error: boom\n    at f (/app/functions/x.ts:1:1)',
  });
  expect(writes[0]?.error).toEqual({ code: 'Boom', message: 'Error: boom' });
});

it("causeMessage gives the entities' reasons the same public text as the job's", () => {
  const Cause = JSON.stringify({ errorMessage: 'Error: boom\n    at f (/var/task/index.js:1:2)' });
  expect(causeMessage({ Error: 'Strata.Internal', Cause })).toBe('Error: boom');
  expect(causeMessage({ Error: 'States.Timeout' })).toBe('States.Timeout');
});
