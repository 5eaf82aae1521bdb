"""Shared fixtures. Tests run on CPU by default; `gpu`-marked tests skip without CUDA."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

# Triton kernels run on the CPU through the interpreter when there is no GPU.
# Must be set before anything imports triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MAMBADNA_SHARED_DATA", REPO.parent / "shared" / "data"))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder of real public data beside the repo (../shared/data)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder not found: {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def brca1(shared_data):
    """(1000 Genomes VCF, FASTA) of the real BRCA1 region."""
    d = shared_data / "variants_brca1"
    return d / "brca1_1kgPhase3_variants.vcf", d / "ref_brca1.fa"


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    """Keep index/decompression caches out of $HOME and the shared folder."""
    monkeypatch.setenv("MAMBADNA_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def __iter__(self):  # code, out, err = run_cli([...])
        return iter((self.code, self.out, self.err))


@pytest.fixture
def run_cli(capsys):
    """Run the ``mambadna`` CLI in-process: ``run_cli([args]) -> CliResult(code, out, err)``."""
    from mambadna.cli.main import main

    def run(args) -> CliResult:
        capsys.readouterr()
        code = 0
        try:
            main([str(a) for a in args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        cap = capsys.readouterr()
        return CliResult(code, cap.out, cap.err)

    return run


@pytest.fixture
def one_thread():
    """One torch thread in this process, and the environment that gives subprocesses one: tiny
    models run faster so on a busy 2-core box, and every part of a resumed run computes with the
    same threads as its reference. Yields the subprocess environment."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield dict(os.environ, OMP_NUM_THREADS="1")
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _tiny_model_dir(tmp_path_factory, bidirectional: bool) -> Path:
    """Pretrain a tiny model for a few steps on the example genome (seconds on CPU)."""
    from mambadna.model.config import ModelConfig
    from mambadna.tasks.pretrain import PretrainConfig, pretrain

    d = tmp_path_factory.mktemp("bi" if bidirectional else "causal")
    pretrain(PretrainConfig.of(genome=str(REPO / "data" / "example_genome.fa"), out=str(d), seq_len=128,
                            batch_size=4, max_steps=12, lr=5e-3, seed=0, progress=False, save_every=1000,
                            model=ModelConfig(d_model=32, n_layers=2, d_state=8, bidirectional=bidirectional)))
    return d


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny bidirectional (masked-LM) model trained by the suite: config.json + model.safetensors."""
    return _tiny_model_dir(tmp_path_factory, True)


@pytest.fixture(scope="session")
def tiny_causal_model_dir(tmp_path_factory) -> Path:
    """A tiny causal (next-token) model trained by the suite."""
    return _tiny_model_dir(tmp_path_factory, False)
