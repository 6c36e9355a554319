/**
 * Downloading an image from an http(s) URL into a file on the share: parallel ranged GETs pinned to
 * one object version for large objects, one stream otherwise, hashed in order on the way. Used by
 * the `fetchImage` host operation to install a template from a presigned image-store URL.
 *
 * The URL is data: it goes to Node's HTTP client, never to a shell or to qemu-img (whose `http:`
 * protocol driver would also follow whatever the image's header says).
 */
import { createHash } from 'node:crypto';
import { type FileHandle, open } from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import { Worker } from 'node:worker_threads';
import { MultiHasher } from '../sdk/checksum.js';
import { DriverError, DriverInputError, DriverUnavailableError, ObjectNotFoundError } from '../sdk/errors.js';

const MiB = 1024 * 1024;
/**
 * Objects up to this size come in one GET: the first request asks for this many bytes, which is the
 * whole of a smaller object. Larger ones are fetched with parallel ranged GETs.
 */
export const RANGED_MIN_BYTES = 16 * MiB;
/** Parallel ranged GETs of one object at most (the default is sized to the object: 4–8). */
export const MAX_DOWNLOAD_STREAMS = 8;
const MIN_DOWNLOAD_STREAMS = 4;
/** Attempts per request (the first GET, or one range) on a network error, a stall, 429 or 5xx. */
export const DOWNLOAD_ATTEMPTS = 5;
const DOWNLOAD_BACKOFF_MS = 200;
// The in-order hash reads back what the ranges wrote, this much at a time.
const HASH_READ_BYTES = 4 * MiB;
// Socket chunks (~64 KiB) are gathered up to this much per write: fewer system calls and thread
// pool round trips per byte, and still only this much held per range.
const WRITE_BYTES = 1 * MiB;

/** Options of {@link downloadToFile}. */
export interface DownloadOptions {
  /** Aborts the download (the host operation's deadline or the runtime stopping). */
  signal?: AbortSignal;
  /**
   * Fails a request when no byte arrives for this long; default 60 s. A slow link is fine, a stuck
   * one is not. A stalled range is retried like a broken one; a stalled single stream fails.
   */
  stallTimeoutMs?: number;
  /** Lower-case or upper-case hex sha256 the bytes must have. */
  expectedSha256?: string;
  /** Exact length the body must have, when the caller knows it. */
  expectedBytes?: number;
  /**
   * The ETag the object must have (the version the caller vouches for): every GET carries
   * `If-Match` with it, and an answer with another ETag is {@link SourceChangedError}. Without it,
   * the ranges are pinned to the ETag of the first answer.
   */
  etag?: string;
  /**
   * The image store proved that the object version `etag` has `expectedSha256` (a stored full-object
   * checksum), so the bytes are not hashed again here. Needs `etag` and `expectedSha256`.
   */
  sourceVerified?: boolean;
  /** Parallel ranged GETs at most; default sized to the object (4–8). 1 fetches in one stream. */
  streams?: number;
  /** Bytes of the first GET, and the size up to which an object comes in one stream; default 16 MiB. */
  rangedMinBytes?: number;
  /** Bytes per range after the first; default sized to the object (8–64 MiB). */
  partBytes?: number;
  /** Attempts per request; default {@link DOWNLOAD_ATTEMPTS}. */
  maxAttempts?: number;
  /** First backoff between attempts, doubled each time; default 200 ms. */
  backoffMs?: number;
  /** Called with the bytes written so far and the total when known. */
  onBytes?(bytes: number, totalBytes: number | undefined): void;
}

