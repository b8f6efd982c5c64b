"""Cluster profiles: one YAML file per cluster in ``clusters/``, loaded into frozen, validated dataclasses.

The schema mirrors nemo_run's executor dataclasses where a field exists there (``SlurmExecutor.account``,
``partition``, ``time``, ``exclusive``, ``mem``, ``srun_args``, ``container_image``, ``container_mounts``;
``DockerExecutor.shm_size``, ``ulimits``, ``network``, ``runtime``), so a reader who knows NeMo-Run knows ours.

Loading never stops at the first problem: unknown keys (with the nearest valid key suggested), wrong types,
missing fields and impossible values are all collected and raised together as one ``ConfigError`` whose
messages read ``file:line: field=value: what is allowed``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from launcher.errors import ConfigError, Problem

ExecutorKind = Literal["slurm", "local", "docker", "torchrun"]

# Known GPUs: usable memory (GiB, as torch reports it) and how many one node of the usual kind holds.
GPUS: dict[str, tuple[float, int, str]] = {
    # name: (memory GiB, max per node, why that maximum)
    "h100-80gb": (79.1, 8, "a DGX/HGX H100 node has 8"),
    "h200-141gb": (139.8, 8, "a DGX/HGX H200 node has 8"),
    "a100-80gb": (79.1, 8, "a DGX/HGX A100 node has 8"),
    "a100-40gb": (39.4, 8, "a DGX/HGX A100 node has 8"),
    "rtx6000ada-48gb": (47.5, 8, "a workstation holds at most 8 double-width cards"),
    "l40s-48gb": (44.4, 8, "a server holds at most 8 L40S"),
    "a6000-48gb": (47.5, 8, "a workstation holds at most 8 double-width cards"),
    "cpu": (0.0, 0, "no GPUs"),
}

# Dense bf16 tensor-core peak per GPU (TFLOP/s, vendor datasheets, without sparsity): the denominator of MFU.
GPU_PEAK_BF16_TFLOPS: dict[str, float] = {
    "h100-80gb": 989.0,  # H100 SXM
    "h200-141gb": 989.0,  # same chip as H100 SXM
    "a100-80gb": 312.0,
    "a100-40gb": 312.0,
    "rtx6000ada-48gb": 364.2,
    "l40s-48gb": 362.0,
    "a6000-48gb": 154.8,
}


@dataclass(frozen=True)
class Hardware:
    """What one node has. The planner sizes parallelism and memory from this."""

    gpus_per_node: int
    """GPUs per node (a DGX H100 has 8)."""
    gpu: str
    """GPU model, one of the known names (sets memory and the per-node maximum)."""
    host_memory_gib: float
    """Host RAM per node in GiB (optimizer offload lives here)."""
    cpus_per_node: int = 16
    """CPU cores per node (tokenize workers)."""
    gpu_memory_gib: float | None = None
    """Usable GPU memory in GiB; defaults to the known value for ``gpu``."""
    interconnect: Literal["nvlink", "pcie"] = "nvlink"
    """How the GPUs of one node are linked (TP across PCIe is slow)."""
    network: Literal["infiniband", "ethernet", "none"] = "infiniband"
    """How nodes are linked."""
    max_nodes: int = 1
    """The most nodes a job may ask for."""
    peak_bf16_tflops: float | None = None
    """Dense bf16 peak TFLOP/s of one GPU, the MFU denominator; defaults to the known value for ``gpu``."""
    internet: bool = True
    """Whether the compute nodes reach the internet; false: W&B logs offline (WANDB_MODE=offline, sync later)."""

    @property
    def gpu_memory(self) -> float:
        return self.gpu_memory_gib if self.gpu_memory_gib is not None else GPUS.get(self.gpu, (0.0, 0, ""))[0]

    @property
    def peak_tflops(self) -> float | None:
        return self.peak_bf16_tflops if self.peak_bf16_tflops is not None else GPU_PEAK_BF16_TFLOPS.get(self.gpu)


@dataclass(frozen=True)
class Storage:
    """One storage area: where it is on the host and where the job sees it (the container mount)."""

    host: str
    """Absolute path on the login node / host."""
    container: str | None = None
    """Path inside the container; None when the job runs without a container (same as host)."""

    @property
    def job_path(self) -> str:
        return self.container or self.host


@dataclass(frozen=True)
class StorageAreas:
    """The storage areas every pipeline uses. Each becomes a container mount."""

    runs: Storage
    """Run directories: plan, scripts, logs, manifest, checkpoints."""
    models: Storage
    """Downloaded HF models and converted NeMo checkpoints."""
    data: Storage
    """Raw JSONL and tokenized .bin/.idx."""
    hf_cache: Storage | None = None
    """Hugging Face cache (HF_HOME)."""


@dataclass(frozen=True)
class SlurmSettings:
    """Fields of nemo_run's SlurmExecutor (same names)."""

    account: str
    """Slurm account (-A)."""
    partition: str
    """Partition for GPU stages."""
    time: str = "04:00:00"
    """Time limit of GPU stages (HH:MM:SS or D-HH:MM:SS)."""
    cpu_partition: str | None = None
    """Partition for CPU-only stages (download, tokenize); defaults to ``partition``."""
    cpu_time: str = "02:00:00"
    """Time limit of CPU-only stages."""
    cpus_per_cpu_task: int = 8
    """CPUs a CPU-only stage asks for."""
    exclusive: bool = True
    """--exclusive for GPU stages."""
    mem: str | None = "0"
    """--mem for GPU stages ("0" = all of the node's memory)."""
    gres: str | None = None
    """--gres for GPU stages; defaults to gpu:<gpus_per_node>."""
    qos: str | None = None
    """--qos."""
    constraint: str | None = None
    """--constraint."""
    srun_args: list[str] = field(default_factory=list)
    """Extra srun arguments, e.g. --mpi=pmix."""
    signal_seconds: int = 300
    """Send SIGUSR1 this many seconds before the time limit so training can checkpoint."""
    max_requeues: int = 3
    """How often a preempted / timed-out / node-failed job may requeue itself."""
    additional_parameters: dict[str, str] = field(default_factory=dict)
    """Other #SBATCH parameters (name without the dashes: value)."""


