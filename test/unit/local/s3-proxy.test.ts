import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import {
  CompleteMultipartUploadCommand,
  CopyObjectCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  DeleteObjectsCommand,
  GetBucketAclCommand,
  GetBucketEncryptionCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  UploadPartCommand,
} from '@aws-sdk/client-s3';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { postChunk } from '../../../drivers/nfs/chunk-transfer.js';
import { signPostPolicy } from '../../../drivers/s3/presigned-post.js';
import type { LocalEndpoint } from '../../../infra/local/aws/aws-server.js';
import {
  IamAuthorizer,
  type NamedPolicy,
  type PolicyDocument,
} from '../../../infra/local/aws/iam-authorizer.js';
import {
  type LocalAccount,
  type LocalAwsCredentials,
  LocalCredentialStore,
} from '../../../infra/local/aws/principals.js';
import { s3Authorizations, startS3Proxy } from '../../../infra/local/aws/s3-proxy.js';
import { localS3ClientConfig, type S3Emulator, startS3Emulator } from '../../../infra/local/s3-emulator.js';

jest.setTimeout(120_000);

const account: LocalAccount = { accountId: '123456789012', region: 'us-east-1', partition: 'aws' };
const BUCKET = 'data';
/** A bucket the writer may read only under public/. */
const OTHER = 'other';
const role = (name: string) => `arn:aws:iam::123456789012:role/${name}`;
const arn = (resource: string) => `arn:aws:s3:::${resource}`;
const MiB = 1024 * 1024;

function allow(statements: { actions: string[]; resources: string[] }[]): NamedPolicy {
  return {
    name: 'inline',
    document: {
      Version: '2012-10-17',
      Statement: statements.map((s) => ({ Effect: 'Allow', Action: s.actions, Resource: s.resources })),
    },
  };
}

const roles = new Map<string, NamedPolicy[]>([
  [
    role('Writer'),
    [
      allow([
        {
          actions: [
            's3:GetObject',
            's3:PutObject',
            's3:DeleteObject',
            's3:AbortMultipartUpload',
            's3:ListMultipartUploadParts',
          ],
          resources: [arn(`${BUCKET}/*`)],
        },
        {
          actions: ['s3:ListBucket', 's3:ListBucketMultipartUploads', 's3:GetEncryptionConfiguration'],
          resources: [arn(BUCKET), arn('missing-bucket')],
        },
        { actions: ['s3:GetObject'], resources: [arn(`${OTHER}/public/*`)] },
      ]),
    ],
  ],
  [role('Reader'), [allow([{ actions: ['s3:GetObject'], resources: [arn(`${BUCKET}/*`)] }])]],
]);

/** The data bucket's policy: nobody deletes under protected/, whatever their role allows. */
const dataPolicy: PolicyDocument = {
  Version: '2012-10-17',
  Statement: [
    { Effect: 'Deny', Principal: '*', Action: 's3:DeleteObject', Resource: arn(`${BUCKET}/protected/*`) },
  ],
};

let dir: string;
let emulator: S3Emulator;
let proxy: LocalEndpoint;
let direct: S3Client;
let writer: S3Client;
let reader: S3Client;
let writerCredentials: LocalAwsCredentials;
const credentials = new LocalCredentialStore();
const clients: S3Client[] = [];

function client(creds: LocalAwsCredentials, extra: Partial<ConstructorParameters<typeof S3Client>[0]> = {}) {
  const c = new S3Client({
    endpoint: proxy.url,
    region: 'us-east-1',
    forcePathStyle: true,
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    credentials: creds,
    maxAttempts: 1,
    ...extra,
  });
  clients.push(c);
  return c;
}

/** Whether s3rver itself holds the object (asked directly, past the proxy). */
async function stored(key: string, bucket = BUCKET): Promise<boolean> {
  try {
    await direct.send(new HeadObjectCommand({ Bucket: bucket, Key: key }));
    return true;
  } catch (error) {
    if ((error as { name?: string }).name === 'NotFound') return false;
    throw error;
  }
}

async function storedText(key: string, bucket = BUCKET): Promise<string> {
  const out = await direct.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
  return out.Body!.transformToString();
}

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 's3-proxy-'));
  emulator = await startS3Emulator({ dir, buckets: [BUCKET, OTHER] });
  const authorizer = new IamAuthorizer({ roles });
  proxy = await startS3Proxy({
    upstream: emulator.endpoint,
    credentials,
    authorizer,
    account,
    bucketPolicy: (bucket) => (bucket === BUCKET ? dataPolicy : undefined),
  });
  direct = new S3Client(localS3ClientConfig(emulator.endpoint));
  writerCredentials = credentials.issue(role('Writer'), 'writer');
  writer = client(writerCredentials);
  reader = client(credentials.issue(role('Reader'), 'reader'));
  await direct.send(new PutObjectCommand({ Bucket: OTHER, Key: 'public/p.txt', Body: 'public' }));
  await direct.send(new PutObjectCommand({ Bucket: OTHER, Key: 'secret/s.txt', Body: 'secret' }));
});

afterAll(async () => {
  for (const c of clients) c.destroy();
  direct?.destroy();
  await proxy?.close();
  await emulator?.stop();
  await rm(dir, { recursive: true, force: true });
});

