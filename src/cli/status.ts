import type { Command } from 'commander';
import { formatStatus, status } from '../operate/status.js';
import { commandContext, nonNegativeNumber } from './context.js';

interface StatusFlags {
  json?: boolean;
  maxLag?: number;
}

/** Exit code of `status` when the backlog is older than `--max-lag`. */
export const STATUS_UNHEALTHY_EXIT_CODE = 3;

export function registerStatus(program: Command): void {
  program
    .command('status')
    .description('backlog and per-consumer queue figures; exit 3 when the backlog lags')
    .option('--json', 'print the report as JSON')
    .option(
      '--max-lag <seconds>',
      'unhealthy (exit 3) when the oldest unbridged notification is older than this',
      nonNegativeNumber,
    )
    .action(async (opts: StatusFlags, command: Command) => {
      const { config, log } = await commandContext(command);
      const report = await status({ settings: config, maxLagSeconds: opts.maxLag, logger: log });
      process.stdout.write(
        opts.json ? `${JSON.stringify(report, null, 2)}\n` : formatStatus(report),
      );
      if (!report.healthy) process.exitCode = STATUS_UNHEALTHY_EXIT_CODE;
    });
}
