import { z } from 'zod';
import { FlowName } from '../../../functions/core/ports';
import { imageTaskNames } from '../../../functions/handlers/image-tasks-handler';
import { storeTaskNames, storeTasks } from '../../../functions/handlers/store-tasks-handler';
import { bindTasks, StepContractError } from '../../../functions/handlers/task-handler';
import { flowTasks, hostTasks, loadFlowDefinition } from '../../../statemachines/definitions';
import { hostLoopStates, taskSteps } from '../../../statemachines/flow';
import { flows } from '../../../statemachines/flows';

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
    const byName = new Map(states);
    const compensate = byName.get('Compensate');
    // A compensation that undoes host work is a wait loop; its result state goes on to the Fail.
    const last =
      compensate?.Next === hostLoopStates('Compensate').running
        ? byName.get(hostLoopStates('Compensate').result)
        : compensate;
    // It goes on to the Fail, or to a Choice whose default is the Fail (volume-migrate: a failure
    // after the switch-over rolls forward to a Succeed instead).
    const after = byName.get(String(last?.Next));
    expect(after?.Type === 'Choice' ? after.Default : last?.Next).toBe(fail?.[0]);
  });

  it('waits on hosts in the state machine: each host step loops through a Choice and a Wait back to itself', () => {
    const byName = new Map(states);
    for (const [name, s] of states) {
      if (s.Type !== 'Task' || !String(s.Next ?? '').endsWith('(running?)')) continue;
      const loop = hostLoopStates(name);
      const choice = byName.get(loop.running)!;
      expect(choice.Type).toBe('Choice');
      expect(choice.Choices).toEqual([
        { Variable: '$.hostStep.value.waiting', IsPresent: true, Next: loop.wait },
      ]);
      expect(byName.get(loop.wait)).toMatchObject({
        Type: 'Wait',
        SecondsPath: '$.hostStep.value.waiting.seconds',
        Next: name,
      });
      expect(byName.get(loop.result)?.Type).toBe('Pass');
      // No step is retried as a way of waiting.
      const retried = ((s.Retry as { ErrorEquals: string[] }[]) ?? []).flatMap((r) => r.ErrorEquals);
      expect(retried).not.toContain('Strata.StillRunning');
    }
  });
});

it('every task a flow calls is served by its function, and the host tasks are among them', () => {
  for (const [fn, names] of [
    ['store', storeTaskNames],
    ['image', imageTaskNames],
  ] as const) {
    for (const t of flowTasks(fn))
      expect({ fn, task: t, served: names.includes(t) }).toEqual({ fn, task: t, served: true });
  }
  expect([...hostTasks('store')].sort()).toEqual(
    expect.arrayContaining([
      'attachHost',
      'createOnPool',
      'ensureTemplateCache',
      'scanBackup',
      'takeOnPool',
      'uploadBackup',
    ]),
  );
});

describe.each(Object.values(FlowName))('step contracts of %s', (flow) => {
  const definition = flows[flow];
  const steps = taskSteps(definition);

  it('declares a contract for every task it runs, and none it does not', () => {
    expect([...new Set(steps.map(({ step }) => step.task))].sort()).toEqual(
      Object.keys(definition.steps).sort(),
    );
  });

  it('passes each task every field its contract requires, and none it does not name', () => {
    for (const { state, step } of steps) {
      if (step.input === '$') continue; // the whole state input: the contract picks what it needs
      const contract = definition.steps[step.task];
      expect(contract).toBeInstanceOf(z.ZodObject);
      const shape = (contract as z.ZodObject).shape;
      const passed = Object.keys(step.input);
      const unnamed = passed.filter((f) => !(f in shape));
      const missing = Object.keys(shape).filter(
        (f) => !passed.includes(f) && !shape[f]!.safeParse(undefined).success,
      );
      expect({ state, unnamed, missing }).toEqual({ state, unnamed: [], missing: [] });
    }
  });
});

describe.each(Object.values(FlowName))('result contracts of %s', (flow) => {
  const definition = flows[flow];

  it('names every field a state selects from a task answer, and contracts only tasks it runs', () => {
    const tasks = new Set(taskSteps(definition).map(({ step }) => step.task));
    for (const task of Object.keys(definition.results))
      expect({ task, run: tasks.has(task) }).toEqual({ task, run: true });
    for (const { state, step } of taskSteps(definition)) {
      const read = Object.values(step.select ?? {})
        .filter((v): v is string => typeof v === 'string')
        .map((v) => /^\$\.Payload\.([A-Za-z0-9_]+)/.exec(v)?.[1])
        .filter((f): f is string => f !== undefined);
      const contract = definition.results[step.task];
      if (read.length === 0 && step.output !== 'payload') continue;
      expect({ state, contracted: contract instanceof z.ZodObject }).toEqual({ state, contracted: true });
      const shape = (contract as z.ZodObject).shape;
      expect({ state, unknown: read.filter((f) => !(f in shape)) }).toEqual({ state, unknown: [] });
    }
  });
});

it('fails a step that answers outside its result contract, as a defect', async () => {
  const table = bindTasks(
    { probe: z.object({ jobId: z.string() }) },
    { probe: z.object({ path: z.string() }) },
    { probe: async () => ({ path: 42 }) as never },
  );
  await expect(table.probe!({} as never, { jobId: 'j' })).rejects.toBeInstanceOf(StepContractError);
  const loose = bindTasks(
    { probe: z.object({ jobId: z.string() }) },
    { probe: z.object({ path: z.string() }) },
    { probe: async () => ({ path: 'p', extra: 1 }) },
  );
  // Checked, not stripped: the state machine gets the answer as the step made it.
  await expect(loose.probe!({} as never, { jobId: 'j' })).resolves.toEqual({ path: 'p', extra: 1 });
});

it("gives a task the same contract in every flow of its function, and the function's table serves exactly those", () => {
  for (const [fn, names] of [
    ['store', storeTaskNames],
    ['image', imageTaskNames],
  ] as const) {
    const seen = new Map<string, unknown>();
    for (const f of Object.values(flows).filter((d) => d.fn === fn)) {
      for (const [task, contract] of Object.entries(f.steps)) {
        if (seen.has(task)) expect({ task, same: seen.get(task) === contract }).toEqual({ task, same: true });
        seen.set(task, contract);
      }
    }
    expect([...names].sort()).toEqual([...seen.keys()].sort());
  }
});

it('validates a step input by its contract before the step runs', async () => {
  const strata = {} as never;
  await expect(storeTasks.createOnPool!(strata, { jobId: 'job-1' })).rejects.toThrow(/volumeId/);
  await expect(
    storeTasks.resizeOnPool!(strata, { jobId: 'j', volumeId: 'v', sizeBytes: -1, allowShrink: false }),
  ).rejects.toThrow(/sizeBytes/);
});

it('refuses to load a definition with an unknown placeholder value missing', () => {
  expect(() => loadFlowDefinition(FlowName.StoreAttach, {} as never)).toThrow(/no substitution/);
});
