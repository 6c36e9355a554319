/**
 * Volume benchmarks on the embedded stack (real qcow2 templates, real qemu-img on the nfs pool):
 *
 *   npm run bench -- volumes [smallMiB=64] [largeMiB=1024] [rounds=3]
 *
 * 1. Volume from a cached template: POST /volumes until the job succeeds, for a small and a large
 *    template already installed on the pool. A linked clone must not grow with the template's
 *    size: the ratio large / small should stay near 1.
 * 2. First install of a template on a pool (download from the image store through a presigned URL,
 *    sha256, qemu-img check, rename), versus a plain `cp` of the same file on the same disk.
 *    The install is measured as the first volume's time minus a cached clone's time.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { startImageServer } from '../support/image-server';
import { median, startBenchStack } from './harness';

const exec = promisify(execFile);

/**
 * Starts a timed phase with a cold page cache when the machine allows it (root on Linux), so that
 * `cp` is measured against the disk rather than memory. Returns whether the cache was dropped.
 */
async function coldCache(): Promise<boolean> {
  if (process.env.STRATA_BENCH_WARM === '1') return false;
  try {
    await exec('sync');
    await writeFile('/proc/sys/vm/drop_caches', '3');
    return true;
  } catch {
    return false;
  }
}

async function makeTemplate(file: string, mib: number): Promise<void> {
  await exec('qemu-img', ['create', '-f', 'qcow2', file, `${mib}M`]);
  // Fill half of it with data, as an installed OS would.
  await exec('qemu-io', ['-c', `write -P 0x3c 0 ${Math.floor(mib / 2)}M`, file]);
}

export async function benchVolumes(
  smallMiB = 64,
  largeMiB = 1024,
  rounds = 3,
): Promise<Record<string, number>> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'strata-bench-volumes-'));
  const files = { small: path.join(dir, 'small.qcow2'), large: path.join(dir, 'large.qcow2') };
  await makeTemplate(files.small, smallMiB);
  await makeTemplate(files.large, largeMiB);
  const server = await startImageServer();
  server.serve('/small.qcow2', { kind: 'file', path: files.small });
  server.serve('/large.qcow2', { kind: 'file', path: files.large });
  const { stack, api, waitJob } = await startBenchStack(dir, { fetchAllowlist: '127.0.0.1', pollMs: 50 });
  const timedVolume = async (templateId: string, name: string) => {
    const t0 = performance.now();
    const res = await api('POST', '/volumes', { name, zoneId: 'zone-1', templateId });
    await waitJob(res.job.id);
    return performance.now() - t0;
  };

  try {
    const pool = (await api('GET', '/stores?role=primary')).items[0];
    const templates: Record<string, string> = {};
    for (const size of ['small', 'large'] as const) {
      const reg = await api('POST', '/templates', {
        name: size,
        url: server.url(`/${size}.qcow2`),
        format: 'qcow2',
        zoneId: 'zone-1',
      });
      await waitJob(reg.job.id);
      templates[size] = reg.template.id;
    }
    // First volumes install each template on the pool.
    const small = await timedVolume(templates.small!, 'first-small');
    const cold = await coldCache();
    const first = { small, large: await timedVolume(templates.large!, 'first-large') };
    const cached: Record<string, number[]> = { small: [], large: [] };
    for (let r = 0; r < rounds; r++) {
      for (const size of ['small', 'large'] as const)
        cached[size]!.push(await timedVolume(templates[size]!, `${size}-${r}`));
    }
    const smallMs = median(cached.small!);
    const largeMs = median(cached.large!);
    const installMs = first.large - largeMs;

    // Baseline: cp of the same template file on the same disk as the pool.
    const cpTimes: number[] = [];
    for (let r = 0; r < rounds; r++) {
      const target = path.join(pool.details.mountPath, `cp-baseline-${r}.qcow2`);
      await coldCache();
      const t0 = performance.now();
      await exec('cp', [files.large, target]);
      cpTimes.push(performance.now() - t0);
      await rm(target);
    }
    const cpMs = median(cpTimes);
    const bytes = (await stat(files.large)).size;
    const figures = {
      smallMiB,
      largeMiB,
      cachedSmallMs: Math.round(smallMs),
      cachedLargeMs: Math.round(largeMs),
      cachedRatio: Number((largeMs / smallMs).toFixed(2)),
      templateFileMiB: Math.round(bytes / 2 ** 20),
      installMs: Math.round(installMs),
      cpMs: Math.round(cpMs),
      installMiBps: Math.round(bytes / 2 ** 20 / (installMs / 1000)),
      cpMiBps: Math.round(bytes / 2 ** 20 / (cpMs / 1000)),
      throughputRatio: Number((cpMs / installMs).toFixed(2)),
      coldCache: cold ? 1 : 0,
    };
    console.log(`volumes: median of ${rounds} rounds`);
    console.log(`  volume from a cached template, ${smallMiB} MiB template: ${figures.cachedSmallMs} ms`);
    console.log(`  volume from a cached template, ${largeMiB} MiB template: ${figures.cachedLargeMs} ms`);
    console.log(
      `  ratio large / small: ${figures.cachedRatio}  (target ≈ 1: a linked clone does not copy the template)`,
    );
    console.log(
      `  first install of the ${figures.templateFileMiB} MiB template file: ${figures.installMs} ms (${figures.installMiBps} MiB/s)`,
    );
    console.log(
      `  plain cp of the same file on the same disk: ${figures.cpMs} ms (${figures.cpMiBps} MiB/s), ` +
        (cold ? 'page cache dropped before each' : 'warm page cache'),
    );
    console.log(`  install throughput / cp throughput: ${figures.throughputRatio}  (target ≥ 0.8)`);
    return figures;
  } finally {
    await stack.stop();
    await server.close();
    await rm(dir, { recursive: true, force: true });
  }
}
