import { expectUsageError, FakeApi, job, runCli, UUID } from './fake-api.js';

const GiB = 2 ** 30;
const MiB = 2 ** 20;

function snapshot(overrides: Record<string, unknown> = {}) {
  return {
    id: 'snap-1',
    name: 'nightly',
    volumeId: 'vol-1',
    status: 'CreatedOnPrimary',
    sizeBytes: 10 * GiB,
    version: 2,
    createdAt: '2025-06-01T11:00:00.000Z',
    updatedAt: '2025-06-01T11:55:00.000Z',
    ...overrides,
  };
}

function volume(overrides: Record<string, unknown> = {}) {
  return {
    id: 'vol-2',
    name: 'restored',
    zoneId: 'zone-1',
    storeId: 'st-1',
    sizeBytes: 10 * GiB,
    format: 'qcow2',
    tags: [],
    status: 'Ready',
    version: 1,
    createdAt: '2025-06-01T11:00:00.000Z',
    updatedAt: '2025-06-01T11:55:00.000Z',
    ...overrides,
  };
}

const snapshotJob = (overrides: Record<string, unknown> = {}) =>
  job({ kind: 'snapshot.take', target: { type: 'snapshot', id: 'snap-1' }, ...overrides });

const COUNTERS = {
  bytesRead: 2 * GiB,
  bytesUploaded: 256 * MiB,
  chunksReused: 448,
  chunksUploaded: 64,
  incremental: true,
};

