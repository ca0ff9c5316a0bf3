#!/bin/sh
# Writes the node's configuration from the environment onto the data volume (the root filesystem may be read-only),
# then runs the server in the foreground, logging to stdout.
set -eu
umask 077
{
  echo "listeners.tcp.default = 5672"
  echo "management.tcp.port = 15672"
  echo "loopback_users = none"
  if [ -n "${RABBITMQ_DEFAULT_USER:-}" ]; then echo "default_user = ${RABBITMQ_DEFAULT_USER}"; fi
  if [ -n "${RABBITMQ_DEFAULT_PASS:-}" ]; then echo "default_pass = ${RABBITMQ_DEFAULT_PASS}"; fi
  echo "default_user_tags.administrator = true"
  echo "log.console = true"
  echo "log.console.level = info"
  echo "log.file = false"
} > "${RABBITMQ_CONFIG_FILE}.conf"
exec /usr/lib/rabbitmq/bin/rabbitmq-server "$@"
