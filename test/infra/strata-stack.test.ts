import path from 'node:path';
import { App, Stack } from 'aws-cdk-lib';
import { Match, Template } from 'aws-cdk-lib/assertions';
import { Bucket } from 'aws-cdk-lib/aws-s3';
import { AwsSolutionsChecks } from 'cdk-nag';
import { HOST_REQUEST_ALLOWED_PATTERN } from '../../functions/adapters/aws/ssm-channel.js';
import { TableSchema } from '../../functions/adapters/aws/table-schema.js';
import { FlowName } from '../../functions/core/ports.js';
import { EnvName } from '../../functions/env-names.js';
import { buildApp } from '../../infra/aws/app.js';
import type { StrataStack } from '../../infra/aws/strata-stack.js';

// Skip the CloudFormation WASM validator and all bundling: these tests read the template only.
process.env.CDK_VALIDATION = 'false';

type Resources = Record<string, { Type: string; Properties: Record<string, unknown> }>;
type Statement = { Effect: string; Action: string | string[]; Resource: unknown; Condition?: unknown };

let app: App;
let stack: StrataStack;
let template: Template;

beforeAll(() => {
  app = new App({ context: { 'aws:cdk:bundling-stacks': [] } });
  // Any existing file stands in for drivers/host-main.ts, so the install document is built too.
  ({ stack } = buildApp(app, {
    env: { account: '123456789012', region: 'eu-west-1' },
    hostRuntimeEntry: path.join(__dirname, '../../drivers/sdk/host-protocol.ts'),
  }));
  template = Template.fromStack(stack);
});

function logicalId(construct: { node: { defaultChild?: unknown } }): string {
  return stack.getLogicalId(construct.node.defaultChild as never);
}

function functionEnv(name: 'api' | 'storeTasks' | 'imageTasks' | 'reconciler'): Record<string, unknown> {
  const resource = template.toJSON().Resources[logicalId(stack.functions[name])];
  return resource.Properties.Environment.Variables;
}

function statementsOf(name: 'api' | 'storeTasks' | 'imageTasks' | 'reconciler'): Statement[] {
  const roleId = stack.getLogicalId(stack.functions[name].role.node.defaultChild as never);
  // A large role policy overflows into a managed policy attached to the same role: read both.
  const policies = ['AWS::IAM::Policy', 'AWS::IAM::ManagedPolicy'].map(
    (type) =>
      template.findResources(type, {
        Properties: { Roles: Match.arrayWith([{ Ref: roleId }]) },
      }) as Resources,
  );
  return policies
    .flatMap(Object.values)
    .flatMap((policy) => (policy.Properties.PolicyDocument as { Statement: Statement[] }).Statement);
}

const actionsOf = (statement: Statement) => [statement.Action].flat();

