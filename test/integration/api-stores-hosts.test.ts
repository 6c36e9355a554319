/**
 * The REST API end to end on the embedded stack: the synthesized API function behind real HTTP,
 * DynamoDB Local, the store workflows' synthesized definitions run by aws-local-stepfunctions, and
 * the host runtime, reached through the run document, checking a directory standing in for the
 * NFS share.
 */
import { chmod, rm } from 'node:fs/promises';
import http from 'node:http';
import { startTestStack, type TestStack } from '../support/stack';

let t: TestStack;

beforeAll(async () => {
  // Three local hosts, two registered at the start: the third joins in a test.
  t = await startTestStack({ hostCount: 3, registerHosts: 2 });
}, 60_000);

afterAll(async () => {
  await t?.stack.stop();
});

let HOST_1: string;
let HOST_2: string;
let HOST_3: string;
beforeAll(() => {
  HOST_1 = t.hostId(1);
  HOST_2 = t.hostId(2);
  HOST_3 = t.hostId(3);
});

async function addNfsStore(name: string, share: string, extra: Record<string, unknown> = {}) {
  const res = await t.call('POST', '/stores', {
    name,
    provider: 'nfs',
    role: 'primary',
    scope: { type: 'cluster', zoneId: 'zone-1', clusterId: 'cluster-1' },
    capacityBytes: 10 * 2 ** 30,
    details: { server: '127.0.0.1', export: `/${name}`, mountPath: share },
    ...extra,
  });
  return res;
}

describe('bootstrap', () => {
  it('registered two hosts and brought the default stores Up through the attach workflow', async () => {
    const hosts = await t.call('GET', '/hosts');
    expect(hosts.status).toBe(200);
    expect(hosts.body.items.map((h: { id: string }) => h.id).sort()).toEqual([HOST_1, HOST_2].sort());
    const stores = await t.call('GET', '/stores');
    const byName = Object.fromEntries(stores.body.items.map((s: { name: string }) => [s.name, s]));
    expect(byName['nfs-primary-1']).toMatchObject({ status: 'Up', provider: 'nfs', role: 'primary' });
    expect(byName['images-1']).toMatchObject({ status: 'Up', provider: 's3', role: 'image' });
    for (const h of hosts.body.items) expect(h.attachedStoreIds).toContain(byName['nfs-primary-1'].id);
    // Both hosts probed (their runtime is this build, ready), both stores added.
    expect(t.stack.bootstrapJobs.map((j) => `${j.kind} ${j.state}`)).toEqual([
      'host.probe succeeded',
      'host.probe succeeded',
      'store.add succeeded',
      'store.add succeeded',
    ]);
    for (const h of hosts.body.items) {
      expect(h.runtime).toMatchObject({
        current: true,
        ready: true,
        build: expect.stringMatching(/^[0-9a-f]{64}$/),
      });
    }
  });
});

describe('GET /health and /openapi.json', () => {
  it('answers health', async () => {
    const res = await t.call('GET', '/health');
    expect(res).toMatchObject({ status: 200, body: { status: 'ok' } });
  });

  it('serves an OpenAPI document generated from the request schemas', async () => {
    const res = await t.call('GET', '/openapi.json');
    expect(res.body.openapi).toBe('3.1.0');
    const post = res.body.paths['/stores'].post;
    expect(post.requestBody.content['application/json'].schema.required).toEqual(
      expect.arrayContaining(['name', 'provider', 'role', 'scope']),
    );
    expect(post.requestBody.content['application/json'].schema.additionalProperties).toBe(false);
    expect(Object.keys(res.body.paths)).toEqual(
      expect.arrayContaining([
        '/hosts/{id}',
        '/stores/{id}/maintenance',
        '/stores/{id}/inventory',
        '/hosts/{id}/probe',
        '/jobs/{id}',
      ]),
    );
  });
});

