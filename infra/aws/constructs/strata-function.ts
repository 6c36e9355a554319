/**
 * The one Lambda construct: every Strata function gets the same runtime, architecture, tracing, log
 * group and bundling, and is wired to tables and buckets only through helpers that grant exactly the
 * actions the adapters use and set the env var the handlers read (names from functions/env-names.ts).
 */
import path from 'node:path';
import { Duration } from 'aws-cdk-lib';
import type { ITable } from 'aws-cdk-lib/aws-dynamodb';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import { NodejsFunction, OutputFormat } from 'aws-cdk-lib/aws-lambda-nodejs';
import * as logs from 'aws-cdk-lib/aws-logs';
import type { IBucket } from 'aws-cdk-lib/aws-s3';
import type { Construct } from 'constructs';
import { TableSchema } from '../../../functions/adapters/aws/table-schema.js';
import { EnvName } from '../../../functions/env-names.js';
import { acknowledgeWildcard, bucketObjectsFinding } from './nag.js';

/** The repository root, from this file's own location (infra/aws/constructs). */
export const REPO_ROOT = path.join(__dirname, '../../..');

/**
 * The newest Node.js Lambda runtime. AWS deprecated nodejs20.x on 2026-04-30 (creation blocked from
 * 2027-02-01), so functions run on 24 while the repository builds and tests on Node 20: the code uses
 * nothing newer than Node 20 offers, and the bundle targets the runtime it runs on.
 */
export const LAMBDA_RUNTIME = lambda.Runtime.NODEJS_24_X;

export type DataAccess = 'read' | 'readWrite';

/**
 * What a function does in an image bucket, by key prefix relative to a store's S3 prefix (e.g.
 * `templates/`, `backups/chunks/`): the actions are granted on those prefixes only.
 */
export interface ImageStoreAccess {
  read?: readonly string[];
  write?: readonly string[];
  delete?: readonly string[];
  /** Prefixes whose multipart uploads it aborts without writing them (the orphan sweep, compensations). */
  abortUploads?: readonly string[];
  listBucket?: boolean;
  /** s3:ListBucketMultipartUploads (the orphan sweep). */
  listUploads?: boolean;
}

export interface StrataFunctionProps {
  /** Handler file (exports `handler`), absolute. */
  entry: string;
  description: string;
  /** @default 512 */
  memorySize?: number;
  /** @default 30 seconds */
  timeout?: Duration;
  /** @default one month */
  logRetention?: logs.RetentionDays;
  environment?: Partial<Record<EnvName, string>>;
}

export class StrataFunction extends NodejsFunction {
  /** Its own role, so its policy holds only what the bind helpers added. */
  override readonly role: iam.Role;

  constructor(scope: Construct, id: string, props: StrataFunctionProps) {
    const role = new iam.Role(scope, `${id}Role`, {
      assumedBy: new iam.ServicePrincipal('lambda.amazonaws.com'),
      description: `Execution role of the Strata ${id} function`,
    });
    const logGroup = new logs.LogGroup(scope, `${id}Logs`, {
      retention: props.logRetention ?? logs.RetentionDays.ONE_MONTH,
    });
    super(scope, id, {
      entry: props.entry,
      handler: 'handler',
      description: props.description,
      // Node 20 is what the repository is built and tested on (engines, @types/node, CI image).
      runtime: LAMBDA_RUNTIME,
      architecture: lambda.Architecture.ARM_64,
      memorySize: props.memorySize ?? 512,
      timeout: props.timeout ?? Duration.seconds(30),
      tracing: lambda.Tracing.ACTIVE,
      role,
      logGroup,
      loggingFormat: lambda.LoggingFormat.JSON,
      projectRoot: REPO_ROOT,
      depsLockFilePath: path.join(REPO_ROOT, 'package-lock.json'),
      environment: {
        AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
        NODE_OPTIONS: '--enable-source-maps',
        [EnvName.LogLevel]: 'info',
        ...props.environment,
      },
      bundling: {
        // Bundle the pinned SDK instead of the runtime's copy, and never fall back to Docker.
        externalModules: [],
        forceDockerBundling: false,
        format: OutputFormat.CJS,
        target: 'node24',
        minify: true,
        sourceMap: true,
      },
    });
    this.role = role;
    // Writing to its own log group only; no AWSLambdaBasicExecutionRole with logs on every group.
    logGroup.grantWrite(role);
    acknowledgeWildcard(
      role,
      'Resource::*',
      'X-Ray PutTraceSegments/PutTelemetryRecords (active tracing) and any ' +
        'other statement on "*" here are actions without resource-level permissions.',
    );
  }

  /**
   * Item-level access to the one table and its GSIs (listed by name, no index wildcard), and
   * STRATA_TABLE_NAME. Transactions need no extra action: IAM checks each item's Put/Update/Delete/
   * ConditionCheck.
   */
  bindTable(table: ITable, access: DataAccess = 'readWrite'): this {
    const indexArns = [TableSchema.byType, TableSchema.byStore, TableSchema.byLease].map(
      (index) => `${table.tableArn}/index/${index.indexName}`,
    );
    const read = [
      'dynamodb:GetItem',
      'dynamodb:BatchGetItem',
      'dynamodb:Query',
      'dynamodb:ConditionCheckItem',
    ];
    const write = [
      'dynamodb:PutItem',
      'dynamodb:UpdateItem',
      'dynamodb:DeleteItem',
      'dynamodb:BatchWriteItem',
    ];
    this.role.addToPrincipalPolicy(
      new iam.PolicyStatement({
        actions: access === 'read' ? read : [...read, ...write],
        resources: [table.tableArn],
      }),
    );
    this.role.addToPrincipalPolicy(
      new iam.PolicyStatement({ actions: ['dynamodb:Query'], resources: indexArns }),
    );
    this.addEnvironment(EnvName.TableName, table.tableName);
    return this;
  }

