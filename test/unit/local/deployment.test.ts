import { matchRoute } from '../../../infra/local/api-server.js';
import type { CloudAssembly } from '../../../infra/local/assembly/cloud-assembly.js';
import { LocalDeployment } from '../../../infra/local/assembly/deployment.js';
import { ResolveError, resolve } from '../../../infra/local/assembly/intrinsics.js';

const account = { accountId: '123456789012', region: 'eu-west-1', partition: 'aws' as const };

describe('resolve', () => {
  const env = {
    pseudo: { 'AWS::Region': 'eu-west-1', 'AWS::AccountId': '123456789012', 'AWS::Partition': 'aws' },
    parameters: { Stage: 'v1' },
    ref: (id: string) => `ref-${id}`,
    getAtt: (id: string, attribute: string) => `${attribute}-of-${id}`,
  };

  it('evaluates Ref, GetAtt, Join, Sub, Select, Split and NoValue as CloudFormation does', () => {
    expect(
      resolve(
        {
          a: { Ref: 'Table' },
          b: { 'Fn::GetAtt': ['Fn', 'Arn'] },
          c: { 'Fn::Join': ['', ['arn:', { Ref: 'AWS::Partition' }, ':x']] },
          d: { 'Fn::Sub': 'cdk-${AWS::AccountId}-${AWS::Region}/${Table}/${Fn.Arn}/${Stage}' },
          e: { 'Fn::Sub': ['${X}-${Y}', { X: 'one', Y: { Ref: 'Table' } }] },
          f: { 'Fn::Select': [1, { 'Fn::Split': [',', 'a,b,c'] }] },
          g: { Ref: 'AWS::NoValue' },
          h: [{ Ref: 'AWS::NoValue' }, 'kept'],
        },
        env,
      ),
    ).toEqual({
      a: 'ref-Table',
      b: 'Arn-of-Fn',
      c: 'arn:aws:x',
      d: 'cdk-123456789012-eu-west-1/ref-Table/Arn-of-Fn/v1',
      e: 'one-ref-Table',
      f: 'b',
      h: ['kept'],
    });
  });

  it('refuses what it cannot evaluate, naming where', () => {
    expect(() => resolve({ x: { 'Fn::If': ['C', 1, 2] } }, env)).toThrow(ResolveError);
    expect(() => resolve({ x: { Ref: 'AWS::Nope' } }, env)).toThrow(/\$\.x\.Ref: unknown pseudo parameter/);
  });
});

function assembly(resources: Record<string, unknown>): CloudAssembly {
  return {
    dir: '/assembly',
    stackName: 'Strata',
    template: { Resources: resources as CloudAssembly['template']['Resources'] },
    assets: [],
  };
}

