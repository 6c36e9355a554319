/**
 * A real HTTP server on 127.0.0.1 serving test images, with the misbehaviours a template URL can
 * show: redirects, truncated bodies, lying Content-Length.
 */
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';

export type Route =
  | { kind: 'file'; path: string }
  | { kind: 'redirect'; location: string }
  | { kind: 'truncated'; path: string; sendBytes: number }
  | { kind: 'lying-length'; path: string; claimBytes: number };

export interface ImageServer {
  url(path: string): string;
  serve(path: string, route: Route): void;
  /** Requests seen per path. */
  hits: Map<string, number>;
  close(): Promise<void>;
}

export async function startImageServer(): Promise<ImageServer> {
  const routes = new Map<string, Route>();
  const hits = new Map<string, number>();
  const server = http.createServer(async (req, res) => {
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    hits.set(path, (hits.get(path) ?? 0) + 1);
    const route = routes.get(path);
    if (!route) {
      res.writeHead(404).end();
      return;
    }
    if (route.kind === 'redirect') {
      res.writeHead(302, { location: route.location }).end();
      return;
    }
    const size = (await stat(route.path)).size;
    if (route.kind === 'file') {
      res.writeHead(200, { 'content-length': String(size), 'content-type': 'application/octet-stream' });
      createReadStream(route.path).pipe(res);
    } else if (route.kind === 'truncated') {
      res.writeHead(200, { 'content-length': String(size) });
      const stream = createReadStream(route.path, { start: 0, end: route.sendBytes - 1 });
      stream.on('end', () => res.socket?.destroy());
      stream.pipe(res, { end: false });
    } else {
      res.writeHead(200, { 'content-length': String(route.claimBytes) });
      createReadStream(route.path).pipe(res);
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: (path) => `http://127.0.0.1:${port}${path}`,
    serve: (path, route) => routes.set(path, route),
    hits,
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
