/**
 * The host operations of the built-in providers, kept apart from ./builtin.ts so the host runtime
 * bundle does not pull in the control-plane drivers and their AWS SDK clients.
 */
import { nfsHostOperations } from './nfs/host-ops.js';
import type { HostOperationSet } from './sdk/types.js';

/**
 * Host operation sets of the built-in providers (`s3` has none: it needs no host).
 *
 * @example
 * await runHostRequest(request, { operationSets: builtinHostOperationSets, workDir, onEvent });
 */
export const builtinHostOperationSets: readonly HostOperationSet[] = [nfsHostOperations];