@dataclass(frozen=True)
class ContainerSettings:
    """The container every stage runs in (Pyxis/enroot on Slurm, Docker locally)."""

    image: str
    """Image, e.g. nvcr.io/nvidia/nemo:25.02.01 (a NeMo 2 container, <= 25.11)."""
    extra_mounts: list[str] = field(default_factory=list)
    """More host:container mounts besides the storage areas."""
    workdir: str = "/workspace"
    """Working directory inside the container."""


@dataclass(frozen=True)
class DockerSettings:
    """Fields of nemo_run's DockerExecutor (the seed's docker run flags)."""

    shm_size: str = "16g"
    ulimits: list[str] = field(default_factory=lambda: ["memlock:-1", "stack:67108864"])
    network: str = "host"
    runtime: str | None = "nvidia"
    """Container runtime; None for a CPU-only test daemon."""
    num_gpus: int = -1
    """GPUs passed to the container (-1 = all, 0 = none)."""
    ipc_mode: str | None = "host"


@dataclass(frozen=True)
class DataEntry:
    """A training input with its weight: ``{path: ja_wiki/train_*.jsonl.gz, weight: 0.9}``."""

    path: str
    """JSONL file/glob or a Megatron prefix (..._text_document), relative to the data area."""
    weight: float | None = None
    """Share of the training tokens (positive); none: proportional to the dataset's tokens."""


