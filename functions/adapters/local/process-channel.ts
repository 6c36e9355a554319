/**
 * The endpoint channel of the embedded stack: each "host" is a work directory, and each command is a
 * child process running the host runtime there, the way SSM Run Command runs it on a real host.
 *
 * Safety: the request travels as base64 JSON in argv and the process is spawned without a shell, so
 * nothing in a request can be interpreted as a command; the host's instance id becomes a directory
 * name only when it is a plain path segment.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import {
  encodeHostRequest,
  type HostError,
  type HostEvent,
  HostEventSchema,
  type HostRequest,
} from '../../../drivers/sdk/host-protocol.js';
import type { Logger } from '../../../drivers/sdk/types.js';
import { ConflictError, InputError, NotFoundError } from '../../core/errors.js';
import type { Host } from '../../core/model.js';
import type { CommandStatus, EndpointChannel } from '../../core/ports.js';

export interface LocalProcessChannelOptions {
  /** Parent of the hosts' work directories (`<hostsRoot>/<instanceId>`), created on demand. */
  hostsRoot: string;
  /**
   * The host runtime command, before `--request-b64 <b64> --work-dir <dir>` is appended.
   * Default: this Node binary running `drivers/host-main.ts` through tsx.
   */
  command?: string[];
  /** Added to (or, with `undefined`, removed from) this process's environment for the children. */
  env?: Record<string, string | undefined>;
  /** Commands running at once on one host; later ones wait as `pending`. Default 4. */
  maxConcurrentPerHost?: number;
  /** Finished commands remembered for `status` and requestId idempotency. Default 1000. */
  maxFinishedCommands?: number;
  /** Seconds past the request's own deadline before the channel kills a silent runtime. Default 30. */
  killGraceSeconds?: number;
  logger?: Logger;
}

/** What a host's instance id must look like to become a directory name. */
const SAFE_SEGMENT = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const STDERR_TAIL_CHARS = 4_096;
/** A stdout line longer than this is not a protocol event we could use; drop it rather than buffer it. */
const MAX_LINE_CHARS = 8 * 1024 * 1024;
const SIGKILL_AFTER_MS = 5_000;

interface CommandRecord {
  commandId: string;
  requestId: string;
  instanceId: string;
  encoded: string;
  deadlineSeconds: number;
  status: CommandStatus;
  child?: ChildProcess;
  /** True while the command occupies one of its host's concurrency slots. */
  holdsSlot: boolean;
  stderrTail: string;
  finished: boolean;
  done: Promise<void>;
  markDone: () => void;
}

/**
 * Runs host operations as local child processes.
 *
 * @example
 * const channel = new LocalProcessChannel({ hostsRoot: '.strata/hosts' });
 * const { commandId } = await channel.send(host, request);
 * const status = await channel.status(host, commandId); // pending → running → succeeded | failed
 * await channel.stop();
 */
export class LocalProcessChannel implements EndpointChannel {
  private readonly hostsRoot: string;
  private readonly command: string[];
  private readonly env: NodeJS.ProcessEnv;
  private readonly maxConcurrent: number;
  private readonly maxFinished: number;
  private readonly killGraceMs: number;
  private readonly logger?: Logger;

  private readonly commands = new Map<string, CommandRecord>();
  private readonly byRequestId = new Map<string, string>();
  private readonly queues = new Map<string, CommandRecord[]>();
  private readonly running = new Map<string, number>();
  private finishedCount = 0;
  private stopping = false;

  constructor(options: LocalProcessChannelOptions) {
    this.hostsRoot = path.resolve(options.hostsRoot);
    this.command = options.command ?? defaultHostCommand();
    if (this.command.length === 0 || !this.command[0]) throw new InputError('host command is empty');
    this.env = { ...process.env };
    for (const [name, value] of Object.entries(options.env ?? {})) {
      if (value === undefined) delete this.env[name];
      else this.env[name] = value;
    }
    this.maxConcurrent = Math.max(1, options.maxConcurrentPerHost ?? 4);
    this.maxFinished = Math.max(1, options.maxFinishedCommands ?? 1000);
    this.killGraceMs = (options.killGraceSeconds ?? 30) * 1000;
    this.logger = options.logger;
  }

