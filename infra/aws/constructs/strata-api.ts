/**
 * The REST API: every path (root and `{proxy+}`) goes to the api function, which does its own routing.
 * Callers sign requests with SigV4 (IAM authorization on every method).
 */
import { CfnOutput, Validations } from 'aws-cdk-lib';
import * as apigw from 'aws-cdk-lib/aws-apigateway';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import * as logs from 'aws-cdk-lib/aws-logs';
import { Construct } from 'constructs';

export interface StrataApiProps {
  handler: lambda.IFunction;
  /** Steady-state requests per second for the stage. @default 50 */
  throttlingRateLimit?: number;
  /** @default 100 */
  throttlingBurstLimit?: number;
  logRetention?: logs.RetentionDays;
}

export class StrataApi extends Construct {
  readonly api: apigw.RestApi;

  constructor(scope: Construct, id: string, props: StrataApiProps) {
    super(scope, id);
    const accessLogs = new logs.LogGroup(this, 'AccessLogs', {
      retention: props.logRetention ?? logs.RetentionDays.ONE_MONTH,
    });
    this.api = new apigw.RestApi(this, 'Api', {
      description: 'Strata storage orchestration API',
      endpointTypes: [apigw.EndpointType.REGIONAL],
      // Execution logging (loggingLevel below) needs the account-level CloudWatch role.
      cloudWatchRole: true,
      deployOptions: {
        stageName: 'v1',
        accessLogDestination: new apigw.LogGroupLogDestination(accessLogs),
        accessLogFormat: apigw.AccessLogFormat.jsonWithStandardFields({
          caller: true,
          httpMethod: true,
          ip: true,
          protocol: true,
          requestTime: true,
          resourcePath: true,
          responseLength: true,
          status: true,
          user: true,
        }),
        loggingLevel: apigw.MethodLoggingLevel.ERROR,
        dataTraceEnabled: false,
        metricsEnabled: true,
        tracingEnabled: true,
        throttlingRateLimit: props.throttlingRateLimit ?? 50,
        throttlingBurstLimit: props.throttlingBurstLimit ?? 100,
      },
    });
    const validator = this.api.addRequestValidator('Validator', {
      validateRequestBody: true,
      validateRequestParameters: true,
    });
    const methodOptions: apigw.MethodOptions = {
      authorizationType: apigw.AuthorizationType.IAM,
      requestValidator: validator,
    };
    const integration = new apigw.LambdaIntegration(props.handler, { allowTestInvoke: false });
    this.api.root.addMethod('ANY', integration, methodOptions);
    // Added explicitly: CDK applies a resource's default requestValidator only to explicit options.
    this.api.root.addProxy({ anyMethod: false }).addMethod('ANY', integration, methodOptions);

    const cloudWatchRole = this.api.node.tryFindChild('CloudWatchRole');
    if (cloudWatchRole) {
      Validations.of(cloudWatchRole).acknowledge({
        id: 'AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AmazonAPIGatewayPushToCloudWatchLogs]',
        reason:
          'The account-level role API Gateway uses to write execution logs; the AWS-managed policy is the ' +
          'documented, service-maintained permission set for it.',
      });
    }
    for (const method of this.api.methods) {
      Validations.of(method).acknowledge({
        id: 'AwsSolutions-COG4',
        reason:
          'Strata is called by operators and services with AWS credentials: every method uses IAM ' +
          '(SigV4) authorization instead of a Cognito user pool.',
      });
    }
    Validations.of(this.api.deploymentStage).acknowledge({
      id: 'AwsSolutions-APIG3',
      reason:
        'Every method requires SigV4-signed IAM callers and the stage is throttled; unsigned traffic is ' +
        'rejected before it reaches the integration, so a WAF web ACL is left to the operator.',
    });

    // One URL output, named for operators, instead of the construct's hashed `Endpoint` output.
    this.api.node.tryRemoveChild('Endpoint');
    new CfnOutput(scope, 'ApiUrl', { value: this.api.url, description: 'Base URL of the Strata API' });
  }
}
