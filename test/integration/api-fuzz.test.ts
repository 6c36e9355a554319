/**
 * The API refuses what it does not understand, on every route, and changes nothing doing so.
 *
 * For each route of the route table, at least {@link PER_ROUTE} malformed requests go over real
 * HTTP to the embedded stack (the synthesized API, its bundled function). Each request is a valid
 * one — real ids of a real host, store, template, upload, volume, snapshot, policy and job — with
 * exactly one fault: a path parameter, a query parameter, a header or the body. A value counts as
 * a fault only when the route's own schema rejects it (or it is not valid HTTP-level input: bad
 * percent-encoding, a body that is not JSON, a content type that is not JSON), so every request
 * here must be refused. Afterwards every row of the table (jobs included), the image bucket and the
 * host command log are exactly as before.
 */

import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import http from 'node:http';
import path from 'node:path';
import { promisify } from 'node:util';
import { DynamoDBClient, ScanCommand } from '@aws-sdk/client-dynamodb';
import { ListObjectsV2Command } from '@aws-sdk/client-s3';
import type { z } from 'zod';
import { routeDocs, routes } from '../../functions/handlers/api/routes';
import { IdempotencyKeyHeader, IdParam, UploadIdParam } from '../../functions/handlers/api/schemas';
import { localDynamoClientConfig } from '../../infra/local/dynamodb-local';
import { type ImageServer, startImageServer } from '../support/image-server';
import { integrationEndpoints, tempDir } from '../support/integration';
import { startTestStack, type TestStack } from '../support/stack';

const exec = promisify(execFile);
const PER_ROUTE = 500;

let t: TestStack;
let server: ImageServer;
let dynamo: DynamoDBClient;
/** A real id for each path parameter, by the route's first segment and the parameter name. */
const ids: Record<string, string> = {};

// ------------------------------------------------------------------------------------------------
// Raw HTTP: fetch would normalize paths and refuse some headers; the fuzz needs the bytes as sent.

interface Answer {
  status: number;
  body: string;
}

function send(
  method: string,
  rawPath: string,
  headers: Record<string, string | null>,
  body?: string,
): Promise<Answer> {
  const url = new URL(t.url);
  // As the admin caller unless the request brings its own Authorization (or none: `null`).
  const sent: Record<string, string> = { authorization: `Bearer ${t.stack.apiTokens.admin}` };
  for (const [k, v] of Object.entries(headers)) {
    if (v === null) delete sent[k];
    else sent[k] = v;
  }
  // Node frames a body of GET or DELETE only when told its length; unframed, the server would
  // see the request without it and the body as the next request.
  if (body !== undefined) sent['content-length'] = String(Buffer.byteLength(body));
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: url.hostname, port: url.port, method, path: rawPath, headers: sent, agent },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () =>
          resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }),
        );
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    if (body !== undefined) req.write(body);
    req.end();
  });
}

const agent = new http.Agent({ keepAlive: true, maxSockets: 8 });

// ------------------------------------------------------------------------------------------------
// A deterministic generator, so a failure names a request that can be sent again.

function prng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let r = Math.imul(s ^ (s >>> 15), 1 | s);
    r = (r + Math.imul(r ^ (r >>> 7), 61 | r)) ^ r;
    return ((r ^ (r >>> 14)) >>> 0) / 4294967296;
  };
}

/** Values of every JSON kind and the strings that attack something: each is tried in each field. */
const HOSTILE: unknown[] = [
  null,
  true,
  false,
  0,
  -1,
  1.5,
  2 ** 53,
  -(2 ** 63),
  1e308,
  '',
  ' ',
  'x'.repeat(5000),
  '\u0000',
  '../../../etc/passwd',
  '/etc/shadow',
  '$(reboot)',
  '`id`',
  '; rm -rf /',
  '%00',
  '%2e%2e%2f',
  'NaN',
  'Infinity',
  '-1',
  '\u202e',
  '<script>alert(1)</script>',
  'file:///etc/passwd',
  'http://169.254.169.254/latest/meta-data/',
  [],
  [1, 2, 3],
  ['x'.repeat(300)],
  {},
  { $ne: null },
  JSON.parse('{"__proto__":{"polluted":true}}'),
  [[[[[[[[[[[]]]]]]]]]]],
];

