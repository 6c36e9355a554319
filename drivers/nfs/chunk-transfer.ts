/**
 * Chunk transfers between a host and the image store, over presigned URLs only: PUTs that carry
 * each chunk's SHA-256, GETs held to the chunk's length, small JSON documents (manifests, lists),
 * and the retry rules they share (network errors, 429 and 5xx retried with backoff).
 */

import { createHash } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import { z } from 'zod';
import { Sha256HexSchema, sha256Base64 } from '../sdk/backup-manifest.js';
import { DriverError, DriverInputError, DriverUnavailableError, ObjectNotFoundError } from '../sdk/errors.js';
import type { HostOperationContext } from '../sdk/types.js';
import { assertHttpUrl, ChecksumMismatchError } from './download.js';
import { redact } from './transfer.js';

/** Chunks in flight at once, for reads, uploads and downloads alike. */
export const BACKUP_CONCURRENCY = 4;
export const MAX_ATTEMPTS = 4;
export const BACKOFF_MS = 200;
export const SizeSchema = z.number().int().positive().max(Number.MAX_SAFE_INTEGER);
export const ImageFormatSchema = z.enum(['qcow2', 'raw']);
export const UrlSchema = z.string().min(1).max(8192);
/** Largest JSON document (manifest or chunk list) fetched from a presigned URL. */
export const MAX_JSON_BYTES = 256 * 1024 * 1024;
export const MAX_UPLOADS = 1_000_000;

export const ChunkUrlSchema = z
  .object({ index: z.number().int().nonnegative(), sha256: Sha256HexSchema, url: UrlSchema })
  .strict();
/** What `uploadsUrl` serves: one presigned PUT per chunk to upload. */
export const UploadListSchema = z.array(ChunkUrlSchema).max(MAX_UPLOADS);
/** What `chunksUrl` serves: one entry per chunk index, `null` for a zero chunk. */
export const RestoreListSchema = z.array(ChunkUrlSchema.nullable());
export const CountSchema = z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER);

// ---------------------------------------------------------------------------------------------
// Image store transfers

/**
 * PUTs one chunk with its SHA-256 in `x-amz-checksum-sha256` (the grant signs that header, and the
 * store refuses a body that does not hash to it with 400 BadDigest), so a chunk torn or altered on
 * the way is never stored under its hash.
 */
export async function putChunk(
  url: string,
  bytes: Buffer,
  sha256: string,
  index: number,
  timeoutMs: number,
  signal: AbortSignal,
): Promise<void> {
  const where = redact(url);
  await withRetry(signal, async () => {
    const response = await fetchWithTimeout(
      url,
      {
        method: 'PUT',
        body: bytes,
        headers: {
          'content-length': String(bytes.byteLength),
          'content-type': 'application/octet-stream',
          'x-amz-checksum-sha256': sha256Base64(sha256),
        },
      },
      timeoutMs,
      signal,
      `upload of chunk ${index} to ${where}`,
    );
    await checkChunkStored(response, index, where);
  });
}

/**
 * The store's answer to a chunk upload: stored (200, 201 or 204), or why not. `BadDigest` is
 * retried: the bytes hashed right here, so the store saw other bytes (damaged on the way).
 */
async function checkChunkStored(response: Response, index: number, where: string): Promise<void> {
  if (response.status === 400) {
    const text = await response.text().catch(() => '');
    if (text.includes('<Code>BadDigest</Code>')) {
      throw new DriverUnavailableError(`chunk ${index}: ${where} refused its body as BadDigest`, {
        context: { index, status: 400, url: where },
      });
    }
    throw statusError(response.status, `chunk ${index}`, where, { index });
  }
  await response.body?.cancel().catch(() => undefined);
  if (response.status !== 200 && response.status !== 201 && response.status !== 204)
    throw statusError(response.status, `chunk ${index}`, where, { index });
}

/** A presigned POST policy as the host receives it (ImageStoreDriver.presignPost). */
export const StagingPostSchema = z
  .object({
    url: UrlSchema,
    fields: z.record(z.string().max(256), z.string().max(8192)),
    keyPrefix: z.string().min(1).max(1024),
    maxBytes: SizeSchema,
  })
  .strict();
export type StagingPost = z.infer<typeof StagingPostSchema>;

/**
 * Uploads one chunk under a presigned POST policy as `<keyPrefix><sha256>`, with its SHA-256 in
 * `x-amz-checksum-sha256` (the store refuses a body that does not hash to it and keeps it), as a
 * multipart/form-data form: the policy's fields, `key`, the checksum fields, then `file` last.
 */
