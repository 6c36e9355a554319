/**
 * A Lambda function of the embedded stack: its bundled asset from the cloud assembly, run in
 * containers (child processes) with the environment, handler, timeout and memory setting the
 * template gives it, plus what the Lambda service adds (region, the role's credentials, the
 * function's name) and where the local AWS endpoints are.
 *
 * As on Lambda, a container serves one invocation at a time and is reused; more containers start
 * when invocations overlap (up to `maxConcurrency`, then invocations queue), idle ones are stopped,
 * and a container that runs past the function's timeout is killed and the invocation fails with
 * `Sandbox.Timedout`.
 */
import { type ChildProcess, fork } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { createWriteStream, mkdirSync, type WriteStream } from 'node:fs';
import path from 'node:path';
import type { Logger } from '../../../drivers/sdk/types.js';
import type { LocalFunction } from '../assembly/deployment.js';
import type { LocalAwsCredentials } from '../aws/principals.js';
import type { LocalFaults } from '../faults.js';

const BOOTSTRAP = path.join(__dirname, 'runtime-bootstrap.cjs');

/** A failed invocation, named as the Lambda runtime names it (`errorType`). */
export class LambdaInvocationError extends Error {
  constructor(
    readonly errorType: string,
    message: string,
    readonly trace: string[] = [],
  ) {
    super(message);
    this.name = errorType;
    if (trace.length) this.stack = trace.join('\n');
  }
}

export interface LocalFunctionOptions {
  fn: LocalFunction;
  /** The whole environment of a container (template variables, credentials, endpoints). */
  environment: Record<string, string>;
  /** stdout and stderr of every container are appended here (the function's log group). */
  logFile: string;
  /** Containers at once. Default 8. */
  maxConcurrency?: number;
  /** An idle container is stopped after this long (one is kept warm). Default 60 s. */
  idleMs?: number;
  /**
   * Credentials for each new container, as its own session of the function's role (session names
   * `<function>.<n>`), so every AWS request is attributed to the container that made it. Without
   * it every container signs with the environment's credentials.
   */
  credentialsFor?: (sessionName: string) => LocalAwsCredentials;
  /**
   * Where containers keep V8's code cache of the bundles (compiled code, keyed by the bundle file and
   * Node version), so the next container skips parsing and compiling them. Absent: no cache.
   */
  codeCacheDir?: string;
  /** Crash points (the crash matrix); absent in `npm start`. */
  faults?: LocalFaults;
  logger?: Logger;
}

interface Container {
  child: ChildProcess;
  /** The role session this container signs as. */
  session: string;
  ready: Promise<void>;
  busy: boolean;
  idleTimer?: NodeJS.Timeout;
  pending?: { id: string; resolve: (v: unknown) => void; reject: (e: Error) => void };
}

export class LocalLambdaFunction {
  private readonly containers = new Set<Container>();
  private readonly queue: (() => void)[] = [];
  private readonly log: WriteStream;
  private stopped = false;
  private spawned = 0;
  /** How its containers compiled the bundle: from the code cache, or (writing it) from source. */
  readonly codeCache = { loaded: 0, compiled: 0 };

  constructor(private readonly options: LocalFunctionOptions) {
    mkdirSync(path.dirname(options.logFile), { recursive: true });
    this.log = createWriteStream(options.logFile, { flags: 'a' });
  }

  get arn(): string {
    return this.options.fn.arn;
  }

  get name(): string {
    return this.options.fn.name;
  }

  /** How many invocations its containers are serving now (a stopped execution's step may be one). */
  inFlight(): number {
    return [...this.containers].filter((c) => c.busy).length;
  }

  /** Invokes the function with `event`; resolves with its result or rejects with a LambdaInvocationError. */
  async invoke(event: unknown): Promise<unknown> {
    if (this.stopped) throw new LambdaInvocationError('ServiceException', `function ${this.name} is stopped`);
    const container = await this.acquire();
    try {
      return await this.run(container, event);
    } finally {
      this.release(container);
    }
  }

  /** Warms one container (start-up checks that the bundle loads). */
  async warm(): Promise<void> {
    const container = await this.acquire();
    this.release(container);
  }

  /**
   * SIGKILLs the container that signs as `session` (the crash matrix): its invocation fails as a
   * crashed runtime's does. False when no container of this function has that session.
   */
  async crash(session: string): Promise<boolean> {
    const container = [...this.containers].find((c) => c.session === session);
    if (!container) return false;
    await this.kill(container, 'SIGKILL');
    return true;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    const exits = [...this.containers].map((c) => this.kill(c, 'SIGTERM'));
    await Promise.all(exits);
    await new Promise<void>((resolve) => this.log.end(() => resolve()));
  }

  private async acquire(): Promise<Container> {
    for (;;) {
      const idle = [...this.containers].find((c) => !c.busy);
      if (idle) {
        idle.busy = true;
        if (idle.idleTimer) clearTimeout(idle.idleTimer);
        await idle.ready;
        return idle;
      }
      if (this.containers.size < (this.options.maxConcurrency ?? 8)) {
        const container = this.spawn();
        container.busy = true;
        await container.ready;
        return container;
      }
      await new Promise<void>((resolve) => this.queue.push(resolve));
    }
  }

