/**
 * The host runtime executable: what SSM Run Command starts on a hypervisor host, and what the
 * embedded stack spawns as a child process per host.
 *
 *   node host-main.js --request-b64 <base64 request> --work-dir <dir>
 *   node host-main.js --work-dir <dir> < request.json      (request on stdin: JSON or base64)
 *   node host-main.js --lazy-restore-daemon <stateDir>     (a lazy restore's NBD daemon, ./nfs/lazy-daemon.ts)
 *
 * stdout carries NDJSON host events only (progress lines, then exactly one result line); logs go to
 * stderr as JSON lines. Exit code: 0 ok, 1 the operation failed, 2 the request was invalid.
 * `STRATA_HOST_WORK_DIR` stands in for `--work-dir`.
 *
 * The host's storage roots come from its own configuration file (./sdk/host-config.ts): `--config
 * <file>`, else `STRATA_HOST_CONFIG`, else `/etc/strata/host.json` under `STRATA_HOST_ROOT` (unset on
 * a real host; the embedded stack's local hosts have their own root). The file is read per request,
 * so editing it needs no restart; a missing or invalid file refuses every storage operation.
 */
import path from 'node:path';
import { builtinHostOperationSets } from './builtin-host.js';
import { LAZY_DAEMON_FLAG, runLazyRestoreDaemon } from './nfs/lazy-daemon.js';
import { DEFAULT_HOST_CONFIG_PATH, loadHostStorage } from './sdk/host-config.js';
import type { HostEvent } from './sdk/host-protocol.js';
import { HostRuntimeErrorCode, isRequestError, runHostRequest } from './sdk/host-runtime.js';
import { createJsonLogger } from './sdk/logger.js';
import type { HostOperationSet } from './sdk/types.js';

/** Exit codes of the host runtime. */
export const HostExitCode = { Ok: 0, OperationFailed: 1, InvalidRequest: 2 } as const;
export type HostExitCode = (typeof HostExitCode)[keyof typeof HostExitCode];

/** Streams the host runtime talks to; `process` by default. */
export interface HostMainIo {
  stdout: { write(chunk: string): unknown };
  stderr: { write(chunk: string): unknown };
  readStdin(): Promise<string>;
  env: Record<string, string | undefined>;
  signal?: AbortSignal;
}

interface ParsedArgs {
  requestB64?: string;
  workDir?: string;
  config?: string;
}

function parseArgs(argv: readonly string[]): ParsedArgs | string {
  const parsed: ParsedArgs = {};
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const value = argv[i + 1];
    if (flag === '--request-b64' || flag === '--work-dir' || flag === '--config') {
      if (value === undefined || value.startsWith('--')) return `${flag} needs a value`;
      if (flag === '--request-b64') parsed.requestB64 = value;
      else if (flag === '--config') parsed.config = value;
      else parsed.workDir = value;
      i++;
    } else {
      return `unknown argument ${JSON.stringify(flag)}`;
    }
  }
  return parsed;
}

// The request as sent: base64 (the SSM parameter form) or, on stdin, plain JSON as well.
function decodeRequest(text: string): unknown {
  const trimmed = text.trim();
  if (trimmed.startsWith('{')) return JSON.parse(trimmed);
  if (!/^[A-Za-z0-9+/=\s]+$/.test(trimmed)) throw new Error('request is neither JSON nor base64');
  return JSON.parse(Buffer.from(trimmed.replace(/\s+/g, ''), 'base64').toString('utf8'));
}

/**
 * Runs one host request end to end and returns the exit code. Exported so tests and other
 * launchers can drive it without a process; the file runs it itself when executed.
 *
 * @example
 * const code = await hostMain(['--request-b64', encodeHostRequest(req), '--work-dir', '/tmp/h1']);
 */
export async function hostMain(
  argv: readonly string[],
  io: HostMainIo = processIo(),
  operationSets: readonly HostOperationSet[] = builtinHostOperationSets,
): Promise<HostExitCode> {
  const emit = (event: HostEvent) => io.stdout.write(`${JSON.stringify(event)}\n`);
  const invalid = (message: string): HostExitCode => {
    emit({
      type: 'result',
      ok: false,
      error: { code: HostRuntimeErrorCode.InvalidRequest, message, retryable: false },
    });
    return HostExitCode.InvalidRequest;
  };

  const args = parseArgs(argv);
  if (typeof args === 'string') return invalid(args);
  const workDir = args.workDir ?? io.env.STRATA_HOST_WORK_DIR;
  if (!workDir) return invalid('--work-dir is required');

  let request: unknown;
  try {
    request = decodeRequest(args.requestB64 ?? (await io.readStdin()));
  } catch (error) {
    return invalid(`cannot decode request: ${error instanceof Error ? error.message : String(error)}`);
  }

  const logger = createJsonLogger({ stream: io.stderr, bindings: { component: 'strata-host' } });
  const configFile =
    args.config ??
    io.env.STRATA_HOST_CONFIG ??
    path.join(io.env.STRATA_HOST_ROOT || '/', DEFAULT_HOST_CONFIG_PATH);
  const storage = await loadHostStorage(configFile);
  if (!storage.config) logger.warn('host storage is not configured', { configFile });
  const result = await runHostRequest(request, {
    operationSets,
    workDir,
    logger,
    storage,
    onEvent: emit,
    signal: io.signal,
  });
  if (result.ok) return HostExitCode.Ok;
  return isRequestError(result.error) ? HostExitCode.InvalidRequest : HostExitCode.OperationFailed;
}

function processIo(): HostMainIo {
  const controller = new AbortController();
  // SSM cancels a command with SIGTERM; report it as an aborted (retryable) result, not a silent death.
  const stop = () => controller.abort();
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
  return {
    stdout: process.stdout,
    stderr: process.stderr,
    env: process.env,
    signal: controller.signal,
    async readStdin() {
      if (process.stdin.isTTY) return '';
      const chunks: Buffer[] = [];
      for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
      return Buffer.concat(chunks).toString('utf8');
    },
  };
}

if (require.main === module && process.argv[2] === LAZY_DAEMON_FLAG) {
  // A lazy restore's daemon (./nfs/lazy-daemon.ts), started detached by host operation lazyRestoreStart.
  runLazyRestoreDaemon(process.argv[3] ?? '').catch((error: unknown) => {
    process.stderr.write(`${error instanceof Error ? error.stack : String(error)}\n`);
    process.exitCode = 1;
  });
} else if (require.main === module) {
  hostMain(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
      process.removeAllListeners('SIGTERM');
      process.removeAllListeners('SIGINT');
    },
    (error: unknown) => {
      // Only a wiring bug gets here (e.g. two operation sets for one provider).
      process.stderr.write(`${error instanceof Error ? error.stack : String(error)}\n`);
      process.stdout.write(
        `${JSON.stringify({ type: 'result', ok: false, error: { code: 'HostRuntimeFailure', message: String(error), retryable: false } })}\n`,
      );
      process.exitCode = HostExitCode.OperationFailed;
    },
  );
}
