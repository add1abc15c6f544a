/**
 * pgq-bridge: durable PostgreSQL notifications, delivered as BullMQ jobs.
 * @packageDocumentation
 */
export { notify, type NotifyOptions } from './notify.js';
export {
  defineConsumer,
  loadConsumersDir,
  type ConsumerDefinition,
  type ConsumerOptions,
  type SingleConsumerDefinition,
  type BatchConsumerDefinition,
  type Backoff,
  type KeepJobs,
  type ChannelRef,
  type PayloadOfChannels,
} from './consumers.js';
export type { Notification, Change } from './notification.js';
export {
  defineChannel,
  type Channel,
  type ChannelOptions,
  type PayloadValidator,
  type StandardSchemaV1,
  type StandardSchemaResult,
} from './channel.js';
export {
  withContext,
  setContext,
  type NotificationContext,
  type TransactionClient,
} from './context.js';
export {
  addTrigger,
  removeTrigger,
  listTriggers,
  triggerSql,
  DEFAULT_CHANGE_CHANNEL,
  type AddTriggerOptions,
  type TriggerTargetOptions,
  type TableRef,
  type InstalledTrigger,
  type TriggerEvent,
} from './triggers.js';
export { PgqError, PermanentError, UsageError, ConfigError } from './errors.js';
export {
  defineConfig,
  resolveConfig,
  type ConfigInput,
  type Settings,
  type ResolvedConfig,
} from './config.js';
export { migrate, migrationScript, type MigrateOptions, type MigrateResult } from './db/migrate.js';
export { createListener, jobIdFor, type Listener, type ListenerOptions } from './bridge.js';
export { createWorker, type PgqWorker, type WorkerOptions } from './worker.js';
export { reconcile, type ReconcileOptions, type ReconcileResult } from './reconcile.js';
export { cleanup, type CleanupOptions, type CleanupResult } from './cleanup.js';
export { createLogger, type Logger } from './log.js';
export {
  status,
  formatStatus,
  type StatusOptions,
  type StatusReport,
  type ConsumerStatus,
  type JobCounts,
} from './status.js';
export { assertSchemaCurrent, runStartupChecks, type StartupCheckOptions } from './checks.js';
export {
  createRedis,
  queuePrefix,
  checkEvictionPolicy,
  type RedisConnection,
  type RedisSettings,
} from './redis.js';
export {
  createSupervisor,
  supervisorStopRequested,
  type Supervisor,
  type SupervisorOptions,
} from './supervisor.js';
export {
  Metrics,
  startMetricsServer,
  type MetricsOptions,
  type MetricsServerOptions,
  type BatchEvent,
  type JobOutcome,
} from './metrics.js';
export {
  createBoardRouter,
  startBoard,
  parseBasicAuth,
  type BoardOptions,
  type BoardRouter,
  type BoardServer,
  type StartBoardOptions,
  type BasicAuth,
} from './board.js';
export { startAll, type StartAllOptions, type AllInOne } from './start.js';