  async send(host: Host, request: HostRequest): Promise<{ commandId: string }> {
    if (this.stopping) throw new Error('the local process channel is stopped');
    const { instanceId } = host;
    if (!SAFE_SEGMENT.test(instanceId)) {
      throw new InputError(`host instance id ${JSON.stringify(instanceId)} is not a safe directory name`, {
        field: 'instanceId',
      });
    }
    let encoded: string;
    try {
      encoded = encodeHostRequest(request);
    } catch (cause) {
      throw new InputError('invalid host request', { field: 'request' }, { cause });
    }

    const knownId = this.byRequestId.get(request.requestId);
    const known = knownId ? this.commands.get(knownId) : undefined;
    if (known) {
      if (known.instanceId !== instanceId || known.encoded !== encoded) {
        throw new ConflictError(`request ${request.requestId} was already sent with other content`, {
          requestId: request.requestId,
          commandId: known.commandId,
        });
      }
      return { commandId: known.commandId };
    }

    let markDone!: () => void;
    const done = new Promise<void>((resolve) => {
      markDone = resolve;
    });
    const record: CommandRecord = {
      commandId: randomUUID(),
      requestId: request.requestId,
      instanceId,
      encoded,
      deadlineSeconds: request.deadlineSeconds,
      status: { state: 'pending' },
      holdsSlot: false,
      stderrTail: '',
      finished: false,
      done,
      markDone,
    };
    this.commands.set(record.commandId, record);
    this.byRequestId.set(record.requestId, record.commandId);
    const queue = this.queues.get(instanceId) ?? [];
    queue.push(record);
    this.queues.set(instanceId, queue);
    this.pump(instanceId);
    return { commandId: record.commandId };
  }

  async status(host: Host, commandId: string): Promise<CommandStatus> {
    const record = this.commands.get(commandId);
    // As with SSM, a command is only visible together with the instance it was sent to.
    if (!record || record.instanceId !== host.instanceId) {
      throw new NotFoundError(`no command ${commandId} on host ${host.instanceId}`, {
        commandId,
        instanceId: host.instanceId,
      });
    }
    return structuredClone(record.status);
  }

  /** Fails queued commands, terminates running ones and resolves once every child has exited. */
  async stop(): Promise<void> {
    this.stopping = true;
    for (const queue of this.queues.values()) {
      for (const record of queue.splice(0)) {
        this.finish(
          record,
          hostError('HostProcessDied', 'the local process channel stopped before it ran', true),
        );
      }
    }
    const live = [...this.commands.values()].filter((r) => !r.finished);
    for (const record of live) this.terminate(record);
    await Promise.all(live.map((r) => r.done));
  }

  private pump(instanceId: string): void {
    const queue = this.queues.get(instanceId);
    while (queue && queue.length > 0 && (this.running.get(instanceId) ?? 0) < this.maxConcurrent) {
      const record = queue.shift() as CommandRecord;
      record.holdsSlot = true;
      this.running.set(instanceId, (this.running.get(instanceId) ?? 0) + 1);
      this.start(record).catch((error: unknown) => {
        this.finish(
          record,
          hostError('HostProcessDied', `could not start the host runtime: ${message(error)}`, true),
        );
      });
    }
    if (queue?.length === 0) this.queues.delete(instanceId);
  }

  private async start(record: CommandRecord): Promise<void> {
    const workDir = path.join(this.hostsRoot, record.instanceId);
    await mkdir(workDir, { recursive: true });
    if (this.stopping) {
      this.finish(
        record,
        hostError('HostProcessDied', 'the local process channel stopped before it ran', true),
      );
      return;
    }
    const [file, ...baseArgs] = this.command as [string, ...string[]];
    const child = spawn(file, [...baseArgs, '--request-b64', record.encoded, '--work-dir', workDir], {
      cwd: workDir,
      env: this.env,
      stdio: ['ignore', 'pipe', 'pipe'],
      shell: false,
      windowsHide: true,
    });
    record.child = child;
    trackChild(child);
    record.status = { state: 'running' };
    this.logger?.debug('host command started', {
      commandId: record.commandId,
      requestId: record.requestId,
      instanceId: record.instanceId,
      pid: child.pid,
    });

    let result: Extract<HostEvent, { type: 'result' }> | undefined;
    const onLine = (line: string) => {
      const trimmed = line.trim();
      if (!trimmed.startsWith('{')) return;
      let parsed: unknown;
      try {
        parsed = JSON.parse(trimmed);
      } catch {
        return;
      }
      const event = HostEventSchema.safeParse(parsed);
      if (!event.success) return;
      if (event.data.type === 'progress') {
        if (record.finished) return;
        record.status = { state: 'running', progress: event.data.percent, progressDetail: event.data.detail };
      } else {
        result = event.data;
      }
    };
    const flushStdout = readLines(child.stdout, onLine);
    readLines(child.stderr, (line) => {
      record.stderrTail = `${record.stderrTail}${line}\n`.slice(-STDERR_TAIL_CHARS);
      this.logger?.debug('host stderr', { commandId: record.commandId, line });
    });

    let timedOut = false;
    const deadlineTimer = setTimeout(
      () => {
        timedOut = true;
        this.terminate(record);
      },
      record.deadlineSeconds * 1000 + this.killGraceMs,
    );
    deadlineTimer.unref();

    let spawnError: Error | undefined;
    child.once('error', (error) => {
      spawnError = error;
      // A child that never started (ENOENT, EACCES) has no pid and may never emit 'close'.
      if (child.pid === undefined) {
        clearTimeout(deadlineTimer);
        this.finish(
          record,
          hostError('HostProcessDied', `could not run the host runtime: ${error.message}`, true),
        );
      }
    });
    child.once('close', (code, signal) => {
      clearTimeout(deadlineTimer);
      flushStdout();
      if (result) {
        this.finish(record, result.ok ? { result: result.result } : result.error);
        return;
      }
      const tail = record.stderrTail.trim();
      const stderr = tail ? `; stderr: ${tail.slice(-2_000)}` : '';
      if (spawnError) {
        this.finish(
          record,
          hostError('HostProcessDied', `could not run the host runtime: ${spawnError.message}`, true),
        );
      } else if (timedOut) {
        this.finish(
          record,
          hostError(
            'HostCommandTimedOut',
            `no result within ${record.deadlineSeconds} s (plus grace)${stderr}`,
            true,
          ),
        );
      } else if (code === 2) {
        // The runtime's "invalid request" exit: sending the same request again cannot help.
        this.finish(
          record,
          hostError('HostRequestRejected', `the host runtime rejected the request${stderr}`, false),
        );
      } else {
        const how = signal ? `was killed by ${signal}` : `exited with code ${code}`;
        this.finish(
          record,
          hostError('HostProcessDied', `the host process ${how} without a result${stderr}`, true),
        );
      }
    });
  }