  /**
   * dynamodb:Scan on the table (not its indexes): the orphan sweep reads every chunk of the backup
   * chunk index, whose items carry no index attributes. Only the function that runs the sweep.
   */
  allowTableScan(table: ITable): this {
    this.role.addToPrincipalPolicy(
      new iam.PolicyStatement({ actions: ['dynamodb:Scan'], resources: [table.tableArn] }),
    );
    return this;
  }

  /**
   * Object access to an image bucket, scoped to the key prefixes (relative to a store's own S3
   * prefix) and actions this function uses, and the bucket name in `envName`. An s3 store may carry
   * an operator-chosen prefix, so each prefix is granted at the bucket root and under any store
   * prefix (`p*`, and `p*` after any `store-prefix/`); keys are Strata's own layout
   * (functions/core/services/orphan-sweep.ts STRATA_PREFIXES and CHUNK_PREFIX), so no other Strata
   * object matches.
   *
   * s3:ListBucket stays unconditioned where the function reads: without it S3 answers a HeadObject
   * of a missing key with 403 instead of 404 (Strata heads destinations before writing them), and
   * the store check's HeadBucket needs it too; it lists key names, never contents.
   */
  bindImageStore(bucket: IBucket, access: ImageStoreAccess, envName?: EnvName): this {
    const arns = (prefixes: readonly string[]) =>
      prefixes.flatMap((p) => [bucket.arnForObjects(`${p}*`), bucket.arnForObjects(`*/${p}*`)]);
    const grant = (actions: string[], prefixes: readonly string[] | undefined) => {
      if (!prefixes?.length) return;
      this.role.addToPrincipalPolicy(new iam.PolicyStatement({ actions, resources: arns(prefixes) }));
    };
    // GetObject also covers HeadObject, presigned GETs this role signs and a copy's source.
    grant(['s3:GetObject'], access.read);
    // PutObject covers PutObject, the multipart calls that write (create, upload part, part copy,
    // complete) and the presigned PUTs and part URLs this role signs; a multipart writer may abort.
    grant(['s3:PutObject', 's3:AbortMultipartUpload'], access.write);
    grant(['s3:DeleteObject'], access.delete);
    grant(['s3:AbortMultipartUpload'], access.abortUploads);
    const bucketActions = [
      ...(access.listBucket ? ['s3:ListBucket'] : []),
      ...(access.listUploads ? ['s3:ListBucketMultipartUploads'] : []),
    ];
    if (bucketActions.length) {
      this.role.addToPrincipalPolicy(
        new iam.PolicyStatement({ actions: bucketActions, resources: [bucket.bucketArn] }),
      );
    }
    const prefixes = new Set(
      [access.read, access.write, access.delete, access.abortUploads].flatMap((list) => list ?? []),
    );
    for (const prefix of prefixes) {
      for (const pattern of [prefix, `*/${prefix}`]) {
        acknowledgeWildcard(
          this.role,
          bucketObjectsFinding(bucket, pattern),
          `Objects under '${prefix}' are keyed by Strata ids created at run time (and may sit under an ` +
            "s3 store's own prefix); only the actions this function uses on that prefix are granted.",
        );
      }
    }
    if (envName) this.addEnvironment(envName, bucket.bucketName);
    return this;
  }

  /**
   * Object access to a bucket (keys are Strata ids, so the whole bucket), listing and multipart
   * housekeeping, and the bucket name in `envName`.
   */
  bindBucket(
    bucket: IBucket,
    options: { access?: DataAccess; envName?: EnvName; prefix?: string } = {},
  ): this {
    const access = options.access ?? 'readWrite';
    const objects = bucket.arnForObjects(`${options.prefix ?? ''}*`);
    const objectActions =
      access === 'read'
        ? ['s3:GetObject']
        : [
            's3:GetObject',
            's3:PutObject',
            's3:DeleteObject',
            's3:AbortMultipartUpload',
            's3:ListMultipartUploadParts',
          ];
    this.role.addToPrincipalPolicy(new iam.PolicyStatement({ actions: objectActions, resources: [objects] }));
    this.role.addToPrincipalPolicy(
      new iam.PolicyStatement({
        actions: access === 'read' ? ['s3:ListBucket'] : ['s3:ListBucket', 's3:ListBucketMultipartUploads'],
        resources: [bucket.bucketArn],
      }),
    );
    acknowledgeWildcard(
      this.role,
      bucketObjectsFinding(bucket, options.prefix),
      "Objects are keyed by Strata ids created at run time, so access is granted on the bucket's object space " +
        '(or its prefix); actions are listed one by one.',
    );
    if (options.envName) this.addEnvironment(options.envName, bucket.bucketName);
    return this;
  }
}
