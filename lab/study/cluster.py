"""The study driver's Ray: started on this machine, or joined at `--address` after checks that fail in
seconds, in one line, instead of Ray's long retry loops and tracebacks.

Joining an address is checked in three steps: something accepts TCP there; it speaks HTTP/2 (Ray's
GCS and Ray Client are gRPC servers: a web server or anything else is refused at once); Ray's own
connect, with its retry window cut to `CONNECT_SECONDS` and its C++ log lines captured, which tell an
authentication failure (a cluster with token authentication and a driver without its token) apart
from any other.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import ray
import torch
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from lab.errors import StudyError, first_line

CONNECT_SECONDS = 5   # Ray's connect retries (RAY_gcs_server_port_wait_time_s; 20 s by default)
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"   # + empty SETTINGS
_AUTH_MARKERS = ("InvalidAuthToken", "Unauthenticated", "UNAUTHENTICATED", "authentication token")


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        number = int(port)
    except ValueError:
        raise StudyError(f"--address {address}: expected HOST:PORT (e.g. 10.0.0.5:6379 or ray://10.0.0.5:10001)") from None
    return host or "127.0.0.1", number


def check_address(address: str, timeout: float = 3.0) -> None:
    """StudyError unless a gRPC server (a Ray head, or Ray Client) answers at `address`."""
    host, port = _host_port(address)
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            conn.settimeout(timeout)
            conn.sendall(_H2_PREFACE)
            reply = conn.recv(16)
    except TimeoutError:
        raise StudyError(f"--address {address}: something accepts connections there but does not answer as a "
                         f"Ray head (no gRPC reply in {timeout:g} s)") from None
    except OSError as e:
        raise StudyError(f"--address {address}: no Ray head answers there ({e.strerror or e})") from None
    # an HTTP/2 server's first frame is SETTINGS: a 9-byte header whose 4th byte is the frame type 0x4
    if len(reply) < 9 or reply[3] != 0x4:
        seen = reply[:12].decode("ascii", "replace").strip() or "nothing"
        raise StudyError(f"--address {address}: the server there is not a Ray head (it answered {seen!r}, "
                         f"not gRPC); give the head's GCS port (`ray start --head` prints it)")


@contextlib.contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """File descriptor 2 (where Ray's C++ core logs) into a temporary file for the block; the lines
    are in the yielded list after it."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(tmp.read().splitlines())


def _join(address: str, runtime_env: dict) -> None:
    check_address(address)
    previous = os.environ.get("RAY_gcs_server_port_wait_time_s")
    if previous is None:   # a user's own setting (a head that restarts slowly) wins
        os.environ["RAY_gcs_server_port_wait_time_s"] = str(CONNECT_SECONDS)
    try:
        with _captured_stderr() as logged:
            try:
                ray.init(address=address, runtime_env=runtime_env, log_to_driver=False, configure_logging=False)
                return
            except Exception as e:
                error = e   # classified below, once the captured lines are in
    finally:
        if previous is None:
            os.environ.pop("RAY_gcs_server_port_wait_time_s", None)
    text = "\n".join(logged) + f"\n{error}"
    if any(marker in text for marker in _AUTH_MARKERS):
        raise StudyError(f"--address {address}: the Ray cluster refused this driver's authentication token: it uses "
                         f"token authentication (RAY_AUTH_MODE=token) and the token here is missing or another; "
                         f"set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH, default ~/.ray/auth_token) to the cluster's "
                         f"token (`ray get-auth-token` on the head prints it)")
    first = first_line(error)
    raise StudyError(f"--address {address}: cannot join the Ray cluster there ({type(error).__name__}: {first})")


def start_ray(address: str | None = None) -> bool:
    """Connect to the Ray cluster at `address`, or start Ray on this machine, unless this process is
    connected already (a notebook's own Ray, or one a test worker shares among its studies: a study
    then runs on it and leaves it running). Returns whether it was started here."""
    if ray.is_initialized():
        return False
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}}
    # both ways, the workers' stdout and stderr stay in Ray's session logs (log_to_driver=False) and Ray
    # leaves the process's logging alone (configure_logging=False); joining captures what Ray prints (_join)
    if address:
        _join(address, env)
    else:   # a private Ray for this driver: its notes while starting ("Started a local Ray instance", that
        # token authentication is on) are no news; its warnings and errors still show
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        with _ray_logger_at(logging.WARNING):
            ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                     configure_logging=False, runtime_env=env)
    return True


@contextlib.contextmanager
def _ray_logger_at(level: int) -> Iterator[None]:
    """The `ray` logger (which Ray's modules propagate to) at `level` at least, for the block."""
    logger = logging.getLogger("ray")
    previous = logger.level
    logger.setLevel(max(level, previous))
    try:
        yield
    finally:
        logger.setLevel(previous)


