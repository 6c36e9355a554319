/**
 * Where snapshot-policy schedules live: an EventBridge Scheduler group (the api function creates
 * one schedule per policy in it) and the role Scheduler assumes to start the policy flow.
 */
import { Stack } from 'aws-cdk-lib';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as scheduler from 'aws-cdk-lib/aws-scheduler';
import { Construct } from 'constructs';
import { EnvName } from '../../../functions/env-names.js';
import { acknowledgeWildcard, regionalArnFinding } from './nag.js';
import type { StrataFunction } from './strata-function.js';

export class SnapshotScheduling extends Construct {
  readonly groupName: string;
  readonly group: scheduler.CfnScheduleGroup;
  /** Assumed by Scheduler for the group's schedules; the stack lets it start the policy flow. */
  readonly schedulerRole: iam.Role;

  constructor(scope: Construct, id: string) {
    super(scope, id);
    const stack = Stack.of(this);
    this.groupName = `${stack.stackName}-snapshot-policies`;
    this.group = new scheduler.CfnScheduleGroup(this, 'Group', { name: this.groupName });
    this.schedulerRole = new iam.Role(this, 'SchedulerRole', {
      description: 'Assumed by EventBridge Scheduler to start Strata snapshot-policy executions',
      assumedBy: new iam.ServicePrincipal('scheduler.amazonaws.com', {
        conditions: {
          StringEquals: { 'aws:SourceAccount': stack.account },
          ArnLike: {
            'aws:SourceArn': stack.formatArn({
              service: 'scheduler',
              resource: 'schedule',
              resourceName: `${this.groupName}/*`,
            }),
          },
        },
      }),
    });
  }

  /**
   * Lets a function manage the group's schedules and hand them the scheduler role, and tells it
   * both (STRATA_SCHEDULER_GROUP, STRATA_SCHEDULER_ROLE_ARN).
   */
  bindManager(fn: StrataFunction): void {
    const stack = Stack.of(this);
    fn.role.addToPrincipalPolicy(
      new iam.PolicyStatement({
        actions: [
          'scheduler:CreateSchedule',
          'scheduler:UpdateSchedule',
          'scheduler:DeleteSchedule',
          'scheduler:GetSchedule',
        ],
        resources: [
          stack.formatArn({
            service: 'scheduler',
            resource: 'schedule',
            resourceName: `${this.groupName}/*`,
          }),
        ],
      }),
    );
    fn.role.addToPrincipalPolicy(
      new iam.PolicyStatement({
        actions: ['iam:PassRole'],
        resources: [this.schedulerRole.roleArn],
        conditions: { StringEquals: { 'iam:PassedToService': 'scheduler.amazonaws.com' } },
      }),
    );
    acknowledgeWildcard(
      fn.role,
      regionalArnFinding(this, 'scheduler', `schedule/${this.groupName}/*`),
      'One schedule per snapshot policy, named at run time, confined to the Strata schedule group.',
    );
    fn.addEnvironment(EnvName.SchedulerGroup, this.groupName);
    fn.addEnvironment(EnvName.SchedulerRoleArn, this.schedulerRole.roleArn);
  }
}
