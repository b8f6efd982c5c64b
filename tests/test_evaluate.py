"""The evaluate stage on CPU: tiny random-init HF Llama models with the real Llama-3.1 tokenizer, real Japanese and
English text (Debian's manuals), the real lm-evaluation-harness on a local task file. No network (HF_HUB_OFFLINE)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from launcher.evaluate.data import DataItem, EvalInputError, parse_data_item, parse_data_items
from launcher.evaluate.replies import DEFAULT_PROMPTS, load_prompts
from launcher.evaluate.script import count_script, japanese_share, mainly_japanese
from tests.fixtures.real_data import build_japanese_jsonl, fixture_cache_dir

REPO = Path(__file__).resolve().parent.parent
DEBIAN_REFERENCE_EN = Path("/usr/share/debian-reference/debian-reference.en.txt.gz")
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


# ---- which replies are mainly Japanese ------------------------------------------------------------------------


@pytest.mark.parametrize("text, ja, latin, expected", [
    ("東京は日本の首都です。", 10, 0, True),
    ("The capital of Japan is Tokyo.", 0, 24, False),
    ("", 0, 0, False),  # an empty reply is not a Japanese one
    ("12345 !?", 0, 0, False),  # digits and punctuation count neither way
    ("def f(x):\n    return x * 2\n", 0, 12, False),  # code only
    ("これはPythonです", 5, 6, False),  # characters, not words: one long English name wins
    ("東京タワーはTokyo Towerです", 8, 10, False),
    ("日本語で答えます。Yes", 8, 3, True),  # mixed: more kana/kanji than Latin letters
    ("カタカナとひらがなと漢字", 12, 0, True),
    ("ｶﾀｶﾅ ＡＢＣ", 4, 3, True),  # half-width katakana, full-width Latin
    ("Café déjà vu", 0, 10, False),  # accented Latin letters are Latin
    ("「」、。・！？", 0, 0, False),  # Japanese punctuation alone is not Japanese text
    ("あa", 1, 1, False),  # a tie is not "outnumber"
    ("々〆", 2, 0, True),
    ("中文", 2, 0, True),  # Chinese hanzi are kanji by code point: the script measure cannot tell them apart
    ("Привет мир", 0, 0, False),  # Cyrillic is neither
])
def test_script_counts_and_the_japanese_rule(text: str, ja: int, latin: int, expected: bool) -> None:
    c = count_script(text)
    assert (c.japanese, c.latin) == (ja, latin)
    assert mainly_japanese(text) is expected


def test_japanese_share_is_a_fraction_of_the_replies() -> None:
    assert japanese_share(["日本語です", "English", "", "です"]) == 0.5
    with pytest.raises(ValueError):
        japanese_share([])


def test_the_shipped_prompts_are_at_least_30_japanese_instructions() -> None:
    prompts = load_prompts(DEFAULT_PROMPTS)
    assert len(prompts) >= 30
    assert len({p.id for p in prompts}) == len(prompts) and len({p.prompt for p in prompts}) == len(prompts)
    assert all(mainly_japanese(p.prompt) for p in prompts)


def test_data_items_need_a_name_and_must_exist(tmp_path: Path) -> None:
    assert parse_data_item("ja=a/b_*.jsonl") == DataItem("ja", "a/b_*.jsonl")
    assert parse_data_item("en-2=x_text_document").is_prefix
    for bad in ("a/b.jsonl", "=x.jsonl", "ja=", "bad name=x.jsonl", "x" * 33 + "=y.jsonl"):
        with pytest.raises(EvalInputError, match="expected NAME=GLOB or NAME=PREFIX"):
            parse_data_item(bad)
    with pytest.raises(EvalInputError, match="no file matches"):
        parse_data_items([f"ja={tmp_path}/none_*.jsonl"])
    with pytest.raises(EvalInputError, match="nope_text_document.bin does not exist"):
        parse_data_items([f"ja={tmp_path}/nope_text_document"])
    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n')
    with pytest.raises(EvalInputError, match="given twice"):
        parse_data_items([f"ja={tmp_path}/a.jsonl", f"ja={tmp_path}/a.jsonl"])


# ---- tiny models --------------------------------------------------------------------------------------------


def _tiny_model(dest: Path, tokenizer_dir: Path, seed: int) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=128256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=131072,
                      bos_token_id=128000, eos_token_id=128001, rope_theta=500000.0,
                      rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    LlamaForCausalLM(cfg).save_pretrained(dest)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(tokenizer_dir / f, dest / f)
    return dest


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, llama31_tokenizer_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"cpt": _tiny_model(root / "cpt", llama31_tokenizer_dir, 0),
            "base": _tiny_model(root / "base", llama31_tokenizer_dir, 1)}


@pytest.fixture(scope="module")
def english_jsonl() -> Path:
    dest = fixture_cache_dir() / "debian-reference-en.jsonl"
    if not dest.exists():
        build_japanese_jsonl(dest, source=DEBIAN_REFERENCE_EN, min_japanese=0)
    return dest


def _short_jsonl(src: Path, dest: Path, n: int, max_chars: int = 400) -> Path:
    """The first ``n`` documents of ``src`` cut to ``max_chars``: CPU time goes into the 128,256-way logits."""
    rows = [json.loads(x) for x in src.read_text(encoding="utf-8").splitlines()[:n]]
    dest.write_text("".join(json.dumps({"text": r["text"][:max_chars]}, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8")
    return dest


@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory, japanese_jsonl: Path, english_jsonl: Path,
               llama31_tokenizer_dir: Path) -> dict[str, str]:
    """Short held-out Japanese and English JSONL, and the Japanese one tokenized by the data stage (a prefix)."""
    from launcher.data import tokenize_jsonl

    d = tmp_path_factory.mktemp("heldout")
    ja = _short_jsonl(japanese_jsonl, d / "ja.jsonl", 3)
    en = _short_jsonl(english_jsonl, d / "en.jsonl", 3)
    res = tokenize_jsonl([str(ja)], str(llama31_tokenizer_dir), str(d / "ja_tok"), workers=1)
    return {"ja": str(ja), "en": str(en), "jatok": res.outputs["text"]}


def _load(path: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def _reference_ppl(model: Any, docs: list[list[int]], max_length: int) -> tuple[float, int]:
    """transformers' own loss (model(labels=...)), one window at a time, weighted by its predicted tokens."""
    import torch

    nll, n = 0.0, 0
    for d in docs:
        for s in range(0, len(d) - 1, max_length - 1):
            w = torch.tensor([d[s:s + max_length]])
            with torch.no_grad():
                loss = model(input_ids=w, labels=w).loss
            nll += float(loss) * (w.shape[1] - 1)
            n += w.shape[1] - 1
    return math.exp(nll / n), n


