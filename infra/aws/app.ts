/**
 * The CDK app (cdk.json: `node --import tsx infra/aws/app.ts`). cdk-nag's AwsSolutions pack runs as a
 * policy validation plugin at synth: any unacknowledged finding fails `cdk synth`.
 */
import { App, Validations } from 'aws-cdk-lib';
import { AwsSolutionsChecks } from 'cdk-nag';
import { stampAssembly } from '../sources-fingerprint.js';
import { StrataStack, type StrataStackProps } from './strata-stack.js';

/** Builds the app with its one stack and cdk-nag registered; tests pass their own App and props. */
export function buildApp(
  app: App = new App(),
  props: StrataStackProps = {},
): { app: App; stack: StrataStack } {
  const stack = new StrataStack(app, app.node.tryGetContext('strata:stackName') ?? 'Strata', {
    description: 'Strata storage orchestration (image store, primary storage, volumes, snapshots)',
    env: { account: process.env.CDK_DEFAULT_ACCOUNT, region: process.env.CDK_DEFAULT_REGION },
    ...props,
  });
  Validations.of(app).addPlugins(new AwsSolutionsChecks(app, { verbose: true }));
  return { app, stack };
}

if (require.main === module) {
  const { app } = buildApp();
  const assembly = app.synth();
  // Says which sources this assembly was built from, so the embedded stack knows when to rebuild.
  stampAssembly(assembly.directory);
}
