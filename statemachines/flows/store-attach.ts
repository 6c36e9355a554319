/** The store-attach flow. */
import { compensate, type FlowDefinition, hostFailed, task } from '../flow.js';

export const storeAttach: FlowDefinition = {
  comment:
    "store-attach: initialize a data store through its provider's lifecycle, attach it to every Up host in its scope (one branch per host), then mark it Up. Any unexpected error moves the store to Error and fails the job.",
  fn: 'store',
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
};
