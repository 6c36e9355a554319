/**
 * Least privilege, decided by a real IAM evaluator on the synthesized policies: each function's
 * image-bucket actions by key prefix, and the API caller roles by route group.
 */
import { runSimulation } from '@cloud-copilot/iam-simulate';
import { App } from 'aws-cdk-lib';
import { Template } from 'aws-cdk-lib/assertions';
import { CHUNK_PREFIX, STRATA_PREFIXES } from '../../functions/core/services/orphan-sweep.js';
import { routeDocs, routes } from '../../functions/handlers/api/routes.js';
import { buildApp } from '../../infra/aws/app.js';
import { routeGroups } from '../../infra/aws/constructs/api-callers.js';
import type { StrataStack } from '../../infra/aws/strata-stack.js';

process.env.CDK_VALIDATION = 'false';

const ACCOUNT = '123456789012';
const REGION = 'eu-west-1';
type Resources = Record<string, { Type: string; Properties: Record<string, unknown> }>;

let stack: StrataStack;
let resources: Resources;

beforeAll(() => {
  const app = new App({ context: { 'aws:cdk:bundling-stacks': [] } });
  ({ stack } = buildApp(app, { env: { account: ACCOUNT, region: REGION } }));
  resources = Template.fromStack(stack).toJSON().Resources as Resources;
});

const idOf = (construct: { node: { defaultChild?: unknown } }) =>
  stack.getLogicalId(construct.node.defaultChild as never);

/** Renders the intrinsics policies use into strings: a bucket's Arn is `arn:aws:s3:::<logical id>`. */
function render(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(render);
  if (typeof value !== 'object' || value === null) return value;
  const v = value as Record<string, unknown>;
  if ('Ref' in v) return v.Ref === 'AWS::Partition' ? 'aws' : String(v.Ref);
  if ('Fn::GetAtt' in v) {
    const [id, attr] = v['Fn::GetAtt'] as [string, string];
    if (resources[id]?.Type === 'AWS::S3::Bucket' && attr === 'Arn')
      return `arn:aws:s3:::${id.toLowerCase()}`;
    return `${id}.${attr}`;
  }
  if ('Fn::Join' in v) {
    const [sep, parts] = v['Fn::Join'] as [string, unknown[]];
    return parts.map((p) => String(render(p))).join(sep);
  }
  return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, render(x)]));
}

/** The rendered policy documents attached to a role (inline and overflow managed policies). */
function policiesOf(roleId: string): { name: string; policy: unknown }[] {
  return Object.entries(resources)
    .filter(
      ([, r]) =>
        (r.Type === 'AWS::IAM::Policy' || r.Type === 'AWS::IAM::ManagedPolicy') &&
        JSON.stringify(r.Properties.Roles ?? []).includes(`"${roleId}"`),
    )
    .map(([id, r]) => ({ name: id, policy: render(r.Properties.PolicyDocument) }));
}

async function allowed(roleId: string, action: string, resource: string): Promise<boolean> {
  const result = await runSimulation(
    {
      request: {
        principal: `arn:aws:iam::${ACCOUNT}:role/${roleId}`,
        action,
        resource: { resource, accountId: ACCOUNT },
        contextVariables: {},
      },
      identityPolicies: policiesOf(roleId),
      serviceControlPolicies: [],
      resourceControlPolicies: [],
    },
    {},
  );
  if (result.resultType === 'error') throw new Error(JSON.stringify(result.errors));
  return result.overallResult === 'Allowed';
}

