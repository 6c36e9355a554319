import { createHash, createHmac } from 'node:crypto';
import {
  createSigner,
  resolveCredentials,
  resolveRegion,
  SigningConfigError,
  shouldSign,
} from '../../../cli/sigv4.js';
import { FakeApi, runCli } from './fake-api.js';

const ACCESS_KEY = 'AKIDEXAMPLE';
const SECRET_KEY = 'wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY';

const sha256 = (text: string) => createHash('sha256').update(text, 'utf8').digest('hex');
const hmac = (key: string | Buffer, text: string) => createHmac('sha256', key).update(text, 'utf8').digest();

// RFC 3986 encoding as SigV4 wants it (encodeURIComponent leaves !'()* alone).
const rfc3986 = (text: string) =>
  encodeURIComponent(text).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);

/**
 * SigV4 straight from the AWS specification, written with node:crypto only, so the signer under
 * test is checked against an implementation it shares no code with.
 */
function referenceSignature(input: {
  method: string;
  /** The path as sent on the wire (already percent-encoded once). */
  path: string;
  query: Record<string, string>;
  /** Exactly the headers to sign, names in any case. */
  headers: Record<string, string>;
  body: string;
  amzDate: string;
  region: string;
  secret: string;
}): string {
  // Services other than S3 encode each path segment once more.
  const canonicalUri = input.path
    .split('/')
    .map((segment) => rfc3986(segment))
    .join('/');
  const canonicalQuery = Object.entries(input.query)
    .map(([k, v]) => [rfc3986(k), rfc3986(v)] as const)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([k, v]) => `${k}=${v}`)
    .join('&');
  const headers = Object.entries(input.headers)
    .map(([k, v]) => [k.toLowerCase(), v.trim().replace(/\s+/g, ' ')] as const)
    .sort(([a], [b]) => (a < b ? -1 : 1));
  const canonicalRequest = [
    input.method,
    canonicalUri,
    canonicalQuery,
    ...headers.map(([k, v]) => `${k}:${v}`),
    '',
    headers.map(([k]) => k).join(';'),
    sha256(input.body),
  ].join('\n');
  const day = input.amzDate.slice(0, 8);
  const scope = `${day}/${input.region}/execute-api/aws4_request`;
  const stringToSign = ['AWS4-HMAC-SHA256', input.amzDate, scope, sha256(canonicalRequest)].join('\n');
  const key = hmac(hmac(hmac(hmac(`AWS4${input.secret}`, day), input.region), 'execute-api'), 'aws4_request');
  return createHmac('sha256', key).update(stringToSign, 'utf8').digest('hex');
}

describe('shouldSign', () => {
  it.each([
    ['https://abc123.execute-api.us-east-1.amazonaws.com/prod', {}, true],
    ['https://abc123.execute-api.cn-north-1.amazonaws.com.cn/prod', {}, true],
    ['http://127.0.0.1:8787', {}, false],
    ['https://storage.example.com', {}, false],
    ['https://storage.example.com', { STRATA_SIGV4: '1' }, true],
    ['https://abc.execute-api.us-east-1.amazonaws.com', { STRATA_SIGV4: '0' }, false],
    ['https://notamazonaws.com', {}, false],
  ])('%s with %j → %s', (url, env, expected) => {
    expect(shouldSign(new URL(url), env)).toBe(expected);
  });
});

describe('resolveRegion', () => {
  it('reads the region from an execute-api host before the environment', () => {
    expect(
      resolveRegion(new URL('https://a.execute-api.eu-west-3.amazonaws.com'), { AWS_REGION: 'us-east-1' }),
    ).toBe('eu-west-3');
  });

  it('falls back to AWS_REGION, then AWS_DEFAULT_REGION', () => {
    const url = new URL('https://storage.example.com');
    expect(resolveRegion(url, { AWS_REGION: 'ap-south-1', AWS_DEFAULT_REGION: 'x' })).toBe('ap-south-1');
    expect(resolveRegion(url, { AWS_DEFAULT_REGION: 'sa-east-1' })).toBe('sa-east-1');
  });

  it('refuses to guess', () => {
    expect(() => resolveRegion(new URL('https://storage.example.com'), {})).toThrow(SigningConfigError);
  });
});

describe('resolveCredentials', () => {
  it('uses static keys from the given environment', () => {
    expect(
      resolveCredentials({ AWS_ACCESS_KEY_ID: 'A', AWS_SECRET_ACCESS_KEY: 'S', AWS_SESSION_TOKEN: 'T' }),
    ).toEqual({ accessKeyId: 'A', secretAccessKey: 'S', sessionToken: 'T' });
  });

  it('otherwise defers to the Node provider chain, lazily', () => {
    expect(typeof resolveCredentials({})).toBe('function');
  });
});

