/**
 * IAM enforcement for the embedded stack: every request to a local AWS endpoint is evaluated
 * against the synthesized policies of the role that signed it (and the resource's own policy, for
 * S3 bucket policies) by a real IAM policy evaluator, @cloud-copilot/iam-simulate. It is AGPL-3.0,
 * so it is a devDependency that only the embedded stack and the tests load; no Lambda bundle
 * imports this file (test/infra checks the bundles).
 *
 * Not evaluated: AWS-managed policies attached by ARN (their documents are not in the template;
 * the one Strata attaches, AmazonSSMManagedInstanceCore, covers agent actions the local agent does
 * not call), service control policies, and session policies.
 */
import { runSimulation } from '@cloud-copilot/iam-simulate';
import type { Principal } from './principals.js';

/** An IAM policy document as the template holds it. */
export interface PolicyDocument {
  Version?: string;
  Statement: unknown[] | unknown;
}

export interface NamedPolicy {
  name: string;
  document: PolicyDocument;
}

export interface AuthorizationRequest {
  principal: Principal;
  /** e.g. `dynamodb:GetItem` */
  action: string;
  /** The resource ARN the action is on (`*` for actions without resource-level permissions). */
  resource: string;
  /** Condition keys and their values for this request (e.g. `ssm:resourceTag/StrataHost`). */
  context?: Record<string, string | string[]>;
  /** The resource's own policy (an S3 bucket policy), when it has one. */
  resourcePolicy?: PolicyDocument;
}

/** What AWS answers for a refused call: the service maps it to its own error shape. */
export class AccessDeniedError extends Error {
  constructor(
    readonly request: AuthorizationRequest,
    readonly reason: string,
  ) {
    super(
      `User: ${request.principal.arn} is not authorized to perform: ${request.action} on resource: ` +
        `${request.resource} because ${reason}`,
    );
    this.name = 'AccessDeniedError';
  }
}

export interface IamAuthorizerOptions {
  /** Role ARN → the policies attached to it (inline and customer-managed, from the template). */
  roles: ReadonlyMap<string, readonly NamedPolicy[]>;
  /** Called with every decision (denials always; allows too when it is set). */
  onDecision?: (request: AuthorizationRequest, allowed: boolean, reason: string) => void;
  /** Off: every call is allowed and nothing is evaluated (never the default). */
  enforce?: boolean;
}

/**
 * @example
 * const iam = new IamAuthorizer({ roles });
 * await iam.authorize({ principal, action: 'ssm:SendCommand', resource: documentArn }); // throws AccessDeniedError
 */
export class IamAuthorizer {
  private readonly cache = new Map<string, Promise<{ allowed: boolean; reason: string }>>();
  private readonly enforce: boolean;

  constructor(private readonly options: IamAuthorizerOptions) {
    this.enforce = options.enforce ?? true;
  }

  /** Resolves when `request` is allowed; rejects with AccessDeniedError otherwise. */
  async authorize(request: AuthorizationRequest): Promise<void> {
    if (!this.enforce) return;
    const { allowed, reason } = await this.decide(request);
    this.options.onDecision?.(request, allowed, reason);
    if (!allowed) throw new AccessDeniedError(request, reason);
  }

  /** Authorizes every request (a call that needs several actions, like a copy). */
  async authorizeAll(requests: readonly AuthorizationRequest[]): Promise<void> {
    for (const request of requests) await this.authorize(request);
  }

  /** The decision alone. Decisions are cached: policies do not change while the stack runs. */
  decide(request: AuthorizationRequest): Promise<{ allowed: boolean; reason: string }> {
    const key = JSON.stringify([
      request.principal.roleArn,
      request.action,
      request.resource,
      request.context ?? {},
      request.resourcePolicy ?? null,
    ]);
    let decision = this.cache.get(key);
    if (!decision) {
      decision = this.evaluate(request);
      this.cache.set(key, decision);
      // A failed evaluation is not remembered.
      decision.catch(() => this.cache.delete(key));
    }
    return decision;
  }

  private async evaluate(request: AuthorizationRequest): Promise<{ allowed: boolean; reason: string }> {
    const policies = this.options.roles.get(request.principal.roleArn);
    if (!policies) return { allowed: false, reason: `no role ${request.principal.roleArn} is defined` };
    const result = await runSimulation(
      {
        request: {
          principal: request.principal.arn,
          action: request.action,
          resource: { resource: request.resource, accountId: request.principal.accountId },
          contextVariables: {
            'aws:PrincipalArn': request.principal.roleArn,
            'aws:PrincipalAccount': request.principal.accountId,
            // The local endpoints speak HTTP on loopback; requests count as if they came over TLS.
            'aws:SecureTransport': 'true',
            ...request.context,
          },
        },
        identityPolicies: policies.map((p) => ({ name: p.name, policy: p.document })),
        serviceControlPolicies: [],
        resourceControlPolicies: [],
        ...(request.resourcePolicy ? { resourcePolicy: request.resourcePolicy } : {}),
      },
      {},
    );
    if (result.resultType === 'error') {
      // An action or condition key the evaluator does not know is a defect to see, not a pass.
      return {
        allowed: false,
        reason: `the request could not be evaluated: ${JSON.stringify(result.errors)}`,
      };
    }
    const overall = result.overallResult;
    if (overall === 'Allowed') return { allowed: true, reason: 'allowed' };
    return {
      allowed: false,
      reason:
        overall === 'ExplicitlyDenied'
          ? 'an explicit deny in a policy applies'
          : `no identity-based policy allows the ${request.action} action`,
    };
  }
}
