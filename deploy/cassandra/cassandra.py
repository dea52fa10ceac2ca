"""Local Apache Cassandra for Tideflow development and tests: one node, or a ring of
several on loopback addresses 127.0.0.1, 127.0.0.2, ...

Fetches ``cassandra-all`` and its runtime dependencies from Maven Central with the
fetch-only ``pom.xml`` next to this file (cached outside git), writes a minimal
loopback ``cassandra.yaml`` into each node's directory, runs ``CassandraDaemon`` on Java 17
in the background and waits until the native transport answers a CQL OPTIONS request (and,
for a ring, until ``nodetool status`` shows every node up and normal).

Usage::

    python deploy/cassandra/cassandra.py start  [--dir DIR] [--port N] [--nodes 3]
    python deploy/cassandra/cassandra.py status [--dir DIR]
    python deploy/cassandra/cassandra.py stop   [--dir DIR]

Standard library only; no Cassandra driver is needed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__:
    from deploy.ports import free_port, port_is_free
else:  # run as a script, python deploy/cassandra/cassandra.py: import from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from deploy.ports import free_port, port_is_free

DEFAULT_VERSION = "5.0.9"
HERE = Path(__file__).resolve().parent
POM = HERE / "pom.xml"
NODE_SUBDIRS = ("data", "commitlog", "saved_caches", "hints", "cdc_raw", "triggers", "logs", "conf")

# JPMS flags Cassandra 5.0 needs on Java 17 (from Cassandra's conf/jvm17-server.options).
JAVA17_MODULE_FLAGS: tuple[str, ...] = (
    "--add-exports=java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-exports=java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.server=ALL-UNNAMED",
    "--add-exports=java.sql/java.sql=ALL-UNNAMED",
    "--add-exports=java.base/java.lang.ref=ALL-UNNAMED",
    "--add-exports=jdk.unsupported/sun.misc=ALL-UNNAMED",
    "--add-exports=jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED",
    "--add-exports=jdk.attach/sun.tools.attach=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.module=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.loader=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.reflect=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.math=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.module=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.util.jar=ALL-UNNAMED",
    "--add-opens=jdk.management/com.sun.management.internal=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens=jdk.compiler/com.sun.tools.javac=ALL-UNNAMED",
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--add-opens=java.base/java.util=ALL-UNNAMED",
)

# CQL binary protocol v4 framing: version, flags, stream (i16), opcode, body length (i32).
_CQL_HEADER = struct.Struct(">BBhBI")
_OP_ERROR = 0x00
_OP_OPTIONS = 0x05
_OP_SUPPORTED = 0x06


class CassandraError(RuntimeError):
    """The node could not be fetched, started or stopped."""


def default_cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tideflow" / "cassandra"


def default_node_dir() -> Path:
    return default_cache_root() / "node"


def _read_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("connection closed mid-frame")
        data += chunk
    return data


def _parse_string_multimap(body: bytes) -> dict[str, list[str]]:
    def read_string(offset: int) -> tuple[str, int]:
        (length,) = struct.unpack_from(">H", body, offset)
        start = offset + 2
        return body[start : start + length].decode(), start + length

    (count,) = struct.unpack_from(">H", body, 0)
    offset = 2
    result: dict[str, list[str]] = {}
    for _ in range(count):
        key, offset = read_string(offset)
        (n,) = struct.unpack_from(">H", body, offset)
        offset += 2
        values: list[str] = []
        for _ in range(n):
            value, offset = read_string(offset)
            values.append(value)
        result[key] = values
    return result


def cql_options(host: str, port: int, timeout: float = 2.0) -> dict[str, list[str]]:
    """Send a CQL v4 OPTIONS frame; return the SUPPORTED map or raise ``OSError``."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(_CQL_HEADER.pack(0x04, 0, 0, _OP_OPTIONS, 0))
        version, _flags, _stream, opcode, length = _CQL_HEADER.unpack(
            _read_exact(sock, _CQL_HEADER.size)
        )
        body = _read_exact(sock, length) if length else b""
    if version & 0x80 == 0:
        raise ConnectionError(f"not a CQL response frame (version byte {version:#x})")
    if opcode == _OP_ERROR:
        raise ConnectionError(f"CQL error response: {body[6:]!r}")
    if opcode != _OP_SUPPORTED:
        raise ConnectionError(f"unexpected CQL opcode {opcode:#x}")
    return _parse_string_multimap(body)


