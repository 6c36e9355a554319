/**
 * One Step Functions Standard state machine per flow, from the definitions in statemachines/, with
 * the task functions substituted in.
 *
 * Each state machine has a fixed name, `<stack>-<flow>`, so its ARN is known without referring to the
 * state machine resource. That is what lets a task function start flows (a policy run starts a take,
 * a take with backup starts the backup): the function's environment and policy name the ARNs by
 * name, while the state machines refer to the function, and no dependency cycle arises.
 */
import { ArnFormat, RemovalPolicy, Stack } from 'aws-cdk-lib';
import * as iam from 'aws-cdk-lib/aws-iam';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import { Construct } from 'constructs';
import { FlowName } from '../../../functions/core/ports.js';
import { EnvName } from '../../../functions/env-names.js';
import {
  type FlowSubstitution,
  flowDefinitionText,
  flowSubstitutionsUsed,
} from '../../../statemachines/definitions.js';
import { acknowledgeWildcard, regionalArnFinding } from './nag.js';
import type { StrataFunction } from './strata-function.js';

/** Step Functions state machine names: 1–80 characters. */
const MAX_NAME = 80;

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
        stateMachineName: Flows.stateMachineName(this, flow),
        definitionBody: sfn.DefinitionBody.fromString(flowDefinitionText(flow)),
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

  /** `<stack>-<flow>`: the fixed name of a flow's state machine. */
  static stateMachineName(scope: Construct, flow: FlowName): string {
    const name = `${Stack.of(scope).stackName}-${flow}`;
    if (name.length > MAX_NAME) {
      throw new Error(
        `state machine name ${name} is longer than ${MAX_NAME} characters: use a shorter stack name`,
      );
    }
    return name;
  }

  /** A flow's state machine ARN, built from its fixed name (no reference to the resource). */
  arnOf(flow: FlowName): string {
    return Stack.of(this).formatArn({
      service: 'states',
      resource: 'stateMachine',
      resourceName: Flows.stateMachineName(this, flow),
      arnFormat: ArnFormat.COLON_RESOURCE_NAME,
    });
  }

  /** Flow name → state machine ARN, as functions read it from STRATA_STATE_MACHINE_ARNS. */
  arnMap(flows: readonly FlowName[] = Object.values(FlowName)): Record<string, string> {
    return Object.fromEntries(flows.map((flow) => [flow, this.arnOf(flow)]));
  }

  /**
   * Lets `fn` start exactly `flows` (states:StartExecution on their ARNs) and gives it every flow's
   * ARN in STRATA_STATE_MACHINE_ARNS (knowing an ARN grants nothing; the api function names the
   * snapshot-policy flow as its schedules' target, which only the Scheduler role may start).
   */
  bindStarter(fn: StrataFunction, flows: readonly FlowName[]): void {
    fn.role.addToPrincipalPolicy(
      new iam.PolicyStatement({
        actions: ['states:StartExecution'],
        resources: flows.map((flow) => this.arnOf(flow)),
      }),
    );
    fn.addEnvironment(EnvName.StateMachineArns, Stack.of(this).toJsonString(this.arnMap()));
  }

  /**
   * Lets `fn` stop executions of every flow (states:StopExecution on their executions), with every
   * flow's ARN in STRATA_STATE_MACHINE_ARNS: the reconciler stops a dead flow before compensating.
   */
  bindStopper(fn: StrataFunction): void {
    const stack = Stack.of(this);
    fn.role.addToPrincipalPolicy(
      new iam.PolicyStatement({
        actions: ['states:StopExecution'],
        resources: Object.values(FlowName).map((flow) =>
          stack.formatArn({
            service: 'states',
            resource: 'execution',
            resourceName: `${Flows.stateMachineName(this, flow)}:*`,
            arnFormat: ArnFormat.COLON_RESOURCE_NAME,
          }),
        ),
      }),
    );
    for (const flow of Object.values(FlowName)) {
      acknowledgeWildcard(
        fn.role,
        regionalArnFinding(this, 'states', `execution:${Flows.stateMachineName(this, flow)}:*`),
        'Execution names are job ids, known only at run time; the grant is per flow state machine.',
      );
    }
    fn.addEnvironment(EnvName.StateMachineArns, stack.toJsonString(this.arnMap()));
  }

  /** Lets `grantee` start one flow (e.g. the Scheduler role, the snapshot-policy flow). */
  grantStart(grantee: iam.IGrantable, flow: FlowName): void {
    grantee.grantPrincipal.addToPrincipalPolicy(
      new iam.PolicyStatement({ actions: ['states:StartExecution'], resources: [this.arnOf(flow)] }),
    );
  }
}
