/**
 * A local deployment of the synthesized template: what CloudFormation would create, reduced to
 * what the embedded stack runs. Each resource gets a physical id the way CloudFormation names it
 * (`<stack>-<LogicalId>-<SUFFIX>` unless the template names it), every intrinsic is resolved against
 * those ids, and the resources Strata uses are read into typed views: functions with their
 * environment and role, roles with their policies, state machines with their definitions, the
 * API's routes, SSM documents and associations, schedule groups, scheduled rules, tables, buckets
 * and bucket policies, and the file assets `cdk deploy` would publish.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import type { NamedPolicy, PolicyDocument } from '../aws/iam-authorizer.js';
import type { LocalAccount } from '../aws/principals.js';
import type { CfnResource, CloudAssembly } from './cloud-assembly.js';
import { type ResolveEnv, resolve } from './intrinsics.js';

export interface LocalFunction {
  logicalId: string;
  name: string;
  arn: string;
  roleArn: string;
  /** `index.handler`: file and export inside the code directory. */
  handler: string;
  timeoutSeconds: number;
  memoryMb: number;
  environment: Record<string, string>;
  /** The bundled asset directory (what `cdk deploy` zips). */
  codeDir: string;
}

export interface LocalRole {
  logicalId: string;
  name: string;
  arn: string;
  policies: NamedPolicy[];
  /** Managed policies attached by ARN (AWS-managed ones have no document in the template). */
  managedPolicyArns: string[];
}

export interface LocalStateMachine {
  logicalId: string;
  name: string;
  arn: string;
  roleArn: string;
  definition: Record<string, unknown>;
}

export interface LocalTable {
  logicalId: string;
  name: string;
  arn: string;
  /** The resolved AWS::DynamoDB::Table properties (key schema, indexes, TTL). */
  properties: Record<string, unknown>;
}

export interface LocalBucket {
  logicalId: string;
  name: string;
  arn: string;
  policy?: PolicyDocument;
}

/** An SSM document's content (schema 2.2 Command documents). */
export interface SsmDocumentContent {
  schemaVersion: string;
  description?: string;
  parameters?: Record<
    string,
    { type: string; description?: string; allowedPattern?: string; default?: unknown }
  >;
  mainSteps: { action: string; name: string; precondition?: unknown; inputs: Record<string, unknown> }[];
}

export interface LocalDocument {
  logicalId: string;
  name: string;
  documentType: string;
  content: SsmDocumentContent;
}

export interface LocalAssociation {
  logicalId: string;
  name: string;
  documentName: string;
  targets: { Key: string; Values: string[] }[];
  parameters: Record<string, string[]>;
  outputLocation?: { bucket: string; prefix?: string };
}

export interface LocalRule {
  logicalId: string;
  scheduleExpression?: string;
  enabled: boolean;
  /** Each target with the constant input the rule sends it (absent: the scheduled event itself). */
  targets: { arn: string; input?: unknown }[];
}

export interface LocalApiMethod {
  httpMethod: string;
  /** The resource path, e.g. `/` or `/{proxy+}`. */
  path: string;
  authorizationType: string;
  /** The Lambda function an AWS_PROXY integration calls. */
  functionArn?: string;
}

export interface LocalApi {
  restApiId: string;
  stageName: string;
  methods: LocalApiMethod[];
}

export interface LocalAsset {
  hash: string;
  source: string;
  packaging: 'file' | 'zip';
  bucket: string;
  key: string;
}

/** CloudFormation appends a random suffix to generated names; ours is per data directory. */
const SUFFIX = /^[A-Z0-9]{12}$/;

export class LocalDeployment {
  readonly stackName: string;
  private readonly physical = new Map<string, string>();
  private readonly env: ResolveEnv;

