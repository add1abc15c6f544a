import { InvalidArgumentError, type Command } from 'commander';
import { UsageError } from '../errors.js';
import { commandContext, positiveInt, runUntilSignal } from './context.js';

interface BoardFlags {
  port?: number;
  host?: string;
  basePath?: string;
  basicAuth?: string;
  readOnly?: boolean;
}

/** Commander parser for `--base-path`. */
export function basePathOption(value: string): string {
  if (!value.startsWith('/')) throw new InvalidArgumentError('expected a path starting with /.');
  return value;
}

/** The board's basic auth: `--basic-auth` wins over env BOARD_BASIC_AUTH. */
export async function boardBasicAuth(flag: string | undefined): Promise<string | undefined> {
  const value = flag ?? (process.env.BOARD_BASIC_AUTH || undefined);
  if (value !== undefined) {
    // Loaded on use: Express and Bull Board are heavy for every other command.
    const { parseBasicAuth } = await import('../operate/board.js');
    parseBasicAuth(value);
  }
  return value;
}

/** Adds the board's HTTP options to a command (`board`, `start`). */
export function boardOptions(command: Command): Command {
  return command
    .option('--port <port>', 'HTTP port of the board', positiveInt, 3000)
    .option('--host <host>', 'interface to listen on (0.0.0.0 for every one)', '127.0.0.1')
    .option('--base-path <path>', 'URL path the board is served under', basePathOption, '/')
    .option(
      '--basic-auth <user:pass>',
      'require HTTP basic auth (env BOARD_BASIC_AUTH); /healthz stays open',
    )
    .option('--read-only', 'hide retry, remove, promote and the other job actions');
}

export function registerBoard(program: Command): void {
  boardOptions(
    program
      .command('board')
      .description('Bull Board for every consumer queue, plus /healthz and /metrics'),
  ).action(async (opts: BoardFlags, command: Command) => {
    const { config, log } = await commandContext(command);
    let basicAuth: string | undefined;
    try {
      basicAuth = await boardBasicAuth(opts.basicAuth);
    } catch (error) {
      throw new UsageError(`--basic-auth / BOARD_BASIC_AUTH: ${(error as Error).message}`);
    }
    const { startBoard } = await import('../operate/board.js');
    const board = await startBoard({
      settings: config,
      port: opts.port,
      host: opts.host,
      basePath: opts.basePath,
      basicAuth,
      readOnly: opts.readOnly,
      logger: log,
    });
    log.info(
      { url: board.url, readOnly: opts.readOnly === true, basicAuth: basicAuth !== undefined },
      'board ready',
    );
    process.exitCode = await runUntilSignal(log, () => board.close());
  });
}
