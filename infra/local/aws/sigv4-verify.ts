/**
 * Server-side AWS Signature Version 4: recomputes the signature of an incoming request (an
 * `Authorization` header or a presigned URL's query) from the caller's secret and compares it, as
 * AWS endpoints do. The canonical request follows the SigV4 specification; S3 signs its path as
 * sent, every other service the path's segments encoded once more.
 *
 * What is not checked: the payload hash an S3 client declares in `x-amz-content-sha256` is taken as
 * declared (S3 itself would compare it with the body), and aws-chunked streaming signatures are not
 * verified chunk by chunk. The request's own signature always is.
 */
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import type { LocalCredentialStore, Principal } from './principals.js';

const ALGORITHM = 'AWS4-HMAC-SHA256';
/** Requests signed further from now than this are refused, as AWS does (15 minutes). */
const CLOCK_SKEW_MS = 15 * 60 * 1000;
const MAX_PRESIGN_SECONDS = 7 * 24 * 3600;

/** A refused signature, with the error code the service would answer. */
export class SignatureError extends Error {
  constructor(
    readonly code:
      | 'MissingAuthenticationToken'
      | 'IncompleteSignature'
      | 'UnrecognizedClientException'
      | 'InvalidSignatureException'
      | 'SignatureDoesNotMatch'
      | 'ExpiredToken'
      | 'RequestExpired'
      | 'InvalidClientTokenId',
    message: string,
  ) {
    super(message);
    this.name = 'SignatureError';
  }
}

export interface SignedRequest {
  method: string;
  /** The request target exactly as received: path and query, still encoded. */
  url: string;
  headers: IncomingHttpHeaders;
  /** The body, for services whose payload is signed (the JSON protocols). */
  body?: Buffer;
}

export interface VerifiedCaller {
  principal: Principal;
  accessKeyId: string;
  region: string;
  service: string;
  /** True when the signature came in the query string (a presigned URL). */
  presigned: boolean;
}

