/**
 * downloadToFile against a real HTTP server on 127.0.0.1 that serves byte ranges the way S3 does
 * (206 with Content-Range, a strong ETag, If-Match answered with 412), and misbehaves on purpose:
 * an object that changes mid-download, a server without range support, ranges that break, answer
 * 503 or stall, an object without ETag.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type DownloadOptions, downloadToFile } from '../../../drivers/nfs/download.js';

jest.setTimeout(30_000);

const KiB = 1024;
const SIZE = 3 * 1024 * KiB + 123; // not a multiple of the part size: the last range is short
const v1 = randomBytes(SIZE);
const v2 = randomBytes(SIZE);
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

interface Route {
  /** The object's bytes and ETag for the n-th request to this route (0-based). */
  version(n: number): { body: Buffer; etag?: string };
  ranges?: boolean;
  honoursIfMatch?: boolean;
  /** Misbehaviour for the n-th request: cut after some bytes, answer a status, or stall. */
  fault?(n: number, range: { start: number; end: number } | undefined): 'cut' | 'stall' | number | undefined;
}

let server: Server;
let base: string;
let dir: string;
const requests = new Map<string, Array<{ range?: string; ifMatch?: string }>>();
let inFlight = 0;
let maxInFlight = 0;
const stalled = new Set<ServerResponse>();

const routes: Record<string, Route> = {
  '/obj': { version: () => ({ body: v1, etag: '"v1"' }), ranges: true, honoursIfMatch: true },
  // Replaced after the third request; S3 answers the pinned ranges with 412.
  '/changes': {
    version: (n) => (n < 3 ? { body: v1, etag: '"v1"' } : { body: v2, etag: '"v2"' }),
    ranges: true,
    honoursIfMatch: true,
  },
  // Replaced too, by a server that ignores If-Match: the new ETag on the answer gives it away.
  '/changes-quietly': {
    version: (n) => (n < 3 ? { body: v1, etag: '"v1"' } : { body: v2, etag: '"v2"' }),
    ranges: true,
  },
  '/no-ranges': { version: () => ({ body: v1, etag: '"v1"' }) },
  '/no-etag': { version: () => ({ body: v1 }), ranges: true },
  '/weak-etag': { version: () => ({ body: v1, etag: 'W/"v1"' }), ranges: true },
  // The second request breaks off half-way, the third answers 503, the fourth stalls.
  '/flaky': {
    version: () => ({ body: v1, etag: '"v1"' }),
    ranges: true,
    honoursIfMatch: true,
    fault: (n) => (n === 1 ? 'cut' : n === 2 ? 503 : n === 3 ? 'stall' : undefined),
  },
  // The first GET breaks before any byte: retried too.
  '/first-fails': {
    version: () => ({ body: v1, etag: '"v1"' }),
    ranges: true,
    fault: (n) => (n === 0 ? 500 : undefined),
  },
  // Every ranged request after the first fails: the download gives up.
  '/broken': {
    version: () => ({ body: v1, etag: '"v1"' }),
    ranges: true,
    fault: (n) => (n > 0 ? 503 : undefined),
  },
  '/forbidden-range': {
    version: () => ({ body: v1, etag: '"v1"' }),
    ranges: true,
    fault: (n) => (n > 0 ? 403 : undefined),
  },
  '/small': { version: () => ({ body: v1.subarray(0, 100 * KiB), etag: '"s"' }), ranges: true },
  '/empty': { version: () => ({ body: Buffer.alloc(0), etag: '"e"' }), ranges: true },
};

function serve(req: IncomingMessage, res: ServerResponse): void {
  const path = new URL(req.url ?? '/', 'http://x').pathname;
  const route = routes[path];
  if (!route) {
    res.writeHead(404).end();
    return;
  }
  const seen = requests.get(path) ?? [];
  const n = seen.length;
  seen.push({
    ...(req.headers.range ? { range: req.headers.range } : {}),
    ...(req.headers['if-match'] ? { ifMatch: String(req.headers['if-match']) } : {}),
  });
  requests.set(path, seen);
  const { body, etag } = route.version(n);
  const asked = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '');
  let range: { start: number; end: number } | undefined;
  if (asked && route.ranges) {
    const start = Number(asked[1]);
    if (start >= body.length) {
      res.writeHead(416, { 'content-range': `bytes */${body.length}` }).end();
      return;
    }
    range = { start, end: Math.min(Number(asked[2]), body.length - 1) };
  }
  const fault = route.fault?.(n, range);
  if (typeof fault === 'number') {
    res.writeHead(fault).end();
    return;
  }
  const ifMatch = req.headers['if-match'];
  if (route.honoursIfMatch && ifMatch !== undefined && ifMatch !== etag) {
    res.writeHead(412).end();
    return;
  }
  const bytes = range ? body.subarray(range.start, range.end + 1) : body;
  const headers: Record<string, string> = {
    'content-length': String(bytes.length),
    'content-type': 'application/octet-stream',
    ...(etag ? { etag } : {}),
    ...(route.ranges ? { 'accept-ranges': 'bytes' } : {}),
    ...(range ? { 'content-range': `bytes ${range.start}-${range.end}/${body.length}` } : {}),
  };
  // Counted from arrival; each answer waits a little, so that requests sent together overlap here.
  inFlight++;
  maxInFlight = Math.max(maxInFlight, inFlight);
  res.on('close', () => inFlight--);
  setTimeout(() => answer(res, range ? 206 : 200, headers, bytes, fault), 20);
}

