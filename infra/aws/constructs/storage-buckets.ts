/**
 * Strata's buckets: the image store (templates, ISOs, snapshot chunks), SSM command output (host
 * results too large for GetCommandInvocation), and the access-log bucket both log to.
 */
import { Duration, RemovalPolicy, Validations } from 'aws-cdk-lib';
import * as s3 from 'aws-cdk-lib/aws-s3';
import { Construct } from 'constructs';

/** Key prefix for SSM Run Command output in the command-output bucket. */
export const SSM_OUTPUT_PREFIX = 'ssm';

export interface StorageBucketsProps {
  /** Days after which an unfinished multipart upload to the image store is aborted. @default 7 */
  abortIncompleteUploadsAfterDays?: number;
  /** Days SSM command output is kept. @default 30 */
  commandOutputRetentionDays?: number;
}

export class StorageBuckets extends Construct {
  readonly imageBucket: s3.Bucket;
  readonly commandOutputBucket: s3.Bucket;
  readonly accessLogBucket: s3.Bucket;

  constructor(scope: Construct, id: string, props: StorageBucketsProps = {}) {
    super(scope, id);
    const common = {
      blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
      enforceSSL: true,
      objectOwnership: s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
    } satisfies s3.BucketProps;

    this.accessLogBucket = new s3.Bucket(this, 'AccessLogs', {
      ...common,
      // Server access log delivery only writes to SSE-S3 buckets.
      encryption: s3.BucketEncryption.S3_MANAGED,
      objectOwnership: s3.ObjectOwnership.BUCKET_OWNER_PREFERRED,
      lifecycleRules: [{ id: 'expire-access-logs', expiration: Duration.days(365) }],
      removalPolicy: RemovalPolicy.RETAIN,
    });
    Validations.of(this.accessLogBucket).acknowledge({
      id: 'AwsSolutions-S1',
      reason:
        'This is the server access log destination; logging it into itself would loop and another log ' +
        'bucket would only move the question.',
    });

    this.imageBucket = new s3.Bucket(this, 'Images', {
      ...common,
      encryption: s3.BucketEncryption.S3_MANAGED,
      versioned: true,
      serverAccessLogsBucket: this.accessLogBucket,
      serverAccessLogsPrefix: 'images/',
      lifecycleRules: [
        {
          id: 'abort-incomplete-multipart-uploads',
          abortIncompleteMultipartUploadAfter: Duration.days(props.abortIncompleteUploadsAfterDays ?? 7),
        },
        {
          // Versioning guards against overwrites; old versions need not live forever.
          id: 'expire-noncurrent-versions',
          noncurrentVersionExpiration: Duration.days(30),
        },
      ],
      removalPolicy: RemovalPolicy.RETAIN,
    });

    this.commandOutputBucket = new s3.Bucket(this, 'CommandOutput', {
      ...common,
      encryption: s3.BucketEncryption.S3_MANAGED,
      serverAccessLogsBucket: this.accessLogBucket,
      serverAccessLogsPrefix: 'command-output/',
      lifecycleRules: [
        {
          id: 'expire-command-output',
          prefix: `${SSM_OUTPUT_PREFIX}/`,
          expiration: Duration.days(props.commandOutputRetentionDays ?? 30),
          abortIncompleteMultipartUploadAfter: Duration.days(1),
        },
      ],
      removalPolicy: RemovalPolicy.RETAIN,
    });
  }
}
