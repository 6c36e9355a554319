/**
 * Sending a local file to an image store through presigned part URLs (`strata templates upload`).
 *
 * The part URLs point at the store (S3 or the embedded stack), not at the API: they carry their own
 * authorization in the query string, so each part is a plain PUT with only Content-Length — no
 * SigV4, no Idempotency-Key, no content type, which a presigned signature would not cover.
 *
 * The URLs are short-lived (1 h, functions/core/grants.ts) while an upload may take much longer, so
 * the client renews them: before it starts a part whose URL expires within
 * {@link RENEW_MARGIN_MS} (or has none: a replayed start answer carries `url: null`), and after a
 * 403 that says the URL expired, it asks the API (`POST .../uploads/{uploadId}/parts`) for fresh
 * URLs of that part and of the queued parts that need them too, in batches of {@link RENEW_BATCH}.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { setTimeout as delay } from 'node:timers/promises';
import type { CompletedPart, TemplateUpload } from './api-types.js';

/** A failure of the upload itself (as opposed to an API error); the command prints it plainly. */
export class UploadError extends Error {
  override readonly name: string = 'UploadError';
}

export class PartUploadError extends UploadError {
  override readonly name = 'PartUploadError';
  constructor(
    readonly partNumber: number,
    message: string,
    /** Worth another attempt: a network failure or an answer that says "later" (5xx, 408, 429). */
    readonly retryable: boolean,
    readonly status?: number,
    /** A 403 that says the URL expired: worth a fresh URL, not the same one again. */
    readonly expired = false,
  ) {
    super(message);
  }
}

/** Ctrl-C during the upload. */
export class UploadInterruptedError extends UploadError {
  override readonly name = 'UploadInterruptedError';
  constructor() {
    super('interrupted');
  }
}

/** A part whose URL expires sooner than this is renewed before it starts. */
export const RENEW_MARGIN_MS = 5 * 60_000;
/** Parts renewed per call (the API takes at most 1000). */
export const RENEW_BATCH = 1000;
/** Renewals after a 403 for one part before its failure stands (a 403 may not be an expiry). */
const MAX_RENEWALS_AFTER_403 = 2;

export interface PartPlan {
  partNumber: number;
  /** null: no URL yet (a replayed answer omits them); renewed before the part starts. */
  url: string | null;
  /** When `url` stops working (epoch ms); 0 when unknown. */
  expiresAtMs: number;
  /** First byte of the part in the file. */
  start: number;
  /** One past its last byte. */
  end: number;
}

/**
 * Maps the parts the API offered onto byte ranges of the file: part n is
 * [(n-1)·partSize, min(n·partSize, size)). Refuses an offer that would not cover the file exactly,
 * since completing it would store a different image than the one hashed.
 */
export function planParts(upload: TemplateUpload, sizeBytes: number): PartPlan[] {
  const partSize = upload.partSizeBytes;
  if (!Number.isSafeInteger(partSize) || partSize <= 0) {
    throw new UploadError(`the API offered an unusable part size (${String(partSize)})`);
  }
  const expected = Math.ceil(sizeBytes / partSize);
  const parts = [...(upload.parts ?? [])].sort((a, b) => a.partNumber - b.partNumber);
  const numbers = parts.map((part) => part.partNumber);
  if (parts.length !== expected || numbers.some((n, i) => n !== i + 1)) {
    throw new UploadError(
      `the API offered parts [${numbers.join(', ')}] for ${sizeBytes} bytes in parts of ${partSize}; ` +
        `expected 1..${expected}`,
    );
  }
  const expiresAtMs = Date.parse(upload.expiresAt);
  return parts.map((part) => ({
    partNumber: part.partNumber,
    url: part.url ?? null,
    expiresAtMs: part.url && Number.isFinite(expiresAtMs) ? expiresAtMs : 0,
    start: (part.partNumber - 1) * partSize,
    end: Math.min(part.partNumber * partSize, sizeBytes),
  }));
}

/** The file's sha256 as hex, read as a stream so that a multi-GiB image never sits in memory. */
export function sha256File(path: string, onBytes: (bytes: number) => void = () => {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const hash = createHash('sha256');
    const stream = createReadStream(path, { highWaterMark: 1024 * 1024 });
    stream.on('data', (chunk: Buffer | string) => {
      hash.update(chunk);
      onBytes(chunk.length);
    });
    stream.on('error', (error) => reject(new UploadError(`cannot read ${path}: ${error.message}`)));
    stream.on('end', () => resolve(hash.digest('hex')));
  });
}

