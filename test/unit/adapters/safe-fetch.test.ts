import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import type { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  FetchError,
  openSafeStream,
  type SafeFetchOptions,
} from '../../../functions/adapters/http/safe-fetch.js';
import { InputError, UnprocessableError } from '../../../functions/core/errors.js';
import { parseAllowlist } from '../../../functions/core/url-policy.js';

// A local server that counts what reaches it: "nothing fetched" means it saw no request and no connection.
let server: Server;
let port: number;
let requests: { path: string; host: string | undefined }[];
let connections: number;
const sockets = new Set<Socket>();

function pattern(size: number): Buffer {
  const buffer = Buffer.alloc(size);
  for (let i = 0; i < size; i++) buffer[i] = (i * 31 + 7) & 0xff;
  return buffer;
}

const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex');

/** Writes a raw HTTP response, bypassing Node's server, which would not let us lie. */
function raw(res: ServerResponse, text: string, body: Buffer): Socket {
  const socket = res.socket!;
  socket.write(Buffer.concat([Buffer.from(text.replace(/\n/g, '\r\n')), body]));
  return socket;
}

function route(req: IncomingMessage, res: ServerResponse): void {
  const url = new URL(req.url ?? '/', 'http://x');
  const size = Number(url.searchParams.get('size') ?? 1000);
  const path = url.pathname;
  if (path === '/ok') {
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': size });
    res.end(pattern(size));
  } else if (path === '/chunked') {
    res.writeHead(200, { 'content-type': 'application/octet-stream' });
    const data = pattern(size);
    let offset = 0;
    const pump = () => {
      while (offset < data.length) {
        const chunk = data.subarray(offset, offset + 65536);
        offset += chunk.length;
        if (!res.write(chunk)) return void res.once('drain', pump);
      }
      res.end();
    };
    pump();
  } else if (path === '/redirect') {
    const to = url.searchParams.get('to');
    res.writeHead(Number(url.searchParams.get('status') ?? 302), to === null ? {} : { location: to });
    res.end('moved');
  } else if (path.startsWith('/chain/')) {
    const left = Number(path.slice('/chain/'.length));
    if (left > 0) res.writeHead(302, { location: `/chain/${left - 1}` }).end();
    else res.writeHead(200, { 'content-length': 4 }).end('done');
  } else if (path === '/truncated') {
    raw(res, 'HTTP/1.1 200 OK\nContent-Length: 1000\n\n', pattern(500)).end();
  } else if (path === '/truncated-chunked') {
    raw(res, 'HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n1f4\n', pattern(500)).end();
  } else if (path === '/lying') {
    raw(res, 'HTTP/1.1 200 OK\nContent-Length: 1000\n\n', pattern(1500)).end();
  } else if (path === '/lying-late') {
    const socket = raw(res, 'HTTP/1.1 200 OK\nContent-Length: 1000\n\n', pattern(1000));
    setTimeout(() => socket.writable && socket.end(pattern(500)), 50);
  } else if (path === '/stall-body') {
    res.writeHead(200, { 'content-length': 1000 });
    res.write(pattern(100));
  } else if (path === '/stall-head') {
    // Never answers.
  } else if (path === '/announce-huge') {
    res.writeHead(200, { 'content-length': 10 * 2 ** 30 });
    res.write(pattern(100));
  } else if (path.startsWith('/status/')) {
    res.writeHead(Number(path.slice('/status/'.length))).end('no');
  } else {
    res.writeHead(500).end();
  }
}