@pytest.mark.parametrize("max_length, batch_size", [(4096, 1), (48, 3)])
def test_perplexity_equals_transformers_own_loss(models: dict[str, Path], japanese_jsonl: Path, max_length: int,
                                                 batch_size: int) -> None:
    """Short documents in one window each, and long ones split into windows and batched with padding."""
    from launcher.evaluate.data import documents
    from launcher.evaluate.ppl import perplexity

    model, tok = _load(models["cpt"])
    docs = documents(DataItem("ja", str(japanese_jsonl)), tok, 6)
    assert len(docs) == 6 and docs[0][0] == 128000  # BOS, then the text
    docs = [d[:200] for d in docs]  # some paragraphs are 6,000 tokens: too slow for a CPU test
    got = perplexity(model, docs, max_length=max_length, batch_size=batch_size, device="cpu", quiet=True)
    want, n = _reference_ppl(model, docs, max_length)
    assert got.tokens == n == sum(len(d) - 1 for d in docs)
    assert got.windows == sum(len(range(0, len(d) - 1, max_length - 1)) for d in docs)
    if max_length == 48:
        assert got.windows > len(docs)  # the split really happened
    assert got.ppl == pytest.approx(want, rel=1e-4)
    assert 1e4 < got.ppl < 1e6  # a random model over a 128,256-token vocabulary: about the vocabulary size


def test_perplexity_refuses_tokens_outside_the_vocabulary(models: dict[str, Path]) -> None:
    from launcher.evaluate.ppl import perplexity

    model, _ = _load(models["cpt"])
    with pytest.raises(ValueError, match="token id 200000 >= the model's vocab_size 128256"):
        perplexity(model, [[1, 2, 200000]], max_length=8, batch_size=1, device="cpu", quiet=True)


