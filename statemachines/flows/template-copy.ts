/** The template-copy flow. */

import { z } from 'zod';
import { compensate, type FlowDefinition, IMAGE_RESULT, task } from '../flow.js';
import { failing, id, imageResult, templateStep } from '../steps.js';

const copyStep = templateStep.extend({ sourceStoreId: id });

export const templateCopy = {
  comment:
    'template-copy: copy a Ready template from one image store to another through DataMotionService (a server-side copy when both stores are S3). The source is held in Copying meanwhile; on failure the partial copy is removed and the source released.',
  fn: 'image',
  steps: {
    copyStep,
    finishCopy: copyStep.extend({ result: imageResult.extend({ via: z.string() }) }),
    failCopy: failing(copyStep),
  },
  results: { copyStep: imageResult.extend({ via: z.string() }) },
  startAt: 'Copy',
  states: {
    Copy: task({
      comment: 'copyStep',
      task: 'copyStep',
      input: '$',
      timeoutSeconds: 900,
      resultPath: '$.result',
      select: { ...IMAGE_RESULT, 'via.$': '$.Payload.via' },
      next: 'Finish',
    }),
    Finish: task({
      comment: 'finishCopy',
      task: 'finishCopy',
      input: ['jobId', 'templateId', 'sourceStoreId', 'storeId', 'result'],
      timeoutSeconds: 300,
      resultPath: '$.finished',
      select: {
        done: true,
      },
    }),
    Compensate: compensate({
      task: 'failCopy',
      input: ['jobId', 'templateId', 'sourceStoreId', 'storeId'],
      next: 'Failed',
    }),
    Failed: {
      Type: 'Fail',
      Error: 'TemplateCopyFailed',
      Cause: 'The copy failed; the job says why.',
    },
  },
} satisfies FlowDefinition;
