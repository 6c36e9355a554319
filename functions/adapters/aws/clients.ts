/**
 * Lazily built AWS SDK clients. Adapters accept a ready client (tests, custom middleware) or a client
 * config; otherwise they build one on first use, so importing an adapter never opens a connection pool
 * or reads credentials, and a warm Lambda container reuses the same client across invocations.
 */

/** Returns a getter that calls `build` once, on first use, and then keeps returning its result. */
export function lazy<T>(build: () => T): () => T {
  let value: T | undefined;
  let built = false;
  return () => {
    if (!built) {
      value = build();
      built = true;
    }
    return value as T;
  };
}

/** The `name` of an SDK service exception (or any error), for matching without `instanceof`. */
export function errorName(error: unknown): string | undefined {
  if (typeof error === 'object' && error !== null && 'name' in error) {
    const { name } = error as { name: unknown };
    return typeof name === 'string' ? name : undefined;
  }
  return undefined;
}

/** Error names AWS services use for throttling and passing trouble (SDK v3 marks most `$retryable`). */
const TRANSIENT_NAMES = new Set([
  'ThrottlingException',
  'Throttling',
  'ThrottledException',
  'TooManyRequestsException',
  'RequestLimitExceeded',
  'ProvisionedThroughputExceededException',
  'RequestThrottled',
  'RequestThrottledException',
  'SlowDown',
  'ServiceUnavailable',
  'ServiceUnavailableException',
  'InternalServerError',
  'InternalServerException',
  'InternalFailure',
  'InternalError',
  'TransactionInProgressException',
  'TimeoutError',
  'RequestTimeout',
  'RequestTimeoutException',
]);
/** Node's socket errors: the request may not have arrived; SDK calls here are idempotent or guarded. */
const TRANSIENT_CODES = new Set([
  'ECONNRESET',
  'ECONNREFUSED',
  'EPIPE',
  'ETIMEDOUT',
  'EAI_AGAIN',
  'ENOTFOUND',
]);

/**
 * Whether an SDK (or socket) error is passing trouble that a later retry may not meet: marked
 * `$retryable` by the SDK, a known throttling or server-side name, a 5xx, or a dropped connection.
 * The SDK has already retried it with its own backoff when it reaches us.
 */
export function isTransientAwsError(error: unknown): boolean {
  if (typeof error !== 'object' || error === null) return false;
  const e = error as {
    $retryable?: unknown;
    $metadata?: { httpStatusCode?: number };
    code?: unknown;
    name?: unknown;
  };
  if (e.$retryable) return true;
  if (typeof e.name === 'string' && TRANSIENT_NAMES.has(e.name)) return true;
  if (typeof e.code === 'string' && TRANSIENT_CODES.has(e.code)) return true;
  const status = e.$metadata?.httpStatusCode;
  return typeof status === 'number' && status >= 500;
}
