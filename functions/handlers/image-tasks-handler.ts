/**
 * The image workflows' task function: one Lambda serving every step of template-ingest and
 * template-copy, chosen by `task`. Inputs are validated; errors leave with a stable name.
 */
import { hostTasks } from '../../statemachines/definitions.js';
import { templateCopy } from '../../statemachines/flows/template-copy.js';
import { templateIngest } from '../../statemachines/flows/template-ingest.js';
import type { Strata } from '../core/strata.js';
import { bindTasks, createTaskHandler } from './task-handler.js';

export const imageTasks = bindTasks(
  { ...templateIngest.steps, ...templateCopy.steps },
  { ...templateIngest.results, ...templateCopy.results },
  {
    ingestFromUrl: (s, i) => s.images.ingest.ingestFromUrl(i),
    verifyUpload: (s, i) => s.images.ingest.verifyUpload(i),
    finishIngest: (s, i) => s.images.ingest.finishIngest(i),
    failIngest: (s, i) => s.images.ingest.failIngest(i),
    copyStep: (s, i) => s.images.copying.copyStep(i),
    finishCopy: (s, i) => s.images.copying.finishCopy(i),
    failCopy: (s, i) => s.images.copying.failCopy(i),
  },
);

/** The task names this function serves (checked against the flows in tests). */
export const imageTaskNames: readonly string[] = Object.keys(imageTasks);

export function createImageTasksHandler(getStrata: () => Promise<Strata> | Strata) {
  return createTaskHandler(imageTasks, getStrata, hostTasks('image'));
}
