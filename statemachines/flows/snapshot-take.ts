/** The snapshot-take flow. */

import { z } from 'zod';
import { compensate, type FlowDefinition, task } from '../flow.js';
import { failing, snapshotStep } from '../steps.js';

export const snapshotTake = {
  comment:
    "snapshot-take: the volume is held in Snapshotting. Freeze its current layer on a host (for nfs: the layer becomes snapshots/<vol>/<snap>.qcow2 and a new empty overlay takes the volume's path, so the next backup reads only what changed), record the snapshot's copy on primary storage, release the volume. On failure the snapshot is Error and the volume Ready again.",
  fn: 'store',
  steps: {
    takeOnPool: snapshotStep,
    finishTake: snapshotStep.extend({ path: z.string(), sizeBytes: z.number().nonnegative() }),
    failTake: failing(snapshotStep),
  },
  results: { takeOnPool: z.object({ path: z.string(), sizeBytes: z.number().nonnegative() }) },
  startAt: 'Take',
  states: {
    Take: task({
      comment: 'takeOnPool',
      task: 'takeOnPool',
      host: true,
      input: ['jobId', 'snapshotId'],
      timeoutSeconds: 600,
      resultPath: '$.taken',
      select: {
        'path.$': '$.Payload.path',
        'sizeBytes.$': '$.Payload.sizeBytes',
      },
      next: 'Finish',
    }),
    Finish: task({
      comment: 'finishTake',
      task: 'finishTake',
      input: {
        jobId: '$.jobId',
        snapshotId: '$.snapshotId',
        path: '$.taken.path',
        sizeBytes: '$.taken.sizeBytes',
      },
      timeoutSeconds: 300,
      resultPath: '$.finished',
      select: {
        done: true,
      },
    }),
    Compensate: compensate({ task: 'failTake', input: ['jobId', 'snapshotId'], next: 'Failed' }),
    Failed: {
      Type: 'Fail',
      Error: 'SnapshotTakeFailed',
      Cause: 'The snapshot could not be taken; the job says why.',
    },
  },
} satisfies FlowDefinition;
