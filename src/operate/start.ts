import { createListener, type Listener, type ListenerOptions } from '../bridge/listener.js';
import { startBoard, type BoardServer, type StartBoardOptions } from './board.js';
import type { ConsumerDefinition } from '../consume/consumers.js';
import { silentLogger, type Logger } from '../log.js';
import { Metrics } from './metrics.js';
import { createWorker } from '../consume/worker.js';
import type { PgqWorker, WorkerOptions } from '../consume/worker-options.js';

/** Options of {@link startAll}. */
export interface StartAllOptions {
  settings: ListenerOptions['settings'] & WorkerOptions['settings'];
  /** Consumers to run; with none, only the bridge (and the board) run. */
  consumers: ConsumerDefinition[];
  /** Listener options (channels, batch size, ...). */
  listen?: Omit<ListenerOptions, 'settings' | 'logger' | 'metrics'>;
  /** Worker options (concurrency, shutdown timeout, ...). */
  work?: Omit<WorkerOptions, 'settings' | 'consumers' | 'logger' | 'metrics'>;
  /** Board options, or false for no board. */
  board?: false | Omit<StartBoardOptions, 'settings' | 'logger' | 'metrics'>;
  logger?: Logger;
}

/** Everything {@link startAll} runs. */
export interface AllInOne {
  listener: Listener;
  worker: PgqWorker | undefined;
  board: BoardServer | undefined;
  /** One set of metrics for the three (served by the board on `/metrics`). */
  metrics: Metrics;
  /** Stops the board, then the listener, then drains the workers. */
  close(): Promise<void>;
}

/**
 * Runs listen + work + board in one process (the `start` command), for development and small
 * deployments. The workers start first, so their consumers are registered before the bridge
 * fans anything out.
 */
export async function startAll(options: StartAllOptions): Promise<AllInOne> {
  const log = options.logger ?? silentLogger();
  const { settings } = options;
  const metrics = new Metrics({
    database: { databaseUrl: settings.databaseUrl, schema: settings.schema },
    logger: log,
  });
  const worker =
    options.consumers.length > 0
      ? createWorker({
          ...options.work,
          settings,
          consumers: options.consumers,
          metrics,
          logger: log.child({ service: 'work' }),
        })
      : undefined;
  const listener = createListener({
    ...options.listen,
    settings,
    metrics,
    logger: log.child({ service: 'listen' }),
  });
  let board: BoardServer | undefined;
  try {
    await worker?.start();
    await listener.start();
    if (options.board !== false) {
      board = await startBoard({
        ...options.board,
        settings,
        metrics,
        logger: log.child({ service: 'board' }),
      });
    }
  } catch (error) {
    await listener.stop().catch(() => undefined);
    await worker?.close().catch(() => undefined);
    await metrics.close();
    throw error;
  }
  return {
    listener,
    worker,
    board,
    metrics,
    async close() {
      await board?.close();
      await listener.stop();
      await worker?.close();
      await metrics.close();
    },
  };
}
