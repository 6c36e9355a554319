/**
 * The domain's errors. Four categories (input, not-found, conflict, not-allowed) plus "unavailable"
 * for transient trouble. They are mapped to HTTP statuses and workflow error names only at the edge
 * (`functions/handlers/http.ts`, `functions/handlers/task.ts`).
 */

export interface ErrorContext {
  /** The request field at fault, for input errors (dot path, e.g. `scope.zoneId`). */
  field?: string;
  [key: string]: unknown;
}

export abstract class StrataError extends Error {
  abstract readonly code: string;
  readonly context: ErrorContext;

  constructor(message: string, context: ErrorContext = {}, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.context = context;
  }
}

/** The caller sent something malformed (400). */
export class InputError extends StrataError {
  readonly code = 'InvalidInput';
}

/** The request is well-formed but cannot be carried out on these values (422). */
export class UnprocessableError extends StrataError {
  readonly code = 'Unprocessable';
}

/** No such entity (404). */
export class NotFoundError extends StrataError {
  readonly code = 'NotFound';
}

/** The entity is not in a state that allows this, or another request won a race (409). */
export class ConflictError extends StrataError {
  readonly code = 'Conflict';
}

/** The operation is not allowed by policy or reference rules (409 at the API, a distinct code). */
export class NotAllowedError extends StrataError {
  readonly code = 'NotAllowed';
}

/** A dependency is unavailable for now; retrying later may succeed (503, retried in workflows). */
export class UnavailableError extends StrataError {
  readonly code = 'Unavailable';
}

/**
 * This function was deployed without a capability the call needs (a table, a bucket, the host
 * channel, a flow's ARN): a wiring defect of the deployment, not of the request. Only the call that
 * needs the capability fails, with a message naming what is missing (500 at the API, never retried).
 */
export class NotConfiguredError extends StrataError {
  readonly code = 'NotConfigured';
}

/** The request body is larger than the API accepts (413). */
export class PayloadTooLargeError extends StrataError {
  readonly code = 'PayloadTooLarge';
}

/** The request body is not in the one media type the API takes, application/json (415). */
export class UnsupportedMediaTypeError extends StrataError {
  readonly code = 'UnsupportedMediaType';
}

export function isStrataError(e: unknown): e is StrataError {
  return e instanceof StrataError;
}
