/**
 * `npm run test:crash`: the crash matrix on the embedded stack (see ./matrix.ts). Prints each case
 * (flow × step × kill point → outcome) and exits non-zero when any case did not converge.
 *
 *   npm run test:crash                             every scenario, on two stacks side by side
 *   npm run test:crash -- --flow volume-resize     one flow's scenarios
 *   npm run test:crash -- --workers 1              on one stack
 *   npm run test:crash -- --list                   the points only (one clean run per scenario)
 *   npm run test:crash -- --sweep case             an orphan sweep after every case, not per scenario
 *
 * With several workers each one is a process with a stack of its own (its own DynamoDB Local and
 * s3rver); this process hands them one scenario at a time, as each finishes the last: first those
 * whose request scans everything on the stack (cheapest on a fresh one), then the longest first,
 * so the workers end close together. Most of a case is waiting, so two share two cores well.
 */
import { spawn } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { describePoint } from '../../infra/local/faults';
import { startCrashStack } from './crash-stack';
import { type CaseResult, formatMatrix, heal, orphans, recordPoints, runCase } from './matrix';
import { closeWorld, scenarios } from './scenarios';

const { values } = parseArgs({
  options: {
    flow: { type: 'string', multiple: true },
    list: { type: 'boolean', default: false },
    workers: { type: 'string', default: '2' },
    /** `case`: an orphan sweep after every case; `scenario` (default): one after a scenario's cases. */
    sweep: { type: 'string', default: 'scenario' },
    /** Internal: this process is worker k of n, asks for scenarios, and writes its results to `out`. */
    shard: { type: 'string' },
    out: { type: 'string' },
  },
});

if (values.sweep !== 'case' && values.sweep !== 'scenario') throw new Error('--sweep is case or scenario');
const sweepEachCase = values.sweep === 'case';

/** The chosen scenarios, in the order they are started. */
function chosen() {
  const picked = scenarios.filter((s) => !values.flow || values.flow.includes(s.flow));
  if (picked.length === 0) throw new Error(`no scenario for ${values.flow?.join(', ')}`);
  const rank = (s: (typeof picked)[number]) => (s.scansAll ? 1e9 : 0) + (s.seconds ?? 0);
  return picked.map((s, i) => ({ s, i })).sort((a, b) => rank(b.s) - rank(a.s) || a.i - b.i);
}

/** The scenarios this process runs: all of them, or (a worker) each one the parent hands it. */
async function* assigned() {
  const order = chosen();
  if (!values.shard) {
    for (const { s } of order) yield s;
    return;
  }
  for (;;) {
    const next = await new Promise<number>((resolve) => {
      process.once('message', (m: { next: number }) => resolve(m.next));
      process.send!({ ready: true });
    });
    if (next < 0) return;
    yield order[next]!.s;
  }
}

/** Runs the scenarios on one stack of this process. */
async function work(): Promise<CaseResult[]> {
  const label = values.shard ? `[${values.shard}] ` : '';
  // Template URLs point at a local image server.
  const t = await startCrashStack({ fetchAllowlist: '127.0.0.1' });
  const results: CaseResult[] = [];
  try {
    for await (const scenario of assigned()) {
      const points = await recordPoints(t, scenario);
      process.stderr.write(`${label}${scenario.flow} (${scenario.name}): ${points.length} kill points\n`);
      if (values.list) {
        for (const p of points) process.stdout.write(`  ${describePoint(p)}\n`);
        continue;
      }
      for (const point of points) {
        const result = await runCase(t, scenario, point, { sweep: sweepEachCase });
        results.push(result);
        const mark = result.outcome === 'converged' ? 'ok' : result.outcome.toUpperCase();
        process.stderr.write(
          `${label}  ${mark.padEnd(9)} ${result.point} (${result.firstRun}, ${result.ms} ms)\n`,
        );
        for (const p of result.problems) process.stderr.write(`${label}            ${p}\n`);
        if (result.outcome === 'failed') await heal(t);
      }
      if (!sweepEachCase) {
        const started = Date.now();
        const problems = await orphans(t);
        const result: CaseResult = {
          flow: scenario.flow,
          scenario: scenario.name,
          point: `after its ${points.length} cases: orphan sweep`,
          outcome: problems.length ? 'failed' : 'converged',
          firstRun: '',
          recovered: 0,
          problems,
          ms: Date.now() - started,
        };
        results.push(result);
        process.stderr.write(`${label}  ${problems.length ? 'FAILED' : 'ok'.padEnd(9)} ${result.point}\n`);
        const scanStarted = Date.now();
        const held = (await t.items()).length;
        process.stderr.write(`${label}  table: ${held} items, scanned in ${Date.now() - scanStarted} ms\n`);
        for (const p of problems) process.stderr.write(`${label}            ${p}\n`);
        if (problems.length) await heal(t);
      }
    }
  } finally {
    await closeWorld();
    await t.stop();
  }
  return results;
}

/** Runs `workers` processes, each on its own stack, hands out the scenarios and gathers what they found. */
async function fanOut(workers: number): Promise<CaseResult[]> {
  const total = chosen().length;
  let handed = 0;
  const runs = Array.from({ length: Math.min(workers, total) }, async (_, k) => {
    const out = path.join(os.tmpdir(), `strata-crash-${process.pid}-${k}.json`);
    const args = ['--import', 'tsx', __filename, '--shard', `${k}/${workers}`, '--out', out];
    for (const f of values.flow ?? []) args.push('--flow', f);
    args.push('--sweep', String(values.sweep));
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    child.on('message', () => {
      child.send({ next: handed < total ? handed++ : -1 });
    });
    const code = await new Promise<number>((resolve) => child.once('exit', (c) => resolve(c ?? 1)));
    if (code !== 0) throw new Error(`crash worker ${k} exited with ${code}`);
    return JSON.parse(await readFile(out, 'utf8')) as CaseResult[];
  });
  return (await Promise.all(runs)).flat();
}

async function main(): Promise<number> {
  const started = Date.now();
  const workers = Math.max(1, Number(values.workers));
  if (values.shard) {
    const results = await work();
    if (values.out) await writeFile(values.out, JSON.stringify(results));
    return 0;
  }
  const results = values.list || workers === 1 ? await work() : await fanOut(workers);
  if (values.list) return 0;
  const order = new Map(scenarios.map((s, i) => [s.name, i]));
  results.sort((a, b) => (order.get(a.scenario) ?? 0) - (order.get(b.scenario) ?? 0));
  process.stdout.write(`\n${formatMatrix(results)}\n\n`);
  const failed = results.filter((r) => r.outcome === 'failed').length;
  const unreached = results.filter((r) => r.outcome === 'unreached').length;
  process.stdout.write(
    `${results.length} cases in ${Math.round((Date.now() - started) / 1000)} s: ` +
      `${results.length - failed - unreached} converged, ${failed} failed, ${unreached} unreached\n`,
  );
  return failed > 0 ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (error) => {
    process.stderr.write(`${(error as Error).stack ?? String(error)}\n`);
    process.exit(2);
  },
);
