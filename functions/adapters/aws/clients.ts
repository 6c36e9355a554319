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
