import { FakeApi, host, runCli, UUID } from './fake-api.js';

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
          items: [host(), host({ id: 'h-22', name: 'kvm-0002', status: 'Disabled', attachedStoreIds: [] })],
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
      expect(lines).toHaveLength(3);
      expect(lines[0]).toMatch(
        /^ID\s+NAME\s+ZONE\s+CLUSTER\s+INSTANCE\s+HYPERVISOR\s+STATUS\s+STORES\s+AGE$/,
      );
      // Aligned: every column starts at the same offset on every line.
      const statusColumn = lines[0]!.indexOf('STATUS');
      expect(lines[1]!.slice(statusColumn, statusColumn + 2)).toBe('Up');
      expect(lines[2]!.slice(statusColumn, statusColumn + 8)).toBe('Disabled');
      expect(lines[1]).toContain('5m ago');
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

  it('get shows one host', async () => {
    api.on('GET', '/hosts/h-1', { status: 200, body: host() });

    const result = await runCli(['hosts', 'get', 'h-1'], { api });

    expect(result.code).toBe(0);
    expect(result.stdout).toMatch(/^Instance\s+mi-0123456789abcdef0$/m);
    expect(result.stdout).toMatch(/^Stores\s+st-1, st-2$/m);
  });

  it('add POSTs the host with an Idempotency-Key', async () => {
    api.on('POST', '/hosts', { status: 201, body: host() });

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
