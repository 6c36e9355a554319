import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { encodeHostRequest, type HostEvent, type HostRequest } from '../../../drivers/sdk/host-protocol.js';

const repoRoot = resolve(__dirname, '../../..');
let dir: string;
let config: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'strata-host-main-'));
  // The host's own configuration: the temp dir is its one storage root.
  config = join(dir, 'host.json');
  await writeFile(config, JSON.stringify({ storageRoots: [{ path: dir, kind: 'directory' }] }));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function runHostMain(
  args: string[],
  stdin?: string,
  env: Record<string, string> = { STRATA_HOST_CONFIG: config },
): Promise<{ code: number | null; events: HostEvent[]; stderr: string }> {
  return new Promise((done, fail) => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'drivers/host-main.ts', ...args], {
      cwd: repoRoot,
      env: { ...process.env, AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true', ...env },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => {
      stdout += c.toString();
    });
    child.stderr.on('data', (c: Buffer) => {
      stderr += c.toString();
    });
    child.on('error', fail);
    child.on('close', (code) => {
      const lines = stdout.split('\n').filter((l) => l !== '');
      done({ code, events: lines.map((l) => JSON.parse(l) as HostEvent), stderr });
    });
    child.stdin.end(stdin ?? '');
  });
}

let seq = 0;
/** Each request is a new one (a repeated request id is answered from the host's journal). */
const request = (overrides: Partial<HostRequest> = {}): HostRequest => ({
  version: 1,
  requestId: `req-${++seq}`,
  jobId: 'job-1',
  hostId: 'host-1',
  provider: 'nfs',
  operation: 'checkMount',
  args: { mountPath: dir },
  deadlineSeconds: 30,
  ...overrides,
});

