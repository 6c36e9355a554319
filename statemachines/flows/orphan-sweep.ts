/** The orphan-sweep flow. */

import { z } from 'zod';
import { SweepOptionsSchema } from '../../functions/core/sweep-options.js';
import { compensate, type FlowDefinition, task } from '../flow.js';
import { id, sfnError } from '../steps.js';

export const orphanSweep = {
  comment:
    'orphan-sweep: per store, finds what nothing owns any more (objects no row records, abandoned multipart uploads, chunks no manifest holds, stale collection claims), reports them on the job and, unless it is a dry run, deletes them.',
  fn: 'store',
  steps: {
    sweepOrphans: z.object({ jobId: id, options: SweepOptionsSchema }),
    failSweep: z.object({ jobId: id, error: sfnError }),
  },
  results: { sweepOrphans: z.object({ counts: z.record(z.string(), z.number().int().nonnegative()) }) },
  startAt: 'Sweep',
  states: {
    Sweep: task({
      comment: 'sweepOrphans',
      task: 'sweepOrphans',
      host: true,
      input: ['jobId', 'options'],
      timeoutSeconds: 900,
      resultPath: '$.result',
      select: {
        'counts.$': '$.Payload.counts',
      },
    }),
    Compensate: compensate({ task: 'failSweep', input: ['jobId'], next: 'Failed' }),
    Failed: {
      Type: 'Fail',
      Error: 'OrphanSweepFailed',
      Cause: 'The sweep did not complete; the job says why.',
    },
  },
} satisfies FlowDefinition;
