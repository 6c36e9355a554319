/**
 * Crashes on demand, for the crash matrix (test/crash): the embedded stack kills a function's
 * container, a host command or every running execution at one chosen point, once, the way a real
 * machine dies — nothing of Strata's code is told or asked. The points are found by recording a clean
 * run first:
 *
 * - every invocation of a function, named by its step (a task function's `task`, the API's
 *   `METHOD /path` with ids as `{id}`, otherwise the function's name) and counted per step; the
 *   API's reads (GET, HEAD) are someone watching, not part of a flow, and are left out;
 * - every AWS request a container makes while it serves one, split into writes (anything that
 *   changes something) and reads; presigned requests are the hosts', not the container's;
 * - every host command sent through the run document, counted in the order they start.
 *
 * Each invocation gets a kill point before each of its writes (the write is not made; "after write
 * k" is the same world as "before write k+1", reads change nothing), one as it answers (every write
 * made, the answer lost), and one where the answer is delivered and then every execution is lost.
 * Each host command gets one as it starts and one after it ran to the end with its result lost.
 *
 * Containers are told apart by their credentials: each container of a function signs as its own
 * session of the function's role, so a request is always attributed to the invocation it belongs to.
 */
import type { Principal } from './aws/principals.js';

/** What the stack can do to the world when a point is reached. */
export interface FaultActions {
  /** SIGKILLs the container that signs as `session`; its invocation fails as a crashed runtime does. */
  killContainer(session: string): Promise<void>;
  /** Loses every running execution (aborted, no Catch runs), as if the service forgot them. */
  loseExecutions(): Promise<void>;
}

/** An invocation as the recorder names it. */
export interface InvocationRef {
  /** The function's logical name (the part of its name before the CDK suffix). */
  fn: string;
  step: string;
  /** 1 for the first invocation of this step in the run, 2 for the next, ... */
  ordinal: number;
}

export type KillPoint =
  /** Killed as the invocation makes its `write`-th write (1-based): that write is not made. */
  | (InvocationRef & { at: 'before-write'; write: number; operation: string })
  /** Killed after it finished its work, before its answer reaches the caller. */
  | (InvocationRef & { at: 'answer-lost' })
  /** Its answer is delivered; then every running execution is lost. */
  | (InvocationRef & { at: 'execution-lost' })
  /** The `command`-th host command of the run (1-based) is killed as it starts. */
  | { at: 'host-killed-at-start'; command: number; operation: string }
  /** It runs to the end (its result in the host's request journal); the agent dies before reporting. */
  | { at: 'host-result-lost'; command: number; operation: string };

export type TraceEvent =
  | (InvocationRef & { kind: 'invocation'; writes: { service: string; operation: string }[] })
  | { kind: 'host-command'; command: number; host: string; operation: string };

/** What a host command does under the armed point. */
export type HostFault = 'kill-at-start' | 'lose-result' | undefined;

interface Live extends InvocationRef {
  session: string;
  writes: { service: string; operation: string }[];
  killed: boolean;
}

const DESCRIBE = 'the fault controller';

/** A short, readable name for a function: `Strata-StoreTasksFunction96822E85-XYZ` → `StoreTasks`. */
export function functionLabel(name: string): string {
  const stem = name.replace(/^[^-]+-/, '').replace(/-[A-Za-z0-9]+$/, '');
  return stem.replace(/Function.*$/, '').replace(/[0-9A-F]{8}$/, '') || name;
}

/** A request changes something unless its operation only reads. */
export function isWrite(operation: string): boolean {
  return !/^(Get|Describe|List|Query|Scan|BatchGet|TransactGet|Head)/.test(operation);
}

export class LocalFaults {
  private actions?: FaultActions;
  private readonly live = new Map<string, Live>();
  private readonly counts = new Map<string, number>();
  private hostCommands = 0;
  private events: TraceEvent[] = [];
  private armed?: KillPoint;
  private firedAt?: KillPoint;

  /** Set by the stack once its functions and executions exist. */
  bind(actions: FaultActions): void {
    this.actions = actions;
  }

  /** Starts a new run: counters and the trace begin again; `point` (if any) fires once in it. */
  reset(point?: KillPoint): void {
    this.counts.clear();
    this.hostCommands = 0;
    this.events = [];
    this.armed = point;
    this.firedAt = undefined;
  }

  /** The point that fired in this run, if it was reached. */
  get fired(): KillPoint | undefined {
    return this.firedAt;
  }

  /** What this run did, in order (invocations are listed as they began). */
  trace(): readonly TraceEvent[] {
    return this.events;
  }

  /** Every kill point of a recorded run, in the order the run reached them. */
  static pointsOf(trace: readonly TraceEvent[]): KillPoint[] {
    const points: KillPoint[] = [];
    // A step run again with the same writes (a poll turning, a retry) takes the same path: its
    // points are the earlier run's, and how many times a poll turns varies from run to run.
    const shapes = new Set<string>();
    for (const event of trace) {
      if (event.kind === 'invocation') {
        const shape = `${event.fn}\u0000${event.step}\u0000${event.writes.map((w) => w.operation).join(',')}`;
        if (shapes.has(shape)) continue;
        shapes.add(shape);
      }
      if (event.kind === 'host-command') {
        const { command, operation } = event;
        points.push({ at: 'host-killed-at-start', command, operation });
        points.push({ at: 'host-result-lost', command, operation });
        continue;
      }
      const ref = { fn: event.fn, step: event.step, ordinal: event.ordinal };
      event.writes.forEach((w, i) => {
        points.push({ ...ref, at: 'before-write', write: i + 1, operation: w.operation });
      });
      points.push({ ...ref, at: 'answer-lost' });
      points.push({ ...ref, at: 'execution-lost' });
    }
    return points;
  }

