import type { Command } from 'commander';
import { cleanup, type CleanupResult } from '../recover/cleanup.js';
import { abortOnSignal } from './abort.js';
import { commandContext, nonNegativeNumber, positiveInt } from './context.js';

interface CleanupFlags {
  days: number;
  dryRun?: boolean;
  force?: boolean;
  batchSize?: number;
  json?: boolean;
}

/** The human summary line of a cleanup run. */
export function cleanupSummary(r: CleanupResult, days: number): string {
  const head = r.dryRun ? 'cleanup (dry run, nothing deleted)' : 'cleanup';
  const verb = r.dryRun ? 'would delete' : 'deleted';
  return (
    `${head}: ${verb} ${r.deleted} notifications and ${r.ledgerRowsDeleted} ledger rows ` +
    `created before ${r.cutoff.toISOString()} (${days} days); kept ${r.kept} unfinished ` +
    `in ${(r.durationMs / 1000).toFixed(1)} s\n`
  );
}

export function registerCleanup(program: Command): void {
  program
    .command('cleanup')
    .description('delete old bridged notifications whose deliveries are finished')
    .requiredOption(
      '--days <n>',
      'delete rows created more than N days ago (fractions allowed)',
      nonNegativeNumber,
    )
    .option('--dry-run', 'count what would be deleted; delete nothing')
    .option('--force', 'also delete old bridged rows whose deliveries are not all completed')
    .option('--batch-size <n>', 'rows per transaction', positiveInt, 1000)
    .option('--json', 'print the summary as one JSON object')
    .action(async (opts: CleanupFlags, command: Command) => {
      const { config, log } = await commandContext(command);
      const { signal, dispose } = abortOnSignal(log, 'cleanup');
      try {
        const result = await cleanup({
          settings: config,
          days: opts.days,
          dryRun: opts.dryRun,
          force: opts.force,
          batchSize: opts.batchSize,
          logger: log,
          signal,
        });
        const interrupted = signal.aborted;
        process.stdout.write(
          opts.json
            ? `${JSON.stringify({ ...result, interrupted })}\n`
            : (interrupted ? 'interrupted: ' : '') + cleanupSummary(result, opts.days),
        );
        if (interrupted) process.exitCode = 130;
      } finally {
        dispose();
      }
    });
}
