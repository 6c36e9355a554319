/**
 * The crash matrix's engine. For one scenario (a flow started by its API request), a clean run is
 * recorded first; every kill point it reached (infra/local/faults.ts) then becomes a case:
 *
 * 1. `prepare` makes what the request needs (outside any fault; once per stack for a scenario whose
 *    request only reads what it prepared, `reuse`), then the point is armed;
 * 2. the request is sent and the flow runs until it dies at the point, or ends;
 * 3. convergence: the live executions are let finish, then, as long as a job is still running with
 *    nothing left to run it, every lease is made to expire and the reconciler runs (as its schedule
 *    would, hours later);
 * 4. the original request is made again, as an operator would, and must succeed;
 * 5. the invariants must hold: no job running, no entity in a transitional state, each store's
 *    allocated bytes equal to the sizes of the live volumes on it, the file of every Ready volume
 *    on its pool, and an orphan sweep (dry run, shortest windows) that finds nothing.
 */
import { existsSync, readdirSync } from 'node:fs';
import path from 'node:path';
import type { EntityType } from '../../functions/core/model';
import {
  dataStoreMachine,
  objectInStoreMachine,
  type StateMachine,
  snapshotMachine,
  volumeMachine,
} from '../../functions/core/state-machines';
import { describePoint, type KillPoint, LocalFaults } from '../../infra/local/faults';
import { type ApiAnswer, type CrashStack, type Item, sleep } from './crash-stack';

/**
 * An API call, or (`method: 'START'`) a flow started as EventBridge Scheduler starts it: `route` is
 * the flow and `body` its input.
 */
export interface Request {
  method: string;
  route: string;
  body?: unknown;
}

/** Sends a request; a started flow answers 202 once its execution has ended (succeeded or not). */
async function send(t: CrashStack, r: Request): Promise<{ answer: ApiAnswer; job?: Item }> {
  if (r.method !== 'START') return t.run(r.method, r.route, r.body);
  const { executionArn, status } = await t.start(r.route, r.body);
  return { answer: { status: status === 'SUCCEEDED' ? 202 : 500, body: { executionArn, status } } };
}

export interface Scenario<P = Record<string, string>> {
  /** The flow it exercises (its FlowName), and what the case is about when a flow has several. */
  flow: string;
  name: string;
  /** Makes what the request needs; runs before every case, outside any fault. */
  prepare(t: CrashStack): Promise<P>;
  /**
   * The request only reads what `prepare` made (a backup restored from, a store verified): it is
   * made once per stack and kept until a case fails, which makes it again.
   */
  reuse?: boolean;
  /**
   * Scheduling hints for several workers: `seconds` is roughly what the scenario's cases took here
   * (2 cores, 2026-12-07), so the longest start first; `scansAll` marks a request whose work grows
   * with everything earlier cases left on the stack (a sweep, a verify), started on a fresh stack.
   */
  seconds?: number;
  scansAll?: boolean;
  request(p: P): Request;
  /**
   * The repeat an operator makes after the case; `undefined` when what the request asked for is
   * already there (checked by the scenario). Default: the same request again.
   */
  retry?(t: CrashStack, p: P): Promise<Request | undefined>;
  /** Removes what the case made that would pile up over the cases (the stores an add made). */
  cleanup?(t: CrashStack, p: P): Promise<void>;
}

export type Outcome = 'converged' | 'failed' | 'unreached';

export interface CaseResult {
  flow: string;
  scenario: string;
  point: string;
  outcome: Outcome;
  /** How the flow's own run ended (before any recovery): succeeded, failed, lost, refused, ... */
  firstRun: string;
  recovered: number;
  problems: string[];
  ms: number;
}

const MACHINES: Partial<Record<EntityType, StateMachine<string>>> = {
  DataStore: dataStoreMachine,
  Volume: volumeMachine,
  Snapshot: snapshotMachine,
  TemplateInStore: objectInStoreMachine,
  SnapshotInStore: objectInStoreMachine,
};

const RUNNING_JOB = new Set(['pending', 'running']);

/** What each reusable scenario prepared, on this process's stack. */
const prepared = new Map<Scenario<any>, unknown>();

async function prepare<P>(t: CrashStack, scenario: Scenario<P>): Promise<P> {
  if (scenario.reuse && prepared.has(scenario)) return prepared.get(scenario) as P;
  const made = await scenario.prepare(t);
  if (scenario.reuse) prepared.set(scenario, made);
  return made;
}

