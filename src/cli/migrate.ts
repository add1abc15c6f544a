import type { Command } from 'commander';
import { migrate, migrationScript } from '../db/migrate.js';
import { commandContext, connectPostgres } from './context.js';

export function registerMigrate(program: Command): void {
  program
    .command('migrate')
    .description('install or upgrade the pgq-bridge schema')
    .option(
      '--print-sql',
      'print the schema SQL instead of applying it (for other migration tools)',
    )
    .action(async (opts: { printSql?: boolean }, command: Command) => {
      const { config, log } = await commandContext(command);
      if (opts.printSql) {
        process.stdout.write(migrationScript(config.schema));
        return;
      }
      const client = await connectPostgres(config.databaseUrl, 'pgq-bridge migrate', 'migrate');
      try {
        const result = await migrate({ db: client, schema: config.schema, logger: log });
        log.info(
          { schema: config.schema, applied: result.applied, version: result.version },
          result.applied.length ? 'schema migrated' : 'schema already up to date',
        );
      } finally {
        await client.end();
      }
    });
}
