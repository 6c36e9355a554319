import { AccessDeniedError, IamAuthorizer } from '../../../infra/local/aws/iam-authorizer.js';
import { principalOf } from '../../../infra/local/aws/principals.js';

const ACCOUNT = '123456789012';
const ROLE = `arn:aws:iam::${ACCOUNT}:role/Sender`;
const TABLE = `arn:aws:dynamodb:us-east-1:${ACCOUNT}:table/t`;
const INSTANCE = `arn:aws:ssm:us-east-1:${ACCOUNT}:managed-instance/mi-0123456789abcdef0`;

const authorizer = new IamAuthorizer({
  roles: new Map([
    [
      ROLE,
      [
        {
          name: 'p',
          document: {
            Version: '2012-10-17',
            Statement: [
              { Effect: 'Allow', Action: ['dynamodb:GetItem', 'dynamodb:PutItem'], Resource: TABLE },
              {
                Effect: 'Allow',
                Action: 'ssm:SendCommand',
                Resource: `arn:aws:ssm:us-east-1:${ACCOUNT}:managed-instance/*`,
                Condition: { StringEquals: { 'ssm:resourceTag/StrataHost': 'true' } },
              },
              { Effect: 'Allow', Action: 's3:GetObject', Resource: 'arn:aws:s3:::b/*' },
              { Effect: 'Deny', Action: 's3:GetObject', Resource: 'arn:aws:s3:::b/secret/*' },
            ],
          },
        },
      ],
    ],
  ]),
});
const principal = principalOf(ROLE, 'test');

describe('IamAuthorizer', () => {
  it('allows what the role policy allows', async () => {
    await expect(
      authorizer.authorize({ principal, action: 'dynamodb:GetItem', resource: TABLE }),
    ).resolves.toBeUndefined();
  });

  it('denies actions and resources the policy does not name, saying why as AWS does', async () => {
    const denial = authorizer.authorize({ principal, action: 'dynamodb:DeleteItem', resource: TABLE });
    await expect(denial).rejects.toBeInstanceOf(AccessDeniedError);
    await expect(denial).rejects.toThrow(
      `User: arn:aws:sts::${ACCOUNT}:assumed-role/Sender/test is not authorized to perform: dynamodb:DeleteItem on resource: ${TABLE}`,
    );
    await expect(
      authorizer.authorize({ principal, action: 'dynamodb:GetItem', resource: `${TABLE}-other` }),
    ).rejects.toBeInstanceOf(AccessDeniedError);
  });

  it('evaluates conditions with the request context (resource tags)', async () => {
    const send = (tag: string) =>
      authorizer.authorize({
        principal,
        action: 'ssm:SendCommand',
        resource: INSTANCE,
        context: { 'ssm:resourceTag/StrataHost': tag },
      });
    await expect(send('true')).resolves.toBeUndefined();
    await expect(send('false')).rejects.toBeInstanceOf(AccessDeniedError);
  });

  it('lets an explicit deny win over an allow', async () => {
    await expect(
      authorizer.authorize({ principal, action: 's3:GetObject', resource: 'arn:aws:s3:::b/a' }),
    ).resolves.toBeUndefined();
    await expect(
      authorizer.authorize({ principal, action: 's3:GetObject', resource: 'arn:aws:s3:::b/secret/a' }),
    ).rejects.toThrow(/explicit deny/);
  });

  it('evaluates a bucket policy as the resource policy', async () => {
    const denyAll = {
      Version: '2012-10-17',
      Statement: [{ Effect: 'Deny', Principal: '*', Action: 's3:*', Resource: 'arn:aws:s3:::b/*' }],
    };
    await expect(
      authorizer.authorize({
        principal,
        action: 's3:GetObject',
        resource: 'arn:aws:s3:::b/a',
        resourcePolicy: denyAll,
      }),
    ).rejects.toBeInstanceOf(AccessDeniedError);
  });

  it('denies an unknown role and an action IAM does not have', async () => {
    await expect(
      authorizer.authorize({
        principal: principalOf(`arn:aws:iam::${ACCOUNT}:role/Nobody`, 'x'),
        action: 'dynamodb:GetItem',
        resource: TABLE,
      }),
    ).rejects.toThrow(/no role/);
    await expect(
      authorizer.authorize({ principal, action: 'dynamodb:GetItm', resource: TABLE }),
    ).rejects.toThrow(/could not be evaluated/);
  });
});