def test_greedy_replies_are_those_of_generate_one_by_one(models: dict[str, Path]) -> None:
    """Batched, left-padded greedy generation gives each prompt the reply it gets alone."""
    import torch

    from launcher.evaluate.replies import PLAIN_FORMAT, generate_replies, prompt_format

    model, tok = _load(models["base"])
    prompts = load_prompts(DEFAULT_PROMPTS)[:5]
    assert prompt_format(tok) == "plain"  # base tokenizer_config: no chat template
    got = generate_replies(model, tok, prompts, max_new_tokens=6, batch_size=3, device="cpu", quiet=True)
    for p, r in zip(prompts, got):
        ids = tok(PLAIN_FORMAT.format(prompt=p.prompt), return_tensors="pt")["input_ids"]
        with torch.no_grad():
            alone = model.generate(input_ids=ids, do_sample=False, max_new_tokens=6, pad_token_id=128001)
        text = tok.decode(alone[0, ids.shape[1]:], skip_special_tokens=True).split("\n### ")[0].strip()
        assert (r["id"], r["prompt"], r["reply"]) == (p.id, p.prompt, text)
        assert r["japanese"] is mainly_japanese(text) and 1 <= r["new_tokens"] <= 6


# ---- the command, end to end ----------------------------------------------------------------------------------


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "launcher.cli", "evaluate", *args], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, **OFFLINE, **(env or {})}, timeout=900)


