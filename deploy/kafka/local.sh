#!/usr/bin/env bash
# A single-node Apache Kafka broker (KRaft, combined broker + controller) for
# development and tests, built from the jars Maven Central publishes; optionally a second
# broker that joins it (below).
#
#   deploy/kafka/local.sh start     start (or reuse) a broker; last line = bootstrap address
#   deploy/kafka/local.sh stop      stop it by PID (SIGTERM, then SIGKILL after a grace period)
#   deploy/kafka/local.sh status    exit 0 and print the address if it is running
#   deploy/kafka/local.sh fetch     only resolve the jars into the cache
#
# Environment:
#   KAFKA_PORT               client port (default 9092); the controller uses KAFKA_CONTROLLER_PORT
#   KAFKA_CONTROLLER_PORT    default KAFKA_PORT + 1
#   KAFKA_HEAP               JVM heap, default 512m
#   KAFKA_STATE_DIR          data, logs, pid (default ${TMPDIR:-/tmp}/fraudscore-kafka-$KAFKA_PORT)
#   FRAUDSCORE_CACHE         jar cache (default ${XDG_CACHE_HOME:-~/.cache}/fraudscore)
#   KAFKA_START_TIMEOUT      seconds to wait for the broker to accept requests (default 90)
#   KAFKA_FRESH=1            wipe the state directory before starting
#
# TLS + SASL (optional): with KAFKA_SASL_SSL_PORT set the broker also listens there with
# SASL_SSL and SCRAM-SHA-512 (the PLAINTEXT listener stays, on 127.0.0.1, for tools):
#   KAFKA_SASL_SSL_PORT              port of the SASL_SSL listener
#   KAFKA_SSL_KEYSTORE               PKCS12 keystore with the broker key + certificate
#                                    (deploy/kafka/dev-certs.sh DIR makes one)
#   KAFKA_SSL_KEYSTORE_PASSWORD_FILE file holding the keystore password
#   KAFKA_SCRAM_USER                 a SCRAM-SHA-512 user created when the storage is formatted
#   KAFKA_SCRAM_PASSWORD_FILE        file holding that user's password
# Users are written at format time, so change them with KAFKA_FRESH=1.
#
# Behind a fault proxy (optional; the network fault tests, deploy/toxiproxy/local.sh): with
# KAFKA_PROXIED_PORT set the broker also listens there (plaintext) and advertises that listener
# at 127.0.0.1:$KAFKA_PROXIED_ADVERTISED_PORT, the proxy's port, so that clients bootstrapping
# through the proxy keep talking through it; clients of KAFKA_PORT are not proxied.
#   KAFKA_PROXIED_PORT               port of the proxied listener (the proxy's upstream)
#   KAFKA_PROXIED_ADVERTISED_PORT    the proxy's listening port
#
# A second broker in the same cluster (optional; the coordinator fault test): a first node is
# started with KAFKA_REPLICATION=2 (its internal topics, the group coordinator's among them, then
# wait for a second broker and keep two replicas), and a second one, broker only, joins it:
#   KAFKA_REPLICATION        replicas of the internal topics (default 1; 2 needs a second broker)
#   KAFKA_NODE_ID            this node's id (default 1)
#   KAFKA_JOIN               the first node's controller (host:port): start as a broker only,
#                            in its cluster (no controller of its own on KAFKA_CONTROLLER_PORT)
#   KAFKA_CLUSTER_ID         the cluster to join (`local.sh cluster-id` on the first node says it)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
kafka_version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/pom.xml")"
port="${KAFKA_PORT:-9092}"
controller_port="${KAFKA_CONTROLLER_PORT:-$((port + 1))}"
heap="${KAFKA_HEAP:-512m}"
state="${KAFKA_STATE_DIR:-${TMPDIR:-/tmp}/fraudscore-kafka-$port}"
cache="${FRAUDSCORE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fraudscore}"
jars="$cache/kafka-$kafka_version/libs"
timeout="${KAFKA_START_TIMEOUT:-90}"
pidfile="$state/broker.pid"
bootstrap="127.0.0.1:$port"
sasl_ssl_port="${KAFKA_SASL_SSL_PORT:-}"
proxied_port="${KAFKA_PROXIED_PORT:-}"
proxied_advertised_port="${KAFKA_PROXIED_ADVERTISED_PORT:-}"
replication="${KAFKA_REPLICATION:-1}"
node_id="${KAFKA_NODE_ID:-1}"
join="${KAFKA_JOIN:-}"

log() { echo "local-kafka: $*" >&2; }
die() { log "error: $*"; exit 1; }

