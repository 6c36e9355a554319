import path from 'node:path';
import { App, Stack } from 'aws-cdk-lib';
import { Annotations, Match, Template } from 'aws-cdk-lib/assertions';
import { Bucket } from 'aws-cdk-lib/aws-s3';
import { buildApp } from '../../infra/aws/app.js';
import { HostChannel, SKIP_HOST_RUNTIME_CONTEXT } from '../../infra/aws/constructs/host-channel.js';

process.env.CDK_VALIDATION = 'false';

const noBundling = { 'aws:cdk:bundling-stacks': [] };

function hostChannelStack(context: Record<string, unknown>, hostRuntimeEntry?: string): Stack {
  const stack = new Stack(new App({ context: { ...noBundling, ...context } }), 'Hosts');
  new HostChannel(stack, 'Hosts', {
    outputBucket: new Bucket(stack, 'Output'),
    outputPrefix: 'ssm',
    hostTag: { key: 'StrataHost', value: 'true' },
    hostRuntimeEntry,
  });
  return stack;
}

describe('buildApp', () => {
  it('fails synthesis on an unacknowledged cdk-nag finding', () => {
    const { app, stack } = buildApp(new App({ context: noBundling }));
    new Bucket(stack, 'UnloggedBucket');

    expect(() => app.synth()).toThrow(/AwsSolutions-S1\b/);
  });
});

describe('HostChannel host runtime', () => {
  const existing = path.join(__dirname, '../../drivers/sdk/host-protocol.ts');

  it('ships the runtime and its install document when the entry exists', () => {
    const template = Template.fromStack(hostChannelStack({}, existing));

    template.resourceCountIs('AWS::SSM::Document', 2);
    template.hasResourceProperties('AWS::SSM::Document', { Name: 'Hosts-InstallHostRuntime' });
  });

  it('leaves the runtime out, with a warning, while the entry does not exist', () => {
    const stack = hostChannelStack({}, path.join(__dirname, 'no-such-host-main.ts'));
    const template = Template.fromStack(stack);

    template.resourceCountIs('AWS::SSM::Document', 1);
    Annotations.fromStack(stack).hasWarning('/Hosts/Hosts', Match.stringLikeRegexp('does not exist'));
  });

  it(`leaves the runtime out when ${SKIP_HOST_RUNTIME_CONTEXT} is set`, () => {
    const template = Template.fromStack(hostChannelStack({ [SKIP_HOST_RUNTIME_CONTEXT]: true }, existing));

    template.resourceCountIs('AWS::SSM::Document', 1);
    template.hasResourceProperties('AWS::SSM::Document', { Name: 'Hosts-RunHostOperation' });
  });
});
