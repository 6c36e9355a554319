/**
 * The embedded API's callers: a bearer token per API caller role, each request authorized against
 * that role's synthesized execute-api policy by the IAM evaluator (as API Gateway's IAM
 * authorization would), the caller identity in the proxy event, and Idempotency-Key records per
 * caller.
 */
import { stat } from 'node:fs/promises';
import { routeDocs, routes } from '../../functions/handlers/api/routes';
import { startTestStack, type TestStack } from '../support/stack';

let t: TestStack;

beforeAll(async () => {
  t = await startTestStack({ hostCount: 1 });
}, 60_000);

afterAll(async () => {
  await t?.stack.stop();
});

type Role = 'readOnly' | 'operator' | 'admin';
const as = (role: Role, extra: Record<string, string> = {}) => ({
  authorization: `Bearer ${t.stack.apiTokens[role]}`,
  ...extra,
});

/** Every route of the table with its parameters filled in (ids that exist nowhere). */
const sent = routes.map((r) => ({
  method: r.method,
  path: r.path.replace(/\{[^}]+\}/g, 'x-none'),
  admin: routeDocs.get(`${r.method} ${r.path}`)?.admin === true,
}));
const mutating = sent.filter((r) => r.method !== 'GET');

async function counts(): Promise<{ stores: number; jobs: number; volumes: number }> {
  const n = async (route: string) => (await t.call('GET', `${route}?limit=100`)).body.items.length as number;
  return { stores: await n('/stores'), jobs: await n('/jobs'), volumes: await n('/volumes') };
}

describe('authentication', () => {
  it('writes one token per role into the data directory, readable by its owner only', async () => {
    const file = await stat(t.stack.apiTokensFile);
    expect(file.mode & 0o777).toBe(0o600);
    const { readOnly, operator, admin } = t.stack.apiTokens;
    expect(new Set([readOnly, operator, admin]).size).toBe(3);
  });

  it('answers 401 without a token or with a wrong one, on every route, changing nothing', async () => {
    const before = await counts();
    for (const r of sent) {
      if (r.method === 'GET' && r.path === '/health') continue;
      for (const authorization of [undefined, 'Bearer not-a-token', `Basic ${t.stack.apiTokens.admin}`]) {
        const res = await fetch(`${t.url}${r.path}`, {
          method: r.method,
          headers: { 'content-type': 'application/json', ...(authorization ? { authorization } : {}) },
          ...(r.method === 'GET' ? {} : { body: '{}' }),
        });
        const body = (await res.json()) as { error?: { code?: string } };
        expect([r.method, r.path, authorization, res.status, body.error?.code]).toEqual([
          r.method,
          r.path,
          authorization,
          401,
          'Unauthorized',
        ]);
        expect(res.headers.get('www-authenticate')).toMatch(/^Bearer/);
      }
    }
    expect(await counts()).toEqual(before);
  });

  it('serves GET /health without a token (a liveness probe)', async () => {
    const res = await fetch(`${t.url}/health`);
    expect(res.status).toBe(200);
  });

  it('grants no cross-site request: a preflight gets 401 and no CORS header', async () => {
    const res = await fetch(`${t.url}/stores`, {
      method: 'OPTIONS',
      headers: {
        origin: 'https://evil.example',
        'access-control-request-method': 'POST',
        'access-control-request-headers': 'authorization, content-type',
      },
    });
    expect(res.status).toBe(401);
    expect([...res.headers.keys()].filter((h) => h.startsWith('access-control-'))).toEqual([]);
    // Nor does an authorized answer carry one.
    const ok = await fetch(`${t.url}/stores`, { headers: as('admin', { origin: 'https://evil.example' }) });
    expect(ok.status).toBe(200);
    expect([...ok.headers.keys()].filter((h) => h.startsWith('access-control-'))).toEqual([]);
  });
});

describe('the read-only role', () => {
  it('reads every list', async () => {
    for (const route of [
      '/hosts',
      '/stores',
      '/templates',
      '/volumes',
      '/snapshots',
      '/jobs',
      '/snapshot-policies',
    ]) {
      const res = await t.call('GET', route, undefined, as('readOnly'));
      expect([route, res.status]).toEqual([route, 200]);
    }
    // A GET of something that does not exist is the API's own 404, not a refusal.
    expect((await t.call('GET', '/volumes/x-none', undefined, as('readOnly'))).status).toBe(404);
  });

  it('gets 403 AccessDenied on every mutating route, and nothing changes', async () => {
    const before = await counts();
    for (const r of mutating) {
      const res = await t.call(r.method, r.path, {}, as('readOnly'));
      expect([r.method, r.path, res.status, res.body?.error?.code]).toEqual([
        r.method,
        r.path,
        403,
        'AccessDenied',
      ]);
      expect(res.body.error.message).toContain('execute-api:Invoke');
    }
    expect(await counts()).toEqual(before);
  });
});

