import { type CommandSpec, ExitCode } from '../command.js';
import { printResult } from './shared.js';

export const healthCommands: CommandSpec[] = [
  {
    path: ['health'],
    summary: 'Check that the API answers, and show its version.',
    examples: [
      'strata health',
      'strata health --api-url https://abc123.execute-api.eu-west-1.amazonaws.com/prod',
    ],
    async run(ctx) {
      const { client } = ctx;
      const health = await client.health();
      printResult(
        ctx,
        health,
        health.status,
        `${health.status}  version ${health.version ?? 'unknown'}  ${client.baseUrl}`,
      );
      return health.status === 'ok' ? ExitCode.Ok : ExitCode.Failure;
    },
  },
];
