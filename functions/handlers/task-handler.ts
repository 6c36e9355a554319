/**
 * One task function serves every step of its workflows: the ASL names the step in `task` and passes
 * its `input`, which the step validates. Errors leave with a stable name for Retry and Catch.
 */
import middy from '@middy/core';
import { z } from 'zod';
import type { Strata } from '../core/strata.js';
import { toWorkflowError } from './workflow-errors.js';

export type TaskTable = Record<string, (strata: Strata, input: unknown) => Promise<unknown>>;

export function createTaskHandler(tasks: TaskTable, getStrata: () => Promise<Strata> | Strata) {
  const names = Object.keys(tasks) as [string, ...string[]];
  const event = z.object({ task: z.enum(names), input: z.unknown() });
  const base = async (raw: unknown): Promise<unknown> => {
    const { task, input } = event.parse(raw);
    const out = await tasks[task]!(await getStrata(), input);
    return out ?? {};
  };
  return middy(base).use({
    // Leaving request.response unset makes middy rethrow request.error, now carrying a stable name.
    onError: (request) => {
      request.error = toWorkflowError(request.error);
    },
  });
}
