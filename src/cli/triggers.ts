import { Command, InvalidArgumentError } from 'commander';
import pg from 'pg';
import type { TriggerEvent } from '../db/triggers.js';
import { parseColumnNames, splitIdentifierList } from '../produce/table-name.js';
import {
  addTrigger,
  listTriggers,
  removeTrigger,
  triggerSql,
  type InstalledTrigger,
} from '../produce/triggers.js';
import { commandContext, list, connectPostgres } from './context.js';

interface AddFlags {
  channel?: string;
  events?: string[];
  columns?: string[];
  when?: string;
  printSql?: boolean;
}

/**
 * `--columns` keeps Postgres' quoting rules, so `"Total, gross"` is one column: split here at the
 * commas outside quotes, each name read by Postgres (parse_ident) once connected.
 */
function columnList(value: string, previous: string[] | undefined): string[] {
  try {
    return [...(previous ?? []), ...splitIdentifierList(value)];
  } catch (error) {
    throw new InvalidArgumentError((error as Error).message);
  }
}

/** Runs `fn` with a connection to the configured database. */
async function withDatabase<T>(
  command: Command,
  fn: (client: pg.Client, schema: string) => Promise<T>,
): Promise<T> {
  const { config } = await commandContext(command);
  const client = await connectPostgres(config.databaseUrl, 'pgq-bridge triggers');
  try {
    return await fn(client, config.schema);
  } finally {
    await client.end();
  }
}

function describe(trigger: InstalledTrigger): string {
  return `${trigger.trigger} on ${trigger.table} (channel ${trigger.channel}, ${trigger.events.join(
    ' OR ',
  )}${trigger.condition ? ` WHEN ${trigger.condition}` : ''})`;
}

/** Left-aligned columns separated by two spaces; the last column is not padded. */
function table(rows: string[][]): string {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  return rows
    .map((r) =>
      r
        .map((cell, i) => (i === r.length - 1 ? cell : cell.padEnd(widths[i])))
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}

export function registerTriggers(program: Command): void {
  const triggers = program
    .command('triggers')
    .description('manage notify_data_change triggers: a notification for every row change');

  triggers
    .command('add')
    .description('install AFTER ... FOR EACH ROW triggers that notify every change of a table')
    .argument(
      '<table>',
      'table, optionally schema-qualified (quote mixed case: \'"Sales"."Order Items"\')',
    )
    .option('--channel <channel>', 'channel of the notifications', 'data_change')
    .option('--events <list>', 'events that fire: insert,update,delete', list)
    .option('--columns <list>', 'UPDATE fires only when one of these columns changed', columnList)
    .option(
      '--when <sql>',
      'extra WHEN (...) condition, e.g. "NEW.status IS DISTINCT FROM OLD.status"',
    )
    .option('--print-sql', 'print the SQL instead of running it (for your own migrations)')
    .action(async (name: string, opts: AddFlags, command: Command) => {
      await withDatabase(command, async (client, schema) => {
        const options = {
          channel: opts.channel,
          events: opts.events?.map((e) => e.toLowerCase() as TriggerEvent),
          columns: opts.columns ? await parseColumnNames(client, opts.columns) : undefined,
          when: opts.when,
        };
        if (opts.printSql) {
          process.stdout.write(await triggerSql(client, name, { ...options, schema }));
          return;
        }
        const installed = await addTrigger(client, name, { ...options, schema });
        for (const trigger of installed) process.stdout.write(`installed ${describe(trigger)}\n`);
      });
    });

  triggers
    .command('remove')
    .description("drop the table's notify_data_change triggers")
    .argument('<table>', 'table, optionally schema-qualified')
    .action(async (name: string, _opts: unknown, command: Command) => {
      await withDatabase(command, async (client, schema) => {
        const removed = await removeTrigger(client, name, { schema });
        if (removed.length === 0) {
          process.stdout.write(`no notify_data_change trigger on ${name}\n`);
        }
        for (const trigger of removed) process.stdout.write(`removed ${describe(trigger)}\n`);
      });
    });

  triggers
    .command('list')
    .description('show every installed notify_data_change trigger (from pg_trigger)')
    .option('--json', 'print JSON (one array)')
    .action(async (opts: { json?: boolean }, command: Command) => {
      await withDatabase(command, async (client, schema) => {
        const installed = await listTriggers(client, { schema });
        if (opts.json) {
          process.stdout.write(`${JSON.stringify(installed, null, 2)}\n`);
          return;
        }
        if (installed.length === 0) {
          process.stderr.write('no notify_data_change triggers installed\n');
          return;
        }
        const rows = [
          ['TABLE', 'CHANNEL', 'EVENTS', 'TRIGGER', 'CONDITION'],
          ...installed.map((t) => [
            t.table,
            t.channel,
            t.events.join(',').toLowerCase(),
            t.enabled ? t.trigger : `${t.trigger} (disabled)`,
            t.condition ?? '',
          ]),
        ];
        process.stdout.write(`${table(rows)}\n`);
      });
    });
}