function answer(
  res: ServerResponse,
  status: number,
  headers: Record<string, string>,
  bytes: Buffer,
  fault: 'cut' | 'stall' | undefined,
): void {
  res.writeHead(status, headers);
  if (fault === 'cut') {
    res.write(bytes.subarray(0, Math.floor(bytes.length / 2)), () => res.destroy());
  } else if (fault === 'stall') {
    stalled.add(res);
    res.write(bytes.subarray(0, 1024));
  } else {
    let offset = 0;
    const step = () => {
      if (res.destroyed) return;
      if (offset >= bytes.length) {
        res.end();
        return;
      }
      const piece = bytes.subarray(offset, offset + 64 * KiB);
      offset += piece.length;
      if (res.write(piece)) setImmediate(step);
      else res.once('drain', step);
    };
    step();
  }
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'strata-ranged-'));
  server = createServer(serve);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(async () => {
  for (const res of stalled) res.destroy();
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  await rm(dir, { recursive: true, force: true });
});
beforeEach(() => {
  requests.clear();
  maxInFlight = 0;
});

// Small sizes so a 3 MiB object is many ranges: a 512 KiB first GET, then 256 KiB parts.
const tuned: DownloadOptions = {
  rangedMinBytes: 512 * KiB,
  partBytes: 256 * KiB,
  streams: 4,
  backoffMs: 10,
  stallTimeoutMs: 500,
};
let fileNumber = 0;
const download = async (path: string, options: DownloadOptions = {}) => {
  const file = join(dir, `out-${++fileNumber}`);
  const result = await downloadToFile(`${base}${path}?X-Amz-Signature=secret`, file, {
    ...tuned,
    ...options,
  });
  return { result, bytes: await readFile(file) };
};
const failure = (promise: Promise<unknown>) =>
  promise.then(
    () => undefined,
    (e: { code?: string; retryable?: boolean; message: string }) => ({
      code: e.code,
      retryable: e.retryable,
      message: e.message,
    }),
  );

