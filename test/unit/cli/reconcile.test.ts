import { FakeApi, job, runCli } from './fake-api.js';

let api: FakeApi;
beforeEach(async () => {
  api = await new FakeApi().start();
});
afterEach(() => api.stop());

const report = (dryRun: boolean) => ({
  dryRun,
  stores: ['st-img'],
  counts: { object: 1, upload: 1, chunk: 0, claim: 0 },
  deleted: dryRun ? 0 : 2,
  failed: 0,
  findings: [
    {
      storeId: 'st-img',
      kind: 'object',
      ref: 'templates/tpl-gone/tpl-gone.qcow2',
      reason: 'no row owns it',
      action: dryRun ? 'reported' : 'deleted',
    },
    {
      storeId: 'st-img',
      kind: 'upload',
      ref: 'templates/tpl-up/x.qcow2',
      uploadId: 'u-1',
      reason: 'started 2026-01-01T00:00:00.000Z and never completed',
      action: dryRun ? 'reported' : 'deleted',
    },
  ],
  findingsTruncated: false,
});
const sweepJob = (dryRun: boolean) =>
  job({
    kind: 'reconcile.sweep',
    target: { type: 'sweep', id: 'all' },
    state: 'succeeded',
    progress: 100,
    result: report(dryRun),
  });

describe('reconcile', () => {
  it('--dry-run POSTs a dry sweep, follows the job and lists each finding with the summary', async () => {
    api.acceptJob('POST', '/sweeps', sweepJob(true));

    const result = await runCli(['reconcile', '--dry-run'], { api });

    expect(result.code).toBe(0);
    expect(JSON.parse(api.requests[0]!.rawBody)).toEqual({ dryRun: true });
    const lines = result.stdout.trimEnd().split('\n');
    expect(lines[0]).toMatch(/^STORE\s+KIND\s+OBJECT\s+ACTION\s+WHY$/);
    expect(lines[1]).toMatch(
      /^st-img\s+object\s+templates\/tpl-gone\/tpl-gone\.qcow2\s+reported\s+no row owns it$/,
    );
    expect(lines[2]).toMatch(/upload u-1\)\s+reported/);
    expect(lines[3]).toBe(
      'Found 1 objects, 1 uploads, 0 chunks, 0 claims on 1 stores (dry run: nothing deleted)',
    );
  });

  it('a real sweep of one store says what it deleted; --json prints the report', async () => {
    api.acceptJob('POST', '/sweeps', sweepJob(false));

    const result = await runCli(['reconcile', '--store', 'st-img', '--json'], { api });

    expect(result.code).toBe(0);
    expect(JSON.parse(api.requests[0]!.rawBody)).toEqual({ dryRun: false, storeIds: ['st-img'] });
    expect(JSON.parse(result.stdout)).toMatchObject({ deleted: 2, counts: { object: 1, upload: 1 } });
  });
});
