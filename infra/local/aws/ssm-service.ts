/**
 * The embedded stack's Systems Manager Run Command: SendCommand, GetCommandInvocation,
 * ListCommandInvocations and CancelCommand over the real JSON 1.1 protocol, run by the local hosts'
 * agents, plus State Manager for the template's associations.
 *
 * As on AWS: SendCommand is authorized on the document and on each target instance (with the
 * instance's tags as `ssm:resourceTag/<key>` conditions), parameters must be the document's own and
 * match its `allowedPattern`, a command for an offline host stays Pending until its delivery timeout,
 * and output is truncated inline (24,000 characters of stdout) with the full text in S3.
 */
import { randomUUID } from 'node:crypto';
import { decodeHostRequest } from '../../../drivers/sdk/host-protocol.js';
import type { Logger } from '../../../drivers/sdk/types.js';
import type { LocalAssociation, LocalDocument } from '../assembly/deployment.js';
import type { HostFault, LocalFaults } from '../faults.js';
import {
  INLINE_STDERR_CHARS,
  INLINE_STDOUT_CHARS,
  type Invocation,
  type LocalHost,
  type PluginRun,
} from '../hosts/local-host.js';
import { AwsServiceError, type CallContext, type LocalEndpoint, startJsonService } from './aws-server.js';
import type { IamAuthorizer } from './iam-authorizer.js';
import type { LocalAccount, LocalCredentialStore } from './principals.js';

export interface SsmServiceOptions {
  account: LocalAccount;
  credentials: LocalCredentialStore;
  authorizer: IamAuthorizer;
  documents: readonly LocalDocument[];
  hosts: readonly LocalHost[];
  logger?: Logger;
  port?: number;
  /** Crash points (the crash matrix); absent in `npm start`. */
  faults?: LocalFaults;
}

interface Command {
  commandId: string;
  documentName: string;
  parameters: Record<string, string>;
  invocations: Map<string, Invocation>;
  done: Promise<void>[];
}

const COMMAND_ID = /^[0-9a-f-]{36}$/;

/** The host operation a run-document command carries (its `Request`), for the crash matrix's names. */
function operationOf(parameters: Record<string, string>): string {
  try {
    return parameters.Request ? decodeHostRequest(parameters.Request).operation : 'command';
  } catch {
    return 'command';
  }
}

function epoch(date: Date | undefined): number | undefined {
  return date ? date.getTime() / 1000 : undefined;
}

export class LocalSsm {
  private readonly commands = new Map<string, Command>();
  private readonly sendListeners = new Set<(parameters: Record<string, string>) => Promise<void> | void>();
  private readonly documents: Map<string, LocalDocument>;
  private readonly hosts: Map<string, LocalHost>;
  private endpoint?: LocalEndpoint;

  constructor(private readonly options: SsmServiceOptions) {
    this.documents = new Map(options.documents.map((d) => [d.name, d]));
    this.hosts = new Map(options.hosts.map((h) => [h.instanceId, h]));
  }

  get url(): string {
    if (!this.endpoint) throw new Error('the local SSM service is not started');
    return this.endpoint.url;
  }

  async start(): Promise<void> {
    this.endpoint = await startJsonService({
      signingName: 'ssm',
      targetPrefix: 'AmazonSSM',
      jsonVersion: '1.1',
      credentials: this.options.credentials,
      ...(this.options.faults ? { faults: this.options.faults } : {}),
      ...(this.options.logger ? { logger: this.options.logger } : {}),
      ...(this.options.port !== undefined ? { port: this.options.port } : {}),
      operations: {
        SendCommand: (input, ctx) => this.sendCommand(input, ctx),
        GetCommandInvocation: (input, ctx) => this.getCommandInvocation(input, ctx),
        ListCommandInvocations: (input, ctx) => this.listCommandInvocations(input, ctx),
        CancelCommand: (input, ctx) => this.cancelCommand(input, ctx),
      },
    });
  }

  async stop(): Promise<void> {
    for (const host of this.hosts.values()) await host.stop();
    await this.endpoint?.close();
  }

  /** How many commands were sent so far (tests that check a request sent none). */
  get commandCount(): number {
    return this.commands.size;
  }

  /**
   * The parameters of every command sent so far, in order (tests that search them, e.g. for
   * grants that outlive their step). A copy: changing it changes nothing here.
   */
  sentParameters(): Record<string, string>[] {
    return [...this.commands.values()].map((c) => ({ ...c.parameters }));
  }

