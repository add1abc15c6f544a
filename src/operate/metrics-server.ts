import { createServer, type Server } from 'node:http';
import { silentLogger, type Logger } from '../log.js';
import { errorMessage } from '../util.js';

/** Options of {@link startMetricsServer}. */
export interface MetricsServerOptions {
  port: number;
  host?: string;
  /** Produces the Prometheus text (default: `metrics.text()`). */
  text: () => Promise<string>;
  logger?: Logger;
}

/** Serves `GET /metrics` (and nothing else) for `listen` and `work --metrics-port`. */
export async function startMetricsServer(options: MetricsServerOptions): Promise<Server> {
  const log = options.logger ?? silentLogger();
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' || path !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
      return;
    }
    options.text().then(
      (body) => {
        res
          .writeHead(200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' })
          .end(body);
      },
      (error: unknown) => {
        res.writeHead(500, { 'content-type': 'text/plain' }).end(`${errorMessage(error)}\n`);
      },
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port, options.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  log.info({ port: options.port }, 'serving metrics on /metrics');
  return server;
}

/** Closes a server started by {@link startMetricsServer} (idle keep-alive sockets too). */
export function stopServer(server: Server): Promise<void> {
  return new Promise((resolve) => {
    server.close(() => resolve());
    server.closeAllConnections();
  });
}
