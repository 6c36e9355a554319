// Three projects share one fast transform (swc, no type checking: `npm run typecheck` does that).
const transform = { '^.+\\.(t|j)sx?$': ['@swc/jest', { jsc: { target: 'es2022' } }] };
const common = {
  transform,
  // middy 6+ ships ESM only; let swc transform it.
  transformIgnorePatterns: ['/node_modules/(?!(@middy)/)'],
  testEnvironment: 'node',
  // Sources import siblings as `./x.js` (NodeNext); jest resolves those to the `.ts` files.
  moduleNameMapper: { '^(\\.{1,2}/.*)\\.js$': '$1' },
  setupFilesAfterEnv: ['<rootDir>/test/support/setup.ts'],
};

/**
 * One worker per core, at least 2 and at most 4 (each integration file runs a whole embedded stack).
 * Jest's default of cores − 1 gives one worker on 2 cores, which leaves a third of the CPU idle while
 * flows wait on hosts and emulators: measured on 2 cores, 2 workers ran the integration project in
 * 229 s instead of 330 s and the unit project in 50 s instead of 90 s.
 */
const maxWorkers = Math.min(4, Math.max(2, require('node:os').availableParallelism()));

/** @type {import('jest').Config} */
module.exports = {
  maxWorkers,
  projects: [
    {
      ...common,
      displayName: 'unit',
      testMatch: ['<rootDir>/test/unit/**/*.test.ts', '<rootDir>/test/conformance/**/*.test.ts'],
    },
    { ...common, displayName: 'infra', testMatch: ['<rootDir>/test/infra/**/*.test.ts'] },
    {
      ...common,
      displayName: 'integration',
      setupFilesAfterEnv: ['<rootDir>/test/support/setup-integration.ts'],
      testMatch: ['<rootDir>/test/integration/**/*.test.ts'],
      globalSetup: '<rootDir>/test/support/global-setup.ts',
      globalTeardown: '<rootDir>/test/support/global-teardown.ts',
    },
  ],
};
