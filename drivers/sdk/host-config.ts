/**
 * The host's own storage configuration, and the confinement it enforces.
 *
 * A store's `mountPath` comes from the control plane, i.e. from whoever may call `POST /stores`.
 * The host runtime runs as root, so it must not take that path on trust: a store at `/etc` would
 * make it write and delete files there. The host therefore reads, from a file on the host itself
 * (written by whoever installs the host, never by the API), the directories it may touch — its
 * storage roots — and refuses every mount path that is not one of them or under one. For an `nfs`
 * root it also proves, through `/proc/self/mountinfo`, that the mount path really is an NFS mount
 * (of the declared `server:export` when the request names one), so nothing is ever written into the
 * empty directory an unmounted share leaves behind.
 *
 * File (default `/etc/strata/host.json`, see docs/host-onboarding.md):
 *
 *   { "storageRoots": [{ "path": "/mnt/strata", "kind": "nfs" }], "maxListEntries": 100000 }
 *
 * The checks resolve real paths at the time of the call (see ./confine.ts for the same caveat about
 * a local user racing them); the roots are expected to be writable by root only.
 */
import { readFile, realpath, stat } from 'node:fs/promises';
import { dirname, posix } from 'node:path';
import { z } from 'zod';
import { isNotFound, isWithin } from './confine.js';
import { DriverError, DriverUnavailableError } from './errors.js';
import type { HostOperation, HostOperationContext, HostOperationSet } from './types.js';
import { AbsolutePathSchema } from './validation.js';

/** Where the host runtime looks for its configuration unless told otherwise. */
export const DEFAULT_HOST_CONFIG_PATH = '/etc/strata/host.json';
/** Where the kernel lists this process's mounts. */
export const DEFAULT_MOUNTINFO_PATH = '/proc/self/mountinfo';
/** Default cap on the entries one listing may visit. */
export const DEFAULT_MAX_LIST_ENTRIES = 100_000;
/** Default cap on how deep one listing may descend below the mount path. */
export const DEFAULT_MAX_LIST_DEPTH = 16;

/** Error codes of the confinement (stable on the wire, see ./errors.ts). */
export const HostStorageErrorCode = {
  /** The host has no valid configuration file: nothing touching storage runs. */
  HostNotConfigured: 'HostNotConfigured',
  /** The path is not inside any storage root of this host (or resolves outside it). */
  PathNotAllowed: 'PathNotAllowed',
  /** The path is in an nfs root but is not the NFS mount the store declares. */
  MountMismatch: 'MountMismatch',
  /** A listing met more entries, or deeper directories, than the host allows. */
  ListingTooLarge: 'ListingTooLarge',
} as const;

// Directories no storage root may be or contain: the host's own system. A root there
// would hand the control plane what the roots are meant to keep from it.
const SYSTEM_DIRS = [
  '/etc',
  '/root',
  '/usr',
  '/bin',
  '/sbin',
  '/lib',
  '/lib64',
  '/boot',
  '/proc',
  '/sys',
  '/dev',
];
// …and no root may lie inside these (a root in a home directory such as /root/project is fine).
const SYSTEM_TREES = SYSTEM_DIRS.filter((dir) => dir !== '/root');

function normalizeAbsolute(path: string): string {
  const normalized = posix.normalize(path);
  return normalized.length > 1 ? normalized.replace(/\/+$/, '') : normalized;
}

/**
 * One directory tree the host may store data in. `nfs`: each store's mount path (the root itself or
 * a directory under it) must be an NFS mount. `directory`: a local directory (the embedded stack's
 * stand-in for a share); confinement only, no mount check.
 *
 * @example
 * HostStorageRootSchema.parse({ path: '/mnt/strata', kind: 'nfs' });
 */
export const HostStorageRootSchema = z
  .object({
    path: AbsolutePathSchema.transform(normalizeAbsolute)
      .refine((p) => p !== '/', 'must not be /')
      .refine(
        (p) =>
          !SYSTEM_DIRS.some((dir) => isWithin(p, dir)) && !SYSTEM_TREES.some((tree) => isWithin(tree, p)),
        `must not be, hold or lie in a system directory (${SYSTEM_DIRS.join(', ')})`,
      ),
    kind: z.enum(['nfs', 'directory']),
  })
  .strict();
export type HostStorageRoot = z.output<typeof HostStorageRootSchema>;

/**
 * The host configuration file's schema. Unknown keys are refused so a typo fails loudly.
 *
 * @example
 * HostConfigSchema.parse({ storageRoots: [{ path: '/mnt/strata', kind: 'nfs' }] });
 */