/** Runs the request with nothing armed and returns the points it reached. */
export async function recordPoints<P>(t: CrashStack, scenario: Scenario<P>): Promise<KillPoint[]> {
  const made = await prepare(t, scenario);
  t.faults.reset();
  const { answer, job } = await send(t, scenario.request(made));
  if (answer.status >= 300 || (job && job.state !== 'succeeded')) {
    throw new Error(
      `${scenario.name}: the clean run did not succeed (${answer.status}): ${JSON.stringify(job ?? answer.body).slice(0, 800)}`,
    );
  }
  await settle(t);
  return LocalFaults.pointsOf(t.faults.trace());
}

/** One case: the request with `point` armed, then convergence, the retry and the invariants. */
export async function runCase<P>(
  t: CrashStack,
  scenario: Scenario<P>,
  point: KillPoint,
  options: { sweep: boolean } = { sweep: true },
): Promise<CaseResult> {
  const started = Date.now();
  const made = await prepare(t, scenario);
  t.faults.reset(point);
  const problems: string[] = [];
  const request = scenario.request(made);
  const answer =
    request.method === 'START' ? (await send(t, request)).answer : await t.call(...spread(request));
  const firstRun =
    request.method === 'START' ? String(answer.body.status).toLowerCase() : await firstOutcome(t, answer);
  const fired = t.faults.fired !== undefined;
  t.faults.reset();
  const recovered = await converge(t, problems);
  if (problems.length === 0) {
    const again = scenario.retry ? await scenario.retry(t, made) : scenario.request(made);
    if (again) {
      const { answer: retried, job } = await send(t, again);
      if (retried.status >= 300) {
        problems.push(
          `the retry was refused: ${retried.status} ${JSON.stringify(retried.body).slice(0, 300)}`,
        );
      } else if (job && job.state !== 'succeeded') {
        problems.push(
          `the retry's job ${String(job.state)}: ${JSON.stringify(job.error ?? {}).slice(0, 300)}`,
        );
      } else if (retried.status === 202 && !job && again.method !== 'START') {
        problems.push('the retry did not finish');
      }
    }
    await settle(t);
    problems.push(...(await invariants(t, options)));
  }
  if (scenario.cleanup) {
    await scenario.cleanup(t, made).catch((e: unknown) => {
      problems.push(`the case's cleanup failed: ${(e as Error).message}`);
    });
    await settle(t);
  }
  const outcome: Outcome = !fired ? 'unreached' : problems.length ? 'failed' : 'converged';
  // What a failed case left behind is not trusted by the next one.
  if (outcome === 'failed') prepared.delete(scenario);
  return {
    flow: scenario.flow,
    scenario: scenario.name,
    point: describePoint(point),
    outcome,
    firstRun,
    recovered,
    problems,
    ms: Date.now() - started,
  };
}

function spread(r: Request): [string, string, unknown?] {
  return r.body === undefined ? [r.method, r.route] : [r.method, r.route, r.body];
}

/** How the request's own run ended, before anything recovers it. */
async function firstOutcome(t: CrashStack, answer: ApiAnswer): Promise<string> {
  if (answer.status >= 500) {
    await settle(t);
    return `api ${answer.status}`;
  }
  if (answer.status >= 300) return `refused ${answer.status}`;
  const jobId = answer.body?.job?.id as string | undefined;
  if (!jobId) return `answered ${answer.status}`;
  // The job ends, or its execution is gone and nothing will end it.
  const until = Date.now() + 90_000;
  for (;;) {
    const { body } = await t.call('GET', `/jobs/${jobId}`);
    if (body?.state === 'succeeded' || body?.state === 'failed') return String(body.state);
    if (t.runningExecutions().length === 0) {
      await sleep(100);
      const again = (await t.call('GET', `/jobs/${jobId}`)).body;
      if (again?.state === 'succeeded' || again?.state === 'failed') return String(again.state);
      return 'lost';
    }
    if (Date.now() > until) return 'still running';
    await sleep(50);
  }
}

/**
 * Waits until no execution runs (a retry or sweep may have started some) and no function is still
 * serving a step: on AWS a step outlives a stopped execution too, but never the job's lease, which
 * it renewed as it began and which a recovery must wait out; expiring leases by hand must not race it.
 */
async function settle(t: CrashStack, ms = 90_000): Promise<boolean> {
  const until = Date.now() + ms;
  while (t.runningExecutions().length > 0 || t.faults.inFlight() > 0) {
    if (Date.now() > until) return false;
    await sleep(50);
  }
  return true;
}

