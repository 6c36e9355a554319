/** The volume-create flow. */

import { z } from 'zod';
import { compensate, type FlowDefinition, retryOn, task, transient } from '../flow.js';
import { failing, volumeStep } from '../steps.js';

export const volumeCreate = {
  comment:
    'volume-create: the volume is already placed (its size reserved on the pool) and Creating. From a template: make sure the template is cached on the pool once (concurrent creators wait for the one installing it), then a linked clone or full copy; blank: a new qcow2. On failure the file, the reservation and the template reference are given back and the volume is Error with the reason.',
  fn: 'store',
  steps: {
    ensureTemplateCache: volumeStep,
    createOnPool: volumeStep,
    finishCreate: volumeStep.extend({ path: z.string() }),
    failCreate: failing(volumeStep),
  },
  results: {
    ensureTemplateCache: z.object({ cachePath: z.string() }),
    createOnPool: z.object({ path: z.string() }),
  },
  startAt: 'Source',
  states: {
    Source: {
      Type: 'Choice',
      Choices: [
        {
          Variable: '$.fromTemplate',
          BooleanEquals: true,
          Next: 'EnsureTemplateCache',
        },
      ],
      Default: 'CreateOnPool',
    },
    EnsureTemplateCache: task({
      comment:
        'Install the template on the pool once (TemplateInStore with a lease); others wait; take a reference.',
      task: 'ensureTemplateCache',
      host: true,
      input: ['jobId', 'volumeId'],
      timeoutSeconds: 900,
      retry: [
        retryOn(['Strata.CacheBusy'], {
          intervalSeconds: 1,
          maxAttempts: 60,
          backoffRate: 1.5,
          maxDelaySeconds: 10,
        }),
        transient(),
      ],
      resultPath: '$.cache',
      select: {
        'cachePath.$': '$.Payload.cachePath',
      },
      next: 'CreateOnPool',
    }),
    CreateOnPool: task({
      comment:
        'On a host that mounts the pool: linked clone / full copy of the cache entry, or a blank qcow2.',
      task: 'createOnPool',
      host: true,
      input: ['jobId', 'volumeId'],
      timeoutSeconds: 900,
      retry: [transient()],
      resultPath: '$.created',
      select: {
        'path.$': '$.Payload.path',
      },
      next: 'Finish',
    }),
    Finish: task({
      comment: 'finishCreate',
      task: 'finishCreate',
      input: {
        jobId: '$.jobId',
        volumeId: '$.volumeId',
        path: '$.created.path',
      },
      timeoutSeconds: 300,
      resultPath: '$.finished',
      select: {
        done: true,
      },
    }),
    Compensate: compensate({ task: 'failCreate', host: true, input: ['jobId', 'volumeId'], next: 'Failed' }),
    Failed: {
      Type: 'Fail',
      Error: 'VolumeCreateFailed',
      Cause: "The volume could not be created; the job and the volume's statusReason say why.",
    },
  },
} satisfies FlowDefinition;
