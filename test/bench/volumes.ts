/**
 * Volume benchmarks on the embedded stack (real qcow2 templates, real qemu-img on the nfs pool):
 *
 *   npm run bench -- volumes [smallMiB=64] [largeMiB=4096] [rounds=3] [largeDataMiB=512]
 *
 * Two qcow2 templates made by qemu-img and filled by qemu-io: the small one half full, the large
 * one (4 GiB virtual by default, sparse) with `largeDataMiB` of data.
 *
 * 1. Volume from a cached template: POST /volumes until the job succeeds, for a small and a large
 *    template already installed on the pool. A linked clone must not grow with the template's
 *    size: the ratio large / small should stay near 1.
 * 2. First install of a template on a pool (whatever the volume-create flow does to bring the
 *    template onto the pool), measured as a first large volume's time minus a cached clone's
 *    time, once per round (each round registers the large file again as a new template, so each
 *    first volume installs one), versus three baselines on the same disk: a plain parallel ranged
 *    download of the same image-store object through the endpoint and kind of presigned GET a host
 *    gets (the local authorizing S3 proxy, signed as the store-tasks role; 8 × 16 MiB ranges in
 *    flight, positional writes, fsync, in a process of its own: test/bench/install-child.ts
 *    `ranged`), the same download straight from the S3 emulator (8 MiB ranges, 4 in flight, in
 *    the bench's process; what the proxy costs is the ratio of the two), and a plain `cp` of the
 *    template file. `installVsVerifiedDownload` compares with the proxied download followed by
 *    the file hashed in order on a worker thread as its ranges land: a verified download and nothing
 *    else. `installCeiling` (the plain download over the verified one, throughput) is the most
 *    `installVsPlainDownload` can be here while every byte is proven; the plain download's CPU use
 *    (cores busy, /proc/stat) shows how little the machine has left for the hash.
 *    During the install the host commands are counted (the local SSM's `onSend` hook) and their
 *    processes' memory sampled (harness `startFlowProbe`).
 *
 * The last line printed is `{"bench":"volumes","figures":{"installVsPlainDownload":…,
 * "installVsCp":…,"cloneLargeOverSmall":…,…}}`: install and baselines as throughput ratios
 * (higher is better), the clone as a time ratio (≈ 1).
 */