def java_major(java: str) -> int:
    proc = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', proc.stderr + proc.stdout)
    if match is None:
        raise CassandraError(f"cannot tell the Java version of {java}: {proc.stderr.strip()}")
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def find_java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise CassandraError("java not found: install Java 17 or set JAVA_HOME")
    return found


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"({path} does not exist)"
    return "\n".join(text.splitlines()[-lines:]) or f"({path} is empty)"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        with contextlib.suppress(OSError, IndexError):
            if stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return False
        cmdline = Path(f"/proc/{pid}/cmdline")
        with contextlib.suppress(OSError):
            return b"CassandraDaemon" in cmdline.read_bytes()
    return True


@dataclass
class Ports:
    native: int
    storage: int
    jmx: int


@dataclass(frozen=True)
class RingPlace:
    """Where a node of a ring sits: its address, the seed's, its token, and the ports every
    node shares (its JMX port is its own: JMX listens on 127.0.0.1 only)."""

    address: str
    seed: str
    token: int
    ports: Ports


class CassandraNode:
    """One loopback Cassandra node whose files all live under ``node_dir``; alone (its own
    seed, token 0, free ports) or at a `place` in a ring."""

    def __init__(
        self,
        node_dir: Path | None = None,
        *,
        version: str = DEFAULT_VERSION,
        cache_root: Path | None = None,
        native_port: int | None = None,
        heap: str = "1g",
        cluster_name: str = "tideflow-local",
        place: RingPlace | None = None,
    ) -> None:
        self.node_dir = (node_dir or default_node_dir()).resolve()
        self.version = version
        self.lib_dir = (cache_root or default_cache_root()) / version / "lib"
        self.requested_port = native_port
        self.heap = heap
        self.cluster_name = cluster_name
        self.place = place
        self.address = place.address if place else "127.0.0.1"
        self._proc: subprocess.Popen[bytes] | None = None

    # -- paths -----------------------------------------------------------------

    @property
    def conf_dir(self) -> Path:
        return self.node_dir / "conf"

    @property
    def logs_dir(self) -> Path:
        return self.node_dir / "logs"

    @property
    def pid_file(self) -> Path:
        return self.node_dir / "cassandra.pid"

    @property
    def state_file(self) -> Path:
        return self.node_dir / "node.json"

    @property
    def system_log(self) -> Path:
        return self.logs_dir / "system.log"

    @property
    def stdout_log(self) -> Path:
        return self.logs_dir / "stdout.log"

    # -- fetch -----------------------------------------------------------------

    def fetch(self) -> Path:
        """Copy cassandra-all and its runtime jars into the cache (once per version)."""
        marker = self.lib_dir / ".complete"
        if marker.exists():
            return self.lib_dir
        mvn = shutil.which("mvn")
        if mvn is None:
            raise CassandraError("mvn not found: Maven is needed to fetch Cassandra's jars")
        if self.lib_dir.exists():
            shutil.rmtree(self.lib_dir)  # a previous fetch was interrupted
        self.lib_dir.mkdir(parents=True)
        cmd = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(POM),
            f"-Dcassandra.version={self.version}",
            "dependency:copy-dependencies",
            f"-DoutputDirectory={self.lib_dir}",
        ]
        print(f"fetching Cassandra {self.version} jars into {self.lib_dir} ...", file=sys.stderr)
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        jar = self.lib_dir / f"cassandra-all-{self.version}.jar"
        if proc.returncode != 0 or not jar.exists():
            output = proc.stdout[-4000:] + proc.stderr[-4000:]
            raise CassandraError(f"maven failed (exit {proc.returncode}):\n{output}")
        marker.write_text(self.version + "\n")
        return self.lib_dir

    # -- state -----------------------------------------------------------------

    def pid(self) -> int | None:
        if self._proc is not None:
            return self._proc.pid if self._proc.poll() is None else None
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _pid_alive(pid) else None

    def _saved_ports(self) -> Ports | None:
        try:
            data = json.loads(self.state_file.read_text())
            return Ports(int(data["native"]), int(data["storage"]), int(data["jmx"]))
        except (FileNotFoundError, KeyError, ValueError, TypeError):
            return None

    def ports(self) -> Ports | None:
        return self._saved_ports()

    def _choose_ports(self) -> Ports:
        if self.place is not None:
            for port in (self.place.ports.native, self.place.ports.storage):
                if not port_is_free(port, self.address):
                    raise CassandraError(f"port {self.address}:{port} is already in use")
            return self.place.ports
        saved = self._saved_ports()

        def pick(previous: int | None) -> int:
            return previous if previous is not None and port_is_free(previous) else free_port()

        native = self.requested_port or pick(saved.native if saved else None)
        if not port_is_free(native):
            raise CassandraError(f"port 127.0.0.1:{native} is already in use")
        ports = Ports(
            native=native,
            storage=pick(saved.storage if saved else None),
            jmx=pick(saved.jmx if saved else None),
        )
        if len({ports.native, ports.storage, ports.jmx}) != 3:
            ports = Ports(native, free_port(), free_port())
        return ports

    # -- configuration ---------------------------------------------------------

    def _write_config(self, ports: Ports) -> Path:
        for sub in NODE_SUBDIRS:
            (self.node_dir / sub).mkdir(parents=True, exist_ok=True)
        d = self.node_dir
        seed = self.place.seed if self.place else self.address
        token = self.place.token if self.place else 0
        yaml = f"""\
# Generated by deploy/cassandra/cassandra.py; rewritten on every start.
cluster_name: '{self.cluster_name}'
num_tokens: 1
initial_token: {token}
# Tokens are assigned evenly up front, so a node joins without streaming.
auto_bootstrap: false
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "{seed}:{ports.storage}"
listen_address: {self.address}
rpc_address: {self.address}
storage_port: {ports.storage}
native_transport_port: {ports.native}
start_native_transport: true
authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
data_file_directories:
  - {d / "data"}
commitlog_directory: {d / "commitlog"}
saved_caches_directory: {d / "saved_caches"}
hints_directory: {d / "hints"}
cdc_raw_directory: {d / "cdc_raw"}
commitlog_sync: periodic
commitlog_sync_period: 10000ms
commitlog_segment_size: 8MiB
storage_compatibility_mode: NONE
# Paxos v2 (Cassandra 5.0): a lightweight transaction takes two round trips, not four, and
# a serial read one; state purged once repaired. Safe on a new cluster (not mixed with v1).
paxos_variant: v2
paxos_state_purging: repaired
# A history host appends several runs' events as one unlogged batch (at most 32 KiB).
batch_size_warn_threshold: 64KiB
unlogged_batch_across_partitions_warn_threshold: 64
# Small and cheap: a throwaway test node, not a production server.
memtable_heap_space: 64MiB
memtable_offheap_space: 64MiB
key_cache_size: 8MiB
counter_cache_size: 0MiB
prepared_statements_cache_size: 8MiB
file_cache_size: 32MiB
concurrent_compactors: 1
auto_snapshot: false
snapshot_before_compaction: false
incremental_backups: false
hinted_handoff_enabled: false
dynamic_snitch: false
"""
        config = self.conf_dir / "cassandra.yaml"
        config.write_text(yaml)
        logback = f"""\
<configuration scan="false">
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>{self.system_log}</file>
    <encoder>
      <pattern>%-5level [%thread] %date{{ISO8601}} %F:%L - %msg%n</pattern>
    </encoder>
  </appender>
  <root level="WARN">
    <appender-ref ref="FILE"/>
  </root>
</configuration>
"""
        (self.conf_dir / "logback.xml").write_text(logback)
        self.state_file.write_text(json.dumps(ports.__dict__) + "\n")
        return config

    def jvm_args(self, ports: Ports) -> list[str]:
        return [
            f"-Xms{min(self.heap, '512m', key=_size_bytes)}",
            f"-Xmx{self.heap}",
            "-Xss256k",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=300",
            "-XX:+ParallelRefProcEnabled",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.net.preferIPv4Stack=true",
            "-Djdk.attach.allowAttachSelf=true",
            "-Dio.netty.tryReflectionSetAccessible=true",
            "-Dio.netty.allocator.useCacheForAllThreads=true",
            "-Dio.netty.allocator.maxOrder=11",
            *JAVA17_MODULE_FLAGS,
            f"-Dcassandra.config=file://{self.conf_dir / 'cassandra.yaml'}",
            f"-Dlogback.configurationFile=file://{self.conf_dir / 'logback.xml'}",
            f"-Dcassandra.storagedir={self.node_dir}",
            f"-Dcassandra.logdir={self.logs_dir}",
            f"-Dcassandra.triggers_dir={self.node_dir / 'triggers'}",
            "-Dcassandra-foreground=yes",
            f"-Dcassandra.jmx.local.port={ports.jmx}",
            "-Djava.rmi.server.hostname=127.0.0.1",
            "-Dcassandra.skip_wait_for_gossip_to_settle=0",
            "-Dcassandra.superuser_setup_delay_ms=0",
            "-Dcassandra.ring_delay_ms=1000",
        ]

    # -- lifecycle -------------------------------------------------------------

    def start(self, timeout: float = 180.0) -> Ports:
        """Start the node (fetching jars first if needed) and wait until CQL answers."""
        ports = self.launch()
        self.wait_ready(ports, timeout)
        return ports

    def launch(self) -> Ports:
        """Start the JVM and return at once (`wait_ready` waits for CQL); a node already
        running and answering is left as it is."""
        running = self.pid()
        if running is not None:
            ports = self._saved_ports()
            if ports is not None and self.cql_ready(ports.native):
                return ports
            raise CassandraError(f"a node is already running for {self.node_dir} (pid {running})")
        _size_bytes(self.heap)
        java = find_java()
        major = java_major(java)
        if major < 17:
            raise CassandraError(f"{java} is Java {major}; this launcher needs Java 17")
        lib = self.fetch()
        ports = self._choose_ports()
        self._write_config(ports)
        cmd = [
            java,
            *self.jvm_args(ports),
            "-cp",
            f"{self.conf_dir}{os.pathsep}{lib}{os.sep}*",
            "org.apache.cassandra.service.CassandraDaemon",
        ]
        (self.conf_dir / "command.txt").write_text(" ".join(cmd) + "\n")
        for log in (self.system_log, self.stdout_log):
            log.unlink(missing_ok=True)
        with self.stdout_log.open("wb") as out:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.node_dir,
                start_new_session=True,
            )
        self.pid_file.write_text(f"{self._proc.pid}\n")
        return ports

    def wait_ready(self, ports: Ports, timeout: float = 180.0) -> None:
        """Until CQL answers; the node is stopped if it does not within `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self._proc.poll() if self._proc is not None else None
            if code is not None:
                self.pid_file.unlink(missing_ok=True)
                raise CassandraError(f"Cassandra exited with status {code}\n{self._logs_tail()}")
            if self.cql_ready(ports.native):
                return
            time.sleep(0.5)
        self.stop()
        raise CassandraError(f"CQL did not answer within {timeout:.0f}s\n{self._logs_tail()}")

    def kill(self) -> bool:
        """SIGKILL the node (a crash: no drain, the commit log's unsynced tail lost); return
        whether one was running."""
        pid = self.pid()
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        if self._proc is not None:
            self._proc.wait()
            self._proc = None
        while self.pid() is not None:
            time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)
        return True

    def stop(self, timeout: float = 60.0) -> bool:
        """SIGTERM the node, SIGKILL it after ``timeout``; return whether one was running."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.pid() is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        if self.pid() is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            while self.pid() is not None:
                time.sleep(0.1)
        if self._proc is not None:
            self._proc.wait()
            self._proc = None
        self.pid_file.unlink(missing_ok=True)
        return True

    def cql_ready(self, port: int) -> bool:
        try:
            cql_options(self.address, port)
        except (OSError, struct.error):
            return False
        return True

    def status(self) -> dict[str, object]:
        pid = self.pid()
        ports = self._saved_ports()
        supported: dict[str, list[str]] | None = None
        if pid is not None and ports is not None:
            with contextlib.suppress(OSError, struct.error):
                supported = cql_options(self.address, ports.native)
        return {
            "dir": str(self.node_dir),
            "pid": pid,
            "running": pid is not None,
            "cql_ready": supported is not None,
            "ports": ports.__dict__ if ports else None,
            "cql": supported,
        }

    def _logs_tail(self) -> str:
        return (
            f"--- {self.system_log} ---\n{_tail(self.system_log)}\n"
            f"--- {self.stdout_log} ---\n{_tail(self.stdout_log)}"
        )


class CassandraRing:
    """`size` nodes on 127.0.0.1..size, each in `root`/nodeN, with evenly spaced tokens and
    shared CQL and storage ports; 127.0.0.1 is the seed. For a replication factor up to
    `size`: the tests' and the bench's three-node ring runs RF 3."""

    def __init__(
        self,
        root: Path | None = None,
        size: int = 3,
        *,
        version: str = DEFAULT_VERSION,
        native_port: int | None = None,
        heap: str = "768m",
        cluster_name: str = "tideflow-ring",
    ) -> None:
        if not 1 <= size <= 9:
            raise CassandraError(f"a ring of {size} nodes: use 1 to 9")
        self.root = (root or default_cache_root() / "ring").resolve()
        self.size = size
        self.addresses = tuple(f"127.0.0.{i + 1}" for i in range(size))
        ports = self._ports(native_port)
        self.nodes = [
            CassandraNode(
                self.root / f"node{i + 1}",
                version=version,
                heap=heap,
                cluster_name=cluster_name,
                place=RingPlace(
                    address=address,
                    seed=self.addresses[0],
                    token=-(2**63) + i * (2**64 // size),
                    ports=Ports(ports.native, ports.storage, ports.jmx + i),
                ),
            )
            for i, address in enumerate(self.addresses)
        ]

    @property
    def state_file(self) -> Path:
        return self.root / "ring.json"

    @property
    def native_port(self) -> int:
        return self.nodes[0].place.ports.native if self.nodes[0].place else 0

    def _ports(self, native_port: int | None) -> Ports:
        """The ports saved by an earlier start, else free ones (JMX: `size` in a row)."""
        with contextlib.suppress(FileNotFoundError, KeyError, ValueError, TypeError):
            data = json.loads(self.state_file.read_text())
            if data["size"] == self.size and native_port in (None, data["native"]):
                return Ports(int(data["native"]), int(data["storage"]), int(data["jmx"]))
        native = native_port or free_port(self.addresses)
        storage = free_port(self.addresses)
        jmx = free_port(run=self.size)
        self.root.mkdir(parents=True, exist_ok=True)
        saved = {"size": self.size, "native": native, "storage": storage, "jmx": jmx}
        self.state_file.write_text(json.dumps(saved) + "\n")
        return Ports(native, storage, jmx)

    def start(self, timeout: float = 240.0) -> int:
        """Start the seed, then the other nodes together; wait until every node answers CQL
        and the seed sees them all up and normal. Returns the CQL port."""
        deadline = time.monotonic() + timeout
        seed, *others = self.nodes
        self.nodes[0].fetch()
        seed.wait_ready(seed.launch(), timeout)
        launched = [(node, node.launch()) for node in others]
        for node, ports in launched:
            node.wait_ready(ports, max(1.0, deadline - time.monotonic()))
        self.wait_normal(deadline - time.monotonic())
        return self.native_port

    def wait_normal(self, timeout: float, among: int = 0) -> None:
        """Until node `among` sees every node of the ring Up and Normal."""
        deadline = time.monotonic() + timeout
        while True:
            up = self.up_normal(among)
            if len(up) == self.size:
                return
            if time.monotonic() > deadline:
                raise CassandraError(f"only {sorted(up)} up and normal after {timeout:.0f}s")
            time.sleep(1.0)

    def up_normal(self, among: int = 0) -> set[str]:
        """The addresses node `among` reports Up and Normal (`nodetool status`)."""
        try:
            out = self.nodetool(among, "status")
        except CassandraError:
            return set()
        return {line.split()[1] for line in out.splitlines() if line.startswith("UN ")}

    def nodetool(self, index: int, *args: str, timeout: float = 600.0) -> str:
        """`nodetool` against node `index` (over its JMX port); its output."""
        node = self.nodes[index]
        assert node.place is not None
        cmd = [
            find_java(),
            "-Xmx256m",
            "-XX:TieredStopAtLevel=1",
            *JAVA17_MODULE_FLAGS,
            f"-Dlogback.configurationFile=file://{node.conf_dir / 'logback.xml'}",
            "-cp",
            f"{node.conf_dir}{os.pathsep}{node.lib_dir}{os.sep}*",
            "org.apache.cassandra.tools.NodeTool",
            "-h",
            "127.0.0.1",
            "-p",
            str(node.place.ports.jmx),
            *args,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            raise CassandraError(f"nodetool {' '.join(args)}: {proc.stderr.strip()[-2000:]}")
        return proc.stdout

    def stop(self) -> bool:
        """Stop every node (the seed last); whether any was running."""
        for node in self.nodes:  # all drain at once
            pid = node.pid()
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        stopped = [node.stop() for node in reversed(self.nodes)]
        return any(stopped)


def _size_bytes(size: str) -> int:
    match = re.fullmatch(r"(\d+)([kKmMgG]?)", size)
    if match is None:
        raise CassandraError(f"bad heap size {size!r}: use a JVM size such as 768m or 1g")
    units = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    return int(match.group(1)) * units[match.group(2).lower()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("command", choices=["start", "stop", "status", "fetch"])
    parser.add_argument("--dir", type=Path, default=None, help="node (or ring) directory")
    parser.add_argument("--port", type=int, default=None, help="CQL port (default: free port)")
    parser.add_argument("--version", default=DEFAULT_VERSION, help="cassandra-all release")
    parser.add_argument("--nodes", type=int, default=None, help="a ring of N nodes (127.0.0.x)")
    parser.add_argument("--heap", default=None, help="max heap, e.g. 1g (one node), 768m (ring)")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for CQL")
    args = parser.parse_args(argv)
    ring_size = args.nodes
    if ring_size is None and args.dir is not None and (args.dir / "ring.json").exists():
        ring_size = int(json.loads((args.dir / "ring.json").read_text())["size"])
    try:
        if ring_size is not None and ring_size > 1:
            return _ring_command(args, ring_size)
        node = CassandraNode(
            args.dir, version=args.version, native_port=args.port, heap=args.heap or "1g"
        )
        if args.command == "fetch":
            print(node.fetch())
        elif args.command == "start":
            began = time.monotonic()
            ports = node.start(timeout=args.timeout)
            elapsed = time.monotonic() - began
            print(
                f"cassandra {node.version} up at 127.0.0.1:{ports.native} "
                f"(pid {node.pid()}, {elapsed:.1f}s, dir {node.node_dir})"
            )
        elif args.command == "stop":
            print("stopped" if node.stop() else "not running")
        else:
            info = node.status()
            with contextlib.suppress(BrokenPipeError):
                print(json.dumps(info, indent=2))
            return 0 if info["cql_ready"] else 3
    except CassandraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _ring_command(args: argparse.Namespace, size: int) -> int:
    ring = CassandraRing(
        args.dir, size, version=args.version, native_port=args.port, heap=args.heap or "768m"
    )
    if args.command == "fetch":
        print(ring.nodes[0].fetch())
    elif args.command == "start":
        began = time.monotonic()
        port = ring.start(timeout=max(args.timeout, 240.0))
        addresses = ", ".join(ring.addresses)
        print(
            f"cassandra {ring.nodes[0].version} ring of {size} up at {addresses} port {port} "
            f"({time.monotonic() - began:.1f}s, dir {ring.root})"
        )
    elif args.command == "stop":
        print("stopped" if ring.stop() else "not running")
    else:
        nodes = [node.status() for node in ring.nodes]
        with contextlib.suppress(BrokenPipeError):
            print(json.dumps({"dir": str(ring.root), "nodes": nodes}, indent=2))
        return 0 if all(n["cql_ready"] for n in nodes) else 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
