import { NotConfiguredError } from '../../../functions/core/errors.js';
import { EnvName } from '../../../functions/env-names.js';
import { buildAwsStrata, deferred } from '../../../functions/handlers/aws-runtime.js';

describe('buildAwsStrata', () => {
  it('builds with no configuration at all: nothing is read until a call needs it', () => {
    expect(() => buildAwsStrata({})).not.toThrow();
  });

  it('fails only the call that needs a missing capability, naming the variable', async () => {
    // The api function's environment: a table and flows, no host channel.
    const strata = buildAwsStrata({
      AWS_LAMBDA_FUNCTION_NAME: 'Strata-Api',
      [EnvName.TableName]: 'table',
    });
    const host = { id: 'h', instanceId: 'mi-0123456789abcdef0' } as never;
    const sending = (async () => strata.ports.channel.send(host, {} as never))();
    await expect(sending).rejects.toBeInstanceOf(NotConfiguredError);
    await expect(sending).rejects.toThrow(
      'the host channel (SSM Run Command) is not available in function Strata-Api: STRATA_SSM_DOCUMENT is not set',
    );
    await expect((async () => strata.ports.workflows.start('store-attach', 'job-1', {}))()).rejects.toThrow(
      /starting workflows is not available .*STRATA_STATE_MACHINE_ARNS/,
    );
    await expect(
      strata.policies.create({ volumeId: 'v', schedule: 'rate(1 hour)', keep: 1 } as never),
    ).rejects.toThrow();
  });
});

describe('deferred', () => {
  it('builds the port on first use, once, and retries a failed build', () => {
    let builds = 0;
    let fail = true;
    const port = deferred(() => {
      builds++;
      if (fail) throw new Error('not yet');
      return { value: () => 42 };
    });
    expect(builds).toBe(0);
    expect(() => port.value()).toThrow('not yet');
    fail = false;
    expect(port.value()).toBe(42);
    expect(port.value()).toBe(42);
    expect(builds).toBe(2);
  });
});
