import { expectUsageError, FakeApi, job, runCli, UUID } from './fake-api.js';

const GiB = 2 ** 30;
const SHA = 'a'.repeat(64);

function template(overrides: Record<string, unknown> = {}) {
  return {
    id: 'tpl-1',
    name: 'debian-12',
    type: 'template',
    format: 'qcow2',
    zoneId: 'zone-1',
    url: 'https://images.example.com/debian-12.qcow2',
    checksum: `{sha256}${SHA}`,
    virtualSizeBytes: 2 * GiB,
    status: 'Ready',
    copies: [
      {
        storeId: 'st-9',
        status: 'Ready',
        path: 'templates/tpl-1/disk.qcow2',
        sizeBytes: 512 * 2 ** 20,
        checksum: `{sha256}${SHA}`,
        refCount: 2,
      },
    ],
    version: 4,
    createdAt: '2025-06-01T10:00:00.000Z',
    updatedAt: '2025-06-01T11:00:00.000Z',
    ...overrides,
  };
}

const templateJob = (overrides: Record<string, unknown> = {}) =>
  job({ kind: 'template.register', target: { type: 'Template', id: 'tpl-1' }, ...overrides });

describe('strata templates', () => {
  let api: FakeApi;
  beforeEach(async () => {
    api = await new FakeApi().start();
  });
  afterEach(() => api.stop());

  describe('list', () => {
    it('sends the filters and renders type, format, status, virtual size and copies', async () => {
      api.on('GET', '/templates', {
        status: 200,
        body: {
          items: [
            template({
              copies: [
                template().copies[0],
                { storeId: 'st-10', status: 'Downloading', progress: 40, refCount: 0 },
              ],
            }),
            template({
              id: 'tpl-2',
              name: 'alpine.iso',
              type: 'iso',
              format: 'iso',
              status: 'Downloading',
              virtualSizeBytes: undefined,
              copies: [],
            }),
          ],
        },
      });

      const result = await runCli(
        ['templates', 'list', '--name', 'debian-12', '--type', 'template', '--state', 'Ready', '--zone', 'z'],
        { api },
      );

      expect(result.code).toBe(0);
      expect(api.last().query).toEqual({ name: 'debian-12', type: 'template', state: 'Ready', zoneId: 'z' });
      const [header, first, second] = result.stdout.trimEnd().split('\n');
      expect(header).toMatch(/^ID\s+NAME\s+TYPE\s+FORMAT\s+STATUS\s+VIRTUAL SIZE\s+COPIES$/);
      expect(first).toMatch(/^tpl-1\s+debian-12\s+template\s+qcow2\s+Ready\s+2\.0 GiB\s+1\/2 Ready$/);
      expect(second).toMatch(/^tpl-2\s+alpine\.iso\s+iso\s+iso\s+Downloading\s+-\s+-$/);
    });

    it('prints ids with -q and the page as sent with --json', async () => {
      const page = { items: [template()], cursor: 'c-2' };
      api.on('GET', '/templates', { status: 200, body: page });

      const quiet = await runCli(['templates', 'list', '-q'], { api });
      const json = await runCli(['templates', 'list', '--json'], { api });

      expect(quiet.stdout).toBe('tpl-1\n');
      expect(JSON.parse(json.stdout)).toEqual(page);
    });

    it('refuses an unknown type', async () => {
      const result = await runCli(['templates', 'list', '--type', 'disk'], { api });

      expect(result.code).toBe(2);
      expect(result.stderr).toContain("--type: 'disk' is not one of template, iso");
      expect(api.requests).toHaveLength(0);
    });
  });

  it('get shows the template and each copy with store, status, size, checksum and progress', async () => {
    api.on('GET', '/templates/tpl-1', {
      status: 200,
      body: template({
        copies: [
          template().copies[0],
          {
            storeId: 'st-10',
            status: 'Downloading',
            progress: 42.4,
            bytesTransferred: 300 * 2 ** 20,
            refCount: 0,
          },
          { storeId: 'st-11', status: 'Error', statusReason: 'checksum mismatch', refCount: 0 },
        ],
      }),
    });

    const result = await runCli(['templates', 'get', 'tpl-1'], { api });

    expect(result.code).toBe(0);
    expect(result.stdout).toMatch(/^Virtual size\s+2\.0 GiB$/m);
    expect(result.stdout).toMatch(new RegExp(`^Checksum\\s+\\{sha256\\}${SHA}$`, 'm'));
    expect(result.stdout).toMatch(/^URL\s+https:\/\/images\.example\.com\/debian-12\.qcow2$/m);
    const copies = result.stdout.slice(result.stdout.indexOf('Copies:')).trimEnd().split('\n');
    expect(copies[1]).toMatch(/^STORE\s+STATUS\s+SIZE\s+CHECKSUM\s+PROGRESS\s+REFS\s+REASON$/);
    expect(copies[2]).toMatch(/^st-9\s+Ready\s+512\.0 MiB\s+\{sha256\}aaaaaaaaaaaa…\s+-\s+2$/);
    expect(copies[3]).toMatch(/^st-10\s+Downloading\s+-\s+-\s+42% \(300\.0 MiB\)\s+0$/);
    expect(copies[4]).toMatch(/^st-11\s+Error\s+-\s+-\s+-\s+0\s+checksum mismatch$/);
  });

  it('get --json prints the template as received', async () => {
    api.on('GET', '/templates/tpl-1', { status: 200, body: template() });

    const result = await runCli(['templates', 'get', 'tpl-1', '--json'], { api });

    expect(JSON.parse(result.stdout)).toEqual(template());
  });

  describe('register', () => {
    const args = [
      'templates',
      'register',
      '--name',
      'debian-12',
      '--url',
      'https://images.example.com/debian-12.qcow2',
      '--format',
      'qcow2',
      '--checksum',
      SHA,
      '--zone',
      'zone-1',
    ];

    it('POSTs the template, follows the job with progress and shows the result', async () => {
      api
        .on('POST', '/templates', {
          status: 202,
          body: { template: template({ status: 'Allocated', copies: [] }), job: templateJob() },
          headers: { location: '/jobs/job-1' },
        })
        .on(
          'GET',
          '/jobs/job-1',
          {
            status: 200,
            body: templateJob({ state: 'running', progress: 30, progressDetail: { step: 'download' } }),
          },
          { status: 200, body: templateJob({ state: 'succeeded', progress: 100 }) },
        )
        .on('GET', '/templates/tpl-1', { status: 200, body: template() });

      const result = await runCli(args, { api });

      expect(result.code).toBe(0);
      const post = api.requests[0]!;
      expect(post).toMatchObject({ method: 'POST', path: '/templates' });
      expect(post.headers['idempotency-key']).toMatch(UUID);
      expect(post.body).toEqual({
        name: 'debian-12',
        url: 'https://images.example.com/debian-12.qcow2',
        format: 'qcow2',
        type: 'template',
        checksum: SHA,
        zoneId: 'zone-1',
      });
      expect(api.requests.map((r) => `${r.method} ${r.path}`)).toEqual([
        'POST /templates',
        'GET /jobs/job-1',
        'GET /jobs/job-1',
        'GET /templates/tpl-1',
      ]);
      expect(result.stderr).toBe(
        'job job-1 pending\njob job-1 running 30% (download)\njob job-1 succeeded\n',
      );
      expect(result.stdout).toBe('Registered template debian-12 (tpl-1), status Ready.\n');
    });

    it('an ISO defaults to type iso, goes to the store given, and --no-wait prints the job', async () => {
      api.on('POST', '/templates', {
        status: 202,
        body: { template: template({ type: 'iso', format: 'iso' }), job: templateJob() },
      });

      const result = await runCli(
        [
          'templates',
          'register',
          '--name',
          'alpine',
          '--url',
          'http://mirror/alpine.iso',
          '--format',
          'iso',
          '--store',
          'st-9',
          '--no-wait',
          '-q',
        ],
        { api },
      );

      expect(result).toMatchObject({ code: 0, stdout: 'job-1\n', stderr: '' });
      expect(api.last().body).toEqual({
        name: 'alpine',
        url: 'http://mirror/alpine.iso',
        format: 'iso',
        type: 'iso',
        storeId: 'st-9',
      });
    });

    it('exits 1 with the job error when the download fails', async () => {
      api
        .on('POST', '/templates', { status: 202, body: { template: template(), job: templateJob() } })
        .on('GET', '/jobs/job-1', {
          status: 200,
          body: templateJob({
            state: 'failed',
            error: { code: 'CHECKSUM_MISMATCH', message: 'expected {sha256}aaa…, got {sha256}bbb…' },
          }),
        })
        .on('GET', '/templates/tpl-1', { status: 200, body: template({ status: 'Error' }) });

      const result = await runCli(args, { api });

      expect(result.code).toBe(1);
      expect(result.stderr).toContain('job job-1 (template.register) failed: CHECKSUM_MISMATCH: expected');
      expect(result.stdout).toBe('');
    });

    it('shows an API validation error with its field and the flag that sets it', async () => {
      api.on('POST', '/templates', {
        status: 400,
        body: { error: { code: 'VALIDATION', message: 'url must be http or https', field: 'url' } },
      });

      const result = await runCli(args, { api });

      expect(result.code).toBe(1);
      expect(result.stderr).toBe(
        'Error: url must be http or https\n' +
          '  field: url (set with --url)\n' +
          '  code:  VALIDATION (HTTP 400)\n',
      );
    });

    it.each([
      [['--format', 'vdi'], "--format: 'vdi' is not one of qcow2, raw, vhd, vmdk, iso"],
      [['--type', 'disk'], "--type: 'disk' is not one of template, iso"],
      [['--checksum', 'xyz'], "--checksum: 'xyz' is not a sha256 checksum"],
      [['--checksum', `{md5}${SHA}`], 'is not a sha256 checksum'],
      [['--url', 'not a url'], "--url: 'not a url' is not a URL"],
      [['--zone', 'z', '--store', 's'], 'give --zone or --store, not both'],
      [['--timeout', 'soon'], "--timeout: 'soon' is not a duration"],
    ])('rejects %j with a usage error and sends nothing', async (extra, message) => {
      const base = ['templates', 'register', '--name', 'n', '--url', 'http://x/y.qcow2', '--format', 'qcow2'];
      const flag = extra[0]!;
      const index = base.indexOf(flag);
      const withoutFlag = index >= 0 ? base.filter((_, i) => i !== index && i !== index + 1) : base;

      const result = await runCli([...withoutFlag, ...extra], { api });

      expectUsageError(result, api, 'templates register', message);
    });

    it.each([
      ['--name', ['--url', 'http://x/y', '--format', 'raw']],
      ['--url', ['--name', 'n', '--format', 'raw']],
      ['--format', ['--name', 'n', '--url', 'http://x/y']],
    ])('requires %s', async (flag, rest) => {
      const result = await runCli(['templates', 'register', ...rest], { api });

      expect(result.code).toBe(2);
      expect(result.stderr).toContain(`${flag} is required`);
    });
  });

  describe('copy', () => {
    it('POSTs the store and waits for the copy', async () => {
      const copyJob = templateJob({ kind: 'template.copy' });
      api
        .on('POST', '/templates/tpl-1/copies', { status: 202, body: { template: template(), job: copyJob } })
        .on('GET', '/jobs/job-1', { status: 200, body: { ...copyJob, state: 'succeeded', progress: 100 } })
        .on('GET', '/templates/tpl-1', {
          status: 200,
          body: template({
            copies: [template().copies[0], { storeId: 'st-10', status: 'Ready', refCount: 0 }],
          }),
        });

      const result = await runCli(['templates', 'copy', 'tpl-1', '--store', 'st-10'], { api });

      expect(result.code).toBe(0);
      expect(api.requests[0]).toMatchObject({
        method: 'POST',
        path: '/templates/tpl-1/copies',
        body: { storeId: 'st-10' },
      });
      expect(api.requests[0]!.headers['idempotency-key']).toMatch(UUID);
      expect(result.stdout).toBe('Template debian-12 (tpl-1): copy on store st-10 is Ready.\n');
    });

    it('requires --store', async () => {
      const result = await runCli(['templates', 'copy', 'tpl-1'], { api });

      expect(result.code).toBe(2);
      expect(result.stderr).toContain('--store is required');
    });
  });

  describe('delete', () => {
    it('DELETEs the template', async () => {
      api.on('DELETE', '/templates/tpl-1', { status: 204 });

      const result = await runCli(['templates', 'delete', 'tpl-1'], { api });

      expect(result).toMatchObject({ code: 0, stdout: 'Deleted template tpl-1.\n' });
      expect(api.last()).toMatchObject({ method: 'DELETE', path: '/templates/tpl-1' });
    });

    it('shows the volumes that still use the template', async () => {
      api.on('DELETE', '/templates/tpl-1', {
        status: 409,
        body: {
          error: {
            code: 'NotAllowed',
            message: 'template tpl-1 is used by 2 volumes',
            dependents: ['vol-1', 'vol-2'],
          },
        },
      });

      const result = await runCli(['templates', 'delete', 'tpl-1'], { api });

      expect(result.code).toBe(1);
      expect(result.stderr).toBe(
        'Error: template tpl-1 is used by 2 volumes\n' +
          '  dependents: vol-1, vol-2\n' +
          '  code:  NotAllowed (HTTP 409)\n' +
          'Hint: the volumes listed under dependents still use it; delete them first\n',
      );
    });
  });

  it('the group is listed in the root help', async () => {
    const result = await runCli(['--help']);

    expect(result.stdout).toMatch(/^ {2}templates\s+templates and ISOs:/m);
  });
});