@dataclass(frozen=True)
class ValidEntry:
    """A named validation set: ``{name: ja, path: ja_wiki/validation_0.jsonl.gz}``; one loss per name."""

    name: str
    """Set name, [A-Za-z0-9_-]{1,32} (shown in the step log, status and the report)."""
    path: str
    """JSONL file/glob or a Megatron prefix, relative to the data area."""


@dataclass(frozen=True)
class Defaults:
    """Per-cluster defaults for the run (CLI flags override)."""

    nodes: int = 1
    model: str = "llama3.1-8b"
    data: list[DataEntry | str] = field(default_factory=list)
    """JSONL globs or Megatron prefixes (..._text_document), relative to the data area; ``WEIGHT:PATH`` or
    ``{path, weight}`` for a weighted mix (unweighted: proportional to tokens)."""
    valid_data: list[ValidEntry | str] = field(default_factory=list)
    """Validation JSONL or prefixes; ``NAME=PATH`` or ``{name, path}`` for one validation loss per named set."""
    attention: Literal["te", "sdpa", "auto"] = "auto"
    """Attention kernel: te (Transformer Engine), sdpa (PyTorch), auto (TE if present)."""
    env: dict[str, str] = field(default_factory=dict)
    """Environment for every stage (NCCL/UCX settings). Never secrets: name them in ``secrets``."""
    secrets: list[str] = field(default_factory=lambda: ["HF_TOKEN", "WANDB_API_KEY"])
    """Variable NAMES passed from the submitting environment into the job; values are never written."""


@dataclass(frozen=True)
class ClusterProfile:
    """A cluster: how to run (executor), what it has (hardware), where things live (storage)."""

    name: str
    """Profile name (the file's stem by convention)."""
    executor: ExecutorKind
    """slurm (sbatch/srun + Pyxis), local (this machine), docker (local Docker), torchrun (one node, no Slurm)."""
    hardware: Hardware
    storage: StorageAreas
    description: str = ""
    slurm: SlurmSettings | None = None
    container: ContainerSettings | None = None
    docker: DockerSettings | None = None
    defaults: Defaults = field(default_factory=Defaults)
    source: str = ""
    """The file it was loaded from (filled by the loader)."""

    def mounts(self) -> list[tuple[str, str]]:
        """(host, container) pairs for every storage area and extra mount; empty without a container."""
        if self.container is None:
            return []
        out: list[tuple[str, str]] = []
        s = self.storage
        for area in (s.runs, s.models, s.data, s.hf_cache):
            if area is not None and area.container:
                out.append((area.host, area.container))
        for m in self.container.extra_mounts:
            host, _, cont = m.partition(":")
            out.append((host, cont or host))
        return out


# --------------------------------------------------------------------------------------------------------------
# Loading

CLUSTERS_DIR = Path(__file__).resolve().parent.parent / "clusters"


def available_profiles(clusters_dir: Path = CLUSTERS_DIR) -> list[str]:
    return sorted(p.stem for p in clusters_dir.glob("*.yaml"))


