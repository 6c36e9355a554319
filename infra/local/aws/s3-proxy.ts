/**
 * The embedded stack's S3 endpoint: an authorizing reverse proxy in front of s3rver. Each request is
 * SigV4-verified (an Authorization header or a presigned URL), every IAM action it needs is
 * evaluated against the signer's role and the bucket's policy, and only then is it forwarded, bodies
 * streamed both ways (objects can be gigabytes; nothing but a DeleteObjects key list is buffered).
 * Presigned URLs are checked against the role that signed them, as S3 does.
 *
 * Path-style addressing only (the SDK uses it for an IP endpoint). `GET ?encryption` is answered
 * here with the SSE-S3 default the stack's buckets have: s3rver does not implement it.
 */

import { randomUUID } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import http from 'node:http';
import type { Logger } from '../../../drivers/sdk/types.js';
import { type LocalEndpoint, listen } from './aws-server.js';
import { AccessDeniedError, type IamAuthorizer, type PolicyDocument } from './iam-authorizer.js';
import type { LocalAccount, LocalCredentialStore } from './principals.js';
import { SignatureError, verifySignature } from './sigv4-verify.js';

export interface S3ProxyOptions {
  /** s3rver's endpoint, http://127.0.0.1:PORT */
  upstream: string;
  credentials: LocalCredentialStore;
  authorizer: IamAuthorizer;
  account: LocalAccount;
  /** The bucket's policy (from the template), evaluated as the resource policy. */
  bucketPolicy?: (bucket: string) => PolicyDocument | undefined;
  logger?: Logger;
  port?: number;
}

export interface S3Authorization {
  action: string;
  resource: string;
}

/** A request the proxy will not forward unchecked. */
class S3RequestError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly status: number,
  ) {
    super(message);
    this.name = code;
  }
}

const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'expect',
  'host',
]);
const DELETE_BODY_LIMIT = 1024 * 1024;
/** The signature's own parts: s3rver knows only its own key, so verified requests reach it anonymously. */
const SIGNATURE_HEADERS = new Set(['authorization', 'x-amz-security-token']);
const SIGNATURE_QUERY = /^x-amz-(algorithm|credential|date|expires|signedheaders|signature|security-token)$/i;

/** The request target without the presigned URL's signature parameters (the rest as sent). */
function unsignedTarget(url: string): string {
  const q = url.indexOf('?');
  if (q < 0) return url;
  const kept = url
    .slice(q + 1)
    .split('&')
    .filter((pair) => pair && !SIGNATURE_QUERY.test(decodeURIComponent(pair.split('=')[0] ?? '')));
  return kept.length ? `${url.slice(0, q)}?${kept.join('&')}` : url.slice(0, q);
}

function decode(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch {
    throw new S3RequestError('InvalidURI', 'Couldn\u2019t parse the specified URI.', 400);
  }
}

/** Bucket and key of a path-style request target. */
function target(url: string): { bucket: string; key: string; query: URLSearchParams } {
  const q = url.indexOf('?');
  const rawPath = q < 0 ? url : url.slice(0, q);
  const query = new URLSearchParams(q < 0 ? '' : url.slice(q + 1));
  const slash = rawPath.indexOf('/', 1);
  const bucket = decode(slash < 0 ? rawPath.slice(1) : rawPath.slice(1, slash));
  const key = slash < 0 ? '' : decode(rawPath.slice(slash + 1));
  return { bucket, key, query };
}

/** The source of a copy (`/bucket/key` or `bucket/key`, maybe `?versionId=`) as an object ARN. */
function copySource(header: string): string {
  const [path] = decode(header).split('?');
  const trimmed = (path ?? '').replace(/^\/+/, '');
  if (!trimmed.includes('/'))
    throw new S3RequestError('InvalidArgument', 'x-amz-copy-source is malformed', 400);
  return `arn:aws:s3:::${trimmed}`;
}

/**
 * The IAM checks one S3 REST request needs (path-style). DeleteObjects' per-key checks come from its
 * body, see {@link deleteObjectsAuthorizations}.
 */