def test_evaluate_cpt_beside_base_writes_the_documented_json(models: dict[str, Path], small_data: dict[str, str],
                                                            tmp_path: Path) -> None:
    out = tmp_path / "run" / "eval" / "evaluate.json"
    r = _cli("--model-dir", str(models["cpt"]), "--base-model-dir", str(models["base"]),
             *(x for name, path in small_data.items() for x in ("--data", f"{name}={path}")),
             "--max-docs", "3", "--max-length", "64", "--max-new-tokens", "4", "--batch-size", "8",
             "--output", str(out), "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    d = json.loads(r.stdout)
    assert json.loads(out.read_text()) == d
    assert sorted(p.name for p in out.parent.iterdir()) == ["evaluate.json", "replies.jsonl"]  # no .partial left
    assert {"models", "ppl", "japanese_reply_share", "lm_eval", "settings", "schema_version"} <= set(d)
    assert list(d["models"]) == ["cpt", "base"]
    n_prompts = len(load_prompts(DEFAULT_PROMPTS))
    for label, m in d["models"].items():
        assert m["path"] == str(models[label])
        assert set(m["ppl"]) == set(m["tokens"]) == {"ja", "en", "jatok"}
        assert all(isinstance(v, float) and v > 1 for v in m["ppl"].values())
        assert m["prompt_format"] == "plain" and len(m["replies"]) == n_prompts
        assert {"prompt", "reply", "japanese"} <= set(m["replies"][0])
        assert m["japanese_reply_share"] == sum(x["japanese"] for x in m["replies"]) / n_prompts
        assert m["lm_eval"] == {}
        for name in m["ppl"]:
            assert d["ppl"][name][label] == m["ppl"][name]
            assert m["ppl"][name] == pytest.approx(math.exp(m["nll_sum"][name] / m["tokens"][name]))
    assert d["models"]["cpt"]["ppl"] != d["models"]["base"]["ppl"]  # two different models were measured
    # the prepared prefix is used as stored, the same tokens for both models
    assert d["models"]["cpt"]["tokens"]["jatok"] == d["models"]["base"]["tokens"]["jatok"]
    assert d["japanese_reply_share"] == {k: m["japanese_reply_share"] for k, m in d["models"].items()}
    assert d["settings"]["data_kind"] == {"ja": "jsonl", "en": "jsonl", "jatok": "megatron_prefix"}
    rows = [json.loads(x) for x in (out.parent / "replies.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * n_prompts and {x["model"] for x in rows} == {"cpt", "base"}


def test_evaluate_alone_without_base_and_the_run_dir_default(models: dict[str, Path], small_data: dict[str, str],
                                                           tmp_path: Path) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "prompt": "日本の首都は？"}\n')
    r = _cli("--model-dir", str(models["cpt"]), "--data", f"ja={small_data['ja']}", "--max-docs", "2",
             "--max-new-tokens", "3", "--prompts", str(prompts), env={"CPT_RUN_DIR": str(tmp_path / "run")})
    assert r.returncode == 0, r.stderr[-3000:]
    d = json.loads((tmp_path / "run" / "eval" / "evaluate.json").read_text())
    assert list(d["models"]) == ["cpt"] and list(d["ppl"]["ja"]) == ["cpt"]
    assert r.stdout.splitlines()[0].split() == ["what", "cpt"]  # the text table without --json


def test_bad_inputs_exit_2_before_any_model_loads(tmp_path: Path) -> None:
    r = _cli("--model-dir", str(tmp_path), "--data", "ja=x.jsonl")
    assert r.returncode == 2 and "no config.json there" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "config.json").write_text("{}")
    r = _cli("--model-dir", str(tmp_path), "--data", "x.jsonl")
    assert r.returncode == 2 and "expected NAME=GLOB or NAME=PREFIX" in r.stderr


def test_help_and_plan_do_not_import_torch_with_the_evaluate_subcommand() -> None:
    code = ("import sys; from launcher.cli import main\n"
            "for argv in (['evaluate', '--help'], ['--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "main(['plan', '--cluster', 'dgx-h100', '--json'])\n"
            "print(sorted(m for m in ('torch', 'transformers', 'lm_eval', 'datasets', 'nemo') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.stdout.strip().splitlines()[-1] == "[]", r.stderr[-2000:]


# ---- lm-evaluation-harness, real, on a local task -------------------------------------------------------------

TASK_YAML = """\
task: tiny_ja_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "質問：{{{{question}}}}\\n答え："
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""
ROWS = [("日本の首都はどこですか。", ["東京", "大阪", "京都"], 0),
        ("富士山はどこにありますか。", ["北海道", "静岡県と山梨県", "沖縄県"], 1),
        ("一年は何か月ですか。", ["十か月", "十二か月", "十五か月"], 1),
        ("水は何度で沸騰しますか。", ["百度", "五十度", "二百度"], 0),
        ("日本の国花は何ですか。", ["バラ", "ひまわり", "桜"], 2)]


def _task_dir(tmp_path: Path, data_present: bool = True) -> Path:
    d = tmp_path / "tasks"
    d.mkdir()
    data = tmp_path / "tiny_ja_mc.jsonl"
    if data_present:
        data.write_text("".join(json.dumps({"question": q, "choices": c, "label": lab}, ensure_ascii=False) + "\n"
                                for q, c, lab in ROWS))
    (d / "tiny_ja_mc.yaml").write_text(TASK_YAML.format(data=data))
    return d


def test_harness_check_names_the_tasks_that_cannot_load_offline(tmp_path: Path) -> None:
    pytest.importorskip("lm_eval")
    tasks = _task_dir(tmp_path, data_present=False)
    env = {**os.environ, **OFFLINE, "HF_HOME": str(tmp_path / "hf")}
    r = subprocess.run([sys.executable, "-m", "launcher.evaluate.harness", "check",
                        "tiny_ja_mc,no_such_task,ja_leaderboard_jnli", "--include", str(tasks)],
                       capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert r.returncode == 2, r.stderr[-2000:]
    missing = json.loads(r.stdout)["missing"]
    assert set(missing) == {"tiny_ja_mc", "no_such_task", "ja_leaderboard_jnli"}
    assert "Rakuten/JGLUE (JNLI)" in missing["ja_leaderboard_jnli"]  # empty cache, no network: named
    assert "no such task" in missing["no_such_task"] and "data_files" in missing["tiny_ja_mc"]


def test_lm_eval_runs_a_local_task_in_process(models: dict[str, Path], tmp_path: Path) -> None:
    """The real harness on the tiny model; then the same check through the stage: a missing dataset exits 2."""
    pytest.importorskip("lm_eval")
    tasks = _task_dir(tmp_path)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "こんにちは"}\n')
    env = {"HF_HOME": str(tmp_path / "hf")}
    common = ("--model-dir", str(models["cpt"]), "--base-model-dir", str(models["base"]), "--prompts", str(prompts),
              "--max-new-tokens", "2", "--lm-eval-include", str(tasks), "--json", "-q")
    r = _cli(*common, "--lm-eval", "tiny_ja_mc", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    d = json.loads(r.stdout)
    acc = d["lm_eval"]["tiny_ja_mc"]["acc,none"]
    assert set(acc) == {"cpt", "base"} and all(v * len(ROWS) == round(v * len(ROWS)) for v in acc.values())
    assert d["models"]["cpt"]["lm_eval"]["tiny_ja_mc"]["acc,none"] == acc["cpt"]
    # the harness loading the model by itself (its own "hf" model) scores the same: what we hand it is the model
    ref = subprocess.run([sys.executable, "-c", (
        "import json, sys, lm_eval\n"
        "from lm_eval.tasks import TaskManager\n"
        f"r = lm_eval.simple_evaluate(model='hf', model_args='pretrained={models['base']},dtype=float32', "
        f"tasks=['tiny_ja_mc'], task_manager=TaskManager(include_path=[{str(tasks)!r}]), device='cpu', "
        "batch_size=4, bootstrap_iters=0, log_samples=False)\n"
        "print(json.dumps(r['results']['tiny_ja_mc']['acc,none']))")],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, **OFFLINE, **env}, timeout=600)
    assert ref.returncode == 0, ref.stderr[-2000:]
    assert json.loads(ref.stdout.strip().splitlines()[-1]) == acc["base"]
    r = _cli(*common, "--lm-eval", "tiny_ja_mc,ja_leaderboard_marc_ja", env=env)
    assert r.returncode == 2 and "--lm-eval ja_leaderboard_marc_ja: dataset" in r.stderr
    assert "tiny_ja_mc" not in r.stderr.split("fill the HF cache")[0].replace("--lm-eval-include", "")


# ---- the stage in the pipeline --------------------------------------------------------------------------------


def _plan(cluster: str = "dgx-h100", **ov: Any) -> Any:
    from launcher.plan import Overrides, PlanContext, build_plan
    from launcher.profiles import load_profile

    ctx = PlanContext(code_dir="/src/cpt-launch", command="cpt-launch", run_name="r1")
    return build_plan(load_profile(cluster), Overrides(**ov), ctx)


def test_the_evaluate_stage_follows_export_on_one_gpu_with_the_validation_data() -> None:
    p = _plan(valid_data=("ja_wiki/validation_0.jsonl.gz", "/lustre/cpt/data/tok/en_val_text_document.bin"),
              lm_eval=("japanese_leaderboard",))
    s = p.stage("evaluate")
    assert s.depends_on == ("export",) and s.skip_reason is None
    assert (s.resources.kind, s.resources.nodes, s.resources.gpus_per_node, s.resources.ntasks_per_node) == (
        "gpu", 1, 1, 1)
    assert list(s.command[:4]) == ["python3", "-m", "launcher.cli", "evaluate"]
    argv = list(s.command)
    assert argv[argv.index("--model-dir") + 1] == "/results/r1/export/Llama-3.1-8B-cpt"  # export's output
    assert argv[argv.index("--base-model-dir") + 1] == "/models/Llama-3.1-8B"  # what the run started from
    # JSONL as given (each model tokenizes it), a prepared prefix as a prefix; as the job sees them
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--data"] == [
        "valid=/data/ja_wiki/validation_0.jsonl.gz", "valid-2=/data/tok/en_val_text_document"]
    assert argv[argv.index("--lm-eval") + 1] == "japanese_leaderboard"
    assert argv[argv.index("--output") + 1] == "/results/r1/eval/evaluate.json"
    assert s.outputs == {"evaluation": "/lustre/cpt/runs/r1/eval/evaluate.json"}
    assert "export HF_HUB_OFFLINE=1" in s.script and "export HF_DATASETS_OFFLINE=1" in s.script
    assert p.lm_eval_tasks == ("japanese_leaderboard",)


def test_named_validation_sets_keep_their_names() -> None:
    p = _plan(valid_data=("ja=ja_wiki/validation_0.jsonl.gz", "en=/data/tok/en_val_text_document",
                          "ja=ja_wiki/validation_1.jsonl.gz"))
    argv = list(p.stage("evaluate").command)
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--data"] == [
        "ja=/data/ja_wiki/validation_0.jsonl.gz", "ja-2=/data/ja_wiki/validation_1.jsonl.gz",
        "en=/data/tok/en_val_text_document"]


def test_evaluate_off_skips_it_and_local_profiles_use_their_gpu() -> None:
    off = _plan(evaluate=False)
    assert off.stage("evaluate").skip_reason == "--evaluate off" and "evaluate" not in [
        s.name for s in off.active_stages]
    w = _plan("workstation-48gb").stage("evaluate")
    assert (w.resources.kind, w.resources.gpus_per_node) == ("gpu", 1)
    assert "CUDA_VISIBLE_DEVICES" not in w.script


def test_the_evaluate_sbatch_holds_one_gpu_not_the_node() -> None:
    from launcher.sbatch import render_sbatch

    p = _plan(nodes=2)
    text = render_sbatch(p, p.stage("evaluate"))
    assert "#SBATCH --gres=gpu:1" in text and "#SBATCH --nodes=1" in text and "#SBATCH --no-requeue" in text
    assert "--exclusive" not in text and "--mem" not in text
    train = render_sbatch(p, p.stage("train"))
    assert "#SBATCH --exclusive" in train and "#SBATCH --mem=0" in train and "#SBATCH --gres=gpu:8" in train


def test_the_cli_flags_reach_the_plan(capsys: pytest.CaptureFixture[str]) -> None:
    from launcher.cli import main

    assert main(["plan", "--cluster", "dgx-h100", "--json", "--evaluate", "off"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert [s["skipped"] for s in d["stages"] if s["name"] == "evaluate"] == ["--evaluate off"]
    assert main(["plan", "--cluster", "dgx-h100", "--json", "--lm-eval", "a, b"]) == 0
    d = json.loads(capsys.readouterr().out)
    cmd = next(s["command"] for s in d["stages"] if s["name"] == "evaluate")
    assert cmd[cmd.index("--lm-eval") + 1] == "a,b"


def test_check_refuses_lm_eval_tasks_whose_datasets_are_not_cached(tmp_path: Path) -> None:
    """`cpt-launch check` with --lm-eval: the pre-flight looks into the profile's hf_cache (empty here) and names
    the task, before anything is queued."""
    pytest.importorskip("lm_eval")
    import yaml

    d = yaml.safe_load((REPO / "clusters" / "test-slurm.yaml").read_text())
    d["storage"] = {k: {"host": str(tmp_path / k)} for k in ("runs", "models", "data", "hf_cache")}
    prof = tmp_path / "p.yaml"
    prof.write_text(yaml.safe_dump(d))
    r = subprocess.run([sys.executable, "-m", "launcher.cli", "check", "--cluster", str(prof),
                        "--lm-eval", "ja_leaderboard_marc_ja"], capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, **OFFLINE, "HF_TOKEN": "hf_x"}, timeout=600)
    assert r.returncode == 2
    assert "--lm-eval ja_leaderboard_marc_ja" in r.stderr and f"HF_HOME={tmp_path / 'hf_cache'}" in r.stderr


def test_a_tokenizer_with_a_chat_template_gets_it(llama31_tokenizer_dir: Path) -> None:
    """An Instruct tokenizer's template writes its own BOS; the base tokenizer (no template) gets the plain format."""
    from transformers import AutoTokenizer

    from launcher.evaluate.replies import PLAIN_FORMAT, prompt_format, render_prompt

    tok = AutoTokenizer.from_pretrained(llama31_tokenizer_dir)
    assert prompt_format(tok) == "plain"
    assert render_prompt(tok, "日本の首都は？") == (PLAIN_FORMAT.format(prompt="日本の首都は？"), True)
    tok.chat_template = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>"
                         "\n\n{{ m['content'] }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}"
                         "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
    text, add_special = render_prompt(tok, "日本の首都は？")
    assert prompt_format(tok) == "chat_template" and add_special is False
    assert text == ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n日本の首都は？<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids[0] == 128000 and ids.count(128000) == 1  # one BOS, the template's
