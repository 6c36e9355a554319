/**
 * How work reaches on-prem hosts: two SSM Command documents and the host runtime distribution.
 *
 * - `<stack>-RunHostOperation` runs the host runtime with one parameter, `Request`, whose allowedPattern
 *   only admits base64 (what encodeHostRequest produces). SSM rejects anything else before it reaches
 *   the host, so no request text is ever interpreted by a shell.
 * - `<stack>-InstallHostRuntime` installs drivers/host-main.ts, bundled by esbuild into one JS file and
 *   shipped as an S3 asset, at /opt/strata. Hosts need Node.js 20+ on PATH (the bundle is plain JS).
 * - A role for SSM hybrid activations (`aws ssm create-activation --iam-role <HostRoleName>`), letting
 *   registered hosts fetch the runtime and write command output.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import {
  Annotations,
  AssetHashType,
  BundlingOutput,
  DockerImage,
  FileSystem,
  Stack,
  Validations,
} from 'aws-cdk-lib';
import * as iam from 'aws-cdk-lib/aws-iam';
import type * as s3 from 'aws-cdk-lib/aws-s3';
import { Asset } from 'aws-cdk-lib/aws-s3-assets';
import * as ssm from 'aws-cdk-lib/aws-ssm';
import { Construct } from 'constructs';
import {
  HOST_REQUEST_ALLOWED_PATTERN,
  HOST_REQUEST_PARAMETER,
  HOST_STEP_NAME,
} from '../../../functions/adapters/aws/ssm-channel.js';
import { EnvName } from '../../../functions/env-names.js';
import { bundleHostRuntime } from '../../host-runtime-bundle.js';
import { acknowledgeWildcard, bucketObjectsFinding, regionalArnFinding } from './nag.js';
import { REPO_ROOT, type StrataFunction } from './strata-function.js';

/** Context key: set to true to leave the host runtime asset and install document out of the app. */
export const SKIP_HOST_RUNTIME_CONTEXT = 'strata:skipHostRuntime';

export const HOST_RUNTIME_ENTRY = path.join(REPO_ROOT, 'drivers/host-main.ts');
const HOST_INSTALL_DIR = '/opt/strata';
const HOST_WORK_DIR = '/var/lib/strata';
/** The runtime enforces each request's deadlineSeconds (≤ 86,400); the step limit sits just above it. */
const RUN_STEP_TIMEOUT_SECONDS = 90_000;

export interface HostTag {
  key: string;
  value: string;
}

export interface HostChannelProps {
  outputBucket: s3.IBucket;
  outputPrefix: string;
  /** Only managed instances carrying this tag may receive Strata commands. */
  hostTag: HostTag;
  /** The host runtime's entry point. @default drivers/host-main.ts */
  hostRuntimeEntry?: string;
}

export class HostChannel extends Construct {
  readonly runDocumentName: string;
  readonly installDocumentName?: string;
  readonly hostRole: iam.Role;
  private readonly props: HostChannelProps;

