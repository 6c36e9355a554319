/**
 * What every benchmark needs: an embedded stack on the shared emulators' machine, a JSON API
 * caller, a job waiter that polls gently (the poller shares the machine with the flow it measures),
 * random input files, the median of rounds, a probe of one flow's host commands (how many, and
 * their peak memory) and the one JSON line every bench ends with.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readdirSync, readFileSync, realpathSync } from 'node:fs';
import { open } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { decodeHostRequest } from '../../drivers/sdk/host-protocol';
import { type EmbeddedStack, startEmbeddedStack } from '../../infra/local/embedded-stack';

export interface BenchStack {
  stack: EmbeddedStack;
  /** Calls the API and returns its JSON body (undefined for a 204). */
  api: (method: string, route: string, body?: unknown) => Promise<any>;
  /** Polls a job until it succeeds (returned) or fails (thrown). */
  waitJob: (id: string) => Promise<any>;
}

/** Starts the embedded stack under `dir`/stack, with the reconciler off. */
export async function startBenchStack(
  dir: string,
  options: { fetchAllowlist?: string; pollMs?: number } = {},
): Promise<BenchStack> {
  const stack = await startEmbeddedStack({
    dataDir: path.join(dir, 'stack'),
    port: 0,
    reconcileEverySeconds: 0,
    ...(options.fetchAllowlist ? { fetchAllowlist: options.fetchAllowlist } : {}),
  });
  const api = async (method: string, route: string, body?: unknown) => {
    const res = await fetch(`${stack.url}${route}`, {
      method,
      headers: { 'content-type': 'application/json', authorization: `Bearer ${stack.apiTokens.admin}` },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return res.status === 204 ? undefined : ((await res.json()) as any);
  };
  const pollMs = options.pollMs ?? 100;
  const waitJob = async (id: string) => {
    for (;;) {
      const job = await api('GET', `/jobs/${id}`);
      if (job.state === 'succeeded') return job;
      if (job.state === 'failed') throw new Error(`job ${id} failed: ${job.error.message}`);
      await new Promise((r) => setTimeout(r, pollMs));
    }
  };
  return { stack, api, waitJob };
}

/** Writes `bytes` random bytes to `file`, 4 MiB at a time. */
export async function writeRandomFile(file: string, bytes: number): Promise<void> {
  const fh = await open(file, 'w');
  const piece = 4 * 2 ** 20;
  for (let written = 0; written < bytes; written += piece) {
    await fh.write(randomBytes(Math.min(piece, bytes - written)));
  }
  await fh.close();
}

/** The median; with an even count, the mean of the middle two. */
export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** Rounds to `digits` decimals; a missing or non-finite figure becomes null (JSON has no NaN). */
export function fig(x: number | undefined, digits = 0): number | null {
  if (x === undefined || !Number.isFinite(x)) return null;
  return Number(x.toFixed(digits));
}

/**
 * Prints a bench's last line: one JSON object `{bench, figures, …}`. Figures are ratios and
 * measurements; a figure that could not be measured is null and named in `notMeasured` with why.
 */
export function printFigures(
  bench: string,
  figures: Record<string, number | null>,
  extra: { notMeasured?: Record<string, string>; details?: Record<string, unknown> } = {},
): void {
  const notMeasured =
    extra.notMeasured && Object.keys(extra.notMeasured).length ? extra.notMeasured : undefined;
  console.log(
    JSON.stringify({
      bench,
      figures,
      ...(notMeasured ? { notMeasured } : {}),
      ...(extra.details ? { details: extra.details } : {}),
    }),
  );
}

/** What the host commands of one flow cost: how many the stack sent, and the memory they used. */
export interface FlowProbe {
  /** The host operation of each SSM command sent, in order. */
  commands: string[];
  /** Peak resident memory of one host-runtime process (max VmHWM seen), MiB; 0 if none was seen. */
  runtimePeakRssMiB: number;
  /**
   * Peak of the sum of VmRSS over a command's whole process group (the host runtime plus the
   * qemu-img / qemu-nbd children it started), sampled; MiB.
   */
  groupPeakRssMiB: number;
  /** Host-runtime processes seen by the sampler. */
  runtimeProcesses: number;
  /** Samples taken. */
  samples: number;
}

const RSS_SAMPLE_MS = 50;

function readProc(pid: string, file: string): string | undefined {
  try {
    return readFileSync(`/proc/${pid}/${file}`, 'utf8');
  } catch {
    return undefined; // gone, or not ours to read
  }
}

function statusKiB(status: string, field: string): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status);
  return m ? Number(m[1]) : 0;
}

/**
 * Starts watching the stack's host commands: counts SendCommands through the local SSM's `onSend`
 * hook and samples, every 50 ms, /proc/<pid>/status of the host-runtime processes of this stack's
 * hosts (`strata-host.js` under one of their roots; the local agent starts each command as its own
 * process group) and of every process in their groups. `stop()` ends it and returns the figures.
 * Linux only; elsewhere memory figures stay 0.
 */
