/**
 * The host runtime: runs one provider host operation for one request, on the host, and reports it
 * as {@link HostEvent}s. It is the only door from the wire to host code, so it validates everything
 * first: the request envelope, then the provider and operation names, then the operation's own
 * arguments. An operation never sees unvalidated input.
 */
import { randomUUID } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { ZodError } from 'zod';
import { toDriverError } from './base-driver.js';
import { DriverError, DriverInputError, DuplicateProviderError, HostOperationError } from './errors.js';
import { HOST_BUILD, PROBE_OPERATION, RUNTIME_PROVIDER } from './host-build.js';
import { HostStorage } from './host-config.js';
import { probeHost } from './host-probe.js';
import { type HostError, type HostEvent, type HostRequest, HostRequestSchema } from './host-protocol.js';
import { noopLogger } from './logger.js';
import { RequestJournal } from './request-journal.js';
import type { HostInvoker, HostOperation, HostOperationContext, HostOperationSet, Logger } from './types.js';

/** The final event of a run. */
export type HostResultEvent = Extract<HostEvent, { type: 'result' }>;

/**
 * Error codes the runtime itself reports (besides the operations' own `DriverError` codes).
 * The first four mean the request was malformed: retrying the same request cannot help.
 *
 * @example
 * if (result.ok === false && result.error.code === HostRuntimeErrorCode.UnknownOperation) upgradeHost();
 */
export const HostRuntimeErrorCode = {
  InvalidRequest: 'InvalidRequest',
  UnknownProvider: 'UnknownProvider',
  UnknownOperation: 'UnknownOperation',
  InvalidArguments: 'InvalidArguments',
  DeadlineExceeded: 'DeadlineExceeded',
  Aborted: 'Aborted',
  HostOperationFailed: 'HostOperationFailed',
  /** The request was made for another build of the host runtime: upgrade the host. */
  HostBuildMismatch: 'HostBuildMismatch',
} as const;
export type HostRuntimeErrorCode = (typeof HostRuntimeErrorCode)[keyof typeof HostRuntimeErrorCode];

/**
 * True when a failed result says the request itself was bad (the host-main exit code 2).
 *
 * @example
 * process.exitCode = isRequestError(result.error) ? 2 : 1;
 */
export function isRequestError(error: HostError): boolean {
  return (
    error.code === HostRuntimeErrorCode.InvalidRequest ||
    error.code === HostRuntimeErrorCode.UnknownProvider ||
    error.code === HostRuntimeErrorCode.UnknownOperation ||
    error.code === HostRuntimeErrorCode.InvalidArguments
  );
}

/** Options of {@link runHostRequest}. */
export interface RunHostRequestOptions {
  /** The host operations this host knows, one set per provider. */
  operationSets: readonly HostOperationSet[];
  /** The host's private directory; created if missing and handed to the operation. */
  workDir: string;
  logger?: Logger;
  /** Receives every event in order: progress events, then the one result event (also returned). */
  onEvent?: (event: HostEvent) => void;
  /** Stops the operation early (e.g. the runtime got SIGTERM); reported as retryable `Aborted`. */
  signal?: AbortSignal;
  /** This runtime's build id (default: the one baked into the bundle, `dev` from sources). */
  build?: string;
  /**
   * The storage roots from this host's own configuration file (see ./host-config.ts). Without it
   * every operation that proves a mount path is refused (`HostNotConfigured`).
   */
  storage?: HostStorage;
}

/**
 * Validates `request`, runs the named host operation with a deadline, and resolves with the result
 * event. Never rejects for an operation failure: failures are `{ ok: false, error }` results, so the
 * caller always has exactly one result to print. It rejects only when `operationSets` itself is
 * inconsistent (a wiring bug).
 *
 * @example
 * const result = await runHostRequest(request, {
 *   operationSets: builtinHostOperationSets,
 *   workDir: '/var/lib/strata/host',
 *   onEvent: (e) => process.stdout.write(`${JSON.stringify(e)}\n`),
 * });
 */
