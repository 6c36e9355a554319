/**
 * Who calls the embedded stack's AWS endpoints. Each synthesized role (a function's execution role,
 * a state machine's role, the Scheduler role, the host role) gets local credentials; a request
 * signed with them is that role's session, as STS AssumeRole credentials are on AWS.
 */
import { randomBytes } from 'node:crypto';

/** The account and region the embedded stack stands in for. */
export interface LocalAccount {
  accountId: string;
  region: string;
  partition: 'aws';
}

/** An authenticated caller: a session of one role. */
export interface Principal {
  /** As AWS reports the caller: `arn:aws:sts::<account>:assumed-role/<role>/<session>`. */
  arn: string;
  roleArn: string;
  roleName: string;
  accountId: string;
  sessionName: string;
}

/** Temporary credentials, as a function's environment carries them. */
export interface LocalAwsCredentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken: string;
}

interface Issued {
  secretAccessKey: string;
  sessionToken: string;
  principal: Principal;
}

const ROLE_ARN = /^arn:aws:iam::(\d{12}):role\/(?:[\w+=,.@-]+\/)*([\w+=,.@-]{1,64})$/;
const KEY_ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';

function randomKeyId(): string {
  const bytes = randomBytes(16);
  let id = 'ASIA';
  for (const b of bytes) id += KEY_ALPHABET[b % KEY_ALPHABET.length];
  return id;
}

/** The principal a role's session is. */
export function principalOf(roleArn: string, sessionName: string): Principal {
  const match = ROLE_ARN.exec(roleArn);
  if (!match) throw new Error(`not a role ARN: ${roleArn}`);
  const [, accountId, roleName] = match as unknown as [string, string, string];
  return {
    arn: `arn:aws:sts::${accountId}:assumed-role/${roleName}/${sessionName}`,
    roleArn,
    roleName,
    accountId,
    sessionName,
  };
}

/**
 * Issues and looks up local credentials. They live as long as the stack: a restart issues new ones
 * to every process it starts.
 *
 * @example
 * const creds = store.issue('arn:aws:iam::000000000000:role/Strata-ApiRole-1A2B', 'strata-api');
 * store.lookup(creds.accessKeyId)?.principal.roleName; // 'Strata-ApiRole-1A2B'
 */
export class LocalCredentialStore {
  private readonly byKey = new Map<string, Issued>();

  issue(roleArn: string, sessionName: string): LocalAwsCredentials {
    const principal = principalOf(roleArn, sessionName);
    const credentials: LocalAwsCredentials = {
      accessKeyId: randomKeyId(),
      secretAccessKey: randomBytes(30).toString('base64'),
      sessionToken: randomBytes(48).toString('base64'),
    };
    this.byKey.set(credentials.accessKeyId, {
      secretAccessKey: credentials.secretAccessKey,
      sessionToken: credentials.sessionToken,
      principal,
    });
    return credentials;
  }

  lookup(accessKeyId: string): Issued | undefined {
    return this.byKey.get(accessKeyId);
  }
}