def check_gpus(gpus_per_trial: float | str) -> None:
    """StudyError when trials ask for GPUs the connected cluster does not have (`auto` asks for up to one)."""
    wanted = 1.0 if gpus_per_trial == "auto" else float(gpus_per_trial)
    if wanted <= 0:
        return
    have = ray.cluster_resources().get("GPU", 0)
    if have < wanted:
        where = "this machine" if have == 0 else "the cluster"
        shown = gpus_per_trial if isinstance(gpus_per_trial, str) else f"{gpus_per_trial:g}"
        raise StudyError(f"--gpus-per-trial {shown}: {where} has {have:g} GPU(s) for Ray; "
                         f"train on CPUs with --gpus-per-trial 0")


# --- what Ray's GPUs are: probed by a task on a GPU of each machine ----------------------------

PROBE_SECONDS = 120   # for the probe tasks to be scheduled and answer (a busy cluster's GPUs may all be taken)
PROBE_FRACTION = 0.01  # of a GPU, the probe task's request: it runs beside a GPU's other tasks


@dataclass(frozen=True)
class GpuProbe:
    """What a task on one GPU of each of Ray's GPU machines saw: whether torch has CUDA there, and the
    smallest such GPU's total memory in bytes (None where none has CUDA)."""

    gpus: float                            # Ray's GPU resources, summed over the machines
    machines: int
    cuda: bool                             # torch sees a CUDA device on every machine probed
    memory: int | None
    without_cuda: tuple[str, ...] = ()     # the machines whose task saw none
    names: tuple[str, ...] = ()            # the GPUs' names, one per machine with CUDA


def _look() -> dict:
    """In a Ray task holding a GPU fraction: what torch sees of the GPU Ray assigned it."""
    seen = {"host": socket.gethostname(), "visible": os.environ.get("CUDA_VISIBLE_DEVICES")}
    if not torch.cuda.is_available():
        return {**seen, "cuda": False}
    props = torch.cuda.get_device_properties(0)   # the first (only) device of CUDA_VISIBLE_DEVICES
    return {**seen, "cuda": True, "memory": int(props.total_memory), "name": props.name}


_probed: dict[tuple, GpuProbe] = {}   # per Ray job and set of GPU machines: a study's driver probes once


def probe_gpus(timeout: float = PROBE_SECONDS) -> GpuProbe:
    """Ray's GPUs as torch sees them, from one task per machine with GPUs (the driver may have none);
    StudyError when the tasks do not answer within `timeout` seconds."""
    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("GPU", 0) > 0]
    key = (ray.get_runtime_context().get_job_id(), tuple(sorted(n["NodeID"] for n in nodes)))
    if key in _probed:
        return _probed[key]
    look = ray.remote(num_cpus=0, num_gpus=PROBE_FRACTION, max_retries=0)(_look)
    refs = [look.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
            for n in nodes]
    try:
        seen = ray.get(refs, timeout=timeout)
    except ray.exceptions.GetTimeoutError:
        for ref in refs:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        raise StudyError(f"--gpus-per-trial: no GPU of the Ray cluster took a probe task in {timeout:g} s (all "
                         f"taken by other work?); free one, or give --gpu-memory and --device") from None
    except ray.exceptions.RayError as e:
        raise StudyError(f"--gpus-per-trial: the probe of Ray's GPUs failed ({type(e).__name__}: "
                         f"{first_line(e)})") from None
    memories = [s["memory"] for s in seen if s["cuda"]]
    probe = GpuProbe(gpus=sum(n["Resources"]["GPU"] for n in nodes), machines=len(nodes),
                     cuda=bool(seen) and len(memories) == len(seen), memory=min(memories) if memories else None,
                     without_cuda=tuple(s["host"] for s in seen if not s["cuda"]),
                     names=tuple(s["name"] for s in seen if s["cuda"]))
    _probed[key] = probe
    return probe


def check_cuda(gpus_per_trial: float | str, device: str = "auto") -> GpuProbe | None:
    """StudyError when trials would train on Ray's GPUs (`device` auto or cuda) but torch sees no CUDA
    device on them: logical GPUs (`ray start --num-gpus`, `ray.init(num_gpus=...)`) or a machine without
    a CUDA driver. Returns the probe (None when trials train on CPUs)."""
    if gpus_per_trial != "auto" and float(gpus_per_trial) <= 0:
        return None
    probe = probe_gpus()
    if device != "cpu" and not probe.cuda:
        shown = gpus_per_trial if isinstance(gpus_per_trial, str) else f"{gpus_per_trial:g}"
        hosts = ", ".join(sorted(set(probe.without_cuda)))
        raise StudyError(f"--gpus-per-trial {shown}: Ray has {probe.gpus:g} GPU(s) but torch sees no CUDA device "
                         f"on them (on {hosts}: logical GPUs, or no CUDA driver there); train on CPUs with "
                         f"--gpus-per-trial 0, or give --device cpu to hold logical GPUs while training on CPU")
    return probe


@contextlib.contextmanager
def connected(address: str | None, gpus_per_trial: float | str = 0.0, device: str = "auto") -> Iterator[None]:
    """Ray for the block: joined or started (and then shut down at its end, whatever ends it), with the
    GPUs that trials ask for there, and CUDA on them unless trials train on the CPU (`device` cpu)."""
    started = start_ray(address)
    try:
        check_gpus(gpus_per_trial)
        check_cuda(gpus_per_trial, device)
        yield
    finally:
        if started:
            ray.shutdown()