/**
 * Lets the stack come to rest: live executions finish; then, while a job is still running with no
 * execution left to finish it, every lease expires and the reconciler runs. Returns how many
 * entities the reconciler recovered.
 */
async function converge(t: CrashStack, problems: string[]): Promise<number> {
  let recovered = 0;
  for (let pass = 0; pass < 25; pass++) {
    if (!(await settle(t))) {
      problems.push(`executions still running: ${t.runningExecutions().join(', ')}`);
      return recovered;
    }
    const items = await t.items();
    const running = items.filter(
      (i) => (i.entityType === 'Job' && RUNNING_JOB.has(String(i.state))) || isTransitional(i),
    );
    if (running.length === 0) return recovered;
    await t.expireLeases();
    const pass_ = (await t.stack.invoke('Reconciler', {})) as { recovered?: unknown[]; deferred?: unknown[] };
    recovered += pass_.recovered?.length ?? 0;
    if (!pass_.recovered?.length && !pass_.deferred?.length && pass > 2) {
      problems.push(
        `left running, and the reconciler does not recover them: ${running.map(describeItem).join(', ')}`,
      );
      return recovered;
    }
    await sleep(pass_.deferred?.length ? 300 : 50);
  }
  problems.push('the reconciler kept deferring');
  return recovered;
}

function isTransitional(item: Item): boolean {
  return MACHINES[item.entityType as EntityType]?.leased[String(item.status)] !== undefined;
}

function describeItem(item: Item): string {
  const id = String(item.id ?? item.templateId ?? item.snapshotId);
  const state = String(item.status ?? item.state);
  return `${String(item.entityType)} ${id} (${state}${item.flow ? `, ${String(item.flow)}` : ''})`;
}

/**
 * After a case that did not converge, puts the stack back at rest by hand (jobs failed, transitional
 * entities parked, counters set to what the volumes hold, orphans swept), so the next case is judged
 * on what it does itself.
 */
export async function heal(t: CrashStack): Promise<void> {
  await settle(t);
  const items = await t.items();
  const volumes = items.filter((i) => i.entityType === 'Volume' && i.status !== 'Destroyed');
  for (const item of items) {
    const key = { pk: item.pk, sk: item.sk };
    if (item.entityType === 'Job' && RUNNING_JOB.has(String(item.state))) {
      await t.put({ ...item, state: 'failed', error: { code: 'CrashMatrix', message: 'abandoned' } }, key);
    } else if (isTransitional(item)) {
      const to = MACHINES[item.entityType as EntityType]!.leased[String(item.status)]!;
      await t.put({ ...item, status: to }, key);
    } else if (item.entityType === 'DataStore') {
      const held = volumes
        .filter((v) => v.storeId === item.id)
        .reduce((n, v) => n + Number(v.sizeBytes ?? 0), 0);
      if (Number(item.allocatedBytes ?? 0) !== held) await t.put({ ...item, allocatedBytes: held }, key);
    }
  }
  await sleep(1100);
  await t.run('POST', '/sweeps', { objectGraceSeconds: 1, uploadGraceSeconds: 1, chunkGraceSeconds: 1 });
}

