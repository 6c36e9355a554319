/**
 * Optional driver capability: lazy restore of a backup (docs/backup-format.md, "Lazy restore").
 * The new volume is usable at once, backed by a host-side export that fetches each chunk on its
 * first read, and becomes an ordinary independent image once every chunk has arrived.
 */
import type { DataStoreDriver, ObjectOptions } from './types.js';

/** Options of {@link LazyRestoreCapableDriver.lazyRestoreStart}. */
export interface LazyRestoreStartOptions extends ObjectOptions {
  virtualSizeBytes: number;
  chunkSizeBytes: number;
  /** Presigned GET of a JSON array with one entry per chunk index: `{ index, sha256, url }` or null (zeros). */
  chunksUrl: string;
  count: number;
}

/** Options of {@link LazyRestoreCapableDriver.lazyRestoreRenew}. */
export interface LazyRestoreRenewOptions extends ObjectOptions {
  /** A fresh list, as for the start: the same chunks in the same places, new presigned URLs. */
  chunksUrl: string;
  count: number;
  /** Which renewal this is (1, 2, …): a repeat of the same one is the same host call. */
  renewal: number;
}

/** Where a lazy restore stands. */
export interface LazyRestoreProgress {
  path: string;
  /** The host serving the export: every later call for this volume must go to it. */
  hostId: string;
  state: 'hydrating' | 'hydrated' | 'finished';
  chunksTotal: number;
  chunksHydrated: number;
}

/** A driver that can restore a backup lazily. Every call is idempotent. */
export interface LazyRestoreCapableDriver {
  /** Creates the volume backed by the export and starts hydration; usable when it resolves. */
  lazyRestoreStart(options: LazyRestoreStartOptions): Promise<LazyRestoreProgress>;
  /**
   * Hands the running export fresh URLs for the chunks it has not fetched yet: presigned URLs
   * expire, and hydrating a large disk can outlast them. Refused when the list names other chunks.
   */
  lazyRestoreRenew(options: LazyRestoreRenewOptions): Promise<LazyRestoreProgress>;
  /** Resolves once every chunk has arrived (one long host command; progress goes to the job). */
  lazyRestoreWait(options: ObjectOptions): Promise<LazyRestoreProgress>;
  /** Makes the hydrated volume independent of the export and removes the restore's state. */
  lazyRestoreFinish(options: ObjectOptions): Promise<{ path: string; sizeBytes: number }>;
  /** Stops the export and removes the unfinished volume and the restore's state. */
  lazyRestoreAbort(options: ObjectOptions): Promise<{ removedVolume: boolean }>;
}

/** Narrows a driver to one that restores backups lazily. */
export function isLazyRestoreCapable(
  driver: DataStoreDriver,
): driver is DataStoreDriver & LazyRestoreCapableDriver {
  const d = driver as Partial<LazyRestoreCapableDriver>;
  return (
    typeof d.lazyRestoreStart === 'function' &&
    typeof d.lazyRestoreRenew === 'function' &&
    typeof d.lazyRestoreWait === 'function' &&
    typeof d.lazyRestoreFinish === 'function' &&
    typeof d.lazyRestoreAbort === 'function'
  );
}