  constructor(
    readonly assembly: CloudAssembly,
    readonly account: LocalAccount,
    /** Twelve uppercase letters or digits, stable for one data directory. */
    readonly suffix: string,
  ) {
    if (!SUFFIX.test(suffix))
      throw new Error(`deployment suffix must be 12 uppercase letters or digits: ${suffix}`);
    this.stackName = assembly.stackName;
    const pseudo = {
      'AWS::Region': account.region,
      'AWS::AccountId': account.accountId,
      'AWS::Partition': account.partition,
      'AWS::URLSuffix': 'amazonaws.com',
      'AWS::StackName': this.stackName,
      'AWS::StackId': `arn:aws:cloudformation:${account.region}:${account.accountId}:stack/${this.stackName}/${suffix.toLowerCase()}`,
      'AWS::NotificationARNs': '',
    };
    const parameters: Record<string, string> = {};
    for (const [name, parameter] of Object.entries(assembly.template.Parameters ?? {})) {
      if (parameter.Default !== undefined) parameters[name] = String(parameter.Default);
    }
    this.env = {
      pseudo,
      parameters,
      ref: (id) => this.ref(id),
      getAtt: (id, attribute) => this.getAtt(id, attribute),
    };
    // Names the template gives resources are evaluated once every generated id is known.
    for (const id of Object.keys(this.resources)) this.physical.set(id, this.generatedId(id));
    for (const [id, resource] of Object.entries(this.resources)) {
      const given = this.givenName(resource);
      if (given !== undefined) this.physical.set(id, given);
    }
  }

  get resources(): Record<string, CfnResource> {
    return this.assembly.template.Resources;
  }

  /** Resolves intrinsics in any part of the template. */
  resolve<T = unknown>(value: unknown, where = '$'): T {
    return resolve(value, this.env, where) as T;
  }

  private resource(id: string): CfnResource {
    const resource = this.resources[id];
    if (!resource) throw new Error(`the template has no resource ${id}`);
    return resource;
  }

  private props(id: string): Record<string, unknown> {
    return this.resource(id).Properties ?? {};
  }

  private generatedId(id: string): string {
    const type = this.resource(id).Type;
    const base = `${this.stackName}-${id}`;
    switch (type) {
      case 'AWS::S3::Bucket':
        return `${base.slice(0, 50)}-${this.suffix}`.toLowerCase();
      case 'AWS::IAM::Role':
        return `${base.slice(0, 50)}-${this.suffix}`;
      case 'AWS::Lambda::Function':
        return `${base.slice(0, 50)}-${this.suffix}`;
      case 'AWS::ApiGateway::RestApi':
        return this.suffix.slice(0, 10).toLowerCase();
      case 'AWS::ApiGateway::Resource':
        return createHash('sha256').update(`${this.suffix}/${id}`).digest('hex').slice(0, 6);
      default:
        return `${base}-${this.suffix}`;
    }
  }

  /** The physical name the template sets itself, where the resource type has one. */
  private givenName(resource: CfnResource): string | undefined {
    const p = resource.Properties ?? {};
    const field: Record<string, string> = {
      'AWS::S3::Bucket': 'BucketName',
      'AWS::DynamoDB::Table': 'TableName',
      'AWS::IAM::Role': 'RoleName',
      'AWS::Lambda::Function': 'FunctionName',
      'AWS::StepFunctions::StateMachine': 'StateMachineName',
      'AWS::SSM::Document': 'Name',
      'AWS::Scheduler::ScheduleGroup': 'Name',
      'AWS::Logs::LogGroup': 'LogGroupName',
      'AWS::SSM::Association': 'AssociationName',
      // Ref of a stage is its name (the API callers' execute-api ARNs are built from it).
      'AWS::ApiGateway::Stage': 'StageName',
    };
    const key = field[resource.Type];
    if (!key || p[key] === undefined) return undefined;
    return this.resolve<string>(p[key], `${resource.Type}.${key}`);
  }

  /** What `Ref` gives for each resource type. */
  ref(id: string): string {
    const name = this.physical.get(id);
    if (name === undefined) throw new Error(`Ref to unknown resource ${id}`);
    const { Type } = this.resource(id);
    if (Type === 'AWS::StepFunctions::StateMachine') return this.getAtt(id, 'Arn');
    return name;
  }

