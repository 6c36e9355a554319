/**
 * DataMotionService: how an object gets from one store to another. As in CloudStack, the source
 * driver is asked first whether it can do the copy itself (an S3 server-side copy, a storage array's
 * clone), then the destination driver, and only then the registered strategies, best priority first.
 */
import type { ProviderRegistry } from '../../../drivers/sdk/registry.js';
import {
  type CopyEndpoint,
  type CopyOptions,
  type CreateResult,
  type DataMotionStrategy,
  isImageStoreDriver,
  StrategyPriority,
} from '../../../drivers/sdk/types.js';
import { UnprocessableError } from '../errors.js';

/** Which path a copy takes, for logs and job results. */
export interface MotionPlan {
  via: 'source-driver' | 'destination-driver' | 'strategy';
  name: string;
}

/**
 * Streams the object out of the source store and into the destination store. Works between any two
 * stores whose drivers can read and write streams; the bytes pass through the caller's process.
 */
export function streamCopyStrategy(registry: ProviderRegistry): DataMotionStrategy {
  return {
    name: 'stream-copy',
    canHandle(src, dst) {
      const s = registry.get(src.store.provider).driver;
      const d = registry.get(dst.store.provider).driver;
      return isImageStoreDriver(s) && isImageStoreDriver(d)
        ? StrategyPriority.DEFAULT
        : StrategyPriority.CANT_HANDLE;
    },
    async copy({ src, dst, ctx }) {
      const s = registry.get(src.store.provider).driver;
      const d = registry.get(dst.store.provider).driver;
      if (!isImageStoreDriver(s) || !isImageStoreDriver(d))
        throw new Error('stream-copy needs image store drivers');
      const { body, sizeBytes } = await s.readStream({ store: src.store, object: src.object, ctx });
      return d.writeStream({ store: dst.store, object: dst.object, body, contentLength: sizeBytes, ctx });
    },
  };
}

export class DataMotionService {
  constructor(
    private readonly registry: ProviderRegistry,
    private readonly strategies: DataMotionStrategy[],
  ) {}

  plan(
    src: CopyEndpoint,
    dst: CopyEndpoint,
  ): MotionPlan & { run: (o: CopyOptions) => Promise<CreateResult> } {
    const srcDriver = this.registry.get(src.store.provider).driver;
    if (srcDriver.canCopy(src, dst)) {
      return { via: 'source-driver', name: src.store.provider, run: (o) => srcDriver.copyAsync(o) };
    }
    const dstDriver = this.registry.get(dst.store.provider).driver;
    if (dstDriver.canCopy(src, dst)) {
      return { via: 'destination-driver', name: dst.store.provider, run: (o) => dstDriver.copyAsync(o) };
    }
    const ranked = this.strategies
      .map((strategy) => ({ strategy, priority: strategy.canHandle(src, dst) }))
      .filter((r) => r.priority > StrategyPriority.CANT_HANDLE)
      .sort((a, b) => b.priority - a.priority);
    const best = ranked[0];
    if (!best) {
      throw new UnprocessableError(
        `no way to copy from a ${src.store.provider} store to a ${dst.store.provider} store`,
        { field: 'storeId' },
      );
    }
    return { via: 'strategy', name: best.strategy.name, run: (o) => best.strategy.copy(o) };
  }

  async copy(options: CopyOptions): Promise<CreateResult & { plan: MotionPlan }> {
    const { run, via, name } = this.plan(options.src, options.dst);
    const result = await run(options);
    return { ...result, plan: { via, name } };
  }
}
