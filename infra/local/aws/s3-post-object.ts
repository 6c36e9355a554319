/**
 * S3's POST Object (browser-based upload with a SigV4 POST policy) for the local S3 proxy: the
 * multipart/form-data body is read field by field, the policy's signature, expiry and every
 * condition are checked before a byte of the file is taken, and the file is spooled to disk while
 * it is hashed, so a body that breaks `content-length-range` or its declared
 * `x-amz-checksum-sha256` is refused whole (s3rver writes objects in place).
 *
 * What S3 checks and this does too: the signature over the base64 policy (the credential's key for
 * its day, region and `s3`), the session token, `expiration`, exact / `eq` / `starts-with`
 * conditions on the bucket and on form fields, `content-length-range`, and that every form field
 * (but `policy`, `x-amz-signature`, `file` and `x-ignore-*`) is named by a condition. Not
 * served: `success_action_redirect`, ACL and tagging fields, SSE fields (refused as unconditioned
 * unless a policy names them, and then not applied — Strata's policies never do).
 */
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import { once } from 'node:events';
import { createWriteStream } from 'node:fs';
import type { LocalCredentialStore, Principal } from './principals.js';

/** S3 limits the form's fields (all but the file) to 20 KB. */
export const POST_FIELDS_LIMIT = 20 * 1024;

/** A POST refused with S3's error code and status. */
export class PostObjectError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly status: number,
  ) {
    super(message);
  }
}

const denied = (why: string) =>
  new PostObjectError('AccessDenied', `Invalid according to Policy: ${why}`, 403);
const malformed = (why: string) => new PostObjectError('MalformedPOSTRequest', why, 400);

/** The boundary of a multipart/form-data content type, or undefined for any other type. */
export function formBoundary(contentType: string | undefined): string | undefined {
  if (!contentType || !/^multipart\/form-data\s*;/i.test(contentType)) return undefined;
  const m = /;\s*boundary=(?:"([^"]{1,70})"|([^;\s]{1,70}))/i.exec(contentType);
  return m?.[1] ?? m?.[2];
}

/** What {@link verifyPostPolicy} found the form allows. */
export interface AllowedPost {
  principal: Principal;
  key: string;
  /** `x-amz-checksum-sha256` as sent (base64), when given. */
  checksumSha256?: string;
  /** `x-amz-checksum-algorithm` as sent, upper case, when given. */
  checksumAlgorithm?: string;
  contentType?: string;
  minBytes: number;
  maxBytes: number;
}

function hmac(key: Buffer | string, data: string): Buffer {
  return createHmac('sha256', key).update(data, 'utf8').digest();
}

type Condition = Record<string, unknown> | unknown[];

/**
 * Checks a POST form's policy and signature against `bucket` and the form's fields (names
 * lower-cased), as S3 does. Throws {@link PostObjectError} (403 AccessDenied for a policy the form
 * breaks, 400 for a malformed one).
 */