export interface UploadPartsOptions {
  file: string;
  parts: readonly PartPlan[];
  /** Parts in flight at once. */
  concurrency: number;
  /** Attempts per part, the first included. */
  maxAttempts: number;
  /** Pause before retry n (1-based). */
  retryDelayMs: (retry: number) => number;
  /** Bytes read into a request; negative when a failed attempt's bytes are discounted. */
  onBytes: (bytes: number) => void;
  /** Aborting it (Ctrl-C) stops every part in flight. */
  signal?: AbortSignal;
  /** A part whose connection shows no activity this long is failed (and retried). */
  idleTimeoutMs?: number;
  /** Fresh URLs for these parts (the API's parts route); without it, URLs are never renewed. */
  renew?: (
    partNumbers: number[],
  ) => Promise<{ parts: { partNumber: number; url: string }[]; expiresAt: string }>;
  /** The clock the expiries are compared with (epoch ms). */
  now?: () => number;
}

const DEFAULT_IDLE_TIMEOUT_MS = 120_000;
const MAX_ERROR_BODY = 4096;

function isRetryableStatus(status: number): boolean {
  return status >= 500 || status === 408 || status === 429;
}

/** S3 answers errors as XML; its Code and Message say more than the status alone. */
function describeErrorBody(body: string): string {
  const code = /<Code>([^<]*)<\/Code>/.exec(body)?.[1];
  const message = /<Message>([^<]*)<\/Message>/.exec(body)?.[1];
  if (code || message) return [code, message].filter(Boolean).join(': ');
  const flat = body.replace(/\s+/g, ' ').trim();
  return flat.length > 200 ? `${flat.slice(0, 200)}…` : flat;
}

function errorText(error: unknown): string {
  const code = (error as { code?: unknown })?.code;
  const message = (error as { message?: unknown })?.message;
  return typeof code === 'string' ? code : typeof message === 'string' ? message : String(error);
}

/** One attempt at one part: streams its byte range from the file and resolves with the ETag. */
function putPart(
  file: string,
  part: PartPlan,
  signal: AbortSignal,
  onBytes: (bytes: number) => void,
  idleTimeoutMs: number,
): Promise<string> {
  return new Promise((resolve, reject) => {
    const n = part.partNumber;
    if (part.url === null) {
      reject(new PartUploadError(n, `part ${n}: no URL to upload it to`, false));
      return;
    }
    const url = new URL(part.url);
    const send = url.protocol === 'https:' ? httpsRequest : httpRequest;
    // createReadStream's `end` is inclusive.
    const body = createReadStream(file, { start: part.start, end: part.end - 1 });
    const request = send(url, {
      method: 'PUT',
      headers: { 'content-length': String(part.end - part.start) },
      signal,
      timeout: idleTimeoutMs,
    });
    let settled = false;
    const fail = (error: unknown) => {
      if (settled) return;
      settled = true;
      body.destroy();
      request.destroy();
      reject(signal.aborted ? signal.reason : error);
    };
    body.on('data', (chunk: Buffer | string) => onBytes(chunk.length));
    body.on('error', (error) => fail(new PartUploadError(n, `cannot read ${file}: ${error.message}`, false)));
    request.on('timeout', () =>
      request.destroy(new Error(`no progress for ${Math.round(idleTimeoutMs / 1000)}s`)),
    );
    request.on('error', (error) =>
      fail(new PartUploadError(n, `part ${n}: ${errorText(error)} (${url.host})`, true)),
    );
    request.on('response', (response) => {
      const chunks: Buffer[] = [];
      let kept = 0;
      response.on('data', (chunk: Buffer) => {
        if (kept < MAX_ERROR_BODY) {
          chunks.push(chunk);
          kept += chunk.length;
        }
      });
      response.on('error', (error) =>
        fail(new PartUploadError(n, `part ${n}: ${errorText(error)} (${url.host})`, true)),
      );
      response.on('end', () => {
        const status = response.statusCode ?? 0;
        const etag = response.headers.etag;
        if (status >= 200 && status < 300 && etag) {
          if (settled) return;
          settled = true;
          resolve(etag);
          return;
        }
        if (status >= 200 && status < 300) {
          // Without the ETag the upload cannot be completed; sending the part again will not help.
          fail(
            new PartUploadError(n, `part ${n}: the store answered ${status} without an ETag`, false, status),
          );
          return;
        }
        const detail = describeErrorBody(Buffer.concat(chunks).toString('utf8'));
        fail(
          new PartUploadError(
            n,
            `part ${n}: HTTP ${status} from ${url.host}${detail ? `: ${detail}` : ''}`,
            isRetryableStatus(status),
            status,
            // S3 answers an expired presigned URL with 403 AccessDenied "Request has expired".
            status === 403 && /expired/i.test(detail),
          ),
        );
      });
    });
    body.pipe(request);
  });
}

