"""The `model` scenario: the model worker (workers/ml_model) under closed-loop load, one window
per `max_batch` setting, one run (one `model.predict@1` task) per lane at a time.

    python -m bench model --topology dev --max-batches 1,8,32,128 --window-s 10

For each setting it registers a fresh flow and task queue (so a stopped worker's warm key and
sticky queue never hold up the next setting's tasks), starts one model worker process with
`--max-batch N`, keeps `--inflight` runs in flight (default 2 x N, at least 8, so a batch can
fill while the one before it runs), and stops the worker, which writes its stats. The table:
tasks/s (runs completed in the window over its length), the runs' p50/p99 latency, the mean
batch size the worker formed and its mean forward pass in ms (both over the worker's whole
life at that setting: warm-up, window and drain) and the ONNX Runtime provider it ran on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import load
from bench.harness import BenchError, Setup, _environment, cpu_probe_ms
from bench.report import distribution
from bench.scenarios import SCENARIOS
from bench.tideflow import NAMESPACE, connect_driver, prepare
from deploy.local.deployment import Deployment
from workers.ml_model.build import build

logger = logging.getLogger("bench.model")

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MAX_BATCHES = [1, 8, 32, 128]
WARMUP_RUNS = 5
WARMUP_RUN_TIMEOUT_S = 30.0


@dataclass
class ModelPlan:
    max_batches: list[int] = field(default_factory=lambda: list(DEFAULT_MAX_BATCHES))
    inflight: int | None = None
    """Runs in flight; None: 2 x max_batch, at least 8."""
    max_wait_ms: float = 5.0
    provider: str = "auto"
    warmup_s: float = 3.0
    window_s: float = 15.0
    drain_s: float = 30.0
    quiesce_s: float = 60.0

    def inflight_for(self, max_batch: int) -> int:
        return self.inflight or max(8, 2 * max_batch)


@dataclass
class ModelRow:
    max_batch: int
    inflight: int
    tasks_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    mean_batch_size: float
    forward_ms: float
    """The worker's mean forward pass (the model's share of a task's latency)."""
    provider: str
    failed: int
    unfinished: int


@dataclass
class ModelReport:
    created: str
    topology: str
    backend: str
    plan: dict[str, Any]
    environment: dict[str, Any]
    rows: list[ModelRow]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def markdown(self) -> str:
        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value:,.1f}"

        lines = [
            f"# bench: model on {self.topology}/{self.backend}",
            "",
            f"{self.created}, commit {self.environment.get('commit', '?')},"
            f" {self.environment.get('cpus')} CPUs, max_wait {self.plan['max_wait_ms']} ms,"
            f" {self.plan['window_s']} s windows",
            "",
            "| max_batch | runs in flight | tasks/s | p50 ms | p99 ms | mean batch"
            " | forward ms | provider | failed | unfinished |",
            "|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
        ]
        for r in self.rows:
            lines.append(
                f"| {r.max_batch} | {r.inflight} | {r.tasks_per_s:,.1f} | {ms(r.p50_ms)}"
                f" | {ms(r.p99_ms)} | {r.mean_batch_size:.2f} | {r.forward_ms:.3f} | {r.provider}"
                f" | {r.failed}"
                f" | {r.unfinished} |"
            )
        return "\n".join(lines) + "\n"


class ModelWorkerProcess:
    """One model worker process (python -m workers.ml_model) and its stats file."""

    def __init__(self, workdir: Path, max_batch: int) -> None:
        self.log = workdir / f"model-worker-{max_batch}.log"
        self.stats_file = workdir / f"model-stats-{max_batch}.json"
        self.max_batch = max_batch
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, address: str, queue: str, model: Path, plan: ModelPlan) -> None:
        with self.log.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "workers.ml_model",
                "--address", address,
                "--namespace", NAMESPACE,
                "--task-queue", queue,
                "--identity", f"bench-model-{self.max_batch}",
                "--model", str(model),
                "--max-batch", str(self.max_batch),
                "--max-wait-ms", str(plan.max_wait_ms),
                "--provider", plan.provider,
                "--stats-file", str(self.stats_file),
                cwd=REPO,
                stderr=log,
                start_new_session=True,
            )  # fmt: skip

    async def stop(self) -> dict[str, Any]:
        """SIGTERM, then the stats it wrote on its way out."""
        assert self.process is not None
        if self.process.returncode is None:
            self.process.terminate()
        try:
            await asyncio.wait_for(self.process.wait(), 60)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
        if not self.stats_file.exists():
            raise BenchError(f"the model worker wrote no stats; see {self.log}")
        stats: dict[str, Any] = json.loads(self.stats_file.read_text())
        return stats

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()


