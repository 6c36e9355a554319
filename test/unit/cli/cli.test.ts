import { FakeApi, host, runCli } from './fake-api.js';

describe('strata (dispatch, global flags, errors)', () => {
  let api: FakeApi;
  beforeEach(async () => {
    api = await new FakeApi().start();
  });
  afterEach(() => api.stop());

  describe('help', () => {
    it('--help prints the command overview on stdout and exits 0', async () => {
      const result = await runCli(['--help']);

      expect(result.code).toBe(0);
      expect(result.stdout).toContain('Usage: strata <command>');
      expect(result.stdout).toMatch(/^ {2}stores\s+data stores:/m);
    });

    it('no arguments prints the overview on stderr and exits 2', async () => {
      const result = await runCli([]);

      expect(result.code).toBe(2);
      expect(result.stdout).toBe('');
      expect(result.stderr).toContain('Usage: strata <command>');
    });

    it.each([
      [['hosts', '--help'], 'Usage: strata hosts <command>'],
      [['stores', 'add', '--help'], '--detail <key=value>...'],
      [['help', 'jobs', 'wait'], 'Usage: strata jobs wait <id>'],
      [['jobs', 'wait', '-h'], '--timeout <duration>'],
      // Help wins over missing arguments.
      [['hosts', 'get', '--help'], 'Usage: strata hosts get <id>'],
    ])('%j shows help', async (argv, expected) => {
      const result = await runCli(argv);

      expect(result.code).toBe(0);
      expect(result.stdout).toContain(expected);
    });

    it('a group without a subcommand shows its commands and exits 2', async () => {
      const result = await runCli(['stores']);

      expect(result.code).toBe(2);
      expect(result.stderr).toMatch(/^ {2}cancel-maintenance\s+Bring a store back/m);
    });
  });

  describe('usage errors exit 2', () => {
    it.each([
      [['frobnicate'], "unknown command 'frobnicate'"],
      [['stors', 'list'], "Did you mean 'stores'?"],
      [['hosts', 'lst'], "unknown command 'hosts lst'. Did you mean 'list'?"],
      [['hosts', 'get'], 'missing <id>'],
      [['hosts', 'get', 'a', 'b'], "unexpected argument 'b'"],
      [['jobs', 'list', '--state', 'done'], "'done' is not one of pending, running, succeeded, failed"],
      [['hosts', 'list', '--limit', '0'], "--limit: '0' is not a positive whole number"],
      [['health', '--api-url', 'not a url'], "'not a url' is not a URL"],
      [['health', '--api-url', 'ftp://x'], 'is not an http(s) URL'],
      [['hosts', 'list', '--zone'], "Option '--zone <value>' argument missing"],
    ])('%j', async (argv, message) => {
      const result = await runCli(argv, { api });

      expect(result.code).toBe(2);
      expect(result.stderr).toContain(message);
      expect(result.stderr).toMatch(/Run 'strata .*--help' for usage\./);
      expect(api.requests).toHaveLength(0);
    });
  });

  describe('API errors exit 1 with the envelope', () => {
    it('shows message, field (with the flag that sets it) and code', async () => {
      api.on('POST', '/stores', {
        status: 422,
        body: {
          error: { code: 'VALIDATION_FAILED', message: 'capacity must be positive', field: 'capacityBytes' },
        },
        headers: { 'x-request-id': 'req-7' },
      });

      const result = await runCli(
        [
          'stores',
          'add',
          '--name',
          'n',
          '--provider',
          'nfs',
          '--role',
          'primary',
          '--zone',
          'z',
          '--capacity',
          '0',
        ],
        { api },
      );

      expect(result.code).toBe(1);
      expect(result.stdout).toBe('');
      expect(result.stderr).toBe(
        'Error: capacity must be positive\n' +
          '  field: capacityBytes (set with --capacity)\n' +
          '  code:  VALIDATION_FAILED (HTTP 422), request req-7\n',
      );
    });

    it('maps a details field to the --detail key', async () => {
      api.on('POST', '/stores', {
        status: 400,
        body: { error: { code: 'INVALID_DETAILS', message: 'server is required', field: 'details.server' } },
      });

      const result = await runCli(
        [
          'stores',
          'add',
          '--name',
          'n',
          '--provider',
          'nfs',
          '--role',
          'primary',
          '--zone',
          'z',
          '--no-wait',
        ],
        { api },
      );

      expect(result.stderr).toContain('  field: details.server (set with --detail server=…)');
    });

    it.each([
      ['query.zoneId', '--zone'],
      ['tags.1', '--tag'],
      ['scope.clusterId', '--cluster'],
      ['id', 'the <id> argument'],
    ])('names the flag for field %s', async (field, flag) => {
      api.on('GET', '/stores', {
        status: 400,
        body: { error: { code: 'InvalidInput', message: 'bad', field } },
      });

      const result = await runCli(['stores', 'list'], { api });

      expect(result.stderr).toContain(`  field: ${field} (set with ${flag})`);
    });

    it('shows what else the envelope says, such as blocking dependents', async () => {
      api.on('DELETE', '/hosts/h-1', {
        status: 409,
        body: {
          error: { code: 'Conflict', message: 'host is Up', state: 'Up', dependents: ['st-1', 'st-2'] },
        },
      });

      const result = await runCli(['hosts', 'remove', 'h-1'], { api });

      expect(result.code).toBe(1);
      expect(result.stderr).toContain('  state: Up\n  dependents: st-1, st-2\n');
    });

    it('reports a 404 from get', async () => {
      api.on('GET', '/hosts/h-9', {
        status: 404,
        body: { error: { code: 'NOT_FOUND', message: 'host h-9 not found' } },
      });

      const result = await runCli(['hosts', 'get', 'h-9', '--json'], { api });

      expect(result).toMatchObject({ code: 1, stdout: '' });
      expect(result.stderr).toContain('Error: host h-9 not found');
      expect(result.stderr).toContain('NOT_FOUND (HTTP 404)');
    });

    it('explains an unreachable API', async () => {
      const url = api.url;
      await api.stop();

      const result = await runCli(['health'], { env: { STRATA_API_URL: url } });

      expect(result.code).toBe(1);
      expect(result.stderr).toContain(`cannot reach the Strata API at ${url}: ECONNREFUSED`);
      expect(result.stderr).toContain('npm start');
    });
  });

  describe('global flags', () => {
    it('health prints status and version, and accepts flags before the command', async () => {
      api.on('GET', '/health', { status: 200, body: { status: 'ok', version: '0.1.0' } });

      const human = await runCli(['health'], { api });
      const json = await runCli(['--json', 'health'], { api });

      expect(human).toMatchObject({ code: 0, stdout: `ok  version 0.1.0  ${api.url}\n` });
      expect(JSON.parse(json.stdout)).toEqual({ status: 'ok', version: '0.1.0' });
    });

    it('--api-url wins over STRATA_API_URL', async () => {
      api.on('GET', '/hosts/h-1', { status: 200, body: host() });

      const result = await runCli(['--api-url', api.url, 'hosts', 'get', 'h-1', '-q'], {
        env: { STRATA_API_URL: 'http://127.0.0.1:9' },
      });

      expect(result).toMatchObject({ code: 0, stdout: 'h-1\n' });
    });

    it('keeps a base path such as an API Gateway stage', async () => {
      api.on('GET', '/prod/health', { status: 200, body: { status: 'ok', version: '1' } });

      const result = await runCli(['health', '--api-url', `${api.url}/prod/`], { api });

      expect(result.code).toBe(0);
      expect(api.last().path).toBe('/prod/health');
    });

    it('--idempotency-key replaces the fresh key, so a whole command can be re-run safely', async () => {
      api.on('PATCH', '/hosts/h-1', { status: 200, body: host({ status: 'Disabled' }) });

      await runCli(['hosts', 'disable', 'h-1', '--idempotency-key', 'my-key-1'], { api });

      expect(api.last().headers['idempotency-key']).toBe('my-key-1');
    });

    it('reads never carry an Idempotency-Key', async () => {
      api.on('GET', '/hosts', { status: 200, body: { items: [] } });

      await runCli(['hosts', 'list'], { api });

      expect(api.last().headers['idempotency-key']).toBeUndefined();
    });
  });
});
