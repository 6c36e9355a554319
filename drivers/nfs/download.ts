/**
 * Streaming an image from an http(s) URL into a file on the share, hashing it on the way. Used by
 * the `fetchImage` host operation to install a template from a presigned image-store URL.
 *
 * The URL is data: it goes to Node's `fetch`, never to a shell or to qemu-img (whose `http:`
 * protocol driver would also follow whatever the image's header says).
 */
import { open } from 'node:fs/promises';
import { MultiHasher } from '../sdk/checksum.js';
import { DriverError, DriverInputError, DriverUnavailableError, ObjectNotFoundError } from '../sdk/errors.js';

/** Options of {@link downloadToFile}. */
export interface DownloadOptions {
  /** Aborts the download (the host operation's deadline or the runtime stopping). */
  signal?: AbortSignal;
  /** Fails when no byte arrives for this long; default 60 s. A slow link is fine, a stuck one is not. */
  stallTimeoutMs?: number;
  /** Lower-case or upper-case hex sha256 the bytes must have. */
  expectedSha256?: string;
  /** Exact length the body must have, when the caller knows it. */
  expectedBytes?: number;
  /** Called with the bytes written so far and the total when known. */
  onBytes?(bytes: number, totalBytes: number | undefined): void;
}

/** What {@link downloadToFile} wrote. */
export interface DownloadResult {
  bytes: number;
  sha256: string;
}

/**
 * A checksum that does not match: the bytes are not the template the caller meant. Not retryable,
 * because fetching the same object again gives the same bytes.
 *
 * @example
 * if (err instanceof DriverError && err.code === 'ChecksumMismatch') markTemplateCorrupt();
 */
export class ChecksumMismatchError extends DriverError {
  constructor(message: string, context: Record<string, unknown> = {}) {
    super(message, { code: 'ChecksumMismatch', retryable: false, context });
  }
}

/**
 * Throws {@link DriverInputError} unless `url` is an absolute http or https URL without
 * credentials in it.
 *
 * @example
 * assertHttpUrl('https://bucket.s3.amazonaws.com/templates/t.qcow2?X-Amz-Signature=…');
 */
export function assertHttpUrl(url: string): URL {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new DriverInputError('url is not a URL', { context: { field: 'url' } });
  }
  if (parsed.protocol !== 'https:' && parsed.protocol !== 'http:') {
    throw new DriverInputError(`url must be http(s), not ${parsed.protocol}`, { context: { field: 'url' } });
  }
  if (parsed.username || parsed.password) {
    throw new DriverInputError('url must not carry credentials', { context: { field: 'url' } });
  }
  return parsed;
}

/**
 * GETs `url` into `file` (created or truncated), hashing with sha256 while writing, and fsyncs it.
 * Rejects when the status is not 200, the body ends short of its `Content-Length` or of
 * `expectedBytes`, no byte arrives for `stallTimeoutMs`, or the sha256 differs from
 * `expectedSha256` ({@link ChecksumMismatchError}). The caller removes `file` on failure.
 *
 * @example
 * const { bytes, sha256 } = await downloadToFile(url, '/mnt/ds-1/templates/.t.qcow2.partial-job-1', { signal });
 */
export async function downloadToFile(
  url: string,
  file: string,
  options: DownloadOptions = {},
): Promise<DownloadResult> {
  const parsed = assertHttpUrl(url);
  // The query string of a presigned URL is a bearer credential: never log or report it.
  const where = `${parsed.protocol}//${parsed.host}${parsed.pathname}`;
  const stallMs = options.stallTimeoutMs ?? 60_000;
  const controller = new AbortController();
  let stalled = false;
  let timer: NodeJS.Timeout | undefined;
  const arm = () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      stalled = true;
      controller.abort(new Error('stalled'));
    }, stallMs);
  };
  const onOuterAbort = () => controller.abort(options.signal?.reason);
  if (options.signal?.aborted) throw options.signal.reason;
  options.signal?.addEventListener('abort', onOuterAbort, { once: true });
  const hasher = new MultiHasher();
  let bytes = 0;
  const handle = await open(file, 'w');
  try {
    arm();
    const response = await fetch(parsed, { signal: controller.signal });
    if (response.status !== 200 || !response.body) {
      await response.body?.cancel().catch(() => undefined);
      throw statusError(response.status, where);
    }
    const header = response.headers.get('content-length');
    const totalBytes = header !== null && /^\d+$/.test(header) ? Number(header) : options.expectedBytes;
    if (
      options.expectedBytes !== undefined &&
      header !== null &&
      totalBytes !== undefined &&
      totalBytes !== options.expectedBytes
    ) {
      await response.body.cancel().catch(() => undefined);
      throw new DriverError(`${where} is ${totalBytes} bytes, expected ${options.expectedBytes}`, {
        code: 'SizeMismatch',
        context: { url: where },
      });
    }
    arm();
    for await (const chunk of response.body as AsyncIterable<Uint8Array>) {
      arm();
      hasher.update(chunk);
      // Awaiting each write is the back-pressure: the socket is not read faster than the share takes it.
      await handle.write(chunk);
      bytes += chunk.byteLength;
      options.onBytes?.(bytes, totalBytes);
    }
    clearTimeout(timer);
    if (totalBytes !== undefined && bytes !== totalBytes) {
      throw new DriverUnavailableError(`${where} ended after ${bytes} of ${totalBytes} bytes`, {
        context: { url: where, bytes, totalBytes },
      });
    }
    await handle.sync();
  } catch (error) {
    if (error instanceof DriverError) throw error;
    if (options.signal?.aborted) throw options.signal.reason;
    const message = stalled
      ? `no data from ${where} for ${stallMs} ms`
      : `download from ${where} failed after ${bytes} bytes: ${(error as Error).message}`;
    // A broken connection or a stalled server is worth another try.
    throw new DriverUnavailableError(message, { cause: error, context: { url: where, bytes } });
  } finally {
    clearTimeout(timer);
    options.signal?.removeEventListener('abort', onOuterAbort);
    await handle.close();
  }
  const { sha256 } = hasher.digest();
  if (options.expectedSha256 !== undefined && sha256 !== options.expectedSha256.toLowerCase()) {
    throw new ChecksumMismatchError(`sha256 of ${where} is ${sha256}, expected ${options.expectedSha256}`, {
      url: where,
      sha256,
      expectedSha256: options.expectedSha256.toLowerCase(),
    });
  }
  return { bytes, sha256 };
}

function statusError(status: number, where: string): DriverError {
  const context = { url: where, status };
  if (status === 404) return new ObjectNotFoundError(`${where} answered 404`, { context });
  if (status === 429 || status >= 500) {
    return new DriverUnavailableError(`${where} answered ${status}`, { context });
  }
  // 403 is typically an expired presigned URL: the caller must ask for a new one, not retry this one.
  return new DriverError(`${where} answered ${status}`, { code: 'DownloadFailed', context });
}

/**
 * The sha256 of a file, streamed (templates are large).
 *
 * @example
 * const hex = await sha256OfFile('/mnt/ds-1/templates/tpl-1.qcow2', { signal });
 */
export async function sha256OfFile(file: string, options: { signal?: AbortSignal } = {}): Promise<string> {
  const hasher = new MultiHasher();
  const handle = await open(file, 'r');
  try {
    for await (const chunk of handle.createReadStream({ signal: options.signal, autoClose: false })) {
      hasher.update(chunk as Buffer);
    }
  } finally {
    await handle.close();
  }
  return hasher.digest().sha256;
}