async function putPartWithRetries(
  options: UploadPartsOptions,
  part: PartPlan,
  signal: AbortSignal,
  fresh: (part: PartPlan, force: boolean) => Promise<void>,
): Promise<string> {
  let renewedAfter403 = 0;
  for (let attempt = 1; ; attempt++) {
    let counted = 0;
    try {
      await fresh(part, false);
      return await putPart(
        options.file,
        part,
        signal,
        (bytes) => {
          counted += bytes;
          options.onBytes(bytes);
        },
        options.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS,
      );
    } catch (error) {
      // The next attempt sends the whole part again; keep the bar honest.
      options.onBytes(-counted);
      if (signal.aborted) throw signal.reason;
      if (
        error instanceof PartUploadError &&
        error.status === 403 &&
        options.renew &&
        renewedAfter403 < MAX_RENEWALS_AFTER_403 &&
        (error.expired || part.expiresAtMs <= (options.now ?? Date.now)())
      ) {
        // The URL ran out (while queued, or the clocks disagree): a fresh one, not a backoff.
        renewedAfter403++;
        await fresh(part, true);
        attempt--;
        continue;
      }
      if (!(error instanceof PartUploadError) || !error.retryable) throw error;
      if (attempt >= options.maxAttempts) {
        throw new PartUploadError(
          part.partNumber,
          `${error.message} (gave up after ${attempt} attempts)`,
          false,
          error.status,
        );
      }
      try {
        await delay(options.retryDelayMs(attempt), undefined, { signal });
      } catch {
        throw signal.reason;
      }
    }
  }
}

/**
 * Uploads every part with at most `concurrency` in flight, each retried on its own. The first part
 * that fails for good stops the others (their requests are aborted), so that when this rejects
 * nothing is still being written and the caller can abort the upload server-side.
 * Resolves with the ETags in part order, as CompleteMultipartUpload wants them.
 */
export async function uploadParts(options: UploadPartsOptions): Promise<CompletedPart[]> {
  const stop = new AbortController();
  const signal = options.signal ? AbortSignal.any([options.signal, stop.signal]) : stop.signal;
  // Copies: renewals replace their URLs, the caller's plan stays as given.
  const queue = options.parts.map((part) => ({ ...part }));
  const done: CompletedPart[] = [];
  let failure: { error: unknown } | undefined;
  const now = options.now ?? Date.now;
  const stale = (part: PartPlan) => part.url === null || part.expiresAtMs - now() < RENEW_MARGIN_MS;
  // One renewal at a time: parts that need one while it runs wait for it, and usually find
  // themselves renewed by it (it takes the queued parts that need it too).
  let renewing: Promise<void> | undefined;
  const renewBatch = async (first: PartPlan): Promise<void> => {
    if (!options.renew) {
      if (first.url === null) {
        throw new UploadError(`the API gave no URL for part ${first.partNumber} and cannot renew it`);
      }
      return;
    }
    const batch = [first, ...queue.filter((p) => p !== first && stale(p))].slice(0, RENEW_BATCH);
    const answer = await options.renew(batch.map((p) => p.partNumber));
    const expiresAtMs = Date.parse(answer.expiresAt);
    const urls = new Map(answer.parts.map((p) => [p.partNumber, p.url]));
    for (const part of batch) {
      const url = urls.get(part.partNumber);
      if (!url) continue;
      part.url = url;
      part.expiresAtMs = Number.isFinite(expiresAtMs) ? expiresAtMs : 0;
    }
    if (!urls.get(first.partNumber)) {
      throw new UploadError(`the API renewed no URL for part ${first.partNumber}`);
    }
  };
  const fresh = async (part: PartPlan, force: boolean): Promise<void> => {
    const forced = force;
    for (;;) {
      if (!forced && !stale(part)) return;
      if (renewing) {
        // A forced renewal (after a 403) is of a part in flight, which that batch did not take.
        await renewing;
        continue;
      }
      renewing = renewBatch(part).finally(() => {
        renewing = undefined;
      });
      await renewing;
      return;
    }
  };
  const worker = async () => {
    for (let part = queue.shift(); part && !signal.aborted; part = queue.shift()) {
      try {
        done.push({
          partNumber: part.partNumber,
          etag: await putPartWithRetries(options, part, signal, fresh),
        });
      } catch (error) {
        failure ??= { error };
        stop.abort(error);
        return;
      }
    }
  };
  const workers = Math.max(1, Math.min(options.concurrency, queue.length));
  await Promise.all(Array.from({ length: workers }, worker));
  if (failure) throw failure.error;
  if (signal.aborted) throw signal.reason;
  return done.sort((a, b) => a.partNumber - b.partNumber);
}
