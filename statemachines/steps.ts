/**
 * The pieces step contracts are made of. Each flow module declares, next to its states, the input
 * schema of every task it runs (`steps`); the task functions validate a step's input with that
 * schema before the step runs, and their task tables are typed by it (functions/handlers/*-tasks-handler.ts).
 */
import { z } from 'zod';

export const id = z.string().min(1).max(128);

/** What Step Functions hands a Catch target at `$.error`. */
export const sfnError = z.object({ Error: z.string().optional(), Cause: z.string().optional() });

/** A per-host branch's answer. */
export const hostResult = z.object({
  hostId: id,
  ok: z.boolean(),
  error: z.object({ code: z.string(), message: z.string() }).optional(),
});

export const volumeStep = z.object({ jobId: id, volumeId: id });
export const snapshotStep = z.object({ jobId: id, snapshotId: id });
export const storeStep = z.object({ jobId: id, storeId: id });
export const hostStep = z.object({ jobId: id, hostId: id });
export const templateStep = z.object({ jobId: id, templateId: id, storeId: id });

/** A compensation step's input: the step's own input and the error the flow caught. */
export function failing<S extends z.ZodRawShape>(step: z.ZodObject<S>) {
  return step.extend({ error: sfnError });
}

/** What an image step that wrote a file answers (ingest, copy). */
export const imageResult = z.object({
  path: z.string(),
  sizeBytes: z.number().nonnegative(),
  checksum: z.string(),
  virtualSizeBytes: z.number().nonnegative(),
});
