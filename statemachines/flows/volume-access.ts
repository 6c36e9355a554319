/** The volume-access flow. */
import { compensate, type FlowDefinition, task } from '../flow.js';

export const volumeAccess: FlowDefinition = {
  comment:
    'volume-access: grants a host access to a volume (the driver opens the object to that host and says how it reaches it; the job result holds the URI) or revokes it.',
  fn: 'store',
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
};
