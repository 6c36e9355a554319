import { spawn } from 'node:child_process';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { encodeHostRequest, type HostEvent, type HostRequest } from '../../../drivers/sdk/host-protocol.js';

const repoRoot = resolve(__dirname, '../../..');
let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'strata-host-main-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function runHostMain(
  args: string[],
  stdin?: string,
): Promise<{ code: number | null; events: HostEvent[]; stderr: string }> {
  return new Promise((done, fail) => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'drivers/host-main.ts', ...args], {
      cwd: repoRoot,
      env: { ...process.env, AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true' },
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
