/**
 * Runs `work` over `items` with at most `concurrency` calls in flight; the first failure stops new
 * calls and is thrown once the calls in flight have settled.
 *
 * @example
 * await forEachLimit(hashes, 16, (hash) => index.pin(store, hash));
 */
export async function forEachLimit<T>(
  items: readonly T[],
  concurrency: number,
  work: (item: T, index: number) => Promise<void>,
): Promise<void> {
  let next = 0;
  let failure: { error: unknown } | undefined;
  const worker = async (): Promise<void> => {
    while (!failure && next < items.length) {
      const i = next++;
      try {
        await work(items[i] as T, i);
      } catch (error) {
        failure ??= { error };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(concurrency, items.length)) }, worker));
  if (failure) throw failure.error;
}
