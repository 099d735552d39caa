"""Celery's settings that celeriac accepts without using, each with what celeriac does instead.

A Celery (or Django) configuration names many settings that only mean
something to Celery's own machinery: kombu's connection pool, result stores
celeriac does not have, the prefork pool's internals. Refusing them would
make a working Celery project fail to start; ignoring them silently would
hide that they do nothing. So each one here is accepted and logged once, at
worker start and at a client's first send (``Settings.warn_unused``), with
the reason below. ``tests/test_celery_settings.py`` checks that every name in
Celery's settings table is either a celeriac setting or listed here.
"""

from __future__ import annotations

_GROUPS: dict[str, tuple[str, ...]] = {
    "beat keeps its schedule state in the broker's storage, written with every send "
    "(no shelve file); beat_catch_up decides what runs after a time without any beat": (
        "beat_schedule_filename",
        "beat_sync_every",
        "beat_cron_starting_deadline",
    ),
    "beat has no mailbox of its own: `celeriac beat --dry-run` shows the leader and the "
    "next runs": (
        "beat_enable_remote_control",
        "beat_remote_control_max_tick_age",
    ),
    "the broker is one URL: put host, port, user, password, vhost and TLS in broker_url "
    "(amqps://, rediss://, ?cafile=...)": (
        "broker_host",
        "broker_port",
        "broker_user",
        "broker_password",
        "broker_vhost",
        "broker_transport",
        "broker_login_method",
        "broker_use_ssl",
        "broker_read_url",
        "broker_write_url",
        "broker_failover_strategy",
    ),
    "workers reconnect forever with jittered backoff (also at start-up); clients fail fast "
    "with BrokerUnavailable after broker_connection_timeout": (
        "broker_connection_retry",
        "broker_connection_retry_on_startup",
        "broker_connection_max_retries",
        "broker_channel_error_retry",
        "task_publish_retry",
        "task_publish_retry_policy",
        "worker_cancel_long_running_tasks_on_connection_loss",
    ),
    "each event loop holds one broker connection, checked by the worker's heartbeat every "
    "broker_lease_timeout / 4": (
        "broker_heartbeat",
        "broker_heartbeat_checkrate",
        "broker_pool_limit",
        "broker_pool_acquire_timeout",
    ),
    "delays wait in the broker (RabbitMQ: celeriac's TTL delay ladder), never in a worker": (
        "broker_native_delayed_delivery_queue_type",
        "worker_eta_task_limit",
    ),
    "celeriac has no such result store: result_backend takes sqlite://, redis://, "
    "postgresql://, rpc:// or memory:// URLs": (
        "cache_backend",
        "cache_backend_options",
        "cassandra_entry_ttl",
        "cassandra_keyspace",
        "cassandra_port",
        "cassandra_read_consistency",
        "cassandra_servers",
        "cassandra_bundle_path",
        "cassandra_table",
        "cassandra_write_consistency",
        "cassandra_auth_provider",
        "cassandra_auth_kwargs",
        "cassandra_options",
        "s3_access_key_id",
        "s3_secret_access_key",
        "s3_bucket",
        "s3_base_path",
        "s3_endpoint_url",
        "s3_region",
        "azureblockblob_container_name",
        "azureblockblob_retry_initial_backoff_sec",
        "azureblockblob_retry_increment_base",
        "azureblockblob_retry_max_attempts",
        "azureblockblob_base_path",
        "azureblockblob_connection_timeout",
        "azureblockblob_read_timeout",
        "gcs_bucket",
        "gcs_project",
        "gcs_base_path",
        "gcs_ttl",
        "couchbase_backend_settings",
        "arangodb_backend_settings",
        "mongodb_backend_settings",
        "cosmosdbsql_database_name",
        "cosmosdbsql_collection_name",
        "cosmosdbsql_consistency_level",
        "cosmosdbsql_max_retry_attempts",
        "cosmosdbsql_max_retry_wait_time",
        "elasticsearch_retry_on_timeout",
        "elasticsearch_max_retries",
        "elasticsearch_timeout",
        "elasticsearch_save_meta_as_text",
        "database_url",
        "database_engine_options",
        "database_engine_callback",
        "database_short_lived_sessions",
        "database_table_schemas",
        "database_table_names",
        "database_create_tables_at_setup",
    ),
    "the Redis result store takes everything from the result_backend URL "
    "(redis://user:password@host:port/db, rediss:// for TLS)": (
        "redis_backend_use_ssl",
        "redis_db",
        "redis_host",
        "redis_max_connections",
        "redis_username",
        "redis_password",
        "redis_port",
        "redis_socket_timeout",
        "redis_socket_connect_timeout",
        "redis_retry_on_timeout",
        "redis_socket_keepalive",
        "result_backend_transport_options",
    ),
    "result stores write once, fail with BackendError, and keep results result_expires "
    "seconds whatever their state": (
        "result_backend_always_retry",
        "result_backend_max_retries",
        "result_backend_base_sleep_between_retries_ms",
        "result_backend_max_sleep_between_retries_ms",
        "result_failure_expires",
        "result_persistent",
        "result_cache_max",
        "result_exchange",
        "result_exchange_type",
    ),
    "chords count their completions atomically in the result store: no polling, no join "
    "timeout, and the count lives as long as the results": (
        "result_chord_expires",
        "result_chord_retry_interval",
        "result_chord_join_timeout",
        "task_allow_error_cb_on_chord_header",
    ),
    "messages and results are not compressed": ("task_compression", "result_compression"),
    "celeriac has no message signing (Celery's 'auth' serializer); pickle is refused unless "
    "named in accept_content, and then it is not signed": (
        "security_certificate",
        "security_cert_store",
        "security_key",
        "security_key_password",
        "security_digest",
    ),
    "celeriac has no remote control over the broker yet": (
        "control_queue_ttl",
        "control_queue_expires",
        "control_queue_exclusive",
        "control_queue_durable",
        "control_exchange",
        "worker_enable_remote_control",
        "worker_direct",
    ),
    "events travel on Celery's default entities: the 'celeryev' exchange and, on RabbitMQ, "
    "receiver queues 'celeryev.<uuid>', exclusive and auto-deleted, with a 5 s message TTL, "
    "that expire 60 s after their last use": (
        "event_exchange",
        "event_queue_ttl",
        "event_queue_expires",
        "event_queue_prefix",
        "event_queue_exclusive",
        "event_queue_durable",
    ),
    "acknowledgement follows task_acks_late and task_reject_on_worker_lost; a lost task is "
    "delivered again and dead-lettered after broker_max_deliveries": (
        "task_acks_on_failure_or_timeout",
        "task_acks_on_failure",
        "task_acks_on_timeout",
        "task_retry_on_worker_lost",
        "worker_lost_wait",
        "worker_proc_alive_timeout",
        "worker_deduplicate_successful_tasks",
        "worker_state_db",
    ),
    "messages are always persistent Celery protocol v2, with priorities 0-9 on every "
    "broker (9 highest)": (
        "task_protocol",
        "task_default_delivery_mode",
        "task_queue_max_priority",
        "task_inherit_parent_priority",
    ),
    "queues are declared by the broker (RabbitMQ: classic, or quorum with "
    "broker_transport_options queue_type='quorum')": (
        "task_default_queue_type",
        "task_create_missing_queue_type",
        "worker_detect_quorum_queues",
    ),
    "eager mode returns the result to the caller and stores nothing": ("task_store_eager_result",),
    "a failed task's result stores its exception type, message and traceback text; "
    "the exception is re-raised by name only if that type is importable": (
        "task_remote_tracebacks",
        "task_store_errors_even_if_ignored",
    ),
    "argsrepr and kwargsrepr are cut at a fixed depth and length (reprlib)": (
        "task_repr_maxlevels",
    ),
    "the worker's shape is worker_pool, worker_concurrency and worker_prefetch_multiplier "
    "(autoscale: worker_autoscale, built in, no class by import path); "
    "rate limits and soft shutdown are not offered yet": (
        "worker_agent",
        "worker_autoscaler",
        "worker_consumer",
        "worker_timer",
        "worker_timer_precision",
        "worker_pool_putlocks",
        "worker_pool_restarts",
        "worker_pool_start_method",
        "worker_disable_prefetch",
        "worker_enable_prefetch_count_reduction",
        "worker_disable_rate_limits",
        "worker_soft_shutdown_timeout",
        "worker_enable_soft_shutdown_on_idle",
    ),
    "the worker logs with celeriac's own format to stderr (`celeriac worker -l LEVEL`)": (
        "worker_log_color",
        "worker_log_datefmt",
        "worker_log_format",
        "worker_task_log_datefmt",
        "worker_task_log_format",
        "worker_redirect_stdouts",
        "worker_redirect_stdouts_level",
    ),
}

UNUSED: dict[str, str] = {name: reason for reason, names in _GROUPS.items() for name in names}
"""Celery setting name -> what celeriac does instead of what the setting asks."""
