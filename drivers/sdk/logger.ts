/**
 * Loggers for places where Strata did not hand one in: a silent one for tests and a JSON-lines
 * one on stderr for the host runtime (stdout carries the NDJSON protocol and must stay clean).
 */
import type { Logger } from './types.js';

/**
 * A logger that drops everything.
 *
 * @example
 * const ctx = { logger: noopLogger, ... };
 */
export const noopLogger: Logger = {
  debug() {},
  info() {},
  warn() {},
  error() {},
};

/**
 * A logger writing one JSON object per line to a stream (stderr by default).
 *
 * @example
 * const logger = createJsonLogger({ bindings: { jobId: 'job-1' } });
 * logger.info('mounted', { host: 'h1' });
 */
export function createJsonLogger(
  options: {
    bindings?: Record<string, unknown>;
    stream?: { write(chunk: string): unknown };
    minLevel?: 'debug' | 'info' | 'warn' | 'error';
  } = {},
): Logger {
  const levels = ['debug', 'info', 'warn', 'error'] as const;
  const min = levels.indexOf(options.minLevel ?? 'info');
  const stream = options.stream ?? process.stderr;
  const write = (level: (typeof levels)[number], message: string, fields?: Record<string, unknown>) => {
    if (levels.indexOf(level) < min) return;
    const line = { time: new Date().toISOString(), level, message, ...options.bindings, ...fields };
    stream.write(`${JSON.stringify(line, errorReplacer)}\n`);
  };
  return {
    debug: (m, f) => write('debug', m, f),
    info: (m, f) => write('info', m, f),
    warn: (m, f) => write('warn', m, f),
    error: (m, f) => write('error', m, f),
  };
}

// Error objects serialise to {} by default; keep what helps an operator.
function errorReplacer(_key: string, value: unknown): unknown {
  if (value instanceof Error) {
    return { name: value.name, message: value.message, code: (value as { code?: unknown }).code };
  }
  return value;
}
