/**
 * Runs benchmarks and prints their figures. Never part of `npm test`: figures go to BENCHMARKS.md.
 *
 *   npm run bench -- all                 every bench at the sizes of BENCHMARKS.md's table, one after another
 *   npm run bench -- all small           the same at small sizes (a smoke run of a few minutes)
 *   npm run bench -- <name> [args…]      e.g. npm run bench -- ingest 256 5; npm run bench -- volumes 64 4096 3 512;
 *                                        npm run bench -- snapshots 256 1024 16 2 4096 2048;
 *                                        npm run bench -- lazy-restore 4096 1 (host level);
 *                                        npm run bench -- install 1024 5; npm run bench -- restore 256 1024 3 (host level)
 *
 * Each bench ends with one JSON line `{"bench":…,"figures":{…}}`.
 */
import { benchIngest } from './ingest';
import { benchInstall } from './install';
import { benchLazyRestore } from './lazy-restore';
import { benchRestore } from './restore';
import { benchSnapshots } from './snapshots';
import { benchVolumes } from './volumes';

process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

const benches: Record<string, (args: number[]) => Promise<unknown>> = {
  ingest: (a) => benchIngest(a[0], a[1]),
  volumes: (a) => benchVolumes(a[0], a[1], a[2], a[3]),
  snapshots: (a) => benchSnapshots(a[0], a[1], a[2], a[3], a[4], a[5]),
  'lazy-restore': (a) => benchLazyRestore(a[0], a[1]),
  install: (a) => benchInstall(a[0], a[1]),
  restore: (a) => benchRestore(a[0], a[1], a[2]),
};

/** The arguments `all` gives each bench: the table's cases, and small ones for a smoke run. */
const ALL: Record<'table' | 'small', Record<string, number[]>> = {
  table: {
    ingest: [256, 5],
    volumes: [64, 4096, 3, 512],
    snapshots: [256, 1024, 16, 2, 4096, 2048],
  },
  small: {
    ingest: [32, 1],
    volumes: [16, 256, 1, 32],
    snapshots: [32, 64, 8, 1, 256, 64],
  },
};

async function main(): Promise<void> {
  const [name, ...rest] = process.argv.slice(2);
  if (!name || name === 'all') {
    const sizes = rest[0] === 'small' ? ALL.small : ALL.table;
    if (rest[0] !== undefined && rest[0] !== 'small') throw new Error('all takes no arguments but `small`');
    for (const [n, args] of Object.entries(sizes)) await benches[n]!(args);
    return;
  }
  const bench = benches[name];
  if (!bench) throw new Error(`unknown benchmark ${name}; known: all, ${Object.keys(benches).join(', ')}`);
  const args = rest.map(Number);
  if (args.some((a) => !Number.isFinite(a))) throw new Error(`${name} takes numbers: ${rest.join(' ')}`);
  await bench(args);
}

main().then(
  () => process.exit(0),
  (e: unknown) => {
    console.error(e);
    process.exit(1);
  },
);