  private release(container: Container): void {
    container.busy = false;
    if (this.containers.has(container) && !this.stopped) {
      container.idleTimer = setTimeout(() => {
        const idleOthers = [...this.containers].filter((c) => c !== container && !c.busy);
        if (!container.busy && idleOthers.length > 0) void this.kill(container, 'SIGTERM');
      }, this.options.idleMs ?? 60_000);
      container.idleTimer.unref();
    }
    this.queue.shift()?.();
  }

  private spawn(): Container {
    const { fn } = this.options;
    this.spawned += 1;
    const session = `${fn.name.slice(0, 56)}.${this.spawned}`;
    const issued = this.options.credentialsFor?.(session);
    const env = issued
      ? {
          ...this.options.environment,
          AWS_ACCESS_KEY_ID: issued.accessKeyId,
          AWS_SECRET_ACCESS_KEY: issued.secretAccessKey,
          AWS_SESSION_TOKEN: issued.sessionToken,
        }
      : this.options.environment;
    const args = [fn.codeDir, fn.handler, ...(this.options.codeCacheDir ? [this.options.codeCacheDir] : [])];
    const child = fork(BOOTSTRAP, args, {
      env,
      cwd: fn.codeDir,
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
      // Lambda caps the heap by the memory setting; so does the container.
      execArgv: [`--max-old-space-size=${Math.max(128, Math.floor(fn.memoryMb * 0.9))}`],
    });
    child.stdout?.pipe(this.log, { end: false });
    child.stderr?.pipe(this.log, { end: false });
    let markReady!: () => void;
    let failReady!: (e: Error) => void;
    const container: Container = {
      child,
      session: issued ? session : fn.name,
      busy: false,
      ready: new Promise<void>((resolve, reject) => {
        markReady = resolve;
        failReady = reject;
      }),
    };
    container.ready.catch(() => undefined);
    child.on('message', (message: Record<string, unknown>) => {
      if (message.ready) {
        if (message.codeCache === 'loaded') this.codeCache.loaded += 1;
        else if (message.codeCache === 'compiled') this.codeCache.compiled += 1;
        markReady();
        return;
      }
      const pending = container.pending;
      if (!pending || message.id !== pending.id) return;
      container.pending = undefined;
      if (message.ok) pending.resolve(message.result);
      else
        pending.reject(
          new LambdaInvocationError(
            String(message.errorType ?? 'Error'),
            String(message.errorMessage ?? ''),
            (message.trace as string[] | undefined) ?? [],
          ),
        );
    });
    child.once('exit', (code, signal) => {
      this.containers.delete(container);
      this.options.faults?.forget(container.session);
      const why = `the ${fn.name} container exited (${signal ?? `code ${code}`})`;
      failReady(new LambdaInvocationError('Runtime.ExitError', why));
      if (container.pending) {
        container.pending.reject(new LambdaInvocationError('Runtime.ExitError', why));
        container.pending = undefined;
      }
      this.queue.shift()?.();
    });
    this.containers.add(container);
    return container;
  }

  private run(container: Container, event: unknown): Promise<unknown> {
    const { fn } = this.options;
    const id = randomUUID();
    const timeoutMs = fn.timeoutSeconds * 1000;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        if (container.pending?.id !== id) return;
        container.pending = undefined;
        this.options.logger?.warn('local function timed out', {
          function: fn.name,
          timeoutSeconds: fn.timeoutSeconds,
        });
        void this.kill(container, 'SIGKILL');
        reject(
          new LambdaInvocationError(
            'Sandbox.Timedout',
            `Task timed out after ${fn.timeoutSeconds.toFixed(2)} seconds`,
          ),
        );
      }, timeoutMs);
      const faults = this.options.faults;
      // The crash matrix may lose the answer here: the container is killed before it is delivered.
      const answer = async (deliver: () => void) => {
        if (faults && (await faults.endInvocation(container.session))) {
          reject(new LambdaInvocationError('Runtime.ExitError', `the ${fn.name} container was killed`));
        } else {
          deliver();
        }
      };
      container.pending = {
        id,
        resolve: (v) => {
          clearTimeout(timer);
          void answer(() => resolve(v));
        },
        reject: (e) => {
          clearTimeout(timer);
          if (e instanceof LambdaInvocationError && e.errorType === 'Runtime.ExitError') reject(e);
          else void answer(() => reject(e));
        },
      };
      faults?.beginInvocation(fn.name, container.session, event);
      container.child.send({ id, event, deadlineMs: Date.now() + timeoutMs, requestId: id });
    });
  }

  private kill(container: Container, signal: NodeJS.Signals): Promise<void> {
    const { child } = container;
    if (container.idleTimer) clearTimeout(container.idleTimer);
    this.containers.delete(container);
    if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
    return new Promise((resolve) => {
      const force = setTimeout(() => child.kill('SIGKILL'), 3000);
      child.once('exit', () => {
        clearTimeout(force);
        resolve();
      });
      child.kill(signal);
    });
  }
}
