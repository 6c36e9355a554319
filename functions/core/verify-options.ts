/**
 * What a backup verify job is asked to do (POST /stores/{id}/verify, the scheduled run, the
 * backup-verify flow's input), and the running tally its pages hand on to each other. Kept apart
 * from the service so that flow definitions import no service code.
 */
import { z } from 'zod';

/** The options of one verify job. */
export const VerifyOptionsSchema = z
  .object({
    /**
     * The fraction of the store's stored chunks to read, in (0, 1]; default 1 (all). Which chunks is
     * decided per job from the job id and the chunk hash, so two jobs read different samples and a
     * retried page the same one.
     */
    sample: z.number().gt(0).max(1).optional(),
    /** Read at most this many chunks (after sampling); default: no limit. */
    maxChunks: z.number().int().min(1).max(100_000_000).optional(),
  })
  .strict();
export type VerifyOptions = z.infer<typeof VerifyOptionsSchema>;

/** How many damaged chunks a job names, in its flow state and on its job (the counts are exact). */
export const VERIFY_FINDINGS_KEPT = 100;

/** A chunk found damaged: its hash, its key in the store, why, and the backups that name it. */
export const VerifyFindingSchema = z.object({
  hash: z.string().regex(/^[0-9a-f]{64}$/),
  path: z.string().max(256),
  reason: z.enum(['corrupt', 'missing']),
  /** Snapshots whose backups hold the chunk (the chunk index's holders that are snapshots). */
  snapshots: z.array(z.string().max(128)).max(1000),
});
export type VerifyFinding = z.infer<typeof VerifyFindingSchema>;

/** The counts so far, handed from page to page through the flow. */
export const VerifyTallySchema = z.object({
  /** Index entries looked at (stored or not, sampled or not). */
  seen: z.number().int().nonnegative(),
  /** Chunks read and hashed. */
  checked: z.number().int().nonnegative(),
  ok: z.number().int().nonnegative(),
  corrupt: z.number().int().nonnegative(),
  missing: z.number().int().nonnegative(),
  /** Found damaged but changed before they could be marked (a backup stored them again): not counted as damaged. */
  changed: z.number().int().nonnegative(),
  pages: z.number().int().nonnegative(),
  findings: z.array(VerifyFindingSchema).max(VERIFY_FINDINGS_KEPT),
});
export type VerifyTally = z.infer<typeof VerifyTallySchema>;

/** Where a verify job stands between two pages. */
export const VerifyPageSchema = z.object({
  done: z.boolean(),
  cursor: z.string().max(4096).optional(),
  tally: VerifyTallySchema.optional(),
});
export type VerifyPage = z.infer<typeof VerifyPageSchema>;

export function emptyTally(): VerifyTally {
  return { seen: 0, checked: 0, ok: 0, corrupt: 0, missing: 0, changed: 0, pages: 0, findings: [] };
}