describe('host-main (child process)', () => {
  it('runs a base64 request, prints one NDJSON result line and exits 0', async () => {
    const { code, events, stderr } = await runHostMain([
      '--request-b64',
      encodeHostRequest(request()),
      '--work-dir',
      join(dir, 'work'),
    ]);

    expect(code).toBe(0);
    expect(events).toHaveLength(1);
    expect(events[0]).toMatchObject({ type: 'result', ok: true, result: { mountPath: dir } });
    expect(stderr).toMatch(/"message":"host operation done"/);
    // The work dir holds only the request journal.
    expect(await readdir(join(dir, 'work'))).toEqual(['requests']);
    expect((await readdir(dir)).filter((f) => f.startsWith('.strata-probe'))).toEqual([]);
  }, 30_000);

  it('streams progress lines before the result of a copy', async () => {
    const create = request({
      operation: 'create',
      args: { mountPath: dir, path: 'share/a.qcow2', sizeBytes: 1 << 20 },
    });
    const created = await runHostMain([
      '--request-b64',
      encodeHostRequest(create),
      '--work-dir',
      join(dir, 'work'),
    ]);
    expect(created.code).toBe(0);
    const copy = request({
      operation: 'copy',
      args: {
        src: { mountPath: dir, path: 'share/a.qcow2', format: 'qcow2' },
        dst: { mountPath: dir, path: 'b.qcow2', format: 'qcow2' },
      },
    });

    const { code, events } = await runHostMain([
      '--request-b64',
      encodeHostRequest(copy),
      '--work-dir',
      join(dir, 'work'),
    ]);

    expect(code).toBe(0);
    expect(events.at(-1)).toMatchObject({ type: 'result', ok: true });
    expect(events.length).toBeGreaterThan(1);
    expect(events.slice(0, -1).every((e) => e.type === 'progress')).toBe(true);
    expect(events.filter((e) => e.type === 'result')).toHaveLength(1);
  }, 30_000);

  it('reads a JSON request from stdin when --request-b64 is absent', async () => {
    const { code, events } = await runHostMain(['--work-dir', join(dir, 'work')], JSON.stringify(request()));

    expect(code).toBe(0);
    expect(events).toEqual([expect.objectContaining({ type: 'result', ok: true })]);
  }, 30_000);

  it('exits 1 with the error when the operation fails', async () => {
    const missing = request({ args: { mountPath: join(dir, 'not-mounted') } });

    const { code, events } = await runHostMain([
      '--request-b64',
      encodeHostRequest(missing),
      '--work-dir',
      join(dir, 'work'),
    ]);

    expect(code).toBe(1);
    expect(events).toEqual([
      { type: 'result', ok: false, error: expect.objectContaining({ code: 'Unavailable', retryable: true }) },
    ]);
  }, 30_000);

  const probes = async (at: string) =>
    (await readdir(at).catch(() => [] as string[])).filter((f) => f.startsWith('.strata-probe'));

  it('refuses every storage operation without a configuration file, naming it, and writes nothing', async () => {
    const missing = join(dir, 'no-such-host.json');
    const { code, events } = await runHostMain(
      ['--request-b64', encodeHostRequest(request()), '--work-dir', join(dir, 'work')],
      undefined,
      { STRATA_HOST_CONFIG: missing },
    );

    expect(code).toBe(1);
    expect(events).toEqual([
      {
        type: 'result',
        ok: false,
        error: expect.objectContaining({ code: 'HostNotConfigured', retryable: false }),
      },
    ]);
    expect((events[0] as { error: { message: string } }).error.message).toContain(missing);
    expect(await probes(dir)).toEqual([]);
  }, 30_000);

  it('refuses an invalid configuration file (a root at /etc), saying where it is wrong', async () => {
    const bad = join(dir, 'bad-host.json');
    await writeFile(bad, JSON.stringify({ storageRoots: [{ path: '/etc', kind: 'directory' }] }));
    const { code, events } = await runHostMain([
      '--config',
      bad,
      '--request-b64',
      encodeHostRequest(request({ args: { mountPath: '/etc' } })),
      '--work-dir',
      join(dir, 'work'),
    ]);

    expect(code).toBe(1);
    const { error } = events[0] as { error: { code: string; message: string } };
    expect(error.code).toBe('HostNotConfigured');
    expect(error.message).toContain('storageRoots.0.path');
    expect(await probes('/etc')).toEqual([]);
  }, 30_000);

  it('takes --config over STRATA_HOST_CONFIG, and finds /etc/strata/host.json under STRATA_HOST_ROOT', async () => {
    const hostRoot = join(dir, 'host-root');
    await mkdir(join(hostRoot, 'etc', 'strata'), { recursive: true });
    await writeFile(
      join(hostRoot, 'etc', 'strata', 'host.json'),
      JSON.stringify({ storageRoots: [{ path: dir, kind: 'directory' }] }),
    );
    const args = ['--request-b64', encodeHostRequest(request()), '--work-dir', join(dir, 'work')];

    const flag = await runHostMain(['--config', config, ...args], undefined, {
      STRATA_HOST_CONFIG: join(dir, 'no-such-host.json'),
    });
    const rooted = await runHostMain(
      ['--request-b64', encodeHostRequest(request()), '--work-dir', join(dir, 'work')],
      undefined,
      { STRATA_HOST_ROOT: hostRoot },
    );

    expect(flag.code).toBe(0);
    expect(rooted.code).toBe(0);
  }, 30_000);

  it('refuses a mount path outside the configured roots (/etc) before writing anything', async () => {
    const { code, events } = await runHostMain([
      '--request-b64',
      encodeHostRequest(request({ args: { mountPath: '/etc' } })),
      '--work-dir',
      join(dir, 'work'),
    ]);

    expect(code).toBe(1);
    expect(events).toEqual([
      {
        type: 'result',
        ok: false,
        error: expect.objectContaining({ code: 'PathNotAllowed', retryable: false }),
      },
    ]);
    expect(await probes('/etc')).toEqual([]);
  }, 30_000);

  it.each([
    ['garbage instead of base64', ['--request-b64', '!!!', '--work-dir', '/tmp'], 'InvalidRequest'],
    ['no work dir', ['--request-b64', 'e30='], 'InvalidRequest'],
    ['an unknown flag', ['--shell', 'rm -rf /'], 'InvalidRequest'],
    [
      'an unknown operation',
      [
        '--request-b64',
        Buffer.from(JSON.stringify({ ...request(), operation: 'format' })).toString('base64'),
        '--work-dir',
        '/tmp',
      ],
      'UnknownOperation',
    ],
    [
      'bad arguments',
      [
        '--request-b64',
        Buffer.from(JSON.stringify({ ...request(), args: { mountPath: 'relative' } })).toString('base64'),
        '--work-dir',
        '/tmp',
      ],
      'InvalidArguments',
    ],
  ])(
    'exits 2 on %s',
    async (_label, args, errorCode) => {
      const { code, events } = await runHostMain(args as string[]);

      expect(code).toBe(2);
      expect(events).toEqual([
        { type: 'result', ok: false, error: expect.objectContaining({ code: errorCode }) },
      ]);
    },
    30_000,
  );
});