describe('s3Authorizations', () => {
  const checks = (method: string, url: string, headers: http.IncomingHttpHeaders = {}, body?: string) =>
    s3Authorizations({ method, url, headers, ...(body === undefined ? {} : { body }) });
  const one = (action: string, resource: string) => [{ action, resource }];

  it.each<[string, string, http.IncomingHttpHeaders, { action: string; resource: string }[]]>([
    ['GET', '/data/dir/a%20b%2Bc.txt', {}, one('s3:GetObject', arn('data/dir/a b+c.txt'))],
    ['HEAD', '/data/k', {}, one('s3:GetObject', arn('data/k'))],
    ['GET', '/data/k?versionId=3&x-id=GetObject', {}, one('s3:GetObjectVersion', arn('data/k'))],
    ['GET', '/data/k?response-content-type=text%2Fplain', {}, one('s3:GetObject', arn('data/k'))],
    ['PUT', '/data/k?x-id=PutObject', {}, one('s3:PutObject', arn('data/k'))],
    [
      'PUT',
      '/data/k',
      { 'x-amz-acl': 'private' },
      [
        { action: 's3:PutObject', resource: arn('data/k') },
        { action: 's3:PutObjectAcl', resource: arn('data/k') },
      ],
    ],
    [
      'PUT',
      '/data/k',
      { 'x-amz-grant-read': 'id=1' },
      [
        { action: 's3:PutObject', resource: arn('data/k') },
        { action: 's3:PutObjectAcl', resource: arn('data/k') },
      ],
    ],
    [
      'PUT',
      '/data/k',
      { 'x-amz-tagging': 'a=b' },
      [
        { action: 's3:PutObject', resource: arn('data/k') },
        { action: 's3:PutObjectTagging', resource: arn('data/k') },
      ],
    ],
    [
      'PUT',
      '/data/copy',
      { 'x-amz-copy-source': 'src/dir/x.txt' },
      [
        { action: 's3:PutObject', resource: arn('data/copy') },
        { action: 's3:GetObject', resource: arn('src/dir/x.txt') },
      ],
    ],
    [
      'PUT',
      '/data/copy',
      { 'x-amz-copy-source': '/src/dir/x%20y%3Fz.txt?versionId=7' },
      [
        { action: 's3:PutObject', resource: arn('data/copy') },
        { action: 's3:GetObjectVersion', resource: arn('src/dir/x y?z.txt') },
      ],
    ],
    [
      // A presigned URL may carry the copy source hoisted into its query.
      'PUT',
      '/data/copy?x-amz-copy-source=src%2Fk&X-Amz-Algorithm=AWS4-HMAC-SHA256',
      {},
      [
        { action: 's3:PutObject', resource: arn('data/copy') },
        { action: 's3:GetObject', resource: arn('src/k') },
      ],
    ],
    ['DELETE', '/data/k', {}, one('s3:DeleteObject', arn('data/k'))],
    ['DELETE', '/data/k?versionId=1', {}, one('s3:DeleteObjectVersion', arn('data/k'))],
    ['POST', '/data/k?uploads', {}, one('s3:PutObject', arn('data/k'))],
    [
      'POST',
      '/data/k?uploads=',
      { 'x-amz-acl': 'private' },
      [
        { action: 's3:PutObject', resource: arn('data/k') },
        { action: 's3:PutObjectAcl', resource: arn('data/k') },
      ],
    ],
    ['PUT', '/data/k?partNumber=2&uploadId=u1', {}, one('s3:PutObject', arn('data/k'))],
    [
      'PUT',
      '/data/k?partNumber=2&uploadId=u1',
      { 'x-amz-copy-source': 'other/big', 'x-amz-copy-source-range': 'bytes=0-9' },
      [
        { action: 's3:PutObject', resource: arn('data/k') },
        { action: 's3:GetObject', resource: arn('other/big') },
      ],
    ],
    ['POST', '/data/k?uploadId=u1', {}, one('s3:PutObject', arn('data/k'))],
    ['DELETE', '/data/k?uploadId=u1', {}, one('s3:AbortMultipartUpload', arn('data/k'))],
    ['GET', '/data/k?uploadId=u1&max-parts=10', {}, one('s3:ListMultipartUploadParts', arn('data/k'))],
    ['GET', '/data', {}, one('s3:ListBucket', arn('data'))],
    ['GET', '/data/', {}, one('s3:ListBucket', arn('data'))],
    ['GET', '/data?list-type=2&prefix=dir%2F&delimiter=%2F', {}, one('s3:ListBucket', arn('data'))],
    ['HEAD', '/data', {}, one('s3:ListBucket', arn('data'))],
    ['GET', '/data?uploads', {}, one('s3:ListBucketMultipartUploads', arn('data'))],
    ['GET', '/data?encryption', {}, one('s3:GetEncryptionConfiguration', arn('data'))],
    ['PUT', '/data', {}, one('s3:CreateBucket', arn('data'))],
    ['DELETE', '/data', {}, one('s3:DeleteBucket', arn('data'))],
  ])('%s %s %j', (method, url, headers, expected) => {
    expect(checks(method, url, headers)).toEqual(expected);
  });

  it('checks DeleteObjects per key named in its body, entities decoded', () => {
    const body =
      '<?xml version="1.0" encoding="UTF-8"?><Delete xmlns="http://s3.amazonaws.com/doc/2006-03-01/">' +
      '<Object><Key>a&amp;b&lt;c.txt</Key></Object><Object><Key>dir/&#x41;.txt</Key><VersionId>v1</VersionId>' +
      '</Object><Object><Key>a&amp;b&lt;c.txt</Key></Object><Quiet>true</Quiet></Delete>';
    expect(checks('POST', '/data?delete', {}, body)).toEqual([
      { action: 's3:DeleteObject', resource: arn('data/a&b<c.txt') },
      { action: 's3:DeleteObjectVersion', resource: arn('data/dir/A.txt') },
    ]);
    expect(() => checks('POST', '/data?delete')).toThrow('pass the request body');
  });

  const codeOf = (run: () => unknown): string | undefined => {
    try {
      run();
      return undefined;
    } catch (error) {
      return (error as { code?: string }).code;
    }
  };

  it.each<[string, string, http.IncomingHttpHeaders, string]>([
    ['GET', '/', {}, 'NotImplemented'],
    ['GET', '/data?acl', {}, 'NotImplemented'],
    ['GET', '/data?versions', {}, 'NotImplemented'],
    ['PUT', '/data?policy', {}, 'NotImplemented'],
    ['PUT', '/data/k?tagging', {}, 'NotImplemented'],
    ['POST', '/data/k', {}, 'NotImplemented'],
    ['POST', '/data', {}, 'NotImplemented'],
    ['PUT', '/data/k?partNumber=1', {}, 'NotImplemented'],
    ['PUT', '/data/k?uploadId=u', {}, 'NotImplemented'],
    ['GET', '/data/k?uploads&uploadId=u', {}, 'NotImplemented'],
    ['HEAD', '/data?encryption', {}, 'NotImplemented'],
    ['PATCH', '/data/k', {}, 'NotImplemented'],
    ['PUT', '/data/k', { 'x-amz-server-side-encryption': 'aws:kms' }, 'NotImplemented'],
    ['PUT', '/data/k', { 'x-amz-object-lock-mode': 'GOVERNANCE' }, 'NotImplemented'],
    // s3rver would resolve these on disk to another object than the one checked.
    ['GET', '/data/a/../b', {}, 'InvalidArgument'],
    ['PUT', '/data/a/%2E%2E/b', {}, 'InvalidArgument'],
    ['PUT', '/data/./b', {}, 'InvalidArgument'],
    ['PUT', '/data//b', {}, 'InvalidArgument'],
    ['PUT', '/data/k', { 'x-amz-copy-source': 'other/../data/k' }, 'InvalidArgument'],
    ['PUT', '/data/k', { 'x-amz-copy-source': 'nokey' }, 'InvalidArgument'],
    ['GET', '/Bad_Bucket/k', {}, 'InvalidBucketName'],
    ['GET', '/%2E%2E/k', {}, 'InvalidBucketName'],
    ['GET', '/data/%E0%A4%A', {}, 'InvalidURI'],
  ])('refuses %s %s %j with %s', (method, url, headers, code) => {
    expect(codeOf(() => checks(method, url, headers))).toBe(code);
  });

  it.each([
    ['CDATA', '<Delete><Object><Key><![CDATA[k]]></Key></Object></Delete>'],
    ['a comment', '<Delete><Object><Key>k</Key><!-- x --></Object></Delete>'],
    ['an HTML entity', '<Delete><Object><Key>&nbsp;k</Key></Object></Delete>'],
    ['a Key outside an Object', '<Delete><Key>k</Key><Object><Key>j</Key></Object></Delete>'],
    ['a Key with attributes', '<Delete><Object><Key a="1">k</Key></Object></Delete>'],
    ['another root', '<Remove><Object><Key>k</Key></Object></Remove>'],
    ['no objects', '<Delete></Delete>'],
  ])('refuses a DeleteObjects body with %s', (_, body) => {
    expect(codeOf(() => checks('POST', '/data?delete', {}, body))).toBe('MalformedXML');
  });
});

