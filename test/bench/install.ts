/**
 * Template install data path, host side, on the embedded stack's image store:
 *
 *   npm run bench -- install [templateMiB=1024] [rounds=5]
 *
 * A qcow2 template (`templateMiB` virtual, half filled by `qemu-io`) is registered; then, alternating,
 * each in a process of its own with a cold page cache, and reading the template's own object through
 * the same S3 endpoint and presigned GET a host gets (the local authorizing proxy, signed as the
 * store-tasks function signs it):
 *
 * - Strata: the nfs `fetchImage` host operation (ranged GETs pinned to the first answer's ETag,
 *   sha256 in order as the ranges land, header inspection, rename) into a share directory;
 * - baseline: a plain parallel ranged download of the same object (8 × 16 MiB GETs, positional
 *   writes, fsync), nothing hashed or inspected.
 *
 * Times are measured inside each process (its start-up excluded). The end-to-end install, with the
 * job, the host command's own process and the clone, is `npm run bench -- volumes`.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { GetObjectCommand, ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { localS3ClientConfig } from '../../infra/local/s3-emulator';
import { startImageServer } from '../support/image-server';
import { median, runInstallChild, startBenchStack } from './harness';

const exec = promisify(execFile);

async function coldCache(): Promise<boolean> {
  try {
    await exec('sync');
    await writeFile('/proc/sys/vm/drop_caches', '3');
    return true;
  } catch {
    return false;
  }
}

async function sha256Of(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

export async function benchInstall(templateMiB = 1024, rounds = 5): Promise<Record<string, number>> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'strata-bench-install-'));
  const template = path.join(dir, 'template.qcow2');
  await exec('qemu-img', ['create', '-f', 'qcow2', template, `${templateMiB}M`]);
  await exec('qemu-io', ['-c', `write -P 0x3c 0 ${Math.floor(templateMiB / 2)}M`, template]);
  const bytes = (await stat(template)).size;
  const sha256 = await sha256Of(template);
  const server = await startImageServer();
  server.serve('/template.qcow2', { kind: 'file', path: template });
  const { stack, api, waitJob } = await startBenchStack(dir, { fetchAllowlist: '127.0.0.1', pollMs: 50 });
  const share = path.join(dir, 'share');
  await mkdir(share, { recursive: true });
  try {
    const reg = await api('POST', '/templates', {
      name: 'bench',
      url: server.url('/template.qcow2'),
      format: 'qcow2',
      zoneId: 'zone-1',
    });
    await waitJob(reg.job.id);
    const listing = new S3Client(localS3ClientConfig(stack.endpoints.s3));
    const objects = await listing.send(
      new ListObjectsV2Command({ Bucket: stack.imageBucket, Prefix: 'images/templates/' }),
    );
    listing.destroy();
    const key = objects.Contents?.find((o) => o.Key?.includes(reg.template.id))?.Key;
    if (!key) throw new Error('the template has no object in the image bucket');
    const signer = new S3Client({
      ...localS3ClientConfig(stack.endpoints.s3Proxy),
      credentials: stack.credentialsFor('StoreTasksRole'),
    });
    const url = await getSignedUrl(signer, new GetObjectCommand({ Bucket: stack.imageBucket, Key: key }), {
      expiresIn: 3600,
    });
    signer.destroy();
    const side = async (mode: 'ranged' | 'fetchImage') => {
      await rm(path.join(share, 'templates'), { recursive: true, force: true });
      await rm(path.join(share, 'ranged-baseline.qcow2'), { force: true });
      await coldCache();
      const { ms, maxRssMiB } = await runInstallChild([mode, url, share, String(bytes), sha256]);
      if (mode === 'fetchImage') rss.push(maxRssMiB);
      return ms;
    };
    const rss: number[] = [];
    const strata: number[] = [];
    const baseline: number[] = [];
    for (let r = 0; r < rounds; r++) {
      // Alternating, and each side first every other round.
      if (r % 2 === 0) {
        strata.push(await side('fetchImage'));
        baseline.push(await side('ranged'));
      } else {
        baseline.push(await side('ranged'));
        strata.push(await side('fetchImage'));
      }
    }
    const mib = bytes / 2 ** 20;
    const figures = {
      templateFileMiB: Math.round(mib),
      fetchImageMs: Math.round(median(strata)),
      fetchImageMiBps: Math.round(mib / (median(strata) / 1000)),
      rangedMs: Math.round(median(baseline)),
      rangedMiBps: Math.round(mib / (median(baseline) / 1000)),
      ratio: Number((median(baseline) / median(strata)).toFixed(2)),
      fetchImageMaxRssMiB: Math.max(...rss),
    };
    console.log(
      `install (host side): median of ${rounds} alternating rounds, ${figures.templateFileMiB} MiB file`,
    );
    console.log(
      `  fetchImage: ${strata.join(', ')} ms → ${figures.fetchImageMs} ms (${figures.fetchImageMiBps} MiB/s)`,
    );
    console.log(
      `  plain ranged download: ${baseline.join(', ')} ms → ${figures.rangedMs} ms (${figures.rangedMiBps} MiB/s)`,
    );
    console.log(`  fetchImage throughput / ranged download throughput: ${figures.ratio}  (target ≥ 0.9)`);
    console.log(
      `  fetchImage process peak RSS: ${figures.fetchImageMaxRssMiB} MiB (target ≤ 256, flat in size)`,
    );
    return figures;
  } finally {
    await stack.stop();
    await server.close();
    await rm(dir, { recursive: true, force: true });
  }
}