  /** A container begins serving `event`. */
  beginInvocation(functionName: string, session: string, event: unknown): void {
    // Reads of the API (someone watching a job) are not part of any flow.
    const method = (event as { httpMethod?: unknown } | null)?.httpMethod;
    if (method === 'GET' || method === 'HEAD') return;
    const fn = functionLabel(functionName);
    const step = stepOf(fn, event);
    const key = `${fn}\u0000${step}`;
    const ordinal = (this.counts.get(key) ?? 0) + 1;
    this.counts.set(key, ordinal);
    const live: Live = { fn, step, ordinal, session, writes: [], killed: false };
    this.live.set(session, live);
    this.events.push({ kind: 'invocation', fn, step, ordinal, writes: live.writes });
  }

  /**
   * A container's invocation has its answer. Resolves `true` when the answer must be lost (the
   * container is killed; the stack fails the invocation as a crashed runtime).
   */
  async endInvocation(session: string): Promise<boolean> {
    const live = this.live.get(session);
    this.live.delete(session);
    if (!live || live.killed) return false;
    if (this.matches(live, 'answer-lost')) {
      await this.require().killContainer(session);
      return true;
    }
    if (this.matches(live, 'execution-lost')) await this.require().loseExecutions();
    return false;
  }

  /**
   * An AWS request, after its signature and IAM checks, before it is served. Resolves `true` when
   * the caller was killed at this point: the request must not be served (drop the connection).
   */
  async onRequest(
    principal: Principal,
    service: string,
    operation: string,
    presigned: boolean,
  ): Promise<boolean> {
    if (presigned) return false;
    const live = this.live.get(principal.sessionName);
    if (!live || live.killed || !isWrite(operation)) return false;
    live.writes.push({ service, operation });
    const armed = this.armed;
    if (
      armed?.at === 'before-write' &&
      this.sameInvocation(armed, live) &&
      armed.write === live.writes.length
    ) {
      this.fire(armed);
      live.killed = true;
      await this.require().killContainer(live.session);
      return true;
    }
    return false;
  }

  /** A host command of the run document starts on `host`. */
  onHostCommand(host: string, operation: string): HostFault {
    const command = ++this.hostCommands;
    this.events.push({ kind: 'host-command', command, host, operation });
    const armed = this.armed;
    if (armed?.at === 'host-killed-at-start' && armed.command === command) {
      this.fire(armed);
      return 'kill-at-start';
    }
    if (armed?.at === 'host-result-lost' && armed.command === command) {
      this.fire(armed);
      return 'lose-result';
    }
    return undefined;
  }

  /**
   * Invocations a container is serving now. A lost execution leaves its running step behind (as
   * StopExecution does on AWS), and that step still writes: nothing counts as at rest until it ends.
   */
  inFlight(): number {
    return this.live.size;
  }

  /** A container went away (killed, crashed, stopped): it serves nothing any more. */
  forget(session: string): void {
    this.live.delete(session);
  }

  private matches(live: Live, at: 'answer-lost' | 'execution-lost'): boolean {
    const armed = this.armed;
    if (armed?.at !== at || !this.sameInvocation(armed, live)) return false;
    this.fire(armed);
    return true;
  }

  private sameInvocation(point: InvocationRef, live: Live): boolean {
    return point.fn === live.fn && point.step === live.step && point.ordinal === live.ordinal;
  }

  private fire(point: KillPoint): void {
    this.firedAt = point;
    this.armed = undefined;
  }

  private require(): FaultActions {
    if (!this.actions) throw new Error(`${DESCRIBE} is not bound to a stack`);
    return this.actions;
  }
}

/** The step an event is: a task function's task, an API route, or the function itself. */
function stepOf(fn: string, event: unknown): string {
  const e = (event ?? {}) as { task?: unknown; httpMethod?: unknown; path?: unknown };
  if (typeof e.task === 'string') return e.task;
  if (typeof e.httpMethod === 'string' && typeof e.path === 'string') {
    // Ids vary from run to run: `/volumes/vol-1/resize` is the step `POST /volumes/{id}/resize`.
    const segments = e.path.split('/').filter(Boolean);
    return `${e.httpMethod} /${segments.map((s, i) => (i % 2 ? '{id}' : s)).join('/')}`;
  }
  return fn;
}

/** One line for a kill point, as the matrix prints it. */
export function describePoint(point: KillPoint): string {
  switch (point.at) {
    case 'before-write':
      return `${point.fn}:${point.step}#${point.ordinal} killed before write ${point.write} (${point.operation})`;
    case 'answer-lost':
      return `${point.fn}:${point.step}#${point.ordinal} killed before it answered`;
    case 'execution-lost':
      return `${point.fn}:${point.step}#${point.ordinal} answered, then the execution was lost`;
    case 'host-killed-at-start':
      return `host command ${point.command} (${point.operation}) killed as it started`;
    case 'host-result-lost':
      return `host command ${point.command} (${point.operation}) ran, its result lost`;
  }
}
