import cluster from 'node:cluster';
import type { Command } from 'commander';
import { channelNames } from '../consume/consumers.js';
import { UsageError } from '../errors.js';
import {
  exposeToSupervisor,
  supervisorMetricsText,
  supervisorRegistry,
} from '../operate/metrics-supervisor.js';
import { startMetricsServer, stopServer } from '../operate/metrics-server.js';
import { createSupervisor, supervisorStopRequested } from '../operate/supervisor.js';
import { createWorker } from '../consume/worker.js';
import { serveMetrics } from './serve-metrics.js';
import { configuredConsumers, consumerOptions, type ConsumerFlags } from './consumer-options.js';
import { commandContext, positiveInt, runUntilSignal } from './context.js';

interface WorkFlags extends ConsumerFlags {
  listConsumers?: boolean;
  processes?: number;
  worker?: boolean;
  restartOnFailure?: boolean;
  metricsPort?: number;
  strict?: boolean;
}

/** Options of the supervisor that its children must not get (the supervisor serves metrics). */
const SUPERVISOR_ONLY = ['--processes', '--metrics-port'];

/**
 * The arguments of a supervised child: the user's own, minus `--processes N` and
 * `--metrics-port P`, plus `--worker`. Commander accepts `--opt V` and `--opt=V`; both go.
 */
export function childArgs(argv: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (SUPERVISOR_ONLY.includes(arg)) {
      i++;
      continue;
    }
    if (SUPERVISOR_ONLY.some((name) => arg.startsWith(`${name}=`))) continue;
    out.push(arg);
  }
  const at = out.indexOf('work');
  out.splice(at + 1, 0, '--worker');
  return out;
}

export function registerWork(program: Command): void {
  consumerOptions(program.command('work').description('run consumer handlers as BullMQ workers'))
    .option('--list-consumers', 'print the consumers that would run, then exit')
    .option(
      '--processes <n>',
      'run N worker processes under a supervisor that restarts crashed ones',
      positiveInt,
    )
    .option('--worker', 'run one worker process in the foreground, without a supervisor')
    .option(
      '--no-restart-on-failure',
      'with --processes: a crashed worker process ends the command with a non-zero code',
    )
    .option('--metrics-port <port>', 'serve Prometheus metrics on this port', positiveInt)
    .option('--strict', 'refuse to start when Redis may evict jobs (maxmemory-policy)')
    .action(async (opts: WorkFlags, command: Command) => {
      if (opts.processes !== undefined && opts.worker) {
        throw new UsageError('--processes and --worker exclude each other');
      }
      const { config, log } = await commandContext(command);
      const { all, selected: consumers } = await configuredConsumers(config, opts);
      if (all.length === 0) {
        throw new UsageError(
          'no consumers: pass --consumers-dir <dir> or set consumers / consumersDir in pgq-bridge.config.ts',
        );
      }
      if (opts.listConsumers) {
        for (const c of consumers) {
          process.stdout.write(`${c.id}\t${channelNames(c).join(',')}\n`);
        }
        return;
      }
      if (consumers.length === 0)
        throw new UsageError('every consumer is excluded: nothing to run');
      if (opts.processes !== undefined) {
        const supervisor = createSupervisor({
          processes: opts.processes,
          exec: process.argv[1],
          args: childArgs(process.argv.slice(2)),
          restartOnFailure: opts.restartOnFailure !== false,
          shutdownTimeoutMs: (opts.shutdownTimeout ?? 30) * 1000,
          logger: log,
        });
        const server =
          opts.metricsPort === undefined
            ? undefined
            : await startMetricsServer({
                port: opts.metricsPort,
                text: supervisorMetricsText(supervisorRegistry(supervisor)),
                logger: log,
              });
        const stopped = runUntilSignal(log, async () => {
          await supervisor.stop();
        });
        void supervisor.done.then(() => server && stopServer(server));
        supervisor.start();
        process.exitCode = await Promise.race([
          stopped.then(() => supervisor.done),
          supervisor.done,
        ]);
        return;
      }
      const served = await serveMetrics(
        cluster.isWorker ? undefined : opts.metricsPort,
        config,
        log,
      );
      if (cluster.isWorker) exposeToSupervisor(served.metrics);
      const worker = createWorker({
        settings: config,
        metrics: served.metrics,
        strict: opts.strict,
        consumers,
        concurrency: opts.concurrency,
        shutdownTimeoutMs: (opts.shutdownTimeout ?? 30) * 1000,
        logger: log,
      });
      const stopped = runUntilSignal(
        log,
        async () => {
          await worker.close();
          await served.stop();
        },
        supervisorStopRequested(),
      );
      await worker.start();
      process.exitCode = await stopped;
    });
}
