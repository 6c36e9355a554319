import { FlowName } from '../../../functions/core/ports';
import { loadFlowDefinition } from '../../../statemachines/definitions';

type State = Record<string, unknown> & { Type: string };

/** Every state of a definition, including those inside Map and Parallel branches. */
function allStates(definition: Record<string, unknown>): [string, State][] {
  const out: [string, State][] = [];
  const visit = (states: Record<string, State>) => {
    for (const [name, s] of Object.entries(states)) {
      out.push([name, s]);
      const processor = (s.ItemProcessor ?? s.Iterator) as { States: Record<string, State> } | undefined;
      if (processor) visit(processor.States);
      for (const b of (s.Branches as { States: Record<string, State> }[] | undefined) ?? []) visit(b.States);
    }
  };
  visit(definition.States as Record<string, State>);
  return out;
}

const ARN = 'arn:aws:lambda:us-east-1:123456789012:function:store-tasks';

describe.each(Object.values(FlowName))('flow %s', (flow) => {
  const definition = loadFlowDefinition(flow, { StoreTasksFunctionArn: ARN, ImageTasksFunctionArn: ARN });
  const states = allStates(definition);

  it('fills every placeholder', () => {
    expect(JSON.stringify(definition)).not.toContain('${');
    expect(JSON.stringify(definition)).toContain(ARN);
  });

  it('gives every Task a timeout, retries with backoff and jitter on named errors only, and a Catch', () => {
    const tasks = states.filter(([, s]) => s.Type === 'Task');
    expect(tasks.length).toBeGreaterThan(0);
    for (const [name, task] of tasks) {
      expect({ name, timeout: task.TimeoutSeconds }).toEqual({ name, timeout: expect.any(Number) });
      const retries =
        (task.Retry as { ErrorEquals: string[]; JitterStrategy?: string; BackoffRate?: number }[]) ?? [];
      for (const r of retries) {
        expect(r.ErrorEquals).not.toContain('States.ALL');
        expect(r.JitterStrategy).toBe('FULL');
        expect(r.BackoffRate).toBeGreaterThan(1);
      }
      const isCompensation = name === 'Compensate';
      if (!isCompensation) expect({ name, catch: Array.isArray(task.Catch) }).toEqual({ name, catch: true });
    }
  });

  it('routes every Next and Catch to a state that exists in the same scope', () => {
    const names = new Set(states.map(([n]) => n));
    for (const [, s] of states) {
      if (typeof s.Next === 'string') expect(names).toContain(s.Next);
      for (const c of (s.Catch as { Next: string }[] | undefined) ?? []) expect(names).toContain(c.Next);
      for (const c of (s.Choices as { Next: string }[] | undefined) ?? []) expect(names).toContain(c.Next);
      if (typeof s.Default === 'string') expect(names).toContain(s.Default);
    }
  });

  it('ends failures in a Fail state after compensating', () => {
    const fail = states.find(([, s]) => s.Type === 'Fail');
    expect(fail).toBeDefined();
    const compensate = states.find(([n]) => n === 'Compensate');
    expect(compensate?.[1].Next).toBe(fail?.[0]);
  });
});

it('refuses to load a definition with an unknown placeholder value missing', () => {
  expect(() => loadFlowDefinition(FlowName.StoreAttach, {} as never)).toThrow(/no substitution/);
});