  constructor(scope: Construct, id: string, props: HostChannelProps) {
    super(scope, id);
    this.props = props;
    const stack = Stack.of(this);
    this.runDocumentName = `${stack.stackName}-RunHostOperation`;

    new ssm.CfnDocument(this, 'RunHostOperation', {
      name: this.runDocumentName,
      documentType: 'Command',
      documentFormat: 'JSON',
      updateMethod: 'NewVersion',
      content: {
        schemaVersion: '2.2',
        description:
          'Runs one Strata host operation. The request is base64 JSON validated by the host runtime.',
        parameters: {
          [HOST_REQUEST_PARAMETER]: {
            type: 'String',
            description: 'Base64 of the JSON host request (encodeHostRequest).',
            allowedPattern: HOST_REQUEST_ALLOWED_PATTERN,
          },
        },
        mainSteps: [
          {
            action: 'aws:runShellScript',
            name: HOST_STEP_NAME,
            precondition: { StringEquals: ['platformType', 'Linux'] },
            inputs: {
              timeoutSeconds: String(RUN_STEP_TIMEOUT_SECONDS),
              workingDirectory: '/',
              runCommand: [
                `exec ${HOST_INSTALL_DIR}/bin/strata-host --request-b64 {{ ${HOST_REQUEST_PARAMETER} }} --work-dir ${HOST_WORK_DIR}`,
              ],
            },
          },
        ],
      },
    });

    this.hostRole = new iam.Role(this, 'HostRole', {
      description: 'Role of Strata hosts registered with SSM hybrid activations',
      assumedBy: new iam.ServicePrincipal('ssm.amazonaws.com', {
        conditions: { StringEquals: { 'aws:SourceAccount': stack.account } },
      }),
      managedPolicies: [iam.ManagedPolicy.fromAwsManagedPolicyName('AmazonSSMManagedInstanceCore')],
    });
    Validations.of(this.hostRole).acknowledge({
      id: 'AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/AmazonSSMManagedInstanceCore]',
      reason:
        'AmazonSSMManagedInstanceCore is the AWS-maintained minimum for an SSM managed node (agent ' +
        'registration, messages, Run Command); copying it inline would drift from what the agent needs.',
    });
    // The SSM agent on the host writes command output with the host's credentials.
    this.hostRole.addToPrincipalPolicy(
      new iam.PolicyStatement({
        actions: ['s3:PutObject'],
        resources: [props.outputBucket.arnForObjects(`${props.outputPrefix}/*`)],
      }),
    );
    acknowledgeWildcard(
      this.hostRole,
      bucketObjectsFinding(props.outputBucket, `${props.outputPrefix}/`),
      'SSM writes output under <prefix>/<command id>/<instance id>/..., ids known only at run time.',
    );

    this.installDocumentName = this.addHostRuntime(stack);
  }

  /** ssm:SendCommand with Strata's run document to tagged hosts only, reading results, and the env vars. */
  bindSender(fn: StrataFunction): void {
    const stack = Stack.of(this);
    fn.role.addToPrincipalPolicy(
      new iam.PolicyStatement({
        actions: ['ssm:SendCommand'],
        resources: [
          stack.formatArn({ service: 'ssm', resource: 'document', resourceName: this.runDocumentName }),
        ],
      }),
    );
    const instances = [
      stack.formatArn({ service: 'ssm', resource: 'managed-instance', resourceName: '*' }),
      stack.formatArn({ service: 'ec2', resource: 'instance', resourceName: '*' }),
    ];
    fn.role.addToPrincipalPolicy(
      new iam.PolicyStatement({
        actions: ['ssm:SendCommand'],
        resources: instances,
        conditions: {
          StringEquals: { [`ssm:resourceTag/${this.props.hostTag.key}`]: this.props.hostTag.value },
        },
      }),
    );
    fn.role.addToPrincipalPolicy(
      new iam.PolicyStatement({ actions: ['ssm:GetCommandInvocation'], resources: ['*'] }),
    );
    for (const finding of [
      regionalArnFinding(this, 'ssm', 'managed-instance/*'),
      regionalArnFinding(this, 'ec2', 'instance/*'),
    ]) {
      acknowledgeWildcard(
        fn.role,
        finding,
        `Hosts register at run time; SendCommand is limited to instances tagged ${this.props.hostTag.key}=` +
          `${this.props.hostTag.value} and to the Strata run document.`,
      );
    }
    fn.bindBucket(this.props.outputBucket, { access: 'read', prefix: `${this.props.outputPrefix}/` });
    fn.addEnvironment(EnvName.SsmDocumentName, this.runDocumentName);
    fn.addEnvironment(EnvName.SsmOutputBucket, this.props.outputBucket.bucketName);
    fn.addEnvironment(EnvName.SsmOutputPrefix, this.props.outputPrefix);
  }