/** What {@link downloadToFile} wrote. */
export interface DownloadResult {
  bytes: number;
  /** sha256 of the bytes, hashed here; absent when `sourceVerified` skipped the hash. */
  sha256?: string;
  /** How many requests ran in parallel: 1 for a single stream. */
  streams: number;
  /** The ETag every range was pinned to, when the object came in ranges. */
  etag?: string;
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
 * The object behind the URL changed while it was downloaded (a ranged GET answered 412 to its
 * `If-Match`, or another ETag or length), or is not the version the caller pinned. Not retryable:
 * the bytes on disk mix two versions, and the caller must decide what the new one is.
 *
 * @example
 * if (err instanceof DriverError && err.code === 'SourceChanged') reRegisterTemplate();
 */
export class SourceChangedError extends DriverError {
  constructor(message: string, context: Record<string, unknown> = {}) {
    super(message, { code: 'SourceChanged', retryable: false, context });
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
 * GETs `url` into `file` (created or truncated) and fsyncs it.
 *
 * The first request is a GET of the first {@link RANGED_MIN_BYTES} (`Range: bytes=0-…`). A server
 * that answers 200 (no range support), or an object that fits in that first answer, is read as one
 * stream and hashed as it arrives. A larger object that answered 206 with a strong ETag is fetched
 * by up to {@link MAX_DOWNLOAD_STREAMS} ranged GETs at once, each written at its offset
 * (positional writes; each chunk is written before the next is read, so a range holds only what
 * its socket buffers, never the object), each carrying `If-Match` with that ETag so every byte comes
 * from one version of the object. A range that breaks, stalls for `stallTimeoutMs`, or answers 429
 * or 5xx is resumed where it stopped, with backoff, up to `maxAttempts` times. The sha256 is computed
 * in order while the ranges run, over the contiguous prefix written so far (read back from the
 * file by a worker thread, so hashing never holds the event loop), unless `sourceVerified` says the
 * store already proved it.
 *
 * Rejects when a status is 404 ({@link ObjectNotFoundError}), 403 or another client error
 * (`DownloadFailed`, not retryable: a presigned URL that expired needs a new one), the body ends
 * short of its length or of `expectedBytes`, the object changes meanwhile
 * ({@link SourceChangedError}), or the sha256 differs from `expectedSha256`
 * ({@link ChecksumMismatchError}). The caller removes `file` on failure.
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
  if (options.sourceVerified && (options.expectedSha256 === undefined || options.etag === undefined)) {
    throw new DriverInputError('sourceVerified needs expectedSha256 and etag', {
      context: { field: 'sourceVerified' },
    });
  }
  if (options.signal?.aborted) throw options.signal.reason;
  const download = new Download(parsed, file, options);
  const handle = await open(file, 'w');
  try {
    const result = await download.run(handle);
    await handle.sync();
    return result;
  } catch (error) {
    if (options.signal?.aborted) throw options.signal.reason;
    throw error;
  } finally {
    download.dispose();
    await handle.close();
  }
}

/** The status and headers of an answer. */
interface Head {
  status: number;
  headers: { get(name: string): string | null };
}

/** One HTTP answer being read, with its stall watch. */
interface Opened {
  response: Head;
  /**
   * Hands each chunk of the body to `take` and waits for it before reading on (the back-pressure);
   * a break or a stall is a {@link DriverUnavailableError}.
   */
  pump(take: (chunk: Buffer) => Promise<void> | void): Promise<void>;
  cancel(): Promise<void>;
}

/** One range of the object: bytes `start`..`end` inclusive, `written` of them on disk so far. */
interface Part {
  start: number;
  end: number;
  written: number;
  done: boolean;
}

class Download {
  private readonly where: string;
  private readonly stallMs: number;
  private readonly hash: boolean;
  private readonly attempts: number;
  private readonly backoffMs: number;
  /** Aborted by the caller's signal or by the first failure: every request listens to it. */
  private readonly stop = new AbortController();
  private readonly onOuterAbort = () => this.stop.abort(this.options.signal?.reason);
  /** Requests not yet read to their end or cancelled: {@link dispose} ends them and their timers. */
  private readonly live = new Set<() => void>();
  private bytes = 0;
  private total: number | undefined;

  constructor(
    private readonly url: URL,
    private readonly file: string,
    private readonly options: DownloadOptions,
  ) {
    // The query string of a presigned URL is a bearer credential: never log or report it.
    this.where = `${url.protocol}//${url.host}${url.pathname}`;
    this.stallMs = options.stallTimeoutMs ?? 60_000;
    this.hash = !options.sourceVerified;
    this.attempts = Math.max(1, options.maxAttempts ?? DOWNLOAD_ATTEMPTS);
    this.backoffMs = options.backoffMs ?? DOWNLOAD_BACKOFF_MS;
    options.signal?.addEventListener('abort', this.onOuterAbort, { once: true });
  }

  dispose(): void {
    this.options.signal?.removeEventListener('abort', this.onOuterAbort);
    // A request left behind by a failure: its socket and its stall timer go with the download.
    for (const end of [...this.live]) end();
    this.keepAlive?.destroy();
  }

