/** The store-inventory flow. */
import { compensate, type FlowDefinition, task } from '../flow.js';
import { failing, storeStep } from '../steps.js';

export const storeInventory = {
  comment:
    'store-inventory: lists what the storage holds (through a host for host-mounted stores) and matches each object with the row that owns it; the job result holds the list.',
  fn: 'store',
  steps: { inventoryStore: storeStep, failInventory: failing(storeStep) },
  results: {},
  startAt: 'List',
  states: {
    List: task({
      comment: 'listObjects',
      task: 'inventoryStore',
      host: true,
      input: ['jobId', 'storeId'],
      timeoutSeconds: 600,
      resultPath: '$.result',
      select: {
        'value.$': '$.Payload',
      },
    }),
    Compensate: compensate({ task: 'failInventory', input: ['jobId', 'storeId'], next: 'Failed' }),
    Failed: {
      Type: 'Fail',
      Error: 'StoreInventoryFailed',
      Cause: 'The store could not be listed; the job says why.',
    },
  },
} satisfies FlowDefinition;