export async function postChunk(
  post: StagingPost,
  bytes: Buffer,
  sha256: string,
  index: number,
  timeoutMs: number,
  signal: AbortSignal,
): Promise<void> {
  const where = redact(post.url);
  const boundary = `strata-${sha256.slice(0, 32)}`;
  const part = (name: string, value: string) =>
    `--${boundary}\r\nContent-Disposition: form-data; name="${name}"\r\n\r\n${value}\r\n`;
  const head = Buffer.from(
    Object.entries(post.fields)
      .map(([name, value]) => part(name, value))
      .join('') +
      part('key', `${post.keyPrefix}${sha256}`) +
      part('x-amz-checksum-algorithm', 'SHA256') +
      part('x-amz-checksum-sha256', sha256Base64(sha256)) +
      `--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="${sha256}"\r\n` +
      'Content-Type: application/octet-stream\r\n\r\n',
  );
  const tail = Buffer.from(`\r\n--${boundary}--\r\n`);
  const body = Buffer.concat([head, bytes, tail]);
  await withRetry(signal, async () => {
    const response = await fetchWithTimeout(
      post.url,
      {
        method: 'POST',
        body,
        headers: {
          'content-length': String(body.byteLength),
          'content-type': `multipart/form-data; boundary=${boundary}`,
        },
      },
      timeoutMs,
      signal,
      `upload of chunk ${index} to ${where}`,
    );
    await checkChunkStored(response, index, where);
  });
}

/**
 * GETs one chunk into memory of its own (exactly `length` bytes: a `content-length` of another size
 * and nothing past `length` is accepted), retrying network errors, 429 and 5xx with backoff. With
 * `sha256`, the body is hashed as it arrives, piece by piece (the event loop is never held for a
 * whole chunk), and another hash fails with {@link ChecksumMismatchError} naming the chunk. A body
 * of another length is reported the same way: it is a wrong object, not a flaky link. The whole
 * GET, body included, must end within `timeoutMs`.
 *
 * Over node:http with keep-alive connections rather than fetch: a Node stream per answer costs
 * less CPU per byte than a WHATWG stream (BENCHMARKS.md), which on a restore is CPU the hashes and
 * writes need. Redirects are not followed (a presigned URL never redirects).
 */
export async function getChunk(
  url: string,
  index: number,
  length: number,
  timeoutMs: number,
  signal: AbortSignal,
  sha256?: string,
): Promise<Buffer> {
  const where = redact(url);
  const target = assertHttpUrl(url);
  return withRetry(signal, () => getChunkOnce(target, where, index, length, timeoutMs, signal, sha256));
}

// Idle keep-alive sockets are unref'd by Node's agent, so they never keep a host process alive.
const keepAlive = {
  http: new http.Agent({ keepAlive: true, maxSockets: 64 }),
  https: new https.Agent({ keepAlive: true, maxSockets: 64 }),
};

