import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { HostRequest } from '../../drivers/sdk/host-protocol.js';
import { LocalProcessChannel } from '../../functions/adapters/local/process-channel.js';
import { ConflictError, InputError, NotFoundError } from '../../functions/core/errors.js';
import type { Host } from '../../functions/core/model.js';
import type { CommandStatus } from '../../functions/core/ports.js';
import { tempDir, uniqueName, waitUntil } from '../support/integration.js';

const FAKE_HOST = path.join(__dirname, '..', 'support', 'fixtures', 'fake-host.cjs');

function host(instanceId = 'host-1'): Host {
  const now = new Date().toISOString();
  return {
    id: `h-${instanceId}`,
    name: instanceId,
    zoneId: 'z1',
    clusterId: 'c1',
    instanceId,
    hypervisor: 'kvm',
    status: 'Up',
    attachedStoreIds: [],
    version: 1,
    createdAt: now,
    updatedAt: now,
  };
}

let sequence = 0;
function request(args: Record<string, unknown>, overrides: Partial<HostRequest> = {}): HostRequest {
  sequence++;
  return {
    version: 1,
    requestId: `req-${process.pid}-${sequence}`,
    jobId: 'job-1',
    hostId: 'h-host-1',
    provider: 'fake',
    operation: 'run',
    args,
    deadlineSeconds: 60,
    ...overrides,
  };
}

async function settle(channel: LocalProcessChannel, h: Host, commandId: string): Promise<CommandStatus> {
  return waitUntil(async () => {
    const status = await channel.status(h, commandId);
    return status.state === 'succeeded' || status.state === 'failed' ? status : undefined;
  });
}

