/**
 * The workflow edge: errors thrown by task handlers get a stable `name`, which is what Step Functions
 * matches in Retry/Catch `ErrorEquals`. `Strata.Unavailable` (which includes AWS throttling and
 * server errors) and `Strata.StoreBusy` are retried with backoff; everything else goes to the flow's
 * Catch and compensation.
 */
import { DriverError } from '../../drivers/sdk/errors.js';
import { isTransientAwsError } from '../adapters/aws/clients.js';
import {
  ConflictError,
  InputError,
  NotAllowedError,
  NotFoundError,
  StrataError,
  UnavailableError,
} from '../core/errors.js';
import { StoreBusyError } from '../core/services/store-flows.js';
import { CacheBusyError } from '../core/services/volume-service.js';

export class WorkflowTaskError extends Error {
  constructor(name: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = name;
  }
}

export function workflowErrorName(e: unknown): string {
  if (e instanceof StoreBusyError) return 'Strata.StoreBusy';
  if (e instanceof CacheBusyError) return 'Strata.CacheBusy';
  if (e instanceof UnavailableError) return 'Strata.Unavailable';
  if (e instanceof DriverError) return e.retryable ? 'Strata.Unavailable' : `Strata.${e.code}`;
  if (e instanceof ConflictError) return 'Strata.Conflict';
  if (e instanceof NotFoundError) return 'Strata.NotFound';
  if (e instanceof NotAllowedError) return 'Strata.NotAllowed';
  if (e instanceof InputError) return 'Strata.InvalidInput';
  if (e instanceof StrataError) return `Strata.${e.code}`;
  // Throttling and 5xx from AWS (DynamoDB, S3, SSM, Step Functions): the flow retries with backoff.
  if (isTransientAwsError(e)) return 'Strata.Unavailable';
  // Adapters' own errors (e.g. a download that stalled) say whether trying again may help.
  if ((e as { retryable?: unknown } | undefined)?.retryable === true) return 'Strata.Unavailable';
  const code = (e as { code?: unknown } | undefined)?.code;
  if (typeof code === 'string' && /^[A-Za-z][A-Za-z0-9]{0,40}$/.test(code)) return `Strata.${code}`;
  return 'Strata.Internal';
}

export function toWorkflowError(e: unknown): WorkflowTaskError {
  const message = e instanceof Error ? e.message : String(e);
  return new WorkflowTaskError(workflowErrorName(e), message, { cause: e });
}
