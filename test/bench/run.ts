/**
 * Runs benchmarks and prints their figures. Never part of `npm test`: figures go to BENCHMARKS.md.
 *
 *   npm run bench -- <name> [args…]     e.g. npm run bench -- ingest 256 5; npm run bench -- volumes 64 1024 3;
 *                                        npm run bench -- snapshots 256 1024 16 2; npm run bench -- lazy-restore 4096 1
 */
import { benchIngest } from './ingest';
import { benchLazyRestore } from './lazy-restore';
import { benchSnapshots } from './snapshots';
import { benchVolumes } from './volumes';

process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

const benches: Record<string, (args: number[]) => Promise<unknown>> = {
  ingest: (a) => benchIngest(a[0], a[1]),
  volumes: (a) => benchVolumes(a[0], a[1], a[2]),
  snapshots: (a) => benchSnapshots(a[0], a[1], a[2], a[3]),
  'lazy-restore': (a) => benchLazyRestore(a[0], a[1]),
};

async function main(): Promise<void> {
  const [name, ...rest] = process.argv.slice(2);
  const names = name ? [name] : Object.keys(benches);
  for (const n of names) {
    const bench = benches[n];
    if (!bench) throw new Error(`unknown benchmark ${n}; known: ${Object.keys(benches).join(', ')}`);
    await bench(rest.map(Number));
  }
}

main().then(
  () => process.exit(0),
  (e: unknown) => {
    console.error(e);
    process.exit(1);
  },
);
