/**
 * The embedded stack's S3 endpoint (`AWS_ENDPOINT_URL_S3`): an authorizing reverse proxy in front of
 * s3rver. s3rver checks neither signatures nor permissions, so without this a Lambda bundle whose
 * role lacks an S3 action would pass locally and fail on AWS. Each request is SigV4-verified (an
 * `Authorization` header or a presigned URL), every IAM action it needs is evaluated against the
 * signing role's policies and the bucket's policy, and only then is it forwarded. Bodies are piped
 * both ways with back-pressure (objects can be gigabytes); the one body read here is a DeleteObjects
 * key list, which names the resources to check. s3rver knows none of the callers' keys: it is
 * reached as its own built-in account, the caller's signature and session token left behind.
 *
 * Path-style addressing only (the SDK uses it for an IP endpoint). Requests the proxy cannot map to
 * IAM actions are refused with 501 rather than forwarded unchecked. `GET ?encryption` is answered
 * here with the SSE-S3 default every bucket has on AWS: s3rver does not implement it.
 *
 * Where s3rver would act on something other than what was authorized, the request is refused or
 * rewritten so that it cannot: object keys with `.`/`..`/empty segments (s3rver joins keys into file
 * paths, so `a/../b` would be written as `b`), a copy source (s3rver decodes it with `decodeURI`),
 * aws-chunked bodies (s3rver stores the framing as the object's bytes). Condition keys (`s3:prefix`,
 * `s3:x-amz-acl`, …) are not supplied to the evaluator: Strata's policies do not use them.
 *
 * s3rver ignores additional checksums, so the proxy does what S3 does with `x-amz-checksum-sha256`
 * on a PUT: the body is spooled to a temporary file while hashed (bounded memory; s3rver writes an
 * object in place, so it must never see a body that is then refused), a mismatch is answered with
 * 400 BadDigest and nothing is stored, and a match is forwarded with the checksum recorded as
 * hidden object metadata ({@link CHECKSUM_METADATA}), which HeadObject and GetObject return as
 * `x-amz-checksum-sha256` when asked with `x-amz-checksum-mode: ENABLED`, and never as user metadata.
 */
import { createHash, randomUUID } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { pipeline, Transform } from 'node:stream';
import type { Logger } from '../../../drivers/sdk/types.js';
import { isWrite } from '../faults.js';
import { type LocalEndpoint, listen, type RequestTap } from './aws-server.js';
import { AccessDeniedError, type IamAuthorizer, type PolicyDocument } from './iam-authorizer.js';
import type { LocalAccount, LocalCredentialStore, Principal } from './principals.js';
import {
  type AllowedPost,
  formBoundary,
  PostObjectError,
  receivePostForm,
  verifyPostPolicy,
} from './s3-post-object.js';
import { SignatureError, verifySignature } from './sigv4-verify.js';

export interface S3ProxyOptions {
  /** s3rver's endpoint, http://127.0.0.1:PORT */
  upstream: string;
  credentials: LocalCredentialStore;
  authorizer: IamAuthorizer;
  account: LocalAccount;
  /** The bucket's policy (from the template), evaluated as the resource policy; undefined: none. */
  bucketPolicy?: (bucket: string) => PolicyDocument | undefined;
  /** Crash points (the crash matrix); absent in `npm start`. */
  faults?: RequestTap;
  logger?: Logger;
  /** 0 or absent picks a free port. */
  port?: number;
  /** Where PUT bodies with a checksum wait while they are verified. Default: a new dir under the OS tmp. */
  spoolDir?: string;
}

/** One IAM check: the action and the ARN it is on. */
export interface S3Authorization {
  action: string;
  resource: string;
}

/** The request an authorization is computed from; `body` only matters for DeleteObjects. */
export interface S3RequestDescription {
  method: string;
  /** The request target as received: path and query, still encoded. */
  url: string;
  headers: http.IncomingHttpHeaders;
  body?: Buffer | string;
}

/** A refusal with S3's own error code. */
class S3Error extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly status: number,
  ) {
    super(message);
    this.name = code;
  }
}

const notImplemented = (message: string) => new S3Error('NotImplemented', message, 501);

/**
 * The user-metadata name under which a verified `x-amz-checksum-sha256` is kept in s3rver. Requests
 * may not set it (or anything under its prefix), and answers never show it as metadata.
 */
export const CHECKSUM_METADATA = 'x-amz-meta-strata-internal-checksum-sha256';
const RESERVED_METADATA = 'x-amz-meta-strata-internal-';

const ARN_PREFIX = 'arn:aws:s3:::';
const S3_NAMESPACE = 'http://s3.amazonaws.com/doc/2006-03-01/';
/** DeleteObjects takes at most 1000 keys; its XML stays well under this. */
const DELETE_BODY_LIMIT = 1024 * 1024;
/** How much of a refused request's body is read and dropped before the connection is cut instead. */
const DISCARD_LIMIT = 64 * 1024 * 1024;

/** Headers that describe one connection, not the message (RFC 9110 §7.6.1). */
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
]);
/**
 * Request headers not forwarded besides: `host` names the proxy, `expect` was answered here, and
 * the signature's own headers are replaced by {@link upstreamAuthorization}'s.
 */
const NOT_FORWARDED = new Set([
  ...HOP_BY_HOP,
  'host',
  'expect',
  'authorization',
  'x-amz-security-token',
  'x-amz-date',
  'x-amz-content-sha256',
]);

