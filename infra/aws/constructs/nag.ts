/**
 * cdk-nag 3 acknowledgements. Wildcard findings (AwsSolutions-IAM5) are acknowledged one finding at a
 * time, so each wildcard we accept is named, with its reason, next to the code that creates it.
 */
import { type CfnElement, Stack, Token, Validations } from 'aws-cdk-lib';
import type { IBucket } from 'aws-cdk-lib/aws-s3';
import type { IConstruct } from 'constructs';

export function acknowledgeWildcard(scope: IConstruct, finding: string, reason: string): void {
  Validations.of(scope).acknowledge({ id: `AwsSolutions-IAM5[${finding}]`, reason });
}

/** The IAM5 finding for `bucket.arnForObjects(prefix + '*')`, as cdk-nag prints it. */
export function bucketObjectsFinding(bucket: IBucket, prefix = ''): string {
  const cfn = bucket.node.defaultChild;
  // An imported bucket (extraImageBuckets) has no resource here: its ARN is built from its name.
  if (!cfn) return `Resource::arn:<AWS::Partition>:s3:::${bucket.bucketName}/${prefix}*`;
  return `Resource::<${Stack.of(bucket).getLogicalId(cfn as CfnElement)}.Arn>/${prefix}*`;
}

/**
 * The IAM5 finding for `stack.formatArn(...)` ending in `tail`: cdk-nag prints pseudo parameters in
 * angle brackets and concrete account/region (an env-bound stack) as they are.
 */
export function regionalArnFinding(scope: IConstruct, service: string, tail: string): string {
  const stack = Stack.of(scope);
  const region = Token.isUnresolved(stack.region) ? '<AWS::Region>' : stack.region;
  const account = Token.isUnresolved(stack.account) ? '<AWS::AccountId>' : stack.account;
  return `Resource::arn:<AWS::Partition>:${service}:${region}:${account}:${tail}`;
}