describe('downloadToFile with ranged GETs', () => {
  it('fetches a large object in parallel ranges pinned to its ETag, byte for byte, hashed in order', async () => {
    const progress: number[] = [];
    const { result, bytes } = await download('/obj', {
      expectedSha256: sha(v1),
      expectedBytes: SIZE,
      onBytes: (b) => progress.push(b),
    });

    expect(bytes.equals(v1)).toBe(true);
    expect(result).toEqual({ bytes: SIZE, sha256: sha(v1), streams: 4, etag: '"v1"' });
    const seen = requests.get('/obj')!;
    // The first GET asks for the first 512 KiB; the rest comes in 256 KiB ranges, each If-Match'ed.
    expect(seen[0]).toEqual({ range: `bytes=0-${512 * KiB - 1}` });
    expect(seen.length).toBe(1 + Math.ceil((SIZE - 512 * KiB) / (256 * KiB)));
    expect(seen.slice(1).every((r) => r.ifMatch === '"v1"' && /^bytes=\d+-\d+$/.test(r.range ?? ''))).toBe(
      true,
    );
    expect(maxInFlight).toBeGreaterThan(1);
    expect(maxInFlight).toBeLessThanOrEqual(4);
    expect(progress.at(-1)).toBe(SIZE);
  });

  it('fails clearly, not retryable, when the object changes mid-download (412 on If-Match)', async () => {
    const outcome = await failure(download('/changes'));

    expect(outcome).toMatchObject({ code: 'SourceChanged', retryable: false });
    expect(outcome?.message).toContain('changed during the download');
    expect(outcome?.message).toContain('412');
    // The signed query string is a credential: never in a message.
    expect(outcome?.message).not.toContain('secret');
  });

  it('notices a changed ETag from a server that ignores If-Match', async () => {
    const outcome = await failure(download('/changes-quietly'));

    expect(outcome).toMatchObject({ code: 'SourceChanged', retryable: false });
    expect(outcome?.message).toContain('"v2"');
  });

  it('refuses an object that is not the version the caller pinned', async () => {
    const outcome = await failure(download('/obj', { etag: '"v0"' }));

    expect(outcome).toMatchObject({ code: 'SourceChanged', retryable: false });
    expect(requests.get('/obj')?.[0]?.ifMatch).toBe('"v0"');
  });

  it('falls back to one stream on a server without range support', async () => {
    const { result, bytes } = await download('/no-ranges', { expectedSha256: sha(v1) });

    expect(bytes.equals(v1)).toBe(true);
    expect(result).toEqual({ bytes: SIZE, sha256: sha(v1), streams: 1 });
    expect(requests.get('/no-ranges')?.length).toBe(1);
  });

  it.each([
    ['no ETag', '/no-etag'],
    ['a weak ETag', '/weak-etag'],
  ])('fetches an object with %s in one stream (its ranges could not be pinned)', async (_label, path) => {
    const { result, bytes } = await download(path, { expectedSha256: sha(v1) });

    expect(bytes.equals(v1)).toBe(true);
    expect(result.streams).toBe(1);
    // The first ranged answer is dropped, and the object asked for whole.
    expect(requests.get(path)?.map((r) => r.range)).toEqual([`bytes=0-${512 * KiB - 1}`, undefined]);
  });

  it('retries a range that breaks off, answers 503 or stalls, resuming where it stopped', async () => {
    const { result, bytes } = await download('/flaky', { expectedSha256: sha(v1) });

    expect(bytes.equals(v1)).toBe(true);
    expect(result.sha256).toBe(sha(v1));
    const seen = requests.get('/flaky')!;
    const plain = 1 + Math.ceil((SIZE - 512 * KiB) / (256 * KiB));
    expect(seen.length).toBe(plain + 3);
    // The range that broke off half-way is asked again from where its bytes stopped.
    const [, start, end] = /^bytes=(\d+)-(\d+)$/.exec(seen[1]!.range!)!.map(Number);
    const resumed = seen
      .slice(2)
      .map((r) => /^bytes=(\d+)-(\d+)$/.exec(r.range!)!.map(Number))
      .find(([, s, e]) => e === end && s! > start!);
    // From the first byte it did not get (the server sent half before it cut the connection).
    expect(resumed?.[1]).toBeGreaterThan(start!);
    expect(resumed?.[1]).toBeLessThanOrEqual(start! + 128 * KiB);
  });

  it('retries a first GET that answers 500', async () => {
    const { bytes } = await download('/first-fails', { expectedSha256: sha(v1) });

    expect(bytes.equals(v1)).toBe(true);
    expect(requests.get('/first-fails')?.[1]?.range).toBe(`bytes=0-${512 * KiB - 1}`);
  });

  it('gives up on a range after its attempts, retryable; a 403 range fails at once', async () => {
    const broken = await failure(download('/broken', { maxAttempts: 3 }));
    const forbidden = await failure(download('/forbidden-range'));

    expect(broken).toMatchObject({ code: 'Unavailable', retryable: true });
    expect(forbidden).toMatchObject({ code: 'DownloadFailed', retryable: false });
  });

  it('detects a wrong sha256 computed over the ranges', async () => {
    const outcome = await failure(download('/obj', { expectedSha256: sha(v2) }));

    expect(outcome).toMatchObject({ code: 'ChecksumMismatch', retryable: false });
  });

  it('does not hash bytes the store proved (sourceVerified), and needs the pinned ETag for that', async () => {
    const { result, bytes } = await download('/obj', {
      etag: '"v1"',
      expectedSha256: sha(v1),
      sourceVerified: true,
    });
    const unpinned = await failure(download('/obj', { expectedSha256: sha(v1), sourceVerified: true }));

    expect(bytes.equals(v1)).toBe(true);
    expect(result.sha256).toBeUndefined();
    expect(requests.get('/obj')?.every((r) => r.ifMatch === '"v1"')).toBe(true);
    expect(unpinned).toMatchObject({ code: 'InvalidInput' });
  });

  it('gets a small object in the first GET alone, and an empty one whole', async () => {
    const small = await download('/small', { expectedSha256: sha(v1.subarray(0, 100 * KiB)) });
    const empty = await download('/empty', { expectedSha256: sha(Buffer.alloc(0)) });

    expect(small.bytes.equals(v1.subarray(0, 100 * KiB))).toBe(true);
    expect(small.result.streams).toBe(1);
    expect(requests.get('/small')?.length).toBe(1);
    expect(empty.bytes.length).toBe(0);
    expect(requests.get('/empty')?.map((r) => r.range)).toEqual([`bytes=0-${512 * KiB - 1}`, undefined]);
  });

  it('checks the length against expectedBytes before writing anything else', async () => {
    const outcome = await failure(download('/obj', { expectedBytes: SIZE + 1 }));

    expect(outcome).toMatchObject({ code: 'SizeMismatch' });
  });
});