def resolve_profile_path(name_or_path: str, clusters_dir: Path = CLUSTERS_DIR) -> Path:
    """``--cluster`` takes a name from clusters/ or a path to a YAML file."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or "/" in name_or_path:
        if not p.is_file():
            raise ConfigError([Problem("error", "--cluster", f"cluster={name_or_path}: no such file")])
        return p
    cand = clusters_dir / f"{name_or_path}.yaml"
    if cand.is_file():
        return cand
    names = available_profiles(clusters_dir)
    near = difflib.get_close_matches(name_or_path, names, n=1)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    raise ConfigError([Problem("error", "--cluster",
                               f"cluster={name_or_path}: no profile of that name{hint} "
                               f"(known: {', '.join(names)}; or give a path to a .yaml file)")])


MAX_PROFILE_BYTES = 1 << 20  # a profile is a page of YAML; pyyaml takes minutes over a file of 16 MB


def load_profile(name_or_path: str, clusters_dir: Path = CLUSTERS_DIR) -> ClusterProfile:
    path = resolve_profile_path(name_or_path, clusters_dir)
    return parse_profile(read_profile_text(path), str(path))


def read_profile_text(path: Path) -> str:
    """The profile's text: UTF-8 (a UTF-8 BOM is allowed), at most MAX_PROFILE_BYTES, no control characters."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PROFILE_BYTES + 1)
    except OSError as e:
        raise ConfigError([Problem("error", str(path), f"cannot read the profile: {e.strerror}")])
    if len(data) > MAX_PROFILE_BYTES:
        raise ConfigError([Problem("error", str(path), f"the profile is over {MAX_PROFILE_BYTES >> 20} MiB; "
                                                      "allowed: a YAML file of at most 1 MiB")])
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ConfigError([Problem("error", f"{path}:{line}", f"byte {data[e.start]:#04x} at offset {e.start} is "
                                                              "not UTF-8; allowed: a UTF-8 text file")])
    for i, row in enumerate(text.split("\n"), 1):
        bad = next((c for c in row if (ord(c) < 32 and c not in "\t\r") or ord(c) == 127), None)
        if bad is not None:
            raise ConfigError([Problem("error", f"{path}:{i}", f"control character {bad!r} in the profile; "
                                                               "allowed: printable text, tabs, newlines")])
    return text


