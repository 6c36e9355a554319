/**
 * `npm run test:crash`: the crash matrix on the embedded stack (see ./matrix.ts). Prints each case
 * (flow × step × kill point → outcome) and exits non-zero when any case did not converge.
 *
 *   npm run test:crash                       every scenario
 *   npm run test:crash -- --flow volume-resize
 *   npm run test:crash -- --list             the points only (one clean run per scenario)
 */
import { parseArgs } from 'node:util';
import { describePoint } from '../../infra/local/faults';
import { startCrashStack } from './crash-stack';
import { type CaseResult, formatMatrix, heal, recordPoints, runCase } from './matrix';
import { scenarios } from './scenarios';

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      flow: { type: 'string', multiple: true },
      list: { type: 'boolean', default: false },
    },
  });
  const chosen = scenarios.filter((s) => !values.flow || values.flow.includes(s.flow));
  if (chosen.length === 0) throw new Error(`no scenario for ${values.flow?.join(', ')}`);
  const started = Date.now();
  const t = await startCrashStack();
  const results: CaseResult[] = [];
  try {
    for (const scenario of chosen) {
      const points = await recordPoints(t, scenario);
      process.stderr.write(`${scenario.flow} (${scenario.name}): ${points.length} kill points\n`);
      if (values.list) {
        for (const p of points) process.stdout.write(`  ${describePoint(p)}\n`);
        continue;
      }
      for (const point of points) {
        const result = await runCase(t, scenario, point);
        results.push(result);
        const mark = result.outcome === 'converged' ? 'ok' : result.outcome.toUpperCase();
        process.stderr.write(`  ${mark.padEnd(9)} ${result.point} (${result.firstRun}, ${result.ms} ms)\n`);
        for (const p of result.problems) process.stderr.write(`            ${p}\n`);
        if (result.outcome === 'failed') await heal(t);
      }
    }
  } finally {
    await t.stop();
  }
  if (values.list) return 0;
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
