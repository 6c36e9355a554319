/** The volume-access flow. */

import { z } from 'zod';
import { compensate, type FlowDefinition, task } from '../flow.js';
import { failing, id, volumeStep } from '../steps.js';

const access = volumeStep.extend({ hostId: id, action: z.enum(['grant', 'revoke']) });

export const volumeAccess = {
  comment:
    'volume-access: grants a host access to a volume (the driver opens the object to that host and says how it reaches it; the job result holds the URI) or revokes it.',
  fn: 'store',
  steps: { volumeAccess: access, failVolumeAccess: failing(access) },
  results: {},
  startAt: 'Access',
  states: {
    Access: task({
      comment: 'grantAccess or revokeAccess',
      task: 'volumeAccess',
      host: true,
      input: ['jobId', 'volumeId', 'hostId', 'action'],
      timeoutSeconds: 300,
      resultPath: '$.result',
      select: {
        'value.$': '$.Payload',
      },
    }),
    Compensate: compensate({
      task: 'failVolumeAccess',
      input: ['jobId', 'volumeId', 'hostId', 'action'],
      next: 'Failed',
    }),
    Failed: {
      Type: 'Fail',
      Error: 'VolumeAccessFailed',
      Cause: 'Access was not changed; the job says why.',
    },
  },
} satisfies FlowDefinition;