export async function runHostRequest(
  request: unknown,
  options: RunHostRequestOptions,
): Promise<HostResultEvent> {
  const sets = indexOperationSets(options.operationSets);
  const baseLogger = options.logger ?? noopLogger;
  const finish = (result: HostResultEvent): HostResultEvent => {
    options.onEvent?.(result);
    return result;
  };
  const fail = (code: string, message: string, retryable = false): HostResultEvent =>
    finish({ type: 'result', ok: false, error: { code, message, retryable } });

  const parsed = HostRequestSchema.safeParse(request);
  if (!parsed.success) {
    return fail(HostRuntimeErrorCode.InvalidRequest, `invalid request: ${describeIssue(parsed.error)}`);
  }
  const req = parsed.data;
  const logger = withFields(baseLogger, {
    requestId: req.requestId,
    jobId: req.jobId,
    hostId: req.hostId,
    provider: req.provider,
    operation: req.operation,
  });

  const build = options.build ?? HOST_BUILD;
  if (req.provider === RUNTIME_PROVIDER && req.operation === PROBE_OPERATION) {
    // Answers whatever build asked: the probe is how the control plane learns a host's build.
    return finish({ type: 'result', ok: true, result: await probeHost(build) });
  }
  if (req.build !== undefined && req.build !== build) {
    return fail(
      HostRuntimeErrorCode.HostBuildMismatch,
      `this host runs Strata host runtime build ${build}, but the control plane expects build ${req.build}: ` +
        'upgrade the host (run the InstallHostRuntime association, see docs/host-onboarding.md)',
    );
  }
  const set = sets.get(req.provider);
  if (!set) return fail(HostRuntimeErrorCode.UnknownProvider, `this host has no provider '${req.provider}'`);
  const operation: HostOperation | undefined = Object.hasOwn(set.operations, req.operation)
    ? set.operations[req.operation]
    : undefined;
  if (!operation) {
    return fail(
      HostRuntimeErrorCode.UnknownOperation,
      `provider '${req.provider}' has no operation '${req.operation}'`,
    );
  }
  const args = operation.args.safeParse(req.args);
  if (!args.success) {
    return fail(
      HostRuntimeErrorCode.InvalidArguments,
      `invalid arguments: ${describeIssue(args.error, 'args')}`,
    );
  }

  // A request delivered again (a lost answer, a replayed step) runs once: the journal answers with
  // the recorded result, or waits for the delivery that is running it.
  const journal = new RequestJournal<HostResultEvent>(options.workDir);
  const fingerprint = RequestJournal.fingerprint([req.jobId, req.provider, req.operation, req.args]);
  const entry = await journal.begin(req.requestId, fingerprint, Date.now() + req.deadlineSeconds * 1000);
  if (entry.kind === 'recorded') {
    logger.info('host operation answered from the journal');
    return finish(entry.result);
  }
  if (entry.kind === 'mismatch') return fail(HostRuntimeErrorCode.InvalidRequest, entry.message);
  const outcome = await runOperation(req, operation, args.data, options, logger);
  await entry
    .record(outcome)
    .catch((e: unknown) =>
      logger.warn('host operation result not journaled', { error: (e as Error).message }),
    );
  return finish(outcome);
}

/** Runs a validated request's operation with its deadline; the result event, never a rejection. */
async function runOperation(
  req: HostRequest,
  operation: HostOperation,
  data: unknown,
  options: RunHostRequestOptions,
  logger: Logger,
): Promise<HostResultEvent> {
  const finish = (result: HostResultEvent) => result;
  const controller = new AbortController();
  const deadlineMs = req.deadlineSeconds * 1000;
  const timer = setTimeout(() => {
    controller.abort(
      new DriverError(`deadline of ${req.deadlineSeconds}s exceeded`, {
        code: HostRuntimeErrorCode.DeadlineExceeded,
        retryable: true,
      }),
    );
  }, deadlineMs);
  const onOuterAbort = () =>
    controller.abort(
      new DriverError('host runtime stopped', { code: HostRuntimeErrorCode.Aborted, retryable: true }),
    );
  if (options.signal?.aborted) onOuterAbort();
  options.signal?.addEventListener('abort', onOuterAbort, { once: true });

  let lastPercent = -1;
  const ctx: HostOperationContext = {
    jobId: req.jobId,
    hostId: req.hostId,
    workDir: options.workDir,
    logger,
    signal: controller.signal,
    storage: options.storage ?? HostStorage.unconfigured('the host runtime was given no configuration'),
    progress(percent, detail) {
      if (controller.signal.aborted || !Number.isFinite(percent)) return;
      const clamped = Math.max(0, Math.min(100, Math.round(percent * 100) / 100));
      if (clamped === lastPercent && detail === undefined) return;
      lastPercent = clamped;
      options.onEvent?.(
        detail === undefined
          ? { type: 'progress', percent: clamped }
          : { type: 'progress', percent: clamped, detail },
      );
    },
  };

  // The race matters for operations that ignore the signal: the deadline still ends the request.
  // Built before the first await so an abort that comes early is not missed.
  const aborted = new Promise<never>((_, reject) => {
    if (controller.signal.aborted) reject(controller.signal.reason);
    controller.signal.addEventListener('abort', () => reject(controller.signal.reason), { once: true });
  });
  aborted.catch(() => undefined);

  const started = Date.now();
  try {
    await Promise.race([mkdir(options.workDir, { recursive: true }), aborted]);
    logger.info('host operation started', { deadlineSeconds: req.deadlineSeconds });
    const value = await Promise.race([operation.run(data, ctx), aborted]);
    logger.info('host operation done', { durationMs: Date.now() - started });
    return finish({ type: 'result', ok: true, result: value ?? null });
  } catch (error) {
    const hostError = toWireError(controller.signal.aborted ? controller.signal.reason : error);
    logger.error('host operation failed', { durationMs: Date.now() - started, ...hostError });
    return finish({ type: 'result', ok: false, error: hostError });
  } finally {
    clearTimeout(timer);
    options.signal?.removeEventListener('abort', onOuterAbort);
    if (!controller.signal.aborted)
      controller.abort(new DriverError('request finished', { code: 'Finished' }));
  }
}

