/**
 * Strata on AWS: the table, the buckets, the functions, one state machine per flow, the SSM documents
 * that reach on-prem hosts, the REST API, the reconciler schedule and the snapshot-policy schedule group.
 */
import path from 'node:path';
import { CfnOutput, Duration, Fn, Stack, type StackProps } from 'aws-cdk-lib';
import * as events from 'aws-cdk-lib/aws-events';
import * as targets from 'aws-cdk-lib/aws-events-targets';
import type * as iam from 'aws-cdk-lib/aws-iam';
import type * as logs from 'aws-cdk-lib/aws-logs';
import * as s3 from 'aws-cdk-lib/aws-s3';
import type { Construct } from 'constructs';
import { FlowName } from '../../functions/core/ports.js';
import { EnvName } from '../../functions/env-names.js';
import { routeDocs, routes } from '../../functions/handlers/api/routes.js';
import { ApiCallers } from './constructs/api-callers.js';
import { DataTable } from './constructs/data-table.js';
import { Flows } from './constructs/flows.js';
import { HostChannel, type HostTag } from './constructs/host-channel.js';
import { SnapshotScheduling } from './constructs/snapshot-scheduling.js';
import { SSM_OUTPUT_PREFIX, StorageBuckets } from './constructs/storage-buckets.js';
import { StrataApi } from './constructs/strata-api.js';
import { type ImageStoreAccess, REPO_ROOT, StrataFunction } from './constructs/strata-function.js';

const HANDLERS = path.join(REPO_ROOT, 'functions/handlers');

export interface StrataStackProps extends StackProps {
  /** Tag a managed instance must carry to receive Strata commands. @default StrataHost=true */
  hostTag?: HostTag;
  logRetention?: logs.RetentionDays;
  /** The host runtime's entry point. @default drivers/host-main.ts */
  hostRuntimeEntry?: string;
  /**
   * Host names and CIDR ranges template URLs may reach even though they are private or reserved
   * (STRATA_FETCH_ALLOWLIST, comma-separated). @default none: only public addresses
   */
  fetchAllowlist?: string;
  /**
   * Buckets besides the stack's own that operators may add as s3 image stores: the functions get
   * object access to each, and adding an s3 store in any other bucket is refused with 422.
   * @default none
   */
  extraImageBuckets?: string[];
  /**
   * Who may assume the API caller roles (read-only, operator, admin). @default the account root:
   * the account's own IAM policies then decide which users and roles may assume them.
   */
  apiCallerPrincipal?: iam.IPrincipal;
}

/** Flows the api function starts for operators (the snapshot-policy flow only its schedules start). */
const API_FLOWS = Object.values(FlowName).filter((flow) => flow !== FlowName.SnapshotPolicy);
/**
 * Flows started from inside other flows' steps: a policy run takes a snapshot, a take with backup
 * goes on to the backup, retention deletes the oldest snapshots.
 */
const STORE_TASK_FLOWS = [FlowName.SnapshotTake, FlowName.SnapshotBackup, FlowName.SnapshotDelete];

/**
 * What the daily verify job reads of each image store: a tenth of its chunks, a different tenth
 * each day (the sample is drawn per job), so every chunk is read about every ten days on average
 * without reading the whole store daily. `POST /stores/{id}/verify` reads everything.
 */
export const BACKUP_VERIFY_SCHEDULED = { sample: 0.1 } as const;

/**
 * The image store's key layout (relative to a store's S3 prefix): drivers/s3/client.ts s3ObjectPath
 * (`<kind>s/<id>/…`), backup-service.ts (chunks, manifests, plans), drivers/s3/lifecycle.ts (the
 * write probe `.strata-probe-<job>` at the store prefix). test/infra checks it against the sweep's
 * prefixes.
 */
export const IMAGE_PREFIXES = {
  images: ['templates/', 'isos/'],
  /** Volumes staged through an image store by a migration between pools no host shares. */
  staged: ['volumes/'],
  chunks: ['backups/chunks/'],
  manifests: ['backups/manifests/'],
  plans: ['backups/plans/'],
  /** Nothing writes here on an image store today; the sweep still removes what it finds. */
  snapshots: ['snapshots/'],
  probe: ['.strata-probe-'],
} as const;
const P = IMAGE_PREFIXES;

/**
 * What each function does in the image buckets: least privilege by prefix and action. A presigned
 * URL acts with the role that signed it, so a function that presigns for hosts holds the action.
 */