beforeAll(async () => {
  server = createServer((req, res) => {
    requests.push({ path: req.url ?? '', host: req.headers.host });
    route(req, res);
  });
  server.on('connection', (socket) => {
    connections++;
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  port = (server.address() as AddressInfo).port;
});

beforeEach(() => {
  requests = [];
  connections = 0;
});

afterEach(() => {
  for (const socket of sockets) socket.destroy();
});

afterAll(async () => {
  server.close();
  await once(server, 'close');
});

const loopbackAllowed = parseAllowlist('127.0.0.1');
const nothingAllowed = parseAllowlist(undefined);
const base = { maxBytes: 64 * 2 ** 20, noProgressTimeoutMs: 2000 };

/** A DNS that knows a few names, all pointing at our server unless told otherwise, and counts calls. */
function fakeDns(answers: Record<string, string[]> = {}) {
  return jest.fn(async (host: string) => {
    const addresses = answers[host] ?? ['127.0.0.1'];
    return addresses.map((address) => ({ address, family: address.includes(':') ? 6 : 4 }));
  });
}

async function drain(body: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of body) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

async function failure(promise: Promise<unknown>): Promise<Error> {
  try {
    await promise;
  } catch (e) {
    return e as Error;
  }
  throw new Error('expected a failure');
}

async function bodyFailure(url: string, options: Partial<SafeFetchOptions> = {}): Promise<FetchError> {
  const { body } = await openSafeStream(url, { ...base, allowlist: loopbackAllowed, ...options });
  const error = await failure(drain(body));
  expect(error).toBeInstanceOf(FetchError);
  return error as FetchError;
}

async function noOpenSockets(): Promise<void> {
  for (let i = 0; i < 100 && sockets.size > 0; i++) await sleep(10);
  expect(sockets.size).toBe(0);
}

describe('openSafeStream', () => {
  describe('refuses SSRF vectors before fetching anything', () => {
    it.each([
      ['decimal IPv4', () => `http://2130706433:${port}/ok`, /127\.0\.0\.1, a loopback address/],
      ['hex IPv4', () => `http://0x7f000001:${port}/ok`, /loopback/],
      ['hex short form', () => `http://0x7f.1:${port}/ok`, /loopback/],
      ['octal IPv4', () => `http://0177.0.0.1:${port}/ok`, /loopback/],
      ['short form', () => `http://127.1:${port}/ok`, /loopback/],
      ['dotted loopback', () => `http://127.0.0.1:${port}/ok`, /loopback/],
      ['IPv6 loopback', () => `http://[::1]:${port}/ok`, /loopback/],
      ['IPv4-mapped IPv6', () => `http://[::ffff:127.0.0.1]:${port}/ok`, /loopback/],
      ['NAT64', () => `http://[64:ff9b::7f00:1]:${port}/ok`, /NAT64 address embedding 127\.0\.0\.1/],
      ['6to4', () => `http://[2002:7f00:1::]:${port}/ok`, /6to4/],
      [
        'metadata',
        () => 'http://169.254.169.254/latest/meta-data/iam/security-credentials/',
        /cloud metadata/,
      ],
      ['decimal metadata', () => 'http://2852039166/latest/meta-data/', /cloud metadata/],
      ['IPv6 metadata', () => 'http://[fd00:ec2::254]/latest/meta-data/', /cloud metadata/],
      ['localhost', () => `http://localhost:${port}/ok`, /loopback name/],
      ['file scheme', () => 'file:///etc/passwd', /http or https, not file/],
      ['gopher scheme', () => `gopher://127.0.0.1:${port}/_GET%20/ok`, /not gopher/],
      ['ftp scheme', () => `ftp://127.0.0.1:${port}/ok`, /not ftp/],
      ['credentials', () => `http://admin:secret@127.0.0.1:${port}/ok`, /credentials/],
      ['host confusion', () => `http://127.0.0.1:${port}@images.example/ok`, /credentials/],
    ])('%s', async (_name, url, message) => {
      const lookup = fakeDns();
      // Even with loopback allowlisted for the credential cases: the URL shape alone is refused.
      const allowlist = /credentials/.test(String(message)) ? loopbackAllowed : nothingAllowed;
      const error = await failure(openSafeStream(url(), { ...base, allowlist, lookup }));
      expect(error).toBeInstanceOf(InputError);
      expect((error as InputError).context.field).toBe('url');
      expect(error.message).toMatch(message);
      expect(lookup).not.toHaveBeenCalled();
      expect(requests).toEqual([]);
      expect(connections).toBe(0);
    });

    it.each([
      [['127.0.0.1'], '127.0.0.1, a loopback address'],
      [['93.184.215.14', '127.0.0.1'], '127.0.0.1, a loopback address'],
      [['::1'], '::1, a loopback address'],
      [['::ffff:127.0.0.1'], '::ffff:127.0.0.1, a loopback address'],
      [['169.254.169.254'], '169.254.169.254, the cloud metadata address'],
      [['10.0.0.5'], '10.0.0.5, a private address'],
      [['fd00:ec2::254'], 'fd00:ec2::254, the cloud metadata address'],
    ])('a DNS name resolving to %j', async (addresses, reason) => {
      const lookup = fakeDns({ 'evil.example': addresses });
      const error = await failure(
        openSafeStream(`http://evil.example:${port}/ok`, { ...base, allowlist: nothingAllowed, lookup }),
      );
      expect(error).toBeInstanceOf(UnprocessableError);
      expect((error as UnprocessableError).context).toMatchObject({ field: 'url', host: 'evil.example' });
      expect(error.message).toContain(`url evil.example resolves to ${reason}`);
      expect(error.message).toContain('add the host to STRATA_FETCH_ALLOWLIST');
      expect(lookup).toHaveBeenCalledTimes(1);
      expect(requests).toEqual([]);
      expect(connections).toBe(0);
    });

    it('fails a name that does not resolve, without retrying it', async () => {
      const lookup = jest.fn(async () => {
        throw Object.assign(new Error('getaddrinfo ENOTFOUND nowhere.example'), { code: 'ENOTFOUND' });
      });
      const error = await failure(
        openSafeStream('http://nowhere.example/x', { ...base, allowlist: nothingAllowed, lookup }),
      );
      expect(error).toMatchObject({ code: 'Network', retryable: false });
      expect(connections).toBe(0);
    });
  });

  describe('connects to the pinned address', () => {
    it('streams a few MiB intact from an allowlisted address', async () => {
      const size = 5 * 2 ** 20 + 123;
      const opened = await openSafeStream(`http://127.0.0.1:${port}/ok?size=${size}`, {
        ...base,
        allowlist: loopbackAllowed,
      });
      expect(opened).toMatchObject({
        contentLength: size,
        address: '127.0.0.1',
        finalUrl: `http://127.0.0.1:${port}/ok?size=${size}`,
      });
      expect(opened.headers['content-type']).toBe('application/octet-stream');
      const data = await drain(opened.body);
      expect(data.length).toBe(size);
      expect(sha256(data)).toBe(sha256(pattern(size)));
      await noOpenSockets();
    });

    it('resolves an allowlisted name once and sends its name as Host', async () => {
      const lookup = fakeDns({ 'images.example': ['127.0.0.1', '10.9.9.9'] });
      const opened = await openSafeStream(`http://Images.Example:${port}/ok?size=10`, {
        ...base,
        allowlist: parseAllowlist('images.example'),
        lookup,
      });
      expect((await drain(opened.body)).length).toBe(10);
      expect(opened.address).toBe('127.0.0.1');
      expect(lookup).toHaveBeenCalledTimes(1);
      expect(lookup).toHaveBeenCalledWith('images.example');
      expect(requests).toEqual([{ path: '/ok?size=10', host: `images.example:${port}` }]);
    });

    it('lets a name through when every address it resolves to is allowlisted', async () => {
      const lookup = fakeDns({ 'mirror.example': ['127.0.0.1'] });
      const opened = await openSafeStream(`http://mirror.example:${port}/ok?size=3`, {
        ...base,
        allowlist: loopbackAllowed,
        lookup,
      });
      expect((await drain(opened.body)).length).toBe(3);
    });

    it('fails a refused connection as a retryable network error', async () => {
      const closed = createServer();
      closed.listen(0, '127.0.0.1');
      await once(closed, 'listening');
      const closedPort = (closed.address() as AddressInfo).port;
      closed.close();
      await once(closed, 'close');
      const error = await failure(
        openSafeStream(`http://127.0.0.1:${closedPort}/`, { ...base, allowlist: loopbackAllowed }),
      );
      expect(error).toMatchObject({ code: 'Network', retryable: true });
    });
  });

  describe('redirects', () => {
    const allowlist = parseAllowlist('images.example');
    const redirect = (to: string) => `http://images.example:${port}/redirect?to=${encodeURIComponent(to)}`;

    it.each([
      ['loopback', () => `http://127.0.0.1:${port}/ok`, /127\.0\.0\.1, a loopback address/],
      ['metadata', () => 'http://169.254.169.254/latest/meta-data/', /cloud metadata/],
      ['IPv6 loopback', () => `http://[::1]:${port}/ok`, /loopback/],
      ['decimal loopback', () => `http://2130706433:${port}/ok`, /loopback/],
      ['IPv4-mapped', () => `http://[::ffff:7f00:1]:${port}/ok`, /loopback/],
      ['file', () => 'file:///etc/passwd', /http or https, not file/],
      ['gopher', () => `gopher://images.example:${port}/_x`, /not gopher/],
      ['credentials', () => `http://user:pw@images.example:${port}/ok`, /credentials/],
      [
        'a name resolving to loopback',
        () => `http://internal.example:${port}/ok`,
        /internal\.example resolves to 127\.0\.0\.1/,
      ],
    ])('to %s are refused', async (_name, to, message) => {
      const lookup = fakeDns();
      const error = await failure(openSafeStream(redirect(to()), { ...base, allowlist, lookup }));
      expect(error).toBeInstanceOf(FetchError);
      expect(error).toMatchObject({ code: 'Redirect', retryable: false });
      expect(error.message).toMatch(message);
      expect(requests.map((r) => r.path)).toEqual([expect.stringMatching(/^\/redirect/)]);
      await noOpenSockets();
    });

    it('without a Location are refused', async () => {
      const error = await failure(
        openSafeStream(`http://images.example:${port}/redirect`, { ...base, allowlist, lookup: fakeDns() }),
      );
      expect(error).toMatchObject({ code: 'Redirect' });
      expect(error.message).toMatch(/without a Location/);
    });

    it.each([301, 302, 303, 307, 308])(
      '%d to an allowed place is followed and re-resolved',
      async (status) => {
        const lookup = fakeDns();
        const opened = await openSafeStream(`${redirect('/ok?size=7')}&status=${status}`, {
          ...base,
          allowlist,
          lookup,
        });
        expect((await drain(opened.body)).length).toBe(7);
        expect(opened.finalUrl).toBe(`http://images.example:${port}/ok?size=7`);
        expect(lookup).toHaveBeenCalledTimes(2);
        expect(requests).toHaveLength(2);
      },
    );

    it('follows up to maxRedirects and refuses one more', async () => {
      const options = { ...base, allowlist: loopbackAllowed, maxRedirects: 2 };
      const opened = await openSafeStream(`http://127.0.0.1:${port}/chain/2`, options);
      expect((await drain(opened.body)).toString()).toBe('done');
      requests = [];
      const error = await failure(openSafeStream(`http://127.0.0.1:${port}/chain/3`, options));
      expect(error).toMatchObject({ code: 'Redirect' });
      expect(error.message).toMatch(/more than 2 redirects/);
      expect(requests.map((r) => r.path)).toEqual(['/chain/3', '/chain/2', '/chain/1']);
    });

    it('follows 5 by default', async () => {
      const options = { ...base, allowlist: loopbackAllowed };
      await drain((await openSafeStream(`http://127.0.0.1:${port}/chain/5`, options)).body);
      expect(await failure(openSafeStream(`http://127.0.0.1:${port}/chain/6`, options))).toMatchObject({
        code: 'Redirect',
      });
    });
  });

  describe('the body', () => {
    it('fails Truncated when the connection ends before Content-Length', async () => {
      const error = await bodyFailure(`http://127.0.0.1:${port}/truncated`);
      expect(error).toMatchObject({ code: 'Truncated', retryable: true });
      expect(error.message).toMatch(/after 500 of 1000 bytes/);
    });

    it('fails Truncated when a chunked body ends without its last chunk', async () => {
      expect(await bodyFailure(`http://127.0.0.1:${port}/truncated-chunked`)).toMatchObject({
        code: 'Truncated',
      });
    });

    it('fails when more bytes than Content-Length arrive with the body', async () => {
      // Node's parser sees the surplus in the same read and fails the request; we pass that on.
      const error = await bodyFailure(`http://127.0.0.1:${port}/lying`);
      expect(error.code).toBe('TooLarge');
      expect(error.message).toMatch(/more than its Content-Length of 1000/);
    });

    it('never hands on more than Content-Length when the surplus comes later', async () => {
      // By then Node has closed the connection (we asked for `Connection: close`): the surplus is never
      // read. Either way not one byte beyond the announced length reaches the consumer.
      const { body } = await openSafeStream(`http://127.0.0.1:${port}/lying-late`, {
        ...base,
        allowlist: loopbackAllowed,
      });
      let delivered = 0;
      body.on('data', (chunk: Buffer) => {
        delivered += chunk.length;
      });
      const outcome = await new Promise<Error | undefined>((resolve) => {
        body.once('error', resolve);
        body.once('end', () => resolve(undefined));
      });
      expect(delivered).toBeLessThanOrEqual(1000);
      if (outcome) expect(outcome).toMatchObject({ code: 'TooLarge' });
      else expect(delivered).toBe(1000);
    });

    it('fails TooLarge as soon as a chunked body passes maxBytes, and closes the connection', async () => {
      const maxBytes = 2 ** 20;
      const { body, contentLength } = await openSafeStream(
        `http://127.0.0.1:${port}/chunked?size=${3 * maxBytes}`,
        {
          ...base,
          allowlist: loopbackAllowed,
          maxBytes,
        },
      );
      expect(contentLength).toBeUndefined();
      let delivered = 0;
      body.on('data', (chunk: Buffer) => {
        delivered += chunk.length;
      });
      const error = await once(body, 'error').then(([e]) => e as FetchError);
      expect(error).toMatchObject({ code: 'TooLarge', retryable: false });
      expect(delivered).toBeLessThanOrEqual(maxBytes);
      await noOpenSockets();
    });

    it('accepts a body of exactly maxBytes', async () => {
      const { body } = await openSafeStream(`http://127.0.0.1:${port}/chunked?size=4096`, {
        ...base,
        allowlist: loopbackAllowed,
        maxBytes: 4096,
      });
      expect((await drain(body)).length).toBe(4096);
    });

    it('refuses an announced length over maxBytes before reading the body', async () => {
      const error = await failure(
        openSafeStream(`http://127.0.0.1:${port}/announce-huge`, {
          ...base,
          allowlist: loopbackAllowed,
          maxBytes: 2 ** 30,
        }),
      );
      expect(error).toMatchObject({ code: 'TooLarge' });
      expect(error.message).toMatch(/announces 10737418240 bytes/);
      await noOpenSockets();
    });

    it('fails Stalled when the server stops sending', async () => {
      const started = Date.now();
      const error = await bodyFailure(`http://127.0.0.1:${port}/stall-body`, { noProgressTimeoutMs: 200 });
      expect(error).toMatchObject({ code: 'Stalled', retryable: true });
      expect(Date.now() - started).toBeLessThan(2000);
      await noOpenSockets();
    });

    it('fails Stalled when the server never answers', async () => {
      const started = Date.now();
      const error = await failure(
        openSafeStream(`http://127.0.0.1:${port}/stall-head`, {
          ...base,
          allowlist: loopbackAllowed,
          noProgressTimeoutMs: 200,
        }),
      );
      expect(error).toMatchObject({ code: 'Stalled' });
      expect(Date.now() - started).toBeLessThan(2000);
      await noOpenSockets();
    });

    it('does not count a slow consumer as a stalled server', async () => {
      const size = 2 * 2 ** 20;
      const { body } = await openSafeStream(`http://127.0.0.1:${port}/ok?size=${size}`, {
        ...base,
        allowlist: loopbackAllowed,
        // Long enough for a loaded CI machine to answer; the consumer still pauses well past it.
        noProgressTimeoutMs: 1000,
      });
      await sleep(2500);
      const data = await drain(body);
      expect(sha256(data)).toBe(sha256(pattern(size)));
    });

    it('stops on the caller’s signal', async () => {
      const controller = new AbortController();
      const { body } = await openSafeStream(`http://127.0.0.1:${port}/stall-body`, {
        ...base,
        allowlist: loopbackAllowed,
        signal: controller.signal,
      });
      setTimeout(() => controller.abort(), 20);
      const error = await failure(drain(body));
      expect(error.name).toBe('AbortError');
      await noOpenSockets();
    });

    it('releases the connection when the consumer gives up', async () => {
      const { body } = await openSafeStream(`http://127.0.0.1:${port}/stall-body`, {
        ...base,
        allowlist: loopbackAllowed,
      });
      body.destroy();
      await noOpenSockets();
    });
  });

  describe('statuses', () => {
    it.each([
      [404, false],
      [403, false],
      [429, true],
      [503, true],
    ])('%d fails HttpStatus (retryable: %s)', async (status, retryable) => {
      const error = await failure(
        openSafeStream(`http://127.0.0.1:${port}/status/${status}`, { ...base, allowlist: loopbackAllowed }),
      );
      expect(error).toBeInstanceOf(FetchError);
      expect(error).toMatchObject({ code: 'HttpStatus', retryable, context: { status } });
      expect(error.message).toContain(`HTTP ${status}`);
      await noOpenSockets();
    });
  });

  describe('https', () => {
    let tls: HttpsServer;
    let tlsPort: number;
    let tlsRequests: number;

    beforeAll(async () => {
      tls = createHttpsServer({ key: TEST_KEY, cert: TEST_CERT }, (_req, res) => {
        tlsRequests++;
        res.end('secret');
      });
      tls.listen(0, '127.0.0.1');
      await once(tls, 'listening');
      tlsPort = (tls.address() as AddressInfo).port;
    });

    afterAll(async () => {
      tls.closeAllConnections();
      tls.close();
      await once(tls, 'close');
    });

    it.each([
      ['an IP literal', () => `https://127.0.0.1:${tlsPort}/`],
      ['a pinned name', () => `https://images.example:${tlsPort}/`],
    ])('rejects a self-signed certificate for %s before any request', async (_name, url) => {
      tlsRequests = 0;
      const error = await failure(
        openSafeStream(url(), { ...base, allowlist: parseAllowlist('127.0.0.1'), lookup: fakeDns() }),
      );
      expect(error).toMatchObject({ code: 'Network', retryable: false });
      expect(error.message).toMatch(/TLS with .* failed/);
      expect(tlsRequests).toBe(0);
    });
  });
});

// A throwaway self-signed certificate (CN 127.0.0.1, SANs 127.0.0.1 and images.example) for the test
// above only; nothing trusts it.
const TEST_KEY = `-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC6nBo1GrKcZ5OI
dnpXs3tals/SlcvZYopm31ImZ6KZg8NuJEfGWRKgT7CoZa2pUnCVTxOn00U9SGi6
H8sDPv4ptAdkw1UbdbN0Ha2A8YsQ+TMwP3tpX4uLNZq1TZVrNGuhRqOUWJ57k5bx
H7eBdCYmRWmsEUDS6RABttNUyFScjGubdVYgUZRyiYClaiyT+hGXCMsQy7TgaRk3
zwiNLefnkDWDKw207w6E2VVK25DdndtNfwATJT1iBDOMf4dp9Hy1QMHe3nQGjyvY
U4iPmo6h8N5+McFUiGNOX0GMjIwNHfliAaIa3aeAHbtGYi4gHl2iERwLXF2gs0uZ
uFULbUHhAgMBAAECggEAAVO2mn8npcB/+QnppbnCpEK7Xy/zmLFFvW9JXY6iBlWH
PwoOQhvJoSmhPpim1wlIFcG6aK3nju+MF3Bo2yDYVxoprXa3olfluFXKhpwWcnQ+
iqbAP+AJxUoda7xjC4BTuHGrhwn9yjBtnnuXTG9TuEozqGFLh2xtnGuCc3avZlkU
qv2Cs0/SqEv+uSISF72f0Lcxp/LZaY6UUqdgD0D2wvofZRN8vZ68jReY122/cPJ+
rUG3bbKYq/j+Xq34sFZ7Y+v2Ti9YPu5YZ08lHQ+rqv7SJN2E4MB+6b3NsEccocGe
vohPFPwIwnxNxExRgZgpB2FRE3Cvn2aYOCwafPFPyQKBgQDqCp51fiHkeGa42AA/
s3yUtSekqeTr4NG9qwnfLg6lRDy7EZis6UFJj26ZB6h0/0o4BLbhclOEuyElQ6aC
BCe+0W2IZ3wsxZRmQ7BJXz7bkA4Z2tFEQh3+lQPj6FQ5aRdpWczra5RfEJgrUo91
gcxF20nC8Y/Uhy9sV6rpBsxE+QKBgQDMHjvShI6BbRvtD+D0grbQWbzf67dqRYSc
ICZ6TPWM32bGQNb7XdpOeJjYTw1eo7NPMZYZgLGol7Csu7G/zyCLxdTijJwnYT9A
W4GHoUSSRaQpfnX74bYJ3dXmVBugGMZ0Hd/UHhFqwadvWZqpeAeMXhsqFeDqvLNA
ouV8eNNmKQKBgB5P0cYV1/3nOiamkyGs9W2tKL1C48tJCuEtzdGB/ZOaCuOPm96J
N1N3qDNZso+0oMAwnB8G15pRQjG5WU9tilhEd5M7E/IYhOfZzHM0SsfVGH5wwLm+
dnQKiL5z0LS+z7FtWAUFoenOFGdIAhyN+w7xH9SHxMEZ4SJ/GDumDb7BAoGAWlcv
RvdgUyxFZeDXQaDw5Loy/DBJl4F5NdiM7yhMrbLau/hKripVytFZZLNoSXDOlchu
lI7/Eo1AptLT0v8LepFurW5qVouWARf+9laMEOk9xRexhG/br/Y9C5pCN9N/Ujk+
rZU5RDS9tGzGJSd4v8mO4EuapooqE/uE8lhPyDECgYEAzNg/SqlUt293BlPhQyce
ECjT5HKt55h4epNhbHCd4jVRtL8Oa3e3Rlhwt/N1jbVDmjxk9pm7FnDjbX5ViPRd
gk3/pHGgEREOGhvhn1DpjkCSXA7oqaX0SPUhf5oxJVqTN3KwX4260XofEAQaFw5s
KgCXlWBvbEI/x1YuOeCveI8=
-----END PRIVATE KEY-----
`;

const TEST_CERT = `-----BEGIN CERTIFICATE-----
MIIDLDCCAhSgAwIBAgIUPETAnoDeifkXzd1izVvJnseTHcswDQYJKoZIhvcNAQEL
BQAwFDESMBAGA1UEAwwJMTI3LjAuMC4xMCAXDTI2MTEyNTEyMTEzMloYDzIxMjYx
MTAxMTIxMTMyWjAUMRIwEAYDVQQDDAkxMjcuMC4wLjEwggEiMA0GCSqGSIb3DQEB
AQUAA4IBDwAwggEKAoIBAQC6nBo1GrKcZ5OIdnpXs3tals/SlcvZYopm31ImZ6KZ
g8NuJEfGWRKgT7CoZa2pUnCVTxOn00U9SGi6H8sDPv4ptAdkw1UbdbN0Ha2A8YsQ
+TMwP3tpX4uLNZq1TZVrNGuhRqOUWJ57k5bxH7eBdCYmRWmsEUDS6RABttNUyFSc
jGubdVYgUZRyiYClaiyT+hGXCMsQy7TgaRk3zwiNLefnkDWDKw207w6E2VVK25Dd
ndtNfwATJT1iBDOMf4dp9Hy1QMHe3nQGjyvYU4iPmo6h8N5+McFUiGNOX0GMjIwN
HfliAaIa3aeAHbtGYi4gHl2iERwLXF2gs0uZuFULbUHhAgMBAAGjdDByMB0GA1Ud
DgQWBBTEDWytVVIrTpUUHV1800vS+g1w1DAfBgNVHSMEGDAWgBTEDWytVVIrTpUU
HV1800vS+g1w1DAPBgNVHRMBAf8EBTADAQH/MB8GA1UdEQQYMBaHBH8AAAGCDmlt
YWdlcy5leGFtcGxlMA0GCSqGSIb3DQEBCwUAA4IBAQBcAApYIQvYI+M9ss0dmea0
sf3EdAziVCy2x73WWM+dYpH1tGiBAFprTOUl+MyGFQAcHED/8OIg7napfHHUb4P9
DSMS+6qniqpoMutvirN3MCiGEH2PyLsfE4Gql1MXB1wmOc3GrsaTyyW8yVXixIiC
wTHJJgRkm73JTlh6ROU+YDYselKX+NXblldf8rxleVS5KNPxUw3uSrNsf/cCe05R
08V2NVTuAX1DF6cypLqZf4pXIV/sOjUe382heYXHLwKx+84YV5v+UkUaVZbQScUx
UR4J0i+BJGEk0ufet8I96GjCfX0Mg/58XhvLZhUJR4iC99vK57wMZYbZU5mCboEo
-----END CERTIFICATE-----
`;