def parse_profile(text: str, source: str) -> ClusterProfile:
    """Parse and validate a profile. Raises ConfigError with every problem found."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError([Problem("error", f"{source}{line}", f"not valid YAML: {getattr(e, 'problem', e)}")])
    except RecursionError:  # pyyaml's composer recurses once per level
        raise ConfigError([Problem("error", source, "nested too deeply to be a profile; allowed: the fields of "
                                                    "clusters/*.yaml, a few levels deep")])
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError([Problem("error", f"{source}:1", "a profile is a YAML mapping of fields")])
    problems: list[Problem] = []
    conv = _Converter(source, problems)
    value = conv.dataclass_(ClusterProfile, node, "", skip={"source"})
    if value is not None:
        value = dataclasses.replace(value, source=source)
        problems.extend(_cross_checks(value, conv.lines))
    if [p for p in problems if p.severity == "error"]:
        raise ConfigError(problems)
    assert value is not None
    return value


class _Converter:
    """Turns YAML nodes into typed dataclasses, recording problems with line numbers instead of raising."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        self.lines: dict[str, int] = {}  # dotted field -> line

    def err(self, node: yaml.Node | None, fieldname: str, msg: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 1
        self.problems.append(Problem("error", f"{self.source}:{line}", f"{fieldname}{msg}"))

    def dataclass_(self, cls: type, node: yaml.Node, prefix: str, skip: set[str] = frozenset()) -> Any:  # type: ignore[assignment]
        if not isinstance(node, yaml.MappingNode):
            self.err(node, prefix.rstrip(".") or "profile", f"={_show(node)}: expected a mapping of fields")
            return None
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in skip}
        values: dict[str, Any] = {}
        seen: set[str] = set()
        first_line: dict[str, int] = {}
        for knode, vnode in node.value:
            key = str(knode.value)
            dotted = prefix + key
            self.lines[dotted] = knode.start_mark.line + 1
            if key in seen:  # YAML would keep the last one silently: say which one wins nothing
                self.err(knode, dotted, f": given twice (first on line {first_line[key]}); allowed: once")
                continue
            first_line[key] = knode.start_mark.line + 1
            if key not in fields:
                near = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
                hint = f"; did you mean '{prefix}{near[0]}'?" if near else ""
                self.err(knode, dotted, f": unknown field{hint} (valid: {', '.join(fields)})")
                continue
            seen.add(key)
            values[key] = self.value(hints[key], vnode, dotted)
        ok = True
        for name, f in fields.items():
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if required and name not in seen:
                self.err(node, prefix + name, f": missing (required: {_type_name(hints[name])})")
                ok = False
        for key, msg in _partial_checks(cls, {k: v for k, v in values.items() if v is not _BAD}):
            knode = next((k for k, _ in node.value if k.value == key), node)
            self.err(knode, prefix + key, msg)
            ok = False
        if any(v is _BAD for v in values.values()) or not ok:
            return None
        return cls(**values)

    def value(self, tp: Any, node: yaml.Node, name: str) -> Any:
        if node.tag not in _PLAIN_TAGS:  # !foo, !!python/name:...: a profile holds plain data only
            self.err(node, name, f"={_show(node)}: the YAML tag {node.tag} is not allowed (plain values only)")
            return _BAD
        origin = get_origin(tp)
        args = get_args(tp)
        if origin in (Union, types.UnionType):
            non_none = [a for a in args if a is not type(None)]
            if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
                return None
            # ``Entry | str``: a mapping is the dataclass, anything else the plain form
            if len(non_none) > 1 and dataclasses.is_dataclass(non_none[0]):
                return self.value(non_none[0] if isinstance(node, yaml.MappingNode) else non_none[1], node, name)
            return self.value(non_none[0], node, name)
        if dataclasses.is_dataclass(tp):
            v = self.dataclass_(tp, node, name + ".")  # type: ignore[arg-type]
            return _BAD if v is None else v
        if origin is Literal:
            raw = self._scalar(node)
            if raw not in args:
                self.err(node, name, f"={_show(node)}: allowed: {', '.join(map(str, args))}")
                return _BAD
            return raw
        if origin is list:
            if not isinstance(node, yaml.SequenceNode):
                self.err(node, name, f"={_show(node)}: expected a list of {_type_name(args[0])}")
                return _BAD
            items = [self.value(args[0], n, f"{name}[{i}]") for i, n in enumerate(node.value)]
            return _BAD if any(i is _BAD for i in items) else items
        if origin is dict:
            if not isinstance(node, yaml.MappingNode):
                self.err(node, name, f"={_show(node)}: expected a mapping of {_type_name(args[1])}")
                return _BAD
            out = {}
            for k, v in node.value:
                if str(k.value) in out:
                    self.err(k, f"{name}.{k.value}", ": given twice; allowed: once")
                    return _BAD
                out[str(k.value)] = self.value(args[1], v, f"{name}.{k.value}")
            return _BAD if any(v is _BAD for v in out.values()) else out
        if tp in (int, float, str, bool):
            return self._typed_scalar(tp, node, name)
        raise TypeError(f"profile schema uses an unsupported type {tp!r}")  # a bug in the schema, not user input

    def _scalar(self, node: yaml.Node) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            return None
        try:
            return yaml.SafeLoader("").construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError):  # !!int abc
            return _BAD

    def _typed_scalar(self, tp: type, node: yaml.Node, name: str) -> Any:
        raw = self._scalar(node) if isinstance(node, yaml.ScalarNode) else _BAD
        unquoted = isinstance(node, yaml.ScalarNode) and node.style is None
        if tp is str and isinstance(raw, str) and any(ord(c) < 32 or ord(c) == 127 for c in raw):
            self.err(node, name, f"={raw!r}: holds a control character; allowed: printable text")
            return _BAD
        if tp is str and unquoted and isinstance(raw, (int, float)) and not isinstance(raw, bool):
            # what was written, not YAML 1.1's reading of it: `time: 4:00:00` is 14400 to YAML, "4:00:00" to us
            return str(node.value)
        if tp is int and unquoted and ":" in str(node.value):
            self.err(node, name, f"={node.value}: YAML 1.1 reads this as the base-60 number {raw}; give a plain "
                                 "integer")
            return _BAD
        if tp is float and isinstance(raw, float) and not math.isfinite(raw):
            self.err(node, name, f"={node.value}: expected a finite number")
            return _BAD
        if tp is int and isinstance(raw, int) and not isinstance(raw, bool) and abs(raw) >= 2**31:
            self.err(node, name, f"={node.value}: out of range (allowed: below 2^31)")
            return _BAD
        if tp is float and isinstance(raw, int) and not isinstance(raw, bool):
            raw = float(raw)
        if tp is str and isinstance(raw, (int, float)) and not isinstance(raw, bool):
            raw = str(raw)  # "mem: 0" means "0"
        if raw is _BAD or not isinstance(raw, tp) or (tp is int and isinstance(raw, bool)):
            self.err(node, name, f"={_show(node)}: expected {_type_name(tp)}")
            return _BAD
        return raw