export const IMAGE_ACCESS = {
  // Uploads from the operator's machine (create, presign parts, complete, abort) and template deletes.
  api: {
    read: P.images,
    write: P.images,
    delete: P.images,
    listBucket: true,
  },
  // Template ingest (stream from a URL, verify an upload by reading it) and copies between stores;
  // a failed ingest or copy removes its partial object.
  imageTasks: {
    read: P.images,
    write: P.images,
    delete: P.images,
    listBucket: true,
  },
  // Template installs (presigned GETs for hosts), staged migrations, backups (chunks, manifests,
  // plans), restores, snapshot deletes (unheld chunks and the manifest), the store write probe, and
  // the orphan sweep, which removes what nothing owns under every prefix and aborts old uploads.
  storeTasks: {
    read: [...P.images, ...P.staged, ...P.chunks, ...P.manifests, ...P.plans],
    write: [...P.staged, ...P.chunks, ...P.manifests, ...P.plans, ...P.probe],
    delete: [...P.images, ...P.staged, ...P.snapshots, ...P.chunks, ...P.manifests, ...P.plans, ...P.probe],
    abortUploads: [...P.images],
    listBucket: true,
    listUploads: true,
  },
  // Compensations of expired flows: a failed ingest or copy (its upload and partial object), a
  // failed backup (its manifest and plans), a failed staged migration. Never chunks.
  reconciler: {
    read: [...P.images, ...P.plans, ...P.manifests],
    delete: [...P.images, ...P.staged, ...P.manifests, ...P.plans],
    abortUploads: [...P.images, ...P.staged],
    listBucket: true,
  },
} satisfies Record<string, ImageStoreAccess>;

export class StrataStack extends Stack {
  readonly api: StrataApi;
  readonly callers: ApiCallers;
  readonly functions: {
    api: StrataFunction;
    storeTasks: StrataFunction;
    imageTasks: StrataFunction;
    reconciler: StrataFunction;
  };
  readonly flows: Flows;
  readonly scheduling: SnapshotScheduling;

