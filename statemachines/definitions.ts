/**
 * Where each flow's definition lives and how placeholders are filled in. The CDK stack passes the
 * same file and substitutions to Step Functions (`DefinitionBody.fromFile` + `definitionSubstitutions`);
 * the embedded stack loads it here and runs it with aws-local-stepfunctions.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import type { FlowName } from '../functions/core/ports.js';

/** Placeholders used in the ASL files, as `${Name}`. */
export const FlowSubstitution = {
  StoreTasksFunctionArn: 'StoreTasksFunctionArn',
  ImageTasksFunctionArn: 'ImageTasksFunctionArn',
} as const;
export type FlowSubstitution = (typeof FlowSubstitution)[keyof typeof FlowSubstitution];

export function flowDefinitionPath(flow: FlowName): string {
  return path.join(__dirname, `${flow}.asl.json`);
}

/** Reads a flow's ASL and replaces every `${Name}` with `substitutions[Name]`; unknown names throw. */
export function loadFlowDefinition(
  flow: FlowName,
  substitutions: Record<FlowSubstitution, string>,
): Record<string, unknown> {
  const raw = readFileSync(flowDefinitionPath(flow), 'utf8');
  // Placeholders a flow does not use may be given; a placeholder it uses must be.
  const filled = raw.replace(/\$\{([A-Za-z0-9]+)\}/g, (_, name: string) => {
    const value = (substitutions as Record<string, string>)[name];
    if (value === undefined) throw new Error(`flow ${flow}: no substitution for \${${name}}`);
    return value;
  });
  return JSON.parse(filled) as Record<string, unknown>;
}

/** The placeholders a flow's ASL uses, e.g. to grant its state machine only the functions it calls. */
export function flowSubstitutionsUsed(flow: FlowName): FlowSubstitution[] {
  const raw = readFileSync(flowDefinitionPath(flow), 'utf8');
  const names = new Set([...raw.matchAll(/\$\{([A-Za-z0-9]+)\}/g)].map((m) => m[1]));
  return (Object.values(FlowSubstitution) as FlowSubstitution[]).filter((n) => names.has(n));
}