  getAtt(id: string, attribute: string): string {
    const name = this.physical.get(id);
    if (name === undefined) throw new Error(`Fn::GetAtt on unknown resource ${id}`);
    const { region, accountId } = this.account;
    const { Type } = this.resource(id);
    const arn = (): string => {
      switch (Type) {
        case 'AWS::S3::Bucket':
          return `arn:aws:s3:::${name}`;
        case 'AWS::DynamoDB::Table':
          return `arn:aws:dynamodb:${region}:${accountId}:table/${name}`;
        case 'AWS::IAM::Role': {
          const rolePath = String(this.props(id).Path ?? '/');
          return `arn:aws:iam::${accountId}:role${rolePath}${name}`;
        }
        case 'AWS::Lambda::Function':
          return `arn:aws:lambda:${region}:${accountId}:function:${name}`;
        case 'AWS::StepFunctions::StateMachine':
          return `arn:aws:states:${region}:${accountId}:stateMachine:${name}`;
        case 'AWS::Logs::LogGroup':
          return `arn:aws:logs:${region}:${accountId}:log-group:${name}:*`;
        case 'AWS::Scheduler::ScheduleGroup':
          return `arn:aws:scheduler:${region}:${accountId}:schedule-group/${name}`;
        case 'AWS::Events::Rule':
          return `arn:aws:events:${region}:${accountId}:rule/${name}`;
        default:
          throw new Error(`no Arn for ${Type} (${id})`);
      }
    };
    switch (attribute) {
      case 'Arn':
        return arn();
      case 'Name':
        return name;
      case 'RootResourceId':
        return `${name}-root`;
      case 'RegionalDomainName':
      case 'DomainName':
        return `${name}.s3.${region}.amazonaws.com`;
      case 'StreamArn':
        return `${arn()}/stream/local`;
      default:
        throw new Error(`attribute ${attribute} of ${Type} (${id}) is not known locally`);
    }
  }

  private ofType(type: string): [string, CfnResource][] {
    return Object.entries(this.resources).filter(([, r]) => r.Type === type);
  }

  functions(): LocalFunction[] {
    return this.ofType('AWS::Lambda::Function').map(([id, r]) => {
      const p = this.resolve<Record<string, unknown>>(r.Properties ?? {}, id);
      const assetPath = r.Metadata?.['aws:asset:path'];
      if (typeof assetPath !== 'string')
        throw new Error(`function ${id} has no bundled asset in the assembly`);
      const environment = ((p.Environment as { Variables?: Record<string, unknown> } | undefined)
        ?.Variables ?? {}) as Record<string, unknown>;
      return {
        logicalId: id,
        name: this.ref(id),
        arn: this.getAtt(id, 'Arn'),
        roleArn: String(p.Role),
        handler: String(p.Handler ?? 'index.handler'),
        timeoutSeconds: Number(p.Timeout ?? 3),
        memoryMb: Number(p.MemorySize ?? 128),
        environment: Object.fromEntries(Object.entries(environment).map(([k, v]) => [k, String(v)])),
        codeDir: path.join(this.assembly.dir, assetPath),
      };
    });
  }

  roles(): LocalRole[] {
    const roles = new Map<string, LocalRole>();
    for (const [id, r] of this.ofType('AWS::IAM::Role')) {
      const p = this.resolve<Record<string, unknown>>(r.Properties ?? {}, id);
      const inline = (
        (p.Policies as { PolicyName: string; PolicyDocument: PolicyDocument }[] | undefined) ?? []
      ).map((policy) => ({ name: policy.PolicyName, document: policy.PolicyDocument }));
      roles.set(id, {
        logicalId: id,
        name: this.ref(id),
        arn: this.getAtt(id, 'Arn'),
        policies: inline,
        managedPolicyArns: ((p.ManagedPolicyArns as string[] | undefined) ?? []).map(String),
      });
    }
    const byName = new Map([...roles.values()].map((role) => [role.name, role]));
    for (const [id, r] of [...this.ofType('AWS::IAM::Policy'), ...this.ofType('AWS::IAM::ManagedPolicy')]) {
      const p = this.resolve<Record<string, unknown>>(r.Properties ?? {}, id);
      const name = String(p.PolicyName ?? p.ManagedPolicyName ?? id);
      for (const roleName of (p.Roles as string[] | undefined) ?? []) {
        const role = byName.get(roleName);
        if (!role)
          throw new Error(`policy ${id} is attached to a role the template does not define: ${roleName}`);
        role.policies.push({ name, document: p.PolicyDocument as PolicyDocument });
      }
    }
    return [...roles.values()];
  }

