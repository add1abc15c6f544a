import { Command, InvalidArgumentError } from 'commander';
import { assertChannel } from '../identifiers.js';
import { assertKey, notify } from '../produce/notify.js';
import { commandContext, connectPostgres } from './context.js';

function jsonArgument(value: string): unknown {
  try {
    return JSON.parse(value) as unknown;
  } catch (error) {
    throw new InvalidArgumentError(`not valid JSON (${(error as Error).message}).`);
  }
}

export function registerNotify(program: Command): void {
  program
    .command('notify')
    .description('store and send one notification; prints its id')
    .argument('<channel>', 'channel name (1-63 of A-Z a-z 0-9 _ . : -)')
    .argument('<json>', 'payload, as JSON', jsonArgument)
    .option('--key <key>', 'ordering key (up to 512 bytes; see docs/ordering.md)')
    .action(async (channel: string, payload: unknown, opts: { key?: string }, command: Command) => {
      // A bad channel or key is a usage error (exit 2) whether or not Postgres is reachable.
      assertChannel(channel);
      if (opts.key !== undefined) assertKey(opts.key);
      const { config } = await commandContext(command);
      const client = await connectPostgres(config.databaseUrl, 'pgq-bridge notify');
      try {
        const id = await notify(client, channel, payload, { schema: config.schema, key: opts.key });
        process.stdout.write(`${id}\n`);
      } finally {
        await client.end();
      }
    });
}
