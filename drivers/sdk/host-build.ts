/**
 * The host runtime's build id. The bundle that deploys (infra/host-runtime-bundle.ts) bakes it in as
 * the `STRATA_HOST_BUILD` constant: the hash of the driver sources and the lockfile, the same value
 * the CDK stack gives the control-plane functions. Run from sources (tests, tsx) there is no build
 * id and the runtime calls itself `dev`.
 */
declare const STRATA_HOST_BUILD: string | undefined;

/** This runtime's build id, or `dev` when it runs from sources. */
export const HOST_BUILD: string = typeof STRATA_HOST_BUILD === 'string' ? STRATA_HOST_BUILD : 'dev';

/** The provider name of the operations every host runtime has, whatever providers it carries. */
export const RUNTIME_PROVIDER = 'runtime';
/** The runtime's own operation that reports its build and prerequisites; it answers any build. */
export const PROBE_OPERATION = 'probe';