  stateMachines(): LocalStateMachine[] {
    return this.ofType('AWS::StepFunctions::StateMachine').map(([id, r]) => {
      const p = r.Properties ?? {};
      let text: string;
      if (p.DefinitionString !== undefined) {
        text = this.resolve<string>(p.DefinitionString, `${id}.DefinitionString`);
      } else if (p.DefinitionS3Location !== undefined) {
        const location = this.resolve<{ Bucket: string; Key: string }>(p.DefinitionS3Location, id);
        const asset = this.assets().find((a) => a.bucket === location.Bucket && a.key === location.Key);
        if (!asset)
          throw new Error(
            `state machine ${id}: its definition ${location.Key} is not an asset of the assembly`,
          );
        text = readFileSync(asset.source, 'utf8');
      } else if (p.Definition !== undefined) {
        text = JSON.stringify(this.resolve(p.Definition, `${id}.Definition`));
      } else {
        throw new Error(`state machine ${id} has no definition`);
      }
      const substitutions = this.resolve<Record<string, string>>(p.DefinitionSubstitutions ?? {}, id);
      const filled = text.replace(/\$\{([A-Za-z0-9_]+)\}/g, (whole, name: string) =>
        name in substitutions ? String(substitutions[name]) : whole,
      );
      return {
        logicalId: id,
        name: this.getAtt(id, 'Name'),
        arn: this.getAtt(id, 'Arn'),
        roleArn: this.resolve<string>(p.RoleArn, `${id}.RoleArn`),
        definition: JSON.parse(filled) as Record<string, unknown>,
      };
    });
  }

  tables(): LocalTable[] {
    return this.ofType('AWS::DynamoDB::Table').map(([id, r]) => ({
      logicalId: id,
      name: this.ref(id),
      arn: this.getAtt(id, 'Arn'),
      properties: this.resolve<Record<string, unknown>>(r.Properties ?? {}, id),
    }));
  }

  buckets(): LocalBucket[] {
    const policies = new Map<string, PolicyDocument>();
    for (const [id, r] of this.ofType('AWS::S3::BucketPolicy')) {
      const p = this.resolve<{ Bucket: string; PolicyDocument: PolicyDocument }>(r.Properties ?? {}, id);
      policies.set(p.Bucket, p.PolicyDocument);
    }
    return this.ofType('AWS::S3::Bucket').map(([id]) => {
      const name = this.ref(id);
      const policy = policies.get(name);
      return { logicalId: id, name, arn: this.getAtt(id, 'Arn'), ...(policy ? { policy } : {}) };
    });
  }

  documents(): LocalDocument[] {
    return this.ofType('AWS::SSM::Document').map(([id, r]) => {
      const p = this.resolve<Record<string, unknown>>(r.Properties ?? {}, id);
      const content =
        typeof p.Content === 'string' ? (JSON.parse(p.Content) as SsmDocumentContent) : p.Content;
      return {
        logicalId: id,
        name: this.ref(id),
        documentType: String(p.DocumentType ?? 'Command'),
        content: content as SsmDocumentContent,
      };
    });
  }

  associations(): LocalAssociation[] {
    return this.ofType('AWS::SSM::Association').map(([id, r]) => {
      const p = this.resolve<Record<string, unknown>>(r.Properties ?? {}, id);
      const s3 = (
        p.OutputLocation as { S3Location?: { OutputS3BucketName?: string; OutputS3KeyPrefix?: string } }
      )?.S3Location;
      return {
        logicalId: id,
        name: String(p.AssociationName ?? id),
        documentName: String(p.Name),
        targets: (p.Targets as { Key: string; Values: string[] }[] | undefined) ?? [],
        parameters: (p.Parameters as Record<string, string[]> | undefined) ?? {},
        ...(s3?.OutputS3BucketName
          ? {
              outputLocation: {
                bucket: s3.OutputS3BucketName,
                ...(s3.OutputS3KeyPrefix ? { prefix: s3.OutputS3KeyPrefix } : {}),
              },
            }
          : {}),
      };
    });
  }

