/**
 * IAM roles for the people and tools that call the REST API, one per route group. API Gateway
 * authorizes every method with IAM (SigV4), so what a caller may do is which `execute-api:Invoke`
 * ARNs (`arn:aws:execute-api:<region>:<account>:<api id>/<stage>/<METHOD>/<path>`) its policy allows.
 * The groups are derived from the API's route table (functions/handlers/api/routes.ts), so a new
 * route lands in a group without an edit here:
 *
 * - read-only: every GET route;
 * - operator: every route but the admin ones (stores, hosts, templates, volumes, snapshots,
 *   policies, jobs), with an explicit Deny on the admin routes so no wildcard can reach them;
 * - admin: every method on every path.
 *
 * The embedded stack enforces these same synthesized policies for its per-role bearer tokens.
 */
import { type CfnElement, CfnOutput, Stack } from 'aws-cdk-lib';
import type * as apigw from 'aws-cdk-lib/aws-apigateway';
import * as iam from 'aws-cdk-lib/aws-iam';
import { Construct } from 'constructs';
import { acknowledgeWildcard, regionalArnFinding } from './nag.js';

/** One route of the API as the route table declares it. */
export interface ApiRouteSpec {
  method: string;
  /** With `{name}` parameters, e.g. `/volumes/{id}/snapshots`. */
  path: string;
  /** Only the admin role may call it (the reconciler's destructive and administrative actions). */
  admin?: boolean;
}

export type ApiCallerRole = 'readOnly' | 'operator' | 'admin';

/** Construct ids of the roles (the embedded stack finds them by logical id prefix). */
export const API_CALLER_ROLE_IDS: Record<ApiCallerRole, string> = {
  readOnly: 'ApiCallersReadOnly',
  operator: 'ApiCallersOperator',
  admin: 'ApiCallersAdmin',
};

export interface ApiCallersProps {
  api: apigw.RestApi;
  routes: readonly ApiRouteSpec[];
  /** Who may assume the roles. @default the account (its IAM policies then decide who) */
  principal?: iam.IPrincipal;
}

/**
 * The route groups: which method and path patterns each role may invoke (and the operator may not).
 *
 * @example
 * routeGroups([{ method: 'GET', path: '/hosts/{id}' }, { method: 'POST', path: '/sweeps', admin: true }]);
 * // { readOnly: ['GET /hosts/*'], operator: ['GET /hosts/*'], operatorDenied: ['POST /sweeps'] }
 */
export function routeGroups(routes: readonly ApiRouteSpec[]): {
  readOnly: string[];
  operator: string[];
  operatorDenied: string[];
} {
  // A path parameter is one segment in the route table; IAM's `*` matches it (and more, which is
  // why the operator's admin routes are denied explicitly rather than merely not allowed).
  const pattern = (r: ApiRouteSpec) => `${r.method.toUpperCase()} ${r.path.replace(/\{[^}]+\}/g, '*')}`;
  const unique = (list: string[]) => [...new Set(list)];
  return {
    readOnly: unique(routes.filter((r) => r.method.toUpperCase() === 'GET').map(pattern)),
    operator: unique(routes.filter((r) => !r.admin).map(pattern)),
    operatorDenied: unique(routes.filter((r) => r.admin).map(pattern)),
  };
}

export class ApiCallers extends Construct {
  readonly roles: Record<ApiCallerRole, iam.Role>;

  constructor(scope: Construct, id: string, props: ApiCallersProps) {
    super(scope, id);
    const stack = Stack.of(this);
    const principal = props.principal ?? new iam.AccountRootPrincipal();
    const stage = props.api.deploymentStage.stageName;
    const groups = routeGroups(props.routes);
    const arnOf = (methodAndPath: string) => {
      const [method, path] = methodAndPath.split(' ') as [string, string];
      return props.api.arnForExecuteApi(method, path, stage);
    };
    // How cdk-nag prints an ARN built by arnForExecuteApi (for the wildcard acknowledgements).
    const apiId = stack.getLogicalId(props.api.node.defaultChild as CfnElement);
    const stageId = stack.getLogicalId(props.api.deploymentStage.node.defaultChild as CfnElement);
    const finding = (methodAndPath: string) => {
      const [method, path] = methodAndPath.split(' ') as [string, string];
      return regionalArnFinding(this, 'execute-api', `<${apiId}>/<${stageId}>/${method}${path}`);
    };

    const role = (key: ApiCallerRole, description: string) =>
      new iam.Role(scope, API_CALLER_ROLE_IDS[key], { assumedBy: principal, description });

    const readOnly = role('readOnly', 'Strata API read-only callers: every GET route, nothing that changes');
    readOnly.addToPolicy(
      new iam.PolicyStatement({ actions: ['execute-api:Invoke'], resources: groups.readOnly.map(arnOf) }),
    );

    const operator = role(
      'operator',
      "Strata API operators: every route but the reconciler's destructive and administrative ones",
    );
    operator.addToPolicy(
      new iam.PolicyStatement({ actions: ['execute-api:Invoke'], resources: groups.operator.map(arnOf) }),
    );
    if (groups.operatorDenied.length) {
      operator.addToPolicy(
        new iam.PolicyStatement({
          effect: iam.Effect.DENY,
          actions: ['execute-api:Invoke'],
          resources: groups.operatorDenied.map(arnOf),
        }),
      );
    }

    const admin = role('admin', 'Strata API administrators: every route, the orphan sweep included');
    admin.addToPolicy(
      new iam.PolicyStatement({ actions: ['execute-api:Invoke'], resources: [arnOf('* /*')] }),
    );

    const reason =
      'execute-api ARNs by stage, method and path: a path parameter (a Strata id known only at run ' +
      'time) is a wildcard segment; the method and the fixed path segments come from the route table.';
    for (const pattern of groups.readOnly.filter((p) => p.includes('*'))) {
      acknowledgeWildcard(readOnly, finding(pattern), reason);
    }
    for (const pattern of groups.operator.filter((p) => p.includes('*'))) {
      acknowledgeWildcard(operator, finding(pattern), reason);
    }
    acknowledgeWildcard(
      admin,
      finding('* /*'),
      'The admin role may call every method of this API (and only this API, on its stage).',
    );

    this.roles = { readOnly, operator, admin };
    new CfnOutput(scope, 'ApiReadOnlyRoleArn', {
      value: readOnly.roleArn,
      description: 'Assume to read the Strata API',
    });
    new CfnOutput(scope, 'ApiOperatorRoleArn', {
      value: operator.roleArn,
      description: 'Assume to operate Strata (everything but the orphan sweep and other admin routes)',
    });
    new CfnOutput(scope, 'ApiAdminRoleArn', {
      value: admin.roleArn,
      description: 'Assume for every Strata API route',
    });
  }
}
