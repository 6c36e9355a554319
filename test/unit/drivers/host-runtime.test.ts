import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { z } from 'zod';
import {
  DuplicateProviderError,
  HostOperationError,
  ObjectNotFoundError,
} from '../../../drivers/sdk/errors.js';
import type { HostEvent, HostRequest } from '../../../drivers/sdk/host-protocol.js';
import { createInProcessHostInvoker, runHostRequest } from '../../../drivers/sdk/host-runtime.js';
import type { HostOperationContext, HostOperationSet } from '../../../drivers/sdk/types.js';

let root: string;
beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'strata-host-runtime-'));
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

const seen: { ctx?: HostOperationContext } = {};
const acme: HostOperationSet = {
  provider: 'acme',
  operations: {
    echo: {
      args: z.object({ text: z.string(), times: z.number().int().positive() }),
      async run(args: { text: string; times: number }, ctx: HostOperationContext) {
        seen.ctx = ctx;
        ctx.progress(-5);
        ctx.progress(50, { step: 'half' });
        ctx.progress(250);
        return { echoed: args.text.repeat(args.times) };
      },
    },
    missing: {
      args: z.object({}),
      async run() {
        throw new ObjectNotFoundError('no such volume');
      },
    },
    crash: {
      args: z.object({}),
      async run() {
        throw new Error('segfault-ish');
      },
    },
    hang: {
      args: z.object({}),
      run(_args: unknown, ctx: HostOperationContext) {
        seen.ctx = ctx;
        return new Promise(() => {});
      },
    },
  },
};

function request(overrides: Partial<HostRequest> = {}): HostRequest {
  return {
    version: 1,
    requestId: 'req-1',
    jobId: 'job-1',
    hostId: 'host-1',
    provider: 'acme',
    operation: 'echo',
    args: { text: 'ab', times: 2 },
    deadlineSeconds: 30,
    ...overrides,
  };
}

async function runWithEvents(req: unknown) {
  const events: HostEvent[] = [];
  const result = await runHostRequest(req, {
    operationSets: [acme],
    workDir: join(root, 'work'),
    onEvent: (e) => events.push(e),
  });
  return { result, events };
}

describe('runHostRequest', () => {
  it('runs the operation and reports clamped progress, then exactly one result', async () => {
    const { result, events } = await runWithEvents(request());

    expect(result).toEqual({ type: 'result', ok: true, result: { echoed: 'abab' } });
    expect(events).toEqual([
      { type: 'progress', percent: 0 },
      { type: 'progress', percent: 50, detail: { step: 'half' } },
      { type: 'progress', percent: 100 },
      result,
    ]);
  });

  it('gives the operation the job id, host id and a created work dir', async () => {
    await runWithEvents(request());

    expect(seen.ctx?.jobId).toBe('job-1');
    expect(seen.ctx?.hostId).toBe('host-1');
    expect((await stat(join(root, 'work'))).isDirectory()).toBe(true);
  });

  it.each([
    ['a missing requestId', { ...request(), requestId: undefined }, /requestId/],
    ['a wrong version', { ...request(), version: 2 }, /version/],
    ['a shell-ish host id', { ...request(), hostId: 'h1; rm -rf /' }, /hostId/],
    ['a zero deadline', { ...request(), deadlineSeconds: 0 }, /deadlineSeconds/],
    ['not an object', 'run echo', /expected object/],
  ])('refuses %s as InvalidRequest', async (_label, req, message) => {
    const { result, events } = await runWithEvents(req);

    expect(result).toMatchObject({ ok: false, error: { code: 'InvalidRequest', retryable: false } });
    expect(result.ok === false && result.error.message).toMatch(message);
    expect(events).toEqual([result]);
  });

  it('reports an unknown provider', async () => {
    const { result } = await runWithEvents(request({ provider: 'ceph' }));

    expect(result).toMatchObject({ ok: false, error: { code: 'UnknownProvider' } });
  });

  it.each(['nope', 'toString', 'constructor'])('reports the unknown operation %j', async (operation) => {
    const { result } = await runWithEvents(request({ operation }));

    expect(result).toMatchObject({ ok: false, error: { code: 'UnknownOperation' } });
  });

  it('reports bad arguments with the path of the first issue', async () => {
    const { result } = await runWithEvents(request({ args: { text: 'a', times: -1 } }));

    expect(result).toMatchObject({ ok: false, error: { code: 'InvalidArguments' } });
    expect(result.ok === false && result.error.message).toMatch(/^invalid arguments: args\.times: /);
  });

  it("keeps a DriverError's code and retryable flag", async () => {
    const { result } = await runWithEvents(request({ operation: 'missing', args: {} }));

    expect(result).toEqual({
      type: 'result',
      ok: false,
      error: { code: 'ObjectNotFound', message: 'no such volume', retryable: false },
    });
  });

  it('reports any other failure as HostOperationFailed', async () => {
    const { result } = await runWithEvents(request({ operation: 'crash', args: {} }));

    expect(result).toMatchObject({ ok: false, error: { code: 'HostOperationFailed', retryable: false } });
    expect(result.ok === false && result.error.message).toMatch(/segfault-ish/);
  });

  it('ends an operation that outlives its deadline, aborting its signal', async () => {
    const started = Date.now();

    const { result } = await runWithEvents(request({ operation: 'hang', args: {}, deadlineSeconds: 1 }));

    expect(result).toMatchObject({ ok: false, error: { code: 'DeadlineExceeded', retryable: true } });
    expect(seen.ctx?.signal.aborted).toBe(true);
    expect(Date.now() - started).toBeLessThan(5000);
  });

  it('reports an external stop as a retryable Aborted', async () => {
    const controller = new AbortController();
    const pending = runHostRequest(request({ operation: 'hang', args: {} }), {
      operationSets: [acme],
      workDir: join(root, 'work'),
      signal: controller.signal,
    });

    controller.abort();

    await expect(pending).resolves.toMatchObject({ ok: false, error: { code: 'Aborted', retryable: true } });
  });

  it('rejects operation sets that name one provider twice', async () => {
    await expect(
      runHostRequest(request(), { operationSets: [acme, acme], workDir: root }),
    ).rejects.toBeInstanceOf(DuplicateProviderError);
  });
});

