/** The store-inventory flow. */
import { compensate, type FlowDefinition, task } from '../flow.js';

export const storeInventory: FlowDefinition = {
  comment:
    'store-inventory: lists what the storage holds (through a host for host-mounted stores) and matches each object with the row that owns it; the job result holds the list.',
  fn: 'store',
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
};