fetch() {
  if [[ -f "$jars/.complete" ]]; then
    return
  fi
  command -v mvn >/dev/null || die "Maven (mvn) is needed to fetch Kafka $kafka_version; install it (apt-get install maven)"
  command -v java >/dev/null || die "Java 17+ is needed to run Kafka $kafka_version; install a JDK (apt-get install openjdk-17-jre-headless)"
  log "resolving Apache Kafka $kafka_version from Maven Central into $jars"
  rm -rf "$jars"
  mkdir -p "$jars"
  # Maven's output goes to a log, shown (without terminal escape codes, which Maven 3.8
  # writes even in batch mode) only when it fails.
  local mvn_log="$cache/kafka-$kafka_version/mvn.log"
  if ! mvn -q -B --no-transfer-progress -Dstyle.color=never -f "$here/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$jars" >"$mvn_log" 2>&1; then
    sed 's/\x1b\[[0-9;]*[A-Za-z]//g' "$mvn_log" | tail -n 30 >&2
    die "mvn could not resolve Kafka $kafka_version (see the output above, all of it in $mvn_log)"
  fi
  touch "$jars/.complete"
  log "$(ls "$jars"/*.jar | wc -l) jars in $jars"
}

running_pid() {
  [[ -f "$pidfile" ]] || return 1
  local pid
  pid="$(cat "$pidfile")"
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

java_cmd() {
  # An array, so that the classpath wildcard reaches java unexpanded.
  local opts
  read -r -a opts <<<"${KAFKA_JVM_OPTS:--Xms${heap} -Xmx${heap} -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true}"
  JAVA=(java "${opts[@]}" "-Dlog4j2.configurationFile=$state/log4j2.properties"
    "-Dkafka.logs.dir=$state/logs" -cp "$jars/*")
}

secret_file() {  # the content of the file named by variable $1, which must be set
  local name="$1" file="${!1:-}"
  [[ -n "$file" ]] || die "$name is required with KAFKA_SASL_SSL_PORT"
  [[ -r "$file" ]] || die "$name=$file: cannot read it"
  tr -d '\n' <"$file"
}

write_config() {
  mkdir -p "$state/data" "$state/logs"
  local listeners="PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port"
  local roles="broker,controller" quorum="127.0.0.1:$controller_port"
  if [[ -n "$join" ]]; then
    [[ -n "${KAFKA_CLUSTER_ID:-}" ]] || die "KAFKA_CLUSTER_ID is required with KAFKA_JOIN (local.sh cluster-id on the first node)"
    listeners="PLAINTEXT://127.0.0.1:$port"
    roles="broker"
    quorum="$join"
  fi
  local advertised="PLAINTEXT://127.0.0.1:$port"
  local protocols="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
  if [[ -n "$sasl_ssl_port" ]]; then
    listeners+=",SASL_SSL://127.0.0.1:$sasl_ssl_port"
    advertised+=",SASL_SSL://127.0.0.1:$sasl_ssl_port"
    protocols+=",SASL_SSL:SASL_SSL"
  fi
  if [[ -n "$proxied_port" ]]; then
    [[ -n "$proxied_advertised_port" ]] || die "KAFKA_PROXIED_ADVERTISED_PORT (the proxy's port) is required with KAFKA_PROXIED_PORT"
    listeners+=",PROXIED://127.0.0.1:$proxied_port"
    advertised+=",PROXIED://127.0.0.1:$proxied_advertised_port"
    protocols+=",PROXIED:PLAINTEXT"
  fi
  umask 077
  cat >"$state/server.properties" <<EOF
# Written by deploy/kafka/local.sh; KRaft for development and tests (one node, or a second
# broker joining the first).
process.roles=$roles
node.id=$node_id
listeners=$listeners
advertised.listeners=$advertised
controller.listener.names=CONTROLLER
listener.security.protocol.map=$protocols
inter.broker.listener.name=PLAINTEXT
controller.quorum.bootstrap.servers=$quorum
log.dirs=$state/data
num.partitions=1
# A missing topic must be an error that the sidecar reports, not a topic created by a typo.
auto.create.topics.enable=false
# Internal topics: one replica on one node; KAFKA_REPLICATION=2 for a two-broker cluster.
offsets.topic.replication.factor=$replication
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=$replication
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=8
share.coordinator.state.topic.replication.factor=$replication
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.hours=24
log.segment.bytes=67108864
EOF
  if [[ -n "$sasl_ssl_port" ]]; then
    [[ -r "${KAFKA_SSL_KEYSTORE:-}" ]] || die "KAFKA_SSL_KEYSTORE (a PKCS12 keystore) is required with KAFKA_SASL_SSL_PORT; deploy/kafka/dev-certs.sh makes one"
    local keystore_password
    keystore_password="$(secret_file KAFKA_SSL_KEYSTORE_PASSWORD_FILE)"
    cat >>"$state/server.properties" <<EOF
# SASL_SSL listener: TLS with the keystore below, SCRAM-SHA-512 users from the storage format.
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.ssl.keystore.type=PKCS12
listener.name.sasl_ssl.ssl.keystore.location=$KAFKA_SSL_KEYSTORE
listener.name.sasl_ssl.ssl.keystore.password=$keystore_password
listener.name.sasl_ssl.ssl.key.password=$keystore_password
listener.name.sasl_ssl.ssl.enabled.protocols=TLSv1.3,TLSv1.2
EOF
  fi
  cat >"$state/log4j2.properties" <<EOF
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = $state/logs/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
EOF
}

format_storage() {
  [[ -f "$state/data/meta.properties" ]] && return
  local cluster_id="${KAFKA_CLUSTER_ID:-}"
  java_cmd
  if [[ -z "$cluster_id" ]]; then
    cluster_id="$("${JAVA[@]}" kafka.tools.StorageTool random-uuid 2>>"$state/logs/format.log" | tail -n1)"
    [[ -n "$cluster_id" ]] || die "StorageTool random-uuid failed; see $state/logs/format.log"
  fi
  if [[ -n "$join" ]]; then  # a broker only: the quorum is the first node's
    "${JAVA[@]}" kafka.tools.StorageTool format -t "$cluster_id" -c "$state/server.properties" \
      >>"$state/logs/format.log" 2>&1 || die "formatting $state/data failed; see $state/logs/format.log"
    return
  fi
  local scram=()
  if [[ -n "$sasl_ssl_port" ]]; then
    [[ -n "${KAFKA_SCRAM_USER:-}" ]] || die "KAFKA_SCRAM_USER is required with KAFKA_SASL_SSL_PORT"
    local scram_password
    scram_password="$(secret_file KAFKA_SCRAM_PASSWORD_FILE)"
    scram=(--add-scram "SCRAM-SHA-512=[name=$KAFKA_SCRAM_USER,password=$scram_password]")
  fi
  "${JAVA[@]}" kafka.tools.StorageTool format --standalone -t "$cluster_id" "${scram[@]}" \
    -c "$state/server.properties" >>"$state/logs/format.log" 2>&1 \
    || die "formatting $state/data failed; see $state/logs/format.log"
}

start() {
  local pid
  if pid="$(running_pid)"; then
    log "already running (pid $pid) in $state"
    echo "$bootstrap"
    return
  fi
  fetch
  if [[ "${KAFKA_FRESH:-0}" == 1 ]]; then
    rm -rf "$state"
  fi
  if port_open "$port"; then
    die "port $port is taken by another process; choose another with KAFKA_PORT=..."
  fi
  if [[ -z "$join" ]] && port_open "$controller_port"; then
    die "controller port $controller_port is taken; choose another with KAFKA_CONTROLLER_PORT=..."
  fi
  if [[ -n "$proxied_port" ]] && port_open "$proxied_port"; then
    die "proxied listener port $proxied_port is taken; choose another with KAFKA_PROXIED_PORT=..."
  fi
  if [[ -n "$sasl_ssl_port" ]] && port_open "$sasl_ssl_port"; then
    die "SASL_SSL port $sasl_ssl_port is taken; choose another with KAFKA_SASL_SSL_PORT=..."
  fi
  write_config
  format_storage
  local t0=$SECONDS
  java_cmd
  nohup "${JAVA[@]}" kafka.Kafka "$state/server.properties" \
    >"$state/logs/stdout.log" 2>&1 </dev/null &
  echo $! >"$pidfile"
  log "starting Kafka $kafka_version (pid $!) on $bootstrap, state in $state"
  while ((SECONDS - t0 < timeout)); do
    if ! running_pid >/dev/null; then
      tail -n 30 "$state/logs/stdout.log" "$state/logs/server.log" >&2 2>/dev/null || true
      die "the broker exited during start-up; logs in $state/logs"
    fi
    if port_open "$port" && grep -q "Kafka Server started" "$state/logs/server.log" 2>/dev/null; then
      log "ready after $((SECONDS - t0)) s"
      echo "$bootstrap"
      return
    fi
    sleep 0.25
  done
  stop >/dev/null 2>&1 || true
  die "the broker did not accept requests within ${timeout} s; logs in $state/logs"
}

stop() {
  local pid
  if ! pid="$(running_pid)"; then
    log "not running"
    rm -f "$pidfile"
    return
  fi
  kill -TERM "$pid"
  for _ in $(seq 1 120); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; log "stopped (pid $pid)"; return; }
    sleep 0.25
  done
  log "pid $pid did not stop within 30 s; killing it"
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

status() {
  local pid
  if pid="$(running_pid)"; then
    log "running (pid $pid), state in $state"
    echo "$bootstrap"
  else
    log "not running"
    return 1
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  fetch) fetch; echo "$jars" ;;
  cluster-id) sed -n 's/^cluster.id=//p' "$state/data/meta.properties" 2>/dev/null | grep . || die "no formatted node in $state" ;;
  *) echo "usage: $0 start|stop|status|fetch|cluster-id" >&2; exit 2 ;;
esac