export function startFlowProbe(stack: EmbeddedStack): { stop: () => FlowProbe } {
  const commands: string[] = [];
  const removeListener = stack.ssm.onSend((parameters) => {
    let operation = 'command';
    try {
      if (parameters.Request) operation = decodeHostRequest(parameters.Request).operation;
    } catch {
      // not a host request
    }
    commands.push(operation);
  });
  const roots = stack.hosts.flatMap((h) => {
    try {
      return [h.root, realpathSync(h.root)];
    } catch {
      return [h.root];
    }
  });
  const underRoot = (cmdline: string) => roots.some((r) => cmdline.includes(r));
  const isRuntime = (cmdline: string) => cmdline.includes('strata-host.js') && underRoot(cmdline);
  /**
   * pid → its process group and whether it is a host runtime of this stack. A command's process
   * starts as `/bin/sh <root>/…/_script.sh` and execs into the runtime keeping its pid, so a group
   * leader whose command line names a host root is looked at again until it is the runtime.
   */
  const known = new Map<string, { pgrp: string; runtime: boolean; candidate: boolean }>();
  const runtimes = new Set<string>();
  let runtimePeakKiB = 0;
  let groupPeakKiB = 0;
  let samples = 0;
  const sample = () => {
    let pids: string[];
    try {
      pids = readdirSync('/proc').filter((p) => /^\d+$/.test(p));
    } catch {
      return;
    }
    const present = new Set(pids);
    for (const pid of known.keys()) if (!present.has(pid)) known.delete(pid);
    const groups = new Map<string, number>();
    const members: Array<{ pid: string; pgrp: string; runtime: boolean }> = [];
    for (const pid of pids) {
      let entry = known.get(pid);
      if (!entry) {
        const stat = readProc(pid, 'stat');
        if (!stat) continue;
        // pid (comm) state ppid pgrp …; comm may hold spaces, so split after its closing paren.
        const pgrp = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[2] ?? '';
        const cmdline = (readProc(pid, 'cmdline') ?? '').replaceAll('\0', ' ');
        const runtime = isRuntime(cmdline);
        entry = { pgrp, runtime, candidate: !runtime && pgrp === pid && underRoot(cmdline) };
        known.set(pid, entry);
      } else if (entry.candidate) {
        entry.runtime = isRuntime((readProc(pid, 'cmdline') ?? '').replaceAll('\0', ' '));
        entry.candidate = !entry.runtime;
      }
      if (entry.runtime) runtimes.add(pid);
      members.push({ pid, ...entry });
    }
    const leaders = new Set(members.filter((m) => m.runtime).map((m) => m.pgrp));
    for (const m of members) {
      if (!leaders.has(m.pgrp)) continue;
      const status = readProc(m.pid, 'status');
      if (!status) continue;
      if (m.runtime) runtimePeakKiB = Math.max(runtimePeakKiB, statusKiB(status, 'VmHWM'));
      groups.set(m.pgrp, (groups.get(m.pgrp) ?? 0) + statusKiB(status, 'VmRSS'));
    }
    for (const kib of groups.values()) groupPeakKiB = Math.max(groupPeakKiB, kib);
    samples++;
  };
  const timer = process.platform === 'linux' ? setInterval(sample, RSS_SAMPLE_MS) : undefined;
  timer?.unref();
  return {
    stop: () => {
      if (timer) {
        clearInterval(timer);
        sample();
      }
      removeListener();
      return {
        commands,
        runtimePeakRssMiB: Math.round(runtimePeakKiB / 1024),
        groupPeakRssMiB: Math.round(groupPeakKiB / 1024),
        runtimeProcesses: runtimes.size,
        samples,
      };
    },
  };
}

/**
 * The machine's CPU use between `start()` and the returned `stop()`: busy CPU time over wall time,
 * in cores (2.0 = both cores of a 2-core machine busy throughout), from /proc/stat. Shows whether a
 * step is bound by CPU on this machine rather than by anything Strata waits on.
 */
export function cpuMeter(): { stop: () => number } {
  const read = () => {
    const [, ...fields] = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/);
    const n = fields.map(Number);
    const idle = (n[3] ?? 0) + (n[4] ?? 0);
    return { busy: n.reduce((a, b) => a + b, 0) - idle, at: performance.now() };
  };
  const first = read();
  const ticksPerSecond = 100;
  return {
    stop: () => {
      const last = read();
      return Number(((last.busy - first.busy) / ticksPerSecond / ((last.at - first.at) / 1000)).toFixed(2));
    },
  };
}

/**
 * Runs test/bench/install-child.ts with `args` in a process of its own (a side timed inside it,
 * away from the bench's own event loop) and answers the figures it prints last.
 */
export async function runInstallChild(args: string[]): Promise<{ ms: number; maxRssMiB: number }> {
  const { stdout } = await promisify(execFile)(
    process.execPath,
    ['--import', 'tsx', path.join(__dirname, 'install-child.ts'), ...args],
    { env: { ...process.env, AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true' } },
  );
  return JSON.parse(stdout.trim().split('\n').pop() ?? '{}') as { ms: number; maxRssMiB: number };
}