  /**
   * Calls `listener` with each SendCommand's parameters before the command reaches a host (tests
   * that must see what a command points at while it still exists). Returns a remover.
   */
  onSend(listener: (parameters: Record<string, string>) => Promise<void> | void): () => void {
    this.sendListeners.add(listener);
    return () => this.sendListeners.delete(listener);
  }

  /** Waits for every invocation of a command to end (tests, association runs). */
  async waitFor(commandId: string): Promise<Invocation[]> {
    const command = this.commands.get(commandId);
    if (!command) throw new Error(`no command ${commandId}`);
    await Promise.all(command.done);
    return [...command.invocations.values()];
  }

  private arn(resource: string): string {
    const { region, accountId } = this.options.account;
    return `arn:aws:ssm:${region}:${accountId}:${resource}`;
  }

  private document(name: unknown): LocalDocument {
    const document = typeof name === 'string' ? this.documents.get(name) : undefined;
    if (!document) throw new AwsServiceError('InvalidDocument', `Document ${String(name)} does not exist`);
    return document;
  }

  /** The document's parameters filled in: defaults, required ones, allowedPattern. */
  private parameters(document: LocalDocument, given: Record<string, unknown>): Record<string, string> {
    const declared = document.content.parameters ?? {};
    const out: Record<string, string> = {};
    for (const name of Object.keys(given)) {
      if (!(name in declared)) {
        throw new AwsServiceError(
          'InvalidParameters',
          `parameter ${name} is not a parameter of ${document.name}`,
        );
      }
    }
    for (const [name, spec] of Object.entries(declared)) {
      const raw = given[name];
      const values = Array.isArray(raw) ? raw.map(String) : raw === undefined ? undefined : [String(raw)];
      let value: string;
      if (values === undefined || values.length === 0) {
        if (spec.default === undefined) {
          throw new AwsServiceError('InvalidParameters', `parameter ${name} of ${document.name} is required`);
        }
        value = String(spec.default);
      } else {
        if (values.length !== 1 && spec.type === 'String') {
          throw new AwsServiceError('InvalidParameters', `parameter ${name} takes one value`);
        }
        value = values[0]!;
      }
      if (spec.allowedPattern && !new RegExp(spec.allowedPattern).test(value)) {
        throw new AwsServiceError(
          'InvalidParameters',
          `Parameter "${name}" "${value.slice(0, 40)}" failed to satisfy constraint: ${spec.allowedPattern}`,
        );
      }
      out[name] = value;
    }
    return out;
  }

  private async sendCommand(input: Record<string, unknown>, ctx: CallContext): Promise<unknown> {
    const document = this.document(input.DocumentName);
    const instanceIds = (input.InstanceIds as unknown[] | undefined)?.map(String) ?? [];
    if (instanceIds.length === 0) {
      throw new AwsServiceError(
        'ValidationException',
        'SendCommand needs InstanceIds (Targets are not served locally)',
      );
    }
    const { principal } = ctx.caller;
    await this.options.authorizer.authorize({
      principal,
      action: 'ssm:SendCommand',
      resource: this.arn(`document/${document.name}`),
    });
    const targets: LocalHost[] = [];
    for (const instanceId of instanceIds) {
      const host = this.hosts.get(instanceId);
      if (!host)
        throw new AwsServiceError('InvalidInstanceId', `Instances [${instanceId}] not in a valid state`);
      const context: Record<string, string> = {};
      for (const [key, value] of Object.entries(host.tags)) context[`ssm:resourceTag/${key}`] = value;
      await this.options.authorizer.authorize({
        principal,
        action: 'ssm:SendCommand',
        resource: this.arn(`managed-instance/${instanceId}`),
        context,
      });
      targets.push(host);
    }
    const parameters = this.parameters(document, (input.Parameters as Record<string, unknown>) ?? {});
    for (const listener of this.sendListeners) await listener({ ...parameters });
    const deliveryTimeout = Number(input.TimeoutSeconds ?? 3600);
    const bucket = typeof input.OutputS3BucketName === 'string' ? input.OutputS3BucketName : undefined;
    const prefix = typeof input.OutputS3KeyPrefix === 'string' ? input.OutputS3KeyPrefix : '';
    const command = this.dispatch(document, targets, parameters, {
      comment: String(input.Comment ?? ''),
      deliveryTimeoutSeconds: deliveryTimeout,
      ...(bucket ? { output: { bucket, prefix } } : {}),
      faults: true,
    });
    return {
      Command: {
        CommandId: command.commandId,
        DocumentName: document.name,
        InstanceIds: instanceIds,
        Status: 'Pending',
        RequestedDateTime: Date.now() / 1000,
        Parameters: Object.fromEntries(Object.entries(parameters).map(([k, v]) => [k, [v]])),
      },
    };
  }

