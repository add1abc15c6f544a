import type { Command } from 'commander';
import { createListener } from '../bridge/listener.js';
import { UsageError } from '../errors.js';
import { reconcile } from '../recover/reconcile.js';
import { serveMetrics } from './serve-metrics.js';
import { sinceArgument } from './reconcile.js';
import { commandContext, list, nonNegativeNumber, positiveInt, runUntilSignal } from './context.js';

/** What `listen --recover` verifies by default: the rows of the last 24 hours. */
const RECOVER_WINDOW_MS = 24 * 3600 * 1000;

interface ListenFlags {
  channels?: string[];
  batchSize?: number;
  skipPlayback?: boolean;
  recover?: boolean;
  recoverSince?: Date | 'all';
  reconnectDelay?: number;
  pollInterval?: number;
  enqueueTimeout?: number;
  metricsPort?: number;
  strict?: boolean;
}

export function registerListen(program: Command): void {
  program
    .command('listen')
    .description('the bridge: turn stored notifications into BullMQ jobs')
    .option('--channels <list>', 'bridge only these channels (comma-separated)', list)
    .option('--batch-size <n>', 'rows claimed per transaction', positiveInt, 500)
    .option(
      '--skip-playback',
      'do not bridge rows stored before the start (leave them to reconcile)',
    )
    .option(
      '--recover',
      'first run `reconcile --verify` (unbridged rows, playback, jobs lost from Redis)',
    )
    .option(
      '--recover-since <time>',
      'what --recover verifies: rows created since (ISO time or age; `all`: the whole table)',
      (v: string) => (v === 'all' ? 'all' : sinceArgument(v)),
    )
    .option(
      '--reconnect-delay <seconds>',
      'first delay before reconnecting (backs off to 30 s)',
      nonNegativeNumber,
      1,
    )
    .option(
      '--poll-interval <seconds>',
      'safety poll: longest a missed wake-up delays a row',
      nonNegativeNumber,
      5,
    )
    .option(
      '--enqueue-timeout <seconds>',
      'how long Redis may take to accept a batch before it rolls back (then smaller batches)',
      nonNegativeNumber,
      15,
    )
    .option('--metrics-port <port>', 'serve Prometheus metrics on this port', positiveInt)
    .option('--strict', 'refuse to start when Redis may evict jobs (maxmemory-policy)')
    .action(async (opts: ListenFlags, command: Command) => {
      if (opts.recover && opts.skipPlayback) {
        throw new UsageError('--recover and --skip-playback contradict each other: pick one');
      }
      const { config, log } = await commandContext(command);
      if (opts.recover) {
        // The same path as `reconcile --verify`, restricted to the channels this listener serves.
        // Bounded by default: a listener start should cost the recent rows, not the table. Jobs
        // lost longer ago need an explicit `reconcile --verify` (or --recover-since all).
        const since =
          opts.recoverSince === 'all'
            ? undefined
            : (opts.recoverSince ?? new Date(Date.now() - RECOVER_WINDOW_MS));
        const result = await reconcile({
          settings: config,
          channels: opts.channels,
          since,
          verify: true,
          batchSize: Math.max(opts.batchSize ?? 500, 1000),
          logger: log,
        });
        log.info(result, 'recovered: reconcile --verify finished');
      }
      const served = await serveMetrics(opts.metricsPort, config, log);
      const listener = createListener({
        settings: config,
        metrics: served.metrics,
        strict: opts.strict,
        channels: opts.channels,
        batchSize: opts.batchSize,
        skipPlayback: opts.skipPlayback,
        reconnectDelayMs: (opts.reconnectDelay ?? 1) * 1000,
        pollIntervalMs: Math.max(50, (opts.pollInterval ?? 5) * 1000),
        enqueueTimeoutMs: Math.max(100, (opts.enqueueTimeout ?? 15) * 1000),
        logger: log,
      });
      // Signal handlers go in before start(): a SIGTERM during start-up must stop gracefully too.
      const stopped = runUntilSignal(log, async () => {
        await listener.stop();
        await served.stop();
      });
      await listener.start();
      log.info(
        { schema: config.schema, prefix: config.prefix, channels: opts.channels ?? 'all' },
        'listening',
      );
      // A listener that refuses to run (LISTEN through a transaction pooler) ends the command.
      const refused = new Promise<never>((_, reject) => listener.once('error', reject));
      process.exitCode = await Promise.race([
        stopped,
        refused.catch(async (error: unknown) => {
          await served.stop();
          throw error;
        }),
      ]);
    });
}
