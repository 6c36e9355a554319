import { InputError, NotFoundError } from '../../../functions/core/errors';
import { MethodNotAllowedError, Router } from '../../../functions/handlers/api/router';

const handle = async () => ({ status: 200 });
const router = new Router([
  { method: 'GET', path: '/stores', summary: '', handle },
  { method: 'GET', path: '/stores/{id}', summary: '', handle },
  { method: 'DELETE', path: '/stores/{id}', summary: '', handle },
  { method: 'POST', path: '/stores/{id}/maintenance', summary: '', handle },
]);

describe('Router.match', () => {
  it('extracts and decodes path parameters', () => {
    const { route, params } = router.match('GET', '/stores/store%2D1');
    expect(route.path).toBe('/stores/{id}');
    expect(params).toEqual({ id: 'store-1' });
  });

  it('accepts a trailing slash', () => {
    expect(router.match('GET', '/stores/').route.path).toBe('/stores');
  });

  it('does not let a parameter span segments', () => {
    expect(() => router.match('GET', '/stores/a/b')).toThrow(NotFoundError);
  });

  it('answers a known path with the wrong method with the allowed methods', () => {
    try {
      router.match('PATCH', '/stores/x');
      throw new Error('expected a MethodNotAllowedError');
    } catch (e) {
      expect(e).toBeInstanceOf(MethodNotAllowedError);
      expect((e as MethodNotAllowedError).allow.sort()).toEqual(['DELETE', 'GET']);
    }
  });

  it.each([
    '/stores/%ZZ',
    '/stores/%FF',
    '/stores/%C0%AE',
    '/stores/.',
    '/stores/..',
    '/stores/%2e%2E',
    '/stores/x/..',
    '/stores/a%2Fb',
    '/stores/a%5Cb',
  ])('refuses %s with 400 naming the path, before any route is chosen', (path) => {
    try {
      router.match('DELETE', path);
      throw new Error('expected an InputError');
    } catch (e) {
      expect(e).toBeInstanceOf(InputError);
      expect((e as InputError).context.field).toBe('path');
    }
  });

  it('throws NotFoundError for an unknown path', () => {
    expect(() => router.match('GET', '/volumes')).toThrow(NotFoundError);
  });
});