describe('LocalDeployment', () => {
  const template = assembly({
    Table: { Type: 'AWS::DynamoDB::Table', Properties: { KeySchema: [] } },
    Bucket: { Type: 'AWS::S3::Bucket' },
    Role: { Type: 'AWS::IAM::Role', Properties: { AssumeRolePolicyDocument: {} } },
    RolePolicy: {
      Type: 'AWS::IAM::Policy',
      Properties: {
        PolicyName: 'p',
        Roles: [{ Ref: 'Role' }],
        PolicyDocument: {
          Statement: [
            { Effect: 'Allow', Action: 'dynamodb:GetItem', Resource: { 'Fn::GetAtt': ['Table', 'Arn'] } },
          ],
        },
      },
    },
    Fn: {
      Type: 'AWS::Lambda::Function',
      Metadata: { 'aws:asset:path': 'asset.abc' },
      Properties: {
        Handler: 'index.handler',
        Timeout: 29,
        Role: { 'Fn::GetAtt': ['Role', 'Arn'] },
        Environment: {
          Variables: {
            TABLE: { Ref: 'Table' },
            FLOWS: { 'Fn::Join': ['', ['{"a":"', { Ref: 'Machine' }, '"}']] },
          },
        },
      },
    },
    Machine: {
      Type: 'AWS::StepFunctions::StateMachine',
      Properties: {
        StateMachineName: 'Strata-flow',
        RoleArn: { 'Fn::GetAtt': ['Role', 'Arn'] },
        DefinitionString: '{"StartAt":"A","States":{"A":{"Type":"Task","Resource":"${Fn}","End":true}}}',
        DefinitionSubstitutions: { Fn: { 'Fn::GetAtt': ['Fn', 'Arn'] } },
      },
    },
    Api: { Type: 'AWS::ApiGateway::RestApi' },
    Proxy: {
      Type: 'AWS::ApiGateway::Resource',
      Properties: {
        ParentId: { 'Fn::GetAtt': ['Api', 'RootResourceId'] },
        PathPart: 'hosts',
        RestApiId: { Ref: 'Api' },
      },
    },
    Child: {
      Type: 'AWS::ApiGateway::Resource',
      Properties: { ParentId: { Ref: 'Proxy' }, PathPart: '{id}', RestApiId: { Ref: 'Api' } },
    },
    Method: {
      Type: 'AWS::ApiGateway::Method',
      Properties: {
        HttpMethod: 'GET',
        ResourceId: { Ref: 'Child' },
        AuthorizationType: 'AWS_IAM',
        Integration: {
          Type: 'AWS_PROXY',
          Uri: {
            'Fn::Join': [
              '',
              [
                'arn:aws:apigateway:eu-west-1:lambda:path/2015-03-31/functions/',
                { 'Fn::GetAtt': ['Fn', 'Arn'] },
                '/invocations',
              ],
            ],
          },
        },
      },
    },
  });
  const deployment = new LocalDeployment(template, account, 'ABCDEF123456');

  it('names resources as CloudFormation does, unless the template names them', () => {
    expect(deployment.tables()[0]).toMatchObject({
      name: 'Strata-Table-ABCDEF123456',
      arn: 'arn:aws:dynamodb:eu-west-1:123456789012:table/Strata-Table-ABCDEF123456',
    });
    expect(deployment.buckets()[0]!.name).toBe('strata-bucket-abcdef123456');
    expect(deployment.stateMachines()[0]!.arn).toBe(
      'arn:aws:states:eu-west-1:123456789012:stateMachine:Strata-flow',
    );
  });

  it('gives a function its resolved environment, role and code directory', () => {
    const [fn] = deployment.functions();
    expect(fn).toMatchObject({
      arn: 'arn:aws:lambda:eu-west-1:123456789012:function:Strata-Fn-ABCDEF123456',
      roleArn: 'arn:aws:iam::123456789012:role/Strata-Role-ABCDEF123456',
      timeoutSeconds: 29,
      codeDir: '/assembly/asset.abc',
      environment: {
        TABLE: 'Strata-Table-ABCDEF123456',
        FLOWS: '{"a":"arn:aws:states:eu-west-1:123456789012:stateMachine:Strata-flow"}',
      },
    });
  });

  it("attaches each policy to its role, and substitutes a state machine's definition", () => {
    const [role] = deployment.roles();
    expect(role!.policies).toEqual([
      {
        name: 'p',
        document: {
          Statement: [
            {
              Effect: 'Allow',
              Action: 'dynamodb:GetItem',
              Resource: 'arn:aws:dynamodb:eu-west-1:123456789012:table/Strata-Table-ABCDEF123456',
            },
          ],
        },
      },
    ]);
    const definition = deployment.stateMachines()[0]!.definition as { States: { A: { Resource: string } } };
    expect(definition.States.A.Resource).toBe(
      'arn:aws:lambda:eu-west-1:123456789012:function:Strata-Fn-ABCDEF123456',
    );
  });

  it("builds the API's method paths from its resource tree", () => {
    expect(deployment.api()).toMatchObject({
      methods: [
        {
          httpMethod: 'GET',
          path: '/hosts/{id}',
          authorizationType: 'AWS_IAM',
          functionArn: 'arn:aws:lambda:eu-west-1:123456789012:function:Strata-Fn-ABCDEF123456',
        },
      ],
    });
  });
});

describe('matchRoute', () => {
  const methods = [
    { httpMethod: 'ANY', path: '/', authorizationType: 'AWS_IAM', functionArn: 'root' },
    { httpMethod: 'ANY', path: '/{proxy+}', authorizationType: 'AWS_IAM', functionArn: 'proxy' },
    { httpMethod: 'GET', path: '/health', authorizationType: 'NONE', functionArn: 'health' },
    { httpMethod: 'POST', path: '/hosts/{id}', authorizationType: 'AWS_IAM', functionArn: 'host' },
  ];

  it.each([
    ['GET', '/', 'root', null],
    ['GET', '/health', 'health', null],
    ['POST', '/health', 'proxy', { proxy: 'health' }],
    ['POST', '/hosts/h1', 'host', { id: 'h1' }],
    ['DELETE', '/hosts/h1/x', 'proxy', { proxy: 'hosts/h1/x' }],
  ])('%s %s → %s', (method, path, fn, params) => {
    const match = matchRoute(methods, method, path);
    expect(match?.method.functionArn).toBe(fn);
    expect(match?.pathParameters).toEqual(params);
  });

  it('finds nothing the API does not define', () => {
    expect(matchRoute(methods.slice(2), 'GET', '/')).toBeUndefined();
    expect(matchRoute(methods.slice(2), 'DELETE', '/health')).toBeUndefined();
  });
});