export function s3Authorizations(request: {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
}): S3Authorization[] {
  const { bucket, key, query } = target(request.url);
  if (!bucket) throw new S3RequestError('NotImplemented', 'ListBuckets is not served locally', 501);
  const method = request.method.toUpperCase();
  const bucketArn = `arn:aws:s3:::${bucket}`;
  const objectArn = `${bucketArn}/${key}`;
  const has = (name: string) => query.has(name);
  const header = (name: string) => {
    const v = request.headers[name];
    return Array.isArray(v) ? v[0] : v;
  };
  if (!key) {
    if ((method === 'GET' || method === 'HEAD') && has('uploads')) {
      return [{ action: 's3:ListBucketMultipartUploads', resource: bucketArn }];
    }
    if (method === 'GET' && has('encryption'))
      return [{ action: 's3:GetEncryptionConfiguration', resource: bucketArn }];
    if (method === 'POST' && has('delete')) return [];
    const subresources = [
      'acl',
      'policy',
      'cors',
      'lifecycle',
      'versioning',
      'tagging',
      'location',
      'logging',
      'website',
    ];
    if (subresources.some(has)) {
      throw new S3RequestError('NotImplemented', 'bucket configuration requests are not served locally', 501);
    }
    if (method === 'GET' || method === 'HEAD') return [{ action: 's3:ListBucket', resource: bucketArn }];
    if (method === 'PUT') return [{ action: 's3:CreateBucket', resource: bucketArn }];
    if (method === 'DELETE') return [{ action: 's3:DeleteBucket', resource: bucketArn }];
    throw new S3RequestError('NotImplemented', `${method} on a bucket is not served locally`, 501);
  }
  const objectSubresources = [
    'acl',
    'tagging',
    'retention',
    'legal-hold',
    'restore',
    'select',
    'torrent',
    'attributes',
  ];
  if (objectSubresources.some(has)) {
    throw new S3RequestError('NotImplemented', 'object subresource requests are not served locally', 501);
  }
  const copy = header('x-amz-copy-source');
  const checks: S3Authorization[] = [];
  if (method === 'GET' || method === 'HEAD') {
    if (has('uploadId')) return [{ action: 's3:ListMultipartUploadParts', resource: objectArn }];
    return [{ action: 's3:GetObject', resource: objectArn }];
  }
  if (method === 'PUT') {
    checks.push({ action: 's3:PutObject', resource: objectArn });
    if (copy) checks.push({ action: 's3:GetObject', resource: copySource(copy) });
    const grants = Object.keys(request.headers).some(
      (h) => h === 'x-amz-acl' || h.startsWith('x-amz-grant-'),
    );
    if (grants && !has('uploadId')) checks.push({ action: 's3:PutObjectAcl', resource: objectArn });
    return checks;
  }
  if (method === 'POST') {
    if (has('uploads') || has('uploadId')) return [{ action: 's3:PutObject', resource: objectArn }];
    throw new S3RequestError('NotImplemented', 'POST object uploads are not served locally', 501);
  }
  if (method === 'DELETE') {
    if (has('uploadId')) return [{ action: 's3:AbortMultipartUpload', resource: objectArn }];
    return [{ action: 's3:DeleteObject', resource: objectArn }];
  }
  throw new S3RequestError('NotImplemented', `${method} on an object is not served locally`, 501);
}