describe('hosts', () => {
  it('registers, gets, disables, refuses to remove while Up, and removes', async () => {
    const created = await t.call('POST', '/hosts', {
      name: 'extra',
      zoneId: 'zone-9',
      clusterId: 'cluster-9',
      instanceId: 'mi-0123456789abcdef0',
    });
    expect(created.status).toBe(201);
    expect(created.body).toMatchObject({ id: 'host-mi-0123456789abcdef0', status: 'Up', hypervisor: 'kvm' });
    const id = created.body.id;

    expect((await t.call('GET', `/hosts/${id}`)).body.name).toBe('extra');
    const refused = await t.call('DELETE', `/hosts/${id}`);
    expect(refused.status).toBe(409);
    expect(refused.body.error).toMatchObject({ code: 'NotAllowed', state: 'Up' });

    const disabled = await t.call('PATCH', `/hosts/${id}`, { status: 'Disabled' });
    expect(disabled.body.status).toBe('Disabled');
    expect((await t.call('DELETE', `/hosts/${id}`)).status).toBe(204);
    expect((await t.call('GET', `/hosts/${id}`)).status).toBe(404);
  });

  it('attaches a joining host to the stores in its scope through the attach workflow', async () => {
    const res = await t.call('POST', '/hosts', {
      name: 'local-host-3',
      zoneId: 'zone-1',
      clusterId: 'cluster-1',
      instanceId: t.stack.hosts[2]!.instanceId,
    });
    expect(res.status).toBe(201);
    expect(res.body.attachJobIds).toHaveLength(1);
    const job = await t.waitForJob(res.body.attachJobIds[0]);
    expect(job).toMatchObject({ state: 'succeeded', kind: 'store.attachHost' });
    expect(job.result.attachedHosts).toEqual([HOST_3]);
    expect((await t.waitForJob(res.body.probeJobId)).state).toBe('succeeded');
    const primary = (await t.call('GET', '/stores?role=primary')).body.items.find(
      (s: { name: string }) => s.name === 'nfs-primary-1',
    );
    expect((await t.call('GET', `/hosts/${res.body.id}`)).body.attachedStoreIds).toEqual([primary.id]);
    // a host in another cluster joins nothing
    const other = await t.call('POST', '/hosts', {
      name: 'elsewhere',
      zoneId: 'zone-1',
      clusterId: 'cluster-2',
      instanceId: 'mi-0000000000000abcd',
    });
    expect(other.body.attachJobIds).toEqual([]);
    // Not a managed instance SSM knows: its probe fails, and says so.
    const probe = await t.waitForJob(other.body.probeJobId);
    expect(probe.state).toBe('failed');
    expect(probe.error.message).toMatch(/mi-0000000000000abcd/);
  });

  it('refuses a second host with the same instance id', async () => {
    const body = { name: 'dup', zoneId: 'zone-9', clusterId: 'c', instanceId: 'mi-00000000000000001' };
    expect((await t.call('POST', '/hosts', body)).status).toBe(201);
    const again = await t.call('POST', '/hosts', body);
    expect(again.status).toBe(409);
    expect(again.body.error.field).toBe('instanceId');
  });

  it('filters the list by zone', async () => {
    const res = await t.call('GET', '/hosts?zoneId=zone-1');
    expect(res.body.items.every((h: { zoneId: string }) => h.zoneId === 'zone-1')).toBe(true);
  });

  it.each([
    ['missing field', { name: 'x', zoneId: 'z', clusterId: 'c' }, 'instanceId'],
    ['wrong type', { name: 5, zoneId: 'z', clusterId: 'c', instanceId: 'mi-0123456789abcdef0' }, 'name'],
    [
      'unknown field',
      { name: 'x', zoneId: 'z', clusterId: 'c', instanceId: 'mi-0123456789abcdef0', root: true },
      'root',
    ],
    [
      'bad instance id',
      { name: 'x', zoneId: 'z', clusterId: 'c', instanceId: 'mi-; rm -rf /' },
      'instanceId',
    ],
    [
      'bad zone id',
      { name: 'x', zoneId: '../z', clusterId: 'c', instanceId: 'mi-0123456789abcdef0' },
      'zoneId',
    ],
  ])('answers 400 naming the field for %s, and registers nothing', async (_case, body, field) => {
    const before = (await t.call('GET', '/hosts?limit=100')).body.items.length;
    const res = await t.call('POST', '/hosts', body);
    expect(res.status).toBe(400);
    expect(res.body.error).toMatchObject({ code: 'InvalidInput', field });
    expect((await t.call('GET', '/hosts?limit=100')).body.items.length).toBe(before);
  });

  it('answers 404 for an unknown host and 400 for a malformed id', async () => {
    expect((await t.call('GET', '/hosts/host-nope')).status).toBe(404);
    expect((await t.call('GET', '/hosts/%2E%2E%2Fetc')).status).toBe(400);
  });

  it('refuses a path that is not ids with 400 before routing, and changes nothing', async () => {
    // Raw requests: fetch would resolve `..` before sending.
    const raw = (method: string, path: string) =>
      new Promise<{ status: number; body: { error?: { field?: string } } }>((resolve, reject) => {
        const { hostname, port } = new URL(t.url);
        const req = http.request({ hostname, port, path, method }, (res) => {
          let text = '';
          res.on('data', (c: Buffer) => {
            text += c.toString();
          });
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text || '{}') }));
        });
        req.on('error', reject);
        req.end();
      });
    const before = (await t.call('GET', '/hosts?limit=100')).body.items.length;
    for (const [method, path] of [
      ['GET', '/hosts/%ZZ'],
      ['GET', '/hosts/%FF'],
      ['GET', '/hosts/%C0%AE'],
      ['GET', '/hosts/.'],
      ['DELETE', `/hosts/${HOST_1}/..`],
      ['DELETE', `/hosts/${HOST_1}/%2e%2e`],
    ] as const) {
      const res = await raw(method, path);
      expect({ path, status: res.status, field: res.body.error?.field }).toEqual({
        path,
        status: 400,
        field: 'path',
      });
    }
    expect((await t.call('GET', '/hosts?limit=100')).body.items.length).toBe(before);
    expect((await t.call('GET', `/hosts/${HOST_1}`)).status).toBe(200);
  });

  it('takes a body only as application/json: 415 for any other type or none, and nothing is made', async () => {
    const before = (await t.call('GET', '/stores?limit=100')).body.items.length;
    const body = JSON.stringify({
      name: 'by-a-form',
      provider: 'nfs',
      role: 'primary',
      scope: { type: 'zone', zoneId: 'zone-1' },
      details: { server: '127.0.0.1', export: '/x', mountPath: '/tmp/x' },
    });
    for (const type of [
      'text/plain',
      'application/x-www-form-urlencoded',
      'multipart/form-data',
      undefined,
    ]) {
      const res = await fetch(`${t.url}/stores`, {
        method: 'POST',
        body,
        headers: {
          authorization: `Bearer ${t.stack.apiTokens.operator}`,
          ...(type ? { 'content-type': type } : {}),
        },
      });
      // fetch gives a string body text/plain when no type is set: that is what a browser does too.
      const answer = (await res.json()) as { error?: { code?: string; field?: string } };
      expect({ type, status: res.status, code: answer.error?.code, field: answer.error?.field }).toEqual({
        type,
        status: 415,
        code: 'UnsupportedMediaType',
        field: 'content-type',
      });
    }
    expect((await t.call('GET', '/stores?limit=100')).body.items.length).toBe(before);
    // The media type's parameters are fine.
    const ok = await fetch(`${t.url}/hosts/${HOST_1}`, {
      method: 'PATCH',
      body: JSON.stringify({ status: 'Exploded' }),
      headers: {
        'content-type': 'Application/JSON; charset=utf-8',
        authorization: `Bearer ${t.stack.apiTokens.operator}`,
      },
    });
    expect(ok.status).toBe(400);
  });

  it('answers 400 for a bad status in PATCH', async () => {
    const res = await t.call('PATCH', `/hosts/${HOST_1}`, { status: 'Exploded' });
    expect(res.status).toBe(400);
    expect(res.body.error.field).toBe('status');
  });
});

