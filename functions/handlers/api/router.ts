/** A small method + path-template router for the REST API (API Gateway sends every path to one function). */
import { InputError, NotFoundError } from '../../core/errors.js';

export type Method = 'GET' | 'POST' | 'PATCH' | 'DELETE';

export interface Route<Ctx> {
  method: Method;
  /** e.g. `/stores/{id}/maintenance` */
  path: string;
  summary: string;
  handle(ctx: Ctx, params: Record<string, string>): Promise<RouteResult>;
}

export interface RouteResult {
  status: number;
  body?: unknown;
  headers?: Record<string, string>;
}

/** Raised for a known path with the wrong method; answered 405 with an Allow header. */
export class MethodNotAllowedError extends Error {
  constructor(readonly allow: string[]) {
    super(`method not allowed; use ${allow.join(', ')}`);
    this.name = 'MethodNotAllowedError';
  }
}

/**
 * Why a request path cannot name anything, before any routing: every segment is an id or a name, so
 * a segment that is not valid percent-encoding, or that decodes to `.`, `..` or something holding a
 * `/`, is refused (a `..` must never walk to another route, as URL normalization would make it).
 * `undefined` when the path is fine.
 */
export function pathProblem(path: string): string | undefined {
  for (const raw of path.split('/')) {
    let segment: string;
    try {
      segment = decodeURIComponent(raw);
    } catch {
      return `path segment '${raw.slice(0, 64)}' is not valid percent-encoding`;
    }
    if (segment === '.' || segment === '..') return `path segment '${raw.slice(0, 64)}' is not an id`;
    if (segment.includes('/') || segment.includes('\\'))
      return `path segment '${raw.slice(0, 64)}' holds a path separator`;
  }
  return undefined;
}

interface Compiled<Ctx> {
  route: Route<Ctx>;
  regex: RegExp;
  names: string[];
}

export class Router<Ctx> {
  private readonly compiled: Compiled<Ctx>[];

  constructor(readonly routes: Route<Ctx>[]) {
    this.compiled = routes.map((route) => {
      const names: string[] = [];
      const pattern = route.path.replace(/\{([a-zA-Z]+)\}/g, (_, name: string) => {
        names.push(name);
        return '([^/]+)';
      });
      return { route, regex: new RegExp(`^${pattern}/?$`), names };
    });
  }

  match(method: string, path: string): { route: Route<Ctx>; params: Record<string, string> } {
    const problem = pathProblem(path);
    if (problem) throw new InputError(problem, { field: 'path' });
    const allow: string[] = [];
    for (const c of this.compiled) {
      const m = c.regex.exec(path);
      if (!m) continue;
      if (c.route.method !== method) {
        allow.push(c.route.method);
        continue;
      }
      const params: Record<string, string> = {};
      c.names.forEach((name, i) => {
        params[name] = decodeURIComponent(m[i + 1] ?? '');
      });
      return { route: c.route, params };
    }
    if (allow.length) throw new MethodNotAllowedError(allow);
    throw new NotFoundError(`no route for ${method} ${path}`, { field: 'path' });
  }
}
