import { expectUsageError, FakeApi, job, runCli, UUID } from './fake-api.js';

const GiB = 2 ** 30;

function volume(overrides: Record<string, unknown> = {}) {
  return {
    id: 'vol-1',
    name: 'data-1',
    zoneId: 'zone-1',
    storeId: 'st-1',
    templateId: 'tpl-1',
    sizeBytes: 10 * GiB,
    format: 'qcow2',
    path: 'volumes/vol-1.qcow2',
    tags: ['ssd'],
    status: 'Ready',
    accessHostIds: [],
    version: 2,
    createdAt: '2025-06-01T11:00:00.000Z',
    updatedAt: '2025-06-01T11:55:00.000Z',
    ...overrides,
  };
}

const volumeJob = (overrides: Record<string, unknown> = {}) =>
  job({ kind: 'volume.create', target: { type: 'volume', id: 'vol-1' }, ...overrides });

describe('strata volumes', () => {
  let api: FakeApi;
  beforeEach(async () => {
    api = await new FakeApi().start();
  });
  afterEach(() => api.stop());

  describe('list', () => {
    it('sends the filters and renders id, name, zone, store, size, status and template', async () => {
      api.on('GET', '/volumes', {
        status: 200,
        body: {
          items: [
            volume(),
            volume({
              id: 'vol-2',
              name: 'blank',
              storeId: undefined,
              templateId: undefined,
              sizeBytes: 512 * 2 ** 20,
              status: 'Allocated',
            }),
          ],
        },
      });

      const result = await runCli(
        [
          'volumes',
          'list',
          '--zone',
          'zone-1',
          '--store',
          'st-1',
          '--status',
          'Ready',
          '--template',
          'tpl-1',
          '--limit',
          '5',
        ],
        { api },
      );

      expect(result.code).toBe(0);
      expect(api.last()).toMatchObject({ method: 'GET', path: '/volumes' });
      expect(api.last().query).toEqual({
        zoneId: 'zone-1',
        storeId: 'st-1',
        status: 'Ready',
        templateId: 'tpl-1',
        limit: '5',
      });
      const [header, first, second] = result.stdout.trimEnd().split('\n');
      expect(header).toMatch(/^ID\s+NAME\s+ZONE\s+STORE\s+SIZE\s+STATUS\s+TEMPLATE$/);
      expect(first).toMatch(/^vol-1\s+data-1\s+zone-1\s+st-1\s+10\.0 GiB\s+Ready\s+tpl-1$/);
      expect(second).toMatch(/^vol-2\s+blank\s+zone-1\s+-\s+512\.0 MiB\s+Allocated\s+-$/);
    });

    it('prints ids with -q, the page as sent with --json, and the cursor hint', async () => {
      const page = { items: [volume()], cursor: 'c-2' };
      api.on('GET', '/volumes', { status: 200, body: page });

      const quiet = await runCli(['volumes', 'list', '-q'], { api });
      const json = await runCli(['volumes', 'list', '--json'], { api });
      const human = await runCli(['volumes', 'list'], { api });

      expect(quiet.stdout).toBe('vol-1\n');
      expect(JSON.parse(json.stdout)).toEqual(page);
      expect(human.stderr).toContain('More volumes: add --cursor c-2 (or --all).');
    });

    it('refuses an unknown status and sends nothing', async () => {
      const result = await runCli(['volumes', 'list', '--status', 'Up'], { api });

      expect(result.code).toBe(2);
      expect(result.stderr).toContain("--status: 'Up' is not one of Allocated, Creating, Ready");
      expect(api.requests).toHaveLength(0);
    });
  });

  describe('get', () => {
    it('shows every field', async () => {
      api.on('GET', '/volumes/vol-1', {
        status: 200,
        body: volume({
          status: 'Error',
          statusReason: 'host h-1 lost the mount',
          accessHostIds: ['h-1', 'h-2'],
        }),
      });

      const result = await runCli(['volumes', 'get', 'vol-1'], { api });

      expect(result.code).toBe(0);
      expect(api.last()).toMatchObject({ method: 'GET', path: '/volumes/vol-1' });
      const lines = [
        /^ID\s+vol-1$/,
        /^Name\s+data-1$/,
        /^Zone\s+zone-1$/,
        /^Store\s+st-1$/,
        /^Template\s+tpl-1$/,
        /^Size\s+10\.0 GiB \(10737418240 bytes\)$/,
        /^Format\s+qcow2$/,
        /^Path\s+volumes\/vol-1\.qcow2$/,
        /^Tags\s+ssd$/,
        /^Status\s+Error$/,
        /^Reason\s+host h-1 lost the mount$/,
        /^Access\s+h-1, h-2$/,
        /^Version\s+2$/,
        /^Created\s+1h ago \(2025-06-01T11:00:00\.000Z\)$/,
        /^Updated\s+5m ago \(2025-06-01T11:55:00\.000Z\)$/,
      ];
      for (const line of lines) expect(result.stdout).toMatch(new RegExp(line.source, 'm'));
    });

    it('--json prints the volume as received; the id is escaped in the path', async () => {
      api.on('GET', '/volumes/a%2Fb', { status: 200, body: volume() });

      const result = await runCli(['volumes', 'get', 'a/b', '--json'], { api });

      expect(JSON.parse(result.stdout)).toEqual(volume());
      expect(api.last().path).toBe('/volumes/a%2Fb');
    });

    it('a missing volume exits 1 with the API message', async () => {
      api.on('GET', '/volumes/vol-9', {
        status: 404,
        body: { error: { code: 'NotFound', message: 'volume vol-9 does not exist' } },
      });

      const result = await runCli(['volumes', 'get', 'vol-9'], { api });

      expect(result.code).toBe(1);
      expect(result.stderr).toBe('Error: volume vol-9 does not exist\n  code:  NotFound (HTTP 404)\n');
    });
  });

  describe('create', () => {
    it('POSTs a blank volume, follows the job with progress and shows the result', async () => {
      api
        .on('POST', '/volumes', {
          status: 202,
          body: { volume: volume({ status: 'Allocated', templateId: undefined }), job: volumeJob() },
          headers: { location: '/jobs/job-1' },
        })
        .on(
          'GET',
          '/jobs/job-1',
          {
            status: 200,
            body: volumeJob({ state: 'running', progress: 50, progressDetail: { step: 'create file' } }),
          },
          { status: 200, body: volumeJob({ state: 'succeeded', progress: 100 }) },
        )
        .on('GET', '/volumes/vol-1', { status: 200, body: volume({ templateId: undefined }) });

      const result = await runCli(
        ['volumes', 'create', '--name', 'data-1', '--zone', 'zone-1', '--size', '10GiB'],
        { api },
      );

      expect(result.code).toBe(0);
      const post = api.requests[0]!;
      expect(post).toMatchObject({ method: 'POST', path: '/volumes', query: {} });
      expect(post.headers['idempotency-key']).toMatch(UUID);
      expect(post.body).toEqual({ name: 'data-1', zoneId: 'zone-1', sizeBytes: 10 * GiB });
      expect(api.requests.map((r) => `${r.method} ${r.path}`)).toEqual([
        'POST /volumes',
        'GET /jobs/job-1',
        'GET /jobs/job-1',
        'GET /volumes/vol-1',
      ]);
      expect(result.stderr).toBe(
        'job job-1 pending\njob job-1 running 50% (create file)\njob job-1 succeeded\n',
      );
      expect(result.stdout).toBe('Created volume data-1 (vol-1), 10.0 GiB on store st-1, status Ready.\n');
    });

    it('sends template, store, cluster, tags and full-copy mode', async () => {
      api
        .on('POST', '/volumes', { status: 202, body: { volume: volume(), job: volumeJob() } })
        .on('GET', '/jobs/job-1', { status: 200, body: volumeJob({ state: 'succeeded', progress: 100 }) })
        .on('GET', '/volumes/vol-1', { status: 200, body: volume() });

      const result = await runCli(
        [
          'volumes',
          'create',
          '--name',
          'web-1',
          '--zone',
          'zone-1',
          '--template',
          'tpl-1',
          '--store',
          'st-1',
          '--cluster',
          'cl-1',
          '--tag',
          'ssd,fast',
          '--tag',
          'ssd',
          '--full-copy',
          '-q',
        ],
        { api },
      );

      expect(result).toMatchObject({ code: 0, stdout: 'vol-1\n', stderr: '' });
      expect(api.requests[0]!.body).toEqual({
        name: 'web-1',
        zoneId: 'zone-1',
        templateId: 'tpl-1',
        storeId: 'st-1',
        clusterId: 'cl-1',
        tags: ['ssd', 'fast'],
        mode: 'full',
      });
    });

    it('sends --size with --template when given', async () => {
      api.on('POST', '/volumes', { status: 202, body: { volume: volume(), job: volumeJob() } });

      const result = await runCli(
        [
          'volumes',
          'create',
          '--name',
          'w',
          '--zone',
          'z',
          '--template',
          'tpl-1',
          '--size',
          '20G',
          '--no-wait',
        ],
        { api },
      );

      expect(result.code).toBe(0);
      expect(api.requests[0]!.body).toEqual({
        name: 'w',
        zoneId: 'z',
        templateId: 'tpl-1',
        sizeBytes: 20 * GiB,
      });
    });

    it('--no-wait prints the job and does not poll', async () => {
      api.on('POST', '/volumes', {
        status: 202,
        body: { volume: volume({ status: 'Allocated' }), job: volumeJob() },
      });

      const human = await runCli(
        ['volumes', 'create', '--name', 'd', '--zone', 'z', '--size', '1G', '--no-wait'],
        {
          api,
        },
      );
      const quiet = await runCli(
        ['volumes', 'create', '--name', 'd', '--zone', 'z', '--size', '1G', '--no-wait', '-q'],
        { api },
      );
      const json = await runCli(
        ['volumes', 'create', '--name', 'd', '--zone', 'z', '--size', '1G', '--no-wait', '--json'],
        { api },
      );

      expect(human.code).toBe(0);
      expect(human.stdout).toBe('Volume data-1 (vol-1): job job-1 pending.\n');
      expect(human.stderr).toBe('Follow it with: strata jobs wait job-1\n');
      expect(quiet.stdout).toBe('job-1\n');
      expect(JSON.parse(json.stdout)).toEqual({ volume: volume({ status: 'Allocated' }), job: volumeJob() });
      expect(api.requests.every((r) => r.method === 'POST')).toBe(true);
    });

    it('exits 1 with the job error when creation fails; --json still prints volume and job', async () => {
      const failed = volumeJob({
        state: 'failed',
        error: { code: 'InsufficientCapacity', message: 'st-1 filled up meanwhile' },
      });
      api
        .on('POST', '/volumes', { status: 202, body: { volume: volume(), job: volumeJob() } })
        .on('GET', '/jobs/job-1', { status: 200, body: failed })
        .on('GET', '/volumes/vol-1', { status: 200, body: volume({ status: 'Error' }) });

      const args = ['volumes', 'create', '--name', 'd', '--zone', 'z', '--size', '1G'];
      const human = await runCli(args, { api });
      const json = await runCli([...args, '--json'], { api });

      expect(human.code).toBe(1);
      expect(human.stderr).toContain(
        'Error: job job-1 (volume.create) failed: InsufficientCapacity: st-1 filled up meanwhile',
      );
      expect(human.stdout).toBe('');
      expect(json.code).toBe(1);
      expect(JSON.parse(json.stdout)).toEqual({ volume: volume({ status: 'Error' }), job: failed });
    });

    it('exits 3 when --timeout passes first', async () => {
      api
        .on('POST', '/volumes', { status: 202, body: { volume: volume(), job: volumeJob() } })
        .on('GET', '/jobs/job-1', { status: 200, body: volumeJob({ state: 'running', progress: 10 }) })
        .on('GET', '/volumes/vol-1', { status: 200, body: volume() });

      const result = await runCli(
        ['volumes', 'create', '--name', 'd', '--zone', 'z', '--size', '1G', '--timeout', '20ms'],
        { api },
      );

      expect(result.code).toBe(3);
      expect(result.stderr).toContain('gave up waiting for job job-1');
    });

    it.each([
      [['--name', 'd', '--zone', 'z'], 'give --size for a blank volume, or --template'],
      [['--name', 'd', '--zone', 'z', '--size', '0'], "--size: '0' is not a positive size"],
      [['--name', 'd', '--zone', 'z', '--size', 'big'], "--size: 'big' is not a size"],
      [
        ['--name', 'd', '--zone', 'z', '--size', '1G', '--full-copy'],
        '--full-copy applies only with --template',
      ],
      [['--zone', 'z', '--size', '1G'], '--name is required'],
      [['--name', 'd', '--size', '1G'], '--zone is required'],
      [
        ['--name', 'd', '--zone', 'z', '--size', '1G', '--timeout', 'soon'],
        "--timeout: 'soon' is not a duration",
      ],
      [['--name', 'd', '--zone', 'z', '--size', '1G', '--mode', 'full'], "Unknown option '--mode'"],
    ])('rejects %j with a usage error and sends nothing', async (extra, message) => {
      const result = await runCli(['volumes', 'create', ...extra], { api });

      expectUsageError(result, api, 'volumes create', message);
    });

    it('shows an API error with its field as the flag that sets it', async () => {
      api.on('POST', '/volumes', {
        status: 400,
        body: {
          error: {
            code: 'InvalidInput',
            message: "sizeBytes must be at least the template's virtual size (2147483648)",
            field: 'sizeBytes',
          },
        },
      });

      const result = await runCli(
        ['volumes', 'create', '--name', 'd', '--zone', 'z', '--template', 'tpl-1', '--size', '1G'],
        { api },
      );

      expect(result.code).toBe(1);
      expect(result.stderr).toBe(
        "Error: sizeBytes must be at least the template's virtual size (2147483648)\n" +
          '  field: sizeBytes (set with --size)\n' +
          '  code:  InvalidInput (HTTP 400)\n',
      );
    });

    it('shows the state of a template that is not Ready', async () => {
      api.on('POST', '/volumes', {
        status: 409,
        body: {
          error: {
            code: 'Conflict',
            message: 'template tpl-1 is not Ready',
            field: 'templateId',
            state: 'Downloading',
          },
        },
      });

      const result = await runCli(
        ['volumes', 'create', '--name', 'd', '--zone', 'z', '--template', 'tpl-1'],
        {
          api,
        },
      );

      expect(result.code).toBe(1);
      expect(result.stderr).toBe(
        'Error: template tpl-1 is not Ready\n' +
          '  field: templateId (set with --template)\n' +
          '  state: Downloading\n' +
          '  code:  Conflict (HTTP 409)\n',
      );
    });
  });

  describe('resize', () => {
    const resizeJob = volumeJob({ kind: 'volume.resize' });

    it('POSTs the new size and waits for the job', async () => {
      api
        .on('POST', '/volumes/vol-1/resize', {
          status: 202,
          body: { volume: volume({ status: 'Resizing' }), job: resizeJob },
        })
        .on('GET', '/jobs/job-1', { status: 200, body: { ...resizeJob, state: 'succeeded', progress: 100 } })
        .on('GET', '/volumes/vol-1', { status: 200, body: volume({ sizeBytes: 20 * GiB }) });

      const result = await runCli(['volumes', 'resize', 'vol-1', '--size', '20GiB'], { api });

      expect(result.code).toBe(0);
      const post = api.requests[0]!;
      expect(post).toMatchObject({
        method: 'POST',
        path: '/volumes/vol-1/resize',
        body: { sizeBytes: 20 * GiB },
      });
      expect(post.headers['idempotency-key']).toMatch(UUID);
      expect(result.stdout).toBe('Volume data-1 (vol-1) is now 20.0 GiB, status Ready.\n');
    });

    it('--allow-shrink sends allowShrink; --no-wait does not poll', async () => {
      api.on('POST', '/volumes/vol-1/resize', {
        status: 202,
        body: { volume: volume({ status: 'Resizing' }), job: resizeJob },
      });

      const result = await runCli(
        ['volumes', 'resize', 'vol-1', '--size', '5G', '--allow-shrink', '--no-wait', '-q'],
        { api },
      );

      expect(result).toMatchObject({ code: 0, stdout: 'job-1\n' });
      expect(api.requests).toHaveLength(1);
      expect(api.requests[0]!.body).toEqual({ sizeBytes: 5 * GiB, allowShrink: true });
    });

    it('exits 1 when the resize job fails', async () => {
      api
        .on('POST', '/volumes/vol-1/resize', { status: 202, body: { volume: volume(), job: resizeJob } })
        .on('GET', '/jobs/job-1', {
          status: 200,
          body: { ...resizeJob, state: 'failed', error: { code: 'HostUnavailable', message: 'no host' } },
        })
        .on('GET', '/volumes/vol-1', { status: 200, body: volume() });

      const result = await runCli(['volumes', 'resize', 'vol-1', '--size', '20G'], { api });

      expect(result.code).toBe(1);
      expect(result.stderr).toContain('job job-1 (volume.resize) failed: HostUnavailable: no host');
      expect(result.stdout).toBe('');
    });

    it('points at --allow-shrink when the API refuses a shrink', async () => {
      api.on('POST', '/volumes/vol-1/resize', {
        status: 400,
        body: {
          error: {
            code: 'InvalidInput',
            message: 'shrinking loses the data past the new end; pass allowShrink to do it anyway',
            field: 'sizeBytes',
          },
        },
      });

      const result = await runCli(['volumes', 'resize', 'vol-1', '--size', '1G'], { api });

      expect(result.code).toBe(1);
      expect(result.stderr).toBe(
        'Error: shrinking loses the data past the new end; pass allowShrink to do it anyway\n' +
          '  field: sizeBytes (set with --size)\n' +
          '  code:  InvalidInput (HTTP 400)\n' +
          'Hint: add --allow-shrink to shrink it anyway (the data past the new end is lost)\n',
      );
    });

    it('shows the state of a busy volume and how to find its job', async () => {
      api.on('POST', '/volumes/vol-1/resize', {
        status: 409,
        body: { error: { code: 'Conflict', message: 'volume vol-1 is Migrating', state: 'Migrating' } },
      });

      const result = await runCli(['volumes', 'resize', 'vol-1', '--size', '20G'], { api });

      expect(result.code).toBe(1);
      expect(result.stderr).toBe(
        'Error: volume vol-1 is Migrating\n' +
          '  state: Migrating\n' +
          '  code:  Conflict (HTTP 409)\n' +
          'Hint: volume vol-1 is Migrating; try again when its job ends ' +
          '(strata jobs list --target vol-1 --state running)\n',
      );
    });

    it.each([
      [['vol-1'], '--size is required'],
      [['vol-1', '--size=-1G'], "--size: '-1G' is not a size"],
      [['--size', '1G'], 'missing <id>'],
    ])('rejects %j with a usage error', async (extra, message) => {
      const result = await runCli(['volumes', 'resize', ...extra], { api });

      expect(result.code).toBe(2);
      expect(result.stderr).toContain(message);
      expect(api.requests).toHaveLength(0);
    });
  });

  describe('migrate', () => {
    const migrateJob = volumeJob({ kind: 'volume.migrate' });

    it('POSTs the target store and waits for the job', async () => {
      api
        .on('POST', '/volumes/vol-1/migrate', {
          status: 202,
          body: { volume: volume({ status: 'Migrating' }), job: migrateJob },
        })
        .on('GET', '/jobs/job-1', { status: 200, body: { ...migrateJob, state: 'succeeded', progress: 100 } })
        .on('GET', '/volumes/vol-1', { status: 200, body: volume({ storeId: 'st-2' }) });

      const result = await runCli(['volumes', 'migrate', 'vol-1', '--store', 'st-2'], { api });

      expect(result.code).toBe(0);
      const post = api.requests[0]!;
      expect(post).toMatchObject({
        method: 'POST',
        path: '/volumes/vol-1/migrate',
        body: { storeId: 'st-2' },
      });
      expect(post.headers['idempotency-key']).toMatch(UUID);
      expect(result.stdout).toBe('Volume data-1 (vol-1) is on store st-2, status Ready.\n');
    });

    it('exits 1 when the migration fails', async () => {
      api
        .on('POST', '/volumes/vol-1/migrate', { status: 202, body: { volume: volume(), job: migrateJob } })
        .on('GET', '/jobs/job-1', {
          status: 200,
          body: {
            ...migrateJob,
            state: 'failed',
            error: { code: 'CopyFailed', message: 'qemu-img convert: I/O error' },
          },
        })
        .on('GET', '/volumes/vol-1', { status: 200, body: volume() });

      const result = await runCli(['volumes', 'migrate', 'vol-1', '--store', 'st-2'], { api });

      expect(result.code).toBe(1);
      expect(result.stderr).toContain('failed: CopyFailed: qemu-img convert: I/O error');
    });

    it('requires --store', async () => {
      const result = await runCli(['volumes', 'migrate', 'vol-1'], { api });

      expect(result.code).toBe(2);
      expect(result.stderr).toContain('--store is required');
      expect(api.requests).toHaveLength(0);
    });
  });

  describe('delete', () => {
    const deleteJob = volumeJob({ kind: 'volume.delete' });

    it('DELETEs the volume and waits for the job', async () => {
      api
        .on('DELETE', '/volumes/vol-1', { status: 202, body: { job: deleteJob } })
        .on('GET', '/jobs/job-1', { status: 200, body: { ...deleteJob, state: 'succeeded', progress: 100 } });

      const result = await runCli(['volumes', 'delete', 'vol-1'], { api });

      expect(result).toMatchObject({ code: 0, stdout: 'Deleted volume vol-1.\n' });
      expect(api.requests[0]).toMatchObject({ method: 'DELETE', path: '/volumes/vol-1' });
      expect(api.requests[0]!.headers['idempotency-key']).toMatch(UUID);
      expect(api.requests.map((r) => `${r.method} ${r.path}`)).toEqual([
        'DELETE /volumes/vol-1',
        'GET /jobs/job-1',
      ]);
    });

    it('--no-wait prints the job; --json after waiting prints the final job', async () => {
      api
        .on('DELETE', '/volumes/vol-1', { status: 202, body: { job: deleteJob } })
        .on('GET', '/jobs/job-1', { status: 200, body: { ...deleteJob, state: 'succeeded', progress: 100 } });

      const noWait = await runCli(['volumes', 'delete', 'vol-1', '--no-wait'], { api });
      const json = await runCli(['volumes', 'delete', 'vol-1', '--json'], { api });

      expect(noWait.stdout).toBe('Deleting volume vol-1: job job-1 pending.\n');
      expect(JSON.parse(json.stdout)).toEqual({ job: { ...deleteJob, state: 'succeeded', progress: 100 } });
    });

    it('exits 1 when the delete job fails', async () => {
      api.on('DELETE', '/volumes/vol-1', { status: 202, body: { job: deleteJob } }).on('GET', '/jobs/job-1', {
        status: 200,
        body: { ...deleteJob, state: 'failed', error: { code: 'StoreUnavailable', message: 'st-1 is down' } },
      });

      const result = await runCli(['volumes', 'delete', 'vol-1'], { api });

      expect(result.code).toBe(1);
      expect(result.stderr).toContain('job job-1 (volume.delete) failed: StoreUnavailable: st-1 is down');
      expect(result.stdout).toBe('');
    });

    it('says to revoke access first when hosts still reach the volume', async () => {
      api.on('DELETE', '/volumes/vol-1', {
        status: 409,
        body: {
          error: {
            code: 'Conflict',
            message: 'volume vol-1 is still accessible to h-1; revoke first',
            state: 'Ready',
          },
        },
      });

      const result = await runCli(['volumes', 'delete', 'vol-1'], { api });

      expect(result.code).toBe(1);
      expect(result.stderr).toBe(
        'Error: volume vol-1 is still accessible to h-1; revoke first\n' +
          '  state: Ready\n' +
          '  code:  Conflict (HTTP 409)\n' +
          "Hint: revoke each host's access first: strata volumes access revoke vol-1 --host <hostId>\n",
      );
    });
  });

  describe('access', () => {
    const uri = 'nfs://10.0.0.5/export/primary/volumes/vol-1.qcow2';
    const grantJob = (result: Record<string, unknown> = {}) =>
      volumeJob({
        kind: 'volume.grantAccess',
        state: 'succeeded',
        progress: 100,
        result: { volumeId: 'vol-1', hostId: 'h-1', action: 'grant', uri, ...result },
      });
    const revokeJob = volumeJob({
      kind: 'volume.revokeAccess',
      state: 'succeeded',
      progress: 100,
      result: { volumeId: 'vol-1', hostId: 'h-1', action: 'revoke' },
    });

    it('grant POSTs the host, follows the job and prints how the host reaches the volume', async () => {
      api.acceptJob('POST', '/volumes/vol-1/access', grantJob());

      const human = await runCli(['volumes', 'access', 'grant', 'vol-1', '--host', 'h-1'], { api });

      expect(human.code).toBe(0);
      expect(api.requests[0]).toMatchObject({
        method: 'POST',
        path: '/volumes/vol-1/access',
        body: { hostId: 'h-1' },
      });
      expect(api.requests[0]!.headers['idempotency-key']).toMatch(UUID);
      expect(api.calls()).toEqual(['POST /volumes/vol-1/access', 'GET /jobs/job-1']);
      expect(human.stdout).toBe(`Host h-1 can reach volume vol-1 at ${uri}.\n`);
      expect(human.stderr).toBe('job job-1 pending\njob job-1 succeeded\n');
    });

    it('grant -q prints only the URI; --json the job result', async () => {
      api.acceptJob('POST', '/volumes/vol-1/access', grantJob());

      const quiet = await runCli(['volumes', 'access', 'grant', 'vol-1', '--host', 'h-1', '-q'], { api });
      const json = await runCli(['volumes', 'access', 'grant', 'vol-1', '--host', 'h-1', '--json'], { api });

      expect(quiet).toMatchObject({ code: 0, stdout: `${uri}\n`, stderr: '' });
      expect(JSON.parse(json.stdout)).toEqual({ volumeId: 'vol-1', hostId: 'h-1', action: 'grant', uri });
    });

    it('grant shows when the access expires', async () => {
      api.acceptJob(
        'POST',
        '/volumes/vol-1/access',
        grantJob({ uri: 'iscsi://t/1', expiresAt: '2025-06-01T13:00:00.000Z' }),
      );

      const result = await runCli(['volumes', 'access', 'grant', 'vol-1', '--host', 'h-1'], { api });

      expect(result.stdout).toBe(
        'Host h-1 can reach volume vol-1 at iscsi://t/1 (until 2025-06-01T13:00:00.000Z).\n',
      );
    });

    it('grant --no-wait prints the job and does not poll', async () => {
      api.acceptJob('POST', '/volumes/vol-1/access', grantJob());

      const result = await runCli(['volumes', 'access', 'grant', 'vol-1', '--host', 'h-1', '--no-wait'], {
        api,
      });

      expect(result).toMatchObject({
        code: 0,
        stdout: 'Granting host h-1 access to volume vol-1: job job-1 pending.\n',
      });
      expect(api.calls()).toEqual(['POST /volumes/vol-1/access']);
    });

    it('grant exits 1 with the job error when the job fails; --json prints the failed job', async () => {
      const failedJob = volumeJob({
        kind: 'volume.grantAccess',
        state: 'failed',
        error: { code: 'VolumeAccessFailed', message: 'host h-1 did not answer' },
      });
      api.acceptJob('POST', '/volumes/vol-1/access', failedJob);

      const human = await runCli(['volumes', 'access', 'grant', 'vol-1', '--host', 'h-1'], { api });
      const json = await runCli(['volumes', 'access', 'grant', 'vol-1', '--host', 'h-1', '--json'], { api });

      expect(human.code).toBe(1);
      expect(human.stderr).toContain(
        'Error: job job-1 (volume.grantAccess) failed: VolumeAccessFailed: host h-1 did not answer\n',
      );
      expect(human.stdout).toBe('');
      expect(json.code).toBe(1);
      expect(JSON.parse(json.stdout)).toEqual({ job: failedJob });
    });

    it('grant shows an unknown host as the --host flag', async () => {
      api.on('POST', '/volumes/vol-1/access', {
        status: 422,
        body: { error: { code: 'Unprocessable', message: 'host h-9 is not registered', field: 'hostId' } },
      });

      const result = await runCli(['volumes', 'access', 'grant', 'vol-1', '--host', 'h-9'], { api });

      expect(result.code).toBe(1);
      expect(result.stderr).toContain('  field: hostId (set with --host)\n');
    });

    it('revoke DELETEs the host access and follows the job', async () => {
      api.acceptJob('DELETE', '/volumes/vol-1/access/h-1', revokeJob);

      const result = await runCli(['volumes', 'access', 'revoke', 'vol-1', '--host', 'h-1'], { api });
      const json = await runCli(['volumes', 'access', 'revoke', 'vol-1', '--host', 'h-1', '--json'], { api });

      expect(result).toMatchObject({ code: 0, stdout: 'Revoked access of host h-1 to volume vol-1.\n' });
      expect(api.requests[0]).toMatchObject({ method: 'DELETE', path: '/volumes/vol-1/access/h-1' });
      expect(api.requests[0]!.headers['idempotency-key']).toMatch(UUID);
      expect(api.calls().slice(0, 2)).toEqual(['DELETE /volumes/vol-1/access/h-1', 'GET /jobs/job-1']);
      expect(JSON.parse(json.stdout)).toEqual({ job: revokeJob });
    });

    it('revoke --no-wait prints the job and does not poll', async () => {
      api.acceptJob('DELETE', '/volumes/vol-1/access/h-1', revokeJob);

      const result = await runCli(['volumes', 'access', 'revoke', 'vol-1', '--host', 'h-1', '--no-wait'], {
        api,
      });

      expect(result.stdout).toBe('Revoking access of host h-1 to volume vol-1: job job-1 pending.\n');
      expect(api.calls()).toEqual(['DELETE /volumes/vol-1/access/h-1']);
    });

    it('revoke exits 1 with the job error when the job fails', async () => {
      api.acceptJob(
        'DELETE',
        '/volumes/vol-1/access/h-1',
        volumeJob({
          kind: 'volume.revokeAccess',
          state: 'failed',
          error: { code: 'VolumeAccessFailed', message: 'export is busy' },
        }),
      );

      const result = await runCli(['volumes', 'access', 'revoke', 'vol-1', '--host', 'h-1'], { api });

      expect(result.code).toBe(1);
      expect(result.stderr).toContain(
        'Error: job job-1 (volume.revokeAccess) failed: VolumeAccessFailed: export is busy\n',
      );
      expect(result.stdout).toBe('');
    });

    it.each([
      ['grant', ['vol-1'], '--host is required'],
      ['revoke', ['vol-1'], '--host is required'],
      ['grant', ['--host', 'h-1'], 'missing <id>'],
    ])('%s %j is a usage error', async (verb, extra, message) => {
      const result = await runCli(['volumes', 'access', verb, ...extra], { api });

      expectUsageError(result, api, `volumes access ${verb}`, message);
    });

    it('an unknown access verb names the nested group and suggests the right one', async () => {
      const result = await runCli(['volumes', 'access', 'grnat', 'vol-1'], { api });

      expect(result.code).toBe(2);
      expect(result.stderr).toContain("unknown command 'volumes access grnat'. Did you mean 'grant'?");
    });

    it('`volumes access` alone lists grant and revoke', async () => {
      const result = await runCli(['volumes', 'access', '--help']);

      expect(result.code).toBe(0);
      expect(result.stdout).toMatch(/^Usage: strata volumes access <command>/);
      expect(result.stdout).toMatch(/^ {2}grant\s+Let a host reach a volume/m);
      expect(result.stdout).toMatch(/^ {2}revoke\s+Withdraw a host's access/m);
    });
  });

  it('the group is listed in the root help and its own help lists every command', async () => {
    const root = await runCli(['--help']);
    const group = await runCli(['volumes', '--help']);

    expect(root.stdout).toMatch(/^ {2}volumes\s+volumes:/m);
    for (const name of [
      'list',
      'get',
      'create',
      'resize',
      'migrate',
      'delete',
      'access grant',
      'access revoke',
    ]) {
      expect(group.stdout).toMatch(new RegExp(`^ {2}${name}\\s{2,}`, 'm'));
    }
  });
});