describe('LocalProcessChannel', () => {
  let hostsRoot: string;
  let channel: LocalProcessChannel;

  beforeEach(async () => {
    hostsRoot = await tempDir('strata-it-hosts-');
    channel = new LocalProcessChannel({
      hostsRoot,
      command: [process.execPath, FAKE_HOST],
      env: { FAKE_HOST_FLAVOUR: 'vanilla' },
    });
  });

  afterEach(() => channel.stop());

  describe('send and status', () => {
    it('runs the host command in the host work dir and reports its result', async () => {
      const h = host();
      const req = request({ mode: 'succeed' });

      const { commandId } = await channel.send(h, req);
      const status = await settle(channel, h, commandId);

      const workDir = path.join(hostsRoot, 'host-1');
      expect(status).toMatchObject({ state: 'succeeded', progress: 100 });
      const echo = status.result as {
        argv: string[];
        cwd: string;
        workDir: string;
        env: Record<string, string>;
      };
      expect(echo.argv).toEqual([
        '--request-b64',
        expect.stringMatching(/^[A-Za-z0-9+/=]+$/),
        '--work-dir',
        workDir,
      ]);
      expect(JSON.parse(Buffer.from(echo.argv[1] as string, 'base64').toString('utf8'))).toEqual(req);
      expect(echo.cwd).toBe(workDir);
      expect(echo.env.FAKE_HOST_FLAVOUR).toBe('vanilla');
    });

    it('tracks progress while the command runs', async () => {
      const h = host();
      const { commandId } = await channel.send(h, request({ mode: 'gate', gate: 'go' }));

      const running = await waitUntil(async () => {
        const status = await channel.status(h, commandId);
        return status.progress === 42 ? status : undefined;
      });
      expect(running).toEqual({ state: 'running', progress: 42, progressDetail: { waiting: 'go' } });

      await writeFile(path.join(hostsRoot, 'host-1', 'go'), '');
      await expect(settle(channel, h, commandId)).resolves.toMatchObject({
        state: 'succeeded',
        result: { gate: 'go' },
      });
    });

    it('reports the error of an operation that failed', async () => {
      const h = host();
      const { commandId } = await channel.send(h, request({ mode: 'fail' }));

      await expect(settle(channel, h, commandId)).resolves.toEqual({
        state: 'failed',
        progress: 20,
        error: { code: 'NotMounted', message: 'share is not mounted', retryable: false },
      });
    });

    it('reports a process that died without a result as HostProcessDied, retryable, with its stderr', async () => {
      const h = host();
      const { commandId } = await channel.send(h, request({ mode: 'die' }));

      const status = await settle(channel, h, commandId);

      expect(status.state).toBe('failed');
      expect(status.progress).toBe(30);
      expect(status.error).toMatchObject({ code: 'HostProcessDied', retryable: true });
      expect(status.error?.message).toMatch(/exited with code 3/);
      expect(status.error?.message).toMatch(/disk on fire/);
    });

    it('reports an exit 2 without a result (request rejected) as not retryable', async () => {
      const h = host();
      const { commandId } = await channel.send(h, request({ mode: 'reject' }));

      await expect(settle(channel, h, commandId)).resolves.toMatchObject({
        state: 'failed',
        error: { code: 'HostRequestRejected', retryable: false },
      });
    });

    it('fails a command whose runtime cannot be started', async () => {
      const broken = new LocalProcessChannel({
        hostsRoot,
        command: [path.join(hostsRoot, 'no-such-binary')],
      });
      const h = host();
      try {
        const { commandId } = await broken.send(h, request({ mode: 'succeed' }));
        await expect(settle(broken, h, commandId)).resolves.toMatchObject({
          state: 'failed',
          error: { code: 'HostProcessDied', retryable: true },
        });
      } finally {
        await broken.stop();
      }
    });

    it('kills a runtime that outlives its deadline', async () => {
      const strict = new LocalProcessChannel({
        hostsRoot,
        command: [process.execPath, FAKE_HOST],
        killGraceSeconds: 0,
      });
      const h = host();
      try {
        const { commandId } = await strict.send(h, request({ mode: 'hang' }, { deadlineSeconds: 1 }));
        await expect(settle(strict, h, commandId)).resolves.toMatchObject({
          state: 'failed',
          error: { code: 'HostCommandTimedOut', retryable: true },
        });
      } finally {
        await strict.stop();
      }
    });

    it('does not know commands of other hosts or unknown ids', async () => {
      const { commandId } = await channel.send(host('host-1'), request({ mode: 'succeed' }));

      await expect(channel.status(host('host-2'), commandId)).rejects.toBeInstanceOf(NotFoundError);
      await expect(channel.status(host('host-1'), 'no-such-command')).rejects.toBeInstanceOf(NotFoundError);
    });
  });

  describe('idempotency', () => {
    it('runs a request once however often it is sent, before and after it finished', async () => {
      const h = host();
      const req = request({ mode: 'succeed' });

      const [a, b] = await Promise.all([channel.send(h, req), channel.send(h, req)]);
      await settle(channel, h, a.commandId);
      const c = await channel.send(h, { ...req, args: { ...req.args } });

      expect(b.commandId).toBe(a.commandId);
      expect(c.commandId).toBe(a.commandId);
      const runs = await readFile(path.join(hostsRoot, 'host-1', 'runs.log'), 'utf8');
      expect(runs.trim().split('\n')).toEqual([req.requestId]);
    });

    it('refuses a reused requestId with different content', async () => {
      const req = request({ mode: 'succeed' });
      await channel.send(host(), req);

      await expect(channel.send(host(), { ...req, args: { mode: 'fail' } })).rejects.toBeInstanceOf(
        ConflictError,
      );
      await expect(channel.send(host('host-2'), req)).rejects.toBeInstanceOf(ConflictError);
    });

    it('forgets the oldest finished commands beyond its bound', async () => {
      const small = new LocalProcessChannel({
        hostsRoot,
        command: [process.execPath, FAKE_HOST],
        maxFinishedCommands: 2,
      });
      const h = host();
      try {
        const ids: string[] = [];
        for (let i = 0; i < 3; i++) {
          const { commandId } = await small.send(h, request({ mode: 'succeed' }));
          await settle(small, h, commandId);
          ids.push(commandId);
        }
        await expect(small.status(h, ids[0] as string)).rejects.toBeInstanceOf(NotFoundError);
        await expect(small.status(h, ids[2] as string)).resolves.toMatchObject({ state: 'succeeded' });
      } finally {
        await small.stop();
      }
    });
  });

  describe('safety', () => {
    it('passes shell metacharacters through as data and executes nothing', async () => {
      const marker = path.join(os.tmpdir(), uniqueName('strata-pwned'));
      const hostile = {
        mode: 'succeed',
        path: `$(touch ${marker})`,
        other: `\`touch ${marker}\`; touch ${marker} && echo "$HOME" | tee ${marker}`,
      };
      const h = host();

      const { commandId } = await channel.send(h, request(hostile));
      const status = await settle(channel, h, commandId);

      expect((status.result as { args: unknown }).args).toEqual(hostile);
      expect(existsSync(marker)).toBe(false);
    });

    it.each(['../escape', 'a/b', '..', '.hidden', '', 'x'.repeat(200), 'host;rm -rf'])(
      'rejects the instance id %j before touching the disk',
      async (instanceId) => {
        await expect(channel.send(host(instanceId), request({ mode: 'succeed' }))).rejects.toBeInstanceOf(
          InputError,
        );
        expect(existsSync(path.join(hostsRoot, '..', 'escape'))).toBe(false);
      },
    );

    it('rejects a request that does not match the host protocol', async () => {
      const bad = request({ mode: 'succeed' }, { requestId: '$(reboot)' });

      await expect(channel.send(host(), bad)).rejects.toBeInstanceOf(InputError);
    });
  });

  describe('concurrency and shutdown', () => {
    it('queues commands beyond maxConcurrentPerHost as pending', async () => {
      const serial = new LocalProcessChannel({
        hostsRoot,
        command: [process.execPath, FAKE_HOST],
        maxConcurrentPerHost: 1,
      });
      const h = host();
      try {
        const first = await serial.send(h, request({ mode: 'gate', gate: 'one' }));
        const second = await serial.send(h, request({ mode: 'gate', gate: 'two' }));
        await waitUntil(async () => (await serial.status(h, first.commandId)).progress === 42);
        expect((await serial.status(h, second.commandId)).state).toBe('pending');

        await writeFile(path.join(hostsRoot, 'host-1', 'one'), '');
        await settle(serial, h, first.commandId);
        await waitUntil(async () => (await serial.status(h, second.commandId)).progress === 42);
        await writeFile(path.join(hostsRoot, 'host-1', 'two'), '');
        await expect(settle(serial, h, second.commandId)).resolves.toMatchObject({ state: 'succeeded' });
      } finally {
        await serial.stop();
      }
    });

    it('stop() terminates running children, fails them and refuses new work', async () => {
      const h = host();
      const { commandId } = await channel.send(h, request({ mode: 'hang' }));
      await waitUntil(async () => (await channel.status(h, commandId)).progress === 5);

      await channel.stop();

      await expect(channel.status(h, commandId)).resolves.toMatchObject({
        state: 'failed',
        error: { code: 'HostProcessDied', retryable: true },
      });
      await expect(channel.send(h, request({ mode: 'succeed' }))).rejects.toThrow(/stopped/);
    });
  });
});