/** RFC 3986 encoding as SigV4 uses it: everything but unreserved characters. */
function encode(value: string): string {
  return encodeURIComponent(value).replace(
    /[!'()*]/g,
    (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`,
  );
}

function sha256Hex(data: string | Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

function hmac(key: Buffer | string, data: string): Buffer {
  return createHmac('sha256', key).update(data, 'utf8').digest();
}

function headerValue(headers: IncomingHttpHeaders, name: string): string | undefined {
  const v = headers[name];
  return Array.isArray(v) ? v.join(',') : v;
}

/** `AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…` into its parts. */
function parseAuthorization(value: string): { credential: string; signedHeaders: string; signature: string } {
  if (!value.startsWith(`${ALGORITHM} `)) {
    throw new SignatureError('IncompleteSignature', `Authorization header must use ${ALGORITHM}`);
  }
  const parts: Record<string, string> = {};
  for (const piece of value.slice(ALGORITHM.length + 1).split(',')) {
    const eq = piece.indexOf('=');
    if (eq > 0) parts[piece.slice(0, eq).trim()] = piece.slice(eq + 1).trim();
  }
  const { Credential: credential, SignedHeaders: signedHeaders, Signature: signature } = parts;
  if (!credential || !signedHeaders || !signature) {
    throw new SignatureError(
      'IncompleteSignature',
      'Authorization header lacks Credential, SignedHeaders or Signature',
    );
  }
  return { credential, signedHeaders, signature };
}

function parseAmzDate(value: string): Date {
  const m = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(value);
  if (!m)
    throw new SignatureError('IncompleteSignature', `X-Amz-Date ${value} is not in ISO 8601 basic format`);
  return new Date(Date.UTC(+m[1]!, +m[2]! - 1, +m[3]!, +m[4]!, +m[5]!, +m[6]!));
}

/** The canonical path of every service but S3: `.`/`..` and empty segments resolved, then encoded. */
function doubleEncodedPath(path: string): string {
  const segments: string[] = [];
  for (const segment of path.split('/')) {
    if (segment === '' || segment === '.') continue;
    if (segment === '..') segments.pop();
    else segments.push(segment);
  }
  const normalized = `${path.startsWith('/') ? '/' : ''}${segments.join('/')}${segments.length > 0 && path.endsWith('/') ? '/' : ''}`;
  return encode(normalized).replace(/%2F/g, '/');
}

/**
 * Verifies a request's SigV4 signature against `credentials` and returns who signed it. Throws a
 * {@link SignatureError} (never a plain Error) for anything a real endpoint would refuse.
 */
export function verifySignature(
  request: SignedRequest,
  credentials: LocalCredentialStore,
  options: { service: string; now?: Date },
): VerifiedCaller {
  const now = options.now ?? new Date();
  // The raw target, not a parsed URL: parsing would resolve `.`/`..` and re-encode characters.
  const q = request.url.indexOf('?');
  const rawPath = q < 0 ? request.url : request.url.slice(0, q);
  const rawQuery = q < 0 ? '' : request.url.slice(q + 1);
  const query: [string, string][] = rawQuery
    .split('&')
    .filter(Boolean)
    .map((pair) => {
      const eq = pair.indexOf('=');
      const k = eq < 0 ? pair : pair.slice(0, eq);
      const v = eq < 0 ? '' : pair.slice(eq + 1);
      const decode = (s: string) => {
        try {
          return decodeURIComponent(s.replace(/\+/g, '%20'));
        } catch {
          throw new SignatureError('IncompleteSignature', 'malformed percent-encoding in the query string');
        }
      };
      return [decode(k), decode(v)];
    });
  const queryValue = (name: string) => query.find(([k]) => k === name)?.[1];

  const authorization = headerValue(request.headers, 'authorization');
  const presigned = authorization === undefined && queryValue('X-Amz-Algorithm') !== undefined;
  let credential: string;
  let signedHeaders: string;
  let signature: string;
  let amzDate: string;
  let token: string | undefined;
  if (authorization !== undefined) {
    ({ credential, signedHeaders, signature } = parseAuthorization(authorization));
    amzDate = headerValue(request.headers, 'x-amz-date') ?? '';
    token = headerValue(request.headers, 'x-amz-security-token');
  } else if (presigned) {
    if (queryValue('X-Amz-Algorithm') !== ALGORITHM) {
      throw new SignatureError('IncompleteSignature', `X-Amz-Algorithm must be ${ALGORITHM}`);
    }
    credential = queryValue('X-Amz-Credential') ?? '';
    signedHeaders = queryValue('X-Amz-SignedHeaders') ?? '';
    signature = queryValue('X-Amz-Signature') ?? '';
    amzDate = queryValue('X-Amz-Date') ?? '';
    token = queryValue('X-Amz-Security-Token');
    if (!credential || !signedHeaders || !signature || !amzDate) {
      throw new SignatureError('IncompleteSignature', 'the presigned URL lacks a required X-Amz-* parameter');
    }
  } else {
    throw new SignatureError('MissingAuthenticationToken', 'Request is missing Authentication Token');
  }

  const [accessKeyId, scopeDate, region, service, terminator] = credential.split('/');
  if (!accessKeyId || !scopeDate || !region || !service || terminator !== 'aws4_request') {
    throw new SignatureError('IncompleteSignature', `malformed credential scope ${credential}`);
  }
  if (service !== options.service) {
    throw new SignatureError(
      'InvalidSignatureException',
      `credential should be scoped to service ${options.service}, not ${service}`,
    );
  }
  const issued = credentials.lookup(accessKeyId);
  if (!issued) {
    throw new SignatureError(
      options.service === 's3' ? 'InvalidClientTokenId' : 'UnrecognizedClientException',
      'The security token included in the request is invalid.',
    );
  }
  if (token !== issued.sessionToken) {
    throw new SignatureError(
      'UnrecognizedClientException',
      'The security token included in the request is invalid.',
    );
  }
  const signedAt = parseAmzDate(amzDate);
  if (!amzDate.startsWith(scopeDate)) {
    throw new SignatureError('SignatureDoesNotMatch', 'the credential scope date differs from X-Amz-Date');
  }
  if (presigned) {
    const expires = Number(queryValue('X-Amz-Expires') ?? '');
    if (!Number.isInteger(expires) || expires < 1 || expires > MAX_PRESIGN_SECONDS) {
      throw new SignatureError('IncompleteSignature', 'X-Amz-Expires must be between 1 and 604800 seconds');
    }
    if (now.getTime() > signedAt.getTime() + expires * 1000) {
      throw new SignatureError('RequestExpired', 'Request has expired');
    }
    if (signedAt.getTime() - now.getTime() > CLOCK_SKEW_MS) {
      throw new SignatureError('RequestExpired', 'Request is not yet valid');
    }
  } else if (Math.abs(now.getTime() - signedAt.getTime()) > CLOCK_SKEW_MS) {
    throw new SignatureError('RequestExpired', 'Signature expired: the request time is too far from now');
  }

  const names = signedHeaders.split(';');
  if (!names.includes('host'))
    throw new SignatureError('IncompleteSignature', 'the host header must be signed');
  const canonicalHeaders = names
    .map((name) => {
      const value = headerValue(request.headers, name);
      if (value === undefined)
        throw new SignatureError('SignatureDoesNotMatch', `signed header ${name} is missing`);
      return `${name}:${value.trim().replace(/\s+/g, ' ')}\n`;
    })
    .join('');
  const canonicalQuery = query
    .filter(([k]) => !(presigned && k === 'X-Amz-Signature'))
    .map(([k, v]) => [encode(k), encode(v)] as const)
    .sort(([ak, av], [bk, bv]) => (ak < bk ? -1 : ak > bk ? 1 : av < bv ? -1 : av > bv ? 1 : 0))
    .map(([k, v]) => `${k}=${v}`)
    .join('&');
  const path = rawPath || '/';
  // S3 signs the path as sent; the other services normalise it and encode it once more.
  const canonicalPath = service === 's3' ? path : doubleEncodedPath(path);
  // S3 signs the payload hash the client declares (or UNSIGNED-PAYLOAD); every other service the
  // hash of the body it received, whatever a header says.
  let payloadHash: string;
  if (service === 's3') {
    const declared = presigned
      ? (queryValue('X-Amz-Content-Sha256') ?? 'UNSIGNED-PAYLOAD')
      : headerValue(request.headers, 'x-amz-content-sha256');
    if (declared === undefined)
      throw new SignatureError('IncompleteSignature', 'x-amz-content-sha256 is required');
    payloadHash = declared;
  } else {
    payloadHash = sha256Hex(request.body ?? Buffer.alloc(0));
  }
  const canonicalRequest = [
    request.method.toUpperCase(),
    canonicalPath,
    canonicalQuery,
    canonicalHeaders,
    signedHeaders,
    payloadHash,
  ].join('\n');
  const scope = `${scopeDate}/${region}/${service}/aws4_request`;
  const stringToSign = [ALGORITHM, amzDate, scope, sha256Hex(canonicalRequest)].join('\n');
  const key = hmac(
    hmac(hmac(hmac(`AWS4${issued.secretAccessKey}`, scopeDate), region), service),
    'aws4_request',
  );
  const expected = createHmac('sha256', key).update(stringToSign, 'utf8').digest();
  const given = Buffer.from(signature, 'hex');
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
    throw new SignatureError(
      service === 's3' ? 'SignatureDoesNotMatch' : 'InvalidSignatureException',
      'The request signature we calculated does not match the signature you provided.',
    );
  }
  return { principal: issued.principal, accessKeyId, region, service, presigned };
}
