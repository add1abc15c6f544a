import { Command, InvalidArgumentError } from 'commander';
import { assertChannel } from '../identifiers.js';
import { notify } from '../produce/notify.js';
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
    .action(async (channel: string, payload: unknown, _opts: unknown, command: Command) => {
      // A bad channel is a usage error (exit 2) whether or not Postgres is reachable.
      assertChannel(channel);
      const { config } = await commandContext(command);
      const client = await connectPostgres(config.databaseUrl, 'pgq-bridge notify');
      try {
        const id = await notify(client, channel, payload, { schema: config.schema });
        process.stdout.write(`${id}\n`);
      } finally {
        await client.end();
      }
    });
}