_BAD = object()
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PLAIN_TAGS = frozenset(f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "seq", "map"))


def _show(node: yaml.Node) -> str:
    if isinstance(node, yaml.ScalarNode):
        return str(node.value)
    return "[...]" if isinstance(node, yaml.SequenceNode) else "{...}"


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(map(str, get_args(tp)))
    if get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp) if a is not type(None))
    if get_origin(tp) is list:
        return f"a list of {_type_name(get_args(tp)[0])}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, getattr(tp, "__name__", str(tp)))


def _cross_checks(p: ClusterProfile, lines: dict[str, int]) -> list[Problem]:
    """Checks between fields, all reported together."""
    out: list[Problem] = []

    def at(key: str) -> str:
        return f"{p.source}:{lines.get(key, 1)}"

    hw = p.hardware
    if p.executor != "slurm" and hw.max_nodes != 1:
        out.append(Problem("error", at("hardware.max_nodes"),
                           f"hardware.max_nodes={hw.max_nodes}: executor={p.executor} runs on one node (allowed: 1)"))
    if p.defaults.nodes > hw.max_nodes:
        out.append(Problem("error", at("defaults.nodes"),
                           f"defaults.nodes={p.defaults.nodes}: more than hardware.max_nodes={hw.max_nodes}"))
    if p.executor == "slurm":
        if p.slurm is None:
            out.append(Problem("error", at("executor"), "slurm: missing (required when executor=slurm)"))
    elif p.slurm is not None:
        out.append(Problem("error", at("slurm"), f"slurm: only for executor=slurm (executor={p.executor})"))
    if p.executor == "docker":
        if p.container is None:
            out.append(Problem("error", at("executor"), "container: missing (required when executor=docker: the image)"))
        if p.docker is None:
            out.append(Problem("error", at("executor"), "docker: missing (required when executor=docker)"))
    elif p.docker is not None:
        out.append(Problem("error", at("docker"), f"docker: only for executor=docker (executor={p.executor})"))
    if p.executor == "local" and p.container is not None:
        out.append(Problem("error", at("container"),
                           "container: executor=local runs on the host without a container; use executor=docker"))
    areas = [("runs", p.storage.runs), ("models", p.storage.models), ("data", p.storage.data)]
    if p.storage.hf_cache is not None:
        areas.append(("hf_cache", p.storage.hf_cache))
    for name, area in areas:
        key = f"storage.{name}"
        if p.container is not None and not area.container:
            out.append(Problem("error", at(key), f"{key}.container: missing (the profile runs in a container)"))
        if p.container is None and area.container:
            out.append(Problem("error", at(key + ".container"),
                               f"{key}.container={area.container}: no container in this profile; remove it"))
    if p.container is not None:
        for i, m in enumerate(p.container.extra_mounts):
            host, sep, cont = m.partition(":")
            if not host.startswith("/") or (sep and not cont.startswith("/")):
                out.append(Problem("error", at("container.extra_mounts"),
                                   f"container.extra_mounts[{i}]={m}: allowed: /host/path:/container/path"))
    for k in [*p.defaults.env, *p.defaults.secrets]:
        if not ENV_NAME_RE.fullmatch(k):
            out.append(Problem("error", at("defaults.env" if k in p.defaults.env else "defaults.secrets"),
                               f"{k!r}: not an environment variable name; allowed: letters, digits and '_', not "
                               "starting with a digit"))
    for k in p.defaults.env:
        if k in p.defaults.secrets or any(s in k for s in ("TOKEN", "API_KEY", "SECRET", "PASSWORD")):
            out.append(Problem("error", at(f"defaults.env.{k}"),
                               f"defaults.env.{k}: looks like a secret; list its NAME under defaults.secrets instead"))
    return out