  /** Starts `document` on `hosts`; what SendCommand and State Manager both do. */
  dispatch(
    document: LocalDocument,
    hosts: readonly LocalHost[],
    parameters: Record<string, string>,
    options: {
      comment: string;
      deliveryTimeoutSeconds: number;
      output?: { bucket: string; prefix: string };
      /** Sent by SendCommand (State Manager's runs are not points of the crash matrix). */
      faults?: boolean;
    },
  ): Command {
    const command: Command = {
      commandId: randomUUID(),
      documentName: document.name,
      parameters,
      invocations: new Map(),
      done: [],
    };
    for (const host of hosts) {
      const invocation: Invocation = {
        commandId: command.commandId,
        instanceId: host.instanceId,
        documentName: document.name,
        comment: options.comment,
        requestedAt: new Date(),
        status: 'Pending',
        statusDetails: 'Pending',
        plugins: [],
        ...(options.output ? { output: options.output } : {}),
      };
      command.invocations.set(host.instanceId, invocation);
      const fault = options.faults
        ? this.options.faults?.onHostCommand(host.name, operationOf(parameters))
        : undefined;
      command.done.push(
        this.deliver(host, invocation, document, parameters, options.deliveryTimeoutSeconds, fault),
      );
    }
    this.commands.set(command.commandId, command);
    return command;
  }

  private async deliver(
    host: LocalHost,
    invocation: Invocation,
    document: LocalDocument,
    parameters: Record<string, string>,
    deliveryTimeoutSeconds: number,
    fault?: HostFault,
  ): Promise<void> {
    const deadline = Date.now() + deliveryTimeoutSeconds * 1000;
    while (!host.isOnline) {
      if (Date.now() > deadline) {
        invocation.status = 'TimedOut';
        invocation.statusDetails = 'DeliveryTimedOut';
        return;
      }
      if (invocation.status === 'Cancelled') return;
      await new Promise((r) => setTimeout(r, 250));
    }
    try {
      await host.run(invocation, document.content, parameters, fault);
    } catch (error) {
      this.options.logger?.error('local agent failed', { host: host.name, error: (error as Error).message });
      invocation.status = 'Failed';
      invocation.statusDetails = 'Failed';
    }
  }

  private plugin(invocation: Invocation, name: unknown): PluginRun | undefined {
    if (typeof name === 'string' && name) {
      const plugin = invocation.plugins.find((p) => p.name === name);
      if (!plugin && invocation.status !== 'Pending')
        throw new AwsServiceError('InvalidPluginName', `no plugin ${name}`);
      return plugin;
    }
    return invocation.plugins[invocation.plugins.length - 1];
  }

  private invocation(commandId: unknown, instanceId: unknown): Invocation {
    if (typeof commandId !== 'string' || !COMMAND_ID.test(commandId)) {
      throw new AwsServiceError('InvalidCommandId', `invalid command id ${String(commandId)}`);
    }
    const invocation = this.commands.get(commandId)?.invocations.get(String(instanceId));
    if (!invocation)
      throw new AwsServiceError('InvocationDoesNotExist', 'An error occurred (InvocationDoesNotExist)');
    return invocation;
  }

