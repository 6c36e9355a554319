/**
 * An HTTP forwarding proxy put in front of the S3 emulator, to cut a transfer off mid-way on real
 * HTTP: requests pass through untouched until a rule says to answer them with an error instead.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';

export interface FaultRule {
  /** Which requests the rule applies to. */
  match: (method: string, path: string) => boolean;
  /** How many matching requests go through before the rule starts failing them. */
  passFirst: number;
  /** Status answered once the rule fires. */
  status: number;
}

export interface FaultProxy {
  url: string;
  /** Requests that matched a rule and went through, per rule. */
  passed(): number;
  failed(): number;
  setRule(rule: FaultRule | undefined): void;
  close(): Promise<void>;
}

export async function startFaultProxy(target: string): Promise<FaultProxy> {
  const to = new URL(target);
  let rule: FaultRule | undefined;
  let passed = 0;
  let failed = 0;
  const server = http.createServer((req, res) => {
    const method = req.method ?? 'GET';
    const path = req.url ?? '/';
    if (rule?.match(method, path)) {
      if (passed >= rule.passFirst) {
        failed += 1;
        req.resume();
        res.writeHead(rule.status, { 'content-type': 'application/xml' });
        res.end('<Error><Code>InternalError</Code><Message>injected by the test</Message></Error>');
        return;
      }
      passed += 1;
    }
    const upstream = http.request(
      { host: to.hostname, port: to.port, method, path, headers: req.headers },
      (answer) => {
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(res);
      },
    );
    upstream.on('error', (e) => {
      res.destroy(e);
    });
    req.pipe(upstream);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    passed: () => passed,
    failed: () => failed,
    setRule(next) {
      rule = next;
      passed = 0;
      failed = 0;
    },
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
