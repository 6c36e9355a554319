/**
 * Helpers for driver authors' tests. Nothing here depends on jest, so it is safe to import
 * anywhere; the jest-based suite lives in ./conformance.ts.
 */
import { randomUUID } from 'node:crypto';
import { noopLogger } from './logger.js';
import type { DriverContext, HostInvoker, Logger } from './types.js';

/**
 * A {@link DriverContext} for tests: a fresh job id, a silent logger, progress recorded in
 * `progressReports`, and a host invoker that refuses to run anything unless you give one.
 *
 * @example
 * const ctx = createTestDriverContext({
 *   host: createInProcessHostInvoker({ operationSets: [nfsHostOperations], workDirRoot: tmp }),
 * });
 */
export function createTestDriverContext(
  options: { jobId?: string; logger?: Logger; host?: HostInvoker; services?: Record<string, unknown> } = {},
): DriverContext & { progressReports: { percent: number; detail?: Record<string, unknown> }[] } {
  const progressReports: { percent: number; detail?: Record<string, unknown> }[] = [];
  return {
    jobId: options.jobId ?? `job-${randomUUID()}`,
    logger: options.logger ?? noopLogger,
    host: options.host ?? {
      async run() {
        throw new Error('this test context has no host invoker');
      },
    },
    services: options.services ?? {},
    progressReports,
    async progress(percent, detail) {
      progressReports.push(detail === undefined ? { percent } : { percent, detail });
    },
  };
}