import { execFile } from 'node:child_process';
import { mkdtemp, open, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { GetObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { forEachLimit } from '../../functions/core/pool';
import { localS3ClientConfig } from '../../infra/local/s3-emulator';
import { startImageServer } from '../support/image-server';
import {
  cpuMeter,
  fig,
  median,
  printFigures,
  runInstallChild,
  startBenchStack,
  startFlowProbe,
} from './harness';

const exec = promisify(execFile);
const MiB = 2 ** 20;
/** The plain download's range size and concurrency. */
const RANGE = 8 * MiB;
const IN_FLIGHT = 4;

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

/** A qcow2 template of `mib` virtual MiB whose first `dataMiB` hold data (a pattern written by qemu-io). */
async function makeTemplate(file: string, mib: number, dataMiB: number): Promise<void> {
  await exec('qemu-img', ['create', '-f', 'qcow2', file, `${mib}M`]);
  await exec('qemu-io', ['-c', `write -P 0x3c 0 ${dataMiB}M`, file]);
}

/** GETs `key` in 8 MiB ranges, 4 in flight, writing each at its offset into `target`. */
async function plainRangedDownload(
  s3: S3Client,
  bucket: string,
  key: string,
  bytes: number,
  target: string,
): Promise<void> {
  const ranges = Array.from({ length: Math.ceil(bytes / RANGE) }, (_, i) => i * RANGE);
  const out = await open(target, 'w');
  try {
    await forEachLimit(ranges, IN_FLIGHT, async (start) => {
      const end = Math.min(start + RANGE, bytes) - 1;
      const url = await getSignedUrl(s3, new GetObjectCommand({ Bucket: bucket, Key: key }), {
        expiresIn: 3600,
      });
      const res = await fetch(url, { headers: { range: `bytes=${start}-${end}` } });
      if (res.status !== 206 && res.status !== 200)
        throw new Error(`plain GET ${key} at ${start}: ${res.status}`);
      const body = Buffer.from(await res.arrayBuffer());
      if (body.byteLength !== end - start + 1) {
        throw new Error(`plain GET ${start}: ${body.byteLength} bytes for a ${end - start + 1}-byte range`);
      }
      await out.write(body, 0, body.byteLength, start);
    });
  } finally {
    await out.close();
  }
}

export async function benchVolumes(
  smallMiB = 64,
  largeMiB = 4096,
  rounds = 3,
  largeDataMiB = 512,
): Promise<Record<string, number | null>> {
  if (largeDataMiB > largeMiB || largeDataMiB <= 0) throw new Error('largeDataMiB must be in (0, largeMiB]');
  const dir = await mkdtemp(path.join(os.tmpdir(), 'strata-bench-volumes-'));
  const files = { small: path.join(dir, 'small.qcow2'), large: path.join(dir, 'large.qcow2') };
  await makeTemplate(files.small, smallMiB, Math.floor(smallMiB / 2));
  await makeTemplate(files.large, largeMiB, largeDataMiB);
  const server = await startImageServer();
  server.serve('/small.qcow2', { kind: 'file', path: files.small });
  server.serve('/large.qcow2', { kind: 'file', path: files.large });
  const { stack, api, waitJob } = await startBenchStack(dir, { fetchAllowlist: '127.0.0.1', pollMs: 50 });
  const s3 = new S3Client(localS3ClientConfig(stack.endpoints.s3));
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
    const installProbe = startFlowProbe(stack);
    const first = { small, large: await timedVolume(templates.large!, 'first-large') };
    const install = installProbe.stop();
    const cached: Record<string, number[]> = { small: [], large: [] };
    let cloneCommands: string[] = [];
    for (let r = 0; r < rounds; r++) {
      for (const size of ['small', 'large'] as const) {
        const probe = startFlowProbe(stack);
        cached[size]!.push(await timedVolume(templates[size]!, `${size}-${r}`));
        cloneCommands = probe.stop().commands;
      }
    }
    const smallMs = median(cached.small!);
    const largeMs = median(cached.large!);
    const installs = [first.large - largeMs];
    for (let r = 1; r < rounds; r++) {
      const reg = await api('POST', '/templates', {
        name: `large-again-${r}`,
        url: server.url('/large.qcow2'),
        format: 'qcow2',
        zoneId: 'zone-1',
      });
      await waitJob(reg.job.id);
      await coldCache();
      installs.push((await timedVolume(reg.template.id, `first-large-again-${r}`)) - largeMs);
    }
    const installMs = median(installs);

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

    // Baseline: a plain parallel ranged download of the template's image-store object onto the
    // pool's disk.
    const imageStore = (await api('GET', '/stores?role=image')).items[0];
    const template = await api('GET', `/templates/${templates.large}`);
    const copy = (template.copies as Array<{ storeId: string; path?: string }>).find(
      (c) => c.storeId === imageStore.id,
    );
    if (!copy?.path)
      throw new Error(`no image-store copy of the large template: ${JSON.stringify(template)}`);
    // An s3 image store keys its objects `<prefix><path>`.
    const objectKey = `${imageStore.details.prefix ?? ''}${copy.path}`;
    const downloadTimes: number[] = [];
    for (let r = 0; r < rounds; r++) {
      const target = path.join(pool.details.mountPath, `download-baseline-${r}.qcow2`);
      await coldCache();
      const t0 = performance.now();
      await plainRangedDownload(s3, imageStore.details.bucket, objectKey, bytes, target);
      downloadTimes.push(performance.now() - t0);
      await rm(target);
    }
    const downloadMs = median(downloadTimes);

    // Baseline: the same object as a host reads it, through the S3 proxy, in a process of its own.
    const signer = new S3Client({
      ...localS3ClientConfig(stack.endpoints.s3Proxy),
      credentials: stack.credentialsFor('StoreTasksRole'),
    });
    const proxiedUrl = await getSignedUrl(
      signer,
      new GetObjectCommand({ Bucket: imageStore.details.bucket, Key: objectKey }),
      { expiresIn: 3600 },
    );
    signer.destroy();
    const proxiedTimes: number[] = [];
    const hashTimes: number[] = [];
    const busy: number[] = [];
    for (let r = 0; r < rounds; r++) {
      await coldCache();
      const meter = cpuMeter();
      const child = ['ranged', proxiedUrl, pool.details.mountPath, String(bytes), '-'];
      proxiedTimes.push((await runInstallChild(child)).ms);
      busy.push(meter.stop());
      // What proving the bytes adds: the same download with the file hashed in order on a worker
      // thread as its ranges land (test/bench/install-child.ts ranged-sha256).
      await rm(path.join(pool.details.mountPath, 'ranged-baseline.qcow2'), { force: true });
      await coldCache();
      hashTimes.push((await runInstallChild(['ranged-sha256', ...child.slice(1)])).ms);
      await rm(path.join(pool.details.mountPath, 'ranged-baseline.qcow2'), { force: true });
    }
    const proxiedMs = median(proxiedTimes);
    const verifiedMs = median(hashTimes);
    const cores = os.cpus().length;
    const figures = {
      smallMiB,
      largeMiB,
      cachedSmallMs: Math.round(smallMs),
      cachedLargeMs: Math.round(largeMs),
      cachedRatio: Number((largeMs / smallMs).toFixed(2)),
      templateFileMiB: Math.round(bytes / 2 ** 20),
      installMs: Math.round(installMs),
      installTimes: installs.map(Math.round).join(' '),
      cpMs: Math.round(cpMs),
      installMiBps: Math.round(bytes / 2 ** 20 / (installMs / 1000)),
      cpMiBps: Math.round(bytes / 2 ** 20 / (cpMs / 1000)),
      throughputRatio: Number((cpMs / installMs).toFixed(2)),
      downloadMs: Math.round(downloadMs),
      downloadMiBps: Math.round(bytes / 2 ** 20 / (downloadMs / 1000)),
      downloadRatio: Number((downloadMs / installMs).toFixed(2)),
      proxiedDownloadMs: Math.round(proxiedMs),
      proxiedDownloadMiBps: Math.round(bytes / 2 ** 20 / (proxiedMs / 1000)),
      proxiedRatio: Number((proxiedMs / installMs).toFixed(2)),
      proxyCeiling: Number((downloadMs / proxiedMs).toFixed(2)),
      verifiedDownloadMs: Math.round(verifiedMs),
      verifiedRatio: Number((verifiedMs / installMs).toFixed(2)),
      coresBusyDownload: median(busy),
      cores,
      installCeiling: Number((proxiedMs / verifiedMs).toFixed(2)),
      installCommands: install.commands.length,
      cloneCommands: cloneCommands.length,
      installRuntimePeakRssMiB: install.runtimePeakRssMiB,
      installGroupPeakRssMiB: install.groupPeakRssMiB,
      coldCache: cold ? 1 : 0,
    };
    console.log(`volumes: median of ${rounds} rounds`);
    console.log(`  volume from a cached template, ${smallMiB} MiB template: ${figures.cachedSmallMs} ms`);
    console.log(`  volume from a cached template, ${largeMiB} MiB template: ${figures.cachedLargeMs} ms`);
    console.log(
      `  ratio large / small: ${figures.cachedRatio}  (target ≈ 1: a linked clone does not copy the template)`,
    );
    console.log(
      `  first install of the ${figures.templateFileMiB} MiB template file: ${figures.installTimes} ms → ${figures.installMs} ms (${figures.installMiBps} MiB/s)`,
    );
    console.log(
      `  plain cp of the same file on the same disk: ${figures.cpMs} ms (${figures.cpMiBps} MiB/s), ` +
        (cold ? 'page cache dropped before each' : 'warm page cache'),
    );
    console.log(
      `  plain ranged download of the same object straight from the S3 emulator (8 MiB ranges, 4 in flight): ${figures.downloadMs} ms (${figures.downloadMiBps} MiB/s)`,
    );
    console.log(
      `  plain ranged download through the S3 proxy, as a host gets it (8 × 16 MiB in flight, own process): ${figures.proxiedDownloadMs} ms (${figures.proxiedDownloadMiBps} MiB/s); direct / proxied throughput ${figures.proxyCeiling}`,
    );
    console.log(
      `  the same with the file hashed on a worker thread as it lands (a verified download, nothing else): ${figures.verifiedDownloadMs} ms; the plain download kept ${figures.coresBusyDownload} of ${figures.cores} cores busy`,
    );
    console.log(
      `  so an install that proves its bytes reaches at most ${figures.installCeiling} of the plain download here (installCeiling)`,
    );
    console.log(
      `  install throughput / plain download throughput: ${figures.proxiedRatio} through the proxy (target ≥ 0.9), ${figures.downloadRatio} against the direct download`,
    );
    console.log(`  install throughput / cp throughput: ${figures.throughputRatio}`);
    console.log(
      `  host commands: first large volume (install + clone) ${install.commands.length} [${install.commands.join(', ')}], ` +
        `cached clone ${cloneCommands.length} [${cloneCommands.join(', ')}]`,
    );
    console.log(
      `  host memory during the install: runtime peak ${install.runtimePeakRssMiB} MiB (VmHWM), ` +
        `with its qemu children ${install.groupPeakRssMiB} MiB (sum of VmRSS), ${install.runtimeProcesses} runtime processes, ${install.samples} samples`,
    );
    const result = {
      installVsPlainDownload: fig(proxiedMs / installMs, 2),
      installVsDirectDownload: fig(downloadMs / installMs, 2),
      installVsVerifiedDownload: fig(verifiedMs / installMs, 2),
      installCeiling: fig(proxiedMs / verifiedMs, 2),
      proxyDownloadCeilingInstall: fig(downloadMs / proxiedMs, 2),
      installVsCp: fig(cpMs / installMs, 2),
      cloneLargeOverSmall: fig(largeMs / smallMs, 2),
      // The first volume's commands beyond what a cached clone sends: the install's own.
      hostCommandsPerInstall: install.commands.length - cloneCommands.length,
      hostCommandsInstallAndClone: install.commands.length,
      hostPeakRssMiB: install.runtimePeakRssMiB,
      hostGroupPeakRssMiB: install.groupPeakRssMiB,
    };
    printFigures('volumes', result, { details: { ...figures } });
    return result;
  } finally {
    s3.destroy();
    await stack.stop();
    await server.close();
    await rm(dir, { recursive: true, force: true });
  }
}
