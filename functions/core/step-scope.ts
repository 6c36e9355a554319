/**
 * The scope of one run of a workflow step, carried through the async calls of that run
 * (AsyncLocalStorage), so the host invoker deep inside a driver call knows which step it serves.
 *
 * A host step never waits on a host for longer than its wait budget (seconds). When a host command
 * it sent is still running after that, the step *suspends*: the invoker records the command on the
 * job (it did so when it sent it), the scope resolves its `suspended` promise, and the task handler
 * answers `{ waiting: { seconds } }` to the state machine, which waits and runs the step again (the
 * loop in statemachines/flow.ts). The suspended call itself is left pending for good: none of the
 * code after it runs in this invocation — no catch, no finally, no compensation — and the pending
 * chain is garbage once the handler has answered. The next run replays the step from its start:
 * everything a step does before and between host calls must be idempotent (it already had to be,
 * since Step Functions retries steps), and each host call finds the command it recorded under the
 * same key, so the host is asked once per request id and the replay goes on from where it stopped.
 *
 * This is the replay model of durable execution, not an exception used as control flow: a suspended
 * run ends with an answer, never with an error, and nothing can catch or swallow a suspension.
 */
import { AsyncLocalStorage } from 'node:async_hooks';

export interface Suspension {
  /** Seconds the state machine waits before running the step again. */
  seconds: number;
  hostId: string;
  commandId: string;
  operation: string;
}

export class StepScope {
  private readonly counters = new Map<string, number>();
  private suspension?: Suspension;
  private resolveSuspended!: (s: Suspension) => void;
  /** Resolves when the run suspends (never rejects; never resolves for a run that finishes). */
  readonly suspended: Promise<Suspension>;

  constructor(
    /** The step's key on the job: the task's name, plus the host for per-host branches. */
    readonly stepKey: string,
    /** How long one run may wait for a host command before suspending. */
    readonly waitBudgetMs: number,
  ) {
    this.suspended = new Promise((resolve) => {
      this.resolveSuspended = resolve;
    });
  }

  /**
   * The key of the next call of `operation` in this run: `<step>:<operation>:<n>`, n from 0, or
   * `<step>:<operation>:<name>` for a call that names itself (HostCall.callKey).
   */
  nextCallKey(operation: string, name?: string): string {
    if (name !== undefined) return `${this.stepKey}:${operation}:${name}`;
    const n = this.counters.get(operation) ?? 0;
    this.counters.set(operation, n + 1);
    return `${this.stepKey}:${operation}:${n}`;
  }

  get isSuspended(): boolean {
    return this.suspension !== undefined;
  }

  /**
   * Ends this run as waiting. Returns a promise that never settles, for the caller to return in
   * place of the host's answer. The first suspension of a run wins (parallel calls may both ask).
   */
  suspend<T>(s: Suspension): Promise<T> {
    if (!this.suspension) {
      this.suspension = s;
      this.resolveSuspended(s);
    }
    return new Promise<T>(() => undefined);
  }
}

const storage = new AsyncLocalStorage<StepScope>();

/** Runs `fn` as one run of a step. */
export function runInStep<T>(scope: StepScope, fn: () => Promise<T>): Promise<T> {
  return storage.run(scope, fn);
}

/** The step run the caller is part of, if any. */
export function currentStep(): StepScope | undefined {
  return storage.getStore();
}

/** What {@link stepOnce} needs of the repository. */
export interface StepMemoStore {
  get(key: { type: 'Job'; id: string }): Promise<{ stepMemos?: Record<string, unknown> } | undefined>;
  putMapEntry(
    key: { type: 'Job'; id: string },
    field: 'stepMemos',
    entry: string,
    value: unknown,
    condition: { field: 'state'; oneOf: readonly string[] },
  ): Promise<void>;
}

/**
 * A side effect a replayed step must not repeat, because it makes something new each time (a
 * multipart upload id): the first run makes it and records the value on the job under the step's
 * key; every later run of the step gets the recorded value. Keep values small (ids, paths), never
 * URLs or lists that grow with the data. Outside a step it simply runs `make`.
 */
export async function stepOnce<T>(
  repo: StepMemoStore,
  jobId: string,
  name: string,
  make: () => Promise<T>,
): Promise<T> {
  const scope = currentStep();
  if (!scope) return make();
  const key = `${scope.stepKey}:${name}`;
  const job = await repo.get({ type: 'Job', id: jobId });
  const recorded = job?.stepMemos?.[key];
  if (recorded !== undefined && recorded !== null) return recorded as T;
  const value = await make();
  await repo.putMapEntry({ type: 'Job', id: jobId }, 'stepMemos', key, value, {
    field: 'state',
    oneOf: ['pending', 'running'],
  });
  return value;
}

/** Forgets a {@link stepOnce} value (the thing it named was undone): the next run makes a new one. */
export async function forgetStepOnce(repo: StepMemoStore, jobId: string, name: string): Promise<void> {
  const scope = currentStep();
  if (!scope) return;
  await repo.putMapEntry({ type: 'Job', id: jobId }, 'stepMemos', `${scope.stepKey}:${name}`, null, {
    field: 'state',
    oneOf: ['pending', 'running'],
  });
}
