import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { ApiTokenConfigError, resolveApiToken } from '../../../cli/api-token.js';
import { StrataClient } from '../../../cli/http-client.js';
import { FakeApi } from './fake-api.js';

const LOCAL = new URL('http://127.0.0.1:8787');
const tokens = { readOnly: 'r'.repeat(40), operator: 'o'.repeat(40), admin: 'a'.repeat(40) };

describe('resolveApiToken', () => {
  let cwd: string;
  beforeEach(async () => {
    cwd = await mkdtemp(path.join(os.tmpdir(), 'strata-cli-token-'));
  });
  afterEach(() => rm(cwd, { recursive: true, force: true }));

  const writeTokens = async (dir: string, content: string) => {
    await rm(path.join(cwd, dir), { recursive: true, force: true });
    await mkdir(path.join(cwd, dir), { recursive: true });
    await writeFile(path.join(cwd, dir, 'api-tokens.json'), content);
  };

  it('prefers STRATA_API_TOKEN, for any URL', () => {
    expect(resolveApiToken(new URL('https://api.example.com'), { STRATA_API_TOKEN: 'x' }, cwd)).toBe('x');
  });

  it('reads the admin token from .strata/api-tokens.json, or the role STRATA_API_ROLE names', async () => {
    await writeTokens('.strata', JSON.stringify(tokens));
    expect(resolveApiToken(LOCAL, {}, cwd)).toBe(tokens.admin);
    expect(resolveApiToken(LOCAL, { STRATA_API_ROLE: 'readOnly' }, cwd)).toBe(tokens.readOnly);
    expect(() => resolveApiToken(LOCAL, { STRATA_API_ROLE: 'root' }, cwd)).toThrow(ApiTokenConfigError);
  });

  it('reads the data directory STRATA_DATA_DIR names', async () => {
    await writeTokens('other', JSON.stringify({ ...tokens, operator: 'from-other' }));
    expect(resolveApiToken(LOCAL, { STRATA_DATA_DIR: 'other', STRATA_API_ROLE: 'operator' }, cwd)).toBe(
      'from-other',
    );
  });

  it('never reads the token file for an API that is not on this machine', async () => {
    await writeTokens('.strata', JSON.stringify(tokens));
    expect(resolveApiToken(new URL('http://10.0.0.5:8787'), {}, cwd)).toBeUndefined();
    expect(resolveApiToken(new URL('http://localhost:8787'), {}, cwd)).toBe(tokens.admin);
  });

  it('sends nothing when there is no file yet (the API then says where to look)', () => {
    expect(resolveApiToken(LOCAL, {}, cwd)).toBeUndefined();
  });
});

describe('StrataClient bearer token', () => {
  it('sends Authorization: Bearer on every request when it has a token', async () => {
    const api = await new FakeApi().start();
    try {
      api.on('GET', '/hosts', { status: 200, body: { items: [] } });
      await new StrataClient({ baseUrl: api.url, bearerToken: 'tok-1' }).listHosts();
      expect(api.requests.at(-1)?.headers.authorization).toBe('Bearer tok-1');
      await new StrataClient({ baseUrl: api.url }).listHosts();
      expect(api.requests.at(-1)?.headers.authorization).toBeUndefined();
    } finally {
      await api.stop();
    }
  });
});
