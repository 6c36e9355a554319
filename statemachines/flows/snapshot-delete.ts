/** The snapshot-delete flow. */

import { z } from 'zod';
import { compensate, type FlowDefinition, task } from '../flow.js';
import { failing, snapshotStep } from '../steps.js';

const deleteStep = snapshotStep.extend({ from: z.enum(['all', 'primary', 'image']) });

export const snapshotDelete = {
  comment:
    'snapshot-delete: the snapshot is held in Destroying (and, when a layer is merged, the volume too). Each targeted copy goes: a primary layer is merged into what depends on it on a host, a backup releases its chunks (collected when no other backup holds them). On failure the snapshot is Error with the reason and the delete can be retried.',
  fn: 'store',
  steps: { deleteSnapshot: deleteStep, failSnapshotDelete: failing(deleteStep) },
  results: {},
  startAt: 'Delete',
  states: {
    Delete: task({
      comment: 'remove the targeted copies',
      task: 'deleteSnapshot',
      host: true,
      input: ['jobId', 'snapshotId', 'from'],
      timeoutSeconds: 900,
      resultPath: '$.result',
      select: {
        'value.$': '$.Payload',
      },
    }),
    Compensate: compensate({
      task: 'failSnapshotDelete',
      input: ['jobId', 'snapshotId', 'from'],
      next: 'Failed',
    }),
    Failed: {
      Type: 'Fail',
      Error: 'SnapshotDeleteFailed',
      Cause: 'The snapshot was not deleted; the job says why.',
    },
  },
} satisfies FlowDefinition;