  async run(handle: FileHandle): Promise<DownloadResult> {
    const firstBytes = Math.max(1, this.options.rangedMinBytes ?? RANGED_MIN_BYTES);
    const pinned = this.options.etag;
    const first = await this.retrying(async () => {
      const opened = await this.open({ start: 0, end: firstBytes - 1 }, pinned);
      const { status } = opened.response;
      if (status === 200 || status === 206) return opened;
      await opened.cancel();
      // An empty object has no byte 0: S3 answers a range of it with 416. Ask for it whole.
      if (status === 416) return this.openWhole(pinned);
      if (status === 412) throw this.changed(`answered 412 to If-Match ${pinned}`);
      throw this.statusError(status);
    });
    const { response } = first;
    if (response.status === 200) return this.single(first, handle, this.lengthOf(response));

    const range = parseContentRange(response.headers.get('content-range'));
    if (range?.start !== 0 || range.total === undefined) {
      // A 206 we cannot place: start again as one plain stream.
      await first.cancel();
      return this.single(await this.retrying(() => this.openWhole(pinned)), handle, undefined);
    }
    const total = range.total;
    this.checkTotal(total);
    const etag = response.headers.get('etag') ?? undefined;
    if (pinned !== undefined && etag !== undefined && etag !== pinned) {
      await first.cancel();
      throw this.changed(`answered ETag ${etag}, not the pinned ${pinned}`);
    }
    if (range.end + 1 >= total) {
      if (range.end + 1 !== total) {
        await first.cancel();
        throw this.changed(`answered bytes 0-${range.end} of an object of ${total} bytes`);
      }
      return this.single(first, handle, total);
    }
    const version = pinned ?? etag;
    if (version === undefined || version.startsWith('W/') || this.streamsFor(total) < 2) {
      // Ranges of an object that names no strong version could mix two versions: one stream instead.
      await first.cancel();
      return this.single(await this.retrying(() => this.openWhole(pinned)), handle, total);
    }
    return this.ranged(first, handle, total, version, range.end);
  }

  /** One stream from byte 0, hashed as it arrives. */
  private async single(
    opened: Opened,
    handle: FileHandle,
    total: number | undefined,
  ): Promise<DownloadResult> {
    this.total = total;
    const hasher = this.hash ? createHash('sha256') : undefined;
    let position = 0;
    const batch = new WriteBatch(handle, 0, (n) => {
      position += n;
      this.progress(n);
    });
    await opened.pump(async (chunk) => {
      hasher?.update(chunk);
      // Awaiting each write is the back-pressure: the socket is not read faster than the share takes it.
      await batch.add(chunk);
    });
    await batch.flush();
    if (total !== undefined && position !== total) {
      throw new DriverUnavailableError(`${this.where} ended after ${position} of ${total} bytes`, {
        context: { url: this.where, bytes: position, totalBytes: total },
      });
    }
    this.checkTotal(position);
    const sha256 = hasher?.digest('hex');
    this.checkSha256(sha256);
    return { bytes: position, ...(sha256 ? { sha256 } : {}), streams: 1 };
  }

  /** Parallel ranged GETs pinned to `etag`; `first` already carries bytes 0..`firstEnd`. */
  private async ranged(
    first: Opened,
    handle: FileHandle,
    total: number,
    etag: string,
    firstEnd: number,
  ): Promise<DownloadResult> {
    this.total = total;
    // Sized up front: the ranges land anywhere in it, and the length is right before the last byte.
    await handle.truncate(total);
    const streams = this.streamsFor(total);
    const partBytes = this.partBytesFor(total - firstEnd - 1, streams);
    const parts: Part[] = [{ start: 0, end: firstEnd, written: 0, done: false }];
    for (let start = firstEnd + 1; start < total; start += partBytes) {
      parts.push({ start, end: Math.min(start + partBytes, total) - 1, written: 0, done: false });
    }
    const order = new InOrder(parts, total);
    let next = 1;
    let failure: { error: unknown } | undefined;
    const fail = (error: unknown) => {
      failure ??= { error };
      this.stop.abort(error);
      order.fail(error);
    };
    const worker = async (initial?: Opened) => {
      try {
        if (initial) await this.fetchPart(parts[0]!, handle, etag, total, order, initial);
        while (!failure && next < parts.length) {
          await this.fetchPart(parts[next++]!, handle, etag, total, order);
        }
      } catch (error) {
        fail(error);
      }
    };
    let sha256: string | undefined;
    const hashing = async () => {
      try {
        sha256 = await order.hash(this.file);
      } catch (error) {
        fail(error);
      }
    };
    const count = Math.min(streams, parts.length);
    await Promise.all([
      worker(first),
      ...Array.from({ length: count - 1 }, () => worker()),
      ...(this.hash ? [hashing()] : []),
    ]);
    if (failure) throw failure.error;
    this.checkSha256(sha256);
    return { bytes: total, ...(sha256 ? { sha256 } : {}), streams: count, etag };
  }