describe('image bucket access by prefix', () => {
  type Fn = 'api' | 'storeTasks' | 'imageTasks' | 'reconciler';
  const FNS: Fn[] = ['api', 'storeTasks', 'imageTasks', 'reconciler'];
  const roleOf = (fn: Fn) => idOf(stack.functions[fn].role);
  const object = (key: string) =>
    `arn:aws:s3:::${idOf(stack.node.findChild('Storage').node.findChild('Images') as never).toLowerCase()}/${key}`;
  // Keys as Strata writes them, at a store's root and under an operator's store prefix.
  const keys = (path: string) => [path, `zone-1/${path}`, `a/b/${path}`];
  const CHUNK = 'backups/chunks/ab/ab12cd';
  const SAMPLE: Record<string, string> = {
    'templates/': 'templates/tpl-1/tpl-1.qcow2',
    'isos/': 'isos/iso-1/iso-1.iso',
    'volumes/': 'volumes/vol-1/vol-1.qcow2',
    'snapshots/': 'snapshots/vol-1/snap-1.qcow2',
    'backups/manifests/': 'backups/manifests/vol-1/snap-1.json',
    'backups/plans/': 'backups/plans/job-1/scan.json',
    [CHUNK_PREFIX]: CHUNK,
  };

  async function decisions(fn: Fn, action: string, path: string): Promise<boolean[]> {
    return Promise.all(keys(path).map((key) => allowed(roleOf(fn), action, object(key))));
  }

  it('lets no function delete anywhere in the bucket: only under the prefixes it deletes from', async () => {
    for (const fn of FNS) {
      expect(await decisions(fn, 's3:DeleteObject', 'unrelated/object')).toEqual([false, false, false]);
      expect(await decisions(fn, 's3:PutObject', 'unrelated/object')).toEqual([false, false, false]);
      expect(await decisions(fn, 's3:GetObject', 'unrelated/object')).toEqual([false, false, false]);
    }
  });

  it('lets only store-tasks (snapshot deletes and the orphan sweep) delete or write backup chunks', async () => {
    expect(await decisions('storeTasks', 's3:DeleteObject', CHUNK)).toEqual([true, true, true]);
    expect(await decisions('storeTasks', 's3:PutObject', CHUNK)).toEqual([true, true, true]);
    for (const fn of ['api', 'imageTasks', 'reconciler'] as const) {
      expect(await decisions(fn, 's3:DeleteObject', CHUNK)).toEqual([false, false, false]);
      expect(await decisions(fn, 's3:PutObject', CHUNK)).toEqual([false, false, false]);
    }
  });

  it('keeps the api and image-tasks functions out of backups and staged volumes altogether', async () => {
    for (const fn of ['api', 'imageTasks'] as const) {
      for (const prefix of ['backups/manifests/', 'backups/plans/', CHUNK_PREFIX, 'volumes/']) {
        for (const action of ['s3:GetObject', 's3:PutObject', 's3:DeleteObject']) {
          expect([fn, action, await decisions(fn, action, SAMPLE[prefix]!)]).toEqual([
            fn,
            action,
            [false, false, false],
          ]);
        }
      }
    }
  });

  it('gives template uploads, ingest and deletes what they use on templates and ISOs', async () => {
    for (const fn of ['api', 'imageTasks'] as const) {
      for (const prefix of ['templates/', 'isos/']) {
        for (const action of ['s3:GetObject', 's3:PutObject', 's3:DeleteObject', 's3:AbortMultipartUpload']) {
          expect(await decisions(fn, action, SAMPLE[prefix]!)).toEqual([true, true, true]);
        }
      }
    }
  });

  it('lets the reconciler compensate (delete partial objects, manifests, plans) but never write', async () => {
    for (const prefix of ['templates/', 'isos/', 'backups/manifests/', 'backups/plans/']) {
      expect(await decisions('reconciler', 's3:DeleteObject', SAMPLE[prefix]!)).toEqual([true, true, true]);
    }
    for (const prefix of Object.keys(SAMPLE)) {
      expect(await decisions('reconciler', 's3:PutObject', SAMPLE[prefix]!)).toEqual([false, false, false]);
    }
  });

  it('lets store-tasks remove whatever the orphan sweep finds under every prefix it sweeps', async () => {
    for (const prefix of [...STRATA_PREFIXES, CHUNK_PREFIX]) {
      const sample = SAMPLE[prefix];
      expect(sample).toBeDefined();
      expect(await decisions('storeTasks', 's3:DeleteObject', sample!)).toEqual([true, true, true]);
    }
    const bucket = object('').slice(0, -1);
    expect(await allowed(roleOf('storeTasks'), 's3:ListBucketMultipartUploads', bucket)).toBe(true);
    for (const fn of ['api', 'imageTasks', 'reconciler'] as const) {
      expect(await allowed(roleOf(fn), 's3:ListBucketMultipartUploads', bucket)).toBe(false);
    }
  });

  it('lets store-tasks probe a store (write and delete the probe) and read what it hands hosts', async () => {
    expect(await decisions('storeTasks', 's3:PutObject', '.strata-probe-job-1')).toEqual([true, true, true]);
    expect(await decisions('storeTasks', 's3:DeleteObject', '.strata-probe-job-1')).toEqual([
      true,
      true,
      true,
    ]);
    for (const prefix of ['templates/', 'volumes/', CHUNK_PREFIX, 'backups/manifests/', 'backups/plans/']) {
      expect(await decisions('storeTasks', 's3:GetObject', SAMPLE[prefix]!)).toEqual([true, true, true]);
    }
    // It never writes templates: installs only read them.
    expect(await decisions('storeTasks', 's3:PutObject', SAMPLE['templates/']!)).toEqual([
      false,
      false,
      false,
    ]);
  });
});