  private terminate(record: CommandRecord): void {
    const child = record.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGTERM');
    const killer = setTimeout(() => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }, SIGKILL_AFTER_MS);
    killer.unref();
  }

  private finish(record: CommandRecord, outcome: { result: unknown } | HostError): void {
    if (record.finished) return;
    record.finished = true;
    const progress = record.status.progress;
    record.status =
      'result' in outcome
        ? { state: 'succeeded', progress: 100, result: outcome.result }
        : { state: 'failed', ...(progress === undefined ? {} : { progress }), error: outcome };
    record.child = undefined;
    if (record.status.state === 'failed') {
      this.logger?.warn('host command failed', {
        commandId: record.commandId,
        requestId: record.requestId,
        instanceId: record.instanceId,
        error: record.status.error,
      });
    }
    if (record.holdsSlot) {
      record.holdsSlot = false;
      const left = (this.running.get(record.instanceId) ?? 1) - 1;
      if (left > 0) this.running.set(record.instanceId, left);
      else this.running.delete(record.instanceId);
    }
    this.finishedCount++;
    this.evictFinished();
    record.markDone();
    if (!this.stopping) this.pump(record.instanceId);
  }

  private evictFinished(): void {
    // Map iteration is insertion order, so the oldest commands go first.
    for (const [commandId, record] of this.commands) {
      if (this.finishedCount <= this.maxFinished) break;
      if (!record.finished) continue;
      this.commands.delete(commandId);
      if (this.byRequestId.get(record.requestId) === commandId) this.byRequestId.delete(record.requestId);
      this.finishedCount--;
    }
  }
}

/**
 * Host processes still running when this process exits without `stop()` would be orphaned (and keep
 * writing into the hosts' work dirs); kill them on any ordinary exit.
 */
const liveChildren = new Set<ChildProcess>();
let exitHookInstalled = false;

function trackChild(child: ChildProcess): void {
  liveChildren.add(child);
  child.once('close', () => liveChildren.delete(child));
  child.once('error', () => liveChildren.delete(child));
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.once('exit', () => {
    for (const live of liveChildren) live.kill('SIGKILL');
  });
}

/** Calls `onLine` for each complete line as data arrives; the returned function flushes the rest. */
function readLines(stream: NodeJS.ReadableStream | null, onLine: (line: string) => void): () => void {
  if (!stream) return () => {};
  let buffer = '';
  let discarding = false;
  stream.setEncoding('utf8');
  stream.on('data', (chunk: string) => {
    buffer += chunk;
    let newline = buffer.indexOf('\n');
    while (newline >= 0) {
      const line = buffer.slice(0, newline);
      buffer = buffer.slice(newline + 1);
      if (!discarding) onLine(line);
      discarding = false;
      newline = buffer.indexOf('\n');
    }
    if (buffer.length > MAX_LINE_CHARS) {
      buffer = '';
      discarding = true;
    }
  });
  return () => {
    if (buffer && !discarding) onLine(buffer);
    buffer = '';
  };
}

function hostError(code: string, text: string, retryable: boolean): HostError {
  return { code, message: text, retryable };
}

function message(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** `node --import <tsx> <repo>/drivers/host-main.ts`, with paths from this file's location. */
function defaultHostCommand(): string[] {
  // From __filename, not __dirname: when an ES module imports this file through tsx, __dirname is
  // not a directory (seen: "data:text"), while __filename still is this file's path.
  const repoRoot = path.resolve(path.dirname(__filename), '..', '..', '..');
  // An absolute loader URL, because the child's cwd is the host's work dir, where `tsx` won't resolve.
  const tsxLoader = pathToFileURL(require.resolve('tsx')).href;
  return [process.execPath, '--import', tsxLoader, path.join(repoRoot, 'drivers', 'host-main.ts')];
}
