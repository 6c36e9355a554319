/** The snapshot-revert flow. */
import { compensate, type FlowDefinition, task } from '../flow.js';
import { failing, snapshotStep } from '../steps.js';

export const snapshotRevert = {
  comment:
    'snapshot-revert: the volume is held in RevertSnapshotting. A host makes the snapshot the base of a new empty active layer (the driver swaps layers atomically) and the volume is Ready again; on failure the volume keeps its layers, is released and the job says why.',
  fn: 'store',
  steps: { revertOnPool: snapshotStep, failRevert: failing(snapshotStep) },
  results: {},
  startAt: 'Revert',
  states: {
    Revert: task({
      comment: 'revertSnapshot on a host',
      task: 'revertOnPool',
      host: true,
      input: ['jobId', 'snapshotId'],
      timeoutSeconds: 900,
      resultPath: '$.result',
      select: {
        'value.$': '$.Payload',
      },
    }),
    Compensate: compensate({ task: 'failRevert', input: ['jobId', 'snapshotId'], next: 'Failed' }),
    Failed: {
      Type: 'Fail',
      Error: 'SnapshotRevertFailed',
      Cause: 'The volume was not reverted; the job says why.',
    },
  },
} satisfies FlowDefinition;
