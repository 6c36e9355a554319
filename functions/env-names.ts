/**
 * Names of the environment variables Strata's functions read. Imported by the CDK stack (which sets
 * them) and by the handlers (which read them), so the two can never drift apart.
 */
export const EnvName = {
  TableName: 'STRATA_TABLE_NAME',
  ImageBucket: 'STRATA_IMAGE_BUCKET',
  /** JSON map of flow name → state machine ARN. */
  StateMachineArns: 'STRATA_STATE_MACHINE_ARNS',
  SsmDocumentName: 'STRATA_SSM_DOCUMENT',
  SsmOutputBucket: 'STRATA_SSM_OUTPUT_BUCKET',
  SsmOutputPrefix: 'STRATA_SSM_OUTPUT_PREFIX',
  SchedulerGroup: 'STRATA_SCHEDULER_GROUP',
  /** The role EventBridge Scheduler assumes to start the snapshot-policy flow. */
  SchedulerRoleArn: 'STRATA_SCHEDULER_ROLE_ARN',
  LogLevel: 'STRATA_LOG_LEVEL',
  /** Operator allowlist for template URLs: comma-separated host names and CIDR ranges (SSRF rules). */
  FetchAllowlist: 'STRATA_FETCH_ALLOWLIST',
  /** Embedded stack and tests only: endpoint URLs of the local emulators. */
  DynamoEndpoint: 'STRATA_DYNAMODB_ENDPOINT',
  S3Endpoint: 'STRATA_S3_ENDPOINT',
} as const;
export type EnvName = (typeof EnvName)[keyof typeof EnvName];
