import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { GetObjectCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { SFNClient, StartExecutionCommand } from '@aws-sdk/client-sfn';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { LocalCredentialStore } from '../../../infra/local/aws/principals.js';
import {
  SignatureError,
  type SignedRequest,
  verifySignature,
} from '../../../infra/local/aws/sigv4-verify.js';

const ROLE = 'arn:aws:iam::123456789012:role/Strata-ApiRole-ABC';

/** A server that records each request's verification, and the raw requests for replays. */
async function recorder(credentials: LocalCredentialStore, service: string) {
  const seen: { request: SignedRequest; outcome: string }[] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const request = {
        method: req.method!,
        url: req.url!,
        headers: req.headers,
        body: Buffer.concat(chunks),
      };
      let outcome: string;
      try {
        outcome = `ok:${verifySignature(request, credentials, { service }).principal.arn}`;
      } catch (e) {
        outcome = e instanceof SignatureError ? `refused:${e.code}` : `error:${(e as Error).message}`;
      }
      seen.push({ request, outcome });
      res.writeHead(200, { 'content-type': 'application/x-amz-json-1.0', etag: '"e"' });
      res.end(
        service === 's3'
          ? ''
          : JSON.stringify({
              executionArn: 'arn:aws:states:us-east-1:123456789012:execution:m:n',
              startDate: 1,
            }),
      );
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return { url, seen, close: () => new Promise<void>((r) => server.close(() => r())) };
}

describe('verifySignature', () => {
  const credentials = new LocalCredentialStore();
  const issued = credentials.issue(ROLE, 'api');

  it('accepts what the SDK signs for a JSON-protocol service and names the role session', async () => {
    const server = await recorder(credentials, 'states');
    const sfn = new SFNClient({ region: 'us-east-1', endpoint: server.url, credentials: issued });
    await sfn.send(
      new StartExecutionCommand({
        stateMachineArn: 'arn:aws:states:us-east-1:123456789012:stateMachine:m',
        input: '{"a":"b c"}',
      }),
    );
    sfn.destroy();
    await server.close();
    expect(server.seen.map((s) => s.outcome)).toEqual([
      'ok:arn:aws:sts::123456789012:assumed-role/Strata-ApiRole-ABC/api',
    ]);
  });

  it('refuses a wrong secret, an unknown key, a tampered body and another service', async () => {
    const server = await recorder(credentials, 'states');
    const send = (creds: typeof issued) =>
      new SFNClient({ region: 'us-east-1', endpoint: server.url, credentials: creds, maxAttempts: 1 })
        .send(
          new StartExecutionCommand({
            stateMachineArn: 'arn:aws:states:us-east-1:123456789012:stateMachine:m',
          }),
        )
        .catch(() => undefined);
    await send({ ...issued, secretAccessKey: 'wrong' });
    await send({ ...issued, accessKeyId: 'ASIAUNKNOWNUNKNOWN00' });
    await send({ ...issued, sessionToken: 'stolen' });
    await send(issued);
    const good = server.seen[3]!.request;
    const tampered = {
      ...good,
      body: Buffer.from(good.body!.toString().replace('stateMachine:m', 'stateMachine:x')),
    };
    const unsignedClaim = {
      ...good,
      headers: { ...good.headers, 'x-amz-content-sha256': 'UNSIGNED-PAYLOAD' },
    };
    await server.close();
    expect(server.seen.slice(0, 3).map((s) => s.outcome)).toEqual([
      'refused:InvalidSignatureException',
      'refused:UnrecognizedClientException',
      'refused:UnrecognizedClientException',
    ]);
    expect(() => verifySignature(good, credentials, { service: 'states' })).not.toThrow();
    expect(() => verifySignature(tampered, credentials, { service: 'states' })).toThrow(SignatureError);
    // Outside S3 the body's own hash is what was signed, whatever a header claims.
    expect(() =>
      verifySignature({ ...unsignedClaim, body: tampered.body }, credentials, { service: 'states' }),
    ).toThrow(SignatureError);
    expect(() => verifySignature(good, credentials, { service: 'ssm' })).toThrow(/scoped to service ssm/);
    expect(() =>
      verifySignature({ ...good, headers: { ...good.headers, authorization: undefined } }, credentials, {
        service: 'states',
      }),
    ).toThrow(/missing Authentication Token/);
  });

  it('accepts S3 header signatures over keys that need encoding, and streamed bodies', async () => {
    const server = await recorder(credentials, 's3');
    const s3 = new S3Client({
      region: 'us-east-1',
      endpoint: server.url,
      forcePathStyle: true,
      credentials: issued,
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
    });
    await s3.send(new PutObjectCommand({ Bucket: 'b', Key: 'a/b c+d~(x)/ä.txt', Body: 'hello' }));
    s3.destroy();
    await server.close();
    expect(server.seen[0]!.outcome).toMatch(/^ok:/);
    expect(server.seen[0]!.request.url).toContain('/b/a/b%20c%2Bd~%28x%29/');
  });

  it('accepts a presigned URL until it expires, and refuses it tampered or late', async () => {
    const server = await recorder(credentials, 's3');
    const s3 = new S3Client({
      region: 'us-east-1',
      endpoint: server.url,
      forcePathStyle: true,
      credentials: issued,
    });
    const url = await getSignedUrl(s3, new GetObjectCommand({ Bucket: 'b', Key: 'x y/z' }), {
      expiresIn: 60,
    });
    await fetch(url);
    await fetch(url.replace('x%20y', 'x%20q'));
    s3.destroy();
    await server.close();
    expect(server.seen.map((s) => s.outcome)).toEqual([
      expect.stringMatching(/^ok:/),
      'refused:SignatureDoesNotMatch',
    ]);
    const later = new Date(Date.now() + 61_000);
    expect(() =>
      verifySignature(server.seen[0]!.request, credentials, { service: 's3', now: later }),
    ).toThrow(/Request has expired/);
  });
});
