/**
 * What a host runtime reports about itself: its build and the tools host operations need. Run by
 * the `runtime.probe` operation (the host-probe flow) and by the install document's checks.
 */
import { execFile } from 'node:child_process';
import os from 'node:os';
import { HOST_BUILD } from './host-build.js';

/** One prerequisite: present or not, its version, and what is wrong when it is not usable. */
export interface Prerequisite {
  ok: boolean;
  version?: string;
  problem?: string;
}

/** The probe's result, recorded on the Host row as `runtime`. */
export interface HostRuntimeReport {
  build: string;
  platform: string;
  arch: string;
  prerequisites: { node: Prerequisite; qemuImg: Prerequisite; qemuNbd: Prerequisite };
  /** True when every prerequisite is usable. */
  ready: boolean;
}

/** The oldest Node.js major the host runtime runs on. */
export const MIN_NODE_MAJOR = 20;

function firstLine(binary: string, args: string[]): Promise<Prerequisite> {
  return new Promise((resolve) => {
    execFile(binary, args, { timeout: 10_000 }, (error, stdout) => {
      if (error) {
        const missing = (error as NodeJS.ErrnoException).code === 'ENOENT';
        resolve({
          ok: false,
          problem: missing ? `${binary} is not on PATH` : `${binary} failed: ${error.message}`,
        });
        return;
      }
      const version = /\d+\.\d+(\.\d+)?/.exec(stdout)?.[0];
      resolve({ ok: true, ...(version ? { version } : {}) });
    });
  });
}

/** Checks this host: Node.js ≥ 20 (this process), qemu-img and qemu-nbd on PATH. */
export async function probeHost(build: string = HOST_BUILD): Promise<HostRuntimeReport> {
  const major = Number(process.versions.node.split('.')[0]);
  const node: Prerequisite =
    major >= MIN_NODE_MAJOR
      ? { ok: true, version: process.versions.node }
      : { ok: false, version: process.versions.node, problem: `Node.js ${MIN_NODE_MAJOR}+ is required` };
  const [qemuImg, qemuNbd] = await Promise.all([
    firstLine('qemu-img', ['--version']),
    firstLine('qemu-nbd', ['--version']),
  ]);
  const prerequisites = { node, qemuImg, qemuNbd };
  return {
    build,
    platform: os.platform(),
    arch: os.arch(),
    prerequisites,
    ready: Object.values(prerequisites).every((p) => p.ok),
  };
}
