import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  type Answer,
  expectUsageError,
  FakeApi,
  job,
  type RecordedRequest,
  runCli,
  UUID,
} from './fake-api.js';

const MiB = 2 ** 20;
const PART_SIZE = 5 * MiB;

function template(overrides: Record<string, unknown> = {}) {
  return {
    id: 'tpl-1',
    name: 'debian-12',
    type: 'template',
    format: 'qcow2',
    status: 'Uploading',
    copies: [{ storeId: 'st-9', status: 'Uploading', refCount: 0 }],
    version: 1,
    createdAt: '2025-06-01T11:59:00.000Z',
    updatedAt: '2025-06-01T11:59:00.000Z',
    ...overrides,
  };
}

const uploadJob = (overrides: Record<string, unknown> = {}) =>
  job({ kind: 'template.upload', target: { type: 'Template', id: 'tpl-1' }, ...overrides });

/**
 * The fake presigned-upload endpoint: part URLs on the same fake server (outside the API's paths),
 * each PUT recorded, answered with an ETag by default. The fake records bodies as UTF-8 text, so the
 * test files are ASCII, which round-trips byte for byte.
 */
class PresignedParts {
  readonly bodies = new Map<number, string>();

  constructor(
    private readonly api: FakeApi,
    readonly uploadId = 'up-1',
  ) {}

  url(partNumber: number): string {
    return `${this.api.url}${this.path(partNumber)}?X-Amz-Signature=sig-${partNumber}&X-Amz-Expires=3600`;
  }

  path(partNumber: number): string {
    return `/presigned/${this.uploadId}/${partNumber}`;
  }

  ok(partNumber: number): Answer {
    return (request: RecordedRequest) => {
      this.bodies.set(partNumber, request.rawBody);
      return { status: 200, headers: { etag: `"etag-${partNumber}"` } };
    };
  }

  /** Serves parts 1..count; `answers` replaces the default for a part. */
  serve(count: number, answers: Record<number, Answer[]> = {}): void {
    for (let n = 1; n <= count; n++) this.api.on('PUT', this.path(n), ...(answers[n] ?? [this.ok(n)]));
  }

  puts(): RecordedRequest[] {
    return this.api.requests.filter((request) => request.method === 'PUT');
  }

  reassembled(): string {
    return [...this.bodies.entries()]
      .sort(([a], [b]) => a - b)
      .map(([, body]) => body)
      .join('');
  }
}

const INTERNAL_ERROR = {
  status: 500,
  raw: '<?xml version="1.0"?><Error><Code>InternalError</Code><Message>We encountered an internal error.</Message></Error>',
  headers: { 'content-type': 'application/xml' },
};

