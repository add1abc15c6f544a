import { Command, CommanderError, Option } from 'commander';
import { UsageError } from '../errors.js';
import { LOG_LEVELS } from '../config.js';
import { redactSecrets } from '../log.js';
import { errorMessage } from '../util.js';
import { registerCleanup } from './cleanup.js';
import { registerConsumers } from './consumers.js';
import { registerBoard } from './board.js';
import { registerListen } from './listen.js';
import { registerMigrate } from './migrate.js';
import { registerNotify } from './notify.js';
import { registerReconcile } from './reconcile.js';
import { registerTriggers } from './triggers.js';
import { registerStart } from './start.js';
import { registerStatus } from './status.js';
import { registerWork } from './work.js';
import { flushTraces } from '../tracing.js';

/** Builds the `pgq-bridge` commander program with its global settings. */
export function buildProgram(): Command {
  const program = new Command('pgq-bridge')
    .description('Durable PostgreSQL notifications, delivered as BullMQ jobs')
    .version('0.1.0')
    .option('--database-url <url>', 'Postgres URL (env DATABASE_URL)')
    .option(
      '--listen-database-url <url>',
      'Postgres URL for LISTEN, direct (env LISTEN_DATABASE_URL)',
    )
    .option('--redis-url <url>', 'Redis URL, or comma-separated cluster nodes (env REDIS_URL)')
    .option('--redis-cluster', 'connect to a Redis Cluster through --redis-url (env REDIS_CLUSTER)')
    .option('--schema <name>', 'schema of pgq-bridge tables (env PGQ_SCHEMA)')
    .option('--prefix <prefix>', 'BullMQ key prefix (env PGQ_PREFIX)')
    .option(
      '--inline-payload-limit <bytes>',
      'larger payloads travel by reference, not in every job (64KiB; env PGQ_INLINE_PAYLOAD_LIMIT)',
    )
    .option('--config <file>', 'config file (env PGQ_CONFIG)')
    .addOption(new Option('--log-level <level>', 'log level (env LOG_LEVEL)').choices(LOG_LEVELS))
    .addOption(
      new Option('--log-format <format>', 'log format (env LOG_FORMAT)').choices([
        'json',
        'pretty',
      ]),
    )
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride();
  registerMigrate(program);
  registerNotify(program);
  registerTriggers(program);
  registerListen(program);
  registerWork(program);
  registerReconcile(program);
  registerCleanup(program);
  registerStatus(program);
  registerBoard(program);
  registerStart(program);
  registerConsumers(program);
  for (const command of program.commands) command.exitOverride();
  return program;
}

function debugRequested(argv: string[]): boolean {
  const i = argv.indexOf('--log-level');
  return (
    (i >= 0 && argv[i + 1] === 'debug') ||
    argv.includes('--log-level=debug') ||
    process.env.LOG_LEVEL === 'debug'
  );
}

/**
 * Runs the CLI and resolves with the process exit code: 0 success, 1 runtime failure (one line
 * on stderr), 2 usage error, or what the command set (e.g. `status` uses 3).
 */
export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
    return Number(process.exitCode ?? 0);
  } catch (error) {
    if (error instanceof CommanderError) {
      // Help and version "errors" are successes; commander already printed the message.
      return error.exitCode === 0 ? 0 : 2;
    }
    const message = redactSecrets(errorMessage(error));
    if (error instanceof UsageError) {
      process.stderr.write(`pgq-bridge: ${message}\n`);
      return 2;
    }
    process.stderr.write(`pgq-bridge: ${message}\n`);
    if (debugRequested(argv) && error instanceof Error && error.stack) {
      process.stderr.write(`${redactSecrets(error.stack)}\n`);
    }
    return 1;
  } finally {
    // bin/ exits right after: hand the SDK's buffered spans over first (docs/tracing.md).
    await flushTraces();
  }
}
