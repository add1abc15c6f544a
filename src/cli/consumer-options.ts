import type { Command } from 'commander';
import type { ResolvedConfig } from '../config.js';
import type { ConsumerDefinition } from '../consume/consumers.js';
import { loadConsumersDir, selectConsumers } from '../consume/consumers-dir.js';
import { validateConsumers } from '../consume/consumer-validation.js';
import { list, nonNegativeNumber, positiveInt } from './context.js';

/** The flags that choose and tune the consumers a command runs (`work`, `start`). */
export interface ConsumerFlags {
  consumers?: string[];
  excludeConsumers?: string[];
  consumersDir?: string;
  concurrency?: number;
  shutdownTimeout?: number;
}

/** Adds the consumer selection options shared by `work` and `start`. */
export function consumerOptions(command: Command): Command {
  return command
    .option('--consumers <list>', 'run only these consumers (comma-separated ids)', list)
    .option('--exclude-consumers <list>', 'run every consumer but these', list)
    .option('--consumers-dir <dir>', 'load consumers from the files of this directory')
    .option('--concurrency <n>', "override every consumer's concurrency", positiveInt)
    .option(
      '--shutdown-timeout <seconds>',
      'how long a graceful stop waits for in-flight jobs',
      nonNegativeNumber,
      30,
    );
}

/**
 * Every consumer known to the command (from `--consumers-dir`, else the config file's
 * `consumersDir` or `consumers`) and the ones `--consumers` / `--exclude-consumers` select.
 */
export async function configuredConsumers(
  config: ResolvedConfig,
  flags: ConsumerFlags,
): Promise<{ all: ConsumerDefinition[]; selected: ConsumerDefinition[] }> {
  const dir = flags.consumersDir ?? config.consumersDir;
  const all = dir
    ? await loadConsumersDir(dir)
    : validateConsumers(
        (config.consumers ?? []).map((value) => ({ value, where: config.configFile ?? 'config' })),
      );
  return { all, selected: selectConsumers(all, flags.consumers, flags.excludeConsumers) };
}
