/**
 * The SSRF-safe HTTP(S) client behind "register template from URL". The rules live in
 * `functions/core/url-policy.ts`; this module applies them to what the network says:
 *
 * - the host name is resolved once, every address it resolves to must pass (unless the name itself is
 *   allowlisted), and the connection goes to that pinned address, so a second DNS answer (rebinding)
 *   never gets a say; TLS still verifies the certificate against the host name (SNI and identity);
 * - redirects are followed by hand, each target checked and resolved like the first URL;
 * - the body is a stream (no temporary file, bounded memory, backpressure kept) that fails on a size
 *   cap, on a server that stops sending, and on a body shorter or longer than its Content-Length.
 */

import type { LookupAddress } from 'node:dns';
import { lookup as dnsLookup } from 'node:dns/promises';
import { type ClientRequest, request as httpRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { isIP } from 'node:net';
import type { Readable } from 'node:stream';
import { Transform, type TransformCallback } from 'node:stream';
import { type ErrorContext, StrataError, UnprocessableError } from '../../core/errors.js';
import {
  checkUrlUpFront,
  FETCH_ALLOWLIST_ENV,
  type FetchAllowlist,
  hostOf,
  isAllowlistedHost,
  isBlockedAddress,
} from '../../core/url-policy.js';

/** Why a fetch failed once it had started talking to servers. */
export type FetchErrorCode = 'Truncated' | 'TooLarge' | 'Stalled' | 'HttpStatus' | 'Redirect' | 'Network';

/**
 * A fetch that went wrong on the wire: the job fails with this (it is not a caller's input error).
 * `retryable` says whether trying again later may help (a dropped connection, a 503), as opposed to
 * an answer that will not change (a 404, a refused redirect, an oversized image).
 *
 * @example
 * if (e instanceof FetchError && e.retryable) scheduleRetry();
 */
export class FetchError extends StrataError {
  readonly code: FetchErrorCode;
  readonly retryable: boolean;

  constructor(
    code: FetchErrorCode,
    message: string,
    options: { retryable?: boolean; context?: ErrorContext; cause?: unknown } = {},
  ) {
    super(message, options.context ?? {}, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.retryable = options.retryable ?? false;
  }
}

/** One DNS answer, as `dns.promises.lookup(host, { all: true })` gives it. */
export type HostLookup = (host: string) => Promise<readonly { address: string; family: number }[]>;

/** Options of {@link openSafeStream}. */
export interface SafeFetchOptions {
  allowlist: FetchAllowlist;
  /** The most bytes the body may have; more fails with `TooLarge` (before reading if announced). */
  maxBytes: number;
  /** How long the server may send nothing (headers or body) while we wait for it, before `Stalled`. */
  noProgressTimeoutMs: number;
  /** Redirects followed at most (default 5). */
  maxRedirects?: number;
  /** How long a TCP (and TLS) connection may take (default 10 s). */
  connectTimeoutMs?: number;
  /** DNS; injectable for tests (default `dns.promises.lookup` with `all: true`). */
  lookup?: HostLookup;
  /** Aborts the fetch, before or during the body; the stream then fails with the signal's reason. */
  signal?: AbortSignal;
  userAgent?: string;
}

/** An open download. Read `body` to the end or destroy it; either releases the connection. */
export interface SafeStream {
  body: Readable;
  /** The announced length, when the server gave one (the stream fails if it does not match). */
  contentLength?: number;
  /** The URL that answered, after redirects. */
  finalUrl: string;
  /** The address we connected to for `finalUrl`. */
  address: string;
  /** The final response's headers, repeated ones joined with `, `. */
  headers: Record<string, string>;
}

const REDIRECTS = new Set([301, 302, 303, 307, 308]);
const DEFAULT_USER_AGENT = 'strata-template-fetcher/1';

/**
 * Opens `url` for streaming under the SSRF rules. A host name the allowlist names is trusted whatever
 * it resolves to; any other name must resolve only to allowed addresses.
 *
 * @throws InputError (`{ field: 'url' }`) when the URL itself is refused (scheme, credentials, a
 *   blocked IP literal); UnprocessableError (`{ field: 'url' }`) when its host resolves to a blocked
 *   address; FetchError for everything after that (redirects, statuses, DNS and transport failures,
 *   an announced length over `maxBytes`). Nothing is fetched from a refused address.
 * @example
 * const { body, contentLength } = await openSafeStream(url, {
 *   allowlist, maxBytes: 64 * 2 ** 30, noProgressTimeoutMs: 60_000,
 * });
 * await pipeline(body, uploadStream);
 */
export async function openSafeStream(url: string, options: SafeFetchOptions): Promise<SafeStream> {
  if (!(options.maxBytes >= 0) || !(options.noProgressTimeoutMs > 0)) {
    throw new RangeError('openSafeStream needs maxBytes >= 0 and noProgressTimeoutMs > 0');
  }
  const maxRedirects = options.maxRedirects ?? 5;
  let current = checkUrlUpFront(url, options.allowlist);
  for (let redirects = 0; ; redirects++) {
    options.signal?.throwIfAborted();
    const address = await pinAddress(current, options, redirects > 0);
    options.signal?.throwIfAborted();
    const exchange = await send(current, address, options);
    const { req, res } = exchange;
    const status = res.statusCode ?? 0;
    if (REDIRECTS.has(status)) {
      // The body of a redirect is of no use; we asked for `Connection: close`, so drop the socket.
      discard(req, res);
      if (redirects >= maxRedirects) {
        throw new FetchError('Redirect', `more than ${maxRedirects} redirects`, {
          context: { field: 'url' },
        });
      }
      current = checkRedirect(current, res.headers.location, options.allowlist);
      continue;
    }
    if (status < 200 || status > 299) {
      discard(req, res);
      throw new FetchError('HttpStatus', `${redact(current)} answered HTTP ${status}`, {
        retryable: status === 408 || status === 429 || status >= 500,
        context: { field: 'url', status },
      });
    }
    const contentLength = parseContentLength(res.headers['content-length']);
    if (contentLength !== undefined && contentLength > options.maxBytes) {
      discard(req, res);
      throw new FetchError(
        'TooLarge',
        `${redact(current)} announces ${contentLength} bytes, over the limit of ${options.maxBytes}`,
        {
          context: { field: 'url', contentLength, maxBytes: options.maxBytes },
        },
      );
    }
    return {
      body: guardBody(exchange, hostOf(current), contentLength, options),
      ...(contentLength === undefined ? {} : { contentLength }),
      finalUrl: current.href,
      address,
      headers: flattenHeaders(res),
    };
  }
}

/** Resolves the URL's host once and returns the one address we will connect to, or refuses. */
async function pinAddress(url: URL, options: SafeFetchOptions, afterRedirect: boolean): Promise<string> {
  const host = hostOf(url);
  // IP literals were judged by checkUrlUpFront / checkRedirect already.
  if (isIP(host)) return host;
  let answers: readonly { address: string; family: number }[];
  try {
    answers = await (options.lookup ?? defaultLookup)(host);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new FetchError('Network', `could not resolve ${host}${code ? ` (${code})` : ''}`, {
      // A name that does not exist will not exist in a minute either; a failing resolver might.
      retryable: code !== 'ENOTFOUND' && code !== 'ENODATA',
      context: { field: 'url', host },
      cause: e,
    });
  }
  const first = answers[0];
  if (!first) {
    throw new FetchError('Network', `${host} resolves to no address`, { context: { field: 'url', host } });
  }
  if (!isAllowlistedHost(host, options.allowlist)) {
    // Any one bad answer refuses the lot: we must not depend on which address we happen to pick.
    for (const { address } of answers) {
      const verdict = isBlockedAddress(address, options.allowlist);
      if (verdict.blocked) {
        const message = `${afterRedirect ? 'redirect target ' : 'url '}${host} resolves to ${address}, ${verdict.reason}; add the host to ${FETCH_ALLOWLIST_ENV} to allow it`;
        const context = { field: 'url', host, address };
        throw afterRedirect
          ? new FetchError('Redirect', message, { context })
          : new UnprocessableError(message, context);
      }
    }
  }
  if (!isIP(first.address)) {
    throw new FetchError('Network', `${host} resolves to something that is not an address`, {
      context: { host },
    });
  }
  return first.address;
}

function defaultLookup(host: string): Promise<LookupAddress[]> {
  return dnsLookup(host, { all: true, verbatim: true });
}

function checkRedirect(from: URL, location: string | undefined, allowlist: FetchAllowlist): URL {
  if (!location) {
    throw new FetchError('Redirect', `${redact(from)} redirects without a Location`, {
      context: { field: 'url' },
    });
  }
  let target: string;
  try {
    target = new URL(location, from).href;
  } catch (e) {
    throw new FetchError('Redirect', `${redact(from)} redirects to an invalid URL`, {
      context: { field: 'url' },
      cause: e,
    });
  }
  try {
    return checkUrlUpFront(target, allowlist);
  } catch (e) {
    const reason = e instanceof Error ? e.message.replace(/^url /, '') : String(e);
    throw new FetchError('Redirect', `redirect from ${redact(from)} refused: target ${reason}`, {
      context: { field: 'url' },
      cause: e,
    });
  }
}

interface Exchange {
  req: ClientRequest;
  res: IncomingMessage;
  /** Subscribes to errors after the head: from the response (`true`) or the request/socket (`false`). */
  onTrouble: (listener: (error: Error, fromResponse: boolean) => void) => void;
}

/** Sends the GET to the pinned address and waits for the response head. */
function send(url: URL, address: string, options: SafeFetchOptions): Promise<Exchange> {
  const https = url.protocol === 'https:';
  const host = hostOf(url);
  const connectTimeoutMs = options.connectTimeoutMs ?? 10_000;
  return new Promise((resolve, reject) => {
    const req = (https ? httpsRequest : httpRequest)({
      // Connecting to the address, not the name, is the pin: Node never consults DNS again.
      host: address,
      family: isIP(address),
      port: url.port || (https ? 443 : 80),
      path: `${url.pathname}${url.search}`,
      method: 'GET',
      setHost: false,
      headers: {
        host: url.host,
        'user-agent': options.userAgent ?? DEFAULT_USER_AGENT,
        accept: '*/*',
        // Byte counts and Content-Length must describe the same bytes we hand on.
        'accept-encoding': 'identity',
        connection: 'close',
      },
      agent: false,
      // Even if NODE_OPTIONS asks for the lenient parser: request smuggling stays out.
      insecureHTTPParser: false,
      // SNI and certificate identity are the host name; for IP literals Node checks the IP SANs.
      ...(https && !isIP(host) ? { servername: host } : {}),
    });
    let timer = setTimeout(
      () =>
        req.destroy(
          new FetchError(
            'Network',
            `could not connect to ${host} (${address}) within ${connectTimeoutMs} ms`,
            {
              retryable: true,
              context: { field: 'url', host, address },
            },
          ),
        ),
      connectTimeoutMs,
    );
    const waitForHead = () => {
      clearTimeout(timer);
      timer = setTimeout(
        () =>
          req.destroy(
            new FetchError('Stalled', `${host} sent no response within ${options.noProgressTimeoutMs} ms`, {
              retryable: true,
              context: { field: 'url', host, address },
            }),
          ),
        options.noProgressTimeoutMs,
      );
    };
    req.once('socket', (socket) => {
      socket.once(https ? 'secureConnect' : 'connect', waitForHead);
    });
    const onAbort = () => req.destroy(options.signal?.reason);
    options.signal?.addEventListener('abort', onAbort, { once: true });
    const settle = () => {
      clearTimeout(timer);
      options.signal?.removeEventListener('abort', onAbort);
    };
    // Trouble right after the head (a parse error on bytes past the body, the connection dropping) is
    // emitted before whoever awaits this promise can listen: keep the first and replay it.
    let late: { error: Error; fromResponse: boolean } | undefined;
    let onLate: ((error: Error, fromResponse: boolean) => void) | undefined;
    const relay = (error: Error, fromResponse: boolean) => {
      if (onLate) onLate(error, fromResponse);
      else late ??= { error, fromResponse };
    };
    let responded = false;
    req.once('response', (res) => {
      responded = true;
      settle();
      res.on('error', (e) => relay(e, true));
      resolve({
        req,
        res,
        onTrouble: (listener) => {
          onLate = listener;
          if (late) listener(late.error, late.fromResponse);
        },
      });
    });
    // Stays attached for the request's life: a late socket error must never go unhandled.
    req.on('error', (e) => {
      if (responded) return relay(e, false);
      settle();
      reject(toFetchError(e, host, options.signal));
    });
    req.end();
  });
}

/**
 * The body as the caller sees it: bytes pass through unchanged, counted against `maxBytes` and the
 * announced length, with a timer for servers that stop sending. Closing it (end, error or destroy)
 * closes the connection.
 */
function guardBody(
  { req, res, onTrouble }: Exchange,
  host: string,
  contentLength: number | undefined,
  options: SafeFetchOptions,
): Readable {
  let received = 0;
  const fail = (error: Error) => body.destroy(error);
  const body = new Transform({
    transform(chunk: Buffer, _encoding, callback: TransformCallback) {
      received += chunk.length;
      stall.refresh();
      if (received > options.maxBytes) {
        callback(
          new FetchError('TooLarge', `the download exceeds the limit of ${options.maxBytes} bytes`, {
            context: { maxBytes: options.maxBytes },
          }),
        );
        return;
      }
      // Node's parser stops at Content-Length already; this guards that assumption.
      if (contentLength !== undefined && received > contentLength) {
        callback(lyingLength(contentLength));
        return;
      }
      callback(null, chunk);
    },
    flush(callback: TransformCallback) {
      clearTimeout(stall);
      if (contentLength !== undefined && received < contentLength) {
        callback(truncated(received, contentLength));
        return;
      }
      callback();
    },
  });

  const stall = setTimeout(function onStall() {
    // Waiting on our own consumer (backpressure) is not the server stalling.
    if (res.isPaused() || body.writableNeedDrain || body.readableLength >= body.readableHighWaterMark) {
      stall.refresh();
      return;
    }
    fail(
      new FetchError('Stalled', `${host} sent nothing for ${options.noProgressTimeoutMs} ms`, {
        retryable: true,
        context: { received, noProgressTimeoutMs: options.noProgressTimeoutMs },
      }),
    );
  }, options.noProgressTimeoutMs);

  onTrouble((error, fromResponse) => {
    // Bytes after the announced end make Node's parser fail the request: the length was a lie.
    if (isParseError(error)) fail(lyingLength(contentLength, error));
    // The connection dropping before the end Node knows of (Content-Length or the last chunk).
    else if (fromResponse && !res.complete) fail(truncated(received, contentLength, error));
    // Anything else once the whole body is in is of no consequence to it.
    else if (!res.complete) fail(toFetchError(error, host));
  });
  const onAbort = () => fail(options.signal?.reason ?? new Error('aborted'));
  options.signal?.addEventListener('abort', onAbort, { once: true });
  body.once('close', () => {
    clearTimeout(stall);
    options.signal?.removeEventListener('abort', onAbort);
    res.unpipe(body);
    req.destroy();
  });
  res.pipe(body);
  return body;
}

function truncated(received: number, contentLength: number | undefined, cause?: unknown): FetchError {
  const expected = contentLength === undefined ? '' : ` of ${contentLength}`;
  return new FetchError('Truncated', `the connection ended after ${received}${expected} bytes`, {
    retryable: true,
    context: { received, ...(contentLength === undefined ? {} : { contentLength }) },
    ...(cause === undefined ? {} : { cause }),
  });
}

function lyingLength(contentLength: number | undefined, cause?: unknown): FetchError {
  return new FetchError(
    'TooLarge',
    `the server sent more than its Content-Length of ${contentLength} bytes`,
    {
      context: { contentLength, reason: 'ContentLengthExceeded' },
      ...(cause === undefined ? {} : { cause }),
    },
  );
}

function isParseError(e: unknown): boolean {
  const code = (e as NodeJS.ErrnoException).code;
  return typeof code === 'string' && code.startsWith('HPE_');
}

const TLS_ERRORS = /CERT|SELF_SIGNED|UNABLE_TO_VERIFY|ERR_TLS|ERR_SSL/;

function toFetchError(e: unknown, host: string, signal?: AbortSignal): Error {
  if (e instanceof FetchError) return e;
  if (signal?.aborted) return signal.reason instanceof Error ? signal.reason : new Error('aborted');
  const code = (e as NodeJS.ErrnoException).code ?? '';
  const detail = e instanceof Error ? e.message : String(e);
  if (TLS_ERRORS.test(code)) {
    return new FetchError('Network', `TLS with ${host} failed: ${detail}`, {
      context: { host, tls: code },
      cause: e,
    });
  }
  if (code.startsWith('HPE_')) {
    return new FetchError('Network', `${host} sent a malformed HTTP response (${code})`, {
      context: { host },
      cause: e,
    });
  }
  return new FetchError(
    'Network',
    `${host}: ${detail}${code && !detail.includes(code) ? ` (${code})` : ''}`,
    {
      retryable: true,
      context: { host, ...(code ? { errno: code } : {}) },
      cause: e,
    },
  );
}

function discard(req: ClientRequest, res: IncomingMessage): void {
  res.on('error', () => {});
  res.destroy();
  req.destroy();
}

function parseContentLength(value: string | undefined): number | undefined {
  if (value === undefined || !/^\d{1,16}$/.test(value.trim())) return undefined;
  return Number(value.trim());
}

function flattenHeaders(res: IncomingMessage): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(res.headers)) {
    if (value !== undefined) out[name] = Array.isArray(value) ? value.join(', ') : value;
  }
  return out;
}

/** A URL fit for messages: no query string (it may carry signed-URL secrets). */
function redact(url: URL): string {
  return `${url.protocol}//${url.host}${url.pathname}`;
}