describe('strata templates upload', () => {
  let api: FakeApi;
  let parts: PresignedParts;
  let dir: string;
  let file: string;
  let content: Buffer;
  let sha256: string;

  /** ASCII content (see PresignedParts) that differs everywhere, so a misplaced range shows. */
  function writeImage(name: string, size: number): string {
    const path = join(dir, name);
    content = Buffer.from(
      randomBytes(Math.ceil((size * 3) / 4) + 3)
        .toString('base64')
        .slice(0, size),
      'ascii',
    );
    writeFileSync(path, content);
    sha256 = createHash('sha256').update(content).digest('hex');
    return path;
  }

  /** The API side: start answers with the parts (in a scrambled order), complete starts the job. */
  function serveApi(
    partCount: number,
    jobAnswers: Answer[] = [{ status: 200, body: uploadJob({ state: 'succeeded', progress: 100 }) }],
  ) {
    const order = [...Array(partCount).keys()].map((i) => i + 1).reverse();
    api
      .on('POST', '/templates/uploads', () => ({
        status: 201,
        body: {
          template: template(),
          upload: {
            uploadId: parts.uploadId,
            storeId: 'st-9',
            partSizeBytes: PART_SIZE,
            parts: order.map((partNumber) => ({ partNumber, url: parts.url(partNumber) })),
            expiresAt: '2025-06-01T13:00:00.000Z',
          },
        },
      }))
      .on('POST', '/templates/tpl-1/uploads/up-1/complete', {
        status: 202,
        body: { template: template({ status: 'Verifying' }), job: uploadJob() },
        headers: { location: '/jobs/job-1' },
      })
      .on('DELETE', '/templates/tpl-1/uploads/up-1', { status: 204 })
      .on('GET', '/jobs/job-1', ...jobAnswers)
      .on('GET', '/templates/tpl-1', {
        status: 200,
        body: template({
          status: 'Ready',
          virtualSizeBytes: 2 ** 31,
          copies: [{ storeId: 'st-9', status: 'Ready', refCount: 0 }],
        }),
      });
  }

  const calls = () => api.requests.filter((r) => r.method !== 'PUT').map((r) => `${r.method} ${r.path}`);

  beforeEach(async () => {
    api = await new FakeApi().start();
    parts = new PresignedParts(api);
    dir = mkdtempSync(join(tmpdir(), 'strata-cli-upload-'));
    file = writeImage('debian-12.qcow2', 11 * MiB);
  });
  afterEach(async () => {
    await api.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('hashes the file, PUTs exactly each byte range, completes with the ETags in order and waits', async () => {
    serveApi(3);
    parts.serve(3);

    const result = await runCli(['templates', 'upload', file, '--name', 'debian-12', '--zone', 'zone-1'], {
      api,
    });

    expect(result.code).toBe(0);
    expect(calls()).toEqual([
      'POST /templates/uploads',
      'POST /templates/tpl-1/uploads/up-1/complete',
      'GET /jobs/job-1',
      'GET /templates/tpl-1',
    ]);
    const start = api.requests[0]!;
    expect(start.headers['idempotency-key']).toMatch(UUID);
    expect(start.body).toEqual({
      name: 'debian-12',
      format: 'qcow2',
      type: 'template',
      sizeBytes: 11 * MiB,
      checksum: `{sha256}${sha256}`,
      zoneId: 'zone-1',
    });

    // Each part is its slice of the file: 5 MiB, 5 MiB, 1 MiB.
    expect(parts.bodies.get(1)).toBe(content.subarray(0, PART_SIZE).toString('ascii'));
    expect(parts.bodies.get(2)).toBe(content.subarray(PART_SIZE, 2 * PART_SIZE).toString('ascii'));
    expect(parts.bodies.get(3)).toBe(content.subarray(2 * PART_SIZE).toString('ascii'));
    expect(Buffer.from(parts.reassembled(), 'ascii').equals(content)).toBe(true);

    // Plain PUTs to the presigned URLs: the signature in the query, nothing of the API's headers.
    const puts = parts.puts();
    expect(puts).toHaveLength(3);
    for (const put of puts) {
      const n = Number(put.path.split('/').at(-1));
      expect(put.query['X-Amz-Signature']).toBe(`sig-${n}`);
      expect(put.headers['content-length']).toBe(String(n === 3 ? MiB : PART_SIZE));
      expect(put.headers['transfer-encoding']).toBeUndefined();
      for (const header of ['authorization', 'idempotency-key', 'content-type', 'x-amz-date']) {
        expect(put.headers[header]).toBeUndefined();
      }
    }

    expect(api.requests.find((r) => r.path.endsWith('/complete'))!.body).toEqual({
      parts: [
        { partNumber: 1, etag: '"etag-1"' },
        { partNumber: 2, etag: '"etag-2"' },
        { partNumber: 3, etag: '"etag-3"' },
      ],
    });
    expect(result.stdout).toBe('Uploaded template debian-12 (tpl-1), status Ready.\n');
  });

  it('shows the hashing and upload progress as plain lines, then the verification job', async () => {
    serveApi(3, [
      {
        status: 200,
        body: uploadJob({ state: 'running', progress: 50, progressDetail: { step: 'inspect' } }),
      },
      { status: 200, body: uploadJob({ state: 'succeeded', progress: 100 }) },
    ]);
    parts.serve(3);

    const result = await runCli(['templates', 'upload', file, '--name', 'debian-12'], { api });

    expect(result.code).toBe(0);
    const lines = result.stderr.trimEnd().split('\n');
    const upload = lines.filter((line) => line.startsWith('upload '));
    // One line per tenth reached (the amount is where the 64 KiB reads were at that moment), then the end.
    expect(upload.map((line) => line.replace(/\(\d+\.\d MiB of/, '(… of'))).toEqual([
      ...[10, 20, 30, 40, 50, 60, 70, 80, 90].map((p) => `upload ${p}% (… of 11.0 MiB)`),
      'upload 100% (… of 11.0 MiB)',
    ]);
    expect(upload.at(-1)).toBe('upload 100% (11.0 MiB of 11.0 MiB)');
    expect(lines).toContain('sha256 100% (11.0 MiB of 11.0 MiB)');
    expect(lines).toContain('Uploading 11.0 MiB to store st-9 in 3 part(s) for template debian-12 (tpl-1).');
    expect(lines.slice(-3)).toEqual([
      'job job-1 pending',
      'job job-1 running 50% (inspect)',
      'job job-1 succeeded',
    ]);
  });

  it('redraws one bar in place on a terminal', async () => {
    serveApi(3);
    parts.serve(3);

    const result = await runCli(['templates', 'upload', file, '--name', 'debian-12'], { api, tty: true });

    expect(result.code).toBe(0);
    expect(result.stderr).toContain('\rupload [------------------------]   0% ');
    expect(result.stderr).toContain('\rupload [########################] 100% 11.0 MiB of 11.0 MiB\x1b[K\n');
    expect(result.stderr).not.toMatch(/^upload \d+%/m);
  });

  it('is quiet with -q: only the template id', async () => {
    serveApi(3);
    parts.serve(3);

    const result = await runCli(['templates', 'upload', file, '--name', 'debian-12', '-q'], { api });

    expect(result).toMatchObject({ code: 0, stdout: 'tpl-1\n', stderr: '' });
  });

  it('retries a part that failed once with 500, or whose connection dropped', async () => {
    serveApi(3);
    parts.serve(3, { 2: [INTERNAL_ERROR, parts.ok(2)], 3: ['drop', parts.ok(3)] });

    const result = await runCli(['templates', 'upload', file, '--name', 'debian-12'], { api });

    expect(result.code).toBe(0);
    const attempts = parts.puts().map((put) => put.path);
    expect(attempts.filter((path) => path === parts.path(2))).toHaveLength(2);
    expect(attempts.filter((path) => path === parts.path(3))).toHaveLength(2);
    expect(Buffer.from(parts.reassembled(), 'ascii').equals(content)).toBe(true);
    expect(calls()).toContain('POST /templates/tpl-1/uploads/up-1/complete');
    // The bar is discounted for the failed attempts but never prints a step twice.
    const upload = result.stderr.split('\n').filter((line) => line.startsWith('upload '));
    expect(new Set(upload).size).toBe(upload.length);
    expect(upload.at(-1)).toBe('upload 100% (11.0 MiB of 11.0 MiB)');
  });

  it('aborts the upload when a part keeps failing after its retries', async () => {
    serveApi(3);
    parts.serve(3, { 2: [INTERNAL_ERROR] });

    const result = await runCli(['templates', 'upload', file, '--name', 'debian-12'], { api });

    expect(result.code).toBe(1);
    expect(parts.puts().filter((put) => put.path === parts.path(2))).toHaveLength(4);
    expect(calls()).toEqual(['POST /templates/uploads', 'DELETE /templates/tpl-1/uploads/up-1']);
    expect(api.last().headers['idempotency-key']).toMatch(UUID);
    const host = new URL(api.url).host;
    expect(result.stderr).toContain(
      `Error: part 2: HTTP 500 from ${host}: InternalError: We encountered an internal error. (gave up after 4 attempts)\n` +
        'Hint: upload up-1 of template tpl-1 was aborted; run the command again to retry\n',
    );
    expect(result.stdout).toBe('');
  });

  it('renews the URL of a part refused as expired, and uploads it with the fresh one', async () => {
    serveApi(3);
    parts.serve(3, {
      1: [
        {
          status: 403,
          raw: '<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>',
        },
        parts.ok(1),
      ],
    });
    api.on('POST', '/templates/tpl-1/uploads/up-1/parts', (request) => ({
      status: 200,
      body: {
        parts: (request.body as { partNumbers: number[] }).partNumbers.map((n) => ({
          partNumber: n,
          url: `${api.url}${parts.path(n)}?X-Amz-Signature=fresh-${n}`,
        })),
        expiresAt: '2025-06-01T13:00:00.000Z',
      },
    }));

    const result = await runCli(['templates', 'upload', file, '--name', 'debian-12', '--parallel', '1'], {
      api,
    });

    expect(result.code).toBe(0);
    const renewals = api.requests.filter((r) => r.path.endsWith('/parts'));
    expect(renewals.map((r) => r.body)).toEqual([{ partNumbers: [1] }]);
    // Each renewal has its own key: a replay would answer without URLs.
    expect(renewals[0]!.headers['idempotency-key']).toMatch(UUID);
    const part1 = parts.puts().filter((r) => r.path === parts.path(1));
    expect(part1.map((r) => r.query['X-Amz-Signature'])).toEqual(['sig-1', 'fresh-1']);
    expect(parts.reassembled()).toBe(content.toString('ascii'));
  });

  it('does not retry a 403 that is not an expiry, and says the URLs may have expired', async () => {
    serveApi(3);
    parts.serve(3, {
      1: [
        {
          status: 403,
          raw: '<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>',
        },
      ],
    });

    const result = await runCli(['templates', 'upload', file, '--name', 'debian-12', '--parallel', '1'], {
      api,
    });

    expect(result.code).toBe(1);
    expect(parts.puts()).toHaveLength(1);
    expect(result.stderr).toContain('part 1: HTTP 403');
    expect(result.stderr).toContain('AccessDenied: Access Denied\n');
    expect(result.stderr).toContain('Hint: the part URLs may have expired (at 2025-06-01T13:00:00.000Z)');
    expect(calls()).not.toContain('POST /templates/tpl-1/uploads/up-1/parts');
    expect(calls()).toContain('DELETE /templates/tpl-1/uploads/up-1');
  });

  it('renews, in one batch, URLs that expire within 5 minutes before starting their parts', async () => {
    // The start answer's URLs expire at 12:03, the command runs at 12:00 (FIXED_NOW).
    serveApi(3);
    api.on('POST', '/templates/uploads', {
      status: 201,
      body: {
        template: template(),
        upload: {
          uploadId: 'up-1',
          storeId: 'st-9',
          partSizeBytes: PART_SIZE,
          parts: [1, 2, 3].map((partNumber) => ({ partNumber, url: parts.url(partNumber) })),
          expiresAt: '2025-06-01T12:03:00.000Z',
        },
      },
    });
    parts.serve(3);
    api.on('POST', '/templates/tpl-1/uploads/up-1/parts', (request) => ({
      status: 200,
      body: {
        parts: (request.body as { partNumbers: number[] }).partNumbers.map((n) => ({
          partNumber: n,
          url: `${api.url}${parts.path(n)}?X-Amz-Signature=fresh-${n}`,
        })),
        expiresAt: '2025-06-01T13:00:00.000Z',
      },
    }));

    const result = await runCli(['templates', 'upload', file, '--name', 'debian-12', '--parallel', '1'], {
      api,
    });

    expect(result.code).toBe(0);
    const renewals = api.requests.filter((r) => r.path.endsWith('/parts'));
    expect(renewals.map((r) => r.body)).toEqual([{ partNumbers: [1, 2, 3] }]);
    expect(parts.puts().map((r) => r.query['X-Amz-Signature'])).toEqual(['fresh-1', 'fresh-2', 'fresh-3']);
    expect(parts.reassembled()).toBe(content.toString('ascii'));
  });

  it('asks for URLs when a replayed start answer carries none (url null)', async () => {
    serveApi(3);
    api.on('POST', '/templates/uploads', {
      status: 201,
      headers: { 'idempotent-replayed': 'true' },
      body: {
        template: template(),
        upload: {
          uploadId: 'up-1',
          storeId: 'st-9',
          partSizeBytes: PART_SIZE,
          parts: [1, 2, 3].map((partNumber) => ({ partNumber, url: null })),
          expiresAt: '2025-06-01T13:00:00.000Z',
        },
        grantsOmitted: true,
      },
    });
    parts.serve(3);
    api.on(
      'POST',
      '/templates/tpl-1/uploads/up-1/parts',
      // A renewal whose own answer was a replay (no URLs) is asked again under a new key.
      (request) => ({
        status: 200,
        body: {
          parts: (request.body as { partNumbers: number[] }).partNumbers.map((n) => ({
            partNumber: n,
            url: null,
          })),
          expiresAt: '2025-06-01T13:00:00.000Z',
          grantsOmitted: true,
        },
      }),
      (request) => ({
        status: 200,
        body: {
          parts: (request.body as { partNumbers: number[] }).partNumbers.map((n) => ({
            partNumber: n,
            url: `${api.url}${parts.path(n)}?X-Amz-Signature=fresh-${n}`,
          })),
          expiresAt: '2025-06-01T13:00:00.000Z',
        },
      }),
    );

    const result = await runCli(['templates', 'upload', file, '--name', 'debian-12', '--parallel', '2'], {
      api,
    });

    expect(result.code).toBe(0);
    const renewals = api.requests.filter((r) => r.path.endsWith('/parts'));
    expect(renewals.map((r) => r.body)).toEqual([{ partNumbers: [1, 2, 3] }, { partNumbers: [1, 2, 3] }]);
    expect(renewals[0]!.headers['idempotency-key']).not.toBe(renewals[1]!.headers['idempotency-key']);
    expect(parts.puts().every((r) => String(r.query['X-Amz-Signature']).startsWith('fresh-'))).toBe(true);
    expect(parts.reassembled()).toBe(content.toString('ascii'));
  });

  it('aborts the upload when completing it is refused, and shows the API error', async () => {
    serveApi(3);
    parts.serve(3);
    api.on('POST', '/templates/tpl-1/uploads/up-1/complete', {
      status: 400,
      body: { error: { code: 'VALIDATION', message: 'part 2 has the wrong size', field: 'parts' } },
    });

    const result = await runCli(['templates', 'upload', file, '--name', 'debian-12'], { api });

    expect(result.code).toBe(1);
    expect(result.stderr).toContain('Error: part 2 has the wrong size\n  field: parts\n');
    expect(result.stderr).toContain('Hint: upload up-1 of template tpl-1 was aborted');
    expect(calls().at(-1)).toBe('DELETE /templates/tpl-1/uploads/up-1');
  });

  it('exits 1 when the verification job fails (the server discards the upload itself)', async () => {
    serveApi(3, [
      {
        status: 200,
        body: uploadJob({ state: 'failed', error: { code: 'CHECKSUM_MISMATCH', message: 'sha256 differs' } }),
      },
    ]);
    parts.serve(3);

    const result = await runCli(['templates', 'upload', file, '--name', 'debian-12'], { api });

    expect(result.code).toBe(1);
    expect(result.stderr).toContain('job job-1 (template.upload) failed: CHECKSUM_MISMATCH: sha256 differs');
    expect(calls()).not.toContain('DELETE /templates/tpl-1/uploads/up-1');
  });

  it('aborts the upload on Ctrl-C and exits 130', async () => {
    serveApi(3);
    parts.serve(3, { 2: [{ status: 200, headers: { etag: '"late"' }, delayMs: 10_000 }] });
    const once = jest.spyOn(process, 'once');
    try {
      const running = runCli(['templates', 'upload', file, '--name', 'debian-12'], { api });
      while (!parts.puts().some((put) => put.path === parts.path(2))) {
        await new Promise((resolve) => setTimeout(resolve, 5));
      }
      const interrupt = once.mock.calls.find(([event]) => event === 'SIGINT')![1] as () => void;
      interrupt();

      const result = await running;

      expect(result.code).toBe(130);
      expect(result.stderr).toContain('Interrupted: upload up-1 of template tpl-1 was aborted.\n');
      expect(calls()).toEqual(['POST /templates/uploads', 'DELETE /templates/tpl-1/uploads/up-1']);
      expect(process.listeners('SIGINT')).not.toContain(interrupt);
    } finally {
      once.mockRestore();
    }
  });

  it('sends a known --checksum as given without reading the file twice, and --no-checksum none', async () => {
    serveApi(3);
    parts.serve(3);

    const given = await runCli(
      ['templates', 'upload', file, '--name', 'd', '--checksum', sha256.toUpperCase(), '--no-wait'],
      { api },
    );
    const none = await runCli(['templates', 'upload', file, '--name', 'd', '--no-checksum', '--no-wait'], {
      api,
    });

    expect(given.code).toBe(0);
    expect(given.stderr).not.toContain('sha256 ');
    const starts = api.requests.filter((r) => r.path === '/templates/uploads');
    expect(starts[0]!.body).toMatchObject({ checksum: sha256.toUpperCase() });
    expect(starts[1]!.body).not.toHaveProperty('checksum');
    expect(none.stdout).toBe('Template debian-12 (tpl-1): job job-1 pending.\n');
  });

  it('derives the format and type from the file: .iso, and .img by its qcow2 header', async () => {
    serveApi(1);
    parts.serve(1);
    const iso = writeImage('alpine.iso', 1024);
    const img = join(dir, 'cloud.img');
    writeFileSync(img, Buffer.concat([Buffer.from([0x51, 0x46, 0x49, 0xfb]), Buffer.alloc(1020)]));
    const raw = writeImage('disk.img', 1024);

    for (const path of [iso, img, raw]) {
      const result = await runCli(
        ['templates', 'upload', path, '--name', 'x', '--no-wait', '--store', 'st-9'],
        {
          api,
        },
      );
      expect(result.code).toBe(0);
    }

    const bodies = api.requests.filter((r) => r.path === '/templates/uploads').map((r) => r.body);
    expect(bodies).toMatchObject([
      { format: 'iso', type: 'iso', sizeBytes: 1024, storeId: 'st-9' },
      { format: 'qcow2', type: 'template' },
      { format: 'raw', type: 'template' },
    ]);
  });

  it('refuses parts that do not cover the file, and aborts', async () => {
    serveApi(2);
    parts.serve(2);

    const result = await runCli(['templates', 'upload', file, '--name', 'debian-12'], { api });

    expect(result.code).toBe(1);
    expect(result.stderr).toContain(
      'the API offered parts [1, 2] for 11534336 bytes in parts of 5242880; expected 1..3',
    );
    expect(parts.puts()).toHaveLength(0);
    expect(calls()).toEqual(['POST /templates/uploads', 'DELETE /templates/tpl-1/uploads/up-1']);
  });

  it('shows an API error on start with its field', async () => {
    api.on('POST', '/templates/uploads', {
      status: 400,
      body: { error: { code: 'VALIDATION', message: 'image too large for any store', field: 'sizeBytes' } },
    });

    const result = await runCli(['templates', 'upload', file, '--name', 'debian-12', '--no-checksum'], {
      api,
    });

    expect(result.code).toBe(1);
    expect(result.stderr).toBe(
      'Error: image too large for any store\n' +
        '  field: sizeBytes (set with the <file> argument)\n' +
        '  code:  VALIDATION (HTTP 400)\n',
    );
  });

  it.each([
    [['--format', 'vdi'], "--format: 'vdi' is not one of qcow2, raw, vhd, vmdk, iso"],
    [['--checksum', 'abc'], "--checksum: 'abc' is not a sha256 checksum"],
    [['--checksum', 'a'.repeat(64), '--no-checksum'], '--checksum and --no-checksum contradict each other'],
    [['--zone', 'z', '--store', 's'], 'give --zone or --store, not both'],
    [['--parallel', '0'], "--parallel: '0' is not a whole number from 1 to 32"],
    [['--parallel', 'many'], "--parallel: 'many' is not a whole number"],
  ])('rejects %j with a usage error and sends nothing', async (extra, message) => {
    const result = await runCli(['templates', 'upload', file, '--name', 'n', ...extra], { api });

    expectUsageError(result, api, 'templates upload', message);
  });

  it.each([
    ['a missing file', () => join(dir, 'nope.qcow2'), "cannot read '", 'ENOENT'],
    ['a directory', () => dir, 'is not a regular file', ''],
    ['an empty file', () => writeImage('empty.qcow2', 0), 'is empty', ''],
    [
      'an unknown extension',
      () => writeImage('disk.bin', 10),
      "cannot tell the format of 'disk.bin'",
      '--format',
    ],
  ])('refuses %s with a usage error', async (_, path, message, more) => {
    const result = await runCli(['templates', 'upload', path(), '--name', 'n'], { api });

    expect(result.code).toBe(2);
    expect(result.stderr).toContain(message);
    expect(result.stderr).toContain(more);
    expect(api.requests).toHaveLength(0);
  });

  it('requires <file> and --name', async () => {
    const noFile = await runCli(['templates', 'upload', '--name', 'n'], { api });
    const noName = await runCli(['templates', 'upload', file], { api });

    expect(noFile.stderr).toContain('missing <file>');
    expect(noName.stderr).toContain('--name is required');
    expect([noFile.code, noName.code]).toEqual([2, 2]);
  });
});