  private addHostRuntime(stack: Stack): string | undefined {
    if (
      stack.node.tryGetContext(SKIP_HOST_RUNTIME_CONTEXT) === true ||
      stack.node.tryGetContext(SKIP_HOST_RUNTIME_CONTEXT) === 'true'
    ) {
      return undefined;
    }
    const entry = this.props.hostRuntimeEntry ?? HOST_RUNTIME_ENTRY;
    if (!existsSync(entry)) {
      Annotations.of(this).addWarningV2(
        'strata:host-runtime-missing',
        `${path.relative(REPO_ROOT, entry)} does not exist; the host runtime asset and the install ` +
          'document are left out.',
      );
      return undefined;
    }

    const runtime = new Asset(this, 'HostRuntime', {
      path: path.join(REPO_ROOT, 'drivers'),
      // drivers/ imports nothing outside itself but npm packages: its sources plus the lockfile say
      // exactly when the bundle changes, and keep a stale bundle from being reused.
      assetHashType: AssetHashType.CUSTOM,
      assetHash: createHash('sha256')
        .update(FileSystem.fingerprint(path.join(REPO_ROOT, 'drivers')))
        .update(readFileSync(path.join(REPO_ROOT, 'package-lock.json')))
        .digest('hex'),
      bundling: {
        // Never pulled: local bundling always succeeds, and there is no Docker here.
        image: DockerImage.fromRegistry('strata-local-bundling-only'),
        outputType: BundlingOutput.SINGLE_FILE,
        local: {
          tryBundle(outputDir: string): boolean {
            bundleHostRuntime(path.join(outputDir, 'strata-host.js'), entry);
            return true;
          },
        },
      },
    });
    this.hostRole.addToPrincipalPolicy(
      new iam.PolicyStatement({
        actions: ['s3:GetObject'],
        resources: [
          stack.formatArn({
            service: 's3',
            region: '',
            account: '',
            resource: runtime.s3BucketName,
            resourceName: runtime.s3ObjectKey,
          }),
        ],
      }),
    );

    const name = `${stack.stackName}-InstallHostRuntime`;
    const staging = `${HOST_INSTALL_DIR}/staging`;
    new ssm.CfnDocument(this, 'InstallHostRuntime', {
      name,
      documentType: 'Command',
      documentFormat: 'JSON',
      updateMethod: 'NewVersion',
      content: {
        schemaVersion: '2.2',
        description: `Installs the Strata host runtime at ${HOST_INSTALL_DIR}. Requires Node.js 20 or newer on PATH.`,
        mainSteps: [
          {
            action: 'aws:downloadContent',
            name: 'downloadHostRuntime',
            precondition: { StringEquals: ['platformType', 'Linux'] },
            inputs: {
              sourceType: 'S3',
              sourceInfo: stack.toJsonString({ path: runtime.httpUrl }),
              destinationPath: staging,
            },
          },
          {
            action: 'aws:runShellScript',
            name: 'installHostRuntime',
            precondition: { StringEquals: ['platformType', 'Linux'] },
            inputs: { timeoutSeconds: '300', runCommand: installScript(staging) },
          },
        ],
      },
    });
    return name;
  }
}

/** Fixed install steps: checks Node, puts the bundle in lib/ and a launcher in bin/. */
function installScript(staging: string): string[] {
  return [
    'set -eu',
    'if ! command -v node >/dev/null 2>&1; then echo "Strata host runtime needs Node.js 20+ on PATH" >&2; exit 1; fi',
    'major=$(node -p "process.versions.node.split(\'.\')[0]")',
    'if [ "$major" -lt 20 ]; then echo "Strata host runtime needs Node.js 20+, found $(node --version)" >&2; exit 1; fi',
    `set -- ${staging}/*.js`,
    'if [ "$#" -ne 1 ] || [ ! -f "$1" ]; then echo "expected one downloaded bundle" >&2; exit 1; fi',
    `install -d -m 0755 ${HOST_INSTALL_DIR}/bin ${HOST_INSTALL_DIR}/lib`,
    `install -d -m 0700 ${HOST_WORK_DIR}`,
    `install -m 0644 "$1" ${HOST_INSTALL_DIR}/lib/strata-host.js.new`,
    `mv -f ${HOST_INSTALL_DIR}/lib/strata-host.js.new ${HOST_INSTALL_DIR}/lib/strata-host.js`,
    `printf '#!/bin/sh\\nexec node ${HOST_INSTALL_DIR}/lib/strata-host.js "$@"\\n' > ${HOST_INSTALL_DIR}/bin/strata-host`,
    `chmod 0755 ${HOST_INSTALL_DIR}/bin/strata-host`,
    `rm -rf ${staging}`,
    `echo "installed $(sha256sum ${HOST_INSTALL_DIR}/lib/strata-host.js)"`,
  ];
}
