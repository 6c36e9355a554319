import { expectUsageError, FakeApi, runCli, UUID } from './fake-api.js';

function policy(overrides: Record<string, unknown> = {}) {
  return {
    id: 'pol-1',
    name: 'nightly',
    volumeId: 'vol-1',
    schedule: 'cron(0 3 * * ? *)',
    timeZone: 'Europe/Paris',
    keep: 7,
    backup: true,
    version: 1,
    createdAt: '2025-06-01T11:00:00.000Z',
    updatedAt: '2025-06-01T11:55:00.000Z',
    ...overrides,
  };
}

/** A valid `create` command line with some flags changed, added, or (as undefined) left out. */
function createArgs(changes: Record<string, string | undefined>): string[] {
  const flags = { '--volume': 'vol-1', '--schedule': 'rate(1 hour)', '--keep': '7', ...changes };
  return Object.entries(flags).flatMap(([flag, value]) => (value === undefined ? [] : [flag, value]));
}

describe('strata snapshot-policies (alias policies)', () => {
  let api: FakeApi;
  beforeEach(async () => {
    api = await new FakeApi().start();
  });
  afterEach(() => api.stop());

  describe('create', () => {
    it('POSTs every field and prints what was created', async () => {
      api.on('POST', '/snapshot-policies', { status: 201, body: policy() });

      const result = await runCli(
        [
          'policies',
          'create',
          '--volume',
          'vol-1',
          '--schedule',
          'cron(0 3 * * ? *)',
          '--time-zone',
          'Europe/Paris',
          '--keep',
          '7',
          '--backup',
          '--name',
          'nightly',
        ],
        { api },
      );

      expect(result.code).toBe(0);
      const post = api.requests[0]!;
      expect(post).toMatchObject({ method: 'POST', path: '/snapshot-policies' });
      expect(post.headers['idempotency-key']).toMatch(UUID);
      expect(post.body).toEqual({
        volumeId: 'vol-1',
        schedule: 'cron(0 3 * * ? *)',
        timeZone: 'Europe/Paris',
        keep: 7,
        backup: true,
        name: 'nightly',
      });
      expect(result.stdout).toBe(
        'Created snapshot policy nightly (pol-1) for volume vol-1: cron(0 3 * * ? *) (Europe/Paris), keep 7, backed up.\n',
      );
    });

    it('sends only the required fields when nothing else is given; -q prints the id, --json the policy', async () => {
      const created = policy({
        name: undefined,
        schedule: 'rate(1 hour)',
        timeZone: 'UTC',
        keep: 24,
        backup: false,
      });
      api.on('POST', '/snapshot-policies', { status: 201, body: created });

      const args = ['snapshot-policies', 'create', ...createArgs({ '--keep': '24' })];
      const human = await runCli(args, { api });
      const quiet = await runCli([...args, '-q'], { api });
      const json = await runCli([...args, '--json'], { api });

      expect(api.requests[0]!.body).toEqual({ volumeId: 'vol-1', schedule: 'rate(1 hour)', keep: 24 });
      expect(human.stdout).toBe(
        'Created snapshot policy pol-1 for volume vol-1: rate(1 hour) (UTC), keep 24.\n',
      );
      expect(quiet.stdout).toBe('pol-1\n');
      expect(JSON.parse(json.stdout)).toEqual(created);
    });

    it.each([
      [{ '--volume': undefined }, '--volume is required'],
      [{ '--schedule': undefined }, '--schedule is required'],
      [{ '--keep': undefined }, '--keep is required'],
      [{ '--schedule': 'hourly' }, "--schedule: 'hourly' is not a schedule"],
      [{ '--schedule': 'rate(2 hour)' }, "--schedule: 'rate(2 hour)': write rate(1 hour) or rate(2 hours)"],
      [{ '--schedule': 'rate(1 days)' }, "--schedule: 'rate(1 days)': write rate(1 day) or rate(2 days)"],
      [{ '--schedule': 'rate(0 hours)' }, "--schedule: 'rate(0 hours)' is not a positive rate"],
      [{ '--schedule': 'cron(0 3 * *)' }, "--schedule: 'cron(0 3 * *)' is not a schedule"],
      [{ '--keep': '0' }, "--keep: '0' is not a positive whole number"],
      [{ '--keep': '2.5' }, "--keep: '2.5' is not a positive whole number"],
      [{ '--time-zone': 'Mars/Olympus' }, "--time-zone: 'Mars/Olympus' is not a time zone"],
    ])('rejects a create with %p as a usage error (%s) and sends nothing', async (changes, message) => {
      const result = await runCli(['policies', 'create', ...createArgs(changes)], { api });

      expectUsageError(result, api, 'snapshot-policies create', message);
    });

    it('shows an API error with its field as the flag that sets it', async () => {
      api.on('POST', '/snapshot-policies', {
        status: 400,
        body: { error: { code: 'InvalidInput', message: 'keep must be at most 100', field: 'keep' } },
      });

      const result = await runCli(['policies', 'create', ...createArgs({ '--keep': '500' })], { api });

      expect(result.code).toBe(1);
      expect(result.stderr).toBe(
        'Error: keep must be at most 100\n  field: keep (set with --keep)\n  code:  InvalidInput (HTTP 400)\n',
      );
    });
  });

  describe('list', () => {
    it('sends the volume filter and renders the policies', async () => {
      api.on('GET', '/snapshot-policies', {
        status: 200,
        body: {
          items: [
            policy(),
            policy({
              id: 'pol-2',
              name: undefined,
              schedule: 'rate(1 hour)',
              timeZone: 'UTC',
              keep: 24,
              backup: false,
            }),
          ],
        },
      });

      const result = await runCli(['policies', 'list', '--volume', 'vol-1'], { api });

      expect(result.code).toBe(0);
      expect(api.last()).toMatchObject({
        method: 'GET',
        path: '/snapshot-policies',
        query: { volumeId: 'vol-1' },
      });
      const [header, first, second] = result.stdout.trimEnd().split('\n');
      expect(header).toMatch(/^ID\s+NAME\s+VOLUME\s+SCHEDULE\s+TIME ZONE\s+KEEP\s+BACKUP$/);
      expect(first).toMatch(/^pol-1\s+nightly\s+vol-1\s+cron\(0 3 \* \* \? \*\)\s+Europe\/Paris\s+7\s+yes$/);
      expect(second).toMatch(/^pol-2\s+-\s+vol-1\s+rate\(1 hour\)\s+UTC\s+24\s+no$/);
    });

    it('prints ids with -q, the page with --json, and says when there are none', async () => {
      const page = { items: [policy()] };
      api.on('GET', '/snapshot-policies', { status: 200, body: page });

      const quiet = await runCli(['snapshot-policies', 'list', '-q'], { api });
      const json = await runCli(['snapshot-policies', 'list', '--json'], { api });
      api.on('GET', '/snapshot-policies', { status: 200, body: { items: [] } });
      const empty = await runCli(['snapshot-policies', 'list'], { api });

      expect(quiet.stdout).toBe('pol-1\n');
      expect(JSON.parse(json.stdout)).toEqual(page);
      expect(api.requests[0]!.query).toEqual({});
      expect(empty).toMatchObject({ code: 0, stdout: '', stderr: 'No snapshot policies found.\n' });
    });

    it('takes a bare array as the list', async () => {
      api.on('GET', '/snapshot-policies', { status: 200, body: [policy()] });

      const result = await runCli(['policies', 'list', '-q'], { api });

      expect(result).toMatchObject({ code: 0, stdout: 'pol-1\n' });
    });
  });

  describe('get', () => {
    it('shows every field', async () => {
      api.on('GET', '/snapshot-policies/pol-1', { status: 200, body: policy() });

      const result = await runCli(['policies', 'get', 'pol-1'], { api });

      expect(result.code).toBe(0);
      expect(api.last()).toMatchObject({ method: 'GET', path: '/snapshot-policies/pol-1' });
      const lines = [
        /^ID\s+pol-1$/,
        /^Name\s+nightly$/,
        /^Volume\s+vol-1$/,
        /^Schedule\s+cron\(0 3 \* \* \? \*\)$/,
        /^Time zone\s+Europe\/Paris$/,
        /^Keep\s+7 snapshot\(s\)$/,
        /^Backup\s+yes$/,
        /^Version\s+1$/,
        /^Created\s+1h ago \(2025-06-01T11:00:00\.000Z\)$/,
        /^Updated\s+5m ago \(2025-06-01T11:55:00\.000Z\)$/,
      ];
      for (const line of lines) expect(result.stdout).toMatch(new RegExp(line.source, 'm'));
    });

    it('--json prints the policy as received; the id is escaped in the path', async () => {
      api.on('GET', '/snapshot-policies/a%2Fb', { status: 200, body: policy() });

      const result = await runCli(['policies', 'get', 'a/b', '--json'], { api });

      expect(JSON.parse(result.stdout)).toEqual(policy());
      expect(api.last().path).toBe('/snapshot-policies/a%2Fb');
    });

    it('a missing policy exits 1 with the API message', async () => {
      api.on('GET', '/snapshot-policies/pol-9', {
        status: 404,
        body: { error: { code: 'NotFound', message: 'policy pol-9 does not exist' } },
      });

      const result = await runCli(['policies', 'get', 'pol-9'], { api });

      expect(result.code).toBe(1);
      expect(result.stderr).toBe('Error: policy pol-9 does not exist\n  code:  NotFound (HTTP 404)\n');
    });
  });

  describe('delete', () => {
    it('DELETEs the policy', async () => {
      api.on('DELETE', '/snapshot-policies/pol-1', { status: 204 });

      const human = await runCli(['policies', 'delete', 'pol-1'], { api });
      const quiet = await runCli(['policies', 'delete', 'pol-1', '-q'], { api });
      const json = await runCli(['policies', 'delete', 'pol-1', '--json'], { api });

      expect(human).toMatchObject({ code: 0, stdout: 'Deleted snapshot policy pol-1.\n' });
      expect(api.requests[0]).toMatchObject({ method: 'DELETE', path: '/snapshot-policies/pol-1' });
      expect(api.requests[0]!.headers['idempotency-key']).toMatch(UUID);
      expect(quiet.stdout).toBe('pol-1\n');
      expect(JSON.parse(json.stdout)).toEqual({ id: 'pol-1', deleted: true });
    });

    it('requires the id', async () => {
      const result = await runCli(['policies', 'delete'], { api });

      expect(result.code).toBe(2);
      expect(result.stderr).toContain('missing <id>');
      expect(api.requests).toHaveLength(0);
    });
  });

  describe('the alias', () => {
    it('is listed in the root help under the group name', async () => {
      const root = await runCli(['--help']);

      expect(root.stdout).toMatch(/^ {2}snapshot-policies\s+scheduled snapshots \(alias: policies\):/m);
    });

    it.each([[['policies', '--help']], [['snapshot-policies', '--help']], [['help', 'policies']]])(
      '%j lists every command',
      async (argv) => {
        const result = await runCli(argv);

        expect(result.code).toBe(0);
        expect(result.stdout).toMatch(/^Usage: strata snapshot-policies <command>/);
        for (const name of ['create', 'list', 'get', 'delete']) {
          expect(result.stdout).toMatch(new RegExp(`^ {2}${name}\\s{2,}`, 'm'));
        }
      },
    );

    it('works after global flags, and a typo of it is suggested', async () => {
      api.on('GET', '/snapshot-policies', { status: 200, body: { items: [policy()] } });

      const after = await runCli(['--api-url', api.url, '-q', 'policies', 'list']);
      const typo = await runCli(['polices', 'list']);

      expect(after).toMatchObject({ code: 0, stdout: 'pol-1\n' });
      expect(typo.code).toBe(2);
      expect(typo.stderr).toContain("unknown command 'polices'. Did you mean 'policies'?");
    });
  });
});
