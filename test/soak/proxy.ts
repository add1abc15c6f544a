/**
 * A small TCP proxy on loopback that the soak puts between the bridge's processes and Postgres or
 * Redis, so the chaos driver can cut that network path without touching the server.
 *
 * Two ways to cut it:
 * - `reset`: every open connection is reset (RST) and new ones are reset at once, as when a
 *   firewall rejects or a NAT forgets the flows. Clients see errors right away.
 * - `blackhole`: nothing flows either way and new connections hang, as in a partition: TCP keeps
 *   the connections, clients see nothing until the path heals (or their own timeouts fire).
 *   After `heal()` the held bytes flow on and held connections are connected upstream.
 *
 * And one way to stall it: `holdReplies()` keeps forwarding client→server bytes but holds every
 * server→client byte (replies) until `heal()`: the server executes what it is sent (Redis accepts
 * an `addBulk`), the client hears nothing (the listener cannot know, and its COMMIT waits).
 */
import { createServer, connect, type Server, type Socket } from 'node:net';

/** How a cut behaves; see the module comment. */
export type CutMode = 'reset' | 'blackhole';

/** Counters of one proxy. */
export interface ProxyStats {
  /** Client connections accepted. */
  connections: number;
  /** Connections reset by a `reset` cut (open ones and refused new ones). */
  reset: number;
  /** Connections held by a `blackhole` cut (open ones and new ones). */
  held: number;
  /** Cuts so far. */
  cuts: number;
  /** Reply holds so far. */
  holds: number;
}

/** One proxied connection: the client side and its upstream, with manual flow control. */
interface Pair {
  client: Socket;
  upstream: Socket | undefined;
}

const LOOPBACK = '127.0.0.1';

/** A TCP proxy from 127.0.0.1:`port` to `targetHost:targetPort`, which can be cut and healed. */
export class TcpProxy {
  readonly stats: ProxyStats = { connections: 0, reset: 0, held: 0, cuts: 0, holds: 0 };
  private server: Server | undefined;
  private readonly pairs = new Set<Pair>();
  private mode: CutMode | undefined;
  /** Server→client bytes are held (see {@link holdReplies}). */
  private holding = false;
  private listenPort = 0;

  constructor(
    private readonly targetPort: number,
    private readonly targetHost = LOOPBACK,
  ) {}

  /** The port clients connect to (after `start`). */
  get port(): number {
    return this.listenPort;
  }

  /** Whether the path is cut right now. */
  get isCut(): boolean {
    return this.mode !== undefined;
  }

  /** Starts listening on 127.0.0.1 (a free port unless `port` is given); resolves with the port. */
  start(port = 0): Promise<number> {
    return new Promise((resolve, reject) => {
      const server = createServer((client) => this.accept(client));
      server.once('error', reject);
      server.listen(port, LOOPBACK, () => {
        const address = server.address();
        if (address === null || typeof address === 'string') {
          reject(new Error('proxy: could not read its own address'));
          return;
        }
        this.server = server;
        this.listenPort = address.port;
        resolve(address.port);
      });
    });
  }

  /** Cuts the path (see {@link CutMode}) until {@link heal}. */
  cut(mode: CutMode): void {
    if (this.mode !== undefined || this.holding) this.heal();
    this.mode = mode;
    this.stats.cuts++;
    for (const pair of [...this.pairs]) {
      if (mode === 'reset') this.reset(pair);
      else this.hold(pair);
    }
  }

  /** Holds every reply (server→client) until {@link heal}; requests still reach the server. */
  holdReplies(): void {
    if (this.mode !== undefined) this.heal();
    this.holding = true;
    this.stats.holds++;
    for (const pair of this.pairs) pair.upstream?.pause();
  }

  /** Restores the path: held bytes flow again, held connections are connected upstream. */
  heal(): void {
    const mode = this.mode;
    this.mode = undefined;
    if (this.holding) {
      this.holding = false;
      for (const pair of this.pairs) pair.upstream?.resume();
    }
    if (mode !== 'blackhole') return;
    for (const pair of [...this.pairs]) {
      if (pair.upstream === undefined) this.connectUpstream(pair);
      else {
        pair.client.resume();
        pair.upstream.resume();
      }
    }
  }

  /** Closes every connection and stops listening. */
  async close(): Promise<void> {
    this.mode = undefined;
    for (const pair of [...this.pairs]) this.destroy(pair);
    const server = this.server;
    this.server = undefined;
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  private accept(client: Socket): void {
    this.stats.connections++;
    client.setNoDelay(true);
    client.on('error', () => undefined);
    const pair: Pair = { client, upstream: undefined };
    if (this.mode === 'reset') {
      this.stats.reset++;
      client.resetAndDestroy();
      return;
    }
    this.pairs.add(pair);
    client.once('close', () => this.destroy(pair));
    if (this.mode === 'blackhole') {
      // Accepted by the kernel, but nothing answers until the path heals.
      this.stats.held++;
      client.pause();
      return;
    }
    this.connectUpstream(pair);
  }

  private connectUpstream(pair: Pair): void {
    const { client } = pair;
    if (client.destroyed) return;
    const upstream = connect(this.targetPort, this.targetHost);
    pair.upstream = upstream;
    upstream.setNoDelay(true);
    upstream.on('error', () => undefined);
    upstream.once('close', () => this.destroy(pair));
    // Manual forwarding (not pipe()), so that a blackhole can stop both directions at will.
    client.on('data', (chunk: Buffer) => {
      if (!upstream.write(chunk)) client.pause();
    });
    upstream.on('data', (chunk: Buffer) => {
      if (!client.write(chunk)) upstream.pause();
    });
    upstream.on('drain', () => {
      if (this.mode !== 'blackhole') client.resume();
    });
    client.on('drain', () => {
      if (this.mode !== 'blackhole' && !this.holding) upstream.resume();
    });
    client.on('end', () => upstream.end());
    upstream.on('end', () => client.end());
    client.resume();
    if (this.holding) upstream.pause();
  }

  private hold(pair: Pair): void {
    this.stats.held++;
    pair.client.pause();
    pair.upstream?.pause();
  }

  private reset(pair: Pair): void {
    this.stats.reset++;
    this.pairs.delete(pair);
    pair.client.resetAndDestroy();
    pair.upstream?.resetAndDestroy();
  }

  private destroy(pair: Pair): void {
    if (!this.pairs.delete(pair)) return;
    pair.client.destroy();
    pair.upstream?.destroy();
  }
}
