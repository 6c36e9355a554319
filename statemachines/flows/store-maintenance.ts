/** The store-maintenance flow. */

import { z } from 'zod';
import { compensate, type FlowDefinition, hostFailed, retryOn, task, transient } from '../flow.js';
import { failing, hostResult, id } from '../steps.js';

const maintenance = z.object({ jobId: id, storeId: id, action: z.enum(['enter', 'cancel']) });

export const storeMaintenance = {
  comment:
    'store-maintenance: enter (wait until nothing on the store is mid-operation, detach every host, Maintenance) or cancel (re-attach hosts in scope, Up). Failure leaves the store in ErrorInMaintenance, from which the operator can retry either way.',
  fn: 'store',
  steps: {
    beginMaintenance: maintenance,
    checkStoreIdle: maintenance,
    maintainHost: maintenance.extend({ hostId: id }),
    completeMaintenance: maintenance.extend({ hostIds: z.array(id), results: z.array(hostResult) }),
    failMaintenance: failing(maintenance),
  },
  results: {
    beginMaintenance: z.object({ hostIds: z.array(id) }),
    checkStoreIdle: z.object({ idle: z.literal(true) }),
    maintainHost: hostResult,
    // The execution's output (what the job records): an object, whatever else it holds.
    completeMaintenance: z.looseObject({}),
  },
  startAt: 'Begin',
  states: {
    Begin: task({
      comment: 'beginMaintenance',
      task: 'beginMaintenance',
      input: ['jobId', 'storeId', 'action'],
      timeoutSeconds: 300,
      resultPath: '$.begun',
      select: {
        'hostIds.$': '$.Payload.hostIds',
      },
      next: 'Action',
    }),
    Action: {
      Type: 'Choice',
      Choices: [
        {
          Variable: '$.action',
          StringEquals: 'enter',
          Next: 'WaitUntilIdle',
        },
      ],
      Default: 'VisitHosts',
    },
    WaitUntilIdle: task({
      comment: 'checkStoreIdle',
      task: 'checkStoreIdle',
      input: ['jobId', 'storeId', 'action'],
      timeoutSeconds: 300,
      retry: [
        retryOn(['Strata.StoreBusy'], {
          intervalSeconds: 5,
          maxAttempts: 12,
          backoffRate: 1.5,
          maxDelaySeconds: 60,
        }),
        transient(),
      ],
      resultPath: '$.idle',
      select: {
        'idle.$': '$.Payload.idle',
      },
      next: 'VisitHosts',
    }),
    VisitHosts: {
      Type: 'Map',
      Comment: 'Detach (enter) or re-attach (cancel) each host; up to 4 at once.',
      ItemsPath: '$.begun.hostIds',
      MaxConcurrency: 4,
      ItemSelector: {
        'jobId.$': '$.jobId',
        'storeId.$': '$.storeId',
        'action.$': '$.action',
        'hostId.$': '$$.Map.Item.Value',
      },
      ResultPath: '$.results',
      Next: 'Complete',
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
        StartAt: 'MaintainHost',
        States: {
          MaintainHost: task({
            comment: 'maintainHost',
            task: 'maintainHost',

            host: true,
            input: ['jobId', 'storeId', 'action', 'hostId'],
            timeoutSeconds: 900,
            output: 'payload',
            catchTo: 'HostFailed',
          }),
          HostFailed: hostFailed(),
        },
      },
    },
    Complete: task({
      comment: 'completeMaintenance',
      task: 'completeMaintenance',
      input: {
        jobId: '$.jobId',
        storeId: '$.storeId',
        action: '$.action',
        hostIds: '$.begun.hostIds',
        results: '$.results',
      },
      timeoutSeconds: 300,
      output: 'payload',
    }),
    Compensate: compensate({
      task: 'failMaintenance',
      input: ['jobId', 'storeId', 'action'],
      next: 'Failed',
    }),
    Failed: {
      Type: 'Fail',
      Error: 'StoreMaintenanceFailed',
      Cause: 'Maintenance could not complete; the store is in ErrorInMaintenance and the job records why.',
    },
  },
} satisfies FlowDefinition;