export const HostConfigSchema = z
  .object({
    storageRoots: z.array(HostStorageRootSchema).min(1).max(64),
    maxListEntries: z.number().int().positive().max(10_000_000).default(DEFAULT_MAX_LIST_ENTRIES),
    maxListDepth: z.number().int().positive().max(64).default(DEFAULT_MAX_LIST_DEPTH),
  })
  .strict();
export type HostConfig = z.output<typeof HostConfigSchema>;
export type HostConfigInput = z.input<typeof HostConfigSchema>;

/** What a storage check proved: the real path of the mount and the root it lies in. */
export interface ConfinedMount {
  realPath: string;
  root: HostStorageRoot;
}

/** The source an `nfs` mount must show in mountinfo (`server:export`). */
export interface ExpectedNfsSource {
  server: string;
  export: string;
}

/** Options of {@link HostStorage}. */
export interface HostStorageOptions {
  /** The mount table to read (tests give a fake one). Default `/proc/self/mountinfo`. */
  mountInfoPath?: string;
}

/**
 * The host's storage roots and the checks over them. Built from the host's configuration file
 * ({@link loadHostStorage}); without one, {@link HostStorage.unconfigured} refuses everything.
 *
 * @example
 * const storage = HostStorage.fromConfig({ storageRoots: [{ path: '/mnt/strata', kind: 'nfs' }] });
 * const { realPath } = await storage.confineMount('/mnt/strata/ds-1', {
 *   expected: { server: '10.0.0.5', export: '/srv/ds-1' },
 * });
 */
export class HostStorage {
  readonly #config: HostConfig | undefined;
  readonly #problem: string | undefined;
  readonly #mountInfoPath: string;

  private constructor(
    config: HostConfig | undefined,
    problem: string | undefined,
    options: HostStorageOptions,
  ) {
    this.#config = config;
    this.#problem = problem;
    this.#mountInfoPath = options.mountInfoPath ?? DEFAULT_MOUNTINFO_PATH;
  }

  /**
   * Storage from a configuration object (validated here; an invalid one throws).
   *
   * @example
   * HostStorage.fromConfig({ storageRoots: [{ path: '/srv/strata', kind: 'directory' }] });
   */
  static fromConfig(config: HostConfigInput, options: HostStorageOptions = {}): HostStorage {
    return new HostStorage(HostConfigSchema.parse(config), undefined, options);
  }

  /**
   * Storage that refuses every check, saying why (`problem`): what a host without a valid
   * configuration file gets.
   *
   * @example
   * HostStorage.unconfigured('/etc/strata/host.json does not exist');
   */
  static unconfigured(problem: string): HostStorage {
    return new HostStorage(undefined, problem, {});
  }

  /** The configuration, when there is a valid one. */
  get config(): HostConfig | undefined {
    return this.#config;
  }

  /** Caps on one listing (the defaults on a host without configuration, which lists nothing anyway). */
  get listLimits(): { maxEntries: number; maxDepth: number } {
    return {
      maxEntries: this.#config?.maxListEntries ?? DEFAULT_MAX_LIST_ENTRIES,
      maxDepth: this.#config?.maxListDepth ?? DEFAULT_MAX_LIST_DEPTH,
    };
  }

