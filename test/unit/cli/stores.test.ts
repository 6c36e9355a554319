import { FakeApi, job, runCli, store, UUID } from './fake-api.js';

const GiB = 2 ** 30;

describe('strata stores', () => {
  let api: FakeApi;
  beforeEach(async () => {
    api = await new FakeApi().start();
  });
  afterEach(() => api.stop());

  describe('list', () => {
    it('sends the filters and renders sizes, scope and allocation', async () => {
      api.on('GET', '/stores', {
        status: 200,
        body: {
          items: [
            store(),
            store({
              id: 'st-2',
              name: 'images',
              provider: 's3',
              role: 'image',
              scope: { type: 'zone', zoneId: 'zone-1' },
              capacityBytes: 0,
              allocatedBytes: 0,
              usedBytes: 512,
              tags: [],
            }),
          ],
        },
      });

      const result = await runCli(
        ['stores', 'list', '--zone', 'zone-1', '--role', 'primary', '--status', 'Up', '--provider', 'nfs'],
        { api },
      );

      expect(result.code).toBe(0);
      expect(api.last().query).toEqual({ zoneId: 'zone-1', role: 'primary', status: 'Up', provider: 'nfs' });
      const [header, first, second] = result.stdout.trimEnd().split('\n');
      expect(header).toMatch(
        /^ID\s+NAME\s+PROVIDER\s+ROLE\s+SCOPE\s+STATUS\s+CAPACITY\s+ALLOCATED\s+USED\s+TAGS$/,
      );
      expect(first).toMatch(/cluster zone-1\/cl-1\s+Up\s+100\.0 GiB\s+20\.0 GiB 20%\s+5\.0 GiB\s+ssd$/);
      expect(second).toMatch(/zone zone-1\s+Up\s+0 B\s+0 B -\s+512 B\s+-$/);
      // Right-aligned sizes end in the same column.
      expect(first!.indexOf('100.0 GiB') + '100.0 GiB'.length).toBe(second!.indexOf('0 B') + '0 B'.length);
    });

    it('refuses an unknown role', async () => {
      const result = await runCli(['stores', 'list', '--role', 'secondary'], { api });

      expect(result.code).toBe(2);
      expect(result.stderr).toContain("--role: 'secondary' is not one of primary, image");
    });
  });

  it('get shows capacity against the overprovisioned limit and masks secret details', async () => {
    api.on('GET', '/stores/st-1', {
      status: 200,
      body: store({ details: { bucket: 'b', secretKey: 'hunter2' }, statusReason: 'mount failed' }),
    });

    const result = await runCli(['stores', 'get', 'st-1'], { api });

    expect(result.code).toBe(0);
    expect(result.stdout).toMatch(/^Overprovisioning\s+×2 \(allocation limit 200\.0 GiB\)$/m);
    expect(result.stdout).toMatch(/^Allocated\s+20\.0 GiB \(10% of limit\)$/m);
    expect(result.stdout).toMatch(/^Reason\s+mount failed$/m);
    expect(result.stdout).toContain('secretKey=****');
    expect(result.stdout).not.toContain('hunter2');
  });

  describe('add', () => {
    const args = [
      'stores',
      'add',
      '--name',
      'nfs-1',
      '--provider',
      'nfs',
      '--role',
      'primary',
      '--zone',
      'zone-1',
      '--cluster',
      'cl-1',
      '--capacity',
      '100GiB',
      '--overprovisioning',
      '2',
      '--threshold',
      '90%',
      '--tag',
      'ssd',
      '--tag',
      'fast,ssd',
      '--detail',
      'server=10.0.0.5',
      '--detail',
      'path=/export/a=b',
    ];

    it('POSTs the store, then follows the job to success and shows the final store', async () => {
      api
        .on('POST', '/stores', {
          status: 202,
          body: { store: store({ status: 'Initializing' }), job: job() },
          headers: { location: '/jobs/job-1' },
        })
        .on(
          'GET',
          '/jobs/job-1',
          { status: 200, body: job({ state: 'running', progress: 40 }) },
          { status: 200, body: job({ state: 'succeeded', progress: 100 }) },
        )
        .on('GET', '/stores/st-1', { status: 200, body: store() });

      const result = await runCli(args, { api });

      expect(result.code).toBe(0);
      const post = api.requests[0]!;
      expect(post.method).toBe('POST');
      expect(post.path).toBe('/stores');
      expect(post.headers['idempotency-key']).toMatch(UUID);
      expect(post.body).toEqual({
        name: 'nfs-1',
        provider: 'nfs',
        role: 'primary',
        scope: { type: 'cluster', zoneId: 'zone-1', clusterId: 'cl-1' },
        capacityBytes: 100 * GiB,
        overprovisioning: 2,
        disableThreshold: 0.9,
        tags: ['ssd', 'fast'],
        details: { server: '10.0.0.5', path: '/export/a=b' },
      });
      expect(api.requests.map((r) => `${r.method} ${r.path}`)).toEqual([
        'POST /stores',
        'GET /jobs/job-1',
        'GET /jobs/job-1',
        'GET /stores/st-1',
      ]);
      expect(result.stdout).toBe('Added store nfs-1 (st-1), status Up.\n');
      // Not a terminal: one plain progress line per change, on stderr.
      expect(result.stderr).toBe('job job-1 pending\njob job-1 running 40%\njob job-1 succeeded\n');
    });

    it('returns at once with --no-wait, printing the job id', async () => {
      api.on('POST', '/stores', {
        status: 202,
        body: { store: store({ status: 'Initializing' }), job: job() },
      });

      const quiet = await runCli([...args, '--no-wait', '-q'], { api });
      const json = await runCli([...args, '--no-wait', '--json'], { api });

      expect(quiet).toMatchObject({ code: 0, stdout: 'job-1\n', stderr: '' });
      expect(JSON.parse(json.stdout)).toMatchObject({ job: { id: 'job-1' }, store: { id: 'st-1' } });
      expect(api.requests.every((r) => r.method === 'POST')).toBe(true);
      // A fresh key per invocation.
      const [first, second] = api.requests.map((r) => r.headers['idempotency-key']);
      expect(first).not.toBe(second);
    });

    it('exits 1 with the job error when the job fails, and still prints JSON for scripts', async () => {
      api
        .on('POST', '/stores', {
          status: 202,
          body: { store: store({ status: 'Initializing' }), job: job() },
        })
        .on('GET', '/jobs/job-1', {
          status: 200,
          body: job({
            state: 'failed',
            progress: 30,
            error: { code: 'MOUNT_FAILED', message: 'mount.nfs: access denied' },
          }),
        })
        .on('GET', '/stores/st-1', { status: 200, body: store({ status: 'Error' }) });

      const result = await runCli([...args, '--json'], { api });

      expect(result.code).toBe(1);
      expect(result.stderr).toContain('job job-1 (store.add) failed: MOUNT_FAILED: mount.nfs: access denied');
      expect(JSON.parse(result.stdout)).toMatchObject({
        job: { state: 'failed' },
        store: { status: 'Error' },
      });
    });

    it('infers host scope from --host', async () => {
      api.on('POST', '/stores', { status: 202, body: { store: store(), job: job() } });

      await runCli(
        [
          'stores',
          'add',
          '--name',
          'l',
          '--provider',
          'local',
          '--role',
          'primary',
          '--zone',
          'z',
          '--host',
          'h-1',
          '--no-wait',
        ],
        { api },
      );

      expect(api.last().body).toMatchObject({
        scope: { type: 'host', zoneId: 'z', hostId: 'h-1' },
        details: {},
      });
    });

    it.each([
      [['--scope', 'cluster'], '--scope cluster needs --cluster'],
      [['--scope', 'zone', '--cluster', 'c'], 'do not apply to a zone-wide store'],
      [['--capacity', '10 bananas'], "--capacity: '10 bananas' is not a size"],
      [['--threshold', '90'], "--threshold: '90' is not a fraction"],
      [['--overprovisioning', '-1'], '--overprovisioning'],
      [['--detail', 'novalue'], '--detail expects key=value'],
      [['--detail', 'a=1', '--detail', 'a=2'], '--detail a is given twice'],
      [['--role', 'backup'], "'backup' is not one of primary, image"],
      [['--bogus'], "Unknown option '--bogus'"],
      [['--timeout', 'later'], "--timeout: 'later' is not a duration"],
    ])('rejects %j with a usage error', async (extra, message) => {
      const base = ['stores', 'add', '--name', 'n', '--provider', 'nfs', '--role', 'primary', '--zone', 'z'];
      const withoutRole = extra.includes('--role') ? base.filter((_, i) => i !== 6 && i !== 7) : base;

      const result = await runCli([...withoutRole, ...extra], { api });

      expect(result.code).toBe(2);
      expect(result.stderr).toContain(message);
      expect(api.requests).toHaveLength(0);
    });
  });

  describe('update', () => {
    it('PATCHes only the fields given', async () => {
      api.on('PATCH', '/stores/st-1', { status: 200, body: store({ name: 'nfs-a' }) });

      const result = await runCli(
        [
          'stores',
          'update',
          'st-1',
          '--name',
          'nfs-a',
          '--capacity',
          '2T',
          '--threshold',
          '0.85',
          '--tag',
          'a,b',
        ],
        { api },
      );

      expect(result.code).toBe(0);
      expect(api.last().body).toEqual({
        name: 'nfs-a',
        capacityBytes: 2 * 2 ** 40,
        disableThreshold: 0.85,
        tags: ['a', 'b'],
      });
      expect(api.last().headers['idempotency-key']).toMatch(UUID);
      expect(result.stdout).toBe('Updated store nfs-a (st-1).\n');
    });

    it('clears tags with --clear-tags', async () => {
      api.on('PATCH', '/stores/st-1', { status: 200, body: store({ tags: [] }) });

      await runCli(['stores', 'update', 'st-1', '--clear-tags'], { api });

      expect(api.last().body).toEqual({ tags: [] });
    });

    it('refuses an update with nothing to change', async () => {
      const result = await runCli(['stores', 'update', 'st-1'], { api });

      expect(result.code).toBe(2);
      expect(result.stderr).toContain('nothing to update');
    });
  });

  it.each([
    ['enable', 'Up'],
    ['disable', 'Disabled'],
  ])('%s PATCHes the status', async (verb, status) => {
    api.on('PATCH', '/stores/st-1', { status: 200, body: store({ status }) });

    const result = await runCli(['stores', verb, 'st-1'], { api });

    expect(api.last()).toMatchObject({ method: 'PATCH', path: '/stores/st-1', body: { status } });
    expect(result.stdout).toBe(`Store nfs-1 (st-1) is now ${status}.\n`);
  });

  it.each([
    ['maintain', 'POST', 'Maintenance'],
    ['cancel-maintenance', 'DELETE', 'Up'],
  ])('%s sends %s /stores/{id}/maintenance and waits for the job', async (verb, method, finalStatus) => {
    const kind = verb === 'maintain' ? 'store.maintain' : 'store.cancelMaintenance';
    api
      .on(method, '/stores/st-1/maintenance', {
        status: 202,
        body: { store: store({ status: 'PrepareForMaintenance' }), job: job({ id: 'job-9', kind }) },
      })
      .on('GET', '/jobs/job-9', {
        status: 200,
        body: job({ id: 'job-9', kind, state: 'succeeded', progress: 100 }),
      })
      .on('GET', '/stores/st-1', { status: 200, body: store({ status: finalStatus }) });

    const result = await runCli(['stores', verb, 'st-1'], { api });

    expect(result.code).toBe(0);
    expect(api.requests[0]).toMatchObject({ method, path: '/stores/st-1/maintenance' });
    expect(api.requests[0]!.headers['idempotency-key']).toMatch(UUID);
    expect(result.stdout).toBe(`Store nfs-1 (st-1) is now ${finalStatus}.\n`);
  });

  it('delete DELETEs the store', async () => {
    api.on('DELETE', '/stores/st-1', { status: 204 });

    const result = await runCli(['stores', 'delete', 'st-1'], { api });

    expect(result).toMatchObject({ code: 0, stdout: 'Deleted store st-1.\n' });
    expect(api.last().headers['idempotency-key']).toMatch(UUID);
  });

  it('delete of a store that holds objects shows the conflict and where to look', async () => {
    api.on('DELETE', '/stores/st-1', {
      status: 409,
      body: { error: { code: 'STORE_NOT_EMPTY', message: 'store st-1 still holds 3 objects' } },
    });

    const result = await runCli(['stores', 'delete', 'st-1'], { api });

    expect(result.code).toBe(1);
    expect(result.stderr).toBe(
      'Error: store st-1 still holds 3 objects\n' +
        '  code:  STORE_NOT_EMPTY (HTTP 409)\n' +
        'Hint: see what it still holds with: strata stores objects st-1\n',
    );
  });

  describe('objects', () => {
    const OBJECTS = [
      {
        path: 'volumes/v-1.qcow2',
        sizeBytes: 10 * GiB,
        modifiedAt: '2025-06-01T09:00:00.000Z',
        owner: { type: 'Volume', id: 'v-1' },
      },
      { path: 'orphan.raw', sizeBytes: 1536 },
    ];
    const inventoryJob = (result: Record<string, unknown> = {}) =>
      job({
        kind: 'store.inventory',
        target: { type: 'store', id: 'st-1' },
        state: 'succeeded',
        progress: 100,
        result: { storeId: 'st-1', total: 2, owned: 1, truncated: false, objects: OBJECTS, ...result },
      });

    it('POSTs an inventory, follows the job and lists paths, sizes and owners', async () => {
      api.acceptJob('POST', '/stores/st-1/inventory', inventoryJob());

      const result = await runCli(['stores', 'objects', 'st-1'], { api });

      expect(result.code).toBe(0);
      expect(api.requests[0]).toMatchObject({ method: 'POST', path: '/stores/st-1/inventory', rawBody: '' });
      expect(api.requests[0]!.headers['idempotency-key']).toMatch(UUID);
      expect(api.calls()).toEqual(['POST /stores/st-1/inventory', 'GET /jobs/job-1']);
      const lines = result.stdout.trimEnd().split('\n');
      expect(lines).toHaveLength(3);
      expect(lines[0]).toMatch(/^PATH\s+SIZE\s+MODIFIED\s+OWNER$/);
      expect(lines[1]).toMatch(/^volumes\/v-1\.qcow2\s+10\.0 GiB\s+3h ago\s+Volume v-1$/);
      expect(lines[2]).toMatch(/^orphan\.raw\s+1\.5 KiB\s+-\s+-$/);
      expect(result.stderr).toBe('job job-1 pending\njob job-1 succeeded\n');
    });

    it('says how much it shows when the API stopped at its limit', async () => {
      api.acceptJob(
        'POST',
        '/stores/st-1/inventory',
        inventoryJob({ total: 1532, owned: 1200, truncated: true }),
      );

      const result = await runCli(['stores', 'objects', 'st-1'], { api });

      expect(result.code).toBe(0);
      const lines = result.stdout.trimEnd().split('\n');
      expect(lines).toHaveLength(4);
      expect(lines[3]).toBe('2 of 1532 objects (truncated)');
    });

    it('--json prints the job result; -q the paths only', async () => {
      api.acceptJob('POST', '/stores/st-1/inventory', inventoryJob({ total: 1532, truncated: true }));

      const json = await runCli(['stores', 'objects', 'st-1', '--json'], { api });
      const quiet = await runCli(['stores', 'objects', 'st-1', '-q'], { api });

      expect(JSON.parse(json.stdout)).toEqual({
        storeId: 'st-1',
        total: 1532,
        owned: 1,
        truncated: true,
        objects: OBJECTS,
      });
      expect(quiet).toMatchObject({ code: 0, stdout: 'volumes/v-1.qcow2\norphan.raw\n', stderr: '' });
    });

    it('says so when the store holds nothing', async () => {
      api.acceptJob('POST', '/stores/st-1/inventory', inventoryJob({ total: 0, owned: 0, objects: [] }));

      const result = await runCli(['stores', 'objects', 'st-1'], { api });

      expect(result).toMatchObject({ code: 0, stdout: '' });
      expect(result.stderr).toContain('No objects found.\n');
    });

    it('--no-wait prints the job and does not poll', async () => {
      api.acceptJob('POST', '/stores/st-1/inventory', inventoryJob());

      const result = await runCli(['stores', 'objects', 'st-1', '--no-wait'], { api });

      expect(result).toMatchObject({ code: 0, stdout: 'Inventory of store st-1: job job-1 pending.\n' });
      expect(api.calls()).toEqual(['POST /stores/st-1/inventory']);
    });

    it('exits 1 with the job error when the inventory fails; --json prints the failed job', async () => {
      const failedJob = job({
        kind: 'store.inventory',
        target: { type: 'store', id: 'st-1' },
        state: 'failed',
        error: { code: 'StoreInventoryFailed', message: 'mount of 10.0.0.5:/export/primary timed out' },
      });
      api.acceptJob('POST', '/stores/st-1/inventory', failedJob);

      const human = await runCli(['stores', 'objects', 'st-1'], { api });
      const json = await runCli(['stores', 'objects', 'st-1', '--json'], { api });

      expect(human.code).toBe(1);
      expect(human.stderr).toContain(
        'Error: job job-1 (store.inventory) failed: StoreInventoryFailed: mount of 10.0.0.5:/export/primary timed out\n',
      );
      expect(human.stdout).toBe('');
      expect(json.code).toBe(1);
      expect(JSON.parse(json.stdout)).toEqual({ job: failedJob });
    });

    it('no longer takes paging options', async () => {
      const result = await runCli(['stores', 'objects', 'st-1', '--all'], { api });

      expect(result.code).toBe(2);
      expect(api.requests).toHaveLength(0);
    });
  });
});