  /** Fetches one range (resuming where a broken attempt stopped) and writes it at its offset. */
  private async fetchPart(
    part: Part,
    handle: FileHandle,
    etag: string,
    total: number,
    order: InOrder,
    opened?: Opened,
  ): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      try {
        const position = part.start + part.written;
        const answer = opened ?? (await this.open({ start: position, end: part.end }, etag));
        opened = undefined;
        await this.checkPartial(answer, position, part.end, total, etag);
        // Bytes count as written (and are resumed after) only once they are on disk.
        const batch = new WriteBatch(handle, position, (n) => {
          part.written += n;
          this.progress(n);
          order.wrote(part);
        });
        try {
          await answer.pump(async (chunk) => {
            if (part.start + part.written + batch.pending + chunk.byteLength > part.end + 1) {
              throw new DriverError(`${this.where} sent more than bytes ${part.start}-${part.end}`, {
                code: 'DownloadFailed',
                context: { url: this.where },
              });
            }
            await batch.add(chunk);
          });
        } catch (error) {
          // What arrived before a break is the pinned version's bytes: keep it, resume after it.
          if (error instanceof DriverUnavailableError) await batch.flush();
          throw error;
        }
        await batch.flush();
        if (part.start + part.written !== part.end + 1) {
          throw new DriverUnavailableError(
            `range ${part.start}-${part.end} of ${this.where} ended after ${part.written} bytes`,
            { context: { url: this.where } },
          );
        }
        part.done = true;
        order.wrote(part);
        return;
      } catch (error) {
        if (
          !(error instanceof DriverUnavailableError) ||
          attempt >= this.attempts ||
          this.stop.signal.aborted
        ) {
          throw error;
        }
        await this.sleep(this.backoffMs * 2 ** (attempt - 1));
      }
    }
  }

  /** A ranged answer must be 206 for exactly the bytes asked, of the same object version. */
  private async checkPartial(
    answer: Opened,
    start: number,
    end: number,
    total: number,
    etag: string,
  ): Promise<void> {
    const { response } = answer;
    const problem = (): DriverError | undefined => {
      if (response.status === 412) {
        return this.changed(`answered 412 to If-Match ${etag} for bytes ${start}-${end}`);
      }
      if (response.status === 200) {
        // A ranged GET that comes back whole: the server stopped honouring ranges. Ask again.
        return new DriverUnavailableError(`${this.where} answered 200 to a ranged GET`, {
          context: { url: this.where, status: 200 },
        });
      }
      if (response.status !== 206) return this.statusError(response.status);
      const got = response.headers.get('etag');
      if (got !== null && got !== etag) return this.changed(`answered ETag ${got}, not ${etag}`);
      const range = parseContentRange(response.headers.get('content-range'));
      if (range?.total !== undefined && range.total !== total) {
        return this.changed(`is ${range.total} bytes now, not ${total}`);
      }
      if (!range || range.start !== start || range.end !== end) {
        return new DriverError(`${this.where} answered another range than bytes ${start}-${end}`, {
          code: 'DownloadFailed',
          context: { url: this.where },
        });
      }
      return undefined;
    };
    const error = problem();
    if (error) {
      await answer.cancel();
      throw error;
    }
  }