async def _one_setting(
    address: str, *, setup: Setup, plan: ModelPlan, model: Path, workdir: Path, max_batch: int
) -> ModelRow:
    scenario = SCENARIOS["model"]
    flow, queue, _ = await prepare(address, scenario)
    worker = ModelWorkerProcess(workdir, max_batch)
    driver = await connect_driver(setup.driver, address, flow, scenario.run_input())
    try:
        await worker.start(address, queue, model, plan)
        for number in range(WARMUP_RUNS):
            key = f"{queue}-warmup-{number}"
            try:
                ok = await asyncio.wait_for(driver.run(key), WARMUP_RUN_TIMEOUT_S)
            except TimeoutError:
                ok = False
            if not ok:
                raise BenchError(f"warm-up run {key} did not complete; see {worker.log}")
        inflight = plan.inflight_for(max_batch)

        async def nothing() -> None:
            return None

        measured = await load.closed_loop(
            driver.run,
            inflight=inflight,
            warmup_s=plan.warmup_s,
            window_s=plan.window_s,
            drain_s=plan.drain_s,
            quiesce_s=plan.quiesce_s,
            on_window_start=nothing,
            on_window_end=nothing,
            prefix=f"{queue}-w",
        )
        stats = await worker.stop()
    except BaseException:
        worker.kill()
        raise
    finally:
        await driver.close()
    found = distribution(measured.latencies_ms)
    row = ModelRow(
        max_batch=max_batch,
        inflight=inflight,
        tasks_per_s=round(len(measured.latencies_ms) / measured.window_s, 1),
        p50_ms=found.p50 if found else None,
        p99_ms=found.p99 if found else None,
        mean_batch_size=float(stats["mean_batch_size"]),
        forward_ms=float(stats["forward_ms_per_batch"]),
        provider=str(stats["provider"]),
        failed=measured.failed,
        unfinished=measured.unfinished,
    )
    logger.info("max_batch %d: %s", max_batch, row)
    return row


async def bench_model(plan: ModelPlan, setup: Setup, workdir: Path) -> ModelReport:
    """Every max_batch setting on one cluster (started here unless `setup.address`)."""
    environment = _environment()
    deployment = None
    if setup.address is None:
        deployment = Deployment(
            setup.topology,
            setup.backend,
            shard_count=setup.shards,
            settings={},
            max_connections=setup.max_connections,
        )
    model = build(workdir / "digits.onnx")
    rows = []
    try:
        if deployment is not None:
            logger.info("starting %s topology on %s", setup.topology, setup.backend)
            await deployment.start()
        address = deployment.frontend if deployment is not None else setup.address
        assert address is not None
        for max_batch in plan.max_batches:
            rows.append(
                await _one_setting(
                    address,
                    setup=setup,
                    plan=plan,
                    model=model,
                    workdir=workdir,
                    max_batch=max_batch,
                )
            )
    except Exception:
        if deployment is not None:
            sys.stderr.write(deployment.logs() + "\n")
        raise
    finally:
        if deployment is not None:
            deployment.stop()
    environment["cpu_probe_ms_end"] = cpu_probe_ms()
    return ModelReport(
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        topology=setup.topology if setup.address is None else "existing",
        backend=setup.backend,
        plan=asdict(plan),
        environment=environment,
        rows=rows,
    )
