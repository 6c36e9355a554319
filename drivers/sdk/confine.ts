/**
 * Keeping host-side file access inside one directory tree. A driver's host operations receive paths
 * from the control plane; these helpers make sure that no `..`, absolute path or symbolic link can
 * make them read or write outside the store's root.
 *
 * The checks resolve real paths at the time of the call. They do not defend against a local user
 * who swaps a directory for a symlink between the check and the use: the share's root is expected
 * to be writable by Strata only.
 */
import { lstat, mkdir, realpath, stat } from 'node:fs/promises';
import { basename, dirname, join, relative, sep } from 'node:path';
import { DriverInputError, ObjectNotFoundError } from './errors.js';
import { isSafeRelativePath } from './validation.js';

/**
 * True when `child` is `root` or lies under it (both absolute, already resolved).
 *
 * @example
 * isWithin('/mnt/a', '/mnt/a/volumes/v.qcow2'); // true
 * isWithin('/mnt/a', '/mnt/ab'); // false
 */
export function isWithin(root: string, child: string): boolean {
  const rel = relative(root, child);
  return rel === '' || (!rel.startsWith(`..${sep}`) && rel !== '..' && !rel.startsWith(sep));
}

/**
 * Resolves `relativePath` under `root` and proves it stays there: the relative path must be plain
 * (no `..`, no leading `/`), every existing directory on the way must resolve inside the real root,
 * and the target itself must not be a symlink. With `createParents`, missing directories are made
 * (then checked again). With `mustExist`, a missing target is an {@link ObjectNotFoundError}.
 * Returns the absolute path under the real root.
 *
 * @example
 * const file = await resolveConfinedPath('/mnt/ds-1', 'volumes/vol-1.qcow2', { createParents: true });
 */
export async function resolveConfinedPath(
  root: string,
  relativePath: string,
  options: { mustExist?: boolean; createParents?: boolean } = {},
): Promise<string> {
  if (!isSafeRelativePath(relativePath)) {
    throw new DriverInputError(
      `path '${relativePath.slice(0, 200)}' must be relative to the store, without ..`,
      {
        context: { field: 'path' },
      },
    );
  }
  const realRoot = await realRootOf(root);
  const parentRel = dirname(relativePath);
  const parent = parentRel === '.' ? realRoot : join(realRoot, parentRel);

  await assertExistingAncestorInside(realRoot, parent, relativePath);
  if (options.createParents && parent !== realRoot) await mkdir(parent, { recursive: true });
  let realParent: string;
  try {
    realParent = await realpath(parent);
  } catch (error) {
    if (isNotFound(error)) {
      if (options.mustExist)
        throw new ObjectNotFoundError(`${relativePath} not found`, { context: { path: relativePath } });
      return join(parent, basename(relativePath));
    }
    throw error;
  }
  if (!isWithin(realRoot, realParent)) throw escapeError(relativePath);

  const target = join(realParent, basename(relativePath));
  try {
    const stats = await lstat(target);
    if (stats.isSymbolicLink()) throw escapeError(relativePath, 'is a symbolic link');
  } catch (error) {
    if (!isNotFound(error)) throw error;
    if (options.mustExist)
      throw new ObjectNotFoundError(`${relativePath} not found`, { context: { path: relativePath } });
  }
  return target;
}

/** The real path of a store root; a missing root is the caller's configuration problem. */
export async function realRootOf(root: string): Promise<string> {
  try {
    return await realpath(root);
  } catch (error) {
    if (isNotFound(error))
      throw new ObjectNotFoundError(`store root ${root} does not exist`, { context: { root } });
    throw error;
  }
}

// Walks up from `dir` to the first directory that exists and checks it resolves inside the root,
// so that `mkdir -p` can only ever create directories inside the root.
async function assertExistingAncestorInside(
  realRoot: string,
  dir: string,
  relativePath: string,
): Promise<void> {
  let current = dir;
  while (isWithin(realRoot, current)) {
    try {
      const real = await realpath(current);
      if (!isWithin(realRoot, real)) throw escapeError(relativePath);
      return;
    } catch (error) {
      if (!isNotFound(error)) throw error;
      if (current === realRoot) return;
      current = dirname(current);
    }
  }
  throw escapeError(relativePath);
}

function escapeError(relativePath: string, why = 'leaves the store'): DriverInputError {
  return new DriverInputError(`path '${relativePath.slice(0, 200)}' ${why}`, { context: { field: 'path' } });
}

/**
 * True for a Node `ENOENT` (or `ENOTDIR`: a file where a directory was expected) error.
 *
 * @example
 * try { await stat(p); } catch (e) { if (!isNotFound(e)) throw e; }
 */
export function isNotFound(error: unknown): boolean {
  const code = typeof error === 'object' && error !== null ? (error as { code?: unknown }).code : undefined;
  return code === 'ENOENT' || code === 'ENOTDIR';
}

/** Whether `file` exists; any error but {@link isNotFound}'s is thrown. */
export async function pathExists(file: string): Promise<boolean> {
  try {
    await stat(file);
    return true;
  } catch (error) {
    if (isNotFound(error)) return false;
    throw error;
  }
}
