/**
 * The image workflows' task function: one Lambda serving every step of template-ingest and
 * template-copy, chosen by `task`. Inputs are validated; errors leave with a stable name.
 */
import { z } from 'zod';
import { hostTasks } from '../../statemachines/definitions.js';
import type { Strata } from '../core/strata.js';
import { createTaskHandler, type TaskTable } from './task-handler.js';

const id = z.string().min(1).max(128);
const sfnError = z.object({ Error: z.string().optional(), Cause: z.string().optional() });
const step = z.object({ jobId: id, templateId: id, storeId: id });
const copyStep = step.extend({ sourceStoreId: id });
const result = z.object({
  path: z.string(),
  sizeBytes: z.number().nonnegative(),
  checksum: z.string(),
  virtualSizeBytes: z.number().nonnegative(),
});

export const imageTasks = {
  ingestFromUrl: (s: Strata, i: unknown) => s.images.ingestFromUrl(step.parse(i)),
  verifyUpload: (s: Strata, i: unknown) => s.images.verifyUpload(step.parse(i)),
  finishIngest: (s: Strata, i: unknown) => s.images.finishIngest(step.extend({ result }).parse(i)),
  failIngest: (s: Strata, i: unknown) => s.images.failIngest(step.extend({ error: sfnError }).parse(i)),
  copyStep: (s: Strata, i: unknown) => s.images.copyStep(copyStep.parse(i)),
  finishCopy: (s: Strata, i: unknown) =>
    s.images.finishCopy(copyStep.extend({ result: result.extend({ via: z.string() }) }).parse(i)),
  failCopy: (s: Strata, i: unknown) => s.images.failCopy(copyStep.extend({ error: sfnError }).parse(i)),
} satisfies TaskTable;

/** The task names this function serves (checked against the flows in tests). */
export const imageTaskNames: readonly string[] = Object.keys(imageTasks);

export function createImageTasksHandler(getStrata: () => Promise<Strata> | Strata) {
  return createTaskHandler(imageTasks, getStrata, hostTasks('image'));
}