def _valid_time(t: str) -> bool:
    import re

    return re.fullmatch(r"(\d+-)?\d{1,2}(:\d{2}){1,2}|\d+", t) is not None


def _partial_checks(cls: type, v: dict[str, Any]) -> list[tuple[str, str]]:
    """Value checks of one section, run on whatever fields parsed, so every problem is reported at once."""
    out: list[tuple[str, str]] = []
    if cls is Hardware:
        gpu = v.get("gpu")
        if gpu is not None and gpu not in GPUS:
            near = difflib.get_close_matches(gpu, list(GPUS), n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            out.append(("gpu", f"={gpu}: unknown GPU{hint} (known: {', '.join(GPUS)})"))
        elif gpu is not None:
            mem, max_per_node, why = GPUS[gpu]
            n = v.get("gpus_per_node")
            if n is not None and not 1 <= n <= max_per_node:
                out.append(("gpus_per_node", f"={n}: {why} (allowed: 1..{max_per_node})"))
            m = v.get("gpu_memory_gib")
            if m is not None and not 0 < m <= mem * 1.05:
                out.append(("gpu_memory_gib", f"={m}: a {gpu} has {mem} GiB usable (allowed: 0 < value <= {mem})"))
        for key in ("host_memory_gib", "max_nodes", "cpus_per_node", "peak_bf16_tflops"):
            if key in v and v[key] is not None and v[key] <= 0:
                out.append((key, f"={v[key]}: must be > 0"))
    if cls is ValidEntry and "name" in v and not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", v["name"]):
        out.append(("name", f"={v['name']}: allowed: 1-32 letters, digits, '_' or '-'"))
    if cls is DataEntry and v.get("weight") is not None and not (0 < v["weight"] < float("inf")):
        out.append(("weight", f"={v['weight']}: allowed: a positive finite number"))
    if cls is SlurmSettings:
        for key in ("time", "cpu_time"):
            if key in v and not _valid_time(v[key]):
                out.append((key, f"={v[key]}: allowed: HH:MM:SS, MM:SS, D-HH:MM:SS or minutes"))
        for key in ("signal_seconds", "max_requeues", "cpus_per_cpu_task"):
            if key in v and v[key] < 0:
                out.append((key, f"={v[key]}: must be >= 0"))
        # #SBATCH values cannot be quoted (sbatch parses them, not a shell): refused here, not at submission
        for key in ("account", "partition", "cpu_partition", "mem", "gres", "qos", "constraint"):
            val = v.get(key)
            if isinstance(val, str) and (not val or any(c.isspace() for c in val) or "#" in val):
                out.append((key, f"={val!r}: a Slurm value must be non-empty, without spaces or '#'"))
        for k, val in (v.get("additional_parameters") or {}).items():
            if not re.fullmatch(r"[a-z][a-z0-9-]*", k) or not val or any(c.isspace() for c in val) or "#" in val:
                out.append(("additional_parameters", f".{k}={val!r}: an sbatch option name (a-z, 0-9, '-') with "
                                                     "a non-empty value without spaces or '#'"))
    if cls is Storage:
        for key in ("host", "container"):
            if v.get(key) is not None and not v[key].startswith("/"):
                out.append((key, f"={v[key]}: must be an absolute path"))
    if cls is Defaults and "nodes" in v and v["nodes"] < 1:
        out.append(("nodes", f"={v['nodes']}: must be >= 1"))
    return out
