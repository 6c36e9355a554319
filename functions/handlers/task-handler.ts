/**
 * One task function serves every step of its workflows: the ASL names the step in `task` and passes
 * its `input`, which the step validates. Errors leave with a stable name for Retry and Catch.
 *
 * A host step (declared `host: true` in its flow module) runs inside a {@link StepScope}: when a
 * host command it waits for outlives the run's wait budget, the run suspends and the answer is
 * `{ waiting: { seconds, … } }`, on which the flow's loop waits and runs the step again. Before it
 * answers, the leases the job holds on the step's entities are renewed (the heartbeat). Every step
 * of a job first renews the job's own lease: a job whose lease runs out has a dead flow.
 */
import middy from '@middy/core';
import { z } from 'zod';
import type { StepContracts } from '../../statemachines/flow.js';
import { runInStep, StepScope } from '../core/step-scope.js';
import type { Strata } from '../core/strata.js';
import { toWorkflowError } from './workflow-errors.js';

export type TaskTable = Record<string, (strata: Strata, input: unknown) => Promise<unknown>>;

/**
 * What each step of `S` runs, given its input as its contract types it; a step with a result
 * contract in `R` must answer what that contract admits.
 */
export type TaskBindings<S extends StepContracts, R extends StepContracts> = {
  [K in keyof S]: (
    strata: Strata,
    input: z.infer<S[K]>,
  ) => Promise<K extends keyof R ? z.input<R[K]> : unknown>;
};

/** A step answered what its result contract does not admit: a defect, never retried as transient. */
export class StepContractError extends Error {
  override readonly name = 'StepContractError';
}

/**
 * The task table of a function: every step contract bound to what it runs. Each input is validated
 * by its contract (the flow module's `steps`) before the step sees it, and each answer a state reads
 * by its result contract (`results`) before the state machine sees it. The answer goes on as the
 * step made it (the contract checks, it does not strip).
 */
export function bindTasks<S extends StepContracts, R extends StepContracts>(
  steps: S,
  results: R,
  bindings: TaskBindings<S, R>,
): TaskTable {
  return Object.fromEntries(
    Object.entries(steps).map(([name, schema]) => {
      const run = bindings[name as keyof S] as (strata: Strata, input: unknown) => Promise<unknown>;
      const result = results[name];
      return [
        name,
        async (strata: Strata, input: unknown) => {
          const answer = await run(strata, schema.parse(input));
          const checked = result?.safeParse(answer);
          if (checked && !checked.success) {
            throw new StepContractError(
              `step ${name} answered outside its contract: ${checked.error.message}`,
            );
          }
          return answer;
        },
      ];
    }),
  );
}

/** What a suspended host step answers; the flow's loop waits `seconds`, then runs it again. */
export interface WaitingAnswer {
  waiting: { seconds: number; hostId: string; commandId: string; operation: string };
}

const stepIdentity = z.object({ jobId: z.string().optional(), hostId: z.string().optional() }).loose();

export function createTaskHandler(
  tasks: TaskTable,
  getStrata: () => Promise<Strata> | Strata,
  hostTasks: ReadonlySet<string> = new Set(),
) {
  const names = Object.keys(tasks) as [string, ...string[]];
  const event = z.object({ task: z.enum(names), input: z.unknown() });
  const base = async (raw: unknown): Promise<unknown> => {
    const { task, input } = event.parse(raw);
    const strata = await getStrata();
    const who = stepIdentity.safeParse(input);
    if (who.success && who.data.jobId) await strata.jobs.renew(who.data.jobId);
    if (!hostTasks.has(task)) return (await tasks[task]!(strata, input)) ?? {};
    // Per-host branches of one flow run the same task: each keeps its own calls.
    const stepKey = who.success && who.data.hostId ? `${task}@${who.data.hostId}` : task;
    const scope = new StepScope(stepKey, strata.hostWaitBudgetMs);
    const run = runInStep(scope, () => tasks[task]!(strata, input));
    const outcome = await Promise.race([
      run.then((value) => ({ value })),
      scope.suspended.then((suspension) => ({ suspension })),
    ]);
    if ('value' in outcome) return outcome.value ?? {};
    if (who.success && who.data.jobId) await strata.heartbeat(who.data.jobId, input);
    const answer: WaitingAnswer = { waiting: outcome.suspension };
    return answer;
  };
  return middy(base).use({
    // Leaving request.response unset makes middy rethrow request.error, now carrying a stable name.
    onError: (request) => {
      request.error = toWorkflowError(request.error);
    },
  });
}