function getChunkOnce(
  target: URL,
  where: string,
  index: number,
  length: number,
  timeoutMs: number,
  signal: AbortSignal,
  sha256: string | undefined,
): Promise<Buffer> {
  const wrongLength = (got: number) =>
    new ChecksumMismatchError(`chunk ${index} from ${where} is ${got} bytes, expected ${length}`, { index });
  const brokeOff = (cause: unknown, received: number) =>
    new DriverUnavailableError(`download of chunk ${index} from ${where} broke off after ${received} bytes`, {
      cause,
    });
  return new Promise<Buffer>((resolve, reject) => {
    const https_ = target.protocol === 'https:';
    const request = (https_ ? https : http).request(target, {
      method: 'GET',
      headers: { 'accept-encoding': 'identity' },
      agent: https_ ? keepAlive.https : keepAlive.http,
    });
    let settled = false;
    const timer = setTimeout(
      () =>
        finish(
          new DriverUnavailableError(`download of chunk ${index} from ${where} took over ${timeoutMs} ms`),
        ),
      timeoutMs,
    );
    const onAbort = () => finish(signal.reason);
    function finish(error: unknown, body?: Buffer): void {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      signal.removeEventListener('abort', onAbort);
      if (body) resolve(body);
      else {
        request.destroy();
        reject(error);
      }
    }
    if (signal.aborted) return finish(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    request.on('error', (error) =>
      finish(
        new DriverUnavailableError(`download of chunk ${index} from ${where} failed: ${error.message}`, {
          cause: error,
        }),
      ),
    );
    request.on('response', (response) => {
      response.on('error', () => undefined);
      if (response.statusCode !== 200) {
        // Drained, so the connection can serve the next chunk.
        response.resume();
        return finish(statusError(response.statusCode ?? 0, `chunk ${index}`, where, { index }));
      }
      const declared = response.headers['content-length'];
      if (declared !== undefined && /^\d+$/.test(declared) && Number(declared) !== length) {
        return finish(wrongLength(Number(declared)));
      }
      const body = Buffer.allocUnsafe(length);
      const hash = sha256 === undefined ? undefined : createHash('sha256');
      let received = 0;
      response.on('data', (piece: Buffer) => {
        if (settled) return;
        if (received + piece.byteLength > length) return finish(wrongLength(received + piece.byteLength));
        piece.copy(body, received);
        hash?.update(piece);
        received += piece.byteLength;
      });
      response.on('close', () => {
        if (settled) return;
        if (!response.complete) return finish(brokeOff(new Error('connection closed'), received));
        if (received !== length) return finish(wrongLength(received));
        if (hash) {
          const actual = hash.digest('hex');
          if (actual !== sha256) {
            return finish(
              new ChecksumMismatchError(`chunk ${index} (${sha256}) arrived with sha256 ${actual}`, {
                index,
                sha256,
                actual,
              }),
            );
          }
        }
        finish(undefined, body);
      });
    });
    request.end();
  });
}

export async function fetchWithTimeout(
  url: string,
  init: RequestInit,
  timeoutMs: number,
  signal: AbortSignal,
  what: string,
): Promise<Response> {
  try {
    return await fetch(url, { ...init, signal: AbortSignal.any([signal, AbortSignal.timeout(timeoutMs)]) });
  } catch (error) {
    if (signal.aborted) throw signal.reason;
    throw new DriverUnavailableError(`${what} failed: ${(error as Error).message}`, { cause: error });
  }
}

export function statusError(
  status: number,
  what: string,
  where: string,
  extra: Record<string, unknown> = {},
): DriverError {
  const context = { ...extra, status, url: where };
  if (status === 404) return new ObjectNotFoundError(`${what}: ${where} answered 404`, { context });
  if (status === 429 || status >= 500)
    return new DriverUnavailableError(`${what}: ${where} answered ${status}`, { context });
  // 403 is typically an expired presigned URL: the control plane must presign again.
  return new DriverError(`${what}: ${where} answered ${status}`, { code: 'TransferFailed', context });
}

/**
 * GETs a JSON document (a manifest or a chunk list) from the presigned URL in argument `field`, as
 * text, with the chunk transfers' retry rules (network errors, 429 and 5xx retried with backoff;
 * 404 is not-found; 403 and other statuses fail as `TransferFailed`). Bodies over
 * {@link MAX_JSON_BYTES} are refused.
 */
export async function fetchText(
  url: string,
  field: string,
  stallTimeoutSeconds: number,
  ctx: HostOperationContext,
): Promise<string> {
  try {
    assertHttpUrl(url);
  } catch (error) {
    throw new DriverInputError(`${field}: ${(error as Error).message}`, { cause: error, context: { field } });
  }
  const what = field;
  const where = redact(url);
  const signal = ctx.signal;
  return withRetry(signal, async () => {
    const response = await fetchWithTimeout(
      url,
      {},
      stallTimeoutSeconds * 1000,
      signal,
      `download of ${what} from ${where}`,
    );
    if (response.status !== 200) {
      await response.body?.cancel().catch(() => undefined);
      throw statusError(response.status, what, where);
    }
    if (!response.body) return '';
    if (Number(response.headers.get('content-length') ?? 0) > MAX_JSON_BYTES) {
      await response.body.cancel().catch(() => undefined);
      throw tooLarge(what, where);
    }
    const parts: Buffer[] = [];
    let received = 0;
    try {
      for await (const part of response.body) {
        received += part.byteLength;
        if (received > MAX_JSON_BYTES) throw tooLarge(what, where);
        parts.push(Buffer.from(part));
      }
    } catch (error) {
      if (error instanceof DriverError) throw error;
      if (signal.aborted) throw signal.reason;
      throw new DriverUnavailableError(`download of ${what} from ${where} broke off`, { cause: error });
    }
    return Buffer.concat(parts).toString('utf8');
  });
}

export function tooLarge(what: string, where: string): DriverError {
  return new DriverError(`${what} at ${where} is larger than ${MAX_JSON_BYTES} bytes`, {
    code: 'TransferFailed',
    context: { url: where },
  });
}

// A JSON list at a presigned URL, checked against `schema`; any problem names `field`.
export async function fetchList<S extends z.ZodType>(
  url: string,
  field: string,
  schema: S,
  stallTimeoutSeconds: number,
  ctx: HostOperationContext,
): Promise<z.infer<S>> {
  const text = await fetchText(url, field, stallTimeoutSeconds, ctx);
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    throw new DriverInputError(`${field}: the list is not JSON`, { context: { field } });
  }
  const parsed = schema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new DriverInputError(`${field}: [${issue?.path.join('.')}] ${issue?.message ?? 'invalid list'}`, {
      context: { field },
    });
  }
  return parsed.data;
}

// Retries what is worth retrying (DriverUnavailableError) with exponential backoff.
async function withRetry<T>(signal: AbortSignal, attempt: () => Promise<T>): Promise<T> {
  for (let n = 1; ; n++) {
    try {
      return await attempt();
    } catch (error) {
      if (!(error instanceof DriverUnavailableError) || n >= MAX_ATTEMPTS || signal.aborted) throw error;
      await new Promise((resolve) => setTimeout(resolve, BACKOFF_MS * 2 ** (n - 1)));
    }
  }
}

// The query string of a presigned URL is a bearer credential: never log or report it.
