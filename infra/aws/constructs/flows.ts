/**
 * One Step Functions Standard state machine per flow, from the same ASL files the embedded stack runs
 * (statemachines/<flow>.asl.json), with the task functions substituted in.
 */
import { RemovalPolicy, Stack } from 'aws-cdk-lib';
import * as iam from 'aws-cdk-lib/aws-iam';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import { Construct } from 'constructs';
import { FlowName } from '../../../functions/core/ports.js';
import {
  type FlowSubstitution,
  flowDefinitionPath,
  flowSubstitutionsUsed,
} from '../../../statemachines/definitions.js';
import { acknowledgeWildcard } from './nag.js';

export interface FlowsProps {
  storeTasks: lambda.IFunction;
  imageTasks: lambda.IFunction;
  logRetention?: logs.RetentionDays;
}

export class Flows extends Construct {
  readonly stateMachines: ReadonlyMap<FlowName, sfn.StateMachine>;

  constructor(scope: Construct, id: string, props: FlowsProps) {
    super(scope, id);
    const substitutions: Record<FlowSubstitution, string> = {
      StoreTasksFunctionArn: props.storeTasks.functionArn,
      ImageTasksFunctionArn: props.imageTasks.functionArn,
    };
    const machines = new Map<FlowName, sfn.StateMachine>();
    for (const flow of Object.values(FlowName)) {
      const logGroup = new logs.LogGroup(this, `${flow}-logs`, {
        // The vendedlogs prefix keeps Step Functions from growing the account's log resource policy.
        logGroupName: `/aws/vendedlogs/states/${Stack.of(this).stackName}-${flow}`,
        retention: props.logRetention ?? logs.RetentionDays.ONE_MONTH,
        removalPolicy: RemovalPolicy.DESTROY,
      });
      const machine = new sfn.StateMachine(this, flow, {
        definitionBody: sfn.DefinitionBody.fromFile(flowDefinitionPath(flow)),
        definitionSubstitutions: substitutions,
        stateMachineType: sfn.StateMachineType.STANDARD,
        logs: { destination: logGroup, level: sfn.LogLevel.ALL, includeExecutionData: true },
        tracingEnabled: true,
      });
      // Each flow may invoke only the task functions its ASL names, and only their unqualified
      // ARNs, so no `:*` (versions, aliases) grant.
      const invoked = flowSubstitutionsUsed(flow).map((name) => substitutions[name]);
      machine.addToRolePolicy(
        new iam.PolicyStatement({ actions: ['lambda:InvokeFunction'], resources: invoked }),
      );
      acknowledgeWildcard(
        machine,
        'Resource::*',
        'CloudWatch Logs delivery (logs:CreateLogDelivery, PutResourcePolicy, ...) and X-Ray tracing actions that ' +
          'Step Functions logging ALL and tracing require do not support resource-level permissions.',
      );
      machines.set(flow, machine);
    }
    this.stateMachines = machines;
  }

  /** Flow name → state machine ARN, as the api function reads it from STRATA_STATE_MACHINE_ARNS. */
  arnMap(): Record<string, string> {
    return Object.fromEntries(
      [...this.stateMachines].map(([flow, machine]) => [flow, machine.stateMachineArn]),
    );
  }

  grantStart(grantee: iam.IGrantable): void {
    for (const machine of this.stateMachines.values()) machine.grantStartExecution(grantee);
  }
}
