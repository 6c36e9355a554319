/** The store-attach flow. */

import { z } from 'zod';
import { compensate, type FlowDefinition, hostFailed, task } from '../flow.js';
import { failing, hostResult, id } from '../steps.js';

const attach = z.object({
  jobId: id,
  storeId: id,
  mode: z.enum(['initialize', 'attach']),
  hostIds: z.array(id).optional(),
});

export const storeAttach = {
  comment:
    "store-attach: initialize a data store through its provider's lifecycle, attach it to every Up host in its scope (one branch per host), then mark it Up. Any unexpected error moves the store to Error and fails the job.",
  fn: 'store',
  steps: {
    prepareAttach: attach,
    attachHost: z.object({ jobId: id, storeId: id, hostId: id }),
    finishAttach: attach.extend({ hostIds: z.array(id), results: z.array(hostResult) }),
    failAttach: failing(attach),
  },
  results: {
    prepareAttach: z.object({ hostIds: z.array(id) }),
    attachHost: hostResult,
    // The execution's output (what the job records): an object, whatever else it holds.
    finishAttach: z.looseObject({}),
  },
  startAt: 'Prepare',
  states: {
    Prepare: task({
      comment: 'prepareAttach',
      task: 'prepareAttach',
      host: true,
      input: '$',
      timeoutSeconds: 300,
      resultPath: '$.prepared',
      select: {
        'hostIds.$': '$.Payload.hostIds',
      },
      next: 'AttachHosts',
    }),
    AttachHosts: {
      Type: 'Map',
      Comment: 'Attach each host in scope; up to 4 at once.',
      ItemsPath: '$.prepared.hostIds',
      MaxConcurrency: 4,
      ItemSelector: {
        'jobId.$': '$.jobId',
        'storeId.$': '$.storeId',
        'hostId.$': '$$.Map.Item.Value',
      },
      ResultPath: '$.results',
      Next: 'Finish',
      Catch: [
        {
          ErrorEquals: ['States.ALL'],
          ResultPath: '$.error',
          Next: 'Compensate',
        },
      ],
      ItemProcessor: {
        ProcessorConfig: {
          Mode: 'INLINE',
        },
        StartAt: 'AttachHost',
        States: {
          AttachHost: task({
            comment: 'attachHost',
            task: 'attachHost',

            host: true,
            input: ['jobId', 'storeId', 'hostId'],
            timeoutSeconds: 900,
            output: 'payload',
            catchTo: 'HostFailed',
          }),
          HostFailed: hostFailed(),
        },
      },
    },
    Finish: task({
      comment: 'finishAttach',
      task: 'finishAttach',
      input: {
        jobId: '$.jobId',
        storeId: '$.storeId',
        mode: '$.mode',
        hostIds: '$.prepared.hostIds',
        results: '$.results',
      },
      timeoutSeconds: 300,
      output: 'payload',
    }),
    Compensate: compensate({ task: 'failAttach', input: ['jobId', 'storeId', 'mode'], next: 'Failed' }),
    Failed: {
      Type: 'Fail',
      Error: 'StoreAttachFailed',
      Cause: 'The store could not be attached; the job records why.',
    },
  },
} satisfies FlowDefinition;