/** Query values: strings only (that is all a query holds). */
const HOSTILE_QUERY = [
  '',
  '-1',
  '0',
  '101',
  '1.5',
  '1e9',
  'abc',
  'x'.repeat(3000),
  '%00',
  '../..',
  '$(id)',
  'true',
  '{}',
  '[]',
  'Bogus',
  '\u00e9',
];

/** Path segment values, already encoded as they go on the wire. */
const HOSTILE_SEGMENTS = [
  '%ZZ',
  '%FF',
  '%C0%AE',
  '%C0%AE%C0%AE',
  '%2F',
  '..%2F..%2Fetc',
  '%5C',
  '%00',
  '%0A',
  '%20',
  'a%20b',
  'x'.repeat(129),
  '-leading-dash',
  '.hidden',
  '%E2%80%AE',
  '%C3%A9',
  '%3Cscript%3E',
  '%24(id)',
  '%60id%60',
  'a%3Bb',
  '%25',
  'a%2Fb',
  '%2E%2E',
  '%2E',
  'a%7Cb',
  'a%26b',
  'a%3Fb',
  'a%23b',
  'a%2Ab',
  '%7B%7D',
];

/** Content types a browser can send without a preflight, and other non-JSON ones. */
const BAD_CONTENT_TYPES = [
  'text/plain',
  'text/plain;charset=UTF-8',
  'application/x-www-form-urlencoded',
  'multipart/form-data; boundary=x',
  'application/xml',
  'application/jsonx',
  'json',
];

const BAD_IDEMPOTENCY_KEYS = [
  '',
  ' ',
  'x'.repeat(129),
  'a b',
  'a/b',
  '../x',
  'a;b',
  'é'.normalize('NFD'),
  '*',
];

// ------------------------------------------------------------------------------------------------
// Valid requests per route, each made malformed one way at a time.

interface Request {
  method: string;
  path: string;
  headers: Record<string, string | null>;
  body?: string;
  /** What was broken, for the failure message. */
  fault: string;
}

function validBody(method: string, template: string): Record<string, unknown> | undefined {
  const key = `${method} ${template}`;
  const bodies: Record<string, Record<string, unknown>> = {
    'POST /hosts': { name: 'fuzz', zoneId: 'zone-1', clusterId: 'cluster-1', instanceId: 'local-fuzz' },
    'PATCH /hosts/{id}': { status: 'Disabled' },
    'POST /stores': {
      name: 'fuzz',
      provider: 'nfs',
      role: 'primary',
      scope: { type: 'zone', zoneId: 'zone-1' },
      capacityBytes: 2 ** 30,
      details: { server: '127.0.0.1', export: '/srv', mountPath: '/mnt/fuzz' },
    },
    'PATCH /stores/{id}': { name: 'renamed', tags: ['a'] },
    'POST /sweeps': {},
    'POST /templates': {
      name: 'fuzz',
      url: 'https://example.com/a.qcow2',
      format: 'qcow2',
      zoneId: 'zone-1',
    },
    'POST /templates/uploads': { name: 'fuzz', format: 'qcow2', sizeBytes: 1024, zoneId: 'zone-1' },
    'POST /templates/{id}/uploads/{uploadId}/complete': { parts: [{ partNumber: 1, etag: '"abc"' }] },
    'POST /templates/{id}/copies': { storeId: ids.imageStore! },
    'POST /templates/{id}/uploads/{uploadId}/parts': { partNumbers: [1] },
    'POST /stores/{id}/verify': { sample: 0.5 },
    'POST /volumes': { name: 'fuzz', zoneId: 'zone-1', sizeBytes: 2 ** 20 },
    'POST /volumes/{id}/resize': { sizeBytes: 2 ** 21 },
    'POST /volumes/{id}/migrate': { storeId: ids.store! },
    'POST /volumes/{id}/access': { hostId: ids.host! },
    'POST /volumes/{id}/snapshots': { name: 'fuzz' },
    'POST /snapshot-policies': { volumeId: ids.volume!, schedule: 'rate(1 day)', keep: 2 },
  };
  return bodies[key];
}