  private async open(range: { start: number; end: number } | undefined, ifMatch?: string): Promise<Opened> {
    if (this.stop.signal.aborted) throw this.stop.signal.reason;
    // node:http rather than fetch: a plain Node stream per answer costs far less CPU per byte than
    // a WHATWG stream, and redirects are not followed (a presigned URL never redirects).
    const client = this.url.protocol === 'https:' ? https : http;
    // No content coding: the bytes written must be the object's, range for range.
    const headers: Record<string, string> = { 'accept-encoding': 'identity' };
    if (range) headers.range = `bytes=${range.start}-${range.end}`;
    if (ifMatch !== undefined) headers['if-match'] = ifMatch;
    const request = client.request(this.url, { method: 'GET', headers, agent: this.agent() });
    // Errors reach the caller through the promise and the body's iterator; a late one (a socket
    // reset after the end) must not be an unhandled 'error' event.
    request.on('error', () => undefined);
    let answer: http.IncomingMessage | undefined;
    let received = 0;
    let stalled = false;
    let failure: unknown;
    // A stall is no byte for stallMs: a cheap timestamp per chunk, looked at a few times per period.
    let lastByteAt = performance.now();
    const watch = setInterval(
      () => {
        if (performance.now() - lastByteAt < this.stallMs) return;
        stalled = true;
        destroy(new Error('stalled'));
      },
      Math.max(5, Math.min(1000, Math.floor(this.stallMs / 4))),
    );
    const destroy = (error: Error) => {
      failure ??= error;
      request.destroy(error);
      answer?.destroy(error);
    };
    const onStop = () => destroy(new Error('download stopped'));
    this.stop.signal.addEventListener('abort', onStop, { once: true });
    const cleanup = () => {
      clearInterval(watch);
      this.stop.signal.removeEventListener('abort', onStop);
      this.live.delete(end);
    };
    const end = () => {
      cleanup();
      request.destroy();
      answer?.destroy();
    };
    this.live.add(end);
    const broken = (error: unknown): unknown => {
      cleanup();
      if (error instanceof DriverError) return error;
      if (this.stop.signal.aborted) return this.stop.signal.reason;
      const what = range ? `bytes ${range.start}-${range.end} of ${this.where}` : this.where;
      const cause = failure ?? error;
      const message = stalled
        ? `no data from ${what} for ${this.stallMs} ms`
        : `download of ${what} failed after ${received} bytes: ${(cause as Error).message}`;
      // A broken connection or a stalled server is worth another try.
      return new DriverUnavailableError(message, { cause, context: { url: this.where, bytes: received } });
    };
    try {
      answer = await new Promise<http.IncomingMessage>((resolve, reject) => {
        request.once('response', resolve);
        request.once('error', reject);
        request.end();
      });
    } catch (error) {
      throw broken(error);
    }
    const response = answer;
    response.on('error', () => undefined);
    lastByteAt = performance.now();
    const declared = response.headers['content-length'];
    return {
      response: {
        status: response.statusCode ?? 0,
        headers: {
          get: (name) => {
            const value = response.headers[name.toLowerCase()];
            return value === undefined ? null : Array.isArray(value) ? value.join(', ') : value;
          },
        },
      },
      async pump(take) {
        try {
          for await (const chunk of response as AsyncIterable<Buffer>) {
            lastByteAt = performance.now();
            received += chunk.byteLength;
            await take(chunk);
          }
          if (failure) throw failure;
          // A connection closed early is an error in node:http, but the length is checked anyway.
          if (declared !== undefined && /^\d+$/.test(declared) && received !== Number(declared)) {
            throw new Error(`the body ended after ${received} of ${declared} bytes`);
          }
        } catch (error) {
          throw broken(error);
        } finally {
          cleanup();
        }
      },
      async cancel() {
        cleanup();
        response.destroy();
      },
    };
  }

  // One keep-alive agent per download: its ranges reuse connections; dispose() closes them.
  private keepAlive: http.Agent | undefined;
  private agent(): http.Agent {
    if (!this.keepAlive) {
      const options = { keepAlive: true, maxSockets: MAX_DOWNLOAD_STREAMS * 2 };
      this.keepAlive = this.url.protocol === 'https:' ? new https.Agent(options) : new http.Agent(options);
    }
    return this.keepAlive;
  }

  private async openWhole(ifMatch: string | undefined): Promise<Opened> {
    const opened = await this.open(undefined, ifMatch);
    if (opened.response.status === 200) return opened;
    await opened.cancel();
    throw opened.response.status === 412
      ? this.changed(`answered 412 to If-Match ${ifMatch}`)
      : this.statusError(opened.response.status);
  }

