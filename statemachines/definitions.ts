/**
 * Each flow's definition and how placeholders are filled in. Every flow is a TypeScript module
 * (statemachines/flows/<flow>.ts) built with statemachines/flow.ts; its ASL is generated from it.
 * The CDK stack hands the text to Step Functions with `definitionSubstitutions`; the embedded stack
 * runs the definition it reads back from the synthesized template.
 */
import type { FlowName } from '../functions/core/ports.js';
import { TaskFunction, taskSteps, toAsl } from './flow.js';
import { flows } from './flows/index.js';

/** Placeholders used in the definitions, as `${Name}`. */
export const FlowSubstitution = {
  StoreTasksFunctionArn: TaskFunction.store,
  ImageTasksFunctionArn: TaskFunction.image,
} as const;
export type FlowSubstitution = (typeof FlowSubstitution)[keyof typeof FlowSubstitution];

/** A flow's definition text with its `${Name}` placeholders. */
export function flowDefinitionText(flow: FlowName): string {
  return JSON.stringify(toAsl(flows[flow]), null, 2);
}

/** Replaces every `${Name}` in `text` with `substitutions[Name]`; an unknown name throws. */
export function substitute(text: string, substitutions: Record<string, string>, where: string): string {
  return text.replace(/\$\{([A-Za-z0-9]+)\}/g, (_, name: string) => {
    const value = substitutions[name];
    if (value === undefined) throw new Error(`${where}: no substitution for \${${name}}`);
    return value;
  });
}

/** A flow's definition with every placeholder replaced. */
export function loadFlowDefinition(
  flow: FlowName,
  substitutions: Record<FlowSubstitution, string>,
): Record<string, unknown> {
  return JSON.parse(substitute(flowDefinitionText(flow), substitutions, `flow ${flow}`)) as Record<
    string,
    unknown
  >;
}

/** The placeholders a flow uses, e.g. to grant its state machine only the functions it calls. */
export function flowSubstitutionsUsed(flow: FlowName): FlowSubstitution[] {
  const names = new Set([...flowDefinitionText(flow).matchAll(/\$\{([A-Za-z0-9]+)\}/g)].map((m) => m[1]));
  return (Object.values(FlowSubstitution) as FlowSubstitution[]).filter((n) => names.has(n));
}

/** The tasks of `fn` that the flows run as host steps (wait loops): they may answer `waiting`. */
export function hostTasks(fn: TaskFunction): Set<string> {
  return new Set(
    Object.values(flows)
      .filter((f) => f.fn === fn)
      .flatMap((f) => taskSteps(f))
      .filter(({ step }) => step.host)
      .map(({ step }) => step.task),
  );
}

/** Every task the flows of `fn` call, so a task table can be checked against them. */
export function flowTasks(fn: TaskFunction): Set<string> {
  return new Set(
    Object.values(flows)
      .filter((f) => f.fn === fn)
      .flatMap((f) => taskSteps(f))
      .map(({ step }) => step.task),
  );
}
