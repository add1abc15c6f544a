import { AggregatorRegistry, Gauge, Registry } from 'prom-client';
import type { Metrics } from './metrics.js';

/** The supervisor's own gauges: worker processes running and restarts so far. */
export function supervisorRegistry(supervisor: {
  readonly pids: ReadonlyMap<number, number>;
  readonly restarts: number;
}): Registry {
  const registry = new Registry();
  new Gauge({
    name: 'pgq_bridge_worker_processes',
    help: 'Worker processes the supervisor is running',
    registers: [registry],
    collect() {
      this.set(supervisor.pids.size);
    },
  });
  new Gauge({
    name: 'pgq_bridge_worker_restarts',
    help: 'Worker processes the supervisor restarted since it started',
    registers: [registry],
    collect() {
      this.set(supervisor.restarts);
    },
  });
  return registry;
}

/**
 * In a supervised worker process: lets the supervisor collect these metrics over IPC (prom-client's
 * cluster aggregation), so `work --processes N --metrics-port P` serves one sum for all of them.
 */
export function exposeToSupervisor(metrics: Metrics): void {
  AggregatorRegistry.setRegistries([metrics.registry]);
  // Constructing one installs the IPC listener that answers the supervisor.
  new AggregatorRegistry();
}

/**
 * In a supervisor: the metrics of every worker process, summed (gauges read from the database
 * take the maximum), followed by `own` (the supervisor's gauges, which no child reports).
 */
export function supervisorMetricsText(own: Registry): () => Promise<string> {
  const aggregator = new AggregatorRegistry();
  return async () => {
    const [children, mine] = await Promise.all([
      aggregator.clusterMetrics().catch(() => ''),
      own.metrics(),
    ]);
    return `${children.trimEnd()}\n${mine}`;
  };
}