/** What must hold when the stack is at rest; each problem as one line. */
export async function invariants(
  t: CrashStack,
  options: { sweep: boolean } = { sweep: true },
): Promise<string[]> {
  const problems: string[] = [];
  const items = await t.items();
  const of = (type: string) => items.filter((i) => i.entityType === type);

  for (const job of of('Job')) {
    if (RUNNING_JOB.has(String(job.state)))
      problems.push(`job ${String(job.id)} (${String(job.flow)}) still ${String(job.state)}`);
  }
  for (const item of items)
    if (isTransitional(item)) problems.push(`${describeItem(item)} left transitional`);

  const volumes = of('Volume').filter((v) => v.status !== 'Destroyed');
  for (const store of of('DataStore')) {
    const expected = volumes
      .filter((v) => v.storeId === store.id)
      .reduce((sum, v) => sum + Number(v.sizeBytes ?? 0), 0);
    const allocated = Number(store.allocatedBytes ?? 0);
    if (allocated !== expected) {
      problems.push(
        `store ${String(store.name)} allocates ${allocated} bytes, its live volumes hold ${expected}`,
      );
    }
  }
  // Each pool's template cache entry is referenced exactly by the live volumes that hold it.
  for (const cache of of('TemplateInStore').filter((c) => c.storeRole === 'primary')) {
    const holders = volumes.filter(
      (v) => v.holdsTemplateRef === true && v.templateId === cache.templateId && v.storeId === cache.storeId,
    ).length;
    if (Number(cache.refCount ?? 0) !== holders) {
      problems.push(
        `template ${String(cache.templateId)} on ${String(cache.storeId)} counts ${String(cache.refCount)} references, ${holders} volumes hold one`,
      );
    }
  }
  // A template's pending creates are exactly the live volumes still holding it.
  for (const template of of('Template')) {
    const holding = volumes.filter((v) => v.holdsTemplate === true && v.templateId === template.id).length;
    if (Number(template.pendingVolumes ?? 0) !== holding) {
      problems.push(
        `template ${String(template.id)} counts ${String(template.pendingVolumes ?? 0)} pending creates, ${holding} volumes hold it`,
      );
    }
  }
  // A backup inheriting chunk holds relies on its parent's backup: it must still be there, Ready.
  const copies = of('SnapshotInStore');
  for (const child of copies.filter((c) => c.status === 'Ready' && c.chunkHolds === 'lineage')) {
    const parent = copies.find((c) => c.snapshotId === child.inheritsFrom && c.storeId === child.storeId);
    if (parent?.status !== 'Ready') {
      problems.push(
        `backup of ${String(child.snapshotId)} inherits chunk holds from ${String(child.inheritsFrom)}, whose backup is ${parent ? String(parent.status) : 'gone'}`,
      );
    }
  }
  const stores = new Map(of('DataStore').map((s) => [String(s.id), s]));
  for (const v of volumes) {
    if (v.status !== 'Ready' || typeof v.path !== 'string') continue;
    const mount = (stores.get(String(v.storeId))?.details as { mountPath?: string } | undefined)?.mountPath;
    if (mount && !existsSync(path.join(mount, v.path)))
      problems.push(`Ready volume ${String(v.id)} has no file`);
  }
  // A lazy restore's state (its export's cache, socket and daemon) lives only while it hydrates.
  const hydrating = new Set(volumes.filter((v) => v.status === 'Hydrating').map((v) => String(v.id)));
  for (const store of stores.values()) {
    const mount = (store.details as { mountPath?: string } | undefined)?.mountPath;
    const lazyDir = mount ? path.join(mount, '.strata', 'lazy') : undefined;
    if (!lazyDir || !existsSync(lazyDir)) continue;
    for (const volumeId of readdirSync(lazyDir)) {
      if (!hydrating.has(volumeId))
        problems.push(`lazy restore state of ${volumeId} left on ${String(store.name)}`);
    }
  }

  if (options.sweep) problems.push(...(await orphans(t)));
  return problems;
}

/**
 * Orphans: a dry-run sweep with the shortest windows (1 s) over every store. An orphan stays until
 * something sweeps it (each case makes its own objects, under ids of its own), so one sweep after a
 * scenario's cases finds what any of them left.
 */
export async function orphans(t: CrashStack): Promise<string[]> {
  const problems: string[] = [];
  await sleep(1100);
  const { answer, job } = await t.run('POST', '/sweeps', {
    dryRun: true,
    objectGraceSeconds: 1,
    uploadGraceSeconds: 1,
    chunkGraceSeconds: 1,
  });
  if (job?.state !== 'succeeded') {
    problems.push(
      `the orphan sweep did not run: ${answer.status} ${JSON.stringify(job?.error ?? answer.body).slice(0, 200)}`,
    );
  } else {
    const findings = ((job.result as Item | undefined)?.findings ?? []) as {
      kind: string;
      ref: string;
      reason: string;
    }[];
    for (const f of findings.slice(0, 5)) problems.push(`orphan ${f.kind} ${f.ref}: ${f.reason}`);
    if (findings.length > 5) problems.push(`… and ${findings.length - 5} more orphans`);
  }
  return problems;
}

export function formatMatrix(results: readonly CaseResult[]): string {
  const rows = results.map((r) => [
    r.flow,
    r.scenario === r.flow ? '' : r.scenario,
    r.point,
    r.firstRun,
    r.recovered ? String(r.recovered) : '',
    r.outcome === 'converged'
      ? 'converged'
      : r.outcome === 'unreached'
        ? 'unreached'
        : `FAILED: ${r.problems.join('; ')}`,
  ]);
  const head = ['flow', 'case', 'kill point', 'first run', 'recovered', 'outcome'];
  const widths = head.map((h, i) => Math.min(70, Math.max(h.length, ...rows.map((r) => r[i]!.length))));
  const line = (cells: string[]) =>
    cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))).join('  ');
  return [line(head), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].join('\n');
}
