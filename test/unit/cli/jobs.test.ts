import { FakeApi, job, runCli } from './fake-api.js';

describe('strata jobs', () => {
  let api: FakeApi;
  beforeEach(async () => {
    api = await new FakeApi().start();
  });
  afterEach(() => api.stop());

  it('list sends the filters and shows states in words', async () => {
    api.on('GET', '/jobs', {
      status: 200,
      body: {
        items: [
          job({ state: 'running', progress: 45.4 }),
          job({
            id: 'job-2',
            state: 'failed',
            error: { code: 'NO_HOST', message: 'no host can reach st-1' },
          }),
        ],
      },
    });

    const result = await runCli(
      ['jobs', 'list', '--state', 'running', '--kind', 'store.add', '--target', 'st-1'],
      {
        api,
      },
    );

    expect(result.code).toBe(0);
    expect(api.last().query).toEqual({ state: 'running', kind: 'store.add', targetId: 'st-1' });
    const lines = result.stdout.trimEnd().split('\n');
    expect(lines[0]).toMatch(/^ID\s+KIND\s+TARGET\s+STATE\s+STARTED\s+UPDATED$/);
    expect(lines[1]).toMatch(/^job-1\s+store\.add\s+DataStore st-1\s+running 45%\s+30s ago\s+10s ago$/);
    expect(lines[2]).toMatch(/failed: NO_HOST/);
  });

  it('get shows the error of a failed job and --json prints it raw', async () => {
    const failed = job({
      state: 'failed',
      progress: 30,
      error: { code: 'NO_HOST', message: 'no host can reach st-1' },
    });
    api.on('GET', '/jobs/job-1', { status: 200, body: failed });

    const human = await runCli(['jobs', 'get', 'job-1'], { api });
    const json = await runCli(['jobs', 'get', 'job-1', '--json'], { api });

    expect(human.stdout).toMatch(/^Error\s+NO_HOST: no host can reach st-1$/m);
    expect(JSON.parse(json.stdout)).toEqual(failed);
  });

  describe('wait', () => {
    it('polls pending → running → succeeded and exits 0', async () => {
      api.on(
        'GET',
        '/jobs/job-1',
        { status: 200, body: job({ state: 'pending' }) },
        { status: 200, body: job({ state: 'running', progress: 10, progressDetail: { step: 'mount' } }) },
        { status: 200, body: job({ state: 'running', progress: 60, progressDetail: { step: 'attach' } }) },
        { status: 200, body: job({ state: 'succeeded', progress: 100 }) },
      );

      const result = await runCli(['jobs', 'wait', 'job-1'], { api });

      expect(result.code).toBe(0);
      expect(api.requests).toHaveLength(4);
      expect(result.stderr).toBe(
        'job job-1 pending\njob job-1 running 10% (mount)\njob job-1 running 60% (attach)\njob job-1 succeeded\n',
      );
      expect(result.stdout).toBe('Job job-1 (store.add) succeeded.\n');
    });

    it('redraws one progress bar in place on a terminal', async () => {
      api.on(
        'GET',
        '/jobs/job-1',
        { status: 200, body: job({ state: 'running', progress: 50 }) },
        { status: 200, body: job({ state: 'succeeded', progress: 100 }) },
      );

      const result = await runCli(['jobs', 'wait', 'job-1'], { api, tty: true });

      expect(result.code).toBe(0);
      const frames = result.stderr.split('\r').filter(Boolean);
      expect(frames).toEqual([
        `store.add job-1 [${'#'.repeat(12)}${'-'.repeat(12)}]  50% running\x1b[K`,
        `store.add job-1 [${'#'.repeat(24)}] 100% succeeded\x1b[K\n`,
      ]);
    });

    it('exits 1 with the job error when the job fails', async () => {
      api.on(
        'GET',
        '/jobs/job-1',
        { status: 200, body: job({ state: 'running', progress: 20 }) },
        {
          status: 200,
          body: job({ state: 'failed', progress: 20, error: { code: 'NO_HOST', message: 'no host' } }),
        },
      );

      const result = await runCli(['jobs', 'wait', 'job-1'], { api });

      expect(result.code).toBe(1);
      expect(result.stdout).toBe('');
      expect(result.stderr).toContain('Error: job job-1 (store.add) failed: NO_HOST: no host');
    });

    it('shortens a very long job error and says where the full text is', async () => {
      const message = `no host could attach: ${'trace line; '.repeat(200)}`;
      api.on('GET', '/jobs/job-1', {
        status: 200,
        body: job({ state: 'failed', error: { code: 'AttachFailed', message } }),
      });

      const result = await runCli(['jobs', 'wait', 'job-1', '-q'], { api });

      expect(result.code).toBe(1);
      expect(result.stderr.length).toBeLessThan(700);
      expect(result.stderr).toContain('failed: AttachFailed: no host could attach: trace line;');
      expect(result.stderr).toContain('Hint: the full error is in: strata jobs get job-1 --json');
    });

    it('exits 3 when --timeout passes first, saying the job carries on', async () => {
      api.on('GET', '/jobs/job-1', { status: 200, body: job({ state: 'running', progress: 5 }) });

      const result = await runCli(['jobs', 'wait', 'job-1', '--timeout', '50ms', '-q'], { api });

      expect(result.code).toBe(3);
      expect(result.stderr).toMatch(/gave up waiting for job job-1 after 0s; it is still running 5%/);
      expect(result.stderr).toContain('strata jobs wait job-1');
    });

    it('rides out a passing server error while polling', async () => {
      api.on(
        'GET',
        '/jobs/job-1',
        { status: 200, body: job({ state: 'running', progress: 5 }) },
        { status: 503, body: { error: { code: 'UNAVAILABLE', message: 'deploying' } } },
        { status: 200, body: job({ state: 'succeeded', progress: 100 }) },
      );

      const result = await runCli(['jobs', 'wait', 'job-1', '-q'], { api });

      expect(result).toMatchObject({ code: 0, stdout: 'job-1\n' });
    });

    it('gives up when the job does not exist', async () => {
      api.on('GET', '/jobs/nope', {
        status: 404,
        body: { error: { code: 'NOT_FOUND', message: 'job nope not found' } },
      });

      const result = await runCli(['jobs', 'wait', 'nope'], { api });

      expect(result.code).toBe(1);
      expect(result.stderr).toContain('Error: job nope not found');
      expect(api.requests).toHaveLength(1);
    });

    it('refuses a malformed --timeout', async () => {
      api.on('GET', '/jobs/job-1', { status: 200, body: job({ state: 'running' }) });

      const result = await runCli(['jobs', 'wait', 'job-1', '--timeout', 'soon'], { api });

      expect(result.code).toBe(2);
      expect(result.stderr).toContain("--timeout: 'soon' is not a duration");
      expect(api.requests).toHaveLength(0);
    });
  });
});
