/**
 * The scheduled reconciler: recovers entities whose lease expired in a transitional state, and (on
 * their own, slower schedules) starts the orphan sweep and the backup verify jobs. A
 * recovery runs the flow's own compensation — the Compensate step of its definition, with the input
 * the flow was started with — in a step scope, so a compensation with host work suspends like any
 * host step and is picked up again on the next pass instead of waiting here.
 */
import middy from '@middy/core';
import { type TaskStep, taskSteps } from '../../statemachines/flow.js';
import { flows } from '../../statemachines/flows/index.js';
import type { FlowName } from '../core/ports.js';
import type { Compensate } from '../core/services/reconciler.js';
import { runInStep, StepScope } from '../core/step-scope.js';
import type { Strata } from '../core/strata.js';
import { VerifyOptionsSchema } from '../core/verify-options.js';
import { imageTasks } from './image-tasks-handler.js';
import { storeTasks } from './store-tasks-handler.js';
import type { TaskTable } from './task-handler.js';

const TABLES: Record<string, TaskTable> = { store: storeTasks, image: imageTasks };

/** Reads `$.a.b` from `doc` (the flow's start input plus jobId and error). */
function readPath(doc: Record<string, unknown>, jsonPath: string): unknown {
  if (jsonPath === '$') return doc;
  let value: unknown = doc;
  for (const part of jsonPath.replace(/^\$\./, '').split('.')) {
    if (typeof value !== 'object' || value === null) return undefined;
    value = (value as Record<string, unknown>)[part];
  }
  return value;
}

/** The Compensate step's input, built from what the flow was started with, as its ASL builds it. */
function compensationInput(step: TaskStep, doc: Record<string, unknown>): Record<string, unknown> {
  if (step.input === '$') return doc;
  const out: Record<string, unknown> = {};
  for (const [field, value] of Object.entries(step.input)) {
    const v = typeof value === 'string' && value.startsWith('$') ? readPath(doc, value) : value;
    if (v !== undefined) out[field] = v;
  }
  return out;
}

export function compensatorFor(strata: Strata): Compensate {
  return async (flowName, doc) => {
    const flow = flows[flowName as FlowName];
    const step = flow && taskSteps(flow).find((s) => s.state === 'Compensate')?.step;
    const run = step ? TABLES[flow.fn]?.[step.task] : undefined;
    if (!flow || !step || !run) return 'none';
    const scope = new StepScope(`reconcile:${step.task}`, strata.hostWaitBudgetMs);
    const done = runInStep(scope, () => run(strata, compensationInput(step, doc)));
    const outcome = await Promise.race([
      done.then(() => 'done' as const),
      scope.suspended.then(() => 'waiting' as const),
    ]);
    return outcome;
  };
}

export function createReconcilerHandler(getStrata: () => Promise<Strata> | Strata) {
  return middy(async (event: { sweep?: boolean; verify?: unknown } | undefined) => {
    const strata = await getStrata();
    // The verify schedule sends { "verify": { "sample": … } }: one backup-verify job per image store.
    if (event?.verify !== undefined) {
      const options = VerifyOptionsSchema.parse(event.verify);
      const verify = await strata.verify.startScheduled(options);
      strata.ports.logger.info('backup verify jobs started', verify);
      return { verify };
    }
    // The sweep's own schedule sends { "sweep": true }: start the orphan-sweep flow and return.
    if (event?.sweep === true) {
      const { job } = await strata.sweep.start({});
      strata.ports.logger.info('orphan sweep started', { jobId: job.id });
      return { sweepJobId: job.id };
    }
    const recovered = await strata.reconciler.recoverExpiredLeases(compensatorFor(strata));
    if (recovered.length) strata.ports.logger.warn('recovered expired leases', { recovered });
    if (recovered.deferred) strata.ports.logger.warn('recoveries deferred', { deferred: recovered.deferred });
    return { recovered: [...recovered], deferred: recovered.deferred ?? [] };
  });
}