describe('S3 proxy', () => {
  it('lets the writer put, get, list and delete', async () => {
    await writer.send(
      new PutObjectCommand({ Bucket: BUCKET, Key: 'docs/a b.txt', Body: 'hello', ContentType: 'text/plain' }),
    );
    expect(await storedText('docs/a b.txt')).toBe('hello');
    const got = await writer.send(new GetObjectCommand({ Bucket: BUCKET, Key: 'docs/a b.txt' }));
    expect(got.ContentType).toBe('text/plain');
    expect(await got.Body!.transformToString()).toBe('hello');
    const head = await writer.send(new HeadObjectCommand({ Bucket: BUCKET, Key: 'docs/a b.txt' }));
    expect(head.ContentLength).toBe(5);
    const listed = await writer.send(new ListObjectsV2Command({ Bucket: BUCKET, Prefix: 'docs/' }));
    expect(listed.Contents?.map((o) => o.Key)).toEqual(['docs/a b.txt']);
    await writer.send(new DeleteObjectCommand({ Bucket: BUCKET, Key: 'docs/a b.txt' }));
    expect(await stored('docs/a b.txt')).toBe(false);
  });

  it('refuses the reader a PutObject with AccessDenied, and nothing is written', async () => {
    const denied = reader.send(new PutObjectCommand({ Bucket: BUCKET, Key: 'ro/x.txt', Body: 'nope' }));
    await expect(denied).rejects.toMatchObject({ name: 'AccessDenied', $metadata: { httpStatusCode: 403 } });
    await expect(denied).rejects.toThrow(
      `User: arn:aws:sts::123456789012:assumed-role/Reader/reader is not authorized to perform: s3:PutObject on resource: ${arn('data/ro/x.txt')}`,
    );
    expect(await stored('ro/x.txt')).toBe(false);
    await expect(reader.send(new ListObjectsV2Command({ Bucket: BUCKET }))).rejects.toMatchObject({
      name: 'AccessDenied',
    });
    // What the reader may do, it can.
    await direct.send(new PutObjectCommand({ Bucket: BUCKET, Key: 'ro/y.txt', Body: 'readable' }));
    const got = await reader.send(new GetObjectCommand({ Bucket: BUCKET, Key: 'ro/y.txt' }));
    expect(await got.Body!.transformToString()).toBe('readable');
  });

  it('refuses unsigned requests, unknown keys and bad signatures', async () => {
    await direct.send(new PutObjectCommand({ Bucket: BUCKET, Key: 'auth/k.txt', Body: 'k' }));
    const unsigned = await fetch(`${proxy.url}/${BUCKET}/auth/k.txt`);
    expect(unsigned.status).toBe(403);
    expect(unsigned.headers.get('content-type')).toBe('application/xml');
    expect(await unsigned.text()).toMatch(
      /^<\?xml version="1.0" encoding="UTF-8"\?>\n<Error><Code>AccessDenied<\/Code><Message>Access Denied<\/Message><RequestId>[0-9a-f-]{36}<\/RequestId><\/Error>$/,
    );
    const stranger = client({ ...writerCredentials, accessKeyId: 'ASIAUNKNOWNUNKNOWN00' });
    await expect(
      stranger.send(new GetObjectCommand({ Bucket: BUCKET, Key: 'auth/k.txt' })),
    ).rejects.toMatchObject({ name: 'InvalidAccessKeyId', $metadata: { httpStatusCode: 403 } });
    const forger = client({ ...writerCredentials, secretAccessKey: 'not-the-secret' });
    await expect(
      forger.send(new GetObjectCommand({ Bucket: BUCKET, Key: 'auth/k.txt' })),
    ).rejects.toMatchObject({
      name: 'SignatureDoesNotMatch',
      $metadata: { httpStatusCode: 403 },
    });
    // HEAD errors carry no body; the SDK still sees the status.
    await expect(
      forger.send(new HeadObjectCommand({ Bucket: BUCKET, Key: 'auth/k.txt' })),
    ).rejects.toMatchObject({
      $metadata: { httpStatusCode: 403 },
    });
  });

  it('serves presigned GET and PUT URLs and refuses tampered and expired ones', async () => {
    await direct.send(new PutObjectCommand({ Bucket: BUCKET, Key: 'pre/get.txt', Body: 'presigned body' }));
    const getUrl = await getSignedUrl(
      writer,
      new GetObjectCommand({
        Bucket: BUCKET,
        Key: 'pre/get.txt',
        ResponseContentDisposition: 'attachment; filename="get.txt"',
      }),
      { expiresIn: 300 },
    );
    const got = await fetch(getUrl);
    expect(got.status).toBe(200);
    expect(await got.text()).toBe('presigned body');
    // s3rver applies response overrides only to requests it takes as authenticated.
    expect(got.headers.get('content-disposition')).toBe('attachment; filename="get.txt"');

    const putUrl = await getSignedUrl(writer, new PutObjectCommand({ Bucket: BUCKET, Key: 'pre/put.txt' }), {
      expiresIn: 300,
    });
    const put = await fetch(putUrl, { method: 'PUT', body: 'uploaded by URL' });
    expect(put.status).toBe(200);
    expect(await storedText('pre/put.txt')).toBe('uploaded by URL');

    const otherKey = await fetch(getUrl.replace('/pre/get.txt', '/pre/put.txt'));
    expect(otherKey.status).toBe(403);
    expect(await otherKey.text()).toContain('<Code>SignatureDoesNotMatch</Code>');
    const longer = await fetch(getUrl.replace('X-Amz-Expires=300', 'X-Amz-Expires=3000'));
    expect(longer.status).toBe(403);
    expect(await longer.text()).toContain('<Code>SignatureDoesNotMatch</Code>');

    const expiredUrl = await getSignedUrl(
      writer,
      new GetObjectCommand({ Bucket: BUCKET, Key: 'pre/get.txt' }),
      {
        expiresIn: 60,
        signingDate: new Date(Date.now() - 10 * 60_000),
      },
    );
    const expired = await fetch(expiredUrl);
    expect(expired.status).toBe(403);
    const text = await expired.text();
    expect(text).toContain('<Code>AccessDenied</Code>');
    expect(text).toContain('<Message>Request has expired</Message>');

    const readerPut = await getSignedUrl(
      reader,
      new PutObjectCommand({ Bucket: BUCKET, Key: 'pre/ro.txt' }),
      {
        expiresIn: 300,
      },
    );
    const refused = await fetch(readerPut, { method: 'PUT', body: 'x' });
    expect(refused.status).toBe(403);
    expect(await refused.text()).toContain('<Code>AccessDenied</Code>');
    expect(await stored('pre/ro.txt')).toBe(false);
  });

  describe('x-amz-checksum-sha256, as S3 checks it (s3rver does not)', () => {
    const b64 = (body: string | Buffer) => createHash('sha256').update(body).digest('base64');
    const checksumOf = async (key: string) =>
      (await writer.send(new HeadObjectCommand({ Bucket: BUCKET, Key: key, ChecksumMode: 'ENABLED' })))
        .ChecksumSHA256;

    it('refuses a PUT whose body does not hash to its checksum with 400 BadDigest and stores nothing', async () => {
      await direct.send(new PutObjectCommand({ Bucket: BUCKET, Key: 'sum/old.bin', Body: 'previous' }));
      const wrong = writer.send(
        new PutObjectCommand({
          Bucket: BUCKET,
          Key: 'sum/new.bin',
          Body: 'the bytes sent',
          ChecksumSHA256: b64('other bytes'),
        }),
      );
      await expect(wrong).rejects.toMatchObject({ name: 'BadDigest', $metadata: { httpStatusCode: 400 } });
      expect(await stored('sum/new.bin')).toBe(false);
      // Over an existing object: refused whole, the previous bytes untouched (s3rver writes in place).
      const over = writer.send(
        new PutObjectCommand({ Bucket: BUCKET, Key: 'sum/old.bin', Body: 'torn', ChecksumSHA256: b64('x') }),
      );
      await expect(over).rejects.toMatchObject({ name: 'BadDigest' });
      expect(await storedText('sum/old.bin')).toBe('previous');
      const malformed = writer.send(
        new PutObjectCommand({ Bucket: BUCKET, Key: 'sum/bad.bin', Body: 'x', ChecksumSHA256: 'abc' }),
      );
      await expect(malformed).rejects.toMatchObject({
        name: 'InvalidRequest',
        $metadata: { httpStatusCode: 400 },
      });
      expect(await stored('sum/bad.bin')).toBe(false);
    });

    it('stores a matching PUT, records the checksum and returns it only with ChecksumMode ENABLED', async () => {
      const body = randomBytes(3 * MiB + 17);
      const put = await writer.send(
        new PutObjectCommand({ Bucket: BUCKET, Key: 'sum/ok.bin', Body: body, ChecksumSHA256: b64(body) }),
      );
      expect(put.ChecksumSHA256).toBe(b64(body));
      // Stored byte for byte (read from s3rver itself).
      const raw = await fetch(`${emulator.endpoint}/${BUCKET}/sum/ok.bin`);
      expect(b64(Buffer.from(await raw.arrayBuffer()))).toBe(b64(body));
      expect(await checksumOf('sum/ok.bin')).toBe(b64(body));
      const plain = await writer.send(new HeadObjectCommand({ Bucket: BUCKET, Key: 'sum/ok.bin' }));
      expect(plain.ChecksumSHA256).toBeUndefined();
      // Hidden from user metadata, on HEAD and GET alike.
      expect(plain.Metadata).toEqual({});
      const got = await writer.send(
        new GetObjectCommand({ Bucket: BUCKET, Key: 'sum/ok.bin', ChecksumMode: 'ENABLED' }),
      );
      expect(got.ChecksumSHA256).toBe(b64(body));
      expect(got.Metadata).toEqual({});
      let length = 0;
      for await (const part of got.Body as AsyncIterable<Buffer>) length += part.length;
      expect(length).toBe(body.length);
      // A later PUT without a checksum replaces the object and its checksum alike.
      await writer.send(new PutObjectCommand({ Bucket: BUCKET, Key: 'sum/ok.bin', Body: 'plain' }));
      expect(await checksumOf('sum/ok.bin')).toBeUndefined();
    });

    it('checks a presigned PUT that signs the header, and no caller may set the hidden metadata', async () => {
      const url = await getSignedUrl(
        writer,
        new PutObjectCommand({ Bucket: BUCKET, Key: 'sum/pre.bin', ChecksumSHA256: b64('chunk') }),
        { expiresIn: 300, unhoistableHeaders: new Set(['x-amz-checksum-sha256']) },
      );
      expect(new URL(url).searchParams.get('X-Amz-SignedHeaders')).toBe('host;x-amz-checksum-sha256');
      const bad = await fetch(url, {
        method: 'PUT',
        body: 'chunk, torn',
        headers: { 'x-amz-checksum-sha256': b64('chunk') },
      });
      expect(bad.status).toBe(400);
      expect(await bad.text()).toContain('<Code>BadDigest</Code>');
      expect(await stored('sum/pre.bin')).toBe(false);
      // The header is signed: another value does not pass as the grant.
      const swapped = await fetch(url, {
        method: 'PUT',
        body: 'other',
        headers: { 'x-amz-checksum-sha256': b64('other') },
      });
      expect(swapped.status).toBe(403);
      const good = await fetch(url, {
        method: 'PUT',
        body: 'chunk',
        headers: { 'x-amz-checksum-sha256': b64('chunk') },
      });
      expect(good.status).toBe(200);
      expect(await checksumOf('sum/pre.bin')).toBe(b64('chunk'));

      const forged = writer.send(
        new PutObjectCommand({
          Bucket: BUCKET,
          Key: 'sum/forged.bin',
          Body: 'forged',
          Metadata: { 'strata-internal-checksum-sha256': b64('anything') },
        }),
      );
      await expect(forged).rejects.toMatchObject({
        name: 'InvalidArgument',
        $metadata: { httpStatusCode: 400 },
      });
      expect(await stored('sum/forged.bin')).toBe(false);
    });
  });

  it('answers Expect: 100-continue only once the upload is authorized', async () => {
    const putWithExpect = (url: string, body: Buffer) =>
      new Promise<{ status: number; continued: boolean; text: string }>((resolve, reject) => {
        let continued = false;
        const req = http.request(url, {
          method: 'PUT',
          headers: { expect: '100-continue', 'content-length': body.length },
        });
        req.on('continue', () => {
          continued = true;
          req.end(body);
        });
        req.on('response', (res) => {
          let text = '';
          res.setEncoding('utf8');
          res.on('data', (d: string) => {
            text += d;
          });
          res.on('end', () => {
            resolve({ status: res.statusCode ?? 0, continued, text });
            req.destroy();
          });
        });
        req.on('error', reject);
        req.flushHeaders();
      });
    const body = randomBytes(2 * MiB);
    const allowedUrl = await getSignedUrl(writer, new PutObjectCommand({ Bucket: BUCKET, Key: 'expect/w' }), {
      expiresIn: 300,
    });
    expect(await putWithExpect(allowedUrl, body)).toMatchObject({ status: 200, continued: true });
    const stored = await direct.send(new GetObjectCommand({ Bucket: BUCKET, Key: 'expect/w' }));
    expect(Buffer.from(await stored.Body!.transformToByteArray()).equals(body)).toBe(true);

    const deniedUrl = await getSignedUrl(reader, new PutObjectCommand({ Bucket: BUCKET, Key: 'expect/r' }), {
      expiresIn: 300,
    });
    const denied = await putWithExpect(deniedUrl, body);
    expect(denied).toMatchObject({ status: 403, continued: false });
    expect(denied.text).toContain('<Code>AccessDenied</Code>');
  });

  it('runs a multipart upload through the proxy', async () => {
    const part1 = randomBytes(5 * MiB);
    const part2 = randomBytes(1234);
    const { UploadId } = await writer.send(
      new CreateMultipartUploadCommand({ Bucket: BUCKET, Key: 'mp/object.bin' }),
    );
    expect(UploadId).toEqual(expect.any(String));
    const etags: string[] = [];
    for (const [i, part] of [part1, part2].entries()) {
      const out = await writer.send(
        new UploadPartCommand({
          Bucket: BUCKET,
          Key: 'mp/object.bin',
          UploadId,
          PartNumber: i + 1,
          Body: part,
        }),
      );
      etags.push(out.ETag!);
    }
    await writer.send(
      new CompleteMultipartUploadCommand({
        Bucket: BUCKET,
        Key: 'mp/object.bin',
        UploadId,
        MultipartUpload: { Parts: etags.map((ETag, i) => ({ ETag, PartNumber: i + 1 })) },
      }),
    );
    const got = await writer.send(new GetObjectCommand({ Bucket: BUCKET, Key: 'mp/object.bin' }));
    const bytes = Buffer.from(await got.Body!.transformToByteArray());
    expect(bytes.length).toBe(part1.length + part2.length);
    expect(bytes.equals(Buffer.concat([part1, part2]))).toBe(true);
    await expect(
      reader.send(new CreateMultipartUploadCommand({ Bucket: BUCKET, Key: 'mp/ro.bin' })),
    ).rejects.toMatchObject({ name: 'AccessDenied' });
  });

  it('needs GetObject on the source of a copy', async () => {
    await direct.send(new PutObjectCommand({ Bucket: BUCKET, Key: 'copy/src a+b:c.txt', Body: 'source' }));
    // Encoded as the Strata driver does: each segment with encodeURIComponent.
    await writer.send(
      new CopyObjectCommand({
        Bucket: BUCKET,
        Key: 'copy/dst.txt',
        CopySource: `${BUCKET}/copy/${encodeURIComponent('src a+b:c.txt')}`,
      }),
    );
    expect(await storedText('copy/dst.txt')).toBe('source');
    await writer.send(
      new CopyObjectCommand({ Bucket: BUCKET, Key: 'copy/public.txt', CopySource: `${OTHER}/public/p.txt` }),
    );
    expect(await storedText('copy/public.txt')).toBe('public');

    const denied = writer.send(
      new CopyObjectCommand({ Bucket: BUCKET, Key: 'copy/secret.txt', CopySource: `${OTHER}/secret/s.txt` }),
    );
    await expect(denied).rejects.toMatchObject({ name: 'AccessDenied', $metadata: { httpStatusCode: 403 } });
    await expect(denied).rejects.toThrow(`s3:GetObject on resource: ${arn('other/secret/s.txt')}`);
    expect(await stored('copy/secret.txt')).toBe(false);
  });

  it('checks DeleteObjects key by key', async () => {
    for (const key of ['del/1', 'del/2', 'del/3', 'protected/keep'])
      await direct.send(new PutObjectCommand({ Bucket: BUCKET, Key: key, Body: key }));
    const deleted = await writer.send(
      new DeleteObjectsCommand({ Bucket: BUCKET, Delete: { Objects: [{ Key: 'del/1' }, { Key: 'del/2' }] } }),
    );
    expect(deleted.Deleted?.map((d) => d.Key).sort()).toEqual(['del/1', 'del/2']);
    expect(await stored('del/1')).toBe(false);
    expect(await stored('del/2')).toBe(false);

    // One key the bucket policy protects: the whole request is refused, nothing deleted.
    const mixed = writer.send(
      new DeleteObjectsCommand({
        Bucket: BUCKET,
        Delete: { Objects: [{ Key: 'del/3' }, { Key: 'protected/keep' }] },
      }),
    );
    await expect(mixed).rejects.toMatchObject({ name: 'AccessDenied' });
    await expect(mixed).rejects.toThrow(`s3:DeleteObject on resource: ${arn('data/protected/keep')}`);
    expect(await stored('del/3')).toBe(true);
    expect(await stored('protected/keep')).toBe(true);
    await expect(
      reader.send(new DeleteObjectsCommand({ Bucket: BUCKET, Delete: { Objects: [{ Key: 'del/3' }] } })),
    ).rejects.toMatchObject({ name: 'AccessDenied' });
    expect(await stored('del/3')).toBe(true);
  });

  it('answers GET ?encryption with the SSE-S3 default', async () => {
    const out = await writer.send(new GetBucketEncryptionCommand({ Bucket: BUCKET }));
    expect(out.ServerSideEncryptionConfiguration?.Rules).toEqual([
      { ApplyServerSideEncryptionByDefault: { SSEAlgorithm: 'AES256' }, BucketKeyEnabled: false },
    ]);
    await expect(reader.send(new GetBucketEncryptionCommand({ Bucket: BUCKET }))).rejects.toMatchObject({
      name: 'AccessDenied',
    });
    await expect(
      writer.send(new GetBucketEncryptionCommand({ Bucket: 'missing-bucket' })),
    ).rejects.toMatchObject({ name: 'NoSuchBucket', $metadata: { httpStatusCode: 404 } });
  });

  it('lets an explicit Deny in the bucket policy block what the role allows', async () => {
    await direct.send(new PutObjectCommand({ Bucket: BUCKET, Key: 'protected/p.txt', Body: 'kept' }));
    const denied = writer.send(new DeleteObjectCommand({ Bucket: BUCKET, Key: 'protected/p.txt' }));
    await expect(denied).rejects.toMatchObject({ name: 'AccessDenied', $metadata: { httpStatusCode: 403 } });
    await expect(denied).rejects.toThrow('an explicit deny in a policy applies');
    expect(await stored('protected/p.txt')).toBe(true);
    // The same action elsewhere in the bucket is allowed.
    await direct.send(new PutObjectCommand({ Bucket: BUCKET, Key: 'unprotected/p.txt', Body: 'gone' }));
    await writer.send(new DeleteObjectCommand({ Bucket: BUCKET, Key: 'unprotected/p.txt' }));
    expect(await stored('unprotected/p.txt')).toBe(false);
  });

  it('refuses what it cannot check rather than forwarding it', async () => {
    await expect(writer.send(new GetBucketAclCommand({ Bucket: BUCKET }))).rejects.toMatchObject({
      name: 'NotImplemented',
      $metadata: { httpStatusCode: 501 },
    });
    // s3rver would write `docs/../escaped.txt` as `escaped.txt`.
    await expect(
      writer.send(new PutObjectCommand({ Bucket: BUCKET, Key: 'docs/../escaped.txt', Body: 'x' })),
    ).rejects.toMatchObject({ name: 'InvalidArgument', $metadata: { httpStatusCode: 400 } });
    expect(await stored('escaped.txt')).toBe(false);
    // The SDK's default checksums frame a streamed body as aws-chunked, which s3rver would store as is.
    const chunky = client(writerCredentials, {
      requestChecksumCalculation: 'WHEN_SUPPORTED',
      responseChecksumValidation: 'WHEN_SUPPORTED',
      // The SDK warns that a streamed request failed: that is the point here.
      logger: { debug: () => {}, info: () => {}, warn: () => {}, error: () => {} },
    });
    await expect(
      chunky.send(
        new PutObjectCommand({
          Bucket: BUCKET,
          Key: 'chunked.txt',
          Body: Readable.from([Buffer.from('chunked body')]),
          ContentLength: 12,
        }),
      ),
    ).rejects.toMatchObject({ name: 'NotImplemented' });
    expect(await stored('chunked.txt')).toBe(false);
  });

  it('streams a 64 MiB upload and download byte for byte', async () => {
    const size = 64 * MiB;
    const block = randomBytes(MiB);
    const sent = createHash('sha256');
    const body = Readable.from(
      (function* () {
        for (let i = 0; i < size / MiB; i++) {
          const chunk = Buffer.from(block);
          chunk.writeUInt32BE(i, 0);
          sent.update(chunk);
          yield chunk;
        }
      })(),
    );
    await writer.send(
      new PutObjectCommand({ Bucket: BUCKET, Key: 'big/64m.bin', Body: body, ContentLength: size }),
    );
    const expected = sent.digest('hex');
    const got = await writer.send(new GetObjectCommand({ Bucket: BUCKET, Key: 'big/64m.bin' }));
    expect(got.ContentLength).toBe(size);
    const received = createHash('sha256');
    let length = 0;
    for await (const chunk of got.Body as Readable) {
      received.update(chunk as Buffer);
      length += (chunk as Buffer).length;
    }
    expect(length).toBe(size);
    expect(received.digest('hex')).toBe(expected);
  });

  it('keeps serving after a client aborts a download midway', async () => {
    const url = await getSignedUrl(writer, new GetObjectCommand({ Bucket: BUCKET, Key: 'big/64m.bin' }), {
      expiresIn: 300,
    });
    await new Promise<void>((resolve, reject) => {
      const req = http.get(url, (res) => {
        expect(res.statusCode).toBe(200);
        res.once('data', () => {
          req.destroy();
          resolve();
        });
      });
      req.on('error', (error: NodeJS.ErrnoException) => {
        if (error.code !== 'ECONNRESET') reject(error);
      });
    });
    const head = await writer.send(new HeadObjectCommand({ Bucket: BUCKET, Key: 'big/64m.bin' }));
    expect(head.ContentLength).toBe(64 * MiB);
  });
});