describe('createInProcessHostInvoker', () => {
  it('resolves with the JSON result and gives each host its own work dir', async () => {
    const host = createInProcessHostInvoker({ operationSets: [acme], workDirRoot: root });

    const result = await host.run('host-7', {
      provider: 'acme',
      operation: 'echo',
      args: { text: 'x', times: 3 },
    });

    expect(result).toEqual({ echoed: 'xxx' });
    expect(seen.ctx?.workDir).toBe(join(root, 'host-7'));
    expect(seen.ctx?.jobId).toBe('in-process');
  });

  it('uses the call job id as the fencing token', async () => {
    const host = createInProcessHostInvoker({ operationSets: [acme], workDirRoot: root });

    await host.run('host-1', {
      provider: 'acme',
      operation: 'echo',
      args: { text: 'x', times: 1 },
      jobId: 'job-42',
    });

    expect(seen.ctx?.jobId).toBe('job-42');
  });

  it('rejects with HostOperationError carrying the host report', async () => {
    const host = createInProcessHostInvoker({ operationSets: [acme], workDirRoot: root });

    const error = await host
      .run('host-1', { provider: 'acme', operation: 'missing', args: {} })
      .catch((e) => e);

    expect(error).toBeInstanceOf(HostOperationError);
    expect((error as HostOperationError).hostError.code).toBe('ObjectNotFound');
  });
});

describe('runHostRequest: builds and the probe', () => {
  it('refuses a request made for another build, saying to upgrade the host', async () => {
    const result = await runHostRequest(request({ build: 'b'.repeat(64) }), {
      operationSets: [acme],
      workDir: root,
      build: 'a'.repeat(64),
    });
    expect(result).toMatchObject({ ok: false, error: { code: 'HostBuildMismatch', retryable: false } });
    expect(result.ok === false && result.error.message).toMatch(/upgrade the host/);
  });

  it('runs a request made for its own build, or one that names none', async () => {
    for (const build of ['a'.repeat(64), undefined]) {
      const result = await runHostRequest(request(build ? { build } : {}), {
        operationSets: [acme],
        workDir: root,
        build: 'a'.repeat(64),
      });
      expect(result.ok).toBe(true);
    }
  });

  it('answers the probe whatever build asks, with its build and prerequisites', async () => {
    const result = await runHostRequest(
      request({ provider: 'runtime', operation: 'probe', args: {}, build: 'b'.repeat(64) }),
      { operationSets: [acme], workDir: root, build: 'a'.repeat(64) },
    );
    expect(result).toMatchObject({
      ok: true,
      result: {
        build: 'a'.repeat(64),
        platform: process.platform,
        prerequisites: {
          node: { ok: true, version: process.versions.node },
          // This machine has qemu-utils (the test suite needs it).
          qemuImg: { ok: true, version: expect.stringMatching(/^\d+\.\d+/) },
          qemuNbd: { ok: true },
        },
        ready: true,
      },
    });
  });
});

describe('runHostRequest: a request delivered twice runs once', () => {
  const counted: HostOperationSet = {
    provider: 'acme',
    operations: {
      count: {
        args: z.object({ n: z.number() }),
        async run(args: { n: number }) {
          runs.push(args.n);
          await new Promise((r) => setTimeout(r, 100));
          return { n: args.n, run: runs.length };
        },
      },
    },
  };
  const runs: number[] = [];
  beforeEach(() => {
    runs.length = 0;
  });
  const deliver = (overrides: Partial<HostRequest> = {}) =>
    runHostRequest(request({ operation: 'count', args: { n: 7 }, ...overrides }), {
      operationSets: [counted],
      workDir: join(root, 'work'),
    });

  it('answers a repeat from the journal without running the operation again', async () => {
    const first = await deliver();
    const again = await deliver();
    expect(first).toEqual({ type: 'result', ok: true, result: { n: 7, run: 1 } });
    expect(again).toEqual(first);
    expect(runs).toEqual([7]);
  });

  it('a second delivery while the first runs waits for its result', async () => {
    const [a, b] = await Promise.all([deliver(), deliver()]);
    expect(a).toEqual(b);
    expect(runs).toEqual([7]);
  });

  it('a new request id runs again; a reused id with other arguments is refused', async () => {
    await deliver();
    await deliver({ requestId: 'req-2' });
    expect(runs).toEqual([7, 7]);
    const reused = await deliver({ args: { n: 8 } });
    expect(reused).toMatchObject({ ok: false, error: { code: 'InvalidRequest' } });
    expect(runs).toEqual([7, 7]);
  });
});