  /** Runs `attempt` again on a retryable failure, with backoff. */
  private async retrying<T>(attempt: () => Promise<T>): Promise<T> {
    for (let n = 1; ; n++) {
      try {
        return await attempt();
      } catch (error) {
        if (!(error instanceof DriverUnavailableError) || n >= this.attempts || this.stop.signal.aborted) {
          throw error;
        }
        await this.sleep(this.backoffMs * 2 ** (n - 1));
      }
    }
  }

  private sleep(ms: number): Promise<void> {
    const signal = this.stop.signal;
    return new Promise((resolve, reject) => {
      if (signal.aborted) {
        reject(signal.reason);
        return;
      }
      const onAbort = () => {
        clearTimeout(timer);
        reject(signal.reason);
      };
      const timer = setTimeout(() => {
        signal.removeEventListener('abort', onAbort);
        resolve();
      }, ms);
      signal.addEventListener('abort', onAbort, { once: true });
    });
  }

  private lengthOf(response: Head): number | undefined {
    const header = response.headers.get('content-length');
    const length = header !== null && /^\d+$/.test(header) ? Number(header) : undefined;
    if (length !== undefined) this.checkTotal(length);
    return length ?? this.options.expectedBytes;
  }

  private checkTotal(total: number): void {
    const expected = this.options.expectedBytes;
    if (expected !== undefined && total !== expected) {
      throw new DriverError(`${this.where} is ${total} bytes, expected ${expected}`, {
        code: 'SizeMismatch',
        context: { url: this.where },
      });
    }
  }

  private checkSha256(sha256: string | undefined): void {
    const expected = this.options.expectedSha256?.toLowerCase();
    if (sha256 === undefined || expected === undefined || sha256 === expected) return;
    throw new ChecksumMismatchError(`sha256 of ${this.where} is ${sha256}, expected ${expected}`, {
      url: this.where,
      sha256,
      expectedSha256: expected,
    });
  }

  private changed(why: string): SourceChangedError {
    return new SourceChangedError(`${this.where} changed during the download: it ${why}`, {
      url: this.where,
    });
  }

  private statusError(status: number): DriverError {
    return statusError(status, this.where);
  }

  private progress(bytes: number): void {
    this.bytes += bytes;
    this.options.onBytes?.(this.bytes, this.total);
  }

  private streamsFor(total: number): number {
    if (this.options.streams !== undefined) return Math.max(1, Math.floor(this.options.streams));
    return Math.min(MAX_DOWNLOAD_STREAMS, Math.max(MIN_DOWNLOAD_STREAMS, Math.ceil(total / (64 * MiB))));
  }

  // About four ranges per stream, so the last ones to finish leave little idle at the end.
  private partBytesFor(rest: number, streams: number): number {
    if (this.options.partBytes !== undefined) return Math.max(1, Math.floor(this.options.partBytes));
    const even = Math.ceil(rest / (streams * 4) / MiB) * MiB;
    return Math.min(64 * MiB, Math.max(8 * MiB, even));
  }
}

/**
 * Chunks gathered into one positional `writev` of about {@link WRITE_BYTES}, written in order from
 * `position`; `wrote` is told each time bytes are on disk.
 */
class WriteBatch {
  private chunks: Buffer[] = [];
  pending = 0;

  constructor(
    private readonly handle: FileHandle,
    private position: number,
    private readonly wrote: (bytes: number) => void,
  ) {}

  async add(chunk: Buffer): Promise<void> {
    this.chunks.push(chunk);
    this.pending += chunk.byteLength;
    if (this.pending >= WRITE_BYTES) await this.flush();
  }

  async flush(): Promise<void> {
    let buffers = this.chunks;
    const bytes = this.pending;
    if (bytes === 0) return;
    this.chunks = [];
    this.pending = 0;
    let at = this.position;
    let left = bytes;
    while (left > 0) {
      const { bytesWritten } = await this.handle.writev(buffers, at);
      at += bytesWritten;
      left -= bytesWritten;
      if (left > 0) buffers = skip(buffers, bytesWritten);
    }
    this.position = at;
    this.wrote(bytes);
  }
}

// The buffers less their first `bytes` (after a short write).
function skip(buffers: Buffer[], bytes: number): Buffer[] {
  const rest: Buffer[] = [];
  let n = bytes;
  for (const buffer of buffers) {
    if (n >= buffer.byteLength) {
      n -= buffer.byteLength;
      continue;
    }
    rest.push(n > 0 ? buffer.subarray(n) : buffer);
    n = 0;
  }
  return rest;
}

