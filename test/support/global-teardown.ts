/** Stops the emulators global-setup started for the `integration` project. */

// The key global-setup.ts stores them under; jest's plain-Node loading of hook files cannot follow
// an import of global-setup.ts, so the name is repeated here.
const EMULATORS_KEY = '__strataIntegrationEmulators';

export default async function globalTeardown(): Promise<void> {
  const emulators = (globalThis as Record<string, unknown>)[EMULATORS_KEY] as
    | { stop(): Promise<void> }
    | undefined;
  await emulators?.stop();
}
