/**
 * Volume benchmarks on the embedded stack (real qcow2 templates, real qemu-img on the nfs pool):
 *
 *   npm run bench -- volumes [smallMiB=64] [largeMiB=1024] [rounds=3]
 *
 * 1. Volume from a cached template: POST /volumes until the job succeeds, for a small and a large
 *    template already installed on the pool. A linked clone must not grow with the template's
 *    size: the ratio large / small should stay near 1.
 * 2. First install of a template on a pool (download from the image store through a presigned URL:
 *    parallel ranged GETs, sha256 in order, header inspection, rename), versus a plain parallel
 *    ranged download of the same object through the same S3 endpoint (presigned GETs, 8 in flight,
 *    positional writes into a file on the pool's disk, no hashing; in a process of its own, timed
 *    inside it: install-child.ts), and a plain `cp` of the same
 *    file on the same disk. The install is measured as the first volume's time minus a cached
 *    clone's time.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { GetObjectCommand, ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { localS3ClientConfig } from '../../infra/local/s3-emulator';
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
    const bytes = (await stat(files.large)).size;
    // The baseline's presigned GETs: through the same S3 endpoint the host uses (the local
    // authorizing proxy), signed as the store-tasks function signs the host's.
    const listing = new S3Client(localS3ClientConfig(stack.endpoints.s3));
    const signer = new S3Client({
      ...localS3ClientConfig(stack.endpoints.s3Proxy),
      credentials: stack.credentialsFor('StoreTasksRole'),
    });
    const objectUrl = async (templateId: string) => {
      const objects = await listing.send(
        new ListObjectsV2Command({ Bucket: stack.imageBucket, Prefix: 'images/templates/' }),
      );
      const key = objects.Contents?.find((o) => o.Key?.includes(templateId))?.Key;
      if (!key) throw new Error(`template ${templateId} has no object in the image bucket`);
      return getSignedUrl(signer, new GetObjectCommand({ Bucket: stack.imageBucket, Key: key }), {
        expiresIn: 3600,
      });
    };

    // First volumes install each template on the pool.
    await timedVolume(templates.small!, 'first-small');
    const cold = await coldCache();
    const firsts = [await timedVolume(templates.large!, 'first-large')];
    const cached: Record<string, number[]> = { small: [], large: [] };
    for (let r = 0; r < rounds; r++) {
      for (const size of ['small', 'large'] as const)
        cached[size]!.push(await timedVolume(templates[size]!, `${size}-${r}`));
    }
    const smallMs = median(cached.small!);
    const largeMs = median(cached.large!);

    // More first installs, each of a new template with the same bytes, alternating with the
    // baseline: a plain parallel ranged download of the same object (8 × 16 MiB GETs, positional
    // writes into a file on the pool's disk, nothing hashed or inspected); cold page cache for both.
    const rangedTimes: number[] = [];
    const urls = [await objectUrl(templates.large!)];
    for (let r = 1; r < rounds; r++) {
      const reg = await api('POST', '/templates', {
        name: `large-${r}`,
        url: server.url('/large.qcow2'),
        format: 'qcow2',
        zoneId: 'zone-1',
      });
      await waitJob(reg.job.id);
      urls.push(await objectUrl(reg.template.id));
      await coldCache();
      firsts.push(await timedVolume(reg.template.id, `first-large-${r}`));
    }
    for (let r = 0; r < rounds; r++) {
      await coldCache();
      // In a process of its own, as a host's: not on the event loop of the stack's S3 proxy.
      const { stdout } = await exec(
        process.execPath,
        [
          '--import',
          'tsx',
          path.join(__dirname, 'install-child.ts'),
          'ranged',
          urls[r]!,
          pool.details.mountPath,
          String(bytes),
          '-',
        ],
        { env: { ...process.env, AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true' } },
      );
      rangedTimes.push((JSON.parse(stdout.trim().split('\n').pop() ?? '{}') as { ms: number }).ms);
      await rm(path.join(pool.details.mountPath, 'ranged-baseline.qcow2'), { force: true });
    }
    listing.destroy();
    signer.destroy();
    const installMs = median(firsts) - largeMs;
    const rangedMs = median(rangedTimes);

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
      rangedMs: Math.round(rangedMs),
      rangedMiBps: Math.round(bytes / 2 ** 20 / (rangedMs / 1000)),
      rangedRatio: Number((rangedMs / installMs).toFixed(2)),
      coldCache: cold ? 1 : 0,
    };
    console.log(`volumes: median of ${rounds} rounds`);
    console.log(
      `  first volumes of the large template: ${firsts.map(Math.round).join(', ')} ms; ranged baselines: ${rangedTimes.map(Math.round).join(', ')} ms`,
    );
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
    console.log(
      `  plain parallel ranged download of the same object (8 × 16 MiB GETs): ${figures.rangedMs} ms (${figures.rangedMiBps} MiB/s)`,
    );
    console.log(`  install throughput / ranged download throughput: ${figures.rangedRatio}  (target ≥ 0.9)`);
    return figures;
  } finally {
    await stack.stop();
    await server.close();
    await rm(dir, { recursive: true, force: true });
  }
}