  /**
   * Proves `mountPath` may be used as a store's mount on this host, before anything touches it:
   * it is a storage root or lies under one, lexically and after resolving symlinks, and exists as
   * a directory; in an `nfs` root it is an NFS mount point (of `expected` when given). Throws a
   * {@link DriverError}: `HostNotConfigured`, `PathNotAllowed`, `MountMismatch` (not retryable), or
   * `Unavailable` (retryable: missing, or nothing mounted yet). `hostId` names the host in messages.
   *
   * @example
   * await storage.confineMount('/mnt/strata/ds-1', { hostId: 'host-1' });
   */
  async confineMount(
    mountPath: string,
    options: { expected?: ExpectedNfsSource; hostId?: string } = {},
  ): Promise<ConfinedMount> {
    const onHost = options.hostId ? `on host ${options.hostId}` : 'on this host';
    const config = this.#config;
    if (!config) {
      throw new DriverError(
        `${options.hostId ? `host ${options.hostId}` : 'this host'} has no valid storage configuration ` +
          `(${this.#problem}): it refuses every storage operation until one lists its storage roots ` +
          '(docs/host-onboarding.md)',
        { code: HostStorageErrorCode.HostNotConfigured, retryable: false },
      );
    }
    const notAllowed = (why: string) =>
      new DriverError(`mountPath ${mountPath.slice(0, 300)} ${why} ${onHost}: nothing was touched`, {
        code: HostStorageErrorCode.PathNotAllowed,
        retryable: false,
        context: { field: 'mountPath' },
      });
    if (!mountPath.startsWith('/') || normalizeAbsolute(mountPath) !== mountPath.replace(/(.)\/+$/, '$1')) {
      throw notAllowed('is not an absolute path without ., .. or empty segments');
    }
    const lexical = normalizeAbsolute(mountPath);
    const root = config.storageRoots
      .filter((r) => isWithin(r.path, lexical))
      // The most specific root decides (an nfs root inside a directory root is still nfs).
      .sort((a, b) => b.path.length - a.path.length)[0];
    if (!root) {
      const roots = config.storageRoots.map((r) => r.path).join(', ');
      throw notAllowed(`is outside the storage roots (${roots})`);
    }
    let realRoot: string;
    try {
      realRoot = await realpath(root.path);
    } catch (error) {
      if (!isNotFound(error)) throw error;
      throw new DriverUnavailableError(`storage root ${root.path} does not exist ${onHost}`, {
        cause: error,
      });
    }
    let realMount: string;
    try {
      realMount = await realpath(lexical);
    } catch (error) {
      if (!isNotFound(error)) throw error;
      // Where the path stops existing, what does exist must still be inside the root: a symlink
      // on the way out must not be hidden behind a "does not exist".
      const existing = await deepestExisting(dirname(lexical));
      if (existing === undefined || !isWithin(realRoot, existing)) {
        throw notAllowed(`leaves its storage root ${root.path} through a symbolic link`);
      }
      throw new DriverUnavailableError(`${lexical} does not exist ${onHost}`, { cause: error });
    }
    if (!isWithin(realRoot, realMount)) {
      throw notAllowed(`resolves to ${realMount.slice(0, 300)}, outside its storage root ${root.path},`);
    }
    const stats = await stat(realMount);
    if (!stats.isDirectory()) throw new DriverUnavailableError(`${lexical} is not a directory ${onHost}`);
    if (root.kind === 'nfs') await this.#assertNfsMount(lexical, realMount, onHost, options.expected);
    return { realPath: realMount, root };
  }

  async #assertNfsMount(
    mountPath: string,
    realMount: string,
    onHost: string,
    expected: ExpectedNfsSource | undefined,
  ): Promise<void> {
    let table: string;
    try {
      table = await readFile(this.#mountInfoPath, 'utf8');
    } catch (error) {
      const what = `cannot read ${this.#mountInfoPath} ${onHost} to check ${mountPath} is mounted`;
      throw new DriverUnavailableError(what, { cause: error });
    }
    // The last entry for a mount point is the one on top, the one a path lookup reaches.
    const mount = parseMountInfo(table)
      .filter((m) => m.mountPoint === realMount)
      .at(-1);
    if (!mount) {
      throw new DriverUnavailableError(
        `${mountPath} is not a mount point ${onHost}: mount the share there first (nothing was written)`,
        { context: { field: 'mountPath' } },
      );
    }
    const mismatch = (why: string) =>
      new DriverError(`${mountPath} ${onHost} ${why} (nothing was written)`, {
        code: HostStorageErrorCode.MountMismatch,
        retryable: false,
        context: { field: 'mountPath', source: mount.source, fsType: mount.fsType },
      });
    if (mount.fsType !== 'nfs' && mount.fsType !== 'nfs4')
      throw mismatch(`is a ${mount.fsType} mount, not nfs`);
    if (expected && !sameNfsSource(mount.source, expected)) {
      throw mismatch(`has ${mount.source} mounted, not ${expected.server}:${expected.export}`);
    }
  }
}

async function deepestExisting(path: string): Promise<string | undefined> {
  let current = path;
  for (;;) {
    try {
      return await realpath(current);
    } catch (error) {
      if (!isNotFound(error)) throw error;
      if (current === '/') return undefined;
      current = dirname(current);
    }
  }
}

function sameNfsSource(source: string, expected: ExpectedNfsSource): boolean {
  const colon = source.lastIndexOf(':/');
  if (colon <= 0) return false;
  const server = source.slice(0, colon).replace(/^\[(.*)\]$/, '$1');
  const exported = normalizeAbsolute(source.slice(colon + 1));
  return (
    server.toLowerCase() === expected.server.replace(/^\[(.*)\]$/, '$1').toLowerCase() &&
    exported === normalizeAbsolute(expected.export)
  );
}

