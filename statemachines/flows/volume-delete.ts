/** The volume-delete flow. */
import { z } from 'zod';
import { compensate, type FlowDefinition, task } from '../flow.js';
import { failing, volumeStep } from '../steps.js';

export const volumeDelete = {
  comment:
    "volume-delete: remove the file on a host that mounts the pool, release the reserved space and the template reference (evicting the pool's cache entry when it was the last), then forget the volume.",
  fn: 'store',
  steps: { destroyVolume: volumeStep, failDestroy: failing(volumeStep) },
  results: { destroyVolume: z.object({ evictedCache: z.boolean() }) },
  startAt: 'Destroy',
  states: {
    Destroy: task({
      comment: 'destroyVolume',
      task: 'destroyVolume',
      host: true,
      input: ['jobId', 'volumeId'],
      timeoutSeconds: 600,
      resultPath: '$.destroyed',
      select: {
        'evictedCache.$': '$.Payload.evictedCache',
      },
    }),
    Compensate: compensate({ task: 'failDestroy', input: ['jobId', 'volumeId'], next: 'Failed' }),
    Failed: {
      Type: 'Fail',
      Error: 'VolumeDeleteFailed',
      Cause: 'The volume could not be deleted; it is in Error and the job says why.',
    },
  },
} satisfies FlowDefinition;