/** Query parameters that select no other operation: listing options, versions, response overrides. */
const PLAIN_PARAMETERS = new Set([
  'list-type',
  'prefix',
  'delimiter',
  'max-keys',
  'marker',
  'continuation-token',
  'start-after',
  'fetch-owner',
  'encoding-type',
  'key-marker',
  'upload-id-marker',
  'max-uploads',
  'max-parts',
  'part-number-marker',
  'partNumber',
  'versionId',
  'x-id',
  'response-cache-control',
  'response-content-disposition',
  'response-content-encoding',
  'response-content-language',
  'response-content-type',
  'response-expires',
]);
/** The query parameters that select an operation this proxy maps. */
const SELECTORS = ['uploads', 'uploadId', 'delete', 'encryption'] as const;
type Selector = (typeof SELECTORS)[number];

/** Request headers whose effect needs permissions or services that are not evaluated locally. */
const UNSUPPORTED_HEADERS: Record<string, string> = {
  'x-amz-object-lock-mode': 'object lock',
  'x-amz-object-lock-retain-until-date': 'object lock',
  'x-amz-object-lock-legal-hold': 'object lock',
  'x-amz-bucket-object-lock-enabled': 'object lock',
  'x-amz-server-side-encryption-customer-algorithm': 'SSE-C',
  'x-amz-copy-source-server-side-encryption-customer-algorithm': 'SSE-C',
};

const ENCRYPTION_XML =
  '<?xml version="1.0" encoding="UTF-8"?>\n' +
  `<ServerSideEncryptionConfiguration xmlns="${S3_NAMESPACE}"><Rule><ApplyServerSideEncryptionByDefault>` +
  '<SSEAlgorithm>AES256</SSEAlgorithm></ApplyServerSideEncryptionByDefault>' +
  '<BucketKeyEnabled>false</BucketKeyEnabled></Rule></ServerSideEncryptionConfiguration>';

/** Percent-decoding of a path segment or query component (`+` is a space in queries only). */
function percentDecode(text: string, what: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    throw new S3Error('InvalidURI', `Couldn't parse the specified URI: malformed ${what}.`, 400);
  }
}

interface QueryPair {
  /** The pair as received, to forward unchanged. */
  raw: string;
  name: string;
  value: string;
}

/** A path-style request target, split without normalising anything. */
interface Target {
  bucket: string;
  key: string;
  rawPath: string;
  query: QueryPair[];
}

function parseTarget(url: string): Target {
  // The raw target, not `new URL`: that would resolve `..` and re-encode characters.
  const q = url.indexOf('?');
  const rawPath = q < 0 ? url : url.slice(0, q);
  if (!rawPath.startsWith('/')) throw new S3Error('InvalidURI', `Couldn't parse the specified URI.`, 400);
  const query = (q < 0 ? '' : url.slice(q + 1))
    .split('&')
    .filter(Boolean)
    .map((raw) => {
      const eq = raw.indexOf('=');
      const decode = (s: string) => percentDecode(s.replace(/\+/g, '%20'), 'query string');
      return {
        raw,
        name: decode(eq < 0 ? raw : raw.slice(0, eq)),
        value: decode(eq < 0 ? '' : raw.slice(eq + 1)),
      };
    });
  const slash = rawPath.indexOf('/', 1);
  const bucket = percentDecode(slash < 0 ? rawPath.slice(1) : rawPath.slice(1, slash), 'bucket name');
  const key = slash < 0 ? '' : percentDecode(rawPath.slice(slash + 1), 'object key');
  return { bucket, key, rawPath, query };
}

/** The bucket naming rules: they also keep `.`, `..` and `/` out of s3rver's directory names. */
function checkBucketName(bucket: string): void {
  if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket) || bucket.includes('..')) {
    throw new S3Error('InvalidBucketName', `The specified bucket is not valid: ${bucket}`, 400);
  }
}

/**
 * S3 keys are opaque strings, but s3rver joins a key's segments into a file path: `.`, `..` and
 * empty segments would resolve to another object than the one authorized (even in another bucket).
 * A trailing `/` (a folder marker) is stored apart and stays allowed.
 */
function checkKey(key: string): void {
  const segments = key.split('/');
  const inner = segments.slice(0, -1);
  if (segments.some((s) => s === '.' || s === '..') || inner.includes('')) {
    throw new S3Error(
      'InvalidArgument',
      `object key ${JSON.stringify(key)} has a '.', '..' or empty path segment, which s3rver would resolve to another object`,
      400,
    );
  }
}

/**
 * The request's headers with the `x-amz-*` parameters a presigned URL hoisted into its query: S3
 * (and s3rver) treats those as headers, the query's winning.
 */
function effectiveHeaders(headers: http.IncomingHttpHeaders, query: QueryPair[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value !== undefined) out[name] = Array.isArray(value) ? value.join(',') : value;
  }
  for (const { name, value } of query) {
    if (/^x-amz-/i.test(name) && !isSignatureParameter(name)) out[name.toLowerCase()] = value;
  }
  return out;
}

function isSignatureParameter(name: string): boolean {
  return /^x-amz-(algorithm|credential|date|expires|signedheaders|signature|security-token|content-sha256)$/i.test(
    name,
  );
}

/** The source of a copy: `[/]bucket/key[?versionId=…]`, the key maybe percent-encoded. */
interface CopySource {
  bucket: string;
  key: string;
  versionId?: string;
}

