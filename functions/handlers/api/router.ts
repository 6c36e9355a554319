/** A small method + path-template router for the REST API (API Gateway sends every path to one function). */
import { NotFoundError } from '../../core/errors.js';

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
