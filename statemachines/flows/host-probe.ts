/** The host-probe flow. */
import { compensate, type FlowDefinition, task } from '../flow.js';
import { failing, hostStep } from '../steps.js';

export const hostProbe = {
  comment:
    "host-probe: asks a host's runtime for its build and prerequisites (Node.js, qemu-img, qemu-nbd) and records them on the host.",
  fn: 'store',
  steps: { probeHost: hostStep, failProbe: failing(hostStep) },
  results: {},
  startAt: 'Probe',
  states: {
    Probe: task({
      comment: 'the probe host operation',
      task: 'probeHost',
      host: true,
      input: ['jobId', 'hostId'],
      timeoutSeconds: 300,
      resultPath: '$.result',
      select: {
        'value.$': '$.Payload',
      },
    }),
    Compensate: compensate({ task: 'failProbe', input: ['jobId', 'hostId'], next: 'Failed' }),
    Failed: {
      Type: 'Fail',
      Error: 'HostProbeFailed',
      Cause: 'The host did not answer the probe; the job says why.',
    },
  },
} satisfies FlowDefinition;
