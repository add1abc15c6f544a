import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import pg from 'pg';
import { sessionSettings } from '../db/pool.js';
import pRetry from 'p-retry';
import type { Store } from '../db/store.js';
import { redactSecrets, type Logger } from '../log.js';
import { PgqError } from '../errors.js';
import { quoteIdent } from '../identifiers.js';
import { errorMessage, withTimeout } from '../util.js';

/** Options of {@link WakeupListener}. */
export interface WakeupListenerOptions {
  /** Direct Postgres URL (LISTEN does not survive transaction-mode poolers). */
  url: string;
  store: Store;
  logger: Logger;
  /** First reconnect delay in ms; later ones back off exponentially to 30 s. */
  reconnectDelayMs?: number;
  /** How often the connection is pinged to detect a silent death. */
  pingIntervalMs?: number;
  /**
   * Sends `NOTIFY channel` through another connection. When given, the first connection checks
   * that a NOTIFY from elsewhere reaches it: through a transaction-mode pooler (PgBouncer) LISTEN
   * seems to work but never receives anything, and the listener would only ever poll.
   */
  selfTestNotify?: (channel: string) => Promise<void>;
  /** How long the self-test waits for its NOTIFY (default 5 s). */
  selfTestTimeoutMs?: number;
}

/**
 * Holds the one LISTEN connection of a listener and turns NOTIFYs into `wake` events.
 *
 * It only ever runs `LISTEN` and `SELECT 1` — never a transaction, so it cannot hold back
 * Postgres' notification queue. When the connection drops or stops answering pings, it reconnects
 * with backoff forever and emits `connected` again, so the bridge sweeps the table for anything
 * whose wake-up was lost meanwhile.
 *
 * Events: `wake` (a NOTIFY arrived), `connected` (after each successful (re)connect).
 */
export class WakeupListener extends EventEmitter {
  private client: pg.Client | undefined;
  private readonly abort = new AbortController();
  private pingTimer: NodeJS.Timeout | undefined;
  private reconnecting: Promise<void> | undefined;
  private stopped = false;
  private selfTested = false;
  private readonly reconnectDelayMs: number;
  private readonly pingIntervalMs: number;

  constructor(private readonly options: WakeupListenerOptions) {
    super();
    this.reconnectDelayMs = options.reconnectDelayMs ?? 1000;
    this.pingIntervalMs = options.pingIntervalMs ?? 10_000;
  }

  /** Whether the LISTEN connection is up right now. */
  get isConnected(): boolean {
    return this.client !== undefined && !this.reconnecting;
  }

  /** Starts connecting in the background; resolves once the first attempt settled. */
  start(): Promise<void> {
    this.reconnecting = this.connectWithRetry();
    return this.reconnecting;
  }

