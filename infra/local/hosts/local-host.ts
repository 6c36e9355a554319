/**
 * A local hypervisor host of the embedded stack, and its "SSM agent": it runs the steps of an SSM
 * Command document the way the agent does on a managed instance. `aws:runShellScript` writes the
 * commands to a script and runs it with /bin/sh; `aws:downloadContent` fetches an S3 object with
 * the host role's credentials. Output goes to the command-output bucket, uploaded with those same
 * credentials, so the host role's synthesized policy is what allows it.
 *
 * The host's filesystem root is a directory (`root`). The agent places every path it handles itself
 * (download destinations, working directories, its own orchestration folder) under it, and scripts
 * get `STRATA_HOST_ROOT=<root>`, which the Strata documents put in front of every host path; on a
 * real host the variable is unset and the root is `/`.
 */
import { spawn } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { GetBucketEncryptionCommand, GetObjectCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import {
  DEFAULT_HOST_CONFIG_PATH,
  type HostConfigInput,
  HostConfigSchema,
} from '../../../drivers/sdk/host-config.js';
import type { Logger } from '../../../drivers/sdk/types.js';
import type { SsmDocumentContent } from '../assembly/deployment.js';
import type { LocalAwsCredentials } from '../aws/principals.js';
import type { HostFault } from '../faults.js';

/** SSM's limits on what GetCommandInvocation returns inline. */
export const INLINE_STDOUT_CHARS = 24_000;
export const INLINE_STDERR_CHARS = 8_000;

export type InvocationStatus =
  | 'Pending'
  | 'InProgress'
  | 'Success'
  | 'Failed'
  | 'TimedOut'
  | 'Cancelling'
  | 'Cancelled';

/** One plugin (step) run of an invocation. */
export interface PluginRun {
  name: string;
  status: InvocationStatus;
  statusDetails: string;
  responseCode: number;
  stdout: string;
  stderr: string;
  start?: Date;
  end?: Date;
  outputUrl?: string;
  errorUrl?: string;
}

/** A command on one host, as GetCommandInvocation reports it. */
export interface Invocation {
  commandId: string;
  instanceId: string;
  documentName: string;
  comment: string;
  requestedAt: Date;
  status: InvocationStatus;
  statusDetails: string;
  plugins: PluginRun[];
  output?: { bucket: string; prefix: string };
}

export interface LocalHostOptions {
  /** The host's name (`local-host-1`). */
  name: string;
  /** Its SSM managed-instance id (`mi-` and 17 hex digits). */
  instanceId: string;
  /** The directory that is this host's `/`. */
  root: string;
  tags: Record<string, string>;
  /** The host role's credentials (what a hybrid activation gives the agent). */
  credentials: LocalAwsCredentials;
  region: string;
  /** The local S3 endpoint. */
  s3Endpoint: string;
  /** PATH and the like for scripts (the host's own environment). */
  environment?: Record<string, string>;
  logger?: Logger;
}

interface Running {
  cancel: () => void;
}

/** Replaces `{{ Name }}` with parameter values (validated by the caller against the document). */
export function substituteParameters(text: string, parameters: Record<string, string>): string {
  return text.replace(/\{\{\s*([A-Za-z0-9_.-]+)\s*\}\}/g, (whole, name: string) =>
    name in parameters ? parameters[name]! : whole,
  );
}

export class LocalHost {
  readonly name: string;
  readonly instanceId: string;
  readonly root: string;
  readonly tags: Record<string, string>;
  private readonly s3: S3Client;
  private readonly running = new Map<string, Running>();
  private online = true;
  /** Process groups of the commands running now, for pause/resume. */
  private readonly groups = new Set<number>();
  private paused = false;

  constructor(private readonly options: LocalHostOptions) {
    this.name = options.name;
    this.instanceId = options.instanceId;
    this.root = path.resolve(options.root);
    this.tags = options.tags;
    this.s3 = new S3Client({
      region: options.region,
      endpoint: options.s3Endpoint,
      forcePathStyle: true,
      credentials: options.credentials,
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
    });
  }

  /**
   * Writes the host runtime's own configuration, `/etc/strata/host.json` under this host's root,
   * as the operator does when onboarding a real host (docs/host-onboarding.md): the storage roots
   * it may touch. The API has no say in it.
   */
  async configure(config: HostConfigInput): Promise<string> {
    const file = this.hostPath(DEFAULT_HOST_CONFIG_PATH);
    await mkdir(path.dirname(file), { recursive: true });
    await writeFile(file, `${JSON.stringify(HostConfigSchema.parse(config), null, 2)}\n`);
    return file;
  }

  /** Whether the agent is connected (an offline host leaves commands Pending until they time out). */
  get isOnline(): boolean {
    return this.online;
  }

  setOnline(online: boolean): void {
    this.online = online;
  }

  /**
   * Freezes the host's command processes (SIGSTOP to each command's process group), and every one
   * that starts until {@link resume}: a host that hangs mid-operation, as a test needs one. A cancel
   * still ends a frozen command (its SIGKILL follows the SIGTERM after five seconds).
   */
  pause(): void {
    this.paused = true;
    for (const pid of this.groups) signalGroup(pid, 'SIGSTOP');
  }

  resume(): void {
    this.paused = false;
    for (const pid of this.groups) signalGroup(pid, 'SIGCONT');
  }

  /** A path on this host, under its root. */
  hostPath(absolute: string): string {
    const relative = path.posix.normalize(absolute).replace(/^\/+/, '');
    const full = path.join(this.root, relative);
    if (full !== this.root && !full.startsWith(`${this.root}${path.sep}`)) {
      throw new Error(`${absolute} is outside the host's root`);
    }
    return full;
  }

  /**
   * Runs a document's steps for one invocation, updating `invocation` as it goes. Resolves when the
   * invocation has ended (its output uploaded when an output bucket was given). `fault` (the crash
   * matrix) kills the command's processes as they start, or lets them finish and then loses what
   * they reported, as an agent that died before reporting does.
   */
  async run(
    invocation: Invocation,
    document: SsmDocumentContent,
    parameters: Record<string, string>,
    fault?: HostFault,
  ): Promise<void> {
    let cancelled = false;
    let current: (() => void) | undefined;
    this.running.set(invocation.commandId, {
      cancel: () => {
        cancelled = true;
        current?.();
      },
    });
    invocation.status = 'InProgress';
    invocation.statusDetails = 'InProgress';
    try {
      for (const step of document.mainSteps) {
        const plugin: PluginRun = {
          name: step.name,
          status: 'InProgress',
          statusDetails: 'InProgress',
          responseCode: -1,
          stdout: '',
          stderr: '',
          start: new Date(),
        };
        invocation.plugins.push(plugin);
        if (cancelled) {
          this.finishPlugin(plugin, 'Cancelled', 'Cancelled', -1);
          continue;
        }
        if (!this.preconditionHolds(step.precondition)) {
          // SSM skips a step whose precondition is false and reports it as successful.
          plugin.stdout = `Step execution skipped due to unsatisfied preconditions: ${JSON.stringify(step.precondition)}`;
          this.finishPlugin(plugin, 'Success', 'Success', 0);
          continue;
        }
        const inputs = JSON.parse(substituteParameters(JSON.stringify(step.inputs), parameters)) as Record<
          string,
          unknown
        >;
        try {
          if (step.action === 'aws:runShellScript') {
            await this.runShell(
              invocation,
              plugin,
              inputs,
              (cancel) => {
                current = cancel;
              },
              fault,
            );
          } else if (step.action === 'aws:downloadContent') {
            await this.download(plugin, inputs);
          } else {
            plugin.stderr = `the local agent does not run ${step.action} steps`;
            this.finishPlugin(plugin, 'Failed', 'Failed', 1);
          }
        } catch (error) {
          plugin.stderr += `${(error as Error).message}\n`;
          this.finishPlugin(plugin, 'Failed', 'Failed', 1);
        }
        current = undefined;
        if (cancelled && plugin.status === 'InProgress')
          this.finishPlugin(plugin, 'Cancelled', 'Cancelled', -1);
        await this.uploadOutput(invocation, plugin);
        if (plugin.status !== 'Success') {
          // Later steps are not run once one failed, as SSM does for schema 2.2 documents by default.
          for (const rest of document.mainSteps.slice(invocation.plugins.length)) {
            invocation.plugins.push({
              name: rest.name,
              status: 'Cancelled',
              statusDetails: 'Skipped',
              responseCode: -1,
              stdout: '',
              stderr: '',
            });
          }
          break;
        }
      }
    } finally {
      this.running.delete(invocation.commandId);
    }
    const failed = invocation.plugins.find((p) => p.status !== 'Success');
    invocation.status = cancelled ? 'Cancelled' : failed ? failed.status : 'Success';
    invocation.statusDetails = cancelled ? 'Cancelled' : failed ? failed.statusDetails : 'Success';
  }

  /** CancelCommand: stops the running step (SIGTERM, then SIGKILL). */
  cancel(commandId: string): boolean {
    const running = this.running.get(commandId);
    if (!running) return false;
    running.cancel();
    return true;
  }

  async stop(): Promise<void> {
    for (const running of this.running.values()) running.cancel();
    this.s3.destroy();
  }

  private preconditionHolds(precondition: unknown): boolean {
    if (!precondition) return true;
    const equals = (precondition as { StringEquals?: unknown[] }).StringEquals;
    if (Array.isArray(equals) && equals[0] === 'platformType')
      return equals[1] === 'Linux' && process.platform === 'linux';
    return false;
  }

  private finishPlugin(plugin: PluginRun, status: InvocationStatus, details: string, code: number): void {
    plugin.status = status;
    plugin.statusDetails = details;
    plugin.responseCode = code;
    plugin.end = new Date();
  }

  private async runShell(
    invocation: Invocation,
    plugin: PluginRun,
    inputs: Record<string, unknown>,
    onCancel: (cancel: () => void) => void,
    fault?: HostFault,
  ): Promise<void> {
    const lines = Array.isArray(inputs.runCommand)
      ? inputs.runCommand.map(String)
      : [String(inputs.runCommand ?? '')];
    const folder = this.hostPath(
      `/var/lib/amazon/ssm/${this.instanceId}/document/orchestration/${invocation.commandId}/${plugin.name}`,
    );
    await mkdir(folder, { recursive: true });
    const script = path.join(folder, '_script.sh');
    await writeFile(script, `${lines.join('\n')}\n`, { mode: 0o700 });
    const cwd =
      typeof inputs.workingDirectory === 'string' && inputs.workingDirectory
        ? this.hostPath(inputs.workingDirectory)
        : folder;
    await mkdir(cwd, { recursive: true });
    const timeoutSeconds = Number(inputs.timeoutSeconds ?? 3600);
    await new Promise<void>((resolve) => {
      const child = spawn('/bin/sh', [script], {
        cwd,
        env: {
          PATH: process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin',
          HOME: this.hostPath('/root'),
          LANG: 'C.UTF-8',
          ...this.options.environment,
          STRATA_HOST_ROOT: this.root,
        },
        stdio: ['ignore', 'pipe', 'pipe'],
        detached: true,
      });
      const group = child.pid;
      if (group) {
        this.groups.add(group);
        if (this.paused) signalGroup(group, 'SIGSTOP');
        if (fault === 'kill-at-start') signalGroup(group, 'SIGKILL');
      }
      let timedOut = false;
      let cancelled = false;
      const killGroup = (signal: NodeJS.Signals) => {
        try {
          if (child.pid) process.kill(-child.pid, signal);
        } catch {
          // already gone
        }
      };
      const terminate = () => {
        killGroup('SIGTERM');
        setTimeout(() => killGroup('SIGKILL'), 5000).unref();
      };
      onCancel(() => {
        cancelled = true;
        terminate();
      });
      const timer = setTimeout(() => {
        timedOut = true;
        terminate();
      }, timeoutSeconds * 1000);
      child.stdout.on('data', (d: Buffer) => {
        plugin.stdout += d.toString('utf8');
      });
      child.stderr.on('data', (d: Buffer) => {
        plugin.stderr += d.toString('utf8');
      });
      child.once('error', (error) => {
        plugin.stderr += `${error.message}\n`;
      });
      child.once('close', (code) => {
        clearTimeout(timer);
        if (group) this.groups.delete(group);
        if (fault === 'lose-result') {
          plugin.stdout = '';
          plugin.stderr = 'the agent stopped before it reported (crash matrix)\n';
          this.finishPlugin(plugin, 'Failed', 'Failed', -1);
        } else if (cancelled) this.finishPlugin(plugin, 'Cancelled', 'Cancelled', -1);
        else if (timedOut) this.finishPlugin(plugin, 'TimedOut', 'ExecutionTimedOut', -1);
        else if (code === 0) this.finishPlugin(plugin, 'Success', 'Success', 0);
        else this.finishPlugin(plugin, 'Failed', 'Failed', code ?? -1);
        resolve();
      });
    });
  }

  /** aws:downloadContent from S3: `sourceInfo` is JSON `{ "path": "https://s3…/bucket/key" }`. */
  private async download(plugin: PluginRun, inputs: Record<string, unknown>): Promise<void> {
    if (inputs.sourceType !== 'S3')
      throw new Error(`sourceType ${String(inputs.sourceType)} is not supported locally`);
    const info = typeof inputs.sourceInfo === 'string' ? JSON.parse(inputs.sourceInfo) : inputs.sourceInfo;
    const location = parseS3HttpUrl(String((info as { path?: unknown }).path ?? ''));
    if (!location) throw new Error(`sourceInfo.path is not an S3 URL: ${JSON.stringify(info)}`);
    const destination = this.hostPath(String(inputs.destinationPath ?? '/tmp'));
    await mkdir(destination, { recursive: true });
    const target = path.join(destination, path.posix.basename(location.key));
    const object = await this.s3.send(new GetObjectCommand({ Bucket: location.bucket, Key: location.key }));
    await pipeline(object.Body as NodeJS.ReadableStream, createWriteStream(target));
    plugin.stdout += `Content downloaded to ${String(inputs.destinationPath ?? '/tmp')}\n`;
    this.finishPlugin(plugin, 'Success', 'Success', 0);
  }

  /** Uploads a step's stdout and stderr as the agent does: checks the bucket's encryption, then puts. */
  private async uploadOutput(invocation: Invocation, plugin: PluginRun): Promise<void> {
    if (!invocation.output) return;
    const { bucket, prefix } = invocation.output;
    const base = [prefix, invocation.commandId, this.instanceId, 'awsrunShellScript', plugin.name]
      .filter(Boolean)
      .join('/');
    try {
      await this.s3.send(new GetBucketEncryptionCommand({ Bucket: bucket }));
      for (const [stream, text] of [
        ['stdout', plugin.stdout],
        ['stderr', plugin.stderr],
      ] as const) {
        if (!text) continue;
        await this.s3.send(
          new PutObjectCommand({
            Bucket: bucket,
            Key: `${base}/${stream}`,
            Body: text,
            ACL: 'bucket-owner-full-control',
          }),
        );
      }
      plugin.outputUrl = `${this.options.s3Endpoint}/${bucket}/${base}/stdout`;
      plugin.errorUrl = `${this.options.s3Endpoint}/${bucket}/${base}/stderr`;
    } catch (error) {
      // The real agent logs this on the host and the output is simply missing from the bucket.
      this.options.logger?.warn('local agent could not upload command output', {
        host: this.name,
        commandId: invocation.commandId,
        error: (error as Error).message,
      });
    }
  }
}

/** Bucket and key from an S3 HTTPS URL (path-style `s3.<region>.amazonaws.com/bucket/key` or virtual-hosted). */
export function parseS3HttpUrl(url: string): { bucket: string; key: string } | undefined {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return undefined;
  }
  const segments = parsed.pathname.split('/').filter(Boolean).map(decodeURIComponent);
  const virtual = /^(.+)\.s3[.-]/.exec(parsed.hostname);
  if (virtual?.[1] && segments.length > 0) return { bucket: virtual[1], key: segments.join('/') };
  if (/^s3[.-]/.test(parsed.hostname) && segments.length > 1) {
    const [bucket, ...key] = segments;
    return { bucket: bucket!, key: key.join('/') };
  }
  return undefined;
}

function signalGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    // already gone
  }
}