  private async getCommandInvocation(input: Record<string, unknown>, ctx: CallContext): Promise<unknown> {
    await this.options.authorizer.authorize({
      principal: ctx.caller.principal,
      action: 'ssm:GetCommandInvocation',
      resource: '*',
    });
    const invocation = this.invocation(input.CommandId, input.InstanceId);
    const plugin = this.plugin(invocation, input.PluginName);
    const { status, details } =
      invocation.status === 'Pending' || invocation.status === 'InProgress' || !plugin
        ? { status: invocation.status, details: invocation.statusDetails }
        : // A finished invocation reports its (last or named) plugin's own outcome.
          { status: plugin.status, details: plugin.statusDetails };
    return {
      CommandId: invocation.commandId,
      InstanceId: invocation.instanceId,
      Comment: invocation.comment,
      DocumentName: invocation.documentName,
      PluginName: plugin?.name,
      ResponseCode: plugin?.responseCode ?? -1,
      ExecutionStartDateTime: plugin?.start?.toISOString() ?? '',
      ExecutionEndDateTime: plugin?.end?.toISOString() ?? '',
      Status: status,
      StatusDetails: details,
      StandardOutputContent: (plugin?.stdout ?? '').slice(0, INLINE_STDOUT_CHARS),
      StandardOutputUrl: plugin?.outputUrl ?? '',
      StandardErrorContent: (plugin?.stderr ?? '').slice(0, INLINE_STDERR_CHARS),
      StandardErrorUrl: plugin?.errorUrl ?? '',
    };
  }

  private async listCommandInvocations(input: Record<string, unknown>, ctx: CallContext): Promise<unknown> {
    await this.options.authorizer.authorize({
      principal: ctx.caller.principal,
      action: 'ssm:ListCommandInvocations',
      resource: '*',
    });
    const command = typeof input.CommandId === 'string' ? this.commands.get(input.CommandId) : undefined;
    const all = command
      ? [...command.invocations.values()]
      : [...this.commands.values()].flatMap((c) => [...c.invocations.values()]);
    const invocations = all.filter((i) => !input.InstanceId || i.instanceId === input.InstanceId);
    return {
      CommandInvocations: invocations.map((i) => ({
        CommandId: i.commandId,
        InstanceId: i.instanceId,
        DocumentName: i.documentName,
        Comment: i.comment,
        RequestedDateTime: epoch(i.requestedAt),
        Status: i.status,
        StatusDetails: i.statusDetails,
        ...(input.Details
          ? {
              CommandPlugins: i.plugins.map((p) => ({
                Name: p.name,
                Status: p.status,
                StatusDetails: p.statusDetails,
                ResponseCode: p.responseCode,
                ResponseStartDateTime: epoch(p.start),
                ResponseFinishDateTime: epoch(p.end),
                Output: p.stdout.slice(0, 2500),
                StandardOutputUrl: p.outputUrl,
                StandardErrorUrl: p.errorUrl,
              })),
            }
          : {}),
      })),
    };
  }

  private async cancelCommand(input: Record<string, unknown>, ctx: CallContext): Promise<unknown> {
    await this.options.authorizer.authorize({
      principal: ctx.caller.principal,
      action: 'ssm:CancelCommand',
      resource: '*',
    });
    const command = typeof input.CommandId === 'string' ? this.commands.get(input.CommandId) : undefined;
    if (!command) throw new AwsServiceError('InvalidCommandId', `no command ${String(input.CommandId)}`);
    const only = (input.InstanceIds as string[] | undefined) ?? [];
    for (const invocation of command.invocations.values()) {
      if (only.length && !only.includes(invocation.instanceId)) continue;
      if (invocation.status === 'Pending') {
        invocation.status = 'Cancelled';
        invocation.statusDetails = 'Cancelled';
      } else if (invocation.status === 'InProgress') {
        invocation.status = 'Cancelling';
        this.hosts.get(invocation.instanceId)?.cancel(command.commandId);
      }
    }
    return {};
  }

  /**
   * State Manager: applies an association to every host its targets select (`tag:<key>` or
   * `InstanceIds`) and resolves with the invocations once they have run.
   */
  async applyAssociation(association: LocalAssociation): Promise<Invocation[]> {
    const document = this.document(association.documentName);
    const hosts = [...this.hosts.values()].filter((host) =>
      association.targets.some((target) => {
        if (target.Key === 'InstanceIds') return target.Values.includes(host.instanceId);
        if (target.Key.startsWith('tag:'))
          return target.Values.includes(host.tags[target.Key.slice(4)] ?? '');
        return false;
      }),
    );
    const parameters = this.parameters(document, association.parameters);
    const command = this.dispatch(document, hosts, parameters, {
      comment: `association ${association.name}`,
      deliveryTimeoutSeconds: 600,
      ...(association.outputLocation
        ? {
            output: {
              bucket: association.outputLocation.bucket,
              prefix: association.outputLocation.prefix ?? '',
            },
          }
        : {}),
    });
    return this.waitFor(command.commandId);
  }
}
