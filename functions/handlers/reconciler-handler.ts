/** The scheduled reconciler: recovers entities whose lease expired in a transitional state. */
import middy from '@middy/core';
import type { Strata } from '../core/strata.js';

export function createReconcilerHandler(getStrata: () => Promise<Strata> | Strata) {
  return middy(async () => {
    const strata = await getStrata();
    const recovered = await strata.reconciler.recoverExpiredLeases();
    if (recovered.length) strata.ports.logger.warn('recovered expired leases', { recovered });
    return { recovered };
  });
}
