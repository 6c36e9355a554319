import type { SweepReport } from '../api-types.js';
import { type CommandContext, type CommandSpec, optFlag, optString } from '../command.js';
import { renderTable } from '../format.js';
import { followForResult, WAIT_OPTIONS, waitTimeout } from './shared.js';

function printReport(ctx: CommandContext, report: Partial<SweepReport>): void {
  const { out } = ctx;
  const findings = report.findings ?? [];
  if (out.json) {
    out.data(report);
    return;
  }
  if (out.quiet) {
    for (const f of findings) out.print(`${f.storeId} ${f.kind} ${f.ref}`);
    return;
  }
  if (findings.length === 0) out.note('Nothing to clean up.');
  else {
    out.print(
      renderTable(findings, [
        { header: 'STORE', value: (f) => f.storeId },
        { header: 'KIND', value: (f) => f.kind },
        { header: 'OBJECT', value: (f) => (f.uploadId ? `${f.ref} (upload ${f.uploadId})` : f.ref) },
        { header: 'ACTION', value: (f) => (f.error ? `${f.action}: ${f.error}` : f.action) },
        { header: 'WHY', value: (f) => f.reason },
      ]),
    );
  }
  const counts = report.counts ?? { object: 0, upload: 0, chunk: 0, claim: 0 };
  const summary = `${counts.object} objects, ${counts.upload} uploads, ${counts.chunk} chunks, ${counts.claim} claims`;
  out.print(
    report.dryRun
      ? `Found ${summary} on ${report.stores?.length ?? 0} stores (dry run: nothing deleted)`
      : `Found ${summary} on ${report.stores?.length ?? 0} stores; deleted ${report.deleted ?? 0}, failed ${report.failed ?? 0}`,
  );
  if (report.findingsTruncated) out.print('(the job keeps the first 500 findings)');
}

export const reconcileCommands: CommandSpec[] = [
  {
    path: ['reconcile'],
    summary:
      'Sweep the stores for what nothing owns: objects no row records, abandoned uploads, unheld chunks, stale claims.',
    options: {
      'dry-run': { type: 'boolean', description: 'report only; delete nothing' },
      store: { type: 'string', valueName: '<id>', description: 'only this store' },
      ...WAIT_OPTIONS,
    },
    examples: ['strata reconcile --dry-run', 'strata reconcile --store st-1', 'strata reconcile --json'],
    async run(ctx) {
      const command = 'reconcile';
      const timeoutMs = waitTimeout(ctx, command);
      const store = optString(ctx.values, 'store');
      const dryRun = optFlag(ctx.values, 'dry-run');
      const accepted = await ctx.client.sweep({ dryRun, ...(store ? { storeIds: [store] } : {}) });
      const { exitCode, result } = await followForResult<SweepReport>(
        ctx,
        timeoutMs,
        accepted,
        'Orphan sweep',
      );
      if (result) printReport(ctx, result);
      return exitCode;
    },
  },
];
