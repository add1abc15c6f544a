import type { Command } from 'commander';
import {
  channelNames,
  loadConsumersDir,
  selectConsumers,
  validateConsumers,
} from '../consumers.js';
import { UsageError } from '../errors.js';
import { createWorker } from '../worker.js';
import { commandContext, list, nonNegativeNumber, positiveInt, runUntilSignal } from './context.js';

interface WorkFlags {
  consumers?: string[];
  excludeConsumers?: string[];
  consumersDir?: string;
  concurrency?: number;
  shutdownTimeout?: number;
  listConsumers?: boolean;
}

export function registerWork(program: Command): void {
  program
    .command('work')
    .description('run consumer handlers as BullMQ workers')
    .option('--consumers <list>', 'run only these consumers (comma-separated ids)', list)
    .option('--exclude-consumers <list>', 'run every consumer but these', list)
    .option('--consumers-dir <dir>', 'load consumers from the files of this directory')
    .option('--concurrency <n>', "override every consumer's concurrency", positiveInt)
    .option(
      '--shutdown-timeout <seconds>',
      'how long a graceful stop waits for in-flight jobs',
      nonNegativeNumber,
      30,
    )
    .option('--list-consumers', 'print the consumers that would run, then exit')
    .action(async (opts: WorkFlags, command: Command) => {
      const { config, log } = await commandContext(command);
      const dir = opts.consumersDir ?? config.consumersDir;
      const all = dir
        ? await loadConsumersDir(dir)
        : validateConsumers(
            (config.consumers ?? []).map((value) => ({
              value,
              where: config.configFile ?? 'config',
            })),
          );
      if (all.length === 0) {
        throw new UsageError(
          'no consumers: pass --consumers-dir <dir> or set consumers / consumersDir in pgq-bridge.config.ts',
        );
      }
      const consumers = selectConsumers(all, opts.consumers, opts.excludeConsumers);
      if (opts.listConsumers) {
        for (const c of consumers) {
          process.stdout.write(`${c.id}\t${channelNames(c).join(',')}\n`);
        }
        return;
      }
      if (consumers.length === 0)
        throw new UsageError('every consumer is excluded: nothing to run');
      const worker = createWorker({
        settings: config,
        consumers,
        concurrency: opts.concurrency,
        shutdownTimeoutMs: (opts.shutdownTimeout ?? 30) * 1000,
        logger: log,
      });
      const stopped = runUntilSignal(log, () => worker.close());
      await worker.start();
      process.exitCode = await stopped;
    });
}