describe('strata snapshots', () => {
  let api: FakeApi;
  beforeEach(async () => {
    api = await new FakeApi().start();
  });
  afterEach(() => api.stop());

  describe('list', () => {
    it('sends the volume filter and renders id, name, volume, status, size, policy and age', async () => {
      api.on('GET', '/snapshots', {
        status: 200,
        body: {
          items: [
            snapshot(),
            snapshot({
              id: 'snap-2',
              name: 'hourly-1',
              status: 'BackedUp',
              sizeBytes: undefined,
              policyId: 'pol-1',
              createdAt: '2025-06-01T11:58:00.000Z',
            }),
          ],
        },
      });

      const result = await runCli(['snapshots', 'list', '--volume', 'vol-1', '--limit', '5'], { api });

      expect(result.code).toBe(0);
      expect(api.last()).toMatchObject({ method: 'GET', path: '/snapshots' });
      expect(api.last().query).toEqual({ volumeId: 'vol-1', limit: '5' });
      const [header, first, second] = result.stdout.trimEnd().split('\n');
      expect(header).toMatch(/^ID\s+NAME\s+VOLUME\s+STATUS\s+SIZE\s+POLICY\s+CREATED$/);
      expect(first).toMatch(/^snap-1\s+nightly\s+vol-1\s+CreatedOnPrimary\s+10\.0 GiB\s+-\s+1h ago$/);
      expect(second).toMatch(/^snap-2\s+hourly-1\s+vol-1\s+BackedUp\s+-\s+pol-1\s+2m ago$/);
    });

    it('prints ids with -q, the page as sent with --json, the cursor hint, and says when there are none', async () => {
      const page = { items: [snapshot()], cursor: 'c-2' };
      api.on('GET', '/snapshots', { status: 200, body: page });

      const quiet = await runCli(['snapshots', 'list', '-q'], { api });
      const json = await runCli(['snapshots', 'list', '--json'], { api });
      const human = await runCli(['snapshots', 'list'], { api });
      api.on('GET', '/snapshots', { status: 200, body: { items: [] } });
      const empty = await runCli(['snapshots', 'list'], { api });

      expect(quiet.stdout).toBe('snap-1\n');
      expect(JSON.parse(json.stdout)).toEqual(page);
      expect(human.stderr).toContain('More snapshots: add --cursor c-2 (or --all).');
      expect(api.requests[0]!.query).toEqual({});
      expect(empty).toMatchObject({ code: 0, stdout: '', stderr: 'No snapshots found.\n' });
    });

    it('--all follows the cursors', async () => {
      api.on(
        'GET',
        '/snapshots',
        { status: 200, body: { items: [snapshot()], cursor: 'c-2' } },
        { status: 200, body: { items: [snapshot({ id: 'snap-2' })] } },
      );

      const result = await runCli(['snapshots', 'list', '--volume', 'vol-1', '--all', '-q'], { api });

      expect(result.stdout).toBe('snap-1\nsnap-2\n');
      expect(api.requests.map((r) => r.query)).toEqual([
        { volumeId: 'vol-1' },
        { volumeId: 'vol-1', cursor: 'c-2' },
      ]);
    });
  });

  describe('get', () => {
    it('shows every field and each copy', async () => {
      api.on('GET', '/snapshots/snap-1', {
        status: 200,
        body: snapshot({
          status: 'BackedUp',
          policyId: 'pol-1',
          slot: '2025-06-01T11:00:00.000Z',
          copies: [
            {
              snapshotId: 'snap-1',
              storeId: 'st-1',
              storeRole: 'primary',
              status: 'Ready',
              path: 'volumes/vol-1.snap-1.qcow2',
              sizeBytes: 300 * MiB,
            },
            {
              snapshotId: 'snap-1',
              storeId: 'st-9',
              storeRole: 'image',
              status: 'Ready',
              path: 'snapshots/snap-1/manifest.json',
              sizeBytes: 2 * GiB,
              virtualSizeBytes: 10 * GiB,
            },
          ],
        }),
      });

      const result = await runCli(['snapshots', 'get', 'snap-1'], { api });

      expect(result.code).toBe(0);
      expect(api.last()).toMatchObject({ method: 'GET', path: '/snapshots/snap-1' });
      const lines = [
        /^ID\s+snap-1$/,
        /^Name\s+nightly$/,
        /^Volume\s+vol-1$/,
        /^Status\s+BackedUp$/,
        /^Size\s+10\.0 GiB \(10737418240 bytes\)$/,
        /^Policy\s+pol-1$/,
        /^Slot\s+2025-06-01T11:00:00\.000Z$/,
        /^Version\s+2$/,
        /^Created\s+1h ago \(2025-06-01T11:00:00\.000Z\)$/,
        /^Updated\s+5m ago \(2025-06-01T11:55:00\.000Z\)$/,
        /^Copies:$/,
        /^STORE\s+ROLE\s+STATUS\s+SIZE\s+VIRTUAL SIZE\s+PATH\s+REASON$/,
        /^st-1\s+primary\s+Ready\s+300\.0 MiB\s+-\s+volumes\/vol-1\.snap-1\.qcow2$/,
        /^st-9\s+image\s+Ready\s+2\.0 GiB\s+10\.0 GiB\s+snapshots\/snap-1\/manifest\.json$/,
      ];
      for (const line of lines) expect(result.stdout).toMatch(new RegExp(line.source, 'm'));
      expect(result.stdout).not.toMatch(/^Reason/m);
    });

    it('shows the reason of a snapshot in Error and (none) without copies; --json as received', async () => {
      const failed = snapshot({ status: 'Error', statusReason: 'qemu-img: lock held', copies: [] });
      api.on('GET', '/snapshots/a%2Fb', { status: 200, body: failed });

      const human = await runCli(['snapshots', 'get', 'a/b'], { api });
      const json = await runCli(['snapshots', 'get', 'a/b', '--json'], { api });

      expect(human.stdout).toMatch(/^Reason\s+qemu-img: lock held$/m);
      expect(human.stdout).toMatch(/Copies:\n\(none\)\n$/);
      expect(JSON.parse(json.stdout)).toEqual(failed);
      expect(api.last().path).toBe('/snapshots/a%2Fb');
    });

    it('a missing snapshot exits 1 with the API message', async () => {
      api.on('GET', '/snapshots/snap-9', {
        status: 404,
        body: { error: { code: 'NotFound', message: 'snapshot snap-9 does not exist' } },
      });

      const result = await runCli(['snapshots', 'get', 'snap-9'], { api });

      expect(result.code).toBe(1);
      expect(result.stderr).toBe('Error: snapshot snap-9 does not exist\n  code:  NotFound (HTTP 404)\n');
    });
  });

  describe('take', () => {
    it('POSTs the name to the volume, follows the job with progress and shows the snapshot', async () => {
      api
        .on('POST', '/volumes/vol-1/snapshots', {
          status: 202,
          body: { snapshot: snapshot({ status: 'Allocated' }), job: snapshotJob() },
        })
        .on(
          'GET',
          '/jobs/job-1',
          {
            status: 200,
            body: snapshotJob({ state: 'running', progress: 50, progressDetail: { step: 'snapshot' } }),
          },
          { status: 200, body: snapshotJob({ state: 'succeeded', progress: 100 }) },
        )
        .on('GET', '/snapshots/snap-1', { status: 200, body: snapshot() });

      const result = await runCli(['snapshots', 'take', 'vol-1', '--name', 'nightly'], { api });

      expect(result.code).toBe(0);
      const post = api.requests[0]!;
      expect(post).toMatchObject({
        method: 'POST',
        path: '/volumes/vol-1/snapshots',
        body: { name: 'nightly' },
      });
      expect(post.headers['idempotency-key']).toMatch(UUID);
      expect(api.requests.map((r) => `${r.method} ${r.path}`)).toEqual([
        'POST /volumes/vol-1/snapshots',
        'GET /jobs/job-1',
        'GET /jobs/job-1',
        'GET /snapshots/snap-1',
      ]);
      expect(result.stderr).toBe(
        'job job-1 pending\njob job-1 running 50% (snapshot)\njob job-1 succeeded\n',
      );
      expect(result.stdout).toBe(
        'Took snapshot nightly (snap-1) of volume vol-1, status CreatedOnPrimary.\n',
      );
    });

    it('--backup sends backup: true, prints the counters the job reports, and notes a backup still running', async () => {
      api
        .on('POST', '/volumes/vol-1/snapshots', {
          status: 202,
          body: { snapshot: snapshot({ status: 'Allocated' }), job: snapshotJob() },
        })
        .on('GET', '/jobs/job-1', {
          status: 200,
          body: snapshotJob({
            state: 'succeeded',
            progress: 100,
            result: { snapshotId: 'snap-1', ...COUNTERS },
          }),
        })
        .on('GET', '/snapshots/snap-1', { status: 200, body: snapshot({ status: 'BackingUp' }) });

      const result = await runCli(['snapshots', 'take', 'vol-1', '--name', 'nightly', '--backup'], { api });

      expect(result.code).toBe(0);
      expect(api.requests[0]!.body).toEqual({ name: 'nightly', backup: true });
      expect(result.stdout).toMatch(
        /^Took snapshot nightly \(snap-1\) of volume vol-1, status BackingUp\.\n/,
      );
      expect(result.stdout).toMatch(/^Incremental\s+yes$/m);
      expect(result.stderr).toContain('Its backup is still running; check with: strata snapshots get snap-1');
    });

    it('--no-wait prints the job and does not poll; -q its id; --json the answer', async () => {
      const accepted = { snapshot: snapshot({ status: 'Allocated' }), job: snapshotJob() };
      api.on('POST', '/volumes/vol-1/snapshots', { status: 202, body: accepted });

      const args = ['snapshots', 'take', 'vol-1', '--name', 'nightly', '--no-wait'];
      const human = await runCli(args, { api });
      const quiet = await runCli([...args, '-q'], { api });
      const json = await runCli([...args, '--json'], { api });

      expect(human).toMatchObject({
        code: 0,
        stdout: 'Snapshot nightly (snap-1): job job-1 pending.\n',
        stderr: 'Follow it with: strata jobs wait job-1\n',
      });
      expect(quiet.stdout).toBe('job-1\n');
      expect(JSON.parse(json.stdout)).toEqual(accepted);
      expect(api.requests.every((r) => r.method === 'POST')).toBe(true);
    });

    it('--json still prints the snapshot and the job when the job fails', async () => {
      const failed = snapshotJob({
        state: 'failed',
        error: { code: 'SnapshotFailed', message: 'qemu-img: lock held' },
      });
      api
        .on('POST', '/volumes/vol-1/snapshots', {
          status: 202,
          body: { snapshot: snapshot(), job: snapshotJob() },
        })
        .on('GET', '/jobs/job-1', { status: 200, body: failed })
        .on('GET', '/snapshots/snap-1', { status: 200, body: snapshot({ status: 'Error' }) });

      const json = await runCli(['snapshots', 'take', 'vol-1', '--name', 'n', '--json'], { api });

      expect(json.code).toBe(1);
      expect(JSON.parse(json.stdout)).toEqual({ snapshot: snapshot({ status: 'Error' }), job: failed });
    });

    it.each([
      [['vol-1'], '--name is required'],
      [['--name', 'n'], 'missing <volumeId>'],
      [['vol-1', '--name', 'n', '--timeout', 'soon'], "--timeout: 'soon' is not a duration"],
    ])('rejects %j with a usage error and sends nothing', async (extra, message) => {
      const result = await runCli(['snapshots', 'take', ...extra], { api });

      expectUsageError(result, api, 'snapshots take', message);
    });
  });

  describe('backup', () => {
    const backupJob = snapshotJob({ kind: 'snapshot.backup' });

    it('POSTs the backup, follows the job and prints the counters', async () => {
      api
        .on('POST', '/snapshots/snap-1/backup', {
          status: 202,
          body: { snapshot: snapshot({ status: 'BackingUp' }), job: backupJob },
        })
        .on(
          'GET',
          '/jobs/job-1',
          {
            status: 200,
            body: {
              ...backupJob,
              state: 'running',
              progress: 40,
              progressDetail: { step: 'upload', bytesRead: GiB, chunksUploaded: 10 },
            },
          },
          { status: 200, body: { ...backupJob, state: 'succeeded', progress: 100, result: COUNTERS } },
        )
        .on('GET', '/snapshots/snap-1', { status: 200, body: snapshot({ status: 'BackedUp' }) });

      const result = await runCli(['snapshots', 'backup', 'snap-1'], { api });

      expect(result.code).toBe(0);
      expect(api.requests[0]).toMatchObject({ method: 'POST', path: '/snapshots/snap-1/backup' });
      expect(api.requests[0]!.headers['idempotency-key']).toMatch(UUID);
      expect(result.stderr).toContain('job job-1 running 40% (upload)');
      expect(result.stdout).toBe(
        'Backed up snapshot nightly (snap-1) of volume vol-1, status BackedUp.\n' +
          'Bytes read       2.0 GiB\n' +
          'Bytes uploaded   256.0 MiB\n' +
          'Chunks reused    448\n' +
          'Chunks uploaded  64\n' +
          'Incremental      yes\n',
      );
    });

    it('a full backup says incremental no; counters missing from the result come from the last progress', async () => {
      api
        .on('POST', '/snapshots/snap-1/backup', {
          status: 202,
          body: { snapshot: snapshot(), job: backupJob },
        })
        .on('GET', '/jobs/job-1', {
          status: 200,
          body: {
            ...backupJob,
            state: 'succeeded',
            progress: 100,
            progressDetail: { bytesRead: 3 * GiB },
            result: { bytesUploaded: 3 * GiB, chunksReused: 0, chunksUploaded: 768, incremental: false },
          },
        })
        .on('GET', '/snapshots/snap-1', { status: 200, body: snapshot({ status: 'BackedUp' }) });

      const result = await runCli(['snapshots', 'backup', 'snap-1'], { api });

      expect(result.stdout).toMatch(/^Bytes read\s+3\.0 GiB$/m);
      expect(result.stdout).toMatch(/^Chunks reused\s+0$/m);
      expect(result.stdout).toMatch(/^Incremental\s+no$/m);
    });

    it('-q prints the id only; --json the snapshot and the job with its counters', async () => {
      const done = { ...backupJob, state: 'succeeded', progress: 100, result: COUNTERS };
      api
        .on('POST', '/snapshots/snap-1/backup', {
          status: 202,
          body: { snapshot: snapshot(), job: backupJob },
        })
        .on('GET', '/jobs/job-1', { status: 200, body: done })
        .on('GET', '/snapshots/snap-1', { status: 200, body: snapshot({ status: 'BackedUp' }) });

      const quiet = await runCli(['snapshots', 'backup', 'snap-1', '-q'], { api });
      const json = await runCli(['snapshots', 'backup', 'snap-1', '--json'], { api });

      expect(quiet).toMatchObject({ code: 0, stdout: 'snap-1\n', stderr: '' });
      expect(JSON.parse(json.stdout)).toEqual({ snapshot: snapshot({ status: 'BackedUp' }), job: done });
    });

    it('--no-wait prints the job and does not poll', async () => {
      api.on('POST', '/snapshots/snap-1/backup', {
        status: 202,
        body: { snapshot: snapshot({ status: 'BackingUp' }), job: backupJob },
      });

      const result = await runCli(['snapshots', 'backup', 'snap-1', '--no-wait'], { api });

      expect(result).toMatchObject({ code: 0, stdout: 'Snapshot nightly (snap-1): job job-1 pending.\n' });
      expect(api.requests).toHaveLength(1);
    });
  });

  describe('revert', () => {
    const revertJob = snapshotJob({
      kind: 'snapshot.revert',
      state: 'succeeded',
      progress: 100,
      result: { snapshotId: 'snap-1', volumeId: 'vol-1' },
    });

    it('POSTs the revert, follows the job and prints the reverted volume', async () => {
      api.acceptJob('POST', '/snapshots/snap-1/revert', revertJob);

      const result = await runCli(['snapshots', 'revert', 'snap-1'], { api });

      expect(result).toMatchObject({ code: 0, stdout: 'Reverted volume vol-1 to snapshot snap-1.\n' });
      expect(api.requests[0]).toMatchObject({ method: 'POST', path: '/snapshots/snap-1/revert' });
      expect(api.requests[0]!.headers['idempotency-key']).toMatch(UUID);
      expect(api.calls()).toEqual(['POST /snapshots/snap-1/revert', 'GET /jobs/job-1']);
      expect(result.stderr).toBe('job job-1 pending\njob job-1 succeeded\n');
    });

    it('-q prints the snapshot id; --json the finished job', async () => {
      api.acceptJob('POST', '/snapshots/snap-1/revert', revertJob);

      const quiet = await runCli(['snapshots', 'revert', 'snap-1', '-q'], { api });
      const json = await runCli(['snapshots', 'revert', 'snap-1', '--json'], { api });

      expect(quiet).toMatchObject({ code: 0, stdout: 'snap-1\n', stderr: '' });
      expect(JSON.parse(json.stdout)).toEqual({ job: revertJob });
    });

    it('--no-wait prints the job and does not poll', async () => {
      api.acceptJob('POST', '/snapshots/snap-1/revert', revertJob);

      const result = await runCli(['snapshots', 'revert', 'snap-1', '--no-wait'], { api });

      expect(result).toMatchObject({
        code: 0,
        stdout: 'Reverting to snapshot snap-1: job job-1 pending.\n',
        stderr: 'Follow it with: strata jobs wait job-1\n',
      });
      expect(api.calls()).toEqual(['POST /snapshots/snap-1/revert']);
    });

    it('--json prints the failed job too, and exits 1', async () => {
      const failedJob = snapshotJob({
        kind: 'snapshot.revert',
        state: 'failed',
        error: { code: 'RevertFailed', message: 'qemu-img: image is in use' },
      });
      api.acceptJob('POST', '/snapshots/snap-1/revert', failedJob);

      const result = await runCli(['snapshots', 'revert', 'snap-1', '--json'], { api });

      expect(result.code).toBe(1);
      expect(result.stderr).toContain(
        'Error: job job-1 (snapshot.revert) failed: RevertFailed: qemu-img: image is in use\n',
      );
      expect(JSON.parse(result.stdout)).toEqual({ job: failedJob });
    });

    it('an API that answers without a job is an error, not a crash', async () => {
      api.on('POST', '/snapshots/snap-1/revert', { status: 200, body: { reverted: true } });

      const result = await runCli(['snapshots', 'revert', 'snap-1'], { api });

      expect(result.code).toBe(1);
      expect(result.stderr).toContain(
        'Error: the API answered POST /snapshots/snap-1/revert with 200 but no job to follow; is it older than this CLI?\n',
      );
      expect(result.stdout).toBe('');
    });
  });

  describe('delete', () => {
    const deleteJob = (removed: string[]) =>
      snapshotJob({
        kind: 'snapshot.delete',
        state: 'succeeded',
        progress: 100,
        result: { snapshotId: 'snap-1', removed },
      });

    it('DELETEs the snapshot (all copies by default), follows the job and names the stores', async () => {
      api.acceptJob('DELETE', '/snapshots/snap-1', deleteJob(['st-1', 'st-9']));

      const human = await runCli(['snapshots', 'delete', 'snap-1'], { api });

      expect(human).toMatchObject({ code: 0, stdout: 'Deleted snapshot snap-1 from stores st-1, st-9.\n' });
      expect(api.requests[0]).toMatchObject({ method: 'DELETE', path: '/snapshots/snap-1', query: {} });
      expect(api.requests[0]!.headers['idempotency-key']).toMatch(UUID);
      expect(api.calls()).toEqual(['DELETE /snapshots/snap-1', 'GET /jobs/job-1']);
    });

    it('-q prints the id; --json the finished job', async () => {
      api.acceptJob('DELETE', '/snapshots/snap-1', deleteJob(['st-1']));

      const quiet = await runCli(['snapshots', 'delete', 'snap-1', '-q'], { api });
      const json = await runCli(['snapshots', 'delete', 'snap-1', '--json'], { api });

      expect(quiet.stdout).toBe('snap-1\n');
      expect(JSON.parse(json.stdout)).toEqual({ job: deleteJob(['st-1']) });
    });

    it.each([
      ['primary', ['st-1'], 'Deleted the primary copy of snapshot snap-1 from store st-1.\n'],
      ['image', ['st-9'], 'Deleted the backup of snapshot snap-1 from store st-9.\n'],
      ['all', ['st-1', 'st-9'], 'Deleted snapshot snap-1 from stores st-1, st-9.\n'],
      ['image', [], 'Deleted the backup of snapshot snap-1; no store held a copy to remove.\n'],
    ])('--from %s is passed through (removed %j)', async (from, removed, sentence) => {
      api.acceptJob('DELETE', '/snapshots/snap-1', deleteJob(removed));

      const result = await runCli(['snapshots', 'delete', 'snap-1', '--from', from], { api });

      expect(result).toMatchObject({ code: 0, stdout: sentence });
      expect(api.requests[0]!.query).toEqual({ from });
    });

    it('--no-wait prints the job and does not poll', async () => {
      api.acceptJob('DELETE', '/snapshots/snap-1', deleteJob(['st-1']));

      const result = await runCli(['snapshots', 'delete', 'snap-1', '--from', 'primary', '--no-wait'], {
        api,
      });

      expect(result).toMatchObject({
        code: 0,
        stdout: 'Deleting the primary copy of snapshot snap-1: job job-1 pending.\n',
      });
      expect(api.calls()).toEqual(['DELETE /snapshots/snap-1']);
    });

    it('exits 1 with the job error when the delete fails', async () => {
      api.acceptJob(
        'DELETE',
        '/snapshots/snap-1',
        snapshotJob({
          kind: 'snapshot.delete',
          state: 'failed',
          error: { code: 'SnapshotDeleteFailed', message: 'store st-1 is unreachable' },
        }),
      );

      const result = await runCli(['snapshots', 'delete', 'snap-1'], { api });

      expect(result.code).toBe(1);
      expect(result.stderr).toContain(
        'Error: job job-1 (snapshot.delete) failed: SnapshotDeleteFailed: store st-1 is unreachable\n',
      );
      expect(result.stdout).toBe('');
    });

    it('refuses an unknown --from and sends nothing', async () => {
      const result = await runCli(['snapshots', 'delete', 'snap-1', '--from', 'backup'], { api });

      expect(result.code).toBe(2);
      expect(result.stderr).toContain("--from: 'backup' is not one of primary, image, all");
      expect(api.requests).toHaveLength(0);
    });

    it('refuses a malformed --timeout before sending the delete', async () => {
      const result = await runCli(['snapshots', 'delete', 'snap-1', '--timeout', 'soon'], { api });

      expectUsageError(result, api, 'snapshots delete', '--timeout');
    });
  });

  describe('restore', () => {
    const restoreJob = job({ kind: 'volume.create', target: { type: 'volume', id: 'vol-2' } });

    it('POSTs a volume from the snapshot, follows the job and shows the volume', async () => {
      api
        .on('POST', '/volumes', {
          status: 202,
          body: { volume: volume({ status: 'Allocated' }), job: restoreJob },
        })
        .on('GET', '/jobs/job-1', { status: 200, body: { ...restoreJob, state: 'succeeded', progress: 100 } })
        .on('GET', '/volumes/vol-2', { status: 200, body: volume() });

      const result = await runCli(
        ['snapshots', 'restore', 'snap-1', '--name', 'restored', '--zone', 'zone-1'],
        { api },
      );

      expect(result.code).toBe(0);
      const post = api.requests[0]!;
      expect(post).toMatchObject({ method: 'POST', path: '/volumes', query: {} });
      expect(post.body).toEqual({ name: 'restored', zoneId: 'zone-1', fromSnapshotId: 'snap-1' });
      expect(post.headers['idempotency-key']).toMatch(UUID);
      expect(api.requests.map((r) => `${r.method} ${r.path}`)).toEqual([
        'POST /volumes',
        'GET /jobs/job-1',
        'GET /volumes/vol-2',
      ]);
      expect(result.stdout).toBe(
        'Restored snapshot snap-1 to volume restored (vol-2), 10.0 GiB on store st-1, status Ready.\n',
      );
    });

    it('sends --store and --size; --no-wait prints the job', async () => {
      api.on('POST', '/volumes', {
        status: 202,
        body: { volume: volume({ status: 'Allocated' }), job: restoreJob },
      });

      const result = await runCli(
        [
          'snapshots',
          'restore',
          'snap-1',
          '--name',
          'restored',
          '--zone',
          'zone-1',
          '--store',
          'st-2',
          '--size',
          '20G',
          '--no-wait',
        ],
        { api },
      );

      expect(result).toMatchObject({ code: 0, stdout: 'Volume restored (vol-2): job job-1 pending.\n' });
      expect(api.requests).toHaveLength(1);
      expect(api.requests[0]!.body).toEqual({
        name: 'restored',
        zoneId: 'zone-1',
        fromSnapshotId: 'snap-1',
        storeId: 'st-2',
        sizeBytes: 20 * GiB,
      });
    });

    it('shows an API error on the snapshot as the <id> argument', async () => {
      api.on('POST', '/volumes', {
        status: 422,
        body: {
          error: {
            code: 'Unprocessable',
            message: 'snapshot snap-1 has no Ready copy',
            field: 'fromSnapshotId',
          },
        },
      });

      const result = await runCli(['snapshots', 'restore', 'snap-1', '--name', 'r', '--zone', 'z'], { api });

      expect(result.code).toBe(1);
      expect(result.stderr).toContain('  field: fromSnapshotId (set with the <id> argument)\n');
    });

    it.each([
      [['snap-1', '--zone', 'z'], '--name is required'],
      [['snap-1', '--name', 'r'], '--zone is required'],
      [['snap-1', '--name', 'r', '--zone', 'z', '--size', '0'], "--size: '0' is not a positive size"],
      [['--name', 'r', '--zone', 'z'], 'missing <id>'],
    ])('rejects %j with a usage error and sends nothing', async (extra, message) => {
      const result = await runCli(['snapshots', 'restore', ...extra], { api });

      expectUsageError(result, api, 'snapshots restore', message);
    });
  });

  describe('a job that fails', () => {
    it.each([
      ['take', ['vol-1', '--name', 'n'], '/volumes/vol-1/snapshots', 'SnapshotFailed', 'qemu-img: lock held'],
      ['backup', ['snap-1'], '/snapshots/snap-1/backup', 'BackupFailed', 'image store st-9 is down'],
      ['revert', ['snap-1'], '/snapshots/snap-1/revert', 'RevertFailed', 'no host'],
    ])('%s exits 1 with the job error and prints nothing', async (verb, args, path, code, message) => {
      const kind = `snapshot.${verb}`;
      const failed = snapshotJob({ kind, state: 'failed', error: { code, message } });
      // A revert answers with a bare job; the others with the snapshot and a job to follow.
      const answer =
        verb === 'revert'
          ? { status: 202, body: { job: snapshotJob({ kind }) } }
          : { status: 202, body: { snapshot: snapshot(), job: snapshotJob({ kind }) } };
      api
        .on('POST', path, answer)
        .on('GET', '/jobs/job-1', { status: 200, body: failed })
        .on('GET', '/snapshots/snap-1', { status: 200, body: snapshot() });

      const result = await runCli(['snapshots', verb, ...args], { api });

      expect(result.code).toBe(1);
      expect(result.stderr).toContain(`Error: job job-1 (${kind}) failed: ${code}: ${message}\n`);
      expect(result.stdout).toBe('');
    });
  });

  describe('a request refused with a conflict (409)', () => {
    it.each([
      [
        'take',
        ['vol-1', '--name', 'n'],
        'POST /volumes/vol-1/snapshots',
        'volume vol-1',
        'Migrating',
        'volume vol-1 is Migrating; snapshots are taken of Ready volumes (strata jobs list --target vol-1 --state running)',
      ],
      [
        'backup',
        ['snap-1'],
        'POST /snapshots/snap-1/backup',
        'snapshot snap-1',
        'BackingUp',
        'snapshot snap-1 is BackingUp; try again when its job ends (strata jobs list --target snap-1 --state running)',
      ],
      [
        'revert',
        ['snap-1'],
        'POST /snapshots/snap-1/revert',
        'snapshot snap-1',
        'Destroying',
        'a revert needs the snapshot on primary storage (CreatedOnPrimary or BackedUp) and its volume Ready; see: strata snapshots get snap-1',
      ],
      [
        'delete',
        ['snap-1'],
        'DELETE /snapshots/snap-1',
        'snapshot snap-1',
        'Creating',
        'snapshot snap-1 is Creating; try again when its job ends (strata jobs list --target snap-1 --state running)',
      ],
    ])('%s shows the error and its state, with a hint', async (verb, args, route, subject, state, hint) => {
      const [method, path] = route.split(' ') as [string, string];
      api.on(method, path, {
        status: 409,
        body: { error: { code: 'Conflict', message: `${subject} is ${state}`, state } },
      });

      const result = await runCli(['snapshots', verb, ...args], { api });

      expect(result.code).toBe(1);
      expect(result.stderr).toBe(
        `Error: ${subject} is ${state}\n  state: ${state}\n  code:  Conflict (HTTP 409)\nHint: ${hint}\n`,
      );
    });
  });

  it('the group is listed in the root help and its own help lists every command', async () => {
    const root = await runCli(['--help']);
    const group = await runCli(['snapshots', '--help']);

    expect(root.stdout).toMatch(/^ {2}snapshots\s+volume snapshots:/m);
    for (const name of ['list', 'get', 'take', 'backup', 'revert', 'delete', 'restore']) {
      expect(group.stdout).toMatch(new RegExp(`^ {2}${name}\\s{2,}`, 'm'));
    }
  });
});
