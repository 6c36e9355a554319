import { CliApiError, CliConnectionError, resolveBaseUrl, StrataClient } from '../../../cli/http-client.js';
import { FakeApi, host, runCli, store, UUID } from './fake-api.js';

describe('resolveBaseUrl', () => {
  it('prefers the flag, then STRATA_API_URL, then the embedded stack port', () => {
    const env = { STRATA_API_URL: 'https://api.example.com', STRATA_PORT: '9000' };

    expect(resolveBaseUrl('http://flag:1', env)).toBe('http://flag:1');
    expect(resolveBaseUrl(undefined, env)).toBe('https://api.example.com');
    expect(resolveBaseUrl(undefined, { STRATA_PORT: '9000' })).toBe('http://127.0.0.1:9000');
    expect(resolveBaseUrl(undefined, {})).toBe('http://127.0.0.1:8787');
  });
});

describe('StrataClient', () => {
  let api: FakeApi;
  let client: StrataClient;
  beforeEach(async () => {
    api = await new FakeApi().start();
    client = new StrataClient({ baseUrl: api.url, retryDelayMs: 1 });
  });
  afterEach(() => api.stop());

  describe('errors', () => {
    it('turns the error envelope into a CliApiError with code, message and field', async () => {
      api.on('PATCH', '/stores/st-1', {
        status: 409,
        body: { error: { code: 'VERSION_CONFLICT', message: 'changed meanwhile', field: 'version' } },
      });

      const error = await client.updateStore('st-1', { name: 'x' }).catch((e: unknown) => e);

      expect(error).toBeInstanceOf(CliApiError);
      expect(error).toMatchObject({
        status: 409,
        code: 'VERSION_CONFLICT',
        message: 'changed meanwhile',
        field: 'version',
      });
    });

    it("understands API Gateway's own { message } answers", async () => {
      api.on('GET', '/stores', { status: 403, body: { message: 'Missing Authentication Token' } });

      const error = await client.listStores().catch((e: unknown) => e);

      expect(error).toMatchObject({ status: 403, code: 'HTTP_403', message: 'Missing Authentication Token' });
    });

    it('reports a success answer that is not JSON', async () => {
      api.on('GET', '/health', { status: 200, raw: '<html>hello</html>' });

      await expect(client.health()).rejects.toMatchObject({ status: 200, code: 'BAD_RESPONSE' });
    });

    it('keeps the text of a non-JSON error page, shortened', async () => {
      api.on('GET', '/health', { status: 502, raw: `<html>\n  Bad Gateway ${'x'.repeat(500)}</html>` });

      const error = (await client.health().catch((e: unknown) => e)) as CliApiError;

      expect(error).toMatchObject({ status: 502, code: 'HTTP_502' });
      expect(error.message.startsWith('<html> Bad Gateway xxx')).toBe(true);
      expect(error.message.length).toBeLessThanOrEqual(201);
    });

    it('accepts an empty 204', async () => {
      api.on('DELETE', '/hosts/h-1', { status: 204 });

      await expect(client.deleteHost('h-1')).resolves.toBeUndefined();
    });
  });

  describe('retries', () => {
    it('repeats a mutation cut off mid-flight once, with the same Idempotency-Key', async () => {
      api.on('POST', '/hosts', 'drop', { status: 201, body: host() });

      const created = await client.createHost({
        name: 'kvm-01',
        zoneId: 'z',
        clusterId: 'c',
        instanceId: 'i',
      });

      expect(created.id).toBe('h-1');
      expect(api.requests).toHaveLength(2);
      const [first, second] = api.requests.map((r) => r.headers['idempotency-key']);
      expect(first).toMatch(UUID);
      expect(second).toBe(first);
      expect(api.requests[1]!.body).toEqual(api.requests[0]!.body);
    });

    it('repeats a read once and then gives up with a connection error', async () => {
      api.on('GET', '/stores/st-1', 'drop');

      const error = await client.getStore('st-1').catch((e: unknown) => e);

      expect(error).toBeInstanceOf(CliConnectionError);
      expect(api.requests).toHaveLength(2);
    });

    it('does not repeat a request the server answered, even with a 5xx', async () => {
      api.on('DELETE', '/stores/st-1', {
        status: 500,
        body: { error: { code: 'INTERNAL', message: 'boom' } },
      });

      await expect(client.deleteStore('st-1')).rejects.toMatchObject({ status: 500, code: 'INTERNAL' });
      expect(api.requests).toHaveLength(1);
    });

    it('a fresh key per request when none is fixed', async () => {
      api.on('PATCH', '/stores/st-1', { status: 200, body: store() });

      await client.updateStore('st-1', { name: 'a' });
      await client.updateStore('st-1', { name: 'b' });

      const [first, second] = api.requests.map((r) => r.headers['idempotency-key']);
      expect(first).not.toBe(second);
    });
  });

  it('gives up on a request that gets no answer in time, without repeating it', async () => {
    const impatient = new StrataClient({ baseUrl: api.url, timeoutMs: 50, retryDelayMs: 1 });
    api.on('GET', '/health', { status: 200, body: { status: 'ok' }, delayMs: 2_000 });

    const error = await impatient.health().catch((e: unknown) => e);

    expect(error).toBeInstanceOf(CliConnectionError);
    expect((error as Error).message).toBe(`no answer from ${api.url} within 0.05s`);
    expect(api.requests).toHaveLength(1);
  });
});

describe('the CLI over a flaky connection', () => {
  it('retries a store update once and the server sees one key', async () => {
    const api = await new FakeApi().start();
    try {
      api.on('PATCH', '/stores/st-1', 'drop', { status: 200, body: store({ status: 'Disabled' }) });

      const result = await runCli(['stores', 'disable', 'st-1'], { api });

      expect(result.code).toBe(0);
      expect(new Set(api.requests.map((r) => r.headers['idempotency-key'])).size).toBe(1);
      expect(api.requests).toHaveLength(2);
    } finally {
      await api.stop();
    }
  });
});
