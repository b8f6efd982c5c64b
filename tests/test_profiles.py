"""Cluster profiles: every shipped profile loads; bad profiles fail with file:line: field=value: allowed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from launcher.errors import ConfigError
from launcher.profiles import available_profiles, load_profile, parse_profile

SHIPPED = ["dgx-h100", "local-docker", "single-node", "test-slurm", "workstation-48gb"]
GOOD = (Path(__file__).resolve().parent.parent / "clusters" / "dgx-h100.yaml").read_text()


def test_all_shipped_profiles_load() -> None:
    assert available_profiles() == SHIPPED
    executors = {n: load_profile(n).executor for n in SHIPPED}
    assert executors == {"dgx-h100": "slurm", "local-docker": "docker", "single-node": "torchrun",
                         "test-slurm": "slurm", "workstation-48gb": "local"}


def test_dgx_profile_values() -> None:
    p = load_profile("dgx-h100")
    assert p.hardware.gpus_per_node == 8 and p.hardware.gpu_memory == pytest.approx(79.1)
    assert p.container is not None and p.container.image == "nvcr.io/nvidia/nemo:25.02.01"
    assert p.slurm is not None and p.slurm.exclusive and p.slurm.mem == "0"
    assert ("/lustre/cpt/data", "/data") in p.mounts() and ("/lustre/cpt/hf_cache", "/hf_cache") in p.mounts()


def test_workstation_is_the_seeds_machine() -> None:
    p = load_profile("workstation-48gb")
    assert (p.hardware.gpus_per_node, p.hardware.host_memory_gib) == (1, 251)
    assert 44 < p.hardware.gpu_memory <= 48


def _errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as ei:
        parse_profile(text, "clusters/x.yaml")
    return [str(p) for p in ei.value.problems]


def test_nine_gpus_on_a_dgx_node_names_file_line_field_value() -> None:
    errs = _errors(GOOD.replace("gpus_per_node: 8", "gpus_per_node: 9"))
    line = GOOD.splitlines().index("  gpus_per_node: 8") + 1
    assert errs == [f"clusters/x.yaml:{line}: error: hardware.gpus_per_node=9: a DGX/HGX H100 node has 8 "
                    "(allowed: 1..8)"]


def test_unknown_key_suggests_the_nearest() -> None:
    errs = _errors(GOOD.replace("  partition: batch", "  partiton: batch"))
    assert any("slurm.partiton: unknown field; did you mean 'slurm.partition'?" in e for e in errs)
    assert any("slurm.partition: missing" in e for e in errs)


def test_all_problems_at_once() -> None:
    bad = (GOOD.replace("gpus_per_node: 8", "gpus_per_node: 9")
           .replace('time: "04:00:00"', "time: soon")
           .replace("max_nodes: 64", "max_nodes: many")
           .replace("host: /lustre/cpt/data,", "host: lustre/data,"))
    errs = _errors(bad)
    joined = "\n".join(errs)
    assert len(errs) == 4, joined
    assert "gpus_per_node=9" in joined and "slurm.time=soon: allowed: HH:MM:SS" in joined
    assert "hardware.max_nodes=many: expected an integer" in joined
    assert "storage.data.host=lustre/data: must be an absolute path" in joined


def test_wrong_types_and_missing_fields() -> None:
    errs = _errors("name: x\nexecutor: kubernetes\nhardware: [1, 2]\n")
    joined = "\n".join(errs)
    assert "executor=kubernetes: allowed: slurm, local, docker, torchrun" in joined
    assert "hardware=[...]: expected a mapping of fields" in joined
    assert "storage: missing" in joined


def test_secret_in_env_is_refused() -> None:
    errs = _errors(GOOD.replace('    NCCL_IB_SL: "1"', '    HF_TOKEN: "hf_abc"'))
    assert any("defaults.env.HF_TOKEN: looks like a secret" in e for e in errs)


def test_not_yaml() -> None:
    errs = _errors("name: [unclosed\n")
    assert errs[0].startswith("clusters/x.yaml:") and "not valid YAML" in errs[0]


def test_cli_bad_profile_exits_2_without_traceback(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(GOOD.replace("gpus_per_node: 8", "gpus_per_node: 9").replace("  partition: batch", "  partiton: b"))
    r = subprocess.run([sys.executable, "-m", "launcher.cli", "--cluster", str(f), "--dry-run"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert f"{f}:" in r.stderr and "gpus_per_node=9" in r.stderr and "did you mean 'slurm.partition'" in r.stderr


def test_cluster_by_unknown_name_suggests() -> None:
    from launcher.cli import main

    assert main(["--cluster", "dgx-h10", "--dry-run"]) == 2