/** s3:DeleteObject on each key a DeleteObjects body names. */
export function deleteObjectsAuthorizations(bucket: string, body: string): S3Authorization[] {
  const keys = [...body.matchAll(/<Key>([\s\S]*?)<\/Key>/g)].map((m) =>
    m[1]!
      .replace(/&lt;/g, '<')
      .replace(/&gt;/g, '>')
      .replace(/&quot;/g, '"')
      .replace(/&apos;/g, "'")
      .replace(/&#(\d+);/g, (_, n: string) => String.fromCodePoint(Number(n)))
      .replace(/&amp;/g, '&'),
  );
  if (keys.length === 0) throw new S3RequestError('MalformedXML', 'DeleteObjects names no key', 400);
  return keys.map((key) => ({ action: 's3:DeleteObject', resource: `arn:aws:s3:::${bucket}/${key}` }));
}

function xmlEscape(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

function sendError(
  res: http.ServerResponse,
  method: string,
  status: number,
  code: string,
  message: string,
): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const requestId = randomUUID();
  const body =
    `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${code}</Code><Message>${xmlEscape(message)}</Message>` +
    `<RequestId>${requestId}</RequestId></Error>`;
  res.writeHead(status, {
    'content-type': 'application/xml',
    'x-amz-request-id': requestId,
    ...(method === 'HEAD' ? {} : { 'content-length': Buffer.byteLength(body) }),
  });
  res.end(method === 'HEAD' ? undefined : body);
}

function mapError(error: unknown): { status: number; code: string; message: string } {
  if (error instanceof AccessDeniedError)
    return { status: 403, code: 'AccessDenied', message: error.message };
  if (error instanceof S3RequestError)
    return { status: error.status, code: error.code, message: error.message };
  if (error instanceof SignatureError) {
    switch (error.code) {
      case 'MissingAuthenticationToken':
        return { status: 403, code: 'AccessDenied', message: 'Access Denied' };
      case 'SignatureDoesNotMatch':
      case 'InvalidSignatureException':
        return { status: 403, code: 'SignatureDoesNotMatch', message: error.message };
      case 'InvalidClientTokenId':
      case 'UnrecognizedClientException':
        return {
          status: 403,
          code: 'InvalidAccessKeyId',
          message: 'The AWS Access Key Id you provided does not exist in our records.',
        };
      case 'RequestExpired':
        return { status: 403, code: 'AccessDenied', message: 'Request has expired' };
      default:
        return { status: 400, code: error.code, message: error.message };
    }
  }
  return { status: 500, code: 'InternalError', message: (error as Error)?.message ?? 'internal error' };
}

const ENCRYPTION_XML =
  '<?xml version="1.0" encoding="UTF-8"?>\n<ServerSideEncryptionConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">' +
  '<Rule><ApplyServerSideEncryptionByDefault><SSEAlgorithm>AES256</SSEAlgorithm></ApplyServerSideEncryptionByDefault>' +
  '<BucketKeyEnabled>false</BucketKeyEnabled></Rule></ServerSideEncryptionConfiguration>';

function readLimited(req: http.IncomingMessage, limit: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        reject(new S3RequestError('MaxMessageLengthExceeded', 'Your request was too big.', 400));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

/**
 * Starts the proxy on 127.0.0.1.
 *
 * @example
 * const s3 = await startS3Proxy({ upstream: s3rver.endpoint, credentials, authorizer, account });
 * // functions get AWS_ENDPOINT_URL_S3=s3.url
 */
export async function startS3Proxy(options: S3ProxyOptions): Promise<LocalEndpoint> {
  const upstream = new URL(options.upstream);
  const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });

  const forward = (req: http.IncomingMessage, res: http.ServerResponse, body?: Buffer) => {
    const headers: http.OutgoingHttpHeaders = {};
    for (const [name, value] of Object.entries(req.headers)) {
      if (value !== undefined && !HOP_BY_HOP.has(name) && !SIGNATURE_HEADERS.has(name)) headers[name] = value;
    }
    headers.host = upstream.host;
    if (body) headers['content-length'] = body.length;
    else if (req.headers['transfer-encoding'] && !req.headers['content-length'])
      headers['transfer-encoding'] = 'chunked';
    const outbound = http.request(
      {
        protocol: upstream.protocol,
        hostname: upstream.hostname,
        port: upstream.port,
        method: req.method,
        path: unsignedTarget(req.url ?? '/'),
        headers,
        agent,
      },
      (answer) => {
        const back: http.OutgoingHttpHeaders = {};
        for (const [name, value] of Object.entries(answer.headers)) {
          if (value !== undefined && !HOP_BY_HOP.has(name)) back[name] = value;
        }
        res.writeHead(answer.statusCode ?? 502, back);
        answer.pipe(res);
        answer.on('error', () => res.destroy());
      },
    );
    outbound.on('error', (error) => {
      options.logger?.warn('S3 proxy upstream request failed', { error: error.message });
      sendError(res, req.method ?? 'GET', 502, 'ServiceUnavailable', 'the local S3 emulator did not answer');
    });
    res.on('close', () => {
      if (!res.writableFinished) outbound.destroy();
    });
    if (body) outbound.end(body);
    else {
      req.pipe(outbound);
      req.on('aborted', () => outbound.destroy());
    }
  };

  const server = http.createServer((req, res) => {
    const method = (req.method ?? 'GET').toUpperCase();
    void (async () => {
      try {
        const caller = verifySignature(
          { method, url: req.url ?? '/', headers: req.headers },
          options.credentials,
          {
            service: 's3',
          },
        );
        const url = req.url ?? '/';
        const { bucket, query } = target(url);
        const resourcePolicy = bucket ? options.bucketPolicy?.(bucket) : undefined;
        const authorize = async (checks: S3Authorization[]) => {
          for (const check of checks) {
            await options.authorizer.authorize({
              principal: caller.principal,
              action: check.action,
              resource: check.resource,
              ...(resourcePolicy ? { resourcePolicy } : {}),
            });
          }
        };
        const checks = s3Authorizations({ method, url, headers: req.headers });
        if (method === 'POST' && query.has('delete') && checks.length === 0) {
          const body = await readLimited(req, DELETE_BODY_LIMIT);
          await authorize(deleteObjectsAuthorizations(bucket, body.toString('utf8')));
          forward(req, res, body);
          return;
        }
        await authorize(checks);
        if (method === 'GET' && query.has('encryption') && !target(url).key) {
          res.writeHead(200, {
            'content-type': 'application/xml',
            'content-length': Buffer.byteLength(ENCRYPTION_XML),
          });
          res.end(ENCRYPTION_XML);
          return;
        }
        forward(req, res);
      } catch (error) {
        const { status, code, message } = mapError(error);
        if (status >= 500) options.logger?.error('S3 proxy failed', { error: message });
        // The body of a refused upload is not read; close the connection rather than drain it.
        res.setHeader('connection', 'close');
        sendError(res, method, status, code, message);
        req.resume();
      }
    })();
  });
  const endpoint = await listen(server, options.port);
  return {
    url: endpoint.url,
    close: async () => {
      await endpoint.close();
      agent.destroy();
    },
  };
}