describe('stores: add, maintain, cancel, delete', () => {
  it('adds an nfs store: 202 with a job, then Up and attached to both hosts of the cluster', async () => {
    const share = await t.newShare('lifecycle');
    const res = await addNfsStore('nfs-lifecycle', share, { tags: ['ssd'] });
    expect(res.status).toBe(202);
    expect(res.headers.get('location')).toBe(`/jobs/${res.body.job.id}`);
    expect(res.body.store.status).toBe('Initializing');
    const job = await t.waitForJob(res.body.job.id);
    expect(job).toMatchObject({ state: 'succeeded', kind: 'store.add', progress: 100 });
    expect(job.executionId).toMatch(/^arn:aws:states:us-east-1:\d{12}:execution:Strata-store-attach:job-/);
    expect(job.result.attachedHosts.sort()).toEqual([HOST_1, HOST_2, HOST_3].sort());

    const storeId = res.body.store.id;
    const store = (await t.call('GET', `/stores/${storeId}`)).body;
    expect(store).toMatchObject({
      status: 'Up',
      tags: ['ssd'],
      capacityBytes: 10 * 2 ** 30,
      allocatedBytes: 0,
    });
    expect(store.lease).toBeUndefined();

    // enter maintenance: the workflow detaches every host
    const maint = await t.call('POST', `/stores/${storeId}/maintenance`);
    expect(maint.status).toBe(202);
    expect(maint.body.store.status).toBe('PrepareForMaintenance');
    expect((await t.waitForJob(maint.body.job.id)).state).toBe('succeeded');
    expect((await t.call('GET', `/stores/${storeId}`)).body.status).toBe('Maintenance');
    for (const h of [HOST_1, HOST_2]) {
      expect((await t.call('GET', `/hosts/${h}`)).body.attachedStoreIds).not.toContain(storeId);
    }

    // entering again is a conflict that names the current state
    const again = await t.call('POST', `/stores/${storeId}/maintenance`);
    expect(again.status).toBe(409);
    expect(again.body.error.state).toBe('Maintenance');

    // cancel: hosts re-attach after a host-side check of the share
    const cancel = await t.call('DELETE', `/stores/${storeId}/maintenance`);
    expect(cancel.status).toBe(202);
    expect((await t.waitForJob(cancel.body.job.id)).state).toBe('succeeded');
    expect((await t.call('GET', `/stores/${storeId}`)).body.status).toBe('Up');
    for (const h of [HOST_1, HOST_2]) {
      expect((await t.call('GET', `/hosts/${h}`)).body.attachedStoreIds).toContain(storeId);
    }

    // disable / enable / rename
    expect((await t.call('PATCH', `/stores/${storeId}`, { status: 'Disabled' })).body.status).toBe(
      'Disabled',
    );
    const enabled = await t.call('PATCH', `/stores/${storeId}`, { status: 'Up', name: 'nfs-renamed' });
    expect(enabled.body).toMatchObject({ status: 'Up', name: 'nfs-renamed' });

    // delete: gone, and detached from the hosts
    expect((await t.call('DELETE', `/stores/${storeId}`)).status).toBe(204);
    expect((await t.call('GET', `/stores/${storeId}`)).status).toBe(404);
    for (const h of [HOST_1, HOST_2]) {
      expect((await t.call('GET', `/hosts/${h}`)).body.attachedStoreIds).not.toContain(storeId);
    }
  });

  it('fails the add when no host can write to the share: store in Error with the reason, job failed', async () => {
    const share = await t.newShare('readonly');
    await chmod(share, 0o555);
    // root ignores mode bits; a share that does not exist fails the same host-side check for everyone
    await rm(share, { recursive: true });
    const res = await addNfsStore('nfs-broken', share);
    expect(res.status).toBe(202);
    const job = await t.waitForJob(res.body.job.id);
    expect(job.state).toBe('failed');
    expect(job.error.message).toMatch(/no host could attach/);
    expect(job.error.message).not.toMatch(/\n\s+at /); // a reason, not a stack trace
    const store = (await t.call('GET', `/stores/${res.body.store.id}`)).body;
    expect(store.status).toBe('Error');
    expect(store.statusReason).toContain(HOST_1);
    // an Error store can be deleted
    expect((await t.call('DELETE', `/stores/${res.body.store.id}`)).status).toBe(204);
  });

  it('refuses to delete a store that holds objects, naming them, and leaves it as it was', async () => {
    const share = await t.newShare('held');
    const res = await addNfsStore('nfs-held', share);
    await t.waitForJob(res.body.job.id);
    const storeId = res.body.store.id;
    await t.repo.create('TemplateInStore', {
      templateId: 'tpl-held',
      storeId,
      storeRole: 'primary',
      status: 'Ready',
      refCount: 1,
      path: 'templates/tpl-held.qcow2',
    });
    const refused = await t.call('DELETE', `/stores/${storeId}`);
    expect(refused.status).toBe(409);
    expect(refused.body.error.code).toBe('NotAllowed');
    expect(refused.body.error.message).toContain('tpl-held');
    expect((await t.call('GET', `/stores/${storeId}`)).body.status).toBe('Up');
  });

  it('lists what the share holds through a host, as an inventory job', async () => {
    const stores = (await t.call('GET', '/stores?role=primary&zoneId=zone-1')).body.items;
    const primary = stores.find((s: { name: string }) => s.name === 'nfs-primary-1');
    const { status, job } = await t.run('POST', `/stores/${primary.id}/inventory`);
    expect(status).toBe(202);
    expect(job).toMatchObject({ state: 'succeeded', kind: 'store.inventory' });
    expect(job.result).toMatchObject({ storeId: primary.id, truncated: false, total: expect.any(Number) });
    expect(Array.isArray(job.result.objects)).toBe(true);
  });

  it.each([
    ['unknown provider', { provider: 'ceph' }, 'provider'],
    ['role the provider cannot serve', { role: 'image' }, 'role'],
    ['missing details', { details: {} }, 'details.server'],
    [
      'relative mount path',
      { details: { server: 'x', export: '/e', mountPath: 'rel/path' } },
      'details.mountPath',
    ],
    ['cluster scope without cluster', { scope: { type: 'cluster', zoneId: 'zone-1' } }, 'scope.clusterId'],
    ['negative capacity', { capacityBytes: -1 }, 'capacityBytes'],
    ['threshold above 1', { disableThreshold: 1.5 }, 'disableThreshold'],
    ['unknown field', { colour: 'blue' }, 'colour'],
  ])('answers 400 naming the field for %s, and adds nothing', async (_case, patch, field) => {
    const before = (await t.call('GET', '/stores?limit=100')).body.items.length;
    const body = {
      name: 'bad',
      provider: 'nfs',
      role: 'primary',
      scope: { type: 'cluster', zoneId: 'zone-1', clusterId: 'cluster-1' },
      details: { server: 'x', export: '/e', mountPath: '/tmp/x' },
      ...patch,
    };
    const res = await t.call('POST', '/stores', body);
    expect(res.status).toBe(400);
    expect(res.body.error.field).toBe(field);
    expect((await t.call('GET', '/stores?limit=100')).body.items.length).toBe(before);
  });

  it('answers 422 for a host scope naming an unregistered host', async () => {
    const res = await t.call('POST', '/stores', {
      name: 'local-disk',
      provider: 'nfs',
      role: 'primary',
      scope: { type: 'host', zoneId: 'zone-1', hostId: 'host-ghost' },
      details: { server: 'x', export: '/e', mountPath: '/tmp/x' },
    });
    expect(res.status).toBe(422);
    expect(res.body.error.field).toBe('scope.hostId');
  });

  it('answers 404 for unknown stores on every store route', async () => {
    for (const [method, route] of [
      ['GET', '/stores/store-nope'],
      ['PATCH', '/stores/store-nope'],
      ['DELETE', '/stores/store-nope'],
      ['POST', '/stores/store-nope/maintenance'],
      ['DELETE', '/stores/store-nope/maintenance'],
      ['POST', '/stores/store-nope/inventory'],
    ] as const) {
      const res = await t.call(method, route, method === 'PATCH' ? { name: 'x' } : undefined);
      expect({ route, method, status: res.status }).toEqual({ route, method, status: 404 });
    }
  });
});

