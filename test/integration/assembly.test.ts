/**
 * The embedded stack is the synthesized assembly: every function runs from its bundle with the
 * template's environment and answers without a configuration error; IAM is enforced as synthesized
 * (a call outside a role's policy is AccessDeniedException, and a test-only narrowed policy makes
 * the call it covers fail); host work goes through the run document on the local SSM endpoint,
 * whose parameter pattern, tag condition and S3 output behave as on AWS; flows that start flows
 * (a take with backup) run end to end.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { SFNClient, StartExecutionCommand } from '@aws-sdk/client-sfn';
import { SendCommandCommand, SSMClient } from '@aws-sdk/client-ssm';
import { encodeHostRequest } from '../../drivers/sdk/host-protocol';
import { SsmEndpointChannel } from '../../functions/adapters/aws/ssm-channel';
import type { Host } from '../../functions/core/model';
import { EnvName } from '../../functions/env-names';
import type { LocalRole } from '../../infra/local/assembly/deployment';
import { startTestStack, type TestStack } from '../support/stack';

let t: TestStack;

beforeAll(async () => {
  t = await startTestStack();
}, 120_000);

afterAll(async () => {
  await t?.stack.stop();
});

function runDocumentName(): string {
  return t.stack.deployment.documents().find((d) => d.name.endsWith('-RunHostOperation'))!.name;
}

async function host(n: number): Promise<Host> {
  return (await t.call('GET', `/hosts/${t.hostId(n)}`)).body as Host;
}

function probeRequest(hostId: string, build?: string) {
  return {
    version: 1 as const,
    requestId: `req-${Date.now()}`,
    jobId: 'job-assembly-test',
    hostId,
    provider: 'runtime',
    operation: 'probe',
    args: {},
    deadlineSeconds: 60,
    ...(build ? { build } : {}),
  };
}

describe('every function runs from its bundle with the synthesized environment', () => {
  it('the API answers one route of each group without a configuration error', async () => {
    const routes = [
      '/health',
      '/openapi.json',
      '/hosts',
      '/stores',
      '/templates',
      '/volumes',
      '/snapshots',
      '/snapshot-policies',
      '/jobs',
    ];
    for (const route of routes) {
      const res = await t.call('GET', route);
      expect({ route, status: res.status }).toEqual({ route, status: 200 });
    }
  });

  it('each task function runs a step, and the reconciler its pass, with no configuration error', async () => {
    const hostId = t.hostId(1);
    await t.repo.create('Job', {
      id: 'job-direct-probe',
      kind: 'host.probe',
      target: { type: 'host', id: hostId },
      state: 'running',
      progress: 0,
    } as never);
    // store-tasks: the table, the host channel (SSM), the host runtime. A probe slower than the
    // test stack's wait budget (300 ms: a loaded machine) answers `waiting`; the state machine would
    // wait and run the step again, which finds the command it sent, and so does this loop.
    const probe = async () =>
      (await t.stack.invoke('StoreTasks', {
        task: 'probeHost',
        input: { jobId: 'job-direct-probe', hostId },
      })) as { build?: string; current?: boolean; waiting?: { seconds: number } };
    let probed = await probe();
    for (let turn = 0; probed.waiting && turn < 100; turn++) {
      await new Promise((r) => setTimeout(r, 100));
      probed = await probe();
    }
    expect(probed).toMatchObject({ current: true, ready: true });
    // image-tasks: a step on a template that does not exist is a domain error, not a wiring one.
    await expect(
      t.stack.invoke('ImageTasks', {
        task: 'verifyUpload',
        input: { jobId: 'job-x', templateId: 'tpl-none', storeId: 'store-none' },
      }),
    ).rejects.toMatchObject({ name: 'Strata.NotFound' });
    // the reconciler: the table and the lease index.
    expect(await t.stack.invoke('Reconciler', {})).toEqual({ recovered: [], deferred: [] });
  });

  it('gives each function exactly its template environment plus what Lambda adds', () => {
    for (const fn of t.stack.deployment.functions()) {
      for (const [name, value] of Object.entries(fn.environment)) {
        expect({ fn: fn.name, name, value: typeof value }).toEqual({ fn: fn.name, name, value: 'string' });
      }
    }
    const api = t.stack.deployment.functions().find((f) => f.logicalId.startsWith('Api'))!;
    expect(api.environment).not.toHaveProperty(EnvName.SsmDocumentName);
    expect(api.environment[EnvName.StateMachineArns]).toContain(':stateMachine:Strata-snapshot-take');
  });
});

describe('IAM is enforced as synthesized', () => {
  it('denies the API role SendCommand: it has no host channel', async () => {
    const ssm = new SSMClient({
      region: t.stack.account.region,
      endpoint: t.stack.endpoints.ssm,
      credentials: t.stack.credentialsFor('ApiRole'),
      maxAttempts: 1,
    });
    try {
      await expect(
        ssm.send(
          new SendCommandCommand({
            DocumentName: runDocumentName(),
            InstanceIds: [t.stack.hosts[0]!.instanceId],
            Parameters: { Request: [encodeHostRequest(probeRequest(t.hostId(1)))] },
          }),
        ),
      ).rejects.toMatchObject({ name: 'AccessDeniedException' });
    } finally {
      ssm.destroy();
    }
  });

  it('denies the API role the snapshot-policy flow: only its schedules start it', async () => {
    const machine = t.stack.deployment.stateMachines().find((m) => m.name.endsWith('-snapshot-policy'))!;
    const sfn = new SFNClient({
      region: t.stack.account.region,
      endpoint: t.stack.endpoints.sfn,
      credentials: t.stack.credentialsFor('ApiRole'),
      maxAttempts: 1,
    });
    try {
      await expect(
        sfn.send(new StartExecutionCommand({ stateMachineArn: machine.arn, input: '{}' })),
      ).rejects.toMatchObject({ name: 'AccessDeniedException' });
    } finally {
      sfn.destroy();
    }
  });

  it('refuses a run-document parameter its allowedPattern does not admit, before any host sees it', async () => {
    const ssm = new SSMClient({
      region: t.stack.account.region,
      endpoint: t.stack.endpoints.ssm,
      credentials: t.stack.credentialsFor('StoreTasksRole'),
      maxAttempts: 1,
    });
    try {
      await expect(
        ssm.send(
          new SendCommandCommand({
            DocumentName: runDocumentName(),
            InstanceIds: [t.stack.hosts[0]!.instanceId],
            Parameters: { Request: ['$(touch /tmp/pwned)'] },
          }),
        ),
      ).rejects.toMatchObject({ name: 'InvalidParameters' });
    } finally {
      ssm.destroy();
    }
  });
});

describe('a narrowed policy (test only)', () => {
  let narrow: TestStack;

  beforeAll(async () => {
    // store-tasks may send commands only to hosts tagged StrataHost=never: none of the local hosts.
    const narrowed = (role: LocalRole) =>
      role.logicalId.startsWith('StoreTasksRole')
        ? role.policies.map((p) => ({
            ...p,
            document: JSON.parse(
              JSON.stringify(p.document).replace(
                '"ssm:resourceTag/StrataHost":"true"',
                '"ssm:resourceTag/StrataHost":"never"',
              ),
            ),
          }))
        : role.policies;
    narrow = await startTestStack({ narrowPolicies: narrowed, bootstrap: false });
  }, 120_000);

  afterAll(async () => {
    await narrow?.stack.stop();
  });

  it('makes the call it covers fail with AccessDeniedException, and the flow say so', async () => {
    const created = await narrow.call('POST', '/hosts', {
      name: 'h1',
      zoneId: 'zone-1',
      clusterId: 'cluster-1',
      instanceId: narrow.stack.hosts[0]!.instanceId,
    });
    expect(created.status).toBe(201);
    const probe = await narrow.waitForJob(created.body.probeJobId);
    expect(probe.state).toBe('failed');
    expect(probe.error.message).toMatch(
      /not authorized to perform: ssm:SendCommand on resource: .*managed-instance/,
    );
  });
});

describe('host work through the run document', () => {
  const channel = () =>
    new SsmEndpointChannel({
      documentName: runDocumentName(),
      outputBucket: t.stack.commandOutputBucket,
      outputPrefix: 'ssm',
      clientConfig: {
        region: t.stack.account.region,
        endpoint: t.stack.endpoints.ssm,
        credentials: t.stack.credentialsFor('StoreTasksRole'),
      },
      s3ClientConfig: {
        region: t.stack.account.region,
        endpoint: t.stack.endpoints.s3Proxy,
        forcePathStyle: true,
        credentials: t.stack.credentialsFor('StoreTasksRole'),
      },
    });

  async function settle(c: SsmEndpointChannel, h: Host, commandId: string) {
    for (let i = 0; i < 300; i++) {
      const status = await c.status(h, commandId);
      if (status.state === 'succeeded' || status.state === 'failed') return status;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`command ${commandId} did not finish`);
  }

  it('runs a request on the host that reports this build', async () => {
    const c = channel();
    const h = await host(1);
    const build = t.stack.deployment.functions().find((f) => f.logicalId.startsWith('StoreTasks'))!
      .environment[EnvName.HostBuild];
    const { commandId } = await c.send(h, probeRequest(h.id, build));
    const status = await settle(c, h, commandId);
    expect(status).toMatchObject({ state: 'succeeded', result: { build, ready: true } });
  });

  it('refuses, on the host, a request made for another build, saying to upgrade it', async () => {
    const c = channel();
    const h = await host(1);
    const request = {
      ...probeRequest(h.id),
      provider: 'nfs',
      operation: 'checkMount',
      args: { mountPath: '/tmp' },
      build: 'f'.repeat(64),
    };
    const status = await settle(c, h, (await c.send(h, request)).commandId);
    expect(status).toMatchObject({ state: 'failed', error: { code: 'HostBuildMismatch', retryable: false } });
    expect(status.error?.message).toMatch(/upgrade the host/);
  });

  it('reads a result larger than SSM returns inline from the command-output bucket', async () => {
    const share = await t.newShare('many-files');
    await mkdir(path.join(share, 'volumes'), { recursive: true });
    for (let i = 0; i < 400; i++)
      await writeFile(
        path.join(share, 'volumes', `v-${String(i).padStart(4, '0')}-${'x'.repeat(40)}.qcow2`),
        '',
      );
    const added = await t.call('POST', '/stores', {
      name: 'many',
      provider: 'nfs',
      role: 'primary',
      scope: { type: 'cluster', zoneId: 'zone-1', clusterId: 'cluster-1' },
      capacityBytes: 2 ** 30,
      details: { server: '127.0.0.1', export: '/many', mountPath: share },
    });
    expect((await t.waitForJob(added.body.job.id)).state).toBe('succeeded');
    const { job } = await t.run('POST', `/stores/${added.body.store.id}/inventory`);
    expect(job.state).toBe('succeeded');
    expect(job.result.total).toBeGreaterThanOrEqual(400);
  });
});

describe('flows that start flows', () => {
  it('takes a snapshot with backup: the take step starts the backup flow, which backs it up', async () => {
    const created = await t.run('POST', '/volumes', { name: 'tb', zoneId: 'zone-1', sizeBytes: 2 ** 26 });
    expect(created.job.state).toBe('succeeded');
    const volumeId = created.body.volume.id;
    const taken = await t.run('POST', `/volumes/${volumeId}/snapshots`, {
      name: 'with-backup',
      backup: true,
    });
    expect(taken.job).toMatchObject({ state: 'succeeded', kind: 'snapshot.take' });
    const snapshot = (await t.call('GET', `/snapshots/${taken.body.snapshot.id}`)).body;
    expect(snapshot.status).toBe('BackedUp');
    expect(snapshot.copies.map((c: { storeRole: string }) => c.storeRole).sort()).toEqual([
      'image',
      'primary',
    ]);
  });
});
