import { Metrics } from '../operate/metrics.js';
import { startMetricsServer, stopServer } from '../operate/metrics-server.js';
import type { Settings } from '../config.js';
import type { Logger } from '../log.js';

/** What a command's `--metrics-port` gives it: the metrics to update and how to stop serving. */
export interface ServedMetrics {
  metrics: Metrics;
  stop(): Promise<void>;
}

/**
 * Creates the metrics of a command (with the database gauges) and, when `port` is given,
 * serves them on `/metrics`. Without a port the metrics are still counted (cheap) but not served.
 */
export async function serveMetrics(
  port: number | undefined,
  settings: Pick<Settings, 'databaseUrl' | 'schema'>,
  log: Logger,
): Promise<ServedMetrics> {
  const metrics = new Metrics({
    database: { databaseUrl: settings.databaseUrl, schema: settings.schema },
    logger: log,
  });
  const server =
    port === undefined
      ? undefined
      : await startMetricsServer({ port, text: () => metrics.text(), logger: log });
  return {
    metrics,
    async stop() {
      if (server) await stopServer(server);
      await metrics.close();
    },
  };
}
