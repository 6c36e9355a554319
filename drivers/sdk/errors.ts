/**
 * The driver SDK's errors. Drivers throw these; Strata's core maps them to its own categories at the
 * edge (input, not-found, conflict, unavailable), and the host runtime maps them to the wire
 * `{ code, message, retryable }` of {@link HostError}. `code` is stable across that boundary, so a
 * typed error thrown on a host comes back as the same class on the control plane.
 */
import type { HostError } from './host-protocol.js';

/** Free-form facts about a failure (store id, object path, host id…) kept for logs. */
export type DriverErrorContext = Record<string, unknown>;

/** Options every driver error accepts. */
export interface DriverErrorOptions {
  cause?: unknown;
  context?: DriverErrorContext;
}

/**
 * Base of every SDK error. `code` is a stable machine name, `retryable` tells workflows whether
 * trying again may help.
 *
 * @example
 * throw new DriverError('share answered garbage', { code: 'BadShare', context: { storeId } });
 */
export class DriverError extends Error {
  readonly code: string;
  readonly retryable: boolean;
  readonly context: DriverErrorContext;

  constructor(message: string, options: DriverErrorOptions & { code?: string; retryable?: boolean } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = options.code ?? 'DriverFailure';
    this.retryable = options.retryable ?? false;
    this.context = options.context ?? {};
  }
}

/**
 * The caller passed something malformed (bad id, path outside the store, negative size…).
 *
 * @example
 * throw new DriverInputError('sizeBytes must be positive', { context: { field: 'sizeBytes' } });
 */
export class DriverInputError extends DriverError {
  constructor(message: string, options: DriverErrorOptions = {}) {
    super(message, { ...options, code: 'InvalidInput', retryable: false });
  }
}

/**
 * The object is not in the store.
 *
 * @example
 * throw new ObjectNotFoundError('volumes/vol-1.qcow2 not found', { context: { path } });
 */
export class ObjectNotFoundError extends DriverError {
  constructor(message: string, options: DriverErrorOptions = {}) {
    super(message, { ...options, code: 'ObjectNotFound', retryable: false });
  }
}

/**
 * The store holds something that contradicts the request (same id, different size) or another
 * job holds the object.
 *
 * @example
 * throw new DriverConflictError('vol-1 exists with another size', { context: { path } });
 */
export class DriverConflictError extends DriverError {
  constructor(message: string, options: DriverErrorOptions = {}) {
    super(message, { ...options, code: 'Conflict', retryable: false });
  }
}

/**
 * The storage or a host is unreachable for now; a retry may succeed.
 *
 * @example
 * throw new DriverUnavailableError('bucket endpoint timed out', { cause: err });
 */
export class DriverUnavailableError extends DriverError {
  constructor(message: string, options: DriverErrorOptions = {}) {
    super(message, { ...options, code: 'Unavailable', retryable: true });
  }
}

/**
 * The driver does not do this (e.g. resizing an S3 object); Strata should pick another path.
 *
 * @example
 * throw new UnsupportedOperationError('s3 objects cannot be resized');
 */
export class UnsupportedOperationError extends DriverError {
  constructor(message: string, options: DriverErrorOptions = {}) {
    super(message, { ...options, code: 'Unsupported', retryable: false });
  }
}

/**
 * A host operation failed; carries the host's own report.
 *
 * @example
 * throw new HostOperationError({ code: 'DeadlineExceeded', message: 'took too long', retryable: true });
 */
export class HostOperationError extends DriverError {
  readonly hostError: HostError;

  constructor(hostError: HostError, options: DriverErrorOptions = {}) {
    super(hostError.message, { ...options, code: hostError.code, retryable: hostError.retryable });
    this.hostError = hostError;
  }
}

/**
 * No provider of that name is registered.
 *
 * @example
 * throw new ProviderNotFoundError('acme-iscsi');
 */
export class ProviderNotFoundError extends DriverError {
  constructor(providerName: string, options: DriverErrorOptions = {}) {
    super(`no data store provider named '${providerName}' is registered`, {
      ...options,
      code: 'ProviderNotFound',
      context: { provider: providerName, ...options.context },
    });
  }
}

/**
 * A provider name was registered twice: a wiring bug, so it fails start-up.
 *
 * @example
 * throw new DuplicateProviderError('nfs');
 */
export class DuplicateProviderError extends DriverError {
  constructor(providerName: string, options: DriverErrorOptions = {}) {
    super(`a data store provider named '${providerName}' is already registered`, {
      ...options,
      code: 'DuplicateProvider',
      context: { provider: providerName, ...options.context },
    });
  }
}

/**
 * True for any SDK error.
 *
 * @example
 * if (isDriverError(err) && err.retryable) await retryLater();
 */
export function isDriverError(error: unknown): error is DriverError {
  return error instanceof DriverError;
}

/**
 * Turns a host's `{ code, message, retryable }` back into the typed error it came from, so a
 * control-plane caller can `catch (e) { if (e instanceof ObjectNotFoundError) … }` whatever the
 * channel. Codes the SDK does not know stay a {@link HostOperationError}.
 *
 * @example
 * const err = driverErrorFromHostError({ code: 'ObjectNotFound', message: 'gone', retryable: false });
 * err instanceof ObjectNotFoundError; // true
 */
export function driverErrorFromHostError(
  hostError: HostError,
  context: DriverErrorContext = {},
  cause: HostOperationError = new HostOperationError(hostError, { context }),
): DriverError {
  const options = { cause, context: { ...cause.context, ...context } };
  switch (hostError.code) {
    case 'InvalidInput':
      return new DriverInputError(hostError.message, options);
    case 'ObjectNotFound':
      return new ObjectNotFoundError(hostError.message, options);
    case 'Conflict':
      return new DriverConflictError(hostError.message, options);
    case 'Unavailable':
      return new DriverUnavailableError(hostError.message, options);
    case 'Unsupported':
      return new UnsupportedOperationError(hostError.message, options);
    default:
      return cause;
  }
}

/**
 * The wire form of any thrown value: driver errors keep their code and retryable flag, anything
 * else becomes a non-retryable `fallbackCode`.
 *
 * @example
 * const wire = toHostError(new ObjectNotFoundError('gone')); // { code: 'ObjectNotFound', … }
 */
export function toHostError(error: unknown, fallbackCode = 'HostOperationFailed'): HostError {
  if (error instanceof DriverError) {
    return { code: error.code, message: error.message, retryable: error.retryable };
  }
  const message = error instanceof Error ? error.message : String(error);
  return { code: fallbackCode, message, retryable: false };
}
