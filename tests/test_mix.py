"""Data mixes: the WEIGHT:PATH / NAME=PATH syntax, weight resolution, the plan's mix, and the pre-flight checks of
every input (JSONL globs through the mounts even when tokenize is planned; the token budget per part and overall).
Pure or on real files in a temporary directory; no NeMo."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from launcher.cli import main as cli_main
from launcher.errors import ConfigError
from launcher.jobspec import BlendPart, JobSpec, Parallelism, TrainSpec
from launcher.mix import (
    MixError,
    group_valid,
    parse_data_item,
    parse_valid_item,
    resolve_train_spec,
    resolve_weights,
)
from launcher.plan import Overrides, PlanContext, build_plan
from launcher.preflight import RealFileSystem, check_plan, prefix_tokens, run_preflight
from launcher.profiles import load_profile, parse_profile
from tests.test_preflight import by_where, facts, site, write_indexed  # noqa: F401 (site: a fixture)

CTX = PlanContext(code_dir="/src/cpt-launch", command="t", run_name="r1")
FS = RealFileSystem()


# ------------------------------------------------------------------------------------------------ syntax


@pytest.mark.parametrize("text, weight, path", [
    ("0.9:ja_wiki/train_*.jsonl.gz", 0.9, "ja_wiki/train_*.jsonl.gz"),
    ("3:en/replay_*.jsonl", 3.0, "en/replay_*.jsonl"),
    ("1e-1:en", 0.1, "en"),
    ("ja_wiki/train_*.jsonl.gz", None, "ja_wiki/train_*.jsonl.gz"),
    ("s3://bucket/ja.jsonl", None, "s3://bucket/ja.jsonl"),  # not a number before the ':'
    ("/data/a:b_text_document", None, "/data/a:b_text_document"),
    ("ja:v2/x.jsonl", None, "ja:v2/x.jsonl"),
    ("./1:odd.jsonl", None, "./1:odd.jsonl"),  # the way to write a path that starts with NUMBER:
    ("0.5:/data/a:b_text_document", 0.5, "/data/a:b_text_document"),  # only the first ':' separates
])
def test_a_leading_number_and_colon_is_a_weight(text: str, weight: float | None, path: str) -> None:
    item, problems = parse_data_item(text, f"--data {text}")
    assert not problems and item is not None
    assert (item.weight, item.path) == (weight, path)


@pytest.mark.parametrize("text, says", [
    ("0:ja.jsonl", "not positive"), ("-0.5:ja.jsonl", "not positive"), ("1.2.3:ja.jsonl", "does not parse"),
    ("0.5:", "names no input"), ("e:ja.jsonl", "does not parse"),
])
def test_bad_weights_are_errors_naming_the_item(text: str, says: str) -> None:
    item, problems = parse_data_item(text, f"--data {text}")
    assert item is None and len(problems) == 1
    assert problems[0].where == f"--data {text}" and says in problems[0].message
    assert "allowed" in problems[0].message


def test_validation_names() -> None:
    ja, _ = parse_valid_item("ja=ja_wiki/validation_0.jsonl.gz", "w")
    plain, _ = parse_valid_item("ja_wiki/validation_0.jsonl.gz", "w")
    slash, _ = parse_valid_item("/data/a=b/valid_text_document", "w")
    assert ja is not None and (ja.name, ja.path) == ("ja", "ja_wiki/validation_0.jsonl.gz")
    assert plain is not None and plain.name == "valid"
    assert slash is not None and (slash.name, slash.path) == ("valid", "/data/a=b/valid_text_document")
    bad, problems = parse_valid_item("ja.wiki=x.jsonl", "--valid-data ja.wiki=x.jsonl")
    assert bad is None and "set name 'ja.wiki'" in problems[0].message
    too_long, problems = parse_valid_item("x" * 33 + "=v.jsonl", "w")
    assert too_long is None and problems
    en1, _ = parse_valid_item("en=a.jsonl", "1")
    en2, _ = parse_valid_item("en=b.jsonl", "2")
    assert en1 and en2 and ja
    assert [(n, [i.path for i in its]) for n, its in group_valid([ja, en1, en2])] == [
        ("ja", ["ja_wiki/validation_0.jsonl.gz"]), ("en", ["a.jsonl", "b.jsonl"])]


# ------------------------------------------------------------------------------------------------ weights


def test_weights_resolve_by_the_rule() -> None:
    assert resolve_weights([9.0, 1.0], [None, None]) == [0.9, 0.1]  # all explicit: normalised, no tokens needed
    assert resolve_weights([None, None], [3000, 1000]) == [0.75, 0.25]  # Megatron's default
    assert resolve_weights([0.1, None], [None, None]) == pytest.approx([0.1, 0.9])  # one open part takes the rest
    assert resolve_weights([0.2, None, None], [None, 600, 200]) == pytest.approx([0.2, 0.6, 0.2])
    with pytest.raises(MixError, match="leaving nothing"):
        resolve_weights([0.6, 0.5, None], [None, None, 10])
    with pytest.raises(MixError, match="unknown"):
        resolve_weights([None, None], [10, None])


def test_the_job_resolves_by_token_weights_from_stats_json(tmp_path: Path) -> None:
    """What recipes.entry does at train start, on real files: stats.json where the tokenize stage wrote one, the
    .idx header where a prefix has none (Megatron's own tool writes no stats.json)."""
    a, b = tmp_path / "ja_text_document", tmp_path / "en_text_document"
    write_indexed(a, [[1] * 30] * 100)  # 3,000 tokens
    write_indexed(b, [[1] * 10] * 100)
    Path(f"{b}.stats.json").write_text(json.dumps({"tokens": 1000}))
    spec = TrainSpec(blend=[BlendPart(prefix=str(a)), BlendPart(prefix=str(b), stats=f"{b}.stats.json")],
                     max_steps=10, seq_length=10, parallelism=Parallelism(gbs=10))
    js = JobSpec.from_json(JobSpec(train=spec, convert=__import__("launcher.jobspec").jobspec.ConvertSpec(),
                                   export=__import__("launcher.jobspec").jobspec.ExportSpec()).to_json())
    assert js.train.blend == spec.blend  # the blend survives the JSON round trip
    got = resolve_train_spec(js.train)
    assert got.train_data == [0.75, str(a), 0.25, str(b)]
    assert [p.tokens for p in got.blend] == [3000, 1000]
    assert [p.epochs for p in got.blend] == [0.25, 0.25]  # 1,000 run tokens x share / tokens
    Path(f"{b}.stats.json").write_text(json.dumps({"tokens": 3000}))  # the count really comes from the file
    assert resolve_train_spec(js.train).train_data == [0.5, str(a), 0.5, str(b)]


def test_fixed_shares_still_report_tokens_and_epochs_in_the_job(tmp_path: Path) -> None:
    """Explicit weights: the plan wrote the Megatron list; the job only fills in what its log shows (the GPU run's
    log said '? tokens, ? epochs')."""
    a, b = tmp_path / "ja_text_document", tmp_path / "en_text_document"
    write_indexed(a, [[1] * 30] * 100)
    write_indexed(b, [[1] * 10] * 100)
    spec = TrainSpec(blend=[BlendPart(prefix=str(a), weight=0.9, share=0.9), BlendPart(prefix=str(b), weight=0.1,
                                                                                    share=0.1)],
                     train_data=[0.9, str(a), 0.1, str(b)], max_steps=10, seq_length=10, parallelism=Parallelism(gbs=10))
    got = resolve_train_spec(spec)
    assert got.train_data == [0.9, str(a), 0.1, str(b)]
    assert [p.tokens for p in got.blend] == [3000, 1000] and [p.epochs for p in got.blend] == [0.3, 0.1]


# ------------------------------------------------------------------------------------------------ plan


def _plan(**ov: object):  # type: ignore[no-untyped-def]
    return build_plan(load_profile("dgx-h100"), Overrides(**ov), CTX)  # type: ignore[arg-type]


def test_the_plan_and_json_show_the_mix() -> None:
    p = _plan(data=("0.9:ja_wiki/train_*.jsonl.gz", "0.1:en/replay_*.jsonl"),
              valid_data=("ja=ja_wiki/validation_0.jsonl.gz", "en=en/validation.jsonl"))
    t = p.jobspec.train
    assert t.train_data == [0.9, "/data/tokenized/ja_wiki_train_text_document",
                            0.1, "/data/tokenized/en_replay_text_document"]
    blend = p.to_json()["train"]["blend"]
    assert [(b["weight"], b["prefix"], b["tokens"]) for b in blend] == [
        (0.9, "/data/tokenized/ja_wiki_train_text_document", None),
        (0.1, "/data/tokenized/en_replay_text_document", None)]
    assert [v.name for v in t.valid_sets] == ["ja", "en"]
    assert t.valid_data == ["/data/tokenized/ja_wiki_validation_0_text_document"]  # the first set
    assert len(p.stage("tokenize").command) and p.stage("tokenize").script.count("launcher.cli tokenize") == 4
    from launcher.plan import plan_summary

    text = plan_summary(p)
    assert "90.0% /data/tokenized/ja_wiki_train_text_document" in text and "ja:" in text and "en:" in text


def test_epochs_in_the_plan_when_token_counts_are_known() -> None:
    data = ("/lustre/cpt/data/ja_text_document", "/lustre/cpt/data/en_text_document")
    ctx = dataclasses.replace(CTX, prefix_tokens={data[0]: 9 * 10**9, data[1]: 10**9})
    t = build_plan(load_profile("dgx-h100"), Overrides(data=data, max_steps=100), ctx).jobspec.train
    run_tokens = 100 * 1024 * 8192
    assert [b.share for b in t.blend] == pytest.approx([0.9, 0.1], abs=1e-6)
    assert t.blend[1].epochs == pytest.approx(0.1 * run_tokens / 10**9, abs=1e-3)


def test_profile_entries_with_weights_and_names(tmp_path: Path) -> None:
    import yaml

    doc = yaml.safe_load(Path(load_profile("dgx-h100").source).read_text())
    doc["defaults"]["data"] = [{"path": "ja/train.jsonl", "weight": 0.8}, "en/x_text_document"]
    doc["defaults"]["valid_data"] = [{"name": "ja", "path": "ja/valid.jsonl"}, "en=en/valid.jsonl"]
    text = yaml.safe_dump(doc)
    prof = parse_profile(text, "p.yaml")
    p = build_plan(prof, Overrides(), CTX)
    assert [b.weight for b in p.jobspec.train.blend] == [0.8, None]
    assert [v.name for v in p.jobspec.train.valid_sets] == ["ja", "en"]
    doc["defaults"]["data"][0]["weight"] = -1
    doc["defaults"]["valid_data"][0]["name"] = "ja wiki"
    with pytest.raises(ConfigError) as e:
        parse_profile(yaml.safe_dump(doc), "p.yaml")
    assert "weight=-1" in str(e.value) and "name=ja wiki" in str(e.value)


def test_bad_items_are_refused_together() -> None:
    with pytest.raises(ConfigError) as e:
        _plan(data=("0:ja.jsonl", "x:y", "2e:en.jsonl"), valid_data=("bad.name=v.jsonl",))
    wheres = [p.where for p in e.value.problems]
    assert wheres == ["--data 0:ja.jsonl", "--data 2e:en.jsonl", "--valid-data bad.name=v.jsonl"]


# ------------------------------------------------------------------------------------------------ pre-flight


def test_a_glob_that_matches_nothing_is_an_error_even_when_tokenize_is_planned(
        site: dict[str, Path]) -> None:  # noqa: F811
    (site["data"] / "ja").mkdir()
    (site["data"] / "ja" / "train_0.jsonl").write_text('{"text": "x"}\n')
    (site["data"] / "ja" / "notes.txt").write_text("x")
    f = facts(site, data_planned=True, train_data=[(None, "/data/tokenized/ja_text_document")],
              jsonl_inputs=[("--data 0.9:ja/train_*.jsonl", "/data/ja/train_*.jsonl"),
                            ("--data en/replay_*.jsonl", "/data/en/replay_*.jsonl"),
                            ("--data ja/*", "/data/ja/*"),
                            ("--data /elsewhere/x.jsonl", "/elsewhere/x.jsonl")])
    w = by_where(run_preflight(f, FS))
    assert "--data 0.9:ja/train_*.jsonl" not in w
    miss = w["--data en/replay_*.jsonl"]
    assert miss.severity == "error" and "matches no file" in miss.message and str(site["data"]) in miss.message
    assert "not JSONL" in w["--data ja/*"].message and "notes.txt" in w["--data ja/*"].message
    assert "not visible inside the container" in w["--data /elsewhere/x.jsonl"].message


def test_the_budget_covers_each_part_and_the_whole(site: dict[str, Path]) -> None:  # noqa: F811
    write_indexed(site["data"] / "en_text_document", [[1] * 100] * 10)  # 1,000 tokens
    write_indexed(site["data"] / "big_text_document", [[1] * 1000] * 100)  # 100,000 tokens
    par = Parallelism(tp=1, pp=1, cp=1, dp=1, mbs=1, gbs=10)
    base = dict(max_steps=10, parallelism=par, gpus=1, seq_length=100)  # 10,000 run tokens
    # 10% replay from 1,000 tokens: 1 epoch, fine; the default weights (by tokens) give it 1%
    ok = facts(site, **base, train_data=[(0.9, "/data/big_text_document"), (0.1, "/data/en_text_document")])
    assert not [p for p in run_preflight(ok, FS) if p.where.startswith("--data")]
    # 50% of 10,000 = 5 epochs of en: more than a few
    hot = facts(site, **base, train_data=[(0.5, "/data/big_text_document"), (0.5, "/data/en_text_document")])
    w = by_where(run_preflight(hot, FS))
    assert w["--data /data/en_text_document"].severity == "warning"
    assert "5.0 times" in w["--data /data/en_text_document"].message
    # the whole blend smaller than the run
    small = facts(site, **{**base, "max_steps": 100},
                  train_data=[(None, "/data/ja_text_document"), (None, "/data/en_text_document")])
    w = by_where(run_preflight(small, FS))
    assert "as a whole" in w["--data"].message and "1,650 tokens in 2 datasets" in w["--data"].message


def test_check_refuses_a_missing_glob_before_anything_is_queued(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                                 ) -> None:
    """The new user's case from the issue: `cpt-launch check` with a corpus glob that matches no file."""
    prof = tmp_path / "p.yaml"
    text = Path(load_profile("workstation-48gb").source).read_text()
    for area in ("runs", "models", "data", "hf_cache"):
        (tmp_path / area).mkdir()
    prof.write_text(_with_storage(text, tmp_path))
    rc = cli_main(["check", "--cluster", str(prof), "--data", "0.9:ja_wiki/train_*.jsonl.gz", "--data",
                   "0.1:en/replay_*.jsonl", "--valid-data", "ja=ja_wiki/validation_0.jsonl.gz", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 2
    errors = {p["where"]: p["message"] for p in out["problems"] if p["severity"] == "error"}
    for item in ("--data 0.9:ja_wiki/train_*.jsonl.gz", "--data 0.1:en/replay_*.jsonl",
                 "--valid-data ja=ja_wiki/validation_0.jsonl.gz"):
        assert "matches no file" in errors[item]
    assert [b["weight"] for b in out["train"]["blend"]] == [0.9, 0.1]


def _with_storage(text: str, root: Path) -> str:
    """A copy of a profile whose storage areas are under ``root``."""
    import yaml

    doc = yaml.safe_load(text)
    for area in doc["storage"]:
        doc["storage"][area]["host"] = str(root / area)
    return yaml.safe_dump(doc)


def test_prefix_tokens_for_the_plan_context(site: dict[str, Path]) -> None:  # noqa: F811
    prof = load_profile("workstation-48gb")
    st = prof.storage
    prof = dataclasses.replace(prof, storage=dataclasses.replace(
        st, data=dataclasses.replace(st.data, host=str(site["data"]))))
    write_indexed(site["data"] / "en_text_document", [[1] * 10] * 10)
    ov = Overrides(data=("ja_text_document", "en_text_document"), valid_data=("ja_text_document",))
    plan = build_plan(prof, ov, CTX)
    tokens = prefix_tokens(plan)
    assert tokens == {str(site["data"] / "ja_text_document"): 650, str(site["data"] / "en_text_document"): 100}
    t = build_plan(prof, ov, dataclasses.replace(CTX, prefix_tokens=tokens)).jobspec.train
    assert t.train_data[0::2] == pytest.approx([650 / 750, 100 / 750])
    assert not [p for p in check_plan(plan, {}) if p.where.startswith("--data") and p.severity == "error"]