/** One line of `/proc/self/mountinfo`. */
export interface MountInfoEntry {
  mountPoint: string;
  fsType: string;
  source: string;
}

/**
 * Parses `/proc/<pid>/mountinfo` (proc(5)): mount point is field 5, then optional fields up to a
 * lone `-`, then the filesystem type and the source. Octal escapes (`\040` for a space) are decoded.
 * Malformed lines are skipped.
 *
 * @example
 * parseMountInfo('36 25 0:45 / /mnt/strata/ds-1 rw,relatime shared:1 - nfs4 10.0.0.5:/srv/ds-1 rw\n');
 * // [{ mountPoint: '/mnt/strata/ds-1', fsType: 'nfs4', source: '10.0.0.5:/srv/ds-1' }]
 */
export function parseMountInfo(text: string): MountInfoEntry[] {
  const entries: MountInfoEntry[] = [];
  for (const line of text.split('\n')) {
    const fields = line.trim().split(' ');
    const separator = fields.indexOf('-', 6);
    if (fields.length < 7 || separator < 0 || fields.length < separator + 3) continue;
    entries.push({
      mountPoint: unescapeMountInfo(fields[4]!),
      fsType: unescapeMountInfo(fields[separator + 1]!),
      source: unescapeMountInfo(fields[separator + 2]!),
    });
  }
  return entries;
}

function unescapeMountInfo(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(Number.parseInt(octal, 8)));
}

/**
 * Reads the host configuration file. Never throws: a missing, unreadable or invalid file gives
 * {@link HostStorage.unconfigured} with the reason, so the runtime still answers (the probe, and a
 * clear error for every storage operation) instead of dying.
 *
 * @example
 * const storage = await loadHostStorage('/etc/strata/host.json');
 */
export async function loadHostStorage(file: string, options: HostStorageOptions = {}): Promise<HostStorage> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    return HostStorage.unconfigured(
      isNotFound(error) ? `${file} does not exist` : `${file} cannot be read: ${(error as Error).message}`,
    );
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    return HostStorage.unconfigured(`${file} is not JSON: ${(error as Error).message}`);
  }
  const parsed = HostConfigSchema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const at = issue?.path.map(String).join('.') || '(top level)';
    return HostStorage.unconfigured(`${file} is invalid at ${at}: ${issue?.message ?? 'malformed'}`);
  }
  return HostStorage.fromConfig(parsed.data, options);
}

/**
 * Wraps a provider's host operations so that every `mountPath` in their (already validated)
 * arguments, at any depth, is proven by {@link HostStorage.confineMount} before the operation runs.
 * An object that holds `mountPath` next to `server` and `export` strings names the NFS source the
 * mount must show. Doing it here, once, covers every operation of the set, including those added
 * later, as long as they call a mount `mountPath`.
 *
 * @example
 * export const myHostOperations = confineMountPaths({ provider: 'acme', operations: { checkMount } });
 */
export function confineMountPaths(set: HostOperationSet): HostOperationSet {
  const operations: HostOperationSet['operations'] = {};
  for (const [name, operation] of Object.entries(set.operations)) {
    operations[name] = {
      args: operation.args,
      async run(args: unknown, ctx: HostOperationContext) {
        for (const { mountPath, expected } of mountPathsIn(args)) {
          await ctx.storage.confineMount(mountPath, {
            ...(expected ? { expected } : {}),
            hostId: ctx.hostId,
          });
        }
        return operation.run(args, ctx);
      },
    } satisfies HostOperation;
  }
  return { ...set, operations };
}

function mountPathsIn(value: unknown, depth = 0): { mountPath: string; expected?: ExpectedNfsSource }[] {
  if (depth > 4 || typeof value !== 'object' || value === null) return [];
  if (Array.isArray(value)) return value.flatMap((item) => mountPathsIn(item, depth + 1));
  const record = value as Record<string, unknown>;
  const found: { mountPath: string; expected?: ExpectedNfsSource }[] = [];
  if (typeof record.mountPath === 'string') {
    const expected =
      typeof record.server === 'string' && typeof record.export === 'string'
        ? { server: record.server, export: record.export }
        : undefined;
    found.push(expected ? { mountPath: record.mountPath, expected } : { mountPath: record.mountPath });
  }
  for (const [key, child] of Object.entries(record)) {
    if (key !== 'mountPath') found.push(...mountPathsIn(child, depth + 1));
  }
  return found;
}
