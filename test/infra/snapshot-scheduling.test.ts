import path from 'node:path';
import { App } from 'aws-cdk-lib';
import { Match, Template } from 'aws-cdk-lib/assertions';
import { AwsSolutionsChecks } from 'cdk-nag';
import { FlowName } from '../../functions/core/ports.js';
import { EnvName } from '../../functions/env-names.js';
import { buildApp } from '../../infra/aws/app.js';
import type { StrataStack } from '../../infra/aws/strata-stack.js';

// Skip the CloudFormation WASM validator and all bundling: these tests read the template only.
process.env.CDK_VALIDATION = 'false';

type Statement = { Effect: string; Action: string | string[]; Resource: unknown; Condition?: unknown };
type Resource = { Type: string; Properties: Record<string, any> };

let app: App;
let stack: StrataStack;
let template: Template;

beforeAll(() => {
  app = new App({ context: { 'aws:cdk:bundling-stacks': [] } });
  ({ stack } = buildApp(app, {
    env: { account: '123456789012', region: 'eu-west-1' },
    hostRuntimeEntry: path.join(__dirname, '../../drivers/sdk/host-protocol.ts'),
  }));
  template = Template.fromStack(stack);
});

const logicalId = (construct: { node: { defaultChild?: unknown } }) =>
  stack.getLogicalId(construct.node.defaultChild as never);

function statementsOfRole(roleLogicalId: string): Statement[] {
  const policies = template.findResources('AWS::IAM::Policy', {
    Properties: { Roles: Match.arrayWith([{ Ref: roleLogicalId }]) },
  }) as Record<string, Resource>;
  return Object.values(policies).flatMap((p) => p.Properties.PolicyDocument.Statement as Statement[]);
}

const actionsOf = (s: Statement) => [s.Action].flat();

function functionEnv(name: 'api' | 'storeTasks'): Record<string, unknown> {
  return template.toJSON().Resources[logicalId(stack.functions[name])].Properties.Environment.Variables;
}

describe('snapshot scheduling', () => {
  const schedulerRoleId = () => logicalId(stack.scheduling.schedulerRole);
  it('names the policy flow state machine as its schedules expect', () => {
    const machine =
      template.toJSON().Resources[logicalId(stack.flows.stateMachines.get(FlowName.SnapshotPolicy)!)];
    expect(machine.Properties.StateMachineName).toBe('Strata-snapshot-policy');
  });

  it('lets the scheduler role start the snapshot-policy flow and no other', () => {
    const statements = statementsOfRole(schedulerRoleId());
    const starts = statements.filter((s) => actionsOf(s).includes('states:StartExecution'));

    expect(starts).toHaveLength(1);
    // By its fixed name: Strata-snapshot-policy, and no other state machine.
    const resource = JSON.stringify(starts[0]!.Resource);
    expect(resource).toContain(':stateMachine:Strata-snapshot-policy"');
    expect(resource.match(/stateMachine:/g)).toHaveLength(1);
    expect(statements.flatMap(actionsOf)).toEqual(['states:StartExecution']);
  });

  it('lets the api function manage schedules in the Strata group only, and pass only the scheduler role', () => {
    const statements = statementsOfRole(logicalId(stack.functions.api.role));
    const manage = statements.filter((s) => actionsOf(s).some((a) => a.startsWith('scheduler:')));

    expect(manage).toHaveLength(1);
    expect(actionsOf(manage[0]!).sort()).toEqual(
      [
        'scheduler:CreateSchedule',
        'scheduler:DeleteSchedule',
        'scheduler:GetSchedule',
        'scheduler:UpdateSchedule',
      ].sort(),
    );
    expect(JSON.stringify(manage[0]!.Resource)).toContain(':schedule/Strata-snapshot-policies/*');
    const pass = statements.filter((s) => actionsOf(s).includes('iam:PassRole'));
    expect(pass).toEqual([
      expect.objectContaining({
        Resource: { 'Fn::GetAtt': [schedulerRoleId(), 'Arn'] },
        Condition: { StringEquals: { 'iam:PassedToService': 'scheduler.amazonaws.com' } },
      }),
    ]);
  });

  it('trusts Scheduler only for schedules of the Strata group in this account', () => {
    const role = template.toJSON().Resources[schedulerRoleId()] as Resource;
    const [trust] = role.Properties.AssumeRolePolicyDocument.Statement;

    expect(trust.Principal).toEqual({ Service: 'scheduler.amazonaws.com' });
    expect(trust.Condition.StringEquals).toEqual({ 'aws:SourceAccount': '123456789012' });
    expect(JSON.stringify(trust.Condition.ArnLike)).toContain(':schedule/Strata-snapshot-policies/*');
  });

  it('gives the api function the group, the scheduler role ARN and the policy flow ARN', () => {
    const env = functionEnv('api');

    expect(env[EnvName.SchedulerGroup]).toBe('Strata-snapshot-policies');
    expect(env[EnvName.SchedulerRoleArn]).toEqual({ 'Fn::GetAtt': [schedulerRoleId(), 'Arn'] });
    expect(JSON.stringify(env[EnvName.StateMachineArns])).toContain(':stateMachine:Strata-snapshot-policy');
  });

  it('leaves the task functions without scheduler access', () => {
    expect(functionEnv('storeTasks')).not.toHaveProperty(EnvName.SchedulerGroup);
    const statements = statementsOfRole(logicalId(stack.functions.storeTasks.role));
    expect(
      statements.flatMap(actionsOf).some((a) => a.startsWith('scheduler:') || a === 'iam:PassRole'),
    ).toBe(false);
  });

  it('keeps cdk-nag clean with the grant in place', () => {
    const report = new AwsSolutionsChecks().validateScope(app);

    expect(
      report.violations.map((v) => `${v.ruleName} at ${v.violatingResources.map((r) => r.constructPath)}`),
    ).toEqual([]);
  });
});
