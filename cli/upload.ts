/**
 * Sending a local file to an image store through presigned part URLs (`strata templates upload`).
 *
 * The part URLs point at the store (S3 or the embedded stack), not at the API: they carry their own
 * authorization in the query string, so each part is a plain PUT with only Content-Length — no
 * SigV4, no Idempotency-Key, no content type, which a presigned signature would not cover.
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

export interface PartPlan {
  partNumber: number;
  url: string;
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
  return parts.map((part) => ({
    partNumber: part.partNumber,
    url: part.url,
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
): Promise<string> {
  for (let attempt = 1; ; attempt++) {
    let counted = 0;
    try {
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
  const queue = [...options.parts];
  const done: CompletedPart[] = [];
  let failure: { error: unknown } | undefined;
  const worker = async () => {
    for (let part = queue.shift(); part && !signal.aborted; part = queue.shift()) {
      try {
        done.push({ partNumber: part.partNumber, etag: await putPartWithRetries(options, part, signal) });
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
