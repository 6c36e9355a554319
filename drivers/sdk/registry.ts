/**
 * The provider registry: filled once at start-up, read by every flow. Registration fails loudly on
 * a malformed or repeated name, because a silently shadowed provider would send data to the wrong
 * storage.
 */
import { DriverInputError, DuplicateProviderError, ProviderNotFoundError } from './errors.js';
import type { DataStoreProvider, DataStoreRole, HostOperationSet } from './types.js';
import { isKebabCase } from './validation.js';

/**
 * Holds the registered {@link DataStoreProvider}s by name.
 *
 * @example
 * const registry = new ProviderRegistry()
 *   .register(createS3Provider())
 *   .register(createNfsProvider());
 * const nfs = registry.get('nfs');
 */
export class ProviderRegistry {
  readonly #providers = new Map<string, DataStoreProvider>();

  /**
   * Adds a provider. Throws {@link DuplicateProviderError} if the name is taken and
   * {@link DriverInputError} if the provider is malformed. Returns the registry for chaining.
   *
   * @example
   * registry.register(createNfsProvider());
   */
  register(provider: DataStoreProvider): this {
    validateProvider(provider);
    if (this.#providers.has(provider.name)) throw new DuplicateProviderError(provider.name);
    this.#providers.set(provider.name, provider);
    return this;
  }

  /**
   * The provider called `name`; throws {@link ProviderNotFoundError} when there is none.
   *
   * @example
   * const { driver } = registry.get(store.provider);
   */
  get(name: string): DataStoreProvider {
    const provider = this.#providers.get(name);
    if (!provider) throw new ProviderNotFoundError(name);
    return provider;
  }

  /**
   * Whether a provider called `name` is registered.
   *
   * @example
   * if (!registry.has(body.provider)) throw new InputError('unknown provider');
   */
  has(name: string): boolean {
    return this.#providers.has(name);
  }

  /**
   * Every provider, in registration order.
   *
   * @example
   * registry.list().map((p) => p.name); // ['s3', 'nfs']
   */
  list(): DataStoreProvider[] {
    return [...this.#providers.values()];
  }

  /**
   * The providers that can serve `role`.
   *
   * @example
   * registry.byRole('image').map((p) => p.name); // ['s3']
   */
  byRole(role: DataStoreRole): DataStoreProvider[] {
    return this.list().filter((p) => p.roles.includes(role));
  }

  /**
   * The host-side halves of the providers that have one, for the host runtime.
   *
   * @example
   * await runHostRequest(request, { operationSets: registry.hostOperationSets(), workDir, onEvent });
   */
  hostOperationSets(): HostOperationSet[] {
    return this.list().flatMap((p) => (p.hostOperations ? [p.hostOperations] : []));
  }
}

function validateProvider(provider: DataStoreProvider): void {
  const name = provider?.name;
  if (typeof name !== 'string' || !isKebabCase(name)) {
    throw new DriverInputError(`provider name '${String(name)}' must be kebab-case (e.g. 'acme-iscsi')`, {
      context: { field: 'name' },
    });
  }
  if (!Array.isArray(provider.roles) || provider.roles.length === 0) {
    throw new DriverInputError(`provider '${name}' must serve at least one role`, {
      context: { field: 'roles' },
    });
  }
  if (!provider.lifecycle || !provider.driver || !provider.detailsSchema) {
    throw new DriverInputError(`provider '${name}' needs a lifecycle, a driver and a details schema`);
  }
  if (provider.hostOperations && provider.hostOperations.provider !== name) {
    throw new DriverInputError(
      `provider '${name}' declares host operations for '${provider.hostOperations.provider}'`,
      { context: { field: 'hostOperations.provider' } },
    );
  }
}
