/** The volume-resize flow. */

import { z } from 'zod';
import { compensate, type FlowDefinition, task } from '../flow.js';
import { failing, volumeStep } from '../steps.js';

const size = z.number().int().positive();

export const volumeResize = {
  comment:
    'volume-resize: the extra space is already reserved and the volume Resizing. Resize the qcow2 on a host that mounts the pool and record the new size; on failure the file keeps its old size, the reservation is given back and the volume is Ready again with the reason.',
  fn: 'store',
  steps: {
    resizeOnPool: volumeStep.extend({ sizeBytes: size, allowShrink: z.boolean() }),
    failResize: failing(volumeStep.extend({ sizeBytes: size })),
  },
  results: {},
  startAt: 'Resize',
  states: {
    Resize: task({
      comment: 'qemu-img resize on a host (shrink only when allowed)',
      task: 'resizeOnPool',
      host: true,
      input: ['jobId', 'volumeId', 'sizeBytes', 'allowShrink'],
      timeoutSeconds: 600,
      resultPath: '$.resized',
      select: {
        done: true,
      },
    }),
    Compensate: compensate({ task: 'failResize', input: ['jobId', 'volumeId', 'sizeBytes'], next: 'Failed' }),
    Failed: {
      Type: 'Fail',
      Error: 'VolumeResizeFailed',
      Cause: 'The volume could not be resized; the job says why.',
    },
  },
} satisfies FlowDefinition;