  scheduleGroups(): string[] {
    return this.ofType('AWS::Scheduler::ScheduleGroup').map(([id]) => this.ref(id));
  }

  rules(): LocalRule[] {
    return this.ofType('AWS::Events::Rule').map(([id, r]) => {
      const p = this.resolve<Record<string, unknown>>(r.Properties ?? {}, id);
      return {
        logicalId: id,
        ...(typeof p.ScheduleExpression === 'string' ? { scheduleExpression: p.ScheduleExpression } : {}),
        enabled: p.State !== 'DISABLED',
        targets: ((p.Targets as { Arn: string; Input?: string }[] | undefined) ?? []).map((t) => ({
          arn: t.Arn,
          ...(typeof t.Input === 'string' ? { input: JSON.parse(t.Input) as unknown } : {}),
        })),
      };
    });
  }

  /** The one REST API's methods with their full resource paths. */
  api(): LocalApi | undefined {
    const apis = this.ofType('AWS::ApiGateway::RestApi');
    if (apis.length === 0) return undefined;
    if (apis.length > 1) throw new Error('the embedded stack serves one REST API; the template has several');
    const [apiId] = apis[0]!;
    const restApiId = this.ref(apiId);
    const root = this.getAtt(apiId, 'RootResourceId');
    const parents = new Map<string, { parent: string; part: string }>();
    for (const [id, r] of this.ofType('AWS::ApiGateway::Resource')) {
      const p = this.resolve<{ ParentId: string; PathPart: string }>(r.Properties ?? {}, id);
      parents.set(this.ref(id), { parent: p.ParentId, part: p.PathPart });
    }
    const pathOf = (resourceId: string, depth = 0): string => {
      if (resourceId === root) return '/';
      const node = parents.get(resourceId);
      if (!node || depth > 50) throw new Error(`API method on an unknown resource ${resourceId}`);
      const above = pathOf(node.parent, depth + 1);
      return `${above === '/' ? '' : above}/${node.part}`;
    };
    const methods = this.ofType('AWS::ApiGateway::Method').map(([id, r]) => {
      const p = this.resolve<Record<string, unknown>>(r.Properties ?? {}, id);
      const integration = p.Integration as { Type?: string; Uri?: string } | undefined;
      const functionArn = /functions\/(arn:aws:lambda:[^/]+)\/invocations$/.exec(integration?.Uri ?? '')?.[1];
      return {
        httpMethod: String(p.HttpMethod),
        path: pathOf(String(p.ResourceId)),
        authorizationType: String(p.AuthorizationType ?? 'NONE'),
        ...(integration?.Type === 'AWS_PROXY' && functionArn ? { functionArn } : {}),
      };
    });
    const stages = this.ofType('AWS::ApiGateway::Stage').map(([id, r]) =>
      String(this.resolve<Record<string, unknown>>(r.Properties ?? {}, id).StageName),
    );
    return { restApiId, stageName: stages[0] ?? 'prod', methods };
  }

  /** The file assets with their destinations resolved. */
  assets(): LocalAsset[] {
    return this.assembly.assets.map((a) => ({
      hash: a.hash,
      source: a.source,
      packaging: a.packaging,
      bucket: this.resolve<string>({ 'Fn::Sub': a.bucketName }, `asset ${a.hash}`),
      key: this.resolve<string>({ 'Fn::Sub': a.objectKey }, `asset ${a.hash}`),
    }));
  }

  /** The stack's outputs, resolved. */
  outputs(): Record<string, string> {
    return Object.fromEntries(
      Object.entries(this.assembly.template.Outputs ?? {}).map(([k, o]) => [
        k,
        String(this.resolve(o.Value, k)),
      ]),
    );
  }
}
