import { timingSafeEqual } from 'node:crypto';
import type { Server } from 'node:http';
import { createBullBoard } from '@bull-board/api';
import { BullMQAdapter } from '@bull-board/api/bullMQAdapter';
import { ExpressAdapter } from '@bull-board/express';
import type { Queue } from 'bullmq';
import express, { type NextFunction, type Request, type Response, type Router } from 'express';
import { createPool } from '../db/pool.js';
import type { Settings } from '../config.js';
import { OperationsQueries } from '../db/operations.js';
import { UsageError } from '../errors.js';
import { redactSecrets, silentLogger, type Logger } from '../log.js';
import { Metrics } from './metrics.js';
import { blockedKeysHandler } from './board-blocked-keys.js';
import { closeRedis, createRedis, type RedisConnection, type RedisSettings } from '../redis.js';
import { queueFigures } from './status.js';
import { errorMessage, withTimeout } from '../util.js';
import { openConsumerQueue } from '../queue-layout.js';

/** Credentials of HTTP basic auth. */
export interface BasicAuth {
  username: string;
  password: string;
}

/** Parses `user:pass` (the password may contain `:`); throws a UsageError otherwise. */
export function parseBasicAuth(value: string): BasicAuth {
  const at = value.indexOf(':');
  if (at < 1 || at === value.length - 1) {
    throw new UsageError('basic auth: expected user:password');
  }
  return { username: value.slice(0, at), password: value.slice(at + 1) };
}

/** Options of {@link createBoardRouter}. */
export interface BoardOptions {
  settings: Pick<Settings, 'databaseUrl' | 'schema' | 'prefix'> & RedisSettings;
  /**
   * The path the router is mounted at (default `/`): Bull Board writes it into the URLs of its
   * page, so it must match `app.use(basePath, router)`.
   */
  basePath?: string;
  /** Hide (and refuse) retry, remove, promote and the other actions that change jobs. */
  readOnly?: boolean;
  /** Protect everything but `/healthz` with HTTP basic auth (`user:pass` or an object). */
  basicAuth?: BasicAuth | string;
  /** Metrics served on `/metrics` (default: new ones with the database and queue gauges). */
  metrics?: Metrics;
  /** How stale the list of consumer queues may get before a request re-reads it (default 2 s). */
  refreshIntervalMs?: number;
  logger?: Logger;
}

/** The Express router of {@link createBoardRouter}, with what it needs to shut down. */
export type BoardRouter = Router & {
  /** Re-reads the consumers table now (the router also does it on requests when stale). */
  refresh(): Promise<void>;
  /** Closes the board's queues and connections (not the HTTP server). */
  close(): Promise<void>;
};

function sameSecret(given: string, expected: string): boolean {
  const a = Buffer.from(given);
  const b = Buffer.from(expected);
  return a.length === b.length && timingSafeEqual(a, b);
}

function basicAuthMiddleware(auth: BasicAuth) {
  return (req: Request, res: Response, next: NextFunction): void => {
    const header = req.headers.authorization ?? '';
    const [scheme, encoded] = header.split(' ');
    if (scheme?.toLowerCase() === 'basic' && encoded) {
      const decoded = Buffer.from(encoded, 'base64').toString('utf8');
      const at = decoded.indexOf(':');
      if (
        at >= 0 &&
        sameSecret(decoded.slice(0, at), auth.username) &&
        sameSecret(decoded.slice(at + 1), auth.password)
      ) {
        next();
        return;
      }
    }
    res
      .status(401)
      .set('WWW-Authenticate', 'Basic realm="pgq-bridge", charset="UTF-8"')
      .type('text/plain')
      .send('authentication required\n');
  };
}

/**
 * Creates an Express router with Bull Board for every consumer queue registered in Postgres
 * (consumers registered later appear without a restart), plus `GET /healthz` (Postgres and Redis
 * reachable: 200, else 503) and `GET /metrics` (Prometheus text). Mount it in your own app with
 * `app.use(basePath, createBoardRouter({ settings, basePath }))`; `pgq-bridge board` does just that.
 */