  /** Closes the connection and stops reconnecting. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.abort.abort();
    clearInterval(this.pingTimer);
    const client = this.client;
    this.client = undefined;
    if (client)
      await withTimeout(client.end(), 5000, 'closing LISTEN connection').catch(() => undefined);
  }

  private async connectOnce(): Promise<void> {
    const client = new pg.Client({
      connectionString: this.options.url,
      keepAlive: true,
      connectionTimeoutMillis: 10_000,
      application_name: 'pgq-bridge listen',
      ...sessionSettings('wakeups'),
    });
    client.on('error', (error) => this.lost(client, error));
    client.on('end', () => this.lost(client, new Error('connection ended')));
    try {
      await client.connect();
      await client.query(this.options.store.listenSql());
    } catch (error) {
      client.removeAllListeners('end');
      await client.end().catch(() => undefined);
      throw error;
    }
    client.on('notification', (message) => {
      // Only the wake-up channel wakes (the self-test's channel is its own business).
      if (message.channel !== this.options.store.wakeChannel) return;
      if (message.payload) {
        // pgq-bridge's own wake-ups carry no payload; anything else is someone else's NOTIFY.
        this.options.logger.warn(
          { channel: message.channel, payloadBytes: message.payload.length },
          'ignoring unexpected NOTIFY payload on the wake-up channel (treated as a plain wake-up)',
        );
      }
      this.emit('wake');
    });
    this.client = client;
  }

  private async connectWithRetry(): Promise<void> {
    try {
      await pRetry(() => this.connectOnce(), {
        retries: Infinity,
        minTimeout: this.reconnectDelayMs,
        maxTimeout: 30_000,
        factor: 2,
        signal: this.abort.signal,
        onFailedAttempt: ({ error, attemptNumber }) => {
          this.options.logger.warn(
            { err: redactSecrets(errorMessage(error)), attempt: attemptNumber },
            'LISTEN connection failed; retrying',
          );
        },
      });
    } catch (error) {
      if (this.stopped) return;
      throw error;
    }
    if (this.stopped) {
      await this.client?.end().catch(() => undefined);
      return;
    }
    if (this.options.selfTestNotify && !this.selfTested && this.client) {
      try {
        await this.selfTest(this.client, this.options.selfTestNotify);
      } catch (error) {
        if (error instanceof PgqError && error.code === 'PGQ_LISTEN_POOLED') throw error;
        // The connection failed mid-test: no verdict; the usual reconnect takes over.
        this.options.logger.warn(
          { err: redactSecrets(errorMessage(error)), check: 'listen-self-test' },
          'LISTEN self-test skipped',
        );
        this.selfTested = true;
      }
      if (this.stopped) return;
    }
    this.reconnecting = undefined;
    this.options.logger.info('LISTEN connection ready');
    this.schedulePing();
    this.emit('connected');
  }

  /**
   * LISTENs on a one-off channel, NOTIFYs it through another connection and waits for it. No
   * answer means the LISTEN connection is not a session of its own (a transaction-mode pooler):
   * throws `PGQ_LISTEN_POOLED`. A failure to send is no verdict: it is logged and skipped.
   */
  private async selfTest(
    client: pg.Client,
    notify: (channel: string) => Promise<void>,
  ): Promise<void> {
    const channel = `pgq_bridge_selftest_${randomBytes(6).toString('hex')}`;
    let onNotification: ((message: pg.Notification) => void) | undefined;
    const received = new Promise<void>((resolve) => {
      onNotification = (message) => {
        if (message.channel === channel) resolve();
      };
      client.on('notification', onNotification);
    });
    try {
      await client.query(`LISTEN ${quoteIdent(channel)}`);
      try {
        await notify(channel);
      } catch (error) {
        this.options.logger.warn(
          { err: redactSecrets(errorMessage(error)), check: 'listen-self-test' },
          'LISTEN self-test skipped: could not send its NOTIFY',
        );
        this.selfTested = true;
        return;
      }
      const timeoutMs = this.options.selfTestTimeoutMs ?? 5000;
      await withTimeout(received, timeoutMs, 'self-test NOTIFY').catch(() => {
        throw new PgqError(
          'PGQ_LISTEN_POOLED',
          `the LISTEN connection did not receive a self-test NOTIFY within ${timeoutMs} ms: it goes ` +
            'through a transaction-mode pooler (PgBouncer?), where LISTEN does not work. Set ' +
            'LISTEN_DATABASE_URL (--listen-database-url) to a direct Postgres URL (or a session-mode pool)',
        );
      });
      this.selfTested = true;
      this.options.logger.debug({ check: 'listen-self-test' }, 'LISTEN self-test passed');
    } finally {
      if (onNotification) client.off('notification', onNotification);
      await client.query(`UNLISTEN ${quoteIdent(channel)}`).catch(() => undefined);
    }
  }

  private lost(client: pg.Client, error: Error): void {
    if (this.stopped || client !== this.client) return;
    this.client = undefined;
    clearInterval(this.pingTimer);
    client.removeAllListeners('end');
    client.end().catch(() => undefined);
    this.options.logger.warn(
      { err: redactSecrets(errorMessage(error)) },
      'LISTEN connection lost; reconnecting',
    );
    this.reconnecting ??= this.connectWithRetry().catch((err: unknown) => {
      this.options.logger.error({ err: errorMessage(err) }, 'LISTEN reconnect gave up');
    });
  }

  private schedulePing(): void {
    clearInterval(this.pingTimer);
    this.pingTimer = setInterval(() => {
      const client = this.client;
      if (!client) return;
      withTimeout(client.query('SELECT 1'), 5000, 'LISTEN connection did not answer a ping').catch(
        (error: unknown) =>
          this.lost(client, error instanceof Error ? error : new Error(String(error))),
      );
    }, this.pingIntervalMs);
    this.pingTimer.unref();
  }
}
