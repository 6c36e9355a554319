/**
 * How work reaches on-prem hosts: two SSM Command documents, the host runtime distribution and the
 * State Manager association that installs and upgrades it (docs/host-onboarding.md).
 *
 * - `<stack>-RunHostOperation` runs the host runtime with one parameter, `Request`, whose allowedPattern
 *   only admits base64 (what encodeHostRequest produces). SSM rejects anything else before it reaches
 *   the host, so no request text is ever interpreted by a shell.
 * - `<stack>-InstallHostRuntime` checks the prerequisites (Node.js 20+, qemu-img, qemu-nbd) and installs
 *   drivers/host-main.ts, bundled by esbuild into one JS file and shipped as an S3 asset, into
 *   /opt/strata/versions/<build>; `current` is switched atomically and older versions are removed once
 *   no host process runs them.
 * - An association runs the install document on every managed instance tagged as a Strata host; its
 *   `BuildId` parameter is the bundle's build, so each deploy of a new build re-runs it (the upgrade).
 * - A role for SSM hybrid activations (`aws ssm create-activation --iam-role <HostRoleName>`), letting
 *   registered hosts fetch the runtime and write command output.
 *
 * Every host path in the documents is under `${STRATA_HOST_ROOT:-}`: unset on a real host (so `/`),
 * a host's own directory for the embedded stack's local hosts. It comes from the SSM agent's
 * environment on the host, never from a command parameter.
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
/** The root every host path is under: `/` on real hosts (the variable is unset there). */
// biome-ignore lint/suspicious/noTemplateCurlyInString: a shell expansion, written into the documents
const ROOT = '${STRATA_HOST_ROOT:-}';
const HOST_INSTALL_DIR = `${ROOT}/opt/strata`;
const HOST_WORK_DIR = `${ROOT}/var/lib/strata`;
/** The install document's one parameter: the build to install (a hex hash). */
export const BUILD_ID_PARAMETER = 'BuildId';
export const BUILD_ID_PATTERN = '^[0-9a-f]{64}$';
/** Where association runs write their output, under the command-output prefix. */
const ASSOCIATION_OUTPUT_FOLDER = 'associations';
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
  /** The host runtime build this stack deploys (undefined when the runtime asset is left out). */
  readonly hostBuild?: string;
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
                `exec "${HOST_INSTALL_DIR}/bin/strata-host" --request-b64 {{ ${HOST_REQUEST_PARAMETER} }} --work-dir "${HOST_WORK_DIR}"`,
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
    // The SSM agent on the host writes command output with the host's credentials: it reads the
    // bucket's default encryption first and uploads with the bucket-owner-full-control ACL.
    this.hostRole.addToPrincipalPolicy(
      new iam.PolicyStatement({
        actions: ['s3:PutObject', 's3:PutObjectAcl'],
        resources: [props.outputBucket.arnForObjects(`${props.outputPrefix}/*`)],
      }),
    );
    this.hostRole.addToPrincipalPolicy(
      new iam.PolicyStatement({
        actions: ['s3:GetEncryptionConfiguration'],
        resources: [props.outputBucket.bucketArn],
      }),
    );
    acknowledgeWildcard(
      this.hostRole,
      bucketObjectsFinding(props.outputBucket, `${props.outputPrefix}/`),
      'SSM writes output under <prefix>/<command id>/<instance id>/..., ids known only at run time.',
    );

    const runtime = this.addHostRuntime(stack);
    this.installDocumentName = runtime?.documentName;
    this.hostBuild = runtime?.build;
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
    if (this.hostBuild) fn.addEnvironment(EnvName.HostBuild, this.hostBuild);
    fn.addEnvironment(EnvName.SsmOutputBucket, this.props.outputBucket.bucketName);
    fn.addEnvironment(EnvName.SsmOutputPrefix, this.props.outputPrefix);
  }

  /**
   * ssm:CancelCommand, for the reconciler: a recovery stops the host commands of a dead flow before
   * it undoes anything. (CancelCommand has no resource-level permissions.)
   */
  bindCanceller(fn: StrataFunction): void {
    fn.role.addToPrincipalPolicy(
      new iam.PolicyStatement({ actions: ['ssm:CancelCommand'], resources: ['*'] }),
    );
  }

  private addHostRuntime(stack: Stack): { documentName: string; build: string } | undefined {
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

    // drivers/ imports nothing outside itself but npm packages: its sources plus the lockfile say
    // exactly when the bundle changes, keep a stale bundle from being reused, and name the build.
    const build = createHash('sha256')
      .update(FileSystem.fingerprint(path.join(REPO_ROOT, 'drivers')))
      .update(readFileSync(path.join(REPO_ROOT, 'package-lock.json')))
      .update(readFileSync(entry))
      .digest('hex');
    const runtime = new Asset(this, 'HostRuntime', {
      path: path.join(REPO_ROOT, 'drivers'),
      assetHashType: AssetHashType.CUSTOM,
      assetHash: build,
      bundling: {
        // Never pulled: local bundling always succeeds, and there is no Docker here.
        image: DockerImage.fromRegistry('strata-local-bundling-only'),
        outputType: BundlingOutput.SINGLE_FILE,
        local: {
          tryBundle(outputDir: string): boolean {
            bundleHostRuntime(path.join(outputDir, 'strata-host.js'), entry, build);
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
    // aws:downloadContent takes a plain path (no shell expansion): the real one, which the embedded
    // stack's local agent places under the host's root as it does every path it handles itself.
    const download = '/opt/strata/staging';
    const staging = `${HOST_INSTALL_DIR}/staging`;
    new ssm.CfnDocument(this, 'InstallHostRuntime', {
      name,
      documentType: 'Command',
      documentFormat: 'JSON',
      updateMethod: 'NewVersion',
      content: {
        schemaVersion: '2.2',
        description:
          'Checks the Strata host prerequisites (Node.js 20+, qemu-img, qemu-nbd) and installs the host runtime ' +
          `build {{ ${BUILD_ID_PARAMETER} }} under /opt/strata/versions, switching /opt/strata/current atomically.`,
        parameters: {
          [BUILD_ID_PARAMETER]: {
            type: 'String',
            description: 'The host runtime build to install (the bundle baked it in; the install checks it).',
            allowedPattern: BUILD_ID_PATTERN,
            default: build,
          },
        },
        mainSteps: [
          {
            action: 'aws:runShellScript',
            name: 'checkPrerequisites',
            precondition: { StringEquals: ['platformType', 'Linux'] },
            inputs: { timeoutSeconds: '60', runCommand: prerequisiteScript() },
          },
          {
            action: 'aws:downloadContent',
            name: 'downloadHostRuntime',
            precondition: { StringEquals: ['platformType', 'Linux'] },
            inputs: {
              sourceType: 'S3',
              sourceInfo: stack.toJsonString({ path: runtime.httpUrl }),
              destinationPath: download,
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

    // State Manager: every tagged host gets the runtime, and a new build (a new parameter value)
    // makes CloudFormation update the association, which runs it again: that is the upgrade.
    const association = new ssm.CfnAssociation(this, 'InstallHostRuntimeAssociation', {
      name,
      associationName: `${stack.stackName}-host-runtime`,
      targets: [{ key: `tag:${this.props.hostTag.key}`, values: [this.props.hostTag.value] }],
      parameters: { [BUILD_ID_PARAMETER]: [build] },
      // Re-checked daily: a host that lost a prerequisite shows up as non-compliant.
      scheduleExpression: 'rate(1 day)',
      applyOnlyAtCronInterval: false,
      // Rolls out to a quarter of the hosts at a time and stops when a quarter of them fail.
      maxConcurrency: '25%',
      maxErrors: '25%',
      complianceSeverity: 'HIGH',
      outputLocation: {
        s3Location: {
          outputS3BucketName: this.props.outputBucket.bucketName,
          outputS3KeyPrefix: `${this.props.outputPrefix}/${ASSOCIATION_OUTPUT_FOLDER}`,
        },
      },
    });
    association.node.addDependency(this.hostRole);
    return { documentName: name, build };
  }
}

/** Fails with one line per missing prerequisite, so the association's output says what to install. */
function prerequisiteScript(): string[] {
  return [
    'set -u',
    'missing=0',
    'if ! command -v node >/dev/null 2>&1; then echo "Strata host prerequisite missing: Node.js 20+ (node on PATH)" >&2; missing=1;',
    'else major=$(node -p "process.versions.node.split(\'.\')[0]"); if [ "$major" -lt 20 ]; then echo "Strata host prerequisite: Node.js 20+ is required, found $(node --version)" >&2; missing=1; fi; fi',
    'if ! command -v qemu-img >/dev/null 2>&1; then echo "Strata host prerequisite missing: qemu-img (Debian/Ubuntu: apt-get install qemu-utils)" >&2; missing=1; fi',
    'if ! command -v qemu-nbd >/dev/null 2>&1; then echo "Strata host prerequisite missing: qemu-nbd (Debian/Ubuntu: apt-get install qemu-utils)" >&2; missing=1; fi',
    'if [ "$missing" -ne 0 ]; then exit 1; fi',
    'echo "prerequisites: node $(node --version), $(qemu-img --version | head -1)"',
  ];
}

/**
 * Fixed install steps: the downloaded bundle goes to versions/<build>/ (checked to carry that build),
 * `current` is switched with an atomic rename, and every other version that no running host process
 * uses (none in /proc/<pid>/cmdline) is removed, except the previous one.
 */
function installScript(staging: string): string[] {
  const dir = HOST_INSTALL_DIR;
  return [
    'set -eu',
    `build="{{ ${BUILD_ID_PARAMETER} }}"`,
    `set -- "${staging}"/*.js`,
    'if [ "$#" -ne 1 ] || [ ! -f "$1" ]; then echo "expected one downloaded bundle" >&2; exit 1; fi',
    'if ! grep -q "$build" "$1"; then echo "the downloaded bundle is not build $build" >&2; exit 1; fi',
    `install -d -m 0755 "${dir}/bin" "${dir}/versions"`,
    `install -d -m 0700 "${HOST_WORK_DIR}"`,
    `target="${dir}/versions/$build"`,
    'if [ ! -f "$target/strata-host.js" ]; then',
    '  install -d -m 0755 "$target.new"',
    '  install -m 0644 "$1" "$target.new/strata-host.js"',
    '  rm -rf "$target" && mv "$target.new" "$target"',
    'fi',
    `previous=$(readlink "${dir}/current" 2>/dev/null || true)`,
    `ln -sfn "versions/$build" "${dir}/current.new" && mv -T "${dir}/current.new" "${dir}/current"`,
    // The launcher resolves `current` once, so a running command keeps the version it started with.
    `printf '%s\n' '#!/bin/sh' 'here=$(dirname "$(dirname "$(readlink -f "$0")")")' 'exec node "$(readlink -f "$here/current")/strata-host.js" "$@"' > "${dir}/bin/strata-host.new"`,
    `chmod 0755 "${dir}/bin/strata-host.new" && mv -f "${dir}/bin/strata-host.new" "${dir}/bin/strata-host"`,
    `for old in "${dir}"/versions/*; do`,
    '  [ -d "$old" ] || continue',
    '  name=$(basename "$old")',
    '  if [ "$name" = "$build" ] || [ "versions/$name" = "$previous" ]; then continue; fi',
    '  if grep -qs "$old/" /proc/[0-9]*/cmdline; then echo "keeping $name: still running"; continue; fi',
    '  rm -rf "$old" && echo "removed $name"',
    'done',
    `rm -rf "${staging}"`,
    `echo "installed build $build at $target"`,
  ];
}
