import type { Command } from 'commander';
import { migrate } from '../db/migrate.js';
import { UsageError } from '../errors.js';
import { boardBasicAuth, boardOptions } from './board.js';
import { configuredConsumers, consumerOptions, type ConsumerFlags } from './consumer-options.js';
import { commandContext, connectPostgres, list, positiveInt, runUntilSignal } from './context.js';

interface StartFlags extends ConsumerFlags {
  channels?: string[];
  batchSize?: number;
  board?: boolean;
  port?: number;
  host?: string;
  basePath?: string;
  basicAuth?: string;
  readOnly?: boolean;
  migrate?: boolean;
  strict?: boolean;
}

export function registerStart(program: Command): void {
  const command = consumerOptions(
    program
      .command('start')
      .description('listen + work + board in one process (development, small deployments)'),
  )
    .option('--channels <list>', 'bridge only these channels (comma-separated)', list)
    .option('--batch-size <n>', 'rows claimed per transaction', positiveInt, 500)
    .option('--migrate', 'install or upgrade the schema first')
    .option('--strict', 'refuse to start when Redis may evict jobs (maxmemory-policy)')
    .option('--no-board', 'run listen + work only');
  boardOptions(command).action(async (opts: StartFlags, cmd: Command) => {
    const { config, log } = await commandContext(cmd);
    let basicAuth: string | undefined;
    try {
      basicAuth = await boardBasicAuth(opts.basicAuth);
    } catch (error) {
      throw new UsageError(`--basic-auth / BOARD_BASIC_AUTH: ${(error as Error).message}`);
    }
    const { selected: consumers } = await configuredConsumers(config, opts);
    if (consumers.length === 0) {
      log.warn('no consumers to run (pass --consumers-dir or configure consumers): bridging only');
    }
    if (opts.migrate) {
      const client = await connectPostgres(config.databaseUrl, 'pgq-bridge start', 'migrate');
      try {
        await migrate({ db: client, schema: config.schema, logger: log });
      } finally {
        await client.end();
      }
    }
    // Loaded on use: Express and Bull Board are heavy for every other command.
    const { startAll } = await import('../operate/start.js');
    const app = await startAll({
      settings: config,
      consumers,
      listen: { channels: opts.channels, batchSize: opts.batchSize, strict: opts.strict },
      work: {
        strict: opts.strict,
        concurrency: opts.concurrency,
        shutdownTimeoutMs: (opts.shutdownTimeout ?? 30) * 1000,
      },
      board:
        opts.board === false
          ? false
          : {
              port: opts.port,
              host: opts.host,
              basePath: opts.basePath,
              basicAuth,
              readOnly: opts.readOnly,
            },
      logger: log,
    });
    log.info(
      {
        consumers: consumers.map((c) => c.id),
        board: app.board?.url ?? false,
        schema: config.schema,
      },
      'started: listen + work + board',
    );
    const refused = new Promise<never>((_, reject) => app.listener.once('error', reject));
    process.exitCode = await Promise.race([
      runUntilSignal(log, () => app.close()),
      refused.catch(async (error: unknown) => {
        await app.close().catch(() => undefined);
        throw error;
      }),
    ]);
  });
}