describe('StrataStack', () => {
  describe('table', () => {
    it('has the TableSchema keys, its three GSIs and TTL', () => {
      template.hasResourceProperties('AWS::DynamoDB::Table', {
        KeySchema: [
          { AttributeName: TableSchema.partitionKey, KeyType: 'HASH' },
          { AttributeName: TableSchema.sortKey, KeyType: 'RANGE' },
        ],
        GlobalSecondaryIndexes: [TableSchema.byType, TableSchema.byStore, TableSchema.byLease].map((index) =>
          Match.objectLike({
            IndexName: index.indexName,
            KeySchema: [
              { AttributeName: index.partitionKey, KeyType: 'HASH' },
              { AttributeName: index.sortKey, KeyType: 'RANGE' },
            ],
          }),
        ),
        TimeToLiveSpecification: { AttributeName: TableSchema.ttlAttribute, Enabled: true },
      });
    });

    it('is on-demand, encrypted, recoverable and protected from deletion', () => {
      template.resourceCountIs('AWS::DynamoDB::Table', 1);
      template.hasResource('AWS::DynamoDB::Table', {
        DeletionPolicy: 'Retain',
        Properties: Match.objectLike({
          BillingMode: 'PAY_PER_REQUEST',
          PointInTimeRecoverySpecification: { PointInTimeRecoveryEnabled: true },
          DeletionProtectionEnabled: true,
          SSESpecification: { SSEEnabled: true },
        }),
      });
    });
  });

  describe('image bucket', () => {
    const imageBucket = () =>
      Object.entries(
        template.findResources('AWS::S3::Bucket', { Properties: { VersioningConfiguration: {} } }),
      );

    it('is encrypted, private, versioned and logged', () => {
      expect(imageBucket()).toHaveLength(1);
      const [, bucket] = imageBucket()[0]!;
      expect(bucket.Properties).toMatchObject({
        BucketEncryption: {
          ServerSideEncryptionConfiguration: [{ ServerSideEncryptionByDefault: { SSEAlgorithm: 'AES256' } }],
        },
        PublicAccessBlockConfiguration: {
          BlockPublicAcls: true,
          BlockPublicPolicy: true,
          IgnorePublicAcls: true,
          RestrictPublicBuckets: true,
        },
        VersioningConfiguration: { Status: 'Enabled' },
        LoggingConfiguration: { DestinationBucketName: expect.anything() },
      });
    });

    it('aborts incomplete multipart uploads', () => {
      const [, bucket] = imageBucket()[0]!;
      const rules = (bucket.Properties.LifecycleConfiguration as { Rules: Record<string, unknown>[] }).Rules;
      expect(rules).toContainEqual(
        expect.objectContaining({
          AbortIncompleteMultipartUpload: { DaysAfterInitiation: 7 },
          Status: 'Enabled',
        }),
      );
    });

    it('denies requests without TLS', () => {
      const [id] = imageBucket()[0]!;
      template.hasResourceProperties('AWS::S3::BucketPolicy', {
        Bucket: { Ref: id },
        PolicyDocument: {
          Statement: Match.arrayWith([
            Match.objectLike({
              Effect: 'Deny',
              Action: 's3:*',
              Condition: { Bool: { 'aws:SecureTransport': 'false' } },
            }),
          ]),
        },
      });
    });

    it('leaves no bucket without public access blocks and TLS enforcement', () => {
      const buckets = template.findResources('AWS::S3::Bucket');
      const policies = Object.values(template.findResources('AWS::S3::BucketPolicy')) as Resources[string][];
      for (const [id, bucket] of Object.entries(buckets)) {
        expect(bucket.Properties.PublicAccessBlockConfiguration).toMatchObject({ BlockPublicPolicy: true });
        expect(
          policies.some((policy) => JSON.stringify(policy.Properties.Bucket) === JSON.stringify({ Ref: id })),
        ).toBe(true);
      }
    });
  });

  describe('functions', () => {
    it('run the newest Node runtime on arm64 with active tracing', () => {
      const functions = template.findResources('AWS::Lambda::Function', {
        Properties: { Handler: 'index.handler' },
      });
      expect(Object.keys(functions)).toHaveLength(4);
      for (const fn of Object.values(functions)) {
        expect(fn.Properties).toMatchObject({
          Runtime: 'nodejs24.x',
          Architectures: ['arm64'],
          TracingConfig: { Mode: 'Active' },
          LoggingConfig: { LogGroup: expect.anything() },
        });
        expect(fn.Properties.Environment.Variables.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED).toBe(
          'true',
        );
      }
    });

    it('get the table and image bucket names from EnvName, and the buckets they may use', () => {
      for (const name of ['api', 'storeTasks', 'imageTasks', 'reconciler'] as const) {
        expect(functionEnv(name)).toMatchObject({
          [EnvName.TableName]: { Ref: expect.any(String) },
          [EnvName.ImageBucket]: { Ref: expect.any(String) },
        });
        expect(JSON.stringify(functionEnv(name)[EnvName.ImageBuckets])).toContain('StorageImages');
      }
    });

    it('give every flow starter every flow ARN by its fixed name, with no reference to the machines', () => {
      for (const name of ['api', 'storeTasks'] as const) {
        const json = JSON.stringify(functionEnv(name)[EnvName.StateMachineArns]);
        for (const flow of Object.values(FlowName)) expect(json).toContain(`:stateMachine:Strata-${flow}\\"`);
        // A Ref or GetAtt to a state machine here would make store-tasks → machine → store-tasks a cycle.
        for (const machine of stack.flows.stateMachines.values())
          expect(json).not.toContain(logicalId(machine));
      }
      expect(functionEnv('api')[EnvName.SchedulerGroup]).toBe('Strata-snapshot-policies');
    });

    it('give the command senders the SSM document, output location and host build', () => {
      for (const name of ['storeTasks', 'imageTasks', 'reconciler'] as const) {
        expect(functionEnv(name)).toMatchObject({
          [EnvName.SsmDocumentName]: 'Strata-RunHostOperation',
          [EnvName.SsmOutputBucket]: { Ref: expect.any(String) },
          [EnvName.SsmOutputPrefix]: 'ssm',
          [EnvName.HostBuild]: expect.stringMatching(/^[0-9a-f]{64}$/),
        });
      }
      // The API runs no host work: every host-touching route is a flow run by store-tasks.
      expect(functionEnv('api')).not.toHaveProperty(EnvName.SsmDocumentName);
    });

    it('describe what each function does, and the reconciler only what it does', () => {
      const fns = template.findResources('AWS::Lambda::Function');
      const reconciler = fns[logicalId(stack.functions.reconciler)]!;
      expect(reconciler.Properties.Description).toMatch(/expired in a transitional state/);
      expect(reconciler.Properties.Description).not.toMatch(/orphan|multipart/i);
    });

    it('run the reconciler every five minutes', () => {
      template.hasResourceProperties('AWS::Events::Rule', {
        ScheduleExpression: 'rate(5 minutes)',
        Targets: [
          Match.objectLike({ Arn: { 'Fn::GetAtt': [logicalId(stack.functions.reconciler), 'Arn'] } }),
        ],
      });
    });
  });

  describe('IAM', () => {
    it('limits SendCommand to the Strata document and tagged hosts', () => {
      const sends = statementsOf('storeTasks').filter((s) => actionsOf(s).includes('ssm:SendCommand'));
      expect(sends).toHaveLength(2);
      const resources = JSON.stringify(sends.map((s) => s.Resource));
      expect(resources).toContain(':document/Strata-RunHostOperation');
      expect(resources).toContain(':managed-instance/*');
      expect(resources).not.toMatch(/"\*"/);
      const toInstances = sends.find((s) => JSON.stringify(s.Resource).includes('managed-instance'))!;
      expect(toInstances.Condition).toEqual({ StringEquals: { 'ssm:resourceTag/StrataHost': 'true' } });
    });

    it('lets hosts write command output as the SSM agent does, only under the SSM prefix', () => {
      const roleId = stack.getLogicalId(
        stack.node.findChild('Hosts').node.findChild('HostRole').node.defaultChild as never,
      );
      const policies = template.findResources('AWS::IAM::Policy', {
        Properties: { Roles: Match.arrayWith([{ Ref: roleId }]) },
      }) as Resources;
      const statements = Object.values(policies).flatMap(
        (p) => (p.Properties.PolicyDocument as { Statement: Statement[] }).Statement,
      );
      const put = statements.find((s) => actionsOf(s).includes('s3:PutObject'))!;
      expect(actionsOf(put).sort()).toEqual(['s3:PutObject', 's3:PutObjectAcl']);
      expect(JSON.stringify(put.Resource)).toContain('/ssm/*');
      const encryption = statements.find((s) => actionsOf(s).includes('s3:GetEncryptionConfiguration'))!;
      expect(JSON.stringify(encryption.Resource)).not.toContain('/*');
    });

    it('lets senders read command output only under the SSM prefix', () => {
      const reads = statementsOf('storeTasks').filter(
        (s) => actionsOf(s).includes('s3:GetObject') && JSON.stringify(s.Resource).includes('/ssm/*'),
      );
      expect(reads).toHaveLength(1);
      expect(actionsOf(reads[0]!)).toEqual(['s3:GetObject']);
    });

    const startable = (name: 'api' | 'storeTasks' | 'imageTasks' | 'reconciler') =>
      statementsOf(name)
        .filter((s) => actionsOf(s).includes('states:StartExecution'))
        .flatMap((s) => JSON.stringify(s.Resource).match(/stateMachine:Strata-[a-z-]+/g) ?? [])
        .map((m) => m.replace('stateMachine:Strata-', ''))
        .sort();

    it('lets the api function start every operator flow but the policy flow, and send no host command', () => {
      expect(startable('api')).toEqual(
        Object.values(FlowName)
          .filter((f) => f !== FlowName.SnapshotPolicy)
          .sort(),
      );
      expect(statementsOf('api').some((s) => actionsOf(s).includes('ssm:SendCommand'))).toBe(false);
    });

    it('lets store-tasks start exactly the flows its steps start (take, backup, retention deletes)', () => {
      expect(startable('storeTasks')).toEqual(
        [FlowName.SnapshotBackup, FlowName.SnapshotDelete, FlowName.SnapshotTake].sort(),
      );
      expect(startable('imageTasks')).toEqual([]);
      // The reconciler starts the orphan sweep and the verify jobs on their schedules, and nothing else.
      expect(startable('reconciler')).toEqual([FlowName.BackupVerify, FlowName.OrphanSweep].sort());
    });

    it('lets the reconciler stop the executions of every flow and cancel host commands, and nothing else may', () => {
      const stoppable = (name: 'api' | 'storeTasks' | 'imageTasks' | 'reconciler') =>
        statementsOf(name)
          .filter((s) => actionsOf(s).includes('states:StopExecution'))
          .flatMap((s) => JSON.stringify(s.Resource).match(/execution:Strata-[a-z-]+:\*/g) ?? [])
          .map((m) => m.replace('execution:Strata-', '').replace(':*', ''))
          .sort();
      expect(stoppable('reconciler')).toEqual(Object.values(FlowName).sort());
      for (const other of ['api', 'storeTasks', 'imageTasks'] as const) {
        expect(stoppable(other)).toEqual([]);
        expect(statementsOf(other).some((s) => actionsOf(s).includes('ssm:CancelCommand'))).toBe(false);
      }
      expect(statementsOf('reconciler').some((s) => actionsOf(s).includes('ssm:CancelCommand'))).toBe(true);
    });

    it('grants no service-wide wildcard actions', () => {
      const all = (['api', 'storeTasks', 'reconciler'] as const).flatMap(statementsOf);
      for (const statement of all) {
        for (const action of actionsOf(statement)) expect(action).not.toMatch(/(^\*$|:\*$)/);
      }
    });

    it('scopes table access to the table and its named indexes', () => {
      const table = statementsOf('storeTasks').filter((s) =>
        actionsOf(s).some((a) => a.startsWith('dynamodb:')),
      );
      const resources = JSON.stringify(table.map((s) => s.Resource));
      for (const index of [TableSchema.byType, TableSchema.byStore, TableSchema.byLease]) {
        expect(resources).toContain(`/index/${index.indexName}`);
      }
      expect(resources).not.toContain('/index/*');
      // Scan only for the orphan sweep's read of the chunk index: on the table, never an index,
      // and only in store-tasks, where the sweep's step runs.
      const scans = table.filter((s) => actionsOf(s).includes('dynamodb:Scan'));
      expect(scans).toHaveLength(1);
      expect(actionsOf(scans[0]!)).toEqual(['dynamodb:Scan']);
      expect(JSON.stringify(scans[0]!.Resource)).not.toContain('/index/');
      for (const other of ['api', 'imageTasks', 'reconciler'] as const) {
        expect(statementsOf(other).flatMap(actionsOf)).not.toContain('dynamodb:Scan');
      }
    });

    it('starts the orphan sweep every six hours through the reconciler', () => {
      const rules = template.findResources('AWS::Events::Rule');
      const sweep = Object.entries(rules).find(([id]) => id.startsWith('OrphanSweepSchedule'));
      expect(sweep?.[1].Properties.ScheduleExpression).toBe('rate(6 hours)');
      expect(JSON.parse(sweep?.[1].Properties.Targets[0].Input)).toEqual({ sweep: true });
    });

    it('starts a sampled backup verify job every day through the reconciler', () => {
      const rules = template.findResources('AWS::Events::Rule');
      const verify = Object.entries(rules).find(([id]) => id.startsWith('BackupVerifySchedule'));
      expect(verify?.[1].Properties.ScheduleExpression).toBe('rate(1 day)');
      expect(JSON.parse(verify?.[1].Properties.Targets[0].Input)).toEqual({ verify: { sample: 0.1 } });
      expect(JSON.stringify(verify?.[1].Properties.Targets[0].Arn)).toContain('Reconciler');
    });
  });

  describe('state machines', () => {
    it('exist for every flow: Standard, logging ALL with execution data, traced', () => {
      template.resourceCountIs('AWS::StepFunctions::StateMachine', Object.values(FlowName).length);
      const machines = template.findResources('AWS::StepFunctions::StateMachine');
      for (const machine of Object.values(machines)) {
        expect(machine.Properties).toMatchObject({
          StateMachineType: 'STANDARD',
          LoggingConfiguration: { Level: 'ALL', IncludeExecutionData: true },
          TracingConfiguration: { Enabled: true },
          StateMachineName: expect.stringMatching(/^Strata-[a-z-]+$/),
          DefinitionString: expect.anything(),
          DefinitionSubstitutions: {
            StoreTasksFunctionArn: { 'Fn::GetAtt': [logicalId(stack.functions.storeTasks), 'Arn'] },
          },
        });
      }
    });

    it('may invoke only the task function their ASL names', () => {
      const policies = Object.entries(template.findResources('AWS::IAM::Policy'));
      const named = (flow: string) =>
        policies.filter(([id]) => id.startsWith(`Flows${flow.replace(/-/g, '')}Role`));
      for (const flow of ['store-attach', 'store-maintenance']) {
        expect(named(flow)).toHaveLength(1);
        expect(JSON.stringify(named(flow)[0]![1])).toContain(logicalId(stack.functions.storeTasks));
        expect(JSON.stringify(named(flow)[0]![1])).not.toContain(logicalId(stack.functions.imageTasks));
      }
      for (const flow of ['template-ingest', 'template-copy']) {
        expect(named(flow)).toHaveLength(1);
        expect(JSON.stringify(named(flow)[0]![1])).toContain(logicalId(stack.functions.imageTasks));
        expect(JSON.stringify(named(flow)[0]![1])).not.toContain(logicalId(stack.functions.storeTasks));
      }
    });
  });

  describe('SSM documents', () => {
    const runDocument = () =>
      template.findResources('AWS::SSM::Document', { Properties: { Name: 'Strata-RunHostOperation' } });

    it('run the host runtime with one base64-only parameter', () => {
      const [doc] = Object.values(runDocument());
      expect(doc?.Properties).toMatchObject({
        DocumentType: 'Command',
        Content: {
          schemaVersion: '2.2',
          parameters: { Request: { type: 'String', allowedPattern: HOST_REQUEST_ALLOWED_PATTERN } },
          mainSteps: [{ action: 'aws:runShellScript' }],
        },
      });
      const content = doc!.Properties.Content as {
        parameters: object;
        mainSteps: { inputs: { runCommand: string[] } }[];
      };
      expect(Object.keys(content.parameters)).toEqual(['Request']);
      expect(content.mainSteps[0]!.inputs.runCommand.join('\n')).toMatch(
        /\/opt\/strata\/bin\/strata-host" --request-b64 \{\{ Request \}\}/,
      );
    });

    it('admits base64 and nothing a shell would interpret', () => {
      const pattern = new RegExp(HOST_REQUEST_ALLOWED_PATTERN);
      expect(pattern.test(Buffer.from('{"version":1}').toString('base64'))).toBe(true);
      for (const bad of [
        '',
        'abc def',
        'abc;reboot',
        '$(id)',
        '`id`',
        "a'b",
        'a"b',
        'a\nb',
        'a&b',
        'x'.repeat(20_000),
      ]) {
        expect(pattern.test(bad)).toBe(false);
      }
    });

    it('run the host runtime under the host root the agent sets, never a path from a parameter', () => {
      const [doc] = Object.values(runDocument());
      const command = (
        doc!.Properties.Content as { mainSteps: { inputs: { runCommand: string[] } }[] }
      ).mainSteps[0]!.inputs.runCommand.join('\n');
      expect(command).toContain('"${STRATA_HOST_ROOT:-}/opt/strata/bin/strata-host"');
      expect(command).toContain('--work-dir "${STRATA_HOST_ROOT:-}/var/lib/strata"');
    });

    it('install the host runtime into a versioned directory, checking prerequisites first', () => {
      const docs = template.findResources('AWS::SSM::Document', {
        Properties: { Name: 'Strata-InstallHostRuntime' },
      });
      const content = Object.values(docs)[0]!.Properties.Content as {
        parameters: Record<string, { allowedPattern: string }>;
        mainSteps: { name: string; inputs: { runCommand?: string[] } }[];
      };
      expect(content.parameters.BuildId?.allowedPattern).toBe('^[0-9a-f]{64}$');
      expect(content.mainSteps.map((s) => s.name)).toEqual([
        'checkPrerequisites',
        'downloadHostRuntime',
        'installHostRuntime',
      ]);
      const check = content.mainSteps[0]!.inputs.runCommand!.join('\n');
      for (const tool of ['node', 'qemu-img', 'qemu-nbd']) expect(check).toContain(`command -v ${tool}`);
      const install = content.mainSteps[2]!.inputs.runCommand!.join('\n');
      expect(install).toContain('/opt/strata/versions/$build');
      expect(install).toMatch(/mv -T .*current\.new.*current/);
      expect(install).toContain('/proc/[0-9]*/cmdline');
    });

    it('runs the install document on every tagged host, again for each new build', () => {
      const build = functionEnv('storeTasks')[EnvName.HostBuild];
      template.hasResourceProperties('AWS::SSM::Association', {
        Name: 'Strata-InstallHostRuntime',
        Targets: [{ Key: 'tag:StrataHost', Values: ['true'] }],
        Parameters: { BuildId: [build] },
        MaxConcurrency: '25%',
        MaxErrors: '25%',
      });
    });

    it('install the host runtime from the bundled asset', () => {
      template.hasResourceProperties('AWS::SSM::Document', {
        Name: 'Strata-InstallHostRuntime',
        DocumentType: 'Command',
        Content: Match.objectLike({
          mainSteps: [
            Match.objectLike({ action: 'aws:runShellScript', name: 'checkPrerequisites' }),
            Match.objectLike({
              action: 'aws:downloadContent',
              inputs: Match.objectLike({ sourceType: 'S3' }),
            }),
            Match.objectLike({ action: 'aws:runShellScript' }),
          ],
        }),
      });
    });
  });

  describe('API', () => {
    it('authorizes every method with IAM and validates requests', () => {
      const methods = Object.values(template.findResources('AWS::ApiGateway::Method'));
      expect(methods.length).toBeGreaterThanOrEqual(2);
      for (const method of methods) {
        expect(method.Properties).toMatchObject({
          AuthorizationType: 'AWS_IAM',
          RequestValidatorId: { Ref: expect.any(String) },
        });
      }
      template.hasResourceProperties('AWS::ApiGateway::Resource', { PathPart: '{proxy+}' });
      template.hasResourceProperties('AWS::ApiGateway::RequestValidator', {
        ValidateRequestBody: true,
        ValidateRequestParameters: true,
      });
    });

    it('logs access, traces and throttles the stage', () => {
      template.hasResourceProperties('AWS::ApiGateway::Stage', {
        AccessLogSetting: { DestinationArn: Match.anyValue(), Format: Match.stringLikeRegexp('requestId') },
        TracingEnabled: true,
        MethodSettings: Match.arrayWith([
          Match.objectLike({ ThrottlingRateLimit: 50, ThrottlingBurstLimit: 100, LoggingLevel: 'ERROR' }),
        ]),
      });
    });
  });

  describe('snapshot scheduling', () => {
    it('creates the schedule group and a role only Scheduler can assume', () => {
      template.hasResourceProperties('AWS::Scheduler::ScheduleGroup', { Name: 'Strata-snapshot-policies' });
      template.hasResourceProperties('AWS::IAM::Role', {
        AssumeRolePolicyDocument: {
          Statement: [
            Match.objectLike({
              Principal: { Service: 'scheduler.amazonaws.com' },
              Condition: Match.objectLike({ StringEquals: { 'aws:SourceAccount': '123456789012' } }),
            }),
          ],
        },
      });
    });
  });

  it('outputs what operators need, once', () => {
    const outputs = Object.keys(template.toJSON().Outputs);
    expect(outputs.filter((output) => output.includes('Endpoint'))).toEqual([]);
    for (const name of [
      'ApiUrl',
      'TableName',
      'ImageBucketName',
      'RunDocumentName',
      'InstallDocumentName',
      'HostRoleName',
    ]) {
      expect(outputs.some((output) => output.startsWith(name))).toBe(true);
    }
  });

  describe('cdk-nag AwsSolutions', () => {
    it('reports no unacknowledged errors or warnings', () => {
      const report = new AwsSolutionsChecks().validateScope(app);
      const findings = report.violations.map(
        (v) =>
          `${v.severity} ${v.ruleName} at ${v.violatingResources.map((r) => r.constructPath).join(', ')}`,
      );

      expect(findings).toEqual([]);
      expect(report.success).toBe(true);
    });

    it('does report an unacknowledged finding (the check can fail)', () => {
      const other = new App({ context: { 'aws:cdk:bundling-stacks': [] } });
      const bare = new Stack(other, 'Bare');
      new Bucket(bare, 'Unlogged');

      const report = new AwsSolutionsChecks().validateScope(other);

      expect(report.violations.map((v) => v.ruleName)).toEqual(
        expect.arrayContaining(['AwsSolutions-S1', 'AwsSolutions-S10']),
      );
    });
  });
});
