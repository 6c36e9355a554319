/** The providers that ship with Strata, and the one place they are wired together. */

import type { NfsProviderOptions } from './nfs/driver.js';
import { createNfsProvider } from './nfs/provider.js';
import type { S3ProviderOptions } from './s3/driver.js';
import { createS3Provider } from './s3/provider.js';
import { ProviderRegistry } from './sdk/registry.js';

export { builtinHostOperationSets } from './builtin-host.js';

/** Options of each built-in provider. */
export interface BuiltinProviderOptions {
  s3?: S3ProviderOptions;
  nfs?: NfsProviderOptions;
}

/**
 * A registry holding the built-in providers (`s3`, `nfs`). Pass `registry` to add them to one that
 * already holds third-party providers; a name clash throws `DuplicateProviderError`.
 *
 * @example
 * const registry = createBuiltinRegistry({ s3: { presignExpiresSeconds: 900 } });
 * registry.register(createAcmeProvider());
 */
export function createBuiltinRegistry(
  options: BuiltinProviderOptions = {},
  registry: ProviderRegistry = new ProviderRegistry(),
): ProviderRegistry {
  return registry.register(createS3Provider(options.s3)).register(createNfsProvider(options.nfs));
}
