import { FakeApi, host, job, runCli, UUID } from './fake-api.js';

const BUILD = '3f9c2a71be04d5e8a6c1';

function runtime(overrides: Record<string, unknown> = {}) {
  return {
    build: BUILD,
    platform: 'linux',
    arch: 'x64',
    prerequisites: {
      node: { ok: true, version: '20.11.1' },
      qemuImg: { ok: true, version: '8.2.2' },
      qemuNbd: { ok: true, version: '8.2.2' },
    },
    ready: true,
    current: true,
    checkedAt: '2025-06-01T11:58:00.000Z',
    ...overrides,
  };
}

const NOT_READY = {
  node: { ok: true, version: '20.11.1' },
  qemuImg: { ok: true, version: '8.2.2' },
  qemuNbd: { ok: false, problem: 'qemu-nbd is not on PATH' },
};

const probeJob = (overrides: Record<string, unknown> = {}) =>
  job({ kind: 'host.probe', target: { type: 'host', id: 'h-1' }, ...overrides });

describe('strata hosts', () => {
  let api: FakeApi;
  beforeEach(async () => {
    api = await new FakeApi().start();
  });
  afterEach(() => api.stop());

  describe('list', () => {
    it('sends the filters as query parameters and renders an aligned table', async () => {
      api.on('GET', '/hosts', {
        status: 200,
        body: {
          items: [
            host({ runtime: runtime() }),
            host({ id: 'h-22', name: 'kvm-0002', status: 'Disabled', attachedStoreIds: [] }),
            host({ id: 'h-3', runtime: runtime({ build: 'old0build0000', current: false }) }),
          ],
        },
      });

      const result = await runCli(
        ['hosts', 'list', '--zone', 'zone-1', '--cluster', 'cl-1', '--status', 'Up'],
        {
          api,
        },
      );

      expect(result.code).toBe(0);
      expect(api.last()).toMatchObject({ method: 'GET', path: '/hosts' });
      expect(api.last().query).toEqual({ zoneId: 'zone-1', clusterId: 'cl-1', status: 'Up' });
      const lines = result.stdout.trimEnd().split('\n');
      expect(lines).toHaveLength(4);
      expect(lines[0]).toMatch(
        /^ID\s+NAME\s+ZONE\s+CLUSTER\s+INSTANCE\s+HYPERVISOR\s+STATUS\s+RUNTIME\s+STORES\s+AGE$/,
      );
      // Aligned: every column starts at the same offset on every line.
      const statusColumn = lines[0]!.indexOf('STATUS');
      expect(lines[1]!.slice(statusColumn, statusColumn + 2)).toBe('Up');
      expect(lines[2]!.slice(statusColumn, statusColumn + 8)).toBe('Disabled');
      expect(lines[1]).toContain('5m ago');
      // RUNTIME: the short build, "not probed" without a report, "upgrade!" on a build not current.
      const runtimeColumn = lines[0]!.indexOf('RUNTIME');
      const runtimeCell = (line: string) => line.slice(runtimeColumn).split(/\s{2,}/)[0];
      expect(lines.slice(1).map(runtimeCell)).toEqual(['3f9c2a71be04', 'not probed', 'upgrade!']);
    });

    it('prints the page as JSON with --json', async () => {
      api.on('GET', '/hosts', { status: 200, body: { items: [host()], cursor: 'c2' } });

      const result = await runCli(['hosts', 'list', '--json'], { api });

      expect(result.code).toBe(0);
      expect(JSON.parse(result.stdout)).toEqual({ items: [host()], cursor: 'c2' });
    });

    it('follows cursors with --all', async () => {
      api.on(
        'GET',
        '/hosts',
        { status: 200, body: { items: [host({ id: 'h-1' })], cursor: 'c2' } },
        { status: 200, body: { items: [host({ id: 'h-2' })] } },
      );

      const result = await runCli(['hosts', 'list', '--all', '--limit', '1', '-q'], { api });

      expect(result.stdout).toBe('h-1\nh-2\n');
      expect(api.requests.map((r) => r.query)).toEqual([{ limit: '1' }, { limit: '1', cursor: 'c2' }]);
    });

    it('points at the next page when the API returns a cursor', async () => {
      api.on('GET', '/hosts', { status: 200, body: { items: [host()], cursor: 'c2' } });

      const result = await runCli(['hosts', 'list'], { api });

      expect(result.stderr).toContain('More hosts: add --cursor c2 (or --all).');
    });

    it('says so when there are no hosts', async () => {
      api.on('GET', '/hosts', { status: 200, body: { items: [] } });

      const result = await runCli(['hosts', 'list'], { api });

      expect(result).toMatchObject({ code: 0, stdout: '' });
      expect(result.stderr).toBe('No hosts found.\n');
    });

    it('refuses an unknown status before calling the API', async () => {
      const result = await runCli(['hosts', 'list', '--status', 'up'], { api });

      expect(result.code).toBe(2);
      expect(result.stderr).toContain("--status: 'up' is not one of Up, Disabled, Down");
      expect(api.requests).toHaveLength(0);
    });
  });

  describe('get', () => {
    it('shows one host and its runtime: build, current, ready, platform and each prerequisite', async () => {
      api.on('GET', '/hosts/h-1', { status: 200, body: host({ runtime: runtime() }) });

      const result = await runCli(['hosts', 'get', 'h-1'], { api });

      expect(result.code).toBe(0);
      expect(result.stdout).toMatch(/^Instance\s+mi-0123456789abcdef0$/m);
      expect(result.stdout).toMatch(/^Stores\s+st-1, st-2$/m);
      expect(result.stdout).toContain(
        '\n\nRuntime:\n' +
          `Build     ${BUILD} (current)\n` +
          'Ready     yes\n' +
          'Platform  linux/x64\n' +
          'Checked   2m ago (2025-06-01T11:58:00.000Z)\n' +
          'Node.js   ok (20.11.1)\n' +
          'qemu-img  ok (8.2.2)\n' +
          'qemu-nbd  ok (8.2.2)\n',
      );
    });

    it('says when the build needs an upgrade and what is missing', async () => {
      api.on('GET', '/hosts/h-1', {
        status: 200,
        body: host({ runtime: runtime({ current: false, ready: false, prerequisites: NOT_READY }) }),
      });

      const result = await runCli(['hosts', 'get', 'h-1'], { api });

      expect(result.stdout).toMatch(new RegExp(`^Build\\s+${BUILD} \\(upgrade needed\\)$`, 'm'));
      expect(result.stdout).toMatch(/^Ready\s+no$/m);
      expect(result.stdout).toMatch(/^qemu-nbd\s+missing: qemu-nbd is not on PATH$/m);
    });

    it('says how to probe a host that has not been', async () => {
      api.on('GET', '/hosts/h-1', { status: 200, body: host() });

      const result = await runCli(['hosts', 'get', 'h-1'], { api });

      expect(result.stdout).toMatch(/\n\nRuntime:\nnot probed \(check it with: strata hosts probe h-1\)\n$/);
    });
  });

  it('add POSTs the host with an Idempotency-Key and points at its probe job', async () => {
    api.on('POST', '/hosts', {
      status: 201,
      body: { ...host(), attachJobIds: ['job-a1', 'job-a2'], probeJobId: 'job-p1' },
    });

    const result = await runCli(
      [
        'hosts',
        'add',
        '--name',
        'kvm-01',
        '--zone',
        'zone-1',
        '--cluster',
        'cl-1',
        '--instance-id',
        'mi-0123456789abcdef0',
      ],
      { api },
    );

    expect(result.code).toBe(0);
    const request = api.last();
    expect(request.method).toBe('POST');
    expect(request.path).toBe('/hosts');
    expect(request.headers['content-type']).toBe('application/json');
    expect(request.headers['idempotency-key']).toMatch(UUID);
    expect(request.body).toEqual({
      name: 'kvm-01',
      zoneId: 'zone-1',
      clusterId: 'cl-1',
      instanceId: 'mi-0123456789abcdef0',
    });
    expect(result.stdout).toBe('Added host kvm-01 (h-1), status Up.\n');
    expect(result.stderr).toBe(
      'Probing its runtime: job job-p1 (follow it with: strata jobs wait job-p1; then strata hosts get h-1)\n',
    );
  });

  it('add passes --hypervisor through and prints the id with --quiet', async () => {
    api.on('POST', '/hosts', { status: 201, body: host() });

    const result = await runCli(
      [
        'hosts',
        'add',
        '-q',
        '--name',
        'a',
        '--zone',
        'z',
        '--cluster',
        'c',
        '--instance-id',
        'i',
        '--hypervisor',
        'kvm',
      ],
      { api },
    );

    expect((api.last().body as { hypervisor: string }).hypervisor).toBe('kvm');
    expect(result.stdout).toBe('h-1\n');
  });

  describe('probe', () => {
    const result = (overrides: Record<string, unknown> = {}) => ({ hostId: 'h-1', ...runtime(overrides) });

    it('POSTs the probe, follows the job and prints the build and each prerequisite', async () => {
      api.acceptJob(
        'POST',
        '/hosts/h-1/probe',
        probeJob({ state: 'succeeded', progress: 100, result: result() }),
      );

      const output = await runCli(['hosts', 'probe', 'h-1'], { api });

      expect(output.code).toBe(0);
      expect(api.requests[0]).toMatchObject({ method: 'POST', path: '/hosts/h-1/probe', rawBody: '' });
      expect(api.requests[0]!.headers['idempotency-key']).toMatch(UUID);
      expect(api.calls()).toEqual(['POST /hosts/h-1/probe', 'GET /jobs/job-1']);
      expect(output.stdout).toBe(
        'Probed host h-1: ready.\n' +
          `Build     ${BUILD} (current)\n` +
          'Ready     yes\n' +
          'Platform  linux/x64\n' +
          'Checked   2m ago (2025-06-01T11:58:00.000Z)\n' +
          'Node.js   ok (20.11.1)\n' +
          'qemu-img  ok (8.2.2)\n' +
          'qemu-nbd  ok (8.2.2)\n',
      );
      expect(output.stderr).toBe('job job-1 pending\njob job-1 succeeded\n');
    });

    it('shows a build that needs an upgrade and a missing prerequisite with its problem', async () => {
      const report = result({
        current: false,
        ready: false,
        prerequisites: {
          node: { ok: false, version: '18.19.0', problem: 'Node.js 20+ is required' },
          qemuImg: { ok: true },
          qemuNbd: { ok: false, problem: 'qemu-nbd is not on PATH' },
        },
      });
      api.acceptJob(
        'POST',
        '/hosts/h-1/probe',
        probeJob({ state: 'succeeded', progress: 100, result: report }),
      );

      const output = await runCli(['hosts', 'probe', 'h-1'], { api });

      expect(output.code).toBe(0);
      const lines = output.stdout.trimEnd().split('\n');
      expect(lines[0]).toBe('Probed host h-1: not ready.');
      expect(lines[1]).toBe(`Build     ${BUILD} (upgrade needed)`);
      expect(lines[2]).toBe('Ready     no');
      expect(lines.slice(-3)).toEqual([
        'Node.js   missing (18.19.0): Node.js 20+ is required',
        'qemu-img  ok',
        'qemu-nbd  missing: qemu-nbd is not on PATH',
      ]);
    });

    it('--json prints the job result; -q the build', async () => {
      api.acceptJob(
        'POST',
        '/hosts/h-1/probe',
        probeJob({ state: 'succeeded', progress: 100, result: result() }),
      );

      const json = await runCli(['hosts', 'probe', 'h-1', '--json'], { api });
      const quiet = await runCli(['hosts', 'probe', 'h-1', '-q'], { api });

      expect(JSON.parse(json.stdout)).toEqual(result());
      expect(quiet).toMatchObject({ code: 0, stdout: `${BUILD}\n`, stderr: '' });
    });

    it('--no-wait prints the job and does not poll', async () => {
      api.acceptJob(
        'POST',
        '/hosts/h-1/probe',
        probeJob({ state: 'succeeded', progress: 100, result: result() }),
      );

      const output = await runCli(['hosts', 'probe', 'h-1', '--no-wait'], { api });

      expect(output).toMatchObject({ code: 0, stdout: 'Probing host h-1: job job-1 pending.\n' });
      expect(api.calls()).toEqual(['POST /hosts/h-1/probe']);
    });

    it('exits 1 with the job error when the probe fails', async () => {
      const failedJob = probeJob({
        state: 'failed',
        error: { code: 'HostProbeFailed', message: 'host h-1 did not answer within 120s' },
      });
      api.acceptJob('POST', '/hosts/h-1/probe', failedJob);

      const output = await runCli(['hosts', 'probe', 'h-1'], { api });
      const json = await runCli(['hosts', 'probe', 'h-1', '--json'], { api });

      expect(output.code).toBe(1);
      expect(output.stderr).toContain(
        'Error: job job-1 (host.probe) failed: HostProbeFailed: host h-1 did not answer within 120s\n',
      );
      expect(output.stdout).toBe('');
      expect(json.code).toBe(1);
      expect(JSON.parse(json.stdout)).toEqual({ job: failedJob });
    });

    it('shows the API error for an unknown host', async () => {
      api.on('POST', '/hosts/h-9/probe', {
        status: 404,
        body: { error: { code: 'NotFound', message: 'Host h-9 not found' } },
      });

      const output = await runCli(['hosts', 'probe', 'h-9'], { api });

      expect(output.code).toBe(1);
      expect(output.stderr).toContain('Error: Host h-9 not found\n');
    });

    it('is listed in the group help', async () => {
      const help = await runCli(['hosts', '--help']);

      expect(help.stdout).toMatch(/^ {2}probe\s+Ask a host's runtime for its build and prerequisites/m);
    });
  });

  it('add without a required flag is a usage error', async () => {
    const result = await runCli(['hosts', 'add', '--name', 'a', '--zone', 'z', '--cluster', 'c'], { api });

    expect(result.code).toBe(2);
    expect(result.stderr).toContain('--instance-id is required');
    expect(result.stderr).toContain('strata hosts add --help');
    expect(api.requests).toHaveLength(0);
  });

  it.each([
    ['disable', 'Disabled'],
    ['enable', 'Up'],
  ])('%s PATCHes the status', async (verb, status) => {
    api.on('PATCH', '/hosts/h-1', { status: 200, body: host({ status }) });

    const result = await runCli(['hosts', verb, 'h-1'], { api });

    expect(result.code).toBe(0);
    expect(api.last()).toMatchObject({ method: 'PATCH', path: '/hosts/h-1', body: { status } });
    expect(api.last().headers['idempotency-key']).toMatch(UUID);
    expect(result.stdout).toBe(`Host kvm-01 (h-1) is now ${status}.\n`);
  });

  it('remove DELETEs the host and reports it as JSON with --json', async () => {
    api.on('DELETE', '/hosts/h-1', { status: 204 });

    const result = await runCli(['hosts', 'remove', 'h-1', '--json'], { api });

    expect(result.code).toBe(0);
    expect(api.last()).toMatchObject({ method: 'DELETE', path: '/hosts/h-1', rawBody: '' });
    expect(api.last().headers['idempotency-key']).toMatch(UUID);
    expect(JSON.parse(result.stdout)).toEqual({ id: 'h-1', removed: true });
  });

  it('encodes ids that are not URL-safe', async () => {
    api.on('GET', '/hosts/a%2Fb', { status: 200, body: host({ id: 'a/b' }) });

    const result = await runCli(['hosts', 'get', 'a/b', '--json'], { api });

    expect(result.code).toBe(0);
    expect(api.last().path).toBe('/hosts/a%2Fb');
  });
});