function toWireError(error: unknown): HostError {
  const wrapped = toDriverError(error, 'host operation');
  // Unknown failures keep a host-specific code so the control plane can tell them from its own.
  const code = wrapped.code === 'DriverFailure' ? HostRuntimeErrorCode.HostOperationFailed : wrapped.code;
  return { code, message: wrapped.message, retryable: wrapped.retryable };
}

function indexOperationSets(operationSets: readonly HostOperationSet[]): Map<string, HostOperationSet> {
  const sets = new Map<string, HostOperationSet>();
  for (const set of operationSets) {
    if (sets.has(set.provider)) throw new DuplicateProviderError(set.provider);
    sets.set(set.provider, set);
  }
  return sets;
}

function describeIssue(error: ZodError, root?: string): string {
  const issue = error.issues[0];
  if (!issue) return 'malformed';
  const path = [root, ...issue.path.map(String)].filter(Boolean).join('.');
  return path ? `${path}: ${issue.message}` : issue.message;
}

function withFields(logger: Logger, fields: Record<string, unknown>): Logger {
  return {
    debug: (m, f) => logger.debug(m, { ...fields, ...f }),
    info: (m, f) => logger.info(m, { ...fields, ...f }),
    warn: (m, f) => logger.warn(m, { ...fields, ...f }),
    error: (m, f) => logger.error(m, { ...fields, ...f }),
  };
}

/** Options of {@link createInProcessHostInvoker}. */
export interface InProcessHostInvokerOptions {
  operationSets: readonly HostOperationSet[];
  /** Each host gets `<workDirRoot>/<hostId>` as its private work dir. */
  workDirRoot: string;
  logger?: Logger;
  /** Used when a call names no job (default `in-process`). */
  defaultJobId?: string;
  /** Used when a call sets no deadline (default one hour). */
  defaultDeadlineSeconds?: number;
  /** Sees every progress event, with the host it came from. */
  onProgress?: (hostId: string, event: Extract<HostEvent, { type: 'progress' }>) => void;
  /** The hosts' storage configuration (one for all of them); without it storage operations are refused. */
  storage?: HostStorage;
}

/**
 * A {@link HostInvoker} that runs host operations in this process through {@link runHostRequest}.
 * Arguments and results go through JSON as they would on the wire, so a driver that passes
 * something unserialisable fails here as it would on a real host. Useful for driver tests and the
 * conformance kit; Strata's embedded stack uses a child process instead.
 *
 * @example
 * const storage = HostStorage.fromConfig({ storageRoots: [{ path: tmp, kind: 'directory' }] });
 * const host = createInProcessHostInvoker({ operationSets: [nfsHostOperations], workDirRoot: tmp, storage });
 * await host.run('host-1', { provider: 'nfs', operation: 'checkMount', args: { mountPath: `${tmp}/share` }, jobId: 'job-1' });
 */
export function createInProcessHostInvoker(options: InProcessHostInvokerOptions): HostInvoker {
  return {
    async run<T = unknown>(hostId: string, call: Parameters<HostInvoker['run']>[1]): Promise<T> {
      if (!/^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/.test(hostId)) {
        throw new DriverInputError('hostId must be a safe id', { context: { field: 'hostId' } });
      }
      const request: HostRequest = {
        version: 1,
        requestId: randomUUID(),
        jobId: call.jobId ?? options.defaultJobId ?? 'in-process',
        hostId,
        provider: call.provider,
        operation: call.operation,
        args: JSON.parse(JSON.stringify(call.args ?? {})) as Record<string, unknown>,
        deadlineSeconds: call.deadlineSeconds ?? options.defaultDeadlineSeconds ?? 3600,
      };
      const result = await runHostRequest(request, {
        operationSets: options.operationSets,
        workDir: join(options.workDirRoot, hostId),
        logger: options.logger,
        ...(options.storage ? { storage: options.storage } : {}),
        onEvent: (event) => {
          if (event.type === 'progress') options.onProgress?.(hostId, event);
        },
      });
      if (!result.ok)
        throw new HostOperationError(result.error, {
          context: { hostId, provider: call.provider, operation: call.operation },
        });
      return JSON.parse(JSON.stringify(result.result ?? null)) as T;
    },
  };
}
