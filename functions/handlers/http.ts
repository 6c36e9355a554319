/**
 * The HTTP edge: domain and driver errors become JSON `{ error: { code, message, field } }` with a
 * 4xx status here and nowhere else. Anything unrecognised is a 500 whose details stay in the log.
 */
import type { APIGatewayProxyResult } from 'aws-lambda';
import { ZodError } from 'zod';
import {
  DriverConflictError,
  DriverError,
  DriverInputError,
  ObjectNotFoundError,
  ProviderNotFoundError,
  UnsupportedOperationError,
} from '../../drivers/sdk/errors.js';
import {
  ConflictError,
  InputError,
  NotAllowedError,
  NotConfiguredError,
  NotFoundError,
  PayloadTooLargeError,
  StrataError,
  UnavailableError,
  UnprocessableError,
  UnsupportedMediaTypeError,
} from '../core/errors.js';

export interface ErrorBody {
  error: { code: string; message: string; field?: string; [k: string]: unknown };
}

const STATUS: [new (...args: never[]) => Error, number][] = [
  [InputError, 400],
  [PayloadTooLargeError, 413],
  [UnsupportedMediaTypeError, 415],
  [UnprocessableError, 422],
  [NotFoundError, 404],
  [ConflictError, 409],
  [NotAllowedError, 409],
  [UnavailableError, 503],
  [DriverInputError, 400],
  [ProviderNotFoundError, 400],
  [ObjectNotFoundError, 404],
  [DriverConflictError, 409],
  [UnsupportedOperationError, 422],
  // A deployment defect, not the caller's: a 500 that says what the function lacks.
  [NotConfiguredError, 500],
];

export function json(
  statusCode: number,
  body: unknown,
  headers: Record<string, string> = {},
): APIGatewayProxyResult {
  return {
    statusCode,
    headers: { 'content-type': 'application/json', ...headers },
    body: body === undefined ? '' : JSON.stringify(body),
  };
}

/** Turns a zod failure into an InputError naming the first offending field. */
export function inputErrorFromZod(error: ZodError, prefix = ''): InputError {
  const issue = error.issues[0];
  let path = issue?.path.map(String) ?? [];
  if (issue?.code === 'unrecognized_keys') path = [...path, String(issue.keys[0])];
  const field = [prefix, ...path].filter(Boolean).join('.');
  const message =
    issue?.code === 'unrecognized_keys'
      ? `unknown field`
      : (issue?.message ?? 'invalid input').replace(/^Invalid input: /, '');
  return new InputError(`${field || 'body'}: ${message}`, { field: field || 'body' });
}

export function errorResponse(
  e: unknown,
  log: (fields: Record<string, unknown>) => void,
): APIGatewayProxyResult {
  const err = e instanceof ZodError ? inputErrorFromZod(e) : e;
  for (const [type, status] of STATUS) {
    if (err instanceof type) {
      const { field, state, dependents, hostId } =
        err instanceof StrataError ? err.context : ({} as Record<string, unknown>);
      const code = err instanceof StrataError || err instanceof DriverError ? err.code : 'Error';
      const body: ErrorBody = { error: { code, message: err.message } };
      if (typeof field === 'string') body.error.field = field;
      if (state !== undefined) body.error.state = state;
      if (dependents !== undefined) body.error.dependents = dependents;
      // The host a conflict is about (e.g. the one with access to a volume), for the operator.
      if (typeof hostId === 'string' && status === 409) body.error.hostId = hostId;
      return json(status, body, status === 503 ? { 'retry-after': '5' } : {});
    }
  }
  log({
    message: 'unhandled error',
    error: err instanceof Error ? { name: err.name, message: err.message, stack: err.stack } : err,
  });
  return json(500, { error: { code: 'Internal', message: 'internal error; see the service log' } });
}
