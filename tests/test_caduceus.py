"""Caduceus checkpoints in and out (mambadna.interop.caduceus, `mambadna convert`), hub-style folders.

The reference is Caduceus' own code (../shared/baselines/caduceus, run on CPU by its
reference_outputs.py through tests/caduceus_reference.py, two subprocesses per session);
those tests skip without transformers/einops or the baselines folder. The bad-input,
round-trip and hub tests build their Caduceus folders with mambadna itself and always run.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import mambadna
from mambadna.errors import CheckpointError, MambaDNAError
from mambadna.components.checkpoint import load_model, read_config, save_model
from mambadna.interop.caduceus import from_caduceus
from mambadna.tasks.convert import to_caduceus
from mambadna.components.hub import from_pretrained, save_pretrained
from mambadna.model import MambaDNA, ModelConfig

REPO = Path(__file__).resolve().parents[1]
BASELINES = Path(os.environ.get("MAMBADNA_BASELINES", REPO.parent / "shared" / "baselines"))
HELPER = Path(__file__).resolve().parent / "caduceus_reference.py"
# (variant, d_model, n_layer, d_state, seed): Ph and PS, three sizes, three seeds
CASES = [("ph", 32, 2, 16, 0), ("ps", 32, 2, 16, 0), ("ph", 48, 3, 8, 1), ("ps", 48, 3, 8, 1),
         ("ph", 64, 4, 16, 2), ("ps", 64, 4, 16, 2)]
CASE_IDS = [f"{v}-d{d}-n{n}-s{s}" for v, d, n, _, s in CASES]
RTOL = 1e-4  # max |mambadna - reference| / max |reference|, fp32 on CPU


def rel(a, b) -> float:
    a, b = torch.as_tensor(np.asarray(a)), torch.as_tensor(np.asarray(b))
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# --------------------------------------------------------------------------- the reference
def _run_helper(root: Path, mamba_src: Path, jobs, name: str) -> None:
    jf = root / f"{name}.json"
    jf.write_text(json.dumps(jobs))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # no Triton kernel runs there
    r = subprocess.run([sys.executable, str(HELPER), "--mamba-src", str(mamba_src), "--jobs", str(jf)],
                       capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]


def fused_copy(src: Path, dst: Path) -> Path:
    """The checkpoint with ``fused_add_norm: true`` (the released models' setting): RCPS norms lose
    their ``.submodule`` level then."""
    dst.mkdir(parents=True)
    c = json.loads((src / "config.json").read_text())
    c["fused_add_norm"] = True
    (dst / "config.json").write_text(json.dumps(c, indent=2))
    s = {k.replace("norm.submodule.weight", "norm.weight").replace("norm_f.submodule.weight", "norm_f.weight"): v
         for k, v in load_file(str(src / "model.safetensors")).items()}
    save_file(s, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def native_model(rc: bool) -> MambaDNA:
    """A model made by mambadna (12-id vocabulary), weights moved off their initial values."""
    torch.manual_seed(3)
    m = MambaDNA(ModelConfig(d_model=48 if rc else 24, n_layers=3, d_state=8, rc_equivariant=rc)).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


FUSED = ["ph-d32-n2-s0", "ps-d32-n2-s0", "ps-d64-n4-s2"]


@pytest.fixture(scope="session")
def ref(tmp_path_factory):
    """Caduceus' code on CPU, two subprocesses in all: reference_outputs.py for every case, then
    from_pretrained runs on those checkpoints (backbone output), on fused_add_norm copies, on
    folders written by to_caduceus, and a save_pretrained with tied tensors stored once."""
    missing = [m for m in ("transformers", "einops") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"Caduceus reference code needs {' and '.join(missing)} (pip install -e '.[test]')")
    tarball = sorted(BASELINES.glob("mamba_ssm-*.tar.gz"))
    if not (BASELINES / "caduceus" / "reference_outputs.py").is_file() or not tarball:
        pytest.skip(f"Caduceus baselines not found in {BASELINES}")
    root = tmp_path_factory.mktemp("caduceus_ref")
    with tarfile.open(tarball[-1]) as tf:
        tf.extractall(root / "src", filter="data")
    src = next((root / "src").glob("mamba_ssm-*"))
    jobs = []
    for (v, d, n, ds, seed), cid in zip(CASES, CASE_IDS):
        args = ["--d-model", d, "--n-layer", n, "--d-state", ds, "--seed", seed] + (["--rcps"] if v == "ps" else [])
        jobs.append({"make": str(root / cid), "args": args})
    _run_helper(root, src, jobs, "make")

    r = types.SimpleNamespace(root=root, case={cid: root / cid for cid in CASE_IDS}, final={}, fused={}, native={})
    ids_of = {cid: root / cid / "outputs.safetensors" for cid in CASE_IDS}
    jobs = [{"run": str(root / cid / "checkpoint"), "ids": str(ids_of[cid]), "out": str(root / f"final-{cid}"),
             "use_safetensors": False} for cid in CASE_IDS]
    for cid in FUSED:
        d = fused_copy(root / cid / "checkpoint", root / f"fused-{cid}")
        jobs.append({"run": str(d), "ids": str(ids_of[cid]), "out": str(root / f"fused-{cid}.out")})
    binonly = root / "binonly"
    shutil.copytree(root / "ps-d32-n2-s0" / "checkpoint", binonly)
    (binonly / "model.safetensors").unlink()
    jobs.append({"dedup": str(binonly), "out": str(root / "dedup")})
    ids = torch.randint(7, 12, (2, 80), generator=torch.Generator().manual_seed(5))
    ids[0, 5] = 3
    save_file({"input_ids": ids}, str(root / "native_ids.safetensors"))
    for rc in (False, True):
        to_caduceus(native_model(rc), root / f"native-{rc}")
        jobs.append({"run": str(root / f"native-{rc}"), "ids": str(root / "native_ids.safetensors"),
                     "out": str(root / f"native-{rc}.out")})
    _run_helper(root, src, jobs, "run")

    def read(out: Path):
        return load_file(str(out)), json.loads(Path(str(out) + ".json").read_text())

    r.final = {cid: read(root / f"final-{cid}")[0] for cid in CASE_IDS}
    r.fused = {cid: (root / f"fused-{cid}",) + read(root / f"fused-{cid}.out") for cid in FUSED}
    r.native = {rc: read(root / f"native-{rc}.out") for rc in (False, True)}
    r.native_ids, r.binonly, r.dedup = ids, binonly, root / "dedup"
    return r


def mixer_output(m: MambaDNA, ids, i: int):
    """Caduceus' output_hidden_states[i + 1] without fused_add_norm: block i's mixer output."""
    before = m.embed_tokens(ids) if i == 0 else m.hidden_states(ids, i - 1, final_norm=False)
    return m.hidden_states(ids, i, final_norm=False) - before


# --------------------------------------------------------------------------- reference matches
@pytest.mark.parametrize("cid", CASE_IDS)
def test_convert_and_load_match_caduceus(ref, cid, tmp_path, run_cli):
    ckpt = ref.case[cid] / "checkpoint"
    out = load_file(str(ref.case[cid] / "outputs.safetensors"))
    ids, n = out["input_ids"], int(cid.split("-n")[1].split("-")[0])
    code, _, err = run_cli(["convert", "from-caduceus", ckpt, tmp_path / "md"])
    assert code == 0, err
    converted = load_model(tmp_path / "md").eval()
    direct = mambadna.load(ckpt, device="cpu")  # a Caduceus folder, converted in memory
    assert direct.config == converted.config and direct.config.vocab_size == 16
    for m in (converted, direct.torch_model):
        with torch.no_grad():
            assert rel(m(ids), out["logits"]) < RTOL
            # reference_outputs.py's last_hidden: the input of the last block = block n-2's mixer output
            assert rel(mixer_output(m, ids, n - 2), out["last_hidden"]) < RTOL
            # Caduceus' backbone output: (B, L, d) for Ph, (B, L, 2d) fwd + RC halves for PS, same layout
            assert rel(m.hidden_states(ids), ref.final[cid]["last_hidden"]) < RTOL
    # the inference engine (chunked, numpy) gives the same
    assert rel(direct.logits(ids.numpy()), out["logits"]) < RTOL
    assert rel(direct.embed(ids.numpy(), pool=None), ref.final[cid]["last_hidden"]) < RTOL


@pytest.mark.parametrize("cid", FUSED)
def test_fused_add_norm_as_released(ref, cid):
    """fused_add_norm true (the released configs): Ph the same sums; PS swaps the residual halves every
    layer in Caduceus' fused RCPS block, which the conversion mirrors exactly."""
    d, out, info = ref.fused[cid]
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    ids = load_file(str(ref.case[cid] / "outputs.safetensors"))["input_ids"]
    m = mambadna.load(d, device="cpu").torch_model
    with torch.no_grad():
        assert rel(m(ids), out["logits"]) < RTOL
        assert rel(m.hidden_states(ids), out["last_hidden"]) < RTOL
    unfused = load_file(str(ref.case[cid] / "outputs.safetensors"))["logits"]
    if cid.startswith("ps"):  # not vacuous: the fused PS model is another function
        assert rel(out["logits"], unfused) > 1e-2
        assert from_caduceus(d)[2]["mirrored_layers"] is True


def test_odd_fused_rcps_refused(ref, tmp_path, run_cli):
    d = fused_copy(ref.case["ps-d48-n3-s1"] / "checkpoint", tmp_path / "fused")
    code, _, err = run_cli(["convert", "from-caduceus", d, tmp_path / "out"])
    line = one_error_line(err)
    assert code == 2 and "config.json" in line and "fused_add_norm" in line and "odd n_layer" in line
    assert not (tmp_path / "out").exists()


def test_bin_and_deduplicated_safetensors(ref, tmp_path):
    cid = "ps-d32-n2-s0"
    out = load_file(str(ref.case[cid] / "outputs.safetensors"))
    full = load_file(str(ref.case[cid] / "checkpoint" / "model.safetensors"))
    stored = load_file(str(ref.dedup / "model.safetensors"))
    assert len(stored) < len(full)  # tied tensors stored once
    # the other twin of each tied pair kept instead
    other = tmp_path / "other"
    shutil.copytree(ref.dedup, other)
    keep = {k: v for k, v in full.items() if k not in stored or not (
        "word_embeddings.embedding" in k or "mamba_fwd.in_proj" in k or "mamba_fwd.out_proj" in k)}
    assert len(keep) == len(stored)
    save_file(keep, str(other / "model.safetensors"), metadata={"format": "pt"})
    for d, wfile in ((ref.binonly, "pytorch_model.bin"), (ref.dedup, "model.safetensors"),
                     (other, "model.safetensors")):
        mc, state, info = from_caduceus(d)
        assert info["weights"] == wfile
        m = MambaDNA(mc)
        m.load_state_dict(state)
        with torch.no_grad():
            assert rel(m.eval()(out["input_ids"]), out["logits"]) < RTOL


@pytest.mark.parametrize("cid", ["ph-d48-n3-s1", "ps-d64-n4-s2"])
@pytest.mark.parametrize("fused", [False, True])
def test_to_caduceus_gives_back_the_same_tensors(ref, cid, fused, tmp_path, run_cli):
    src = ref.case[cid] / "checkpoint"
    if fused:
        src = fused_copy(src, tmp_path / "fused")
    assert run_cli(["convert", "from-caduceus", src, tmp_path / "md"]).code == 0
    code, _, err = run_cli(["convert", "to-caduceus", tmp_path / "md", tmp_path / "back"])
    assert code == 0, err
    a, b = load_file(str(src / "model.safetensors")), load_file(str(tmp_path / "back" / "model.safetensors"))
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    ca, cb = (json.loads((p / "config.json").read_text()) for p in (src, tmp_path / "back"))
    for k in ("d_model", "n_layer", "vocab_size", "ssm_cfg", "rcps", "fused_add_norm", "residual_in_fp32",
              "complement_map", "pad_vocab_size_multiple", "bidirectional", "norm_epsilon"):
        assert ca[k] == cb[k], k


@pytest.mark.parametrize("rc", [False, True])
def test_to_caduceus_opens_in_caduceus_with_the_same_outputs(ref, rc):
    """A model made by mambadna (12-id vocabulary) opens in CaduceusForMaskedLM.from_pretrained."""
    out, info = ref.native[rc]
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["vocab_size"] == 12
    m = native_model(rc)
    with torch.no_grad():
        assert rel(m(ref.native_ids), out["logits"]) < RTOL
        assert rel(m.hidden_states(ref.native_ids), out["last_hidden"]) < RTOL


@pytest.mark.gpu
@pytest.mark.parametrize("cid", ["ph-d64-n4-s2", "ps-d64-n4-s2"])
def test_converted_model_on_gpu(ref, cid):
    """The CPU reference against mambadna's Triton kernels: fp32 and bf16 autocast."""
    out = load_file(str(ref.case[cid] / "outputs.safetensors"))
    model = mambadna.load(ref.case[cid] / "checkpoint", device="cuda")
    ids = out["input_ids"].cuda()
    with torch.no_grad():
        assert rel(model.torch_model(ids).cpu(), out["logits"]) < 1e-3
        with torch.autocast("cuda", dtype=torch.bfloat16):
            assert rel(model.torch_model(ids).float().cpu(), out["logits"]) < 3e-2
    assert rel(model.logits(out["input_ids"].numpy()), out["logits"]) < 1e-3


# --------------------------------------------------------------------------- folders made by mambadna
def _caduceus_folder(path: Path, rc: bool = True, n_layers: int = 2, pad_to_16: bool = True) -> Path:
    """A small Caduceus folder written by to_caduceus (16-row vocabulary like the released models)."""
    torch.manual_seed(0)
    m = MambaDNA(ModelConfig(d_model=16 if rc else 8, n_layers=n_layers, d_state=4,
                             rc_equivariant=rc, vocab_size=16 if pad_to_16 else 12))
    to_caduceus(m, path)
    return path


def _edit_config(path: Path, **changes) -> None:
    c = json.loads((path / "config.json").read_text())
    c.update(changes)
    (path / "config.json").write_text(json.dumps(c))


def _edit_weights(path: Path, fn) -> None:
    s = load_file(str(path / "model.safetensors"))
    fn(s)
    save_file(s, str(path / "model.safetensors"), metadata={"format": "pt"})


class NotATensor:  # pickled into pytorch_model.bin: torch.load(weights_only=True) must refuse it
    pass


BAD = {
    "not caduceus": (lambda p: _edit_config(p, model_type="bert"), "config.json", "not a Caduceus config"),
    "ew_multiply": (lambda p: _edit_config(p, bidirectional_strategy="ew_multiply"), "config.json",
                    "bidirectional_strategy"),
    "untied directions": (lambda p: _edit_config(p, bidirectional_weight_tie=False), "config.json",
                          "bidirectional_weight_tie"),
    "layernorm": (lambda p: _edit_config(p, rms_norm=False), "config.json", "rms_norm"),
    "ssm bias": (lambda p: _edit_config(p, ssm_cfg={"d_state": 4, "bias": True}), "config.json", "ssm_cfg.bias"),
    "mamba2 setting": (lambda p: _edit_config(p, ssm_cfg={"d_state": 4, "headdim": 8}), "config.json",
                       "ssm_cfg.headdim"),
    "unknown field": (lambda p: _edit_config(p, layer_cfg={"mamba_cfg": {}}), "config.json", "layer_cfg"),
    "complement map": (lambda p: _edit_config(p, rcps=True, complement_map={str(i): i for i in range(16)}),
                       "config.json", "complement_map"),
    "small vocabulary": (lambda p: _edit_config(p, vocab_size=8, pad_vocab_size_multiple=8), "config.json",
                         "vocab_size"),
    "missing weight": (lambda p: _edit_weights(p, lambda s: s.pop("caduceus.backbone.layers.1.norm.weight")),
                       "model.safetensors", "missing tensor 'caduceus.backbone.layers.1.norm.weight'"),
    "extra weight": (lambda p: _edit_weights(p, lambda s: s.update({"score.weight": torch.zeros(2, 8)})),
                     "model.safetensors", "unexpected tensor 'score.weight'"),
    "shape mismatch": (lambda p: _edit_weights(p, lambda s: s.update(
        {"caduceus.backbone.layers.0.mixer.mamba_fwd.A_log": torch.zeros(16, 3)})), "model.safetensors",
        "tensor 'caduceus.backbone.layers.0.mixer.mamba_fwd.A_log' has shape [16, 3]"),
    "untied head": (lambda p: _edit_weights(p, lambda s: s.update({"lm_head.weight": torch.ones(16, 8)})),
                    "model.safetensors", "tensor 'lm_head.weight' differs from its tied twin"),
    "untied rev projection": (lambda p: _edit_weights(p, lambda s: s.update(
        {"caduceus.backbone.layers.0.mixer.mamba_rev.in_proj.weight": torch.ones(32, 8)})), "model.safetensors",
        "untied in/out projections"),
    "pickle with an object": (lambda p: ((p / "model.safetensors").unlink(), torch.save(
        {"caduceus.backbone.norm_f.weight": torch.ones(8), "x": NotATensor()}, p / "pytorch_model.bin")),
        "pytorch_model.bin", "weights_only=True"),
    "pickle with a number": (lambda p: ((p / "model.safetensors").unlink(), torch.save(
        {"caduceus.backbone.norm_f.weight": torch.ones(8), "step": 3}, p / "pytorch_model.bin")),
        "pytorch_model.bin", "entry 'step' is a int, not a tensor"),
    "no weights": (lambda p: (p / "model.safetensors").unlink(), "cad", "no weights"),
    "not finite": (lambda p: _edit_weights(p, lambda s: s["caduceus.backbone.norm_f.weight"].fill_(float("nan"))),
                   "model.safetensors", "NaN"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_exit_2_and_no_output(case, tmp_path, run_cli):
    src = _caduceus_folder(tmp_path / "cad", rc=False)
    assert run_cli(["convert", "from-caduceus", src, tmp_path / "ok"]).code == 0  # the folder is fine at first
    edit, where, what = BAD[case]
    edit(src)
    code, out, err = run_cli(["convert", "from-caduceus", src, tmp_path / "out"])
    line = one_error_line(err)
    assert code == 2 and where in line and what in line, line
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left
    with pytest.raises(CheckpointError):
        mambadna.load(src, device="cpu")


def test_bad_output_folder_and_mambadna_folder_as_source(tmp_path, run_cli):
    src = _caduceus_folder(tmp_path / "cad")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    code, _, err = run_cli(["convert", "from-caduceus", src, tmp_path / "busy"])
    assert code == 2 and "not empty" in one_error_line(err)
    code, _, err = run_cli(["convert", "from-caduceus", src, tmp_path / "busy", "--overwrite"])
    assert code == 2 and "not a model" in one_error_line(err) and (tmp_path / "busy" / "notes.txt").exists()
    assert run_cli(["convert", "from-caduceus", src, tmp_path / "md"]).code == 0
    code, _, err = run_cli(["convert", "from-caduceus", tmp_path / "md", tmp_path / "x"])
    assert code == 2 and "model_type 'mambadna'" in one_error_line(err) and not (tmp_path / "x").exists()
    # to-caduceus refuses what Caduceus cannot represent
    save_model(MambaDNA(ModelConfig(d_model=16, n_layers=1, n_groups=2)), _mkdir(tmp_path / "grouped"))
    code, _, err = run_cli(["convert", "to-caduceus", tmp_path / "grouped", tmp_path / "y"])
    assert code == 2 and "n_groups" in one_error_line(err) and not (tmp_path / "y").exists()


def _mkdir(p: Path) -> Path:
    p.mkdir()
    return p


def test_pytorch_model_bin_is_read_with_weights_only(tmp_path, monkeypatch):
    src = _caduceus_folder(tmp_path / "cad")
    state = load_file(str(src / "model.safetensors"))
    (src / "model.safetensors").unlink()
    torch.save(state, src / "pytorch_model.bin")
    seen = []
    real = torch.load

    def spy(*a, **kw):
        seen.append(kw.get("weights_only"))
        return real(*a, **kw)

    monkeypatch.setattr(torch, "load", spy)
    mc, got, info = from_caduceus(src)
    assert seen == [True] and info["weights"] == "pytorch_model.bin" and mc.rc_equivariant


def test_info_says_what_it_found(tmp_path, run_cli):
    src = _caduceus_folder(tmp_path / "cad")
    code, out, err = run_cli(["info", src])
    assert code == 0, err
    assert "source: Caduceus-PS (caduceus checkpoint), weights model.safetensors, converted in memory" in out
    assert run_cli(["convert", "from-caduceus", src, tmp_path / "md"]).code == 0
    code, out, _ = run_cli(["info", tmp_path / "md"])
    assert code == 0 and f"source: converted from Caduceus-PS (caduceus checkpoint) {src.resolve()}" in out
    card = (tmp_path / "md" / "README.md").read_text()
    assert "Converted from a caduceus checkpoint" in card and "convert from-caduceus" in card


def test_native_roundtrip_through_caduceus_folder(tmp_path):
    """mambadna -> Caduceus folder -> mambadna: the same model (no transformers needed)."""
    torch.manual_seed(1)
    for rc in (False, True):
        m = MambaDNA(ModelConfig(d_model=16, n_layers=2, d_state=4, rc_equivariant=rc)).eval()
        to_caduceus(m, tmp_path / f"cad{rc}")
        back = mambadna.load(tmp_path / f"cad{rc}", device="cpu").torch_model
        assert back.config == m.config
        for k, v in m.state_dict().items():
            assert torch.equal(v, back.state_dict()[k]), k


# --------------------------------------------------------------------------- hub-style folders
def test_flat_config_card_and_old_nested_format(tiny_model_dir, tmp_path):
    raw = json.loads((Path(tiny_model_dir) / "config.json").read_text())
    assert raw["model_type"] == "mambadna" and raw["d_model"] == 32 and "model" not in raw and raw["step"] == 12
    card = (Path(tiny_model_dir) / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: mambadna")
    for s in ("example_genome.fa", "Optimizer steps: 12", "Tokens seen: 6,144", "## How it was made"):
        assert s in card, s
    # the nested format of earlier versions still reads
    nested = tmp_path / "old"
    shutil.copytree(tiny_model_dir, nested, ignore=shutil.ignore_patterns("checkpoint-*"))
    cfg = read_config(tiny_model_dir)
    old = {"model": cfg["model"], "step": cfg["step"], "val": cfg.get("val")}
    (nested / "config.json").write_text(json.dumps(old))
    assert read_config(nested)["model"] == cfg["model"] and read_config(nested)["step"] == 12
    assert load_model(nested).config == load_model(tiny_model_dir).config


class _FakeHub(types.ModuleType):
    """huggingface_hub's two entry points mambadna uses, backed by a local folder (no network)."""

    def __init__(self, root: Path):
        super().__init__("huggingface_hub")
        self.root, self.calls = root, []
        hub = self

        class HfApi:
            def __init__(self, token=None):
                hub.calls.append(("HfApi", token))

            def create_repo(self, repo_id, private=False, exist_ok=False, repo_type=None):
                hub.calls.append(("create_repo", repo_id, private))
                (hub.root / repo_id).mkdir(parents=True, exist_ok=exist_ok)

            def upload_folder(self, folder_path, repo_id, repo_type=None, revision=None, allow_patterns=None,
                              commit_message=None):
                import fnmatch

                hub.calls.append(("upload_folder", repo_id, commit_message))
                for f in Path(folder_path).iterdir():
                    if f.is_file() and any(fnmatch.fnmatch(f.name, p) for p in allow_patterns):
                        shutil.copy(f, hub.root / repo_id / f.name)
                return types.SimpleNamespace(commit_url=f"local://{repo_id}")

        self.HfApi = HfApi

    def snapshot_download(self, repo_id, revision=None, local_dir=None, token=None, local_files_only=False,
                          allow_patterns=None, library_name=None, library_version=None):
        """Like the real one with local_dir: plain copies of the repo's files there."""
        self.calls.append(("snapshot_download", repo_id, revision, local_dir))
        if not (self.root / repo_id).is_dir():
            raise FileNotFoundError(f"Repository Not Found for url: {repo_id}")
        shutil.copytree(self.root / repo_id, local_dir, dirs_exist_ok=True)
        return local_dir


def test_save_push_and_from_pretrained_offline(tiny_model_dir, tmp_path, monkeypatch):
    hub = _FakeHub(tmp_path / "hub")
    monkeypatch.setitem(sys.modules, "huggingface_hub", hub)
    model = mambadna.load(tiny_model_dir, device="cpu")
    out = model.save_pretrained(tmp_path / "saved", push_to_hub="me/tiny", token="t0k")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert read_config(out)["step"] == 12 and ("create_repo", "me/tiny", False) in hub.calls
    assert sorted(p.name for p in (tmp_path / "hub" / "me" / "tiny").iterdir()) == [
        "README.md", "config.json", "model.safetensors"]
    again = mambadna.Model.from_pretrained("me/tiny", device="cpu")
    assert Path(hub.calls[-1][3]) == Path(os.environ["MAMBADNA_CACHE"]) / "hub" / "me--tiny" / "main"
    x = np.array([[7, 8, 9, 10] * 8])
    np.testing.assert_allclose(again.logits(x), model.logits(x), rtol=0, atol=0)
    assert isinstance(from_pretrained("me/tiny"), MambaDNA)
    with pytest.raises(CheckpointError, match="hub download failed"):
        mambadna.Model.from_pretrained("me/missing", device="cpu")
    # a Caduceus repo downloads and converts in memory too
    _caduceus_folder(tmp_path / "hub" / "kuleshov-group" / "tiny-ps")
    ps = mambadna.Model.from_pretrained("kuleshov-group/tiny-ps", device="cpu")
    assert ps.config.rc_equivariant and ps.checkpoint_config["converted_from"]["in_memory"]


def test_without_huggingface_hub_a_repo_id_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails
    with pytest.raises(MambaDNAError, match="needs huggingface_hub"):
        mambadna.Model.from_pretrained("owner/name", device="cpu")
    with pytest.raises(CheckpointError, match="does not exist"):
        mambadna.Model.from_pretrained(tmp_path / "nope", device="cpu")
    m = MambaDNA(ModelConfig(d_model=8, n_layers=1))
    save_pretrained(m, tmp_path / "bare")
    assert (tmp_path / "bare" / "README.md").is_file()
    assert from_pretrained(tmp_path / "bare").config == m.config