describe('API caller roles', () => {
  const callerRole = (key: 'readOnly' | 'operator' | 'admin') => idOf(stack.callers.roles[key]);
  const apiId = () => idOf(stack.api.api);
  const stageId = () => idOf(stack.api.api.deploymentStage);
  const methodArn = (method: string, path: string) =>
    `arn:aws:execute-api:${REGION}:${ACCOUNT}:${apiId()}/${stageId()}/${method}${path}`;
  // Every route with its parameters filled in, as a caller sends it.
  const sent = routes.map((r) => ({
    method: r.method,
    path: r.path.replace(/\{[^}]+\}/g, 'x-1'),
    admin: routeDocs.get(`${r.method} ${r.path}`)?.admin === true,
  }));
  const can = (role: 'readOnly' | 'operator' | 'admin', r: { method: string; path: string }) =>
    allowed(callerRole(role), 'execute-api:Invoke', methodArn(r.method, r.path));

  it('flags the orphan sweep as admin-only in the route table', () => {
    expect(sent.filter((r) => r.admin).map((r) => `${r.method} ${r.path}`)).toContain('POST /sweeps');
  });

  it('lets the read-only role call every GET route and no other', async () => {
    for (const r of sent) {
      expect([r.method, r.path, await can('readOnly', r)]).toEqual([r.method, r.path, r.method === 'GET']);
    }
    expect(await can('readOnly', { method: 'GET', path: '/somewhere/else' })).toBe(false);
  });

  it('lets the operator role call every route but the admin ones', async () => {
    for (const r of sent) {
      expect([r.method, r.path, await can('operator', r)]).toEqual([r.method, r.path, !r.admin]);
    }
  });

  it('lets the admin role call every route', async () => {
    for (const r of sent) expect([r.method, r.path, await can('admin', r)]).toEqual([r.method, r.path, true]);
  });

  it('covers a route added to the table without an edit to the roles', () => {
    const groups = routeGroups([
      ...routes.map((r) => ({ method: r.method, path: r.path })),
      { method: 'POST', path: '/backups/{id}/verify' },
      { method: 'POST', path: '/reconcile', admin: true },
    ]);
    expect(groups.operator).toContain('POST /backups/*/verify');
    expect(groups.operator).not.toContain('POST /reconcile');
    expect(groups.operatorDenied).toEqual(['POST /reconcile']);
  });

  it('may be assumed by the account (its IAM policies decide who) and nobody else', () => {
    for (const key of ['readOnly', 'operator', 'admin'] as const) {
      const trust = render(resources[callerRole(key)]!.Properties.AssumeRolePolicyDocument);
      expect(trust).toEqual({
        Version: '2012-10-17',
        Statement: [
          {
            Action: 'sts:AssumeRole',
            Effect: 'Allow',
            Principal: { AWS: `arn:aws:iam::${ACCOUNT}:root` },
          },
        ],
      });
    }
  });
});