export function createBoardRouter(options: BoardOptions): BoardRouter {
  const { settings } = options;
  const log = options.logger ?? silentLogger();
  const basePath = normalizeBasePath(options.basePath ?? '/');
  const readOnly = options.readOnly === true;
  const queries = new OperationsQueries(settings.schema);
  const pool = createPool(
    {
      connectionString: settings.databaseUrl,
      max: 2,
      connectionTimeoutMillis: 5000,
      application_name: 'pgq-bridge board',
    },
    log,
    'operate',
  );
  const redis: RedisConnection = createRedis(settings, log, 'board');
  const queues = new Map<string, Queue>();

  const serverAdapter = new ExpressAdapter();
  serverAdapter.setBasePath(basePath === '/' ? '' : basePath);
  const board = createBullBoard({
    queues: [],
    serverAdapter,
    options: {
      uiConfig: {
        boardTitle: 'pgq-bridge',
        // Ordered consumers' blocked keys (board-blocked-keys.ts), linked from the header.
        miscLinks: [
          { text: 'Blocked keys', url: `${basePath === '/' ? '' : basePath}/blocked-keys` },
        ],
      },
    },
  });

  const ownMetrics = options.metrics === undefined;
  const metrics =
    options.metrics ??
    new Metrics({
      database: { databaseUrl: settings.databaseUrl, schema: settings.schema },
      logger: log,
    });
  metrics.watchQueues(async () =>
    Promise.all(
      [...queues].map(async ([consumer, queue]) => ({
        consumer,
        counts: (await queueFigures(queue)).counts,
      })),
    ),
  );

  let refreshedAt = 0;
  let refreshing: Promise<void> | undefined;
  const refresh = (): Promise<void> => {
    refreshing ??= (async () => {
      try {
        const ids = await withTimeout(queries.consumerIds(pool), 5000, 'reading consumers');
        const wanted = new Set(ids);
        for (const id of ids) {
          if (queues.has(id)) continue;
          const queue = openConsumerQueue(redis, settings, id);
          queues.set(id, queue);
          board.addQueue(new BullMQAdapter(queue, { readOnlyMode: readOnly }));
          log.info({ consumer: id }, 'board: consumer queue added');
        }
        for (const [id, queue] of queues) {
          if (wanted.has(id)) continue;
          board.removeQueue(id);
          queues.delete(id);
          await queue.close().catch(() => undefined);
          log.info({ consumer: id }, 'board: consumer queue removed');
        }
        refreshedAt = Date.now();
      } catch (error) {
        log.warn({ err: redactSecrets(errorMessage(error)) }, 'board: reading consumers failed');
      } finally {
        refreshing = undefined;
      }
    })();
    return refreshing;
  };
  const staleAfter = options.refreshIntervalMs ?? 2000;

  const router = express.Router();
  router.get('/healthz', async (_req, res) => {
    const check = async (what: () => Promise<unknown>): Promise<string> => {
      try {
        await withTimeout(what(), 2000, 'no answer');
        return 'ok';
      } catch (error) {
        return redactSecrets(errorMessage(error));
      }
    };
    const [postgres, redisState] = await Promise.all([
      check(() => pool.query('SELECT 1')),
      check(() => redis.ping()),
    ]);
    const ok = postgres === 'ok' && redisState === 'ok';
    res
      .status(ok ? 200 : 503)
      .json({ status: ok ? 'ok' : 'unavailable', postgres, redis: redisState });
  });
  if (options.basicAuth) {
    const auth =
      typeof options.basicAuth === 'string' ? parseBasicAuth(options.basicAuth) : options.basicAuth;
    router.use(basicAuthMiddleware(auth));
  }
  router.get('/metrics', async (_req, res) => {
    try {
      const body = await metrics.text();
      res.type(metrics.contentType).send(body);
    } catch (error) {
      res
        .status(500)
        .type('text/plain')
        .send(`${errorMessage(error)}\n`);
    }
  });
  router.get('/blocked-keys', blockedKeysHandler(pool, settings.schema));
  router.use(async (_req, _res, next) => {
    if (Date.now() - refreshedAt > staleAfter) await refresh();
    next();
  });
  router.use(serverAdapter.getRouter() as Router);

  const close = async (): Promise<void> => {
    await refreshing;
    await Promise.all([...queues.values()].map((q) => q.close().catch(() => undefined)));
    queues.clear();
    await closeRedis(redis);
    await pool.end().catch(() => undefined);
    if (ownMetrics) await metrics.close();
  };
  return Object.assign(router, { refresh, close });
}

function normalizeBasePath(path: string): string {
  if (!path.startsWith('/')) throw new UsageError(`base path must start with /, got ${path}`);
  return path.length > 1 ? path.replace(/\/+$/, '') : path;
}

/** Options of {@link startBoard}. */
export interface StartBoardOptions extends BoardOptions {
  port?: number;
  host?: string;
}

/** A running board server (the `board` command). */
export interface BoardServer {
  server: Server;
  /** The URL of the board, e.g. `http://127.0.0.1:3000/`. */
  url: string;
  close(): Promise<void>;
}

/** Serves {@link createBoardRouter} on its own HTTP server at `basePath` (the `board` command). */
export async function startBoard(options: StartBoardOptions): Promise<BoardServer> {
  const basePath = normalizeBasePath(options.basePath ?? '/');
  const router = createBoardRouter({ ...options, basePath });
  await router.refresh();
  const app = express();
  app.disable('x-powered-by');
  app.use(basePath, router);
  const host = options.host ?? '127.0.0.1';
  const port = options.port ?? 3000;
  const server = await new Promise<Server>((resolve, reject) => {
    const s = app.listen(port, host, (error?: Error) => (error ? reject(error) : resolve(s)));
  });
  const address = server.address();
  const actualPort = typeof address === 'object' && address ? address.port : port;
  const shownHost = host.includes(':') ? `[${host}]` : host;
  const url = `http://${shownHost}:${actualPort}${basePath === '/' ? '/' : `${basePath}/`}`;
  return {
    server,
    url,
    async close() {
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
      await router.close();
    },
  };
}
