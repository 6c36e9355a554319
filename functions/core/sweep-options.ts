/** What an orphan sweep is asked to do (POST /sweeps, the orphan-sweep flow's input). */
import { z } from 'zod';

/** What a sweep is asked to do (the API body, the flow input). */
export const SweepOptionsSchema = z
  .object({
    dryRun: z.boolean().optional(),
    /** Only these stores (default: every store that is Up or Disabled). */
    storeIds: z.array(z.string().min(1).max(128)).max(100).optional(),
    /**
     * The windows, in seconds (defaults: {@link SWEEP_DEFAULTS}). Anything shorter than the longest
     * write in flight races that writer; the minimum of 1 s exists for tests.
     */
    objectGraceSeconds: z.number().int().min(1).optional(),
    uploadGraceSeconds: z.number().int().min(1).optional(),
    chunkGraceSeconds: z.number().int().min(1).optional(),
  })
  .strict();
export type SweepOptions = z.infer<typeof SweepOptionsSchema>;
