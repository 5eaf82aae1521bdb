"""Execute the example notebooks (nbclient, CPU) on the real data with a tiny model.

The parameters cell (tagged ``parameters``) is rewritten to point at the test
model and data and to subsample, so each notebook runs in well under a minute.
"""
from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def _set_parameters(nb, values: dict) -> None:
    cell = next(c for c in nb.cells if c.cell_type == "code")
    assert "parameters" in cell.metadata.get("tags", []), "first code cell must be tagged 'parameters'"
    names = set()
    for line in cell.source.splitlines():
        if "=" in line and not line.startswith("#"):
            names.add(line.split("=")[0].strip())
    unknown = set(values) - names
    assert not unknown, f"not parameters of the notebook: {unknown}"
    cell.source = cell.source + "\n# injected by the test suite\n" + "".join(
        f"{k} = {v!r}\n" for k, v in values.items())


def _run(name: str, values: dict):
    path = NOTEBOOKS / name
    nb = nbformat.read(path, as_version=4)
    for c in nb.cells:  # outputs are stripped in git
        if c.cell_type == "code":
            assert not c.get("outputs") and c.get("execution_count") is None, f"{name}: outputs not stripped"
    _set_parameters(nb, values)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()
    return "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                     for o in c.get("outputs", []) if o.get("output_type") == "stream")


def test_embeddings_notebook(tiny_model_dir, shared_data, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    out = _run("embeddings.ipynb", {
        "model_path": str(tiny_model_dir),
        "data_dir": str(shared_data / "cnnprom_promoters"),
        "max_per_class": 120,
        "cv_folds": 3,
        "device": "cpu",
        "num_threads": 1,
    })
    assert "120 promoters, 120 non-promoters" in out
    assert "CV accuracy" in out


def test_variant_scoring_notebook(tiny_model_dir, shared_data, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    out = _run("variant_scoring.ipynb", {
        "model_path": str(tiny_model_dir),
        "data_dir": str(shared_data / "variants_brca1"),
        "max_variants": 240,
        "window": 128,
        "device": "cpu",
        "num_threads": 1,
    })
    assert "240 SNVs" in out
    assert "zero-shot AUROC, LOF vs rest:" in out


def test_interpretation_notebook(tiny_model_dir, shared_data, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    out = _run("interpretation.ipynb", {
        "model_path": str(tiny_model_dir),
        "data_dir": str(shared_data / "cnnprom_promoters"),
        "genome_path": str(shared_data / "genomes" / "GCF_000005845.2_ASM584v2_genomic.fna.gz"),
        "n_train": 60,
        "window": 128,
        "ig_steps": 8,
        "device": "cpu",
        "num_threads": 1,
    })
    assert "lacZp1" in out and "81 positions, 243 substitutions" in out
    assert "bigWig track: mean_llr" in out and "IG completeness" in out
    assert "Pearson r (ISM importance, IG)" in out