/**
 * The ranges' contiguous prefix (every byte below it is on disk), and the hash that follows it: a
 * sha256 must consume bytes in order, so it reads back from the file what the ranges wrote, as the
 * prefix grows.
 */
class InOrder {
  private first = 0;
  private waiting: { resolve(): void; reject(error: unknown): void; from: number } | undefined;
  private failure: { error: unknown } | undefined;

  constructor(
    private readonly parts: Part[],
    private readonly total: number,
  ) {}

  /** Bytes from 0 that are on disk. */
  prefix(): number {
    while (this.first < this.parts.length && this.parts[this.first]!.done) this.first++;
    const part = this.parts[this.first];
    return part ? part.start + part.written : this.total;
  }

  /** A range wrote more (or finished): wakes the hash once there is a useful amount to read. */
  wrote(part: Part): void {
    const waiting = this.waiting;
    if (!waiting) return;
    const prefix = this.prefix();
    if (prefix - waiting.from >= HASH_READ_BYTES || (part.done && prefix > waiting.from)) {
      this.waiting = undefined;
      waiting.resolve();
    }
  }

  fail(error: unknown): void {
    this.failure ??= { error };
    this.waiting?.reject(error);
    this.waiting = undefined;
  }

  /**
   * The sha256 of the file, computed by a worker thread that reads back each stretch of the prefix
   * as it grows: the event loop only says how far it may read, and keeps serving the sockets.
   */
  async hash(file: string): Promise<string> {
    const worker = new Worker(READ_BACK_HASH_WORKER, { eval: true, workerData: { file } });
    const digest = new Promise<string>((resolve, reject) => {
      worker.on('message', (m: { digest?: string; error?: string }) => {
        if (m.digest) resolve(m.digest);
        else reject(new DriverError(`hashing the download failed: ${m.error}`, { code: 'ImageChanged' }));
      });
      worker.on('error', reject);
      worker.on('exit', (code) => reject(new Error(`the hash worker exited with ${code}`)));
    });
    digest.catch(() => undefined);
    try {
      let told = 0;
      while (told < this.total) {
        if (this.failure) throw this.failure.error;
        const prefix = this.prefix();
        if (prefix === told) {
          await new Promise<void>((resolve, reject) => {
            this.waiting = { resolve, reject, from: told };
          });
          continue;
        }
        worker.postMessage({ upTo: prefix });
        told = prefix;
      }
      worker.postMessage({ done: true });
      return await digest;
    } finally {
      await worker.terminate();
    }
  }
}

// The read-back hash worker's whole program: hashes the file up to each `upTo` it is sent, in order,
// and answers the digest when told `done`.
const READ_BACK_HASH_WORKER = `
const { parentPort, workerData } = require('node:worker_threads');
const fs = require('node:fs');
const { createHash } = require('node:crypto');
const fd = fs.openSync(workerData.file, 'r');
const hash = createHash('sha256');
const buffer = Buffer.allocUnsafe(${HASH_READ_BYTES});
let hashed = 0;
parentPort.on('message', ({ upTo, done }) => {
  try {
    while (upTo !== undefined && hashed < upTo) {
      const n = fs.readSync(fd, buffer, 0, Math.min(buffer.length, upTo - hashed), hashed);
      if (n === 0) throw new Error('the file shrank while it was hashed');
      hash.update(buffer.subarray(0, n));
      hashed += n;
    }
    if (done) {
      fs.closeSync(fd);
      parentPort.postMessage({ digest: hash.digest('hex') });
    }
  } catch (error) {
    parentPort.postMessage({ error: String((error && error.message) || error) });
  }
});
`;

/** `bytes 0-99/1000` → `{ start: 0, end: 99, total: 1000 }` (`total` undefined for `*`). */
function parseContentRange(
  header: string | null,
): { start: number; end: number; total: number | undefined } | undefined {
  const match = header ? /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(header.trim()) : null;
  if (!match) return undefined;
  const start = Number(match[1]);
  const end = Number(match[2]);
  if (end < start) return undefined;
  return { start, end, total: match[3] === '*' ? undefined : Number(match[3]) };
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
