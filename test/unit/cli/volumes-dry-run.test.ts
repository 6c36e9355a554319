import { FakeApi, runCli, UUID } from './fake-api.js';

const GiB = 2 ** 30;

const candidate = (overrides: Record<string, unknown> = {}) => ({
  storeId: 'st-1',
  name: 'nfs-1',
  accepted: true,
  reason: 'fits; most free space',
  freeBytesAfter: 80 * GiB,
  ...overrides,
});

const ARGS = ['volumes', 'create', '--name', 'web-1', '--zone', 'zone-1', '--template', 'tpl-1', '--dry-run'];

describe('strata volumes create --dry-run', () => {
  let api: FakeApi;
  beforeEach(async () => {
    api = await new FakeApi().start();
  });
  afterEach(() => api.stop());

  it('POSTs the same body with ?dryRun=true, prints the verdicts and does not wait', async () => {
    const chosen = candidate();
    api.on('POST', '/volumes', {
      status: 200,
      body: {
        placement: {
          chosen,
          candidates: [
            chosen,
            candidate({
              storeId: 'st-2',
              name: 'nfs-2',
              reason: 'fits; less free space',
              freeBytesAfter: 10 * GiB,
            }),
            candidate({ storeId: 'st-3', name: 'ceph-1', accepted: false, reason: 'missing tag ssd' }),
          ],
        },
      },
    });

    const result = await runCli([...ARGS, '--size', '20G', '--tag', 'ssd', '--full-copy'], { api });

    expect(result.code).toBe(0);
    expect(api.requests).toHaveLength(1);
    const post = api.requests[0]!;
    expect(post).toMatchObject({ method: 'POST', path: '/volumes', query: { dryRun: 'true' } });
    expect(post.headers['idempotency-key']).toMatch(UUID);
    expect(post.body).toEqual({
      name: 'web-1',
      zoneId: 'zone-1',
      templateId: 'tpl-1',
      sizeBytes: 20 * GiB,
      tags: ['ssd'],
      mode: 'full',
    });
    const [header, ...rows] = result.stdout.trimEnd().split('\n');
    expect(header).toMatch(/^STORE\s+NAME\s+VERDICT\s+REASON$/);
    expect(rows).toHaveLength(3);
    expect(rows[0]).toMatch(/^st-1\s+nfs-1\s+chosen\s+fits; most free space$/);
    expect(rows[1]).toMatch(/^st-2\s+nfs-2\s+accepted\s+fits; less free space$/);
    expect(rows[2]).toMatch(/^st-3\s+ceph-1\s+rejected\s+missing tag ssd$/);
    // Columns line up: every verdict starts where the header's does.
    const column = header!.indexOf('VERDICT');
    for (const row of rows) expect(row.slice(column)).toMatch(/^(chosen|accepted|rejected) /);
    expect(result.stderr).toBe(
      'Dry run: the volume would go to store nfs-1 (st-1), leaving 80.0 GiB. Nothing was created.\n',
    );
  });

  it('exits 1 when no store would take the volume', async () => {
    api.on('POST', '/volumes', {
      status: 200,
      body: {
        placement: {
          candidates: [
            candidate({ accepted: false, reason: 'needs 20.0 GiB, 5.0 GiB free', freeBytesAfter: undefined }),
            candidate({ storeId: 'st-2', name: 'nfs-2', accepted: false, reason: 'Disabled' }),
          ],
        },
      },
    });

    const result = await runCli([...ARGS, '--size', '20G'], { api });

    expect(result.code).toBe(1);
    const rows = result.stdout.trimEnd().split('\n').slice(1);
    expect(rows[0]).toMatch(/^st-1\s+nfs-1\s+rejected\s+needs 20\.0 GiB, 5\.0 GiB free$/);
    expect(rows[1]).toMatch(/^st-2\s+nfs-2\s+rejected\s+Disabled$/);
    expect(result.stderr).toBe('Error: no store can take this volume (dry run: nothing was created).\n');
  });

  it('says so when no store was considered at all', async () => {
    api.on('POST', '/volumes', { status: 200, body: { placement: { candidates: [] } } });

    const result = await runCli(ARGS, { api });

    expect(result.code).toBe(1);
    expect(result.stdout).toBe('');
    expect(result.stderr).toContain('No stores were considered.');
  });

  it('-q prints only the chosen store; --json the explanation as received', async () => {
    const body = { placement: { chosen: candidate(), candidates: [candidate()] } };
    api.on('POST', '/volumes', { status: 200, body });

    const quiet = await runCli([...ARGS, '-q'], { api });
    const json = await runCli([...ARGS, '--json'], { api });

    expect(quiet).toMatchObject({ code: 0, stdout: 'st-1\n', stderr: '' });
    expect(json.code).toBe(0);
    expect(JSON.parse(json.stdout)).toEqual(body);
  });

  it('derives its own key from --idempotency-key, so the real create is not answered with the dry run', async () => {
    api.on('POST', '/volumes', (request) =>
      request.query['dryRun'] === 'true'
        ? { status: 200, body: { placement: { chosen: candidate(), candidates: [candidate()] } } }
        : {
            status: 202,
            body: { volume: { id: 'vol-1', name: 'web-1' }, job: { id: 'job-1', state: 'pending' } },
          },
    );

    await runCli([...ARGS, '--idempotency-key', 'k-1'], { api });
    await runCli([...ARGS.filter((a) => a !== '--dry-run'), '--idempotency-key', 'k-1', '--no-wait'], {
      api,
    });

    expect(api.requests.map((r) => [r.query['dryRun'], r.headers['idempotency-key']])).toEqual([
      ['true', 'k-1.dry-run'],
      [undefined, 'k-1'],
    ]);
  });

  it('still needs --size or --template', async () => {
    const result = await runCli(['volumes', 'create', '--name', 'd', '--zone', 'z', '--dry-run'], { api });

    expect(result.code).toBe(2);
    expect(result.stderr).toContain('give --size for a blank volume, or --template');
    expect(api.requests).toHaveLength(0);
  });

  it('shows an API refusal of the dry run with its field', async () => {
    api.on('POST', '/volumes', {
      status: 422,
      body: {
        error: { code: 'Unprocessable', message: 'template tpl-1 does not exist', field: 'templateId' },
      },
    });

    const result = await runCli(ARGS, { api });

    expect(result.code).toBe(1);
    expect(result.stderr).toBe(
      'Error: template tpl-1 does not exist\n' +
        '  field: templateId (set with --template)\n' +
        '  code:  Unprocessable (HTTP 422)\n',
    );
  });
});
