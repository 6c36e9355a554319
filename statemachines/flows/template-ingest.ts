/** The template-ingest flow. */
import { compensate, type FlowDefinition, IMAGE_RESULT, task, transient } from '../flow.js';
import { failing, imageResult, templateStep } from '../steps.js';

export const templateIngest = {
  comment:
    'template-ingest: bring a template into an image store and prove it. From a URL: stream it into the store through the SSRF-safe fetcher, hashing and inspecting on the way. From an upload: read the assembled object back, hashing and inspecting it. Then the copy is Ready; on any failure nothing is left in the store and the copy is Failed with the reason.',
  fn: 'image',
  steps: {
    ingestFromUrl: templateStep,
    verifyUpload: templateStep,
    finishIngest: templateStep.extend({ result: imageResult }),
    failIngest: failing(templateStep),
  },
  results: { ingestFromUrl: imageResult, verifyUpload: imageResult },
  startAt: 'Source',
  states: {
    Source: {
      Type: 'Choice',
      Choices: [
        {
          Variable: '$.source',
          StringEquals: 'url',
          Next: 'Download',
        },
      ],
      Default: 'VerifyUpload',
    },
    Download: task({
      comment:
        'Stream URL → image store; sha256 (+ the declared algorithm) and format inspection on the fly.',
      task: 'ingestFromUrl',
      input: '$',
      timeoutSeconds: 900,
      retry: [transient(2, 3)],
      resultPath: '$.result',
      select: IMAGE_RESULT,
      next: 'Finish',
    }),
    VerifyUpload: task({
      comment: 'Read the uploaded object back: size, checksum, format.',
      task: 'verifyUpload',
      input: '$',
      timeoutSeconds: 900,
      resultPath: '$.result',
      select: IMAGE_RESULT,
      next: 'Finish',
    }),
    Finish: task({
      comment: 'finishIngest',
      task: 'finishIngest',
      input: ['jobId', 'templateId', 'storeId', 'result'],
      timeoutSeconds: 300,
      resultPath: '$.finished',
      select: {
        done: true,
      },
    }),
    Compensate: compensate({
      comment: 'Remove whatever reached the store, mark the copy Failed with the reason, fail the job.',
      task: 'failIngest',
      input: ['jobId', 'templateId', 'storeId'],
      next: 'Failed',
    }),
    Failed: {
      Type: 'Fail',
      Error: 'TemplateIngestFailed',
      Cause: "The template could not be ingested; the job and the copy's statusReason say why.",
    },
  },
} satisfies FlowDefinition;
