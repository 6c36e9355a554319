import { type CommandSpec, ExitCode } from '../command.js';

export const healthCommands: CommandSpec[] = [
  {
    path: ['health'],
    summary: 'Check that the API answers, and show its version.',
    examples: [
      'strata health',
      'strata health --api-url https://abc123.execute-api.eu-west-1.amazonaws.com/prod',
    ],
    async run({ client, out }) {
      const health = await client.health();
      if (out.json) out.data(health);
      else if (out.quiet) out.print(health.status);
      else out.print(`${health.status}  version ${health.version ?? 'unknown'}  ${client.baseUrl}`);
      return health.status === 'ok' ? ExitCode.Ok : ExitCode.Failure;
    },
  },
];