describe('the operator role', () => {
  it('adds a store and creates a volume', async () => {
    const share = await t.newShare('operator-pool');
    const store = await t.call(
      'POST',
      '/stores',
      {
        name: 'operator-pool',
        provider: 'nfs',
        role: 'primary',
        scope: { type: 'cluster', zoneId: 'zone-1', clusterId: 'cluster-1' },
        capacityBytes: 10 * 2 ** 30,
        details: { server: '127.0.0.1', export: '/operator-pool', mountPath: share },
      },
      as('operator'),
    );
    expect(store.status).toBe(202);
    expect(await t.waitForJob(store.body.job.id, 60_000)).toMatchObject({ state: 'succeeded' });
    const volume = await t.call(
      'POST',
      '/volumes',
      { name: 'operator-vol', zoneId: 'zone-1', sizeBytes: 2 ** 20, storeId: store.body.store.id },
      as('operator'),
    );
    expect(volume.status).toBe(202);
    expect(await t.waitForJob(volume.body.job.id, 60_000)).toMatchObject({ state: 'succeeded' });
  });

  it("gets 403 on the reconciler's admin routes (the orphan sweep), which the admin role may call", async () => {
    const admin = mutating.filter((r) => r.admin);
    expect(admin.map((r) => `${r.method} ${r.path}`)).toContain('POST /sweeps');
    const before = await counts();
    for (const r of admin) {
      const res = await t.call(r.method, r.path, { dryRun: true }, as('operator'));
      expect([r.method, r.path, res.status, res.body?.error?.code]).toEqual([
        r.method,
        r.path,
        403,
        'AccessDenied',
      ]);
    }
    expect(await counts()).toEqual(before);
    const sweep = await t.call('POST', '/sweeps', { dryRun: true }, as('admin'));
    expect(sweep.status).toBe(202);
    expect(await t.waitForJob(sweep.body.job.id, 60_000)).toMatchObject({ state: 'succeeded' });
  });

  it('reaches every other mutating route (the API answers, not the authorizer)', async () => {
    for (const r of mutating.filter((x) => !x.admin)) {
      // An empty body or unknown id: the API's own 4xx, never the authorizer's 403.
      const res = await t.call(r.method, r.path, {}, as('operator'));
      expect([r.method, r.path, res.body?.error?.code === 'AccessDenied']).toEqual([r.method, r.path, false]);
    }
  });
});

describe('Idempotency-Key per caller', () => {
  const volumeBody = (name: string) => ({ name, zoneId: 'zone-1', sizeBytes: 2 ** 20 });

  it("keeps each caller's answers apart: the same key from another caller runs its own request", async () => {
    const key = `shared-key-${Date.now()}`;
    const first = await t.call(
      'POST',
      '/volumes',
      volumeBody('idem-operator'),
      as('operator', { 'idempotency-key': key }),
    );
    expect(first.status).toBe(202);
    // The same caller again: the kept answer.
    const replay = await t.call(
      'POST',
      '/volumes',
      volumeBody('idem-operator'),
      as('operator', { 'idempotency-key': key }),
    );
    expect(replay.headers.get('idempotent-replayed')).toBe('true');
    expect(replay.body.volume.id).toBe(first.body.volume.id);
    // Another caller with the same key and another body: its own request, not the operator's
    // answer and not a 422 for a reused key.
    const other = await t.call(
      'POST',
      '/volumes',
      volumeBody('idem-admin'),
      as('admin', { 'idempotency-key': key }),
    );
    expect(other.status).toBe(202);
    expect(other.headers.get('idempotent-replayed')).toBeNull();
    expect(other.body.volume.id).not.toBe(first.body.volume.id);
    expect(other.body.volume.name).toBe('idem-admin');
    // And the operator reusing its key for another body is still refused.
    const reused = await t.call(
      'POST',
      '/volumes',
      volumeBody('idem-other'),
      as('operator', { 'idempotency-key': key }),
    );
    expect(reused.status).toBe(422);
    for (const id of [first.body.job.id, other.body.job.id]) await t.waitForJob(id, 60_000);
  });
});