  constructor(scope: Construct, id: string, props: StrataStackProps = {}) {
    super(scope, id, props);
    const logRetention = props.logRetention;

    const { table } = new DataTable(this, 'Data');
    const buckets = new StorageBuckets(this, 'Storage');
    const hosts = new HostChannel(this, 'Hosts', {
      outputBucket: buckets.commandOutputBucket,
      outputPrefix: SSM_OUTPUT_PREFIX,
      hostTag: props.hostTag ?? { key: 'StrataHost', value: 'true' },
      hostRuntimeEntry: props.hostRuntimeEntry,
    });
    const scheduling = new SnapshotScheduling(this, 'SnapshotScheduling');
    this.scheduling = scheduling;
    const extraBuckets = (props.extraImageBuckets ?? []).map((name, i) =>
      s3.Bucket.fromBucketName(this, `ExtraImageBucket${i}`, name),
    );
    const imageBucketNames = [buckets.imageBucket.bucketName, ...(props.extraImageBuckets ?? [])];
    /**
     * Access to every image bucket (the same prefixes and actions in each), and their names (the
     * stack's own first).
     */
    const bindImageBuckets = (fn: StrataFunction, access: ImageStoreAccess): StrataFunction => {
      fn.bindImageStore(buckets.imageBucket, access, EnvName.ImageBucket);
      for (const bucket of extraBuckets) fn.bindImageStore(bucket, access);
      fn.addEnvironment(EnvName.ImageBuckets, Fn.join(',', imageBucketNames));
      return fn;
    };

    const storeTasks = new StrataFunction(this, 'StoreTasks', {
      entry: path.join(HANDLERS, 'store-tasks.ts'),
      description:
        'Strata workflow tasks: store, host, volume and snapshot steps, waiting on host operations',
      // Template installs and copies wait on hosts for as long as a Lambda may run.
      timeout: Duration.minutes(15),
      logRetention,
    }).bindTable(table);
    bindImageBuckets(storeTasks, IMAGE_ACCESS.storeTasks);
    hosts.bindSender(storeTasks);
    // The orphan-sweep flow's step runs here and reads the whole chunk index.
    storeTasks.allowTableScan(table);

    const reconciler = new StrataFunction(this, 'Reconciler', {
      entry: path.join(HANDLERS, 'reconciler.ts'),
      description: 'Strata reconciler: recovers entities whose lease expired in a transitional state',
      timeout: Duration.minutes(5),
      logRetention,
    }).bindTable(table);
    bindImageBuckets(reconciler, IMAGE_ACCESS.reconciler);
    hosts.bindSender(reconciler);
    new events.Rule(this, 'ReconcilerSchedule', {
      description: 'Runs the Strata reconciler every five minutes',
      schedule: events.Schedule.rate(Duration.minutes(5)),
      targets: [new targets.LambdaFunction(reconciler, { retryAttempts: 2 })],
    });

    const imageTasks = new StrataFunction(this, 'ImageTasks', {
      entry: path.join(HANDLERS, 'image-tasks.ts'),
      description:
        'Strata workflow tasks: template ingest (URL → image store, hashed and inspected) and copies',
      // Streams whole images: the longest a Lambda may run, and memory for network and hashing throughput.
      timeout: Duration.minutes(15),
      memorySize: 1769,
      logRetention,
      environment: { [EnvName.FetchAllowlist]: props.fetchAllowlist ?? '' },
    }).bindTable(table);
    bindImageBuckets(imageTasks, IMAGE_ACCESS.imageTasks);
    hosts.bindSender(imageTasks);

    this.flows = new Flows(this, 'Flows', { storeTasks, imageTasks, logRetention });
    this.flows.bindStarter(storeTasks, STORE_TASK_FLOWS);
    // A recovery stops the dead flow's execution and its host commands before it compensates.
    this.flows.bindStopper(reconciler);
    hosts.bindCanceller(reconciler);
    // The orphan sweep and the backup verify jobs: started by the reconciler on their own schedules.
    this.flows.bindStarter(reconciler, [FlowName.OrphanSweep, FlowName.BackupVerify]);
    new events.Rule(this, 'OrphanSweepSchedule', {
      description: 'Starts the Strata orphan sweep every six hours',
      schedule: events.Schedule.rate(Duration.hours(6)),
      targets: [
        new targets.LambdaFunction(reconciler, {
          retryAttempts: 2,
          event: events.RuleTargetInput.fromObject({ sweep: true }),
        }),
      ],
    });
    // Like PBS verify jobs: every day a sample of each image store's chunks is read and re-hashed.
    new events.Rule(this, 'BackupVerifySchedule', {
      description: "Starts a Strata backup verify job (a sample of each image store's chunks) every day",
      schedule: events.Schedule.rate(Duration.days(1)),
      targets: [
        new targets.LambdaFunction(reconciler, {
          retryAttempts: 2,
          event: events.RuleTargetInput.fromObject({ verify: BACKUP_VERIFY_SCHEDULED }),
        }),
      ],
    });

    const api = new StrataFunction(this, 'Api', {
      entry: path.join(HANDLERS, 'api.ts'),
      description: 'Strata REST API',
      // API Gateway gives up after 29 seconds.
      timeout: Duration.seconds(29),
      logRetention,
      environment: { [EnvName.FetchAllowlist]: props.fetchAllowlist ?? '' },
    }).bindTable(table);
    bindImageBuckets(api, IMAGE_ACCESS.api);
    this.flows.bindStarter(api, API_FLOWS);
    scheduling.bindManager(api);
    // Scheduler may start the snapshot-policy flow, and nothing else.
    this.flows.grantStart(scheduling.schedulerRole, FlowName.SnapshotPolicy);

    this.api = new StrataApi(this, 'Http', { handler: api, logRetention });
    // Caller roles per route group, from the API's own route table (so a new route is covered).
    this.callers = new ApiCallers(this, 'ApiCallers', {
      api: this.api.api,
      routes: routes.map((r) => ({
        method: r.method,
        path: r.path,
        admin: routeDocs.get(`${r.method} ${r.path}`)?.admin === true,
      })),
      ...(props.apiCallerPrincipal ? { principal: props.apiCallerPrincipal } : {}),
    });
    this.functions = { api, storeTasks, imageTasks, reconciler };

    new CfnOutput(this, 'TableName', { value: table.tableName });
    new CfnOutput(this, 'ImageBucketName', { value: buckets.imageBucket.bucketName });
    new CfnOutput(this, 'CommandOutputBucketName', { value: buckets.commandOutputBucket.bucketName });
    new CfnOutput(this, 'RunDocumentName', { value: hosts.runDocumentName });
    if (hosts.installDocumentName) {
      new CfnOutput(this, 'InstallDocumentName', { value: hosts.installDocumentName });
    }
    new CfnOutput(this, 'HostRoleName', {
      value: hosts.hostRole.roleName,
      description: 'IAM role for `aws ssm create-activation --iam-role` when registering hosts',
    });
    new CfnOutput(this, 'SchedulerGroupName', { value: scheduling.groupName });
  }
}