function fill(template: string): string {
  const first = template.split('/')[1] ?? '';
  return template.replace(/\{([a-zA-Z]+)\}/g, (_, name: string) => {
    const id = ids[`${first}.${name}`];
    if (!id) throw new Error(`the fuzz has no id for {${name}} in ${template}`);
    return encodeURIComponent(id);
  });
}

function getAt(value: unknown, at: string[]): unknown {
  let node = value;
  for (const k of at) node = (node as Record<string, unknown> | undefined)?.[k];
  return node;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Every way to break one field of `body` that `schema` rejects. */
function bodyFaults(body: Record<string, unknown>, schema: z.ZodType, rand: () => number): unknown[] {
  const out: unknown[] = [];
  const rejected = (candidate: unknown) => !schema.safeParse(candidate).success;
  const paths: string[][] = [];
  const walk = (value: unknown, at: string[]) => {
    if (value && typeof value === 'object' && !Array.isArray(value)) {
      for (const [k, v] of Object.entries(value)) {
        paths.push([...at, k]);
        walk(v, [...at, k]);
      }
    }
  };
  walk(body, []);
  const setAt = (at: string[], value: unknown, remove = false): Record<string, unknown> => {
    const copy = structuredClone(body);
    let node: Record<string, unknown> = copy;
    for (const k of at.slice(0, -1)) node = node[k] as Record<string, unknown>;
    const last = at[at.length - 1]!;
    if (remove) delete node[last];
    else node[last] = value;
    return copy;
  };
  for (const at of paths) {
    for (const value of HOSTILE) {
      const candidate = setAt(at, value);
      if (rejected(candidate)) out.push(candidate);
    }
    const removed = setAt(at, undefined, true);
    if (rejected(removed)) out.push(removed);
  }
  // Unknown fields, at the top and in nested objects.
  for (const name of ['extra', 'constructor', 'prototype', 'toString', 'x'.repeat(200), '', '$where']) {
    for (const at of [[], ...paths.filter((p) => isPlainObject(getAt(body, p)))]) {
      const candidate = at.length === 0 ? { ...structuredClone(body), [name]: 1 } : setAt([...at, name], 1);
      if (rejected(candidate)) out.push(candidate);
    }
  }
  // Not an object at all.
  for (const value of HOSTILE) if (rejected(value)) out.push(value);
  // Two faults at once, drawn at random, until there are plenty.
  let guard = 0;
  while (out.length < PER_ROUTE && guard++ < 20_000) {
    const a = paths[Math.floor(rand() * paths.length)];
    const b = paths[Math.floor(rand() * paths.length)];
    if (!a || !b) break;
    const first = setAt(a, HOSTILE[Math.floor(rand() * HOSTILE.length)]);
    let node: Record<string, unknown> = first;
    for (const k of b.slice(0, -1)) {
      if (!node[k] || typeof node[k] !== 'object') break;
      node = node[k] as Record<string, unknown>;
    }
    node[b[b.length - 1]!] = HOSTILE[Math.floor(rand() * HOSTILE.length)];
    if (rejected(first)) out.push(first);
  }
  return out;
}

const NOT_JSON = [
  '{',
  '{"a":',
  '}',
  'nul',
  "{'a':1}",
  '{"a":1}x',
  '\ufeff{}',
  '[1,]',
  '{"a":01}',
  '{"a":NaN}',
  '{"a":"\\x00"}',
  '<xml/>',
  'a=1&b=2',
  '{"a":1,"a":',
  '"unterminated',
];

function requestsFor(method: string, template: string, seed: number): Request[] {
  const doc = routeDocs.get(`${method} ${template}`) ?? {};
  const rand = prng(seed);
  const json = { 'content-type': 'application/json' };
  const mutating = method !== 'GET';
  const base = validBody(method, template);
  if (doc.body && !base) throw new Error(`the fuzz has no valid body for ${method} ${template}`);
  const baseBody = base === undefined ? undefined : JSON.stringify(base);
  const path = fill(template);
  const out: Request[] = [];
  const add = (r: Omit<Request, 'method'>) => out.push({ method, ...r });

  // Path parameters.
  const params = [...template.matchAll(/\{([a-zA-Z]+)\}/g)].map((m) => m[1]!);
  for (const name of params) {
    const schema = name === 'uploadId' ? UploadIdParam : IdParam;
    for (const segment of HOSTILE_SEGMENTS) {
      let decoded: string | undefined;
      try {
        decoded = decodeURIComponent(segment);
      } catch {
        decoded = undefined;
      }
      if (decoded !== undefined && schema.safeParse(decoded).success) continue;
      const first = template.split('/')[1] ?? '';
      const broken = template
        .replace(`{${name}}`, segment)
        .replace(/\{([a-zA-Z]+)\}/g, (_, n: string) => encodeURIComponent(ids[`${first}.${n}`]!));
      add({
        path: broken,
        headers: json,
        ...(baseBody ? { body: baseBody } : {}),
        fault: `{${name}}=${segment}`,
      });
    }
  }
  // Extra path segments: no such route.
  for (const extra of ['x', '%ZZ', 'a/b', '..', '.']) {
    add({
      path: `${path}/${extra}`,
      headers: json,
      ...(baseBody ? { body: baseBody } : {}),
      fault: `/${extra}`,
    });
  }

  // The query string.
  const queryShape = (doc.query as z.ZodObject<z.ZodRawShape> | undefined)?.shape ?? {};
  const queryRejects = (name: string, value: string) =>
    doc.query ? !doc.query.safeParse({ [name]: value }).success : true;
  for (const name of Object.keys(queryShape)) {
    for (const value of HOSTILE_QUERY) {
      if (!queryRejects(name, value)) continue;
      add({
        path: `${path}?${name}=${encodeURIComponent(value)}`,
        headers: json,
        ...(baseBody ? { body: baseBody } : {}),
        fault: `?${name}=${value.slice(0, 20)}`,
      });
    }
  }
  for (const name of ['x', 'dryrun', 'limit%00', '__proto__', 'constructor', 'a'.repeat(100), 'id']) {
    for (const value of ['1', 'true', '']) {
      if (!queryRejects(decodeURIComponent(name), value)) continue;
      add({
        path: `${path}?${name}=${value}`,
        headers: json,
        ...(baseBody ? { body: baseBody } : {}),
        fault: `?${name}=${value}`,
      });
    }
  }

  // Headers.
  if (baseBody) {
    for (const type of BAD_CONTENT_TYPES)
      add({ path, headers: { 'content-type': type }, body: baseBody, fault: `content-type ${type}` });
    add({ path, headers: {}, body: baseBody, fault: 'no content-type' });
  }
  if (mutating) {
    for (const key of BAD_IDEMPOTENCY_KEYS) {
      if (IdempotencyKeyHeader.safeParse(key).success) continue;
      add({
        path,
        headers: { ...json, 'idempotency-key': Buffer.from(key, 'utf8').toString('latin1') },
        ...(baseBody ? { body: baseBody } : {}),
        fault: `idempotency-key ${key.slice(0, 20)}`,
      });
    }
  }

  // Who is calling: no credentials, or credentials that are not a token of this stack.
  const body = baseBody ? { body: baseBody } : {};
  const liveness = method === 'GET' && template === '/health';
  for (const authorization of [
    null,
    '',
    'Bearer',
    'Bearer ',
    'Bearer x',
    `Bearer ${'0'.repeat(64)}`,
    `Basic ${Buffer.from('admin:admin').toString('base64')}`,
    `Bearer ${t.stack.apiTokens.admin}x`,
    `bearer${t.stack.apiTokens.admin}`,
    'AWS4-HMAC-SHA256 Credential=AKIA/20260101/us-east-1/execute-api/aws4_request',
  ]) {
    // GET /health answers a caller with no credentials at all (a load balancer's probe).
    if (liveness && authorization === null) continue;
    add({
      path,
      headers: { ...json, authorization },
      ...body,
      fault: `authorization ${String(authorization).slice(0, 30)}`,
    });
  }
  // A read-only caller may not change anything.
  if (mutating)
    add({
      path,
      headers: { ...json, authorization: `Bearer ${t.stack.apiTokens.readOnly}` },
      ...body,
      fault: 'read-only caller',
    });

  // The body.
  if (doc.body && base) {
    for (const text of NOT_JSON) add({ path, headers: json, body: text, fault: `body ${text}` });
    add({ path, headers: json, body: `{"a":"${'x'.repeat(70 * 1024)}"}`, fault: 'body over 64 KiB' });
    for (const body of bodyFaults(base, doc.body, rand))
      add({
        path,
        headers: json,
        body: JSON.stringify(body),
        fault: `body ${JSON.stringify(body).slice(0, 80)}`,
      });
  } else {
    // A route that takes no body refuses one, whatever it holds.
    for (const value of [{}, ...HOSTILE]) {
      add({
        path,
        headers: json,
        body: JSON.stringify(value),
        fault: `unexpected body ${JSON.stringify(value).slice(0, 40)}`,
      });
    }
    for (const text of NOT_JSON) add({ path, headers: json, body: text, fault: `unexpected body ${text}` });
  }

  // Fill up to PER_ROUTE with random combinations of the kinds above that stay single-fault:
  // random unknown query names, random junk bodies on body-less routes, random bad segments.
  let n = 0;
  while (out.length < PER_ROUTE) {
    n++;
    const pick = Math.floor(rand() * 3);
    if (pick === 0) {
      const name = `q${Math.floor(rand() * 1e9).toString(36)}`;
      if (!queryRejects(name, '1')) continue;
      add({
        path: `${path}?${name}=${n}`,
        headers: json,
        ...(baseBody ? { body: baseBody } : {}),
        fault: `?${name}`,
      });
    } else if (pick === 1 && !doc.body) {
      const junk = { [`k${n}`]: HOSTILE[Math.floor(rand() * HOSTILE.length)] };
      add({ path, headers: json, body: JSON.stringify(junk), fault: `unexpected body #${n}` });
    } else {
      const junk = `x${Math.floor(rand() * 1e9).toString(36)}`;
      add({
        path: `${path}/${junk}/%ZZ`,
        headers: json,
        ...(baseBody ? { body: baseBody } : {}),
        fault: `/${junk}/%ZZ`,
      });
    }
  }
  return out;
}

// ------------------------------------------------------------------------------------------------
// What must not change.

async function snapshotState(): Promise<{
  table: string;
  rows: number;
  all: string[];
  bucket: string;
  commands: number;
}> {
  const rows: string[] = [];
  let start: Record<string, unknown> | undefined;
  do {
    const page = await dynamo.send(
      new ScanCommand({
        TableName: t.stack.tableName,
        ConsistentRead: true,
        ExclusiveStartKey: start as never,
      }),
    );
    for (const item of page.Items ?? []) rows.push(JSON.stringify(Object.entries(item).sort()));
    start = page.LastEvaluatedKey;
  } while (start);
  const keys: string[] = [];
  let token: string | undefined;
  do {
    const page = await t.s3.send(
      new ListObjectsV2Command({ Bucket: t.imageBucket, ...(token ? { ContinuationToken: token } : {}) }),
    );
    for (const o of page.Contents ?? []) keys.push(`${o.Key} ${o.ETag} ${o.Size}`);
    token = page.NextContinuationToken;
  } while (token);
  return {
    table: createHash('sha256').update(rows.sort().join('\n')).digest('hex'),
    rows: rows.length,
    all: rows,
    bucket: keys.sort().join('\n'),
    commands: t.stack.ssm.commandCount,
  };
}

beforeAll(async () => {
  const dir = await tempDir('strata-fuzz-');
  const image = path.join(dir, 'tiny.qcow2');
  await exec('qemu-img', ['create', '-f', 'qcow2', image, '16M']);
  server = await startImageServer();
  server.serve('/tiny.qcow2', { kind: 'file', path: image });
  t = await startTestStack({ fetchAllowlist: '127.0.0.1' });
  dynamo = new DynamoDBClient(localDynamoClientConfig(integrationEndpoints().dynamo));

  const stores = (await t.call('GET', '/stores')).body.items as { id: string; role: string }[];
  const reg = await t.call('POST', '/templates', {
    name: 'fuzz-template',
    url: server.url('/tiny.qcow2'),
    format: 'qcow2',
    zoneId: 'zone-1',
  });
  expect((await t.waitForJob(reg.body.job.id)).state).toBe('succeeded');
  const upload = await t.call('POST', '/templates/uploads', {
    name: 'fuzz-upload',
    format: 'raw',
    sizeBytes: 1024,
    zoneId: 'zone-1',
  });
  expect(upload.status).toBe(201);
  const volume = await t.run('POST', '/volumes', {
    name: 'fuzz-volume',
    zoneId: 'zone-1',
    sizeBytes: 2 ** 24,
  });
  if (volume.job?.state !== 'succeeded') throw new Error(`volume create: ${JSON.stringify(volume.body)}`);
  const volumeId: string = volume.body.volume.id;
  const snap = await t.run('POST', `/volumes/${volumeId}/snapshots`, { name: 'fuzz-snap' });
  expect(snap.job?.state).toBe('succeeded');
  const policy = await t.call('POST', '/snapshot-policies', {
    volumeId,
    schedule: 'cron(0 3 * * ? *)',
    keep: 1,
  });
  expect(policy.status).toBe(201);

  Object.assign(ids, {
    host: t.hostId(1),
    store: stores.find((s) => s.role === 'primary')!.id,
    imageStore: stores.find((s) => s.role === 'image')!.id,
    volume: volumeId,
    'hosts.id': t.hostId(2),
    'stores.id': stores.find((s) => s.role === 'primary')!.id,
    'templates.id': upload.body.template.id,
    'templates.uploadId': upload.body.upload.uploadId,
    'volumes.id': volumeId,
    'volumes.hostId': t.hostId(1),
    'snapshots.id': snap.body.snapshot?.id ?? snap.job.result.snapshotId,
    'snapshot-policies.id': policy.body.id ?? policy.body.policy?.id,
    'jobs.id': reg.body.job.id,
  });
}, 180_000);

afterAll(async () => {
  agent.destroy();
  dynamo?.destroy();
  await t?.stack.stop();
  await server?.close();
});

describe('the API under malformed requests', () => {
  it(`refuses ${PER_ROUTE}+ malformed requests on every route with 4xx and changes nothing`, async () => {
    const before = await snapshotState();
    // Nothing moves on its own while the stack is idle, so any difference afterwards is the fuzz's.
    await new Promise((r) => setTimeout(r, 500));
    expect((await snapshotState()).table).toEqual(before.table);

    const failures: string[] = [];
    const counts: Record<string, number> = {};
    let seed = 1;
    for (const r of routes) {
      const requests = requestsFor(r.method, r.path, seed++);
      counts[`${r.method} ${r.path}`] = requests.length;
      if (process.env.FUZZ_TRACE && `${r.method} ${r.path}` === process.env.FUZZ_TRACE) {
        // Debugging aid: one request at a time, naming the first that changed the table.
        for (const q of requests) {
          const at = (await snapshotState()).table;
          const a = await send(q.method, q.path, q.headers, q.body);
          if ((await snapshotState()).table !== at)
            failures.push(
              `changed the table: ${q.method} ${q.path} [${q.fault}] → ${a.status} ${a.body.slice(0, 200)}`,
            );
        }
        continue;
      }
      for (let i = 0; i < requests.length; i += 16) {
        const batch = requests.slice(i, i + 16);
        const answers = await Promise.all(batch.map((q) => send(q.method, q.path, q.headers, q.body)));
        answers.forEach((a, j) => {
          const q = batch[j]!;
          if (a.status < 400 || a.status >= 500) {
            failures.push(
              `${q.method} ${q.path.slice(0, 120)} [${q.fault}] → ${a.status} ${a.body.slice(0, 200)}`,
            );
          }
        });
      }
    }
    const total = Object.values(counts).reduce((a, b) => a + b, 0);
    process.stdout.write(`api fuzz: ${total} malformed requests over ${routes.length} routes\n`);
    expect(total).toBeGreaterThanOrEqual(routes.length * PER_ROUTE);
    expect(failures.slice(0, 20)).toEqual([]);
    for (const [route, count] of Object.entries(counts))
      expect([route, count >= PER_ROUTE]).toEqual([route, true]);

    const after = await snapshotState();
    const known = new Set(before.all);
    expect(after.all.filter((row) => !known.has(row)).slice(0, 5)).toEqual([]);
    expect(after.rows).toBe(before.rows);
    expect(after.commands).toBe(before.commands);
    expect(after.bucket).toBe(before.bucket);
    expect(after.table).toBe(before.table);
  }, 900_000);
});
