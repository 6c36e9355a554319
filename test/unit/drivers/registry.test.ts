import { z } from 'zod';
import { createBuiltinRegistry } from '../../../drivers/builtin.js';
import {
  DriverInputError,
  DuplicateProviderError,
  ProviderNotFoundError,
} from '../../../drivers/sdk/errors.js';
import { ProviderRegistry } from '../../../drivers/sdk/registry.js';
import type { DataStoreProvider } from '../../../drivers/sdk/types.js';

function fakeProvider(name: string, overrides: Partial<DataStoreProvider> = {}): DataStoreProvider {
  return {
    name,
    roles: ['primary'],
    detailsSchema: z.record(z.string(), z.string()),
    lifecycle: {} as DataStoreProvider['lifecycle'],
    driver: {} as DataStoreProvider['driver'],
    ...overrides,
  };
}

describe('ProviderRegistry', () => {
  describe('register', () => {
    it('makes the provider available under its name', () => {
      const provider = fakeProvider('acme-iscsi');

      const registry = new ProviderRegistry().register(provider);

      expect(registry.get('acme-iscsi')).toBe(provider);
      expect(registry.has('acme-iscsi')).toBe(true);
    });

    it('fails loudly when a name is registered twice', () => {
      const registry = new ProviderRegistry().register(fakeProvider('nfs'));

      expect(() => registry.register(fakeProvider('nfs'))).toThrow(DuplicateProviderError);
    });

    it.each(['NFS', 'acme_iscsi', 'acme--x', '-acme', 'acme-', '9lives', '', 'a'.repeat(64)])(
      'refuses the non-kebab-case name %j',
      (name) => {
        expect(() => new ProviderRegistry().register(fakeProvider(name))).toThrow(DriverInputError);
      },
    );

    it('refuses a provider without roles', () => {
      expect(() => new ProviderRegistry().register(fakeProvider('acme', { roles: [] }))).toThrow(
        DriverInputError,
      );
    });

    it('refuses host operations declared for another provider', () => {
      const provider = fakeProvider('acme', { hostOperations: { provider: 'other', operations: {} } });

      expect(() => new ProviderRegistry().register(provider)).toThrow(/declares host operations for 'other'/);
    });
  });

  describe('get', () => {
    it('throws ProviderNotFoundError naming the missing provider', () => {
      const registry = new ProviderRegistry();

      expect(() => registry.get('ceph')).toThrow(ProviderNotFoundError);
      expect(() => registry.get('ceph')).toThrow(/'ceph'/);
    });
  });

  describe('list, byRole and hostOperationSets', () => {
    it('filters by role and collects host operation sets in registration order', () => {
      const set = { provider: 'block', operations: {} };
      const registry = new ProviderRegistry()
        .register(fakeProvider('objects', { roles: ['image'] }))
        .register(fakeProvider('block', { roles: ['primary', 'image'], hostOperations: set }));

      expect(registry.list().map((p) => p.name)).toEqual(['objects', 'block']);
      expect(registry.byRole('primary').map((p) => p.name)).toEqual(['block']);
      expect(registry.byRole('image').map((p) => p.name)).toEqual(['objects', 'block']);
      expect(registry.hostOperationSets()).toEqual([set]);
    });
  });
});

describe('createBuiltinRegistry', () => {
  it('registers s3 as an image provider and nfs as a primary provider with host operations', () => {
    const registry = createBuiltinRegistry();

    expect(registry.byRole('image').map((p) => p.name)).toEqual(['s3']);
    expect(registry.byRole('primary').map((p) => p.name)).toEqual(['nfs']);
    expect(registry.hostOperationSets().map((s) => s.provider)).toEqual(['nfs']);
  });

  it('refuses to add the built-ins to a registry that already has one of their names', () => {
    const existing = new ProviderRegistry().register(fakeProvider('nfs'));

    expect(() => createBuiltinRegistry({}, existing)).toThrow(DuplicateProviderError);
  });
});
