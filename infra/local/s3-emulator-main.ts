/**
 * Runs the S3 emulator as its own process (`--dir <dir> [--port <n>]`), printing its endpoint as one
 * JSON line once it listens. The embedded stack uses this so that, as with real S3, the object store
 * does not share an event loop with Strata's own work.
 */
import { parseArgs } from 'node:util';
import { startS3Emulator } from './s3-emulator.js';

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { dir: { type: 'string' }, port: { type: 'string' } } });
  if (!values.dir) throw new Error('--dir is required');
  const emulator = await startS3Emulator({ dir: values.dir, port: Number(values.port ?? 0) });
  process.stdout.write(`${JSON.stringify({ endpoint: emulator.endpoint })}\n`);
  const stop = () => {
    emulator.stop().finally(() => process.exit(0));
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  // The parent closing our stdin means it is gone: do not outlive it.
  process.stdin.on('end', stop);
  process.stdin.resume();
}

main().catch((e: unknown) => {
  process.stderr.write(`${(e as Error).message}\n`);
  process.exit(1);
});