describe('S3 proxy: POST Object under a presigned POST policy', () => {
  const sha = (bytes: Buffer) => createHash('sha256').update(bytes).digest();
  /** A multipart/form-data body: `fields` in order, then `file`. */
  function form(fields: Record<string, string>, file: Buffer): { body: Buffer; type: string } {
    const boundary = `b-${randomBytes(8).toString('hex')}`;
    const parts = Object.entries(fields).map(
      ([k, v]) => `--${boundary}\r\nContent-Disposition: form-data; name="${k}"\r\n\r\n${v}\r\n`,
    );
    const head = `${parts.join('')}--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n\r\n`;
    return {
      body: Buffer.concat([Buffer.from(head), file, Buffer.from(`\r\n--${boundary}--\r\n`)]),
      type: `multipart/form-data; boundary=${boundary}`,
    };
  }
  async function post(url: string, fields: Record<string, string>, file: Buffer) {
    const { body, type } = form(fields, file);
    const res = await fetch(url, { method: 'POST', body, headers: { 'content-type': type } });
    return { status: res.status, text: await res.text(), headers: res.headers };
  }
  const grant = (c: S3Client, keyPrefix = 'staging/job-1/', maxBytes = MiB, expiresSeconds = 300) =>
    signPostPolicy({ client: c, bucket: BUCKET, keyPrefix, maxBytes, expiresSeconds });
  const checksumFields = (bytes: Buffer) => ({
    'x-amz-checksum-algorithm': 'SHA256',
    'x-amz-checksum-sha256': sha(bytes).toString('base64'),
  });

  it('stores a chunk posted by the host under its hash, with its checksum kept', async () => {
    const g = await grant(writer);
    const bytes = randomBytes(300_000);
    const hex = sha(bytes).toString('hex');
    await postChunk(g, bytes, hex, 0, 30_000, new AbortController().signal);
    expect(await storedText(`staging/job-1/${hex}`).then((t) => t.length)).toBeGreaterThan(0);
    const head = await writer.send(
      new HeadObjectCommand({ Bucket: BUCKET, Key: `staging/job-1/${hex}`, ChecksumMode: 'ENABLED' }),
    );
    expect(head.ContentLength).toBe(bytes.length);
    expect(head.ChecksumSHA256).toBe(sha(bytes).toString('base64'));
    // A server-side copy keeps the checksum, as S3's CopyObject does.
    await writer.send(
      new CopyObjectCommand({
        Bucket: BUCKET,
        Key: `chunks/${hex}`,
        CopySource: `${BUCKET}/staging/job-1/${hex}`,
      }),
    );
    const copied = await writer.send(
      new HeadObjectCommand({ Bucket: BUCKET, Key: `chunks/${hex}`, ChecksumMode: 'ENABLED' }),
    );
    expect(copied.ChecksumSHA256).toBe(sha(bytes).toString('base64'));
  });

  it('refuses a body that does not match its declared SHA-256, and stores nothing', async () => {
    const g = await grant(writer);
    const bytes = randomBytes(1000);
    const { status, text } = await post(
      g.url,
      { ...g.fields, key: 'staging/job-1/bad', ...checksumFields(randomBytes(1000)) },
      bytes,
    );
    expect(status).toBe(400);
    expect(text).toContain('<Code>BadDigest</Code>');
    expect(await stored('staging/job-1/bad')).toBe(false);
  });

  it.each<[string, (g: Awaited<ReturnType<typeof grant>>, b: Buffer) => Record<string, string>, RegExp]>([
    [
      'a key outside the prefix',
      (g, b) => ({ ...g.fields, key: 'other/x', ...checksumFields(b) }),
      /Condition failed/,
    ],
    [
      'a field the policy does not name',
      (g, b) => ({ ...g.fields, key: 'staging/job-1/x', acl: 'public-read', ...checksumFields(b) }),
      /Extra input fields: acl/,
    ],
    [
      'a tampered policy',
      (g, b) => ({
        ...g.fields,
        policy: Buffer.from(
          Buffer.from(g.fields.policy!, 'base64').toString().replace('staging/job-1/', 'staging/'),
        ).toString('base64'),
        key: 'staging/x',
        ...checksumFields(b),
      }),
      /SignatureDoesNotMatch/,
    ],
    [
      'no checksum algorithm',
      (g, b) => ({
        ...g.fields,
        key: 'staging/job-1/x',
        'x-amz-checksum-sha256': checksumFields(b)['x-amz-checksum-sha256'],
      }),
      /Condition failed/,
    ],
  ])('refuses %s', async (_what, fieldsOf, error) => {
    const g = await grant(writer);
    const bytes = randomBytes(100);
    const fields = fieldsOf(g, bytes);
    const { status, text } = await post(g.url, fields, bytes);
    expect(status).toBe(403);
    expect(text).toMatch(error);
    expect(await stored(fields.key!)).toBe(false);
  });

  it('refuses a file over the size range, an expired policy and a role without PutObject', async () => {
    const small = await grant(writer, 'staging/job-1/', 1000);
    const big = randomBytes(5000);
    const over = await post(
      small.url,
      { ...small.fields, key: 'staging/job-1/big', ...checksumFields(big) },
      big,
    );
    expect(over.status).toBe(403);
    expect(over.text).toMatch(/exceeds the maximum allowed size/);
    expect(await stored('staging/job-1/big')).toBe(false);

    const bytes = randomBytes(10);
    const expired = await signPostPolicy({
      client: writer,
      bucket: BUCKET,
      keyPrefix: 'staging/job-1/',
      maxBytes: 100,
      expiresSeconds: 60,
      now: new Date(Date.now() - 120_000),
    });
    const late = await post(
      expired.url,
      { ...expired.fields, key: 'staging/job-1/late', ...checksumFields(bytes) },
      bytes,
    );
    expect(late.status).toBe(403);
    expect(late.text).toMatch(/Policy expired/);

    const readers = await grant(reader);
    const denied = await post(
      readers.url,
      { ...readers.fields, key: 'staging/job-1/r', ...checksumFields(bytes) },
      bytes,
    );
    expect(denied.status).toBe(403);
    expect(denied.text).toContain('<Code>AccessDenied</Code>');
    expect(await stored('staging/job-1/r')).toBe(false);
  });
});