describe('request handling', () => {
  it('answers 400 for a body that is not JSON', async () => {
    const res = await t.call('POST', '/hosts', '{not json');
    expect(res.status).toBe(400);
    expect(res.body.error.field).toBe('body');
  });

  it('answers 413 for an oversize body, and registers nothing', async () => {
    const res = await t.call('POST', '/hosts', { name: 'x'.repeat(70_000) });
    expect(res.status).toBe(413);
  });

  it('answers 404 for an unknown route and 405 for a wrong method', async () => {
    expect((await t.call('GET', '/volcanoes')).status).toBe(404);
    const res = await t.call('PUT', '/stores');
    expect(res.status).toBe(405);
    expect(res.headers.get('allow')).toContain('GET');
  });

  it('answers 404 for an unknown job', async () => {
    const res = await t.call('GET', '/jobs/job-nope');
    expect(res.status).toBe(404);
    expect(res.body.error.code).toBe('NotFound');
  });

  it('answers 400 for bad query parameters', async () => {
    const res = await t.call('GET', '/jobs?limit=5000');
    expect(res.status).toBe(400);
    expect(res.body.error.field).toBe('query.limit');
  });

  it('replays a request with the same Idempotency-Key instead of applying it twice', async () => {
    const body = { name: 'idem', zoneId: 'zone-7', clusterId: 'c', instanceId: 'mi-0000000000000000a' };
    const headers = { 'idempotency-key': 'key-host-idem-1' };
    const first = await t.call('POST', '/hosts', body, headers);
    const second = await t.call('POST', '/hosts', body, headers);
    expect(first.status).toBe(201);
    expect(second.status).toBe(201);
    expect(second.body).toEqual(first.body);
    expect(second.headers.get('idempotent-replayed')).toBe('true');
    const other = await t.call('POST', '/hosts', { ...body, name: 'other' }, headers);
    expect(other.status).toBe(422);
    expect(other.body.error.field).toBe('Idempotency-Key');
    // the query string is part of the request too (e.g. a dry run is not the real thing)
    const withQuery = await t.call('POST', '/hosts?dryRun=true', body, headers);
    expect(withQuery.status).toBe(422);
  });

  it('pages job listings with a cursor and filters by target', async () => {
    const first = await t.call('GET', '/jobs?limit=1');
    expect(first.body.items).toHaveLength(1);
    expect(first.body.cursor).toEqual(expect.any(String));
    const next = await t.call('GET', `/jobs?limit=1&cursor=${encodeURIComponent(first.body.cursor)}`);
    expect(next.body.items[0].id).not.toBe(first.body.items[0].id);
    const target = first.body.items[0].target.id;
    const filtered = await t.call('GET', `/jobs?targetId=${target}`);
    expect(filtered.body.items.every((j: { target: { id: string } }) => j.target.id === target)).toBe(true);
  });
});