export function verifyPostPolicy(
  fields: ReadonlyMap<string, string>,
  bucket: string,
  credentials: LocalCredentialStore,
  now = new Date(),
): AllowedPost {
  const get = (name: string) => fields.get(name);
  const policyB64 = get('policy');
  const signature = get('x-amz-signature');
  const credential = get('x-amz-credential');
  const amzDate = get('x-amz-date');
  if (!policyB64 || !signature || !credential || !amzDate) {
    throw new PostObjectError(
      'InvalidArgument',
      'a signed POST needs policy, x-amz-credential, x-amz-date and x-amz-signature fields',
      400,
    );
  }
  if (get('x-amz-algorithm') !== 'AWS4-HMAC-SHA256') {
    throw new PostObjectError('InvalidArgument', 'x-amz-algorithm must be AWS4-HMAC-SHA256', 400);
  }
  const [accessKeyId, day, region, service, terminator] = credential.split('/');
  if (!accessKeyId || !day || !region || service !== 's3' || terminator !== 'aws4_request') {
    throw new PostObjectError('InvalidArgument', `malformed x-amz-credential ${credential}`, 400);
  }
  if (!amzDate.startsWith(day)) {
    throw new PostObjectError('InvalidArgument', 'x-amz-date is not the credential scope day', 400);
  }
  const issued = credentials.lookup(accessKeyId);
  if (!issued || get('x-amz-security-token') !== issued.sessionToken) {
    throw new PostObjectError(
      'InvalidAccessKeyId',
      'The security token included in the request is invalid.',
      403,
    );
  }
  const key = hmac(hmac(hmac(hmac(`AWS4${issued.secretAccessKey}`, day), region), 's3'), 'aws4_request');
  const expected = hmac(key, policyB64);
  const given = Buffer.from(/^[0-9a-f]{64}$/.test(signature) ? signature : '', 'hex');
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
    throw new PostObjectError(
      'SignatureDoesNotMatch',
      'The request signature we calculated does not match the signature you provided.',
      403,
    );
  }

  let policy: { expiration?: unknown; conditions?: unknown };
  try {
    policy = JSON.parse(Buffer.from(policyB64, 'base64').toString('utf8'));
  } catch {
    throw new PostObjectError('InvalidPolicyDocument', 'the policy is not base64 JSON', 400);
  }
  const expiration = typeof policy.expiration === 'string' ? Date.parse(policy.expiration) : Number.NaN;
  if (Number.isNaN(expiration))
    throw new PostObjectError('InvalidPolicyDocument', 'policy has no expiration', 400);
  if (now.getTime() >= expiration) throw denied('Policy expired.');
  if (!Array.isArray(policy.conditions)) {
    throw new PostObjectError('InvalidPolicyDocument', 'policy has no conditions', 400);
  }

  const covered = new Set<string>();
  let minBytes = 0;
  let maxBytes = Number.MAX_SAFE_INTEGER;
  const fieldValue = (name: string) => (name === 'bucket' ? bucket : get(name));
  const check = (op: string, rawName: unknown, expectedValue: unknown) => {
    if (typeof rawName !== 'string' || typeof expectedValue !== 'string') {
      throw new PostObjectError('InvalidPolicyDocument', `bad condition on ${String(rawName)}`, 400);
    }
    const name = rawName.replace(/^\$/, '').toLowerCase();
    covered.add(name);
    const actual = fieldValue(name);
    const ok = op === 'eq' ? actual === expectedValue : actual?.startsWith(expectedValue) === true;
    if (!ok) throw denied(`Policy Condition failed: ["${op}", "$${name}", "${expectedValue}"]`);
  };
  for (const condition of policy.conditions as Condition[]) {
    if (Array.isArray(condition)) {
      const [op, a, b] = condition;
      if (op === 'content-length-range') {
        if (!Number.isSafeInteger(a) || !Number.isSafeInteger(b)) {
          throw new PostObjectError('InvalidPolicyDocument', 'content-length-range needs two integers', 400);
        }
        minBytes = Math.max(minBytes, a as number);
        maxBytes = Math.min(maxBytes, b as number);
      } else if (op === 'eq' || op === 'starts-with') check(op, a, b);
      else throw new PostObjectError('InvalidPolicyDocument', `unknown condition ${String(op)}`, 400);
    } else if (condition && typeof condition === 'object') {
      for (const [name, value] of Object.entries(condition)) check('eq', name, value);
    } else
      throw new PostObjectError('InvalidPolicyDocument', 'a condition is neither an object nor a list', 400);
  }
  for (const name of fields.keys()) {
    if (name === 'policy' || name === 'x-amz-signature' || name.startsWith('x-ignore-')) continue;
    if (!covered.has(name)) throw denied(`Extra input fields: ${name}`);
  }
  const objectKey = get('key');
  if (!objectKey) throw new PostObjectError('InvalidArgument', 'the form has no key field', 400);
  const checksumSha256 = get('x-amz-checksum-sha256');
  if (checksumSha256 !== undefined && !/^[A-Za-z0-9+/]{43}=$/.test(checksumSha256)) {
    throw new PostObjectError('InvalidRequest', 'Value for x-amz-checksum-sha256 is invalid.', 400);
  }
  const algorithm = get('x-amz-checksum-algorithm')?.toUpperCase();
  if (algorithm !== undefined && algorithm !== 'SHA256') {
    throw new PostObjectError('InvalidRequest', `checksum algorithm ${algorithm} is not served locally`, 400);
  }
  const contentType = get('content-type');
  return {
    principal: issued.principal,
    key: objectKey,
    ...(checksumSha256 ? { checksumSha256 } : {}),
    ...(algorithm ? { checksumAlgorithm: algorithm } : {}),
    ...(contentType ? { contentType } : {}),
    minBytes,
    maxBytes,
  };
}