describe('createSigner', () => {
  const url = new URL('https://abc123.execute-api.us-east-1.amazonaws.com/prod/stores?zoneId=zone-1&limit=5');
  const body = '{"name":"nfs-1","details":{}}';
  const headers = {
    accept: 'application/json',
    'content-type': 'application/json',
    'idempotency-key': '0b7c5f4e-1f7e-4c1e-9d43-3f1a2b3c4d5e',
    'user-agent': 'strata-cli',
  };

  it('produces the signature the specification gives for fixed credentials and time', async () => {
    const sign = createSigner({
      region: 'us-east-1',
      credentials: { accessKeyId: ACCESS_KEY, secretAccessKey: SECRET_KEY },
      signingDate: new Date('2015-08-30T12:36:00Z'),
    });

    const signed = await sign({ method: 'POST', url, headers, body });

    const expected = referenceSignature({
      method: 'POST',
      path: '/prod/stores',
      query: { zoneId: 'zone-1', limit: '5' },
      headers: {
        accept: headers.accept,
        'content-type': headers['content-type'],
        host: url.host,
        'idempotency-key': headers['idempotency-key'],
        'x-amz-content-sha256': sha256(body),
        'x-amz-date': '20150830T123600Z',
      },
      body,
      amzDate: '20150830T123600Z',
      region: 'us-east-1',
      secret: SECRET_KEY,
    });
    expect(signed['x-amz-date']).toBe('20150830T123600Z');
    expect(signed['x-amz-content-sha256']).toBe(sha256(body));
    expect(signed['authorization']).toBe(
      `AWS4-HMAC-SHA256 Credential=${ACCESS_KEY}/20150830/us-east-1/execute-api/aws4_request, ` +
        'SignedHeaders=accept;content-type;host;idempotency-key;x-amz-content-sha256;x-amz-date, ' +
        `Signature=${expected}`,
    );
    // Pinned as well, so a change in either implementation is noticed.
    expect(expected).toBe(PINNED_SIGNATURE);
    // fetch sets Host itself; the original headers pass through untouched.
    expect(signed['host']).toBeUndefined();
    expect(signed['user-agent']).toBe('strata-cli');
  });

  it('adds and signs the session token of temporary credentials', async () => {
    const sign = createSigner({
      region: 'us-east-1',
      credentials: { accessKeyId: ACCESS_KEY, secretAccessKey: SECRET_KEY, sessionToken: 'token-1' },
      signingDate: new Date('2015-08-30T12:36:00Z'),
    });

    const signed = await sign({ method: 'GET', url, headers: { accept: 'application/json' } });

    expect(signed['x-amz-security-token']).toBe('token-1');
    expect(signed['authorization']).toContain(
      'SignedHeaders=accept;host;x-amz-content-sha256;x-amz-date;x-amz-security-token,',
    );
  });
});

const PINNED_SIGNATURE = 'bc0ae50f33c135c2de78771bf49d8e89d6ddda8a406239f47697af3f14d930f1';

describe('the CLI against an API that checks signatures', () => {
  let api: FakeApi;
  beforeEach(async () => {
    api = await new FakeApi().start();
  });
  afterEach(() => api.stop());

  it('signs every request so that the server can verify it', async () => {
    api.on('PATCH', '/stores/st%201', { status: 200, body: { id: 'st 1', name: 'n', status: 'Disabled' } });

    const result = await runCli(['stores', 'update', 'st 1', '--name', 'n', '--json'], {
      api,
      env: {
        STRATA_SIGV4: '1',
        AWS_REGION: 'eu-west-1',
        AWS_ACCESS_KEY_ID: ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY: SECRET_KEY,
      },
    });

    expect(result.code).toBe(0);
    const request = api.last();
    const authorization = String(request.headers['authorization']);
    const match = /^AWS4-HMAC-SHA256 Credential=(\S+?), SignedHeaders=(\S+?), Signature=([0-9a-f]{64})$/.exec(
      authorization,
    );
    expect(match).not.toBeNull();
    const [, credential, signedHeaderList, signature] = match!;
    const amzDate = String(request.headers['x-amz-date']);
    expect(credential).toBe(`${ACCESS_KEY}/${amzDate.slice(0, 8)}/eu-west-1/execute-api/aws4_request`);
    const signedHeaders = signedHeaderList!.split(';');
    expect(signedHeaders).toEqual(
      expect.arrayContaining([
        'host',
        'content-type',
        'idempotency-key',
        'x-amz-date',
        'x-amz-content-sha256',
      ]),
    );
    expect(request.headers['x-amz-content-sha256']).toBe(sha256(request.rawBody));
    const recomputed = referenceSignature({
      method: request.method,
      path: request.path,
      query: request.query,
      headers: Object.fromEntries(signedHeaders.map((name) => [name, String(request.headers[name])])),
      body: request.rawBody,
      amzDate,
      region: 'eu-west-1',
      secret: SECRET_KEY,
    });
    expect(signature).toBe(recomputed);
  });

  it('sends nothing extra to the embedded stack', async () => {
    api.on('GET', '/health', { status: 200, body: { status: 'ok', version: '1' } });

    await runCli(['health'], {
      api,
      env: { AWS_ACCESS_KEY_ID: ACCESS_KEY, AWS_SECRET_ACCESS_KEY: SECRET_KEY },
    });

    expect(api.last().headers['authorization']).toBeUndefined();
    expect(api.last().headers['x-amz-date']).toBeUndefined();
  });

  it('asks for a region when it cannot tell one', async () => {
    const result = await runCli(['health'], { api, env: { STRATA_SIGV4: '1' } });

    expect(result.code).toBe(1);
    expect(result.stderr).toContain('set AWS_REGION');
    expect(api.requests).toHaveLength(0);
  });
});
