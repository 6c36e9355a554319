/** The UrlFetcher port on Node's HTTP client, under the SSRF rules of functions/core/url-policy.ts. */
import type { FetchedStream, UrlFetcher } from '../../core/ports.js';
import { checkUrlUpFront, type FetchAllowlist, parseAllowlist } from '../../core/url-policy.js';
import { openSafeStream } from './safe-fetch.js';

export interface SafeUrlFetcherOptions {
  /** STRATA_FETCH_ALLOWLIST: comma-separated host names and CIDR ranges. */
  allowlist?: string;
  maxBytes?: number;
  noProgressTimeoutMs?: number;
}

export class SafeUrlFetcher implements UrlFetcher {
  private readonly allowlist: FetchAllowlist;

  constructor(private readonly options: SafeUrlFetcherOptions = {}) {
    this.allowlist = parseAllowlist(options.allowlist);
  }

  checkUpFront(url: string): void {
    checkUrlUpFront(url, this.allowlist);
  }

  async open(url: string, options: { signal?: AbortSignal } = {}): Promise<FetchedStream> {
    const opened = await openSafeStream(url, {
      allowlist: this.allowlist,
      maxBytes: this.options.maxBytes ?? 2 * 2 ** 40,
      noProgressTimeoutMs: this.options.noProgressTimeoutMs ?? 60_000,
      ...(options.signal ? { signal: options.signal } : {}),
    });
    return { body: opened.body, contentLength: opened.contentLength, finalUrl: opened.finalUrl };
  }
}