/** The result of {@link receivePostForm}: the file's size and SHA-256 (base64). */
export interface ReceivedFile {
  size: number;
  sha256: string;
}

/**
 * Reads a multipart/form-data POST: its fields (until the `file` part, which S3 requires last),
 * then `allow(fields)` decides (it throws to refuse, before any of the file is read), then the
 * file is streamed into `spoolFile` while hashed, with at most the `maxBytes` it allowed. Memory
 * stays bounded: the fields (at most {@link POST_FIELDS_LIMIT}) and one delimiter's worth of tail.
 */
export async function receivePostForm(
  body: AsyncIterable<Buffer>,
  boundary: string,
  allow: (fields: Map<string, string>) => Promise<{ maxBytes: number }>,
  spoolFile: string,
): Promise<ReceivedFile> {
  const delimiter = Buffer.from(`\r\n--${boundary}`);
  // The body opens with `--boundary`: a leading CRLF makes every delimiter look alike.
  let buffered: Buffer = Buffer.from('\r\n');
  const fields = new Map<string, string>();
  let inFile = false;
  let limit = 0;
  let size = 0;
  const hash = createHash('sha256');
  const out = createWriteStream(spoolFile);
  const closed = once(out, 'close');
  const write = async (bytes: Buffer) => {
    if (bytes.length === 0) return;
    size += bytes.length;
    if (size > limit) throw denied('Your proposed upload exceeds the maximum allowed size');
    hash.update(bytes);
    if (!out.write(bytes)) await once(out, 'drain');
  };
  // Parses complete parts off the front of `buffered`; true once the file's headers are read.
  const parseFields = (): boolean => {
    for (;;) {
      if (buffered.length < delimiter.length + 2) return false;
      if (!buffered.subarray(0, delimiter.length).equals(delimiter)) throw malformed('bad multipart framing');
      const after = buffered.subarray(delimiter.length, delimiter.length + 2).toString('latin1');
      if (after === '--') throw new PostObjectError('InvalidArgument', 'the form has no file field', 400);
      if (after !== '\r\n') throw malformed('bad multipart framing');
      const headersEnd = buffered.indexOf('\r\n\r\n', delimiter.length + 2);
      if (headersEnd < 0) return false;
      const headers = buffered.subarray(delimiter.length + 2, headersEnd).toString('utf8');
      const name = /content-disposition:\s*form-data;[^\r\n]*?\bname="([^"]*)"/i.exec(headers)?.[1];
      if (name === undefined) throw malformed('a form part has no name');
      const valueStart = headersEnd + 4;
      if (name.toLowerCase() === 'file') {
        buffered = buffered.subarray(valueStart);
        return true;
      }
      const end = buffered.indexOf(delimiter, valueStart);
      if (end < 0) return false;
      fields.set(name.toLowerCase(), buffered.subarray(valueStart, end).toString('utf8'));
      buffered = buffered.subarray(end);
    }
  };
  try {
    for await (const chunk of body) {
      buffered = buffered.length ? Buffer.concat([buffered, chunk]) : chunk;
      if (!inFile) {
        if (!parseFields()) {
          if (buffered.length > POST_FIELDS_LIMIT) throw malformed('the form fields exceed 20 KB');
          continue;
        }
        inFile = true;
        limit = (await allow(fields)).maxBytes;
      }
      // Everything but a tail that may hold the closing delimiter is file content.
      const keep = delimiter.length + 4;
      if (buffered.length > keep) {
        await write(buffered.subarray(0, buffered.length - keep));
        buffered = buffered.subarray(buffered.length - keep);
      }
    }
    if (!inFile) throw new PostObjectError('InvalidArgument', 'the form has no file field', 400);
    const end = buffered.lastIndexOf(delimiter);
    const rest = end < 0 ? '' : buffered.subarray(end + delimiter.length).toString('latin1');
    if (end < 0 || !/^--(\r\n)?$/.test(rest)) throw malformed('the file is not the last field of the form');
    await write(buffered.subarray(0, end));
  } finally {
    out.end();
    await closed;
  }
  return { size, sha256: hash.digest('base64') };
}