function parseCopySource(header: string): CopySource {
  // Split before decoding: an encoded `?` (%3F) belongs to the key.
  const q = header.indexOf('?');
  const path = percentDecode(q < 0 ? header : header.slice(0, q), 'x-amz-copy-source').replace(/^\//, '');
  const versionId =
    q < 0 ? undefined : new URLSearchParams(header.slice(q + 1)).get('versionId') || undefined;
  const slash = path.indexOf('/');
  if (slash <= 0 || slash === path.length - 1) {
    throw new S3Error('InvalidArgument', `x-amz-copy-source ${header} names no bucket and key`, 400);
  }
  const source = { bucket: path.slice(0, slash), key: path.slice(slash + 1) };
  checkBucketName(source.bucket);
  checkKey(source.key);
  return versionId ? { ...source, versionId } : source;
}

/** What the proxy does with one request, once its checks pass. */
interface Operation {
  /** The checks that do not depend on the body. */
  checks: S3Authorization[];
  bucket: string;
  /** DeleteObjects: its keys, in the body, are checked too. */
  deleteObjects?: true;
  /** Answered by the proxy (s3rver does not implement it). */
  encryption?: true;
  /**
   * Multipart uploads the proxy keeps a register of, because s3rver can neither list nor abort
   * them: `create` and `complete` are forwarded and recorded, `list` (ListMultipartUploads) and
   * `abort` (AbortMultipartUpload) are answered here from the register.
   */
  multipart?: 'create' | 'complete' | 'abort' | 'list';
  copySource?: CopySource;
  /**
   * A PUT of bytes (PutObject or UploadPart) whose body must hash to this `x-amz-checksum-sha256`
   * (base64); `record`: kept with the object (PutObject; a part's checksum is not kept).
   */
  checksum?: { sha256: string; record: boolean };
  /** A GET or HEAD of an object: reveal its stored checksum when it asks (`x-amz-checksum-mode`). */
  objectRead?: { checksumMode: boolean };
}

/** Maps a request to its operation's IAM checks; throws S3Error for anything it cannot map. */
function classify(request: Omit<S3RequestDescription, 'body'>): Operation {
  const method = request.method.toUpperCase();
  const { bucket, key, query } = parseTarget(request.url);
  if (!bucket) throw notImplemented('ListBuckets is not served locally');
  checkBucketName(bucket);
  if (key) checkKey(key);

  const selectors = new Set<Selector>();
  for (const { name } of query) {
    if ((SELECTORS as readonly string[]).includes(name)) selectors.add(name as Selector);
    else if (!PLAIN_PARAMETERS.has(name) && !/^x-amz-/i.test(name)) {
      throw notImplemented(`the ${name} subresource is not served locally`);
    }
  }
  if (selectors.size > 1) throw notImplemented(`conflicting subresources: ${[...selectors].join(', ')}`);
  const [selector] = selectors;
  const has = (name: string) => query.some((p) => p.name === name);
  const headers = effectiveHeaders(request.headers, query);
  for (const [header, feature] of Object.entries(UNSUPPORTED_HEADERS)) {
    if (headers[header] !== undefined) throw notImplemented(`${feature} (${header}) is not served locally`);
  }
  if (/^aws:kms/.test(headers['x-amz-server-side-encryption'] ?? '')) {
    throw notImplemented('SSE-KMS needs KMS, which the embedded stack does not have');
  }
  if (Object.keys(headers).some((h) => h.toLowerCase().startsWith(RESERVED_METADATA))) {
    throw new S3Error(
      'InvalidArgument',
      `metadata under ${RESERVED_METADATA} is reserved by the embedded stack (it records verified checksums)`,
      400,
    );
  }
  const grants = Object.keys(headers).some((h) => h === 'x-amz-acl' || h.startsWith('x-amz-grant-'));
  const tagging = headers['x-amz-tagging'] !== undefined;

  const bucketArn = `${ARN_PREFIX}${bucket}`;
  const objectArn = `${bucketArn}/${key}`;
  const op = (checks: S3Authorization[], extra: Partial<Operation> = {}): Operation => ({
    checks,
    bucket,
    ...extra,
  });
  const on = (action: string, resource = objectArn) => ({ action: `s3:${action}`, resource });
  const unmapped = () =>
    notImplemented(
      `${method} ${key ? 'object' : 'bucket'}${selector ? ` ?${selector}` : ''} is not served locally`,
    );

  if (!key) {
    switch (`${method} ${selector ?? ''}`) {
      case 'GET ':
      case 'HEAD ':
        return op([on('ListBucket', bucketArn)]);
      case 'PUT ':
        return op([on('CreateBucket', bucketArn), ...(grants ? [on('PutBucketAcl', bucketArn)] : [])]);
      case 'DELETE ':
        return op([on('DeleteBucket', bucketArn)]);
      case 'GET uploads':
        return op([on('ListBucketMultipartUploads', bucketArn)], { multipart: 'list' });
      case 'GET encryption':
        return op([on('GetEncryptionConfiguration', bucketArn)], { encryption: true });
      case 'POST delete':
        return op([], { deleteObjects: true });
      default:
        throw unmapped();
    }
  }

  // Writing an object with an ACL or tags needs those permissions too, as on AWS.
  const writeExtras = [...(grants ? [on('PutObjectAcl')] : []), ...(tagging ? [on('PutObjectTagging')] : [])];
  const copyHeader = headers['x-amz-copy-source'];
  const copySource = method === 'PUT' && copyHeader !== undefined ? parseCopySource(copyHeader) : undefined;
  const readSource = copySource
    ? [
        on(
          copySource.versionId ? 'GetObjectVersion' : 'GetObject',
          `${ARN_PREFIX}${copySource.bucket}/${copySource.key}`,
        ),
      ]
    : [];
  const withSource = copySource ? { copySource } : {};
  const declared = headers['x-amz-checksum-sha256'];
  const checksum = (record: boolean) => {
    if (declared === undefined || copySource) return {};
    if (!/^[A-Za-z0-9+/]{43}=$/.test(declared)) {
      throw new S3Error('InvalidRequest', 'Value for x-amz-checksum-sha256 header is invalid.', 400);
    }
    return { checksum: { sha256: declared, record } };
  };
  switch (`${method} ${selector ?? ''}`) {
    case 'GET ':
    case 'HEAD ':
      return op([on(has('versionId') ? 'GetObjectVersion' : 'GetObject')], {
        objectRead: { checksumMode: /^enabled$/i.test(headers['x-amz-checksum-mode'] ?? '') },
      });
    case 'PUT ':
      if (has('partNumber')) throw notImplemented('PUT ?partNumber without an uploadId');
      return op([on('PutObject'), ...readSource, ...writeExtras], { ...withSource, ...checksum(true) });
    case 'DELETE ':
      return op([on(has('versionId') ? 'DeleteObjectVersion' : 'DeleteObject')]);
    case 'POST uploads':
      return op([on('PutObject'), ...writeExtras], { multipart: 'create' });
    case 'PUT uploadId':
      if (!has('partNumber')) throw notImplemented('PUT ?uploadId without a partNumber');
      return op([on('PutObject'), ...readSource], { ...withSource, ...checksum(false) });
    case 'POST uploadId':
      return op([on('PutObject')], { multipart: 'complete' });
    case 'DELETE uploadId':
      return op([on('AbortMultipartUpload')], { multipart: 'abort' });
    case 'GET uploadId':
      return op([on('ListMultipartUploadParts')]);
    default:
      throw unmapped();
  }
}

/** Decodes XML character data: the five predefined entities and character references, in one pass. */
function xmlText(text: string): string {
  return text.replace(/&(#x[0-9a-fA-F]+|#[0-9]+|[a-zA-Z]+);|&/g, (whole, ref: string | undefined) => {
    const named: Record<string, string> = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'" };
    if (ref?.startsWith('#x')) return String.fromCodePoint(Number.parseInt(ref.slice(2), 16));
    if (ref?.startsWith('#')) return String.fromCodePoint(Number(ref.slice(1)));
    if (ref && Object.hasOwn(named, ref)) return named[ref]!;
    throw malformedXml(`${whole} is not an XML entity S3 accepts`);
  });
}

function malformedXml(detail: string): S3Error {
  return new S3Error(
    'MalformedXML',
    `The XML you provided was not well-formed or did not validate against our published schema (${detail}).`,
    400,
  );
}

/**
 * The objects a DeleteObjects body names. Deliberately strict: anything whose reading could differ
 * between this parser and s3rver's (CDATA, comments, DTDs, attributes on Key, keys s3rver trims) is
 * refused, so the keys checked are the keys deleted.
 */
function deleteObjectsEntries(body: string): { key: string; versionId?: string }[] {
  const text = body.replace(/^\uFEFF/, '');
  if (/<!|<\?(?!xml\s)/.test(text) || (text.match(/<\?/g) ?? []).length > 1) {
    throw malformedXml('CDATA, comments, DTDs and processing instructions are not accepted');
  }
  if (!/^\s*(<\?xml\s[^?]*\?>)?\s*<Delete(\s[^>]*)?>[\s\S]*<\/Delete>\s*$/.test(text)) {
    throw malformedXml('the root element must be Delete');
  }
  const objects = [...text.matchAll(/<Object>([\s\S]*?)<\/Object>/g)];
  const entries = objects.map(([, inner = '']) => {
    const keys = [...inner.matchAll(/<Key>([^<]*)<\/Key>/g)];
    const versions = [...inner.matchAll(/<VersionId>([^<]*)<\/VersionId>/g)];
    if (keys.length !== 1 || versions.length > 1) throw malformedXml('each Object needs exactly one Key');
    const key = xmlText(keys[0]![1]!);
    if (key === '') throw malformedXml('a Key is empty');
    if (key.trim() !== key) {
      throw notImplemented(`DeleteObjects key ${JSON.stringify(key)}: s3rver would delete it trimmed`);
    }
    checkKey(key);
    const versionId = versions[0] ? xmlText(versions[0][1]!) : undefined;
    return versionId ? { key, versionId } : { key };
  });
  // Every Key element must be one of those read: none may hide outside an Object or in another form.
  if ((text.match(/<Key[\s/>]/g) ?? []).length !== entries.length) {
    throw malformedXml('a Key element is outside an Object or not plain text');
  }
  if (entries.length === 0) throw malformedXml('Delete names no Object');
  if (entries.length > 1000) throw malformedXml('Delete names more than 1000 objects');
  return entries;
}

function dedupe(checks: S3Authorization[]): S3Authorization[] {
  const seen = new Set<string>();
  return checks.filter((c) => {
    const id = `${c.action} ${c.resource}`;
    if (seen.has(id)) return false;
    seen.add(id);
    return true;
  });
}

/**
 * The IAM checks one S3 REST request needs (path-style addressing only), deduplicated, in request
 * order. Pure. DeleteObjects (`POST /bucket?delete`) is checked per key named in `body`, which it
 * then requires. Throws an error carrying S3's code (`NotImplemented`, `InvalidArgument`,
 * `MalformedXML`, …) for a request that must not be forwarded: one it cannot map, or one s3rver would
 * carry out on something other than what was checked.
 *
 * @example
 * s3Authorizations({ method: 'PUT', url: '/images/a.raw', headers: { 'x-amz-copy-source': 'in/b.raw' } });
 * // [{ action: 's3:PutObject', resource: 'arn:aws:s3:::images/a.raw' },
 * //  { action: 's3:GetObject', resource: 'arn:aws:s3:::in/b.raw' }]
 */
export function s3Authorizations(request: S3RequestDescription): S3Authorization[] {
  const operation = classify(request);
  if (!operation.deleteObjects) return dedupe(operation.checks);
  if (request.body === undefined) throw new Error('DeleteObjects is checked per key: pass the request body');
  const body = typeof request.body === 'string' ? request.body : request.body.toString('utf8');
  return dedupe(
    deleteObjectsEntries(body).map(({ key, versionId }) => ({
      action: versionId ? 's3:DeleteObjectVersion' : 's3:DeleteObject',
      resource: `${ARN_PREFIX}${operation.bucket}/${key}`,
    })),
  );
}

function xmlEscape(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

/** Maps a refusal to S3's XML error: status, code, message. */
function s3Error(error: unknown): { status: number; code: string; message: string } {
  if (error instanceof AccessDeniedError)
    return { status: 403, code: 'AccessDenied', message: error.message };
  if (error instanceof S3Error || error instanceof PostObjectError)
    return { status: error.status, code: error.code, message: error.message };
  if (error instanceof SignatureError) {
    switch (error.code) {
      case 'MissingAuthenticationToken':
        return { status: 403, code: 'AccessDenied', message: 'Access Denied' };
      case 'SignatureDoesNotMatch':
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
  const message = error instanceof Error ? error.message : String(error);
  return { status: 500, code: 'InternalError', message };
}

/** `20240102T030405Z` */
function amzDate(date: Date): string {
  return date
    .toISOString()
    .replace(/[-:]/g, '')
    .replace(/\.\d{3}/, '');
}

/**
 * The headers that make s3rver take a request as its built-in account's. s3rver 3 resolves a SigV4
 * credential's key to an account and never computes the signature; with no key it serves the
 * request anonymously, and refuses response header overrides (`response-content-disposition`) then.
 * The caller's own key is unknown to it, and its session token is not s3rver's business.
 */
function upstreamAuthorization(region: string): http.OutgoingHttpHeaders {
  const date = amzDate(new Date());
  return {
    authorization:
      `AWS4-HMAC-SHA256 Credential=S3RVER/${date.slice(0, 8)}/${region}/s3/aws4_request, ` +
      `SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=${'0'.repeat(64)}`,
    'x-amz-date': date,
    'x-amz-content-sha256': 'UNSIGNED-PAYLOAD',
  };
}

/** The end-to-end headers of a message: hop-by-hop ones dropped, and those its `Connection` names. */
function endToEnd(headers: http.IncomingHttpHeaders, drop: ReadonlySet<string>): http.OutgoingHttpHeaders {
  const named = new Set(
    String(headers.connection ?? '')
      .split(',')
      .map((h) => h.trim().toLowerCase())
      .filter(Boolean),
  );
  const out: http.OutgoingHttpHeaders = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined || drop.has(name) || named.has(name)) continue;
    out[name] = value;
  }
  return out;
}

/**
 * Starts the proxy on 127.0.0.1 and resolves with its URL (for `AWS_ENDPOINT_URL_S3`).
 *
 * @example
 * const s3 = await startS3Proxy({ upstream: s3rver.endpoint, credentials, authorizer, account });
 * const client = new S3Client({ endpoint: s3.url, forcePathStyle: true, credentials: roleCredentials });
 * // ...
 * await s3.close();
 */
export async function startS3Proxy(options: S3ProxyOptions): Promise<LocalEndpoint> {
  const upstream = new URL(options.upstream);
  if (upstream.protocol !== 'http:')
    throw new Error(`the S3 upstream must be an http URL, not ${options.upstream}`);
  // Keep-alive to s3rver: every call would otherwise pay a new connection.
  const agent = new http.Agent({ keepAlive: true });
  const region = options.account.region;

  const upstreamRequest = (method: string, path: string, headers: http.OutgoingHttpHeaders) =>
    http.request({
      hostname: upstream.hostname,
      port: upstream.port,
      method,
      path,
      headers: { ...headers, ...upstreamAuthorization(region), host: upstream.host },
      agent,
    });

  /** Whether s3rver has the bucket: GET ?encryption is answered here, but not for a missing bucket. */
  const bucketExists = (bucket: string) =>
    new Promise<boolean>((resolve, reject) => {
      const head = upstreamRequest('HEAD', `/${encodeURIComponent(bucket)}`, {});
      head.on('response', (answer) => {
        answer.resume();
        if (answer.statusCode === 200 || answer.statusCode === 404) resolve(answer.statusCode === 200);
        else reject(new Error(`s3rver answered HEAD /${bucket} with ${answer.statusCode}`));
      });
      head.on('error', reject);
      head.end();
    });

  // Uploads started through this proxy and not yet completed or aborted, by upload id. In memory:
  // an upload started before the stack restarted is not listed (nor swept) afterwards.
  const uploads = new Map<string, { bucket: string; key: string; initiated: string }>();

  const authorize = async (principal: Principal, checks: S3Authorization[]) => {
    for (const check of checks) {
      // Each check is on its own bucket's policy: a copy's source may be in another bucket.
      const bucket = check.resource.slice(ARN_PREFIX.length).split('/')[0] ?? '';
      const resourcePolicy = options.bucketPolicy?.(bucket);
      await options.authorizer.authorize({
        principal,
        action: check.action,
        resource: check.resource,
        ...(resourcePolicy ? { resourcePolicy } : {}),
      });
    }
  };

  /**
   * Forwards the request, body streamed (or `body`, already read), and streams the answer back. The
   * query loses only its signature and hoisted `x-amz-*` parameters (sent as headers instead); the
   * path goes as received.
   */
  const forward = (
    req: http.IncomingMessage,
    res: http.ServerResponse,
    target: Target,
    operation: Operation,
    body: Buffer | Spooled | undefined,
  ) => {
    const query = target.query.filter((p) => !/^x-amz-/i.test(p.name)).map((p) => p.raw);
    const path = query.length ? `${target.rawPath}?${query.join('&')}` : target.rawPath;
    const headers = endToEnd(req.headers, NOT_FORWARDED);
    for (const p of target.query) {
      if (/^x-amz-/i.test(p.name) && !isSignatureParameter(p.name)) headers[p.name.toLowerCase()] = p.value;
    }
    if (operation.copySource) {
      // s3rver reads the header with decodeURI and knows no versions: give it exactly the object checked.
      headers['x-amz-copy-source'] = encodeURI(`/${operation.copySource.bucket}/${operation.copySource.key}`);
    }
    if (body) headers['content-length'] = Buffer.isBuffer(body) ? body.length : body.size;
    // A verified checksum travels to s3rver as hidden metadata (s3rver keeps x-amz-meta-* as given).
    if (operation.checksum?.record) headers[CHECKSUM_METADATA] = operation.checksum.sha256;

    const outbound = upstreamRequest(req.method ?? 'GET', path, headers);
    let answered = false;
    outbound.on('response', (answer) => {
      if (operation.checksum && (answer.statusCode ?? 500) < 300) {
        // As S3 answers a PUT that carried a checksum.
        answer.headers['x-amz-checksum-sha256'] = operation.checksum.sha256;
        if (operation.checksum.record) answer.headers['x-amz-checksum-type'] = 'FULL_OBJECT';
      }
      if (operation.objectRead) revealChecksum(answer, operation.objectRead.checksumMode);
      answered = true;
      const ok = (answer.statusCode ?? 500) < 300;
      const uploadId = target.query.find((p) => p.name === 'uploadId')?.value;
      if (ok && uploadId && (operation.multipart === 'complete' || operation.multipart === 'abort')) {
        uploads.delete(uploadId);
      }
      if (ok && operation.multipart === 'create') {
        // A small XML answer: read it whole to learn the upload id, then pass it on.
        const chunks: Buffer[] = [];
        answer.on('data', (chunk: Buffer) => chunks.push(chunk));
        answer.on('end', () => {
          const body = Buffer.concat(chunks);
          const id = /<UploadId>([^<]+)<\/UploadId>/.exec(body.toString('utf8'))?.[1];
          if (id)
            uploads.set(xmlText(id), {
              bucket: target.bucket,
              key: target.key,
              initiated: new Date().toISOString(),
            });
          res.writeHead(answer.statusCode ?? 200, answer.statusMessage, {
            ...endToEnd(answer.headers, HOP_BY_HOP),
            'content-length': body.length,
          });
          res.end(body);
        });
        answer.on('error', () => res.destroy());
        return;
      }
      res.writeHead(answer.statusCode ?? 502, answer.statusMessage, endToEnd(answer.headers, HOP_BY_HOP));
      pipeline(answer, res, (error) => {
        // Either end went away mid-answer: cut the other, so neither waits on a dead transfer.
        if (error) {
          outbound.destroy();
          res.destroy();
        }
      });
    });
    outbound.on('error', (error) => {
      req.unpipe(outbound);
      if (answered) {
        // s3rver answered before taking the whole body (an error): drop the rest, or the client stalls.
        req.resume();
        return;
      }
      options.logger?.warn('S3 proxy: s3rver request failed', { error: error.message });
      refuse(req, res, new S3Error('ServiceUnavailable', 'the local S3 emulator did not answer', 503));
    });
    // The client went away: abort s3rver's side too.
    res.on('close', () => {
      if (!res.writableFinished) outbound.destroy();
    });
    req.on('error', () => outbound.destroy());
    if (Buffer.isBuffer(body)) outbound.end(body);
    else if (body) {
      pipeline(createReadStream(body.file), outbound, (error) => {
        if (error) outbound.destroy();
      });
    } else req.pipe(outbound);
  };

  let spoolDir: Promise<string> | undefined;
  /**
   * Reads a PUT body into a file while hashing it, so that it can be refused whole on a checksum
   * mismatch (s3rver would already have overwritten the object in place). Memory stays bounded.
   */
  const spool = async (req: http.IncomingMessage): Promise<Spooled & { sha256: string }> => {
    spoolDir ??= mkdtemp(path.join(options.spoolDir ?? os.tmpdir(), 'strata-s3-spool-'));
    const file = path.join(await spoolDir, randomUUID());
    const hash = createHash('sha256');
    let size = 0;
    const hashing = new Transform({
      transform(chunk: Buffer, _encoding, done) {
        hash.update(chunk);
        size += chunk.length;
        done(null, chunk);
      },
    });
    try {
      await new Promise<void>((resolve, reject) =>
        pipeline(req, hashing, createWriteStream(file), (error) => (error ? reject(error) : resolve())),
      );
    } catch (error) {
      await rm(file, { force: true });
      throw error;
    }
    return { file, size, sha256: hash.digest('base64') };
  };

  /** Answers a refused request with S3's XML error and disposes of whatever body it still carries. */
  const refuse = (req: http.IncomingMessage, res: http.ServerResponse, error: unknown, fields = {}) => {
    const { status, code, message } = s3Error(error);
    if (status >= 500) options.logger?.error('S3 proxy failed', { ...fields, code, error: message });
    else if (error instanceof AccessDeniedError)
      options.logger?.warn('S3 request denied', { ...fields, message });
    if (res.headersSent || res.destroyed) {
      res.destroy();
      return;
    }
    const requestId = randomUUID();
    const head = req.method?.toUpperCase() === 'HEAD';
    const xml =
      `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${code}</Code><Message>${xmlEscape(message)}` +
      `</Message><RequestId>${requestId}</RequestId></Error>`;
    const headers: http.OutgoingHttpHeaders = {
      'content-type': 'application/xml',
      'x-amz-request-id': requestId,
      'content-length': head ? 0 : Buffer.byteLength(xml),
    };
    // A client waiting for 100-continue sends no body: close rather than leave it guessing.
    if (req.headers.expect && !req.readableEnded) headers.connection = 'close';
    res.writeHead(status, headers);
    res.end(head ? undefined : xml);
    if (!req.readableEnded && !req.headers.expect) {
      // Read and drop the rest of the body so the client can read the answer; a huge one is cut.
      let dropped = 0;
      req.on('data', (chunk: Buffer) => {
        dropped += chunk.length;
        if (dropped > DISCARD_LIMIT) req.socket.destroy();
      });
      req.resume();
    }
  };

  /**
   * POST Object with a SigV4 POST policy (s3-post-object.ts): the policy and the signing role's
   * s3:PutObject on the form's key are checked before the file is read; the file is spooled and
   * hashed, refused whole when it breaks the policy's size range or its declared SHA-256, and
   * stored by a PUT to s3rver with the verified checksum kept as for a PUT.
   */
  const handlePost = async (
    req: http.IncomingMessage,
    res: http.ServerResponse,
    expectsContinue: boolean,
    boundary: string,
    bucket: string,
    fields: Record<string, unknown>,
  ) => {
    checkBucketName(bucket);
    if (expectsContinue) res.writeContinue();
    spoolDir ??= mkdtemp(path.join(options.spoolDir ?? os.tmpdir(), 'strata-s3-spool-'));
    const file = path.join(await spoolDir, randomUUID());
    res.on('close', () => void rm(file, { force: true }));
    let allowed: AllowedPost | undefined;
    const received = await receivePostForm(
      req,
      boundary,
      async (form) => {
        allowed = verifyPostPolicy(form, bucket, options.credentials);
        fields.principal = allowed.principal.arn;
        checkKey(allowed.key);
        await authorize(allowed.principal, [
          { action: 's3:PutObject', resource: `${ARN_PREFIX}${bucket}/${allowed.key}` },
        ]);
        if (options.faults && (await options.faults.onRequest(allowed.principal, 's3', 'PutObject', true))) {
          req.socket.destroy();
          throw new S3Error('InternalError', 'fault injected', 500);
        }
        return { maxBytes: allowed.maxBytes };
      },
      file,
    );
    const post = allowed as AllowedPost;
    if (received.size < post.minBytes) {
      throw new S3Error(
        'EntityTooSmall',
        'Your proposed upload is smaller than the minimum allowed size',
        400,
      );
    }
    if (post.checksumSha256 !== undefined && post.checksumSha256 !== received.sha256) {
      throw new S3Error('BadDigest', 'The SHA256 you specified did not match the calculated checksum.', 400);
    }
    const record = post.checksumSha256 !== undefined || post.checksumAlgorithm === 'SHA256';
    const keyPath = post.key.split('/').map(encodeURIComponent).join('/');
    const answer = await new Promise<http.IncomingMessage>((resolve, reject) => {
      const put = upstreamRequest('PUT', `/${encodeURIComponent(bucket)}/${keyPath}`, {
        'content-length': received.size,
        'content-type': post.contentType ?? 'binary/octet-stream',
        ...(record ? { [CHECKSUM_METADATA]: received.sha256 } : {}),
      });
      put.on('response', resolve);
      put.on('error', reject);
      pipeline(createReadStream(file), put, (error) => {
        if (error) put.destroy();
      });
    });
    answer.resume();
    if ((answer.statusCode ?? 500) >= 300) {
      throw new S3Error('InternalError', `s3rver answered the stored PUT with ${answer.statusCode}`, 500);
    }
    res.writeHead(204, {
      'x-amz-request-id': randomUUID(),
      ...(answer.headers.etag ? { etag: answer.headers.etag } : {}),
      location: `/${bucket}/${keyPath}`,
      ...(record ? { 'x-amz-checksum-sha256': received.sha256, 'x-amz-checksum-type': 'FULL_OBJECT' } : {}),
    });
    res.end();
  };

  const handle = (req: http.IncomingMessage, res: http.ServerResponse, expectsContinue: boolean) => {
    const method = (req.method ?? 'GET').toUpperCase();
    const url = req.url ?? '/';
    const fields: Record<string, unknown> = { method, url: url.split('?')[0] };
    void (async () => {
      try {
        const boundary = method === 'POST' ? formBoundary(req.headers['content-type']) : undefined;
        const postTarget = boundary ? parseTarget(url) : undefined;
        if (boundary && postTarget && !postTarget.key && postTarget.query.length === 0) {
          // A browser-style POST carries its authorization in the form, not in the request.
          await handlePost(req, res, expectsContinue, boundary, postTarget.bucket, fields);
          return;
        }
        // The signature first: an unauthenticated caller learns nothing about what is served.
        const caller = verifySignature({ method, url, headers: req.headers }, options.credentials, {
          service: 's3',
        });
        fields.principal = caller.principal.arn;
        const encoding = String(req.headers['content-encoding'] ?? '');
        const declared = String(req.headers['x-amz-content-sha256'] ?? '');
        if (/aws-chunked/i.test(encoding) || declared.startsWith('STREAMING-')) {
          throw notImplemented(
            'aws-chunked bodies are not served locally (s3rver would store the framing): ' +
              "configure the client with requestChecksumCalculation: 'WHEN_REQUIRED'",
          );
        }
        const target = parseTarget(url);
        const operation = classify({ method, url, headers: req.headers });
        let checks = operation.checks;
        let body: Buffer | undefined;
        if (operation.deleteObjects) {
          if (expectsContinue) res.writeContinue();
          body = await readSmallBody(req, DELETE_BODY_LIMIT);
          checks = s3Authorizations({ method, url, headers: req.headers, body });
        }
        await authorize(caller.principal, dedupe(checks));
        if (options.faults) {
          const actions = checks.map((c) => c.action.replace(/^s3:/, ''));
          const name = actions.find(isWrite) ?? actions[0] ?? method;
          if (await options.faults.onRequest(caller.principal, 's3', name, caller.presigned)) {
            req.socket.destroy();
            return;
          }
        }
        if (operation.encryption) {
          if (!(await bucketExists(operation.bucket))) {
            throw new S3Error('NoSuchBucket', 'The specified bucket does not exist', 404);
          }
          res.writeHead(200, {
            'content-type': 'application/xml',
            'content-length': Buffer.byteLength(ENCRYPTION_XML),
            'x-amz-request-id': randomUUID(),
          });
          res.end(ENCRYPTION_XML);
          return;
        }
        if (operation.multipart === 'abort') {
          // s3rver has no AbortMultipartUpload: the register forgets the upload (the parts s3rver
          // keeps for it stay in its directory until the stack's data directory goes).
          const uploadId = target.query.find((p) => p.name === 'uploadId')?.value ?? '';
          if (!uploads.delete(uploadId)) {
            throw new S3Error('NoSuchUpload', 'The specified upload does not exist.', 404);
          }
          res.writeHead(204, { 'x-amz-request-id': randomUUID() });
          res.end();
          return;
        }
        if (operation.multipart === 'list') {
          if (!(await bucketExists(operation.bucket))) {
            throw new S3Error('NoSuchBucket', 'The specified bucket does not exist', 404);
          }
          const prefix = target.query.find((p) => p.name === 'prefix')?.value ?? '';
          const xml = listUploadsXml(operation.bucket, prefix, uploads);
          res.writeHead(200, {
            'content-type': 'application/xml',
            'content-length': Buffer.byteLength(xml),
            'x-amz-request-id': randomUUID(),
          });
          res.end(xml);
          return;
        }
        // Only an authorized client is told to send its body.
        if (expectsContinue && !body) res.writeContinue();
        if (operation.checksum) {
          const spooled = await spool(req);
          res.on('close', () => void rm(spooled.file, { force: true }));
          if (spooled.sha256 !== operation.checksum.sha256) {
            await rm(spooled.file, { force: true });
            throw new S3Error(
              'BadDigest',
              'The SHA256 you specified did not match the calculated checksum.',
              400,
            );
          }
          forward(req, res, target, operation, spooled);
          return;
        }
        forward(req, res, target, operation, body);
      } catch (error) {
        refuse(req, res, error, fields);
      }
    })();
  };

  // Large bodies take long: no whole-request deadline (node's default is 5 minutes).
  const server = http.createServer({ requestTimeout: 0 }, (req, res) => handle(req, res, false));
  // With a listener, node leaves `Expect: 100-continue` to us: a refused upload is never sent.
  server.on('checkContinue', (req, res) => handle(req, res, true));
  const endpoint = await listen(server, options.port);
  return {
    url: endpoint.url,
    close: async () => {
      await endpoint.close();
      agent.destroy();
      if (spoolDir) await rm(await spoolDir, { recursive: true, force: true });
    },
  };
}

/** A request body read into a file (a PUT whose checksum was verified). */
interface Spooled {
  file: string;
  size: number;
}

/**
 * Moves the hidden checksum metadata of an object answer to S3's own header: shown as
 * `x-amz-checksum-sha256` (with `x-amz-checksum-type: FULL_OBJECT`) only when the request asked with
 * `x-amz-checksum-mode: ENABLED` and the answer is the whole object (S3 gives no full-object
 * checksum for a range); never as user metadata.
 */
function revealChecksum(answer: http.IncomingMessage, checksumMode: boolean): void {
  const stored = answer.headers[CHECKSUM_METADATA];
  for (const name of Object.keys(answer.headers)) {
    if (name.startsWith(RESERVED_METADATA)) delete answer.headers[name];
  }
  if (checksumMode && typeof stored === 'string' && answer.statusCode === 200) {
    answer.headers['x-amz-checksum-sha256'] = stored;
    answer.headers['x-amz-checksum-type'] = 'FULL_OBJECT';
  }
}

/**
 * ListMultipartUploadsResult for the register: every upload of the bucket under `prefix`, in key
 * then upload-id order, on one page (the register of one embedded stack stays small).
 */
function listUploadsXml(
  bucket: string,
  prefix: string,
  uploads: Map<string, { bucket: string; key: string; initiated: string }>,
): string {
  const rows = [...uploads]
    .filter(([, u]) => u.bucket === bucket && u.key.startsWith(prefix))
    .sort(([a, x], [b, y]) => (x.key === y.key ? (a < b ? -1 : 1) : x.key < y.key ? -1 : 1));
  const entries = rows
    .map(
      ([id, u]) =>
        `<Upload><Key>${xmlEscape(u.key)}</Key><UploadId>${xmlEscape(id)}</UploadId>` +
        `<Initiated>${u.initiated}</Initiated><StorageClass>STANDARD</StorageClass></Upload>`,
    )
    .join('');
  return (
    `<?xml version="1.0" encoding="UTF-8"?>\n<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">` +
    `<Bucket>${xmlEscape(bucket)}</Bucket><Prefix>${xmlEscape(prefix)}</Prefix><MaxUploads>1000</MaxUploads>` +
    `<IsTruncated>false</IsTruncated>${entries}</ListMultipartUploadsResult>`
  );
}

/** Reads a small body whole; past `limit` it stops reading and refuses (the caller drops the rest). */
function readSmallBody(req: http.IncomingMessage, limit: number): Promise<Buffer> {
  const declared = Number(req.headers['content-length'] ?? 0);
  if (declared > limit) {
    return Promise.reject(new S3Error('MaxMessageLengthExceeded', 'Your request was too big.', 400));
  }
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        req.off('data', onData);
        req.pause();
        reject(new S3Error('MaxMessageLengthExceeded', 'Your request was too big.', 400));
        return;
      }
      chunks.push(chunk);
    };
    req.on('data', onData);
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}
