/**
 * pgq-bridge: durable PostgreSQL notifications, delivered as BullMQ jobs.
 * @packageDocumentation
 */
export { notify, type NotifyOptions } from './produce/notify.js';
export {
  defineConsumer,
  type ConsumerDefinition,
  type ConsumerOptions,
  type SingleConsumerDefinition,
  type BatchConsumerDefinition,
  type PlainSingleConsumerDefinition,
  type TransactionalSingleConsumerDefinition,
  type PlainBatchConsumerDefinition,
  type TransactionalBatchConsumerDefinition,
  type PackedConsumerDefinition,
  type PlainPackedConsumerDefinition,
  type TransactionalPackedConsumerDefinition,
  type Backoff,
  type KeepJobs,
  type ChannelRef,
  type PayloadOfChannels,
} from './consume/consumers.js';
export { loadConsumersDir } from './consume/consumers-dir.js';
export type { Notification, Change } from './consume/notification.js';
export type { HandlerContext, TransactionalHandlerContext } from './consume/attempt.js';
export {
  defineChannel,
  type Channel,
  type ChannelOptions,
  type PayloadValidator,
  type StandardSchemaV1,
  type StandardSchemaResult,
} from './produce/channel.js';
export {
  withContext,
  setContext,
  type NotificationContext,
  type TransactionClient,
} from './produce/context.js';
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
} from './produce/triggers.js';
export { PgqError, PermanentError, UsageError, ConfigError } from './errors.js';
export {
  defineConfig,
  resolveConfig,
  type ConfigInput,
  type Settings,
  type ResolvedConfig,
} from './config.js';
export { migrate, migrationScript, type MigrateOptions, type MigrateResult } from './db/migrate.js';
export { createListener, type Listener, type ListenerOptions } from './bridge/listener.js';
export { jobIdFor } from './bridge/plan.js';
export { createWorker } from './consume/worker.js';
export type { PgqWorker, WorkerOptions } from './consume/worker-options.js';
export { reconcile, type ReconcileOptions, type ReconcileResult } from './recover/reconcile.js';
export { cleanup, type CleanupOptions, type CleanupResult } from './recover/cleanup.js';
export { createLogger, type Logger } from './log.js';
export {
  status,
  formatStatus,
  type StatusOptions,
  type StatusReport,
  type ConsumerStatus,
  type JobCounts,
} from './operate/status.js';
export {
  assertSchemaCurrent,
  runStartupChecks,
  type StartupCheckOptions,
} from './operate/checks.js';
export {
  createRedis,
  queuePrefix,
  singleSlotPrefix,
  checkEvictionPolicy,
  type RedisConnection,
  type RedisSettings,
} from './redis.js';
export {
  consumerQueueOptions,
  openConsumerQueue,
  consumersWithSingleSlotKeys,
  type ConsumerQueueOptions,
  type QueueLayoutSettings,
} from './queue-layout.js';
export {
  createSupervisor,
  supervisorStopRequested,
  type Supervisor,
  type SupervisorOptions,
} from './operate/supervisor.js';
export {
  Metrics,
  type MetricsOptions,
  type BatchEvent,
  type JobOutcome,
} from './operate/metrics.js';
export { startMetricsServer, type MetricsServerOptions } from './operate/metrics-server.js';
export {
  createBoardRouter,
  startBoard,
  parseBasicAuth,
  type BoardOptions,
  type BoardRouter,
  type BoardServer,
  type StartBoardOptions,
  type BasicAuth,
} from './operate/board.js';
export {
  listConsumers,
  removeConsumer,
  skipDelivery,
  type ConsumerAdminOptions,
  type ConsumerAdminSettings,
  type ConsumerListing,
  type RemoveConsumerOptions,
  type RemoveConsumerResult,
  type SkipDeliveryOptions,
  type SkipDeliveryResult,
} from './operate/consumers.js';
export type { ConsumerRecord } from './db/consumer-admin.js';
export { startAll, type StartAllOptions, type AllInOne } from './operate/start.js';
