import './setup';

// Real emulators, workflows and host processes on a 2-core machine: generous, never relied on for
// speed (jest ignores a per-project testTimeout, so it is set here).
jest.setTimeout(120_000);
