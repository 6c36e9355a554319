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
  /**
   * Every bucket the functions hold an IAM grant for (comma-separated; the stack's image bucket and
   * any the operator added): an s3 image store in another bucket is refused with 422 when added.
   */
  ImageBuckets: 'STRATA_IMAGE_BUCKETS',
  /** The host runtime build this control plane was deployed with; hosts of another build refuse work. */
  HostBuild: 'STRATA_HOST_BUILD',
  /**
   * Host command polling (first interval, longest interval) and how long one run of a step waits for
   * a host command before it suspends (the state machine then waits), in ms. Production defaults suit
   * SSM; the embedded stack sets shorter ones.
   */
  HostPollMs: 'STRATA_HOST_POLL_MS',
  HostMaxPollMs: 'STRATA_HOST_MAX_POLL_MS',
  HostWaitBudgetMs: 'STRATA_HOST_WAIT_BUDGET_MS',
  /** Longest Wait (seconds) a suspended host step asks the state machine for. */
  HostMaxWaitSeconds: 'STRATA_HOST_MAX_WAIT_SECONDS',
  /**
   * How old (seconds) a lazily restored volume's chunk list may get before the hydration step
   * presigns it anew; default half its lifetime (functions/core/grants.ts).
   */
  LazyRenewSeconds: 'STRATA_LAZY_RENEW_SECONDS',
  /** Operator allowlist for template URLs: comma-separated host names and CIDR ranges (SSRF rules). */
  FetchAllowlist: 'STRATA_FETCH_ALLOWLIST',
  /**
   * Integration test harness only (never read by a function): the shared emulators' endpoints. The
   * functions reach services through the SDK's standard AWS_ENDPOINT_URL_<SERVICE> settings.
   */
  DynamoEndpoint: 'STRATA_DYNAMODB_ENDPOINT',
  S3Endpoint: 'STRATA_S3_ENDPOINT',
} as const;
export type EnvName = (typeof EnvName)[keyof typeof EnvName];
