/**
 * Input checks shared by the base driver, the host operations and the providers. They throw
 * {@link DriverInputError} so a bad id or path is reported as the caller's fault, never as a
 * storage failure.
 */
import { z } from 'zod';
import { DriverInputError } from './errors.js';

const SAFE_ID = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;
const KEBAB_CASE = /^[a-z][a-z0-9]*(-[a-z0-9]+)*$/;

/**
 * Zod schema for an object or snapshot id: the same alphabet as ids on the host wire, so an id is
 * always safe as a file name component and as an S3 key segment. `..` is refused although its
 * characters are allowed, because ids become path components.
 *
 * @example
 * SafeIdSchema.parse('vol-1'); // 'vol-1'
 */
export const SafeIdSchema = z
  .string()
  .regex(SAFE_ID, 'letters, digits, dot, underscore, colon and dash only, at most 128')
  .refine((id) => !id.includes('..'), 'must not contain ..');

/**
 * Zod schema for a path relative to a store's root: forward slashes, no `.`/`..` segments, no
 * leading slash, no NUL or backslash, no empty segment.
 *
 * @example
 * RelativePathSchema.parse('volumes/vol-1.qcow2');
 */
export const RelativePathSchema = z
  .string()
  .min(1)
  .max(1024)
  .refine((p) => isSafeRelativePath(p), 'must be a relative path without ., .. or empty segments');

/**
 * Zod schema for an absolute POSIX path with no `.`/`..` segments (a mount point, an export).
 *
 * @example
 * AbsolutePathSchema.parse('/mnt/strata/ds-1');
 */
export const AbsolutePathSchema = z
  .string()
  .min(1)
  .max(1024)
  .refine(
    (p) => p.startsWith('/') && (p === '/' || isSafeRelativePath(p.slice(1).replace(/\/$/, ''))),
    'must be an absolute path without ., .. or empty segments',
  );

/**
 * True when `path` is relative and every segment is an ordinary name.
 *
 * @example
 * isSafeRelativePath('a/b.qcow2'); // true
 * isSafeRelativePath('../etc/passwd'); // false
 */
export function isSafeRelativePath(path: string): boolean {
  if (path.length === 0 || path.startsWith('/') || path.includes('\\') || path.includes('\0')) return false;
  return path.split('/').every((segment) => segment !== '' && segment !== '.' && segment !== '..');
}

/**
 * True for a kebab-case provider name (`nfs`, `acme-iscsi`), at most 63 characters.
 *
 * @example
 * isKebabCase('acme-iscsi'); // true
 */
export function isKebabCase(name: string): boolean {
  return name.length <= 63 && KEBAB_CASE.test(name);
}

/**
 * Throws {@link DriverInputError} unless `id` is a safe id.
 *
 * @example
 * assertSafeId(object.id, 'object.id');
 */
export function assertSafeId(id: unknown, field: string): asserts id is string {
  if (typeof id !== 'string' || !SafeIdSchema.safeParse(id).success) {
    throw new DriverInputError(`${field} must be a safe id (letters, digits, '.', '_', ':', '-')`, {
      context: { field, value: typeof id === 'string' ? id.slice(0, 200) : typeof id },
    });
  }
}

/**
 * Throws {@link DriverInputError} unless `path` is a safe relative path.
 *
 * @example
 * assertRelativePath(object.path, 'object.path');
 */
export function assertRelativePath(path: unknown, field: string): asserts path is string {
  if (typeof path !== 'string' || path.length > 1024 || !isSafeRelativePath(path)) {
    throw new DriverInputError(`${field} must be a relative path inside the store`, {
      context: { field, value: typeof path === 'string' ? path.slice(0, 200) : typeof path },
    });
  }
}

/**
 * Throws {@link DriverInputError} unless `size` is a positive safe integer.
 *
 * @example
 * assertPositiveSize(options.sizeBytes, 'sizeBytes');
 */
export function assertPositiveSize(size: unknown, field: string): asserts size is number {
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size <= 0) {
    throw new DriverInputError(`${field} must be a positive integer number of bytes`, {
      context: { field, value: size },
    });
  }
}
