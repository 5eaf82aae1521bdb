"""Embedding engine, API and `mambadna embed` (CPU, tiny models, real data where cheap)."""
from __future__ import annotations

import os
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

import mambadna
from mambadna.model.config import ModelConfig
from mambadna.inference.engine import Embedder, Stream, plan_batches
from mambadna.errors import InputError
from mambadna.model import MambaDNA
from mambadna.model.block import MambaMixer
from mambadna.tokenizer import encode, reverse_complement

REPO = Path(__file__).resolve().parents[1]
ATOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run faster on one thread, and far faster on a busy 2-core box."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _model(bidirectional: bool, rc: bool = False, seed: int = 0) -> MambaDNA:
    torch.manual_seed(seed)
    return MambaDNA(ModelConfig(d_model=32, n_layers=2, d_state=8, bidirectional=bidirectional,
                                rc_equivariant=rc)).eval()


@pytest.fixture(scope="module", params=[False, True], ids=["causal", "bidirectional"])
def model(request) -> MambaDNA:
    return _model(request.param)


def _ids(B: int, L: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(7, 12, (B, L), generator=g)


# --------------------------------------------------------------------------- exact chunking
@pytest.mark.parametrize("chunk", [1, 5, 16, 36, 37, 64])
def test_chunked_equals_whole(model, chunk):
    ids = _ids(2, 37)
    with torch.no_grad():
        whole = model.hidden_states(ids).numpy()
    out = np.stack(Embedder(model, pool=None, chunk_size=chunk, progress=False).embed(list(ids.numpy())))
    assert out.shape == whole.shape
    np.testing.assert_allclose(out, whole, atol=ATOL, rtol=0)


def test_chunked_exact_through_triton_kernels(monkeypatch):
    """Same engine on the fused Triton scans (interpreted on CPU, native on a GPU)."""
    pytest.importorskip("triton")
    from mambadna.kernels import triton_available

    if not triton_available():
        pytest.skip("Triton kernels not importable")
    monkeypatch.setenv("MAMBADNA_SCAN_BACKEND", "triton")
    torch.manual_seed(0)
    m = MambaDNA(ModelConfig(d_model=16, n_layers=1, d_state=4, bidirectional=True)).eval()
    ids = _ids(1, 40)
    with torch.no_grad():
        whole = m.hidden_states(ids).numpy()
    out = Embedder(m, pool=None, chunk_size=13, progress=False).embed(list(ids.numpy()))[0]
    np.testing.assert_allclose(out, whole[0], atol=ATOL, rtol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("bidirectional", [False, True])
def test_chunked_equals_whole_cuda(bidirectional):
    torch.manual_seed(0)
    m = MambaDNA(ModelConfig(d_model=64, n_layers=2, d_state=16, bidirectional=bidirectional)).cuda().eval()
    ids = _ids(2, 5000)
    with torch.no_grad():
        whole = m.hidden_states(ids.cuda()).cpu().numpy()
    out = np.stack(Embedder(m, pool=None, chunk_size=1000, progress=False).embed(list(ids.numpy())))
    np.testing.assert_allclose(out, whole, atol=1e-4, rtol=0)
    torch.cuda.reset_peak_memory_stats()
    Embedder(m, pool="mean", chunk_size=1000, progress=False).embed([np.full(200_000, 7, np.uint8)])
    assert torch.cuda.max_memory_allocated() < 2 ** 30  # bounded by the chunk, not by L


@pytest.mark.parametrize("layer", [0, -2])
def test_chunked_equals_whole_inner_layer(model, layer):
    ids = _ids(1, 29)
    with torch.no_grad():
        whole = model.hidden_states(ids, layer=layer).numpy()
    out = Embedder(model, pool=None, layer=layer, chunk_size=6, progress=False).embed(list(ids.numpy()))[0]
    np.testing.assert_allclose(out, whole[0], atol=ATOL, rtol=0)


def test_chunked_logits_equal_forward(model):
    ids = _ids(2, 23)
    with torch.no_grad():
        ref = model(ids).numpy()
    out = np.stack(Embedder(model, pool=None, head="logits", chunk_size=8, progress=False).embed(list(ids.numpy())))
    np.testing.assert_allclose(out, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("chunk", [None, 7])
def test_ragged_batches_exact(model, chunk):
    rng = np.random.default_rng(0)
    seqs = [rng.integers(7, 11, size=n) for n in (30, 31, 34, 36, 12)]
    with torch.no_grad():
        ref = [model.hidden_states(torch.as_tensor(s[None], dtype=torch.long)).numpy()[0] for s in seqs]
    out = Embedder(model, pool=None, chunk_size=chunk, batch_size=8, progress=False).embed(seqs)
    for a, b in zip(out, ref):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=ATOL, rtol=0)


@pytest.mark.parametrize("mode", ["mean", "center", "first", "last", "max"])
def test_pooled_chunked_equals_pool_of_whole(model, mode):
    from mambadna.inference.pooling import pool

    rng = np.random.default_rng(1)
    seqs = [rng.integers(7, 11, size=n) for n in (25, 28, 28)]
    with torch.no_grad():
        ref = [pool(model.hidden_states(torch.as_tensor(s[None], dtype=torch.long)), mode,
                    center_width=6).numpy()[0] for s in seqs]
    for chunk in (None, 4):
        out = Embedder(model, pool=mode, chunk_size=chunk, center_width=6, progress=False).embed(seqs)
        np.testing.assert_allclose(np.stack(out), np.stack(ref), atol=ATOL, rtol=0)

# --------------------------------------------------------------------------- chunked memory bound
class _DevicePlacementSpy(TorchFunctionMode):
    """Records the largest extent (any dimension) of a tensor placed on a
    device: ``Tensor.to(device / str / tensor, ...)``, ``Tensor.cuda()`` or
    any call with ``device=``. On the CPU these calls are no-ops, but they are
    exactly where a GPU run would move data to the device."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        placed = ("device" in kwargs or func is torch.Tensor.cuda
                  or (func is torch.Tensor.to
                      and any(isinstance(a, (torch.device, str, torch.Tensor)) for a in args[1:])))
        if placed and isinstance(out, torch.Tensor) and out.dim():
            self.largest = max(self.largest, max(out.shape))
        return out


class _ModelSpy:
    """Forward hooks on every submodule plus a wrapper of
    :meth:`MambaMixer.forward_direction`. Records the largest length
    (dim 1) of any tensor going into or out of the model's pieces, and the
    peak bytes of storage kept alive by the tensors the model handed back
    (weak references: the spy keeps nothing alive itself)."""

    def __init__(self, model, monkeypatch):
        self.longest = 0
        self.peak_bytes = 0
        self._refs = []
        self._handles = [m.register_forward_hook(self._hook) for m in model.modules()]
        orig = MambaMixer.forward_direction

        def forward_direction(mixer, h, *a, **kw):
            out = orig(mixer, h, *a, **kw)
            self._see((h,), out)
            return out

        monkeypatch.setattr(MambaMixer, "forward_direction", forward_direction)

    def _hook(self, module, args, output):
        self._see(args, output if isinstance(output, (tuple, list)) else (output,))

    def _see(self, inputs, outputs):
        for t in (*inputs, *outputs):
            if isinstance(t, torch.Tensor) and t.dim() >= 2:
                self.longest = max(self.longest, t.shape[1])
        self._refs += [weakref.ref(t) for t in outputs if isinstance(t, torch.Tensor)]
        live = [t for t in (r() for r in self._refs) if t is not None]
        self._refs = [weakref.ref(t) for t in live]
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in live}
        self.peak_bytes = max(self.peak_bytes, sum(storages.values()))

    def close(self):
        for h in self._handles:
            h.remove()


def _spy_embed(model, L, chunk, pool):
    seqs = [np.random.default_rng(s).integers(7, 11, size=L) for s in (0, 1)]
    with pytest.MonkeyPatch.context() as mp:
        spy = _ModelSpy(model, mp)
        try:
            with _DevicePlacementSpy() as placed:
                out = Embedder(model, pool=pool, chunk_size=chunk, progress=False).embed(seqs)
        finally:
            spy.close()
    return out, spy, placed


@pytest.mark.parametrize("pool", ["mean", None])
def test_chunked_keeps_only_chunk_sized_tensors_on_device(pool):
    """Chunked mode (issue 6): no tensor of the sequence's length reaches the
    model or is moved to the device, and what the engine keeps between chunks
    (carried / saved boundary states) does not hold chunk-sized buffers alive,
    so the model-side memory is flat in L up to the per-boundary states. This
    failed when a conv context was a view into its chunk's (L_chunk x d_inner)
    concatenation: pass 1 kept one per chunk, i.e. device memory grew with L."""
    chunk = 256
    for bidirectional in (False, True):
        torch.manual_seed(0)
        cfg = ModelConfig(d_model=16, n_layers=2, d_state=4, bidirectional=bidirectional)
        m = MambaDNA(cfg).eval()
        # positive control: in one piece the spies do see the whole length
        _, spy, placed = _spy_embed(m, 1000, 1000, pool)
        assert spy.longest == 1000 and placed.largest == 1000
        peaks = {}
        for L in (1024, 3000, 4096):
            out, spy, placed = _spy_embed(m, L, chunk, pool)
            assert spy.longest <= chunk, (bidirectional, L, spy.longest)
            assert placed.largest <= chunk, (bidirectional, L, placed.largest)
            peaks[L] = spy.peak_bytes
            if L == 3000:  # exactness is unchanged
                whole = Embedder(m, pool=pool, chunk_size=L, progress=False).embed(
                    [np.random.default_rng(s).integers(7, 11, size=L) for s in (0, 1)])
                np.testing.assert_allclose(np.stack(out), np.stack(whole), atol=ATOL, rtol=0)
        # growth from 4 to 16 chunks: at most the saved boundary states (bidirectional
        # pass 1 keeps one conv context + SSM state per chunk), with 2x slack
        per_boundary = 2 * ((cfg.d_conv - 1) * cfg.d_inner + cfg.d_inner * cfg.d_state) * 4
        allowed = (4096 // chunk - 1024 // chunk) * per_boundary * 2 if bidirectional else 0
        assert peaks[4096] - peaks[1024] <= allowed, (bidirectional, peaks, allowed)
        assert peaks[1024] > 0


def test_plan_batches_groups_by_length():
    lens = [10, 100, 11, 100, 12, 99]
    batches = plan_batches(lens, batch_size=8, max_tokens=10_000, equal_lengths=lambda n: n > 50)
    assert sorted(k for b in batches for k in b) == list(range(6))
    for b in batches:
        ls = {lens[k] for k in b}
        if max(ls) > 50:
            assert len(ls) == 1  # long bidirectional batches: equal lengths only
    assert plan_batches([5] * 10, batch_size=4, max_tokens=100, equal_lengths=lambda n: False) == \
        [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert all(len(b) == 1 for b in plan_batches([50] * 3, 8, 60, lambda n: False))


# --------------------------------------------------------------------------- streaming
def test_stream_step_equals_parallel():
    m = _model(False)
    ids = _ids(2, 21)
    with torch.no_grad():
        whole = m.hidden_states(ids).numpy()
        logits = m(ids).numpy()
    s = Stream(m, batch_size=2)
    steps = np.stack([s.step(ids[:, t].numpy()) for t in range(ids.shape[1])], axis=1)
    np.testing.assert_allclose(steps, whole, atol=ATOL, rtol=0)
    np.testing.assert_allclose(s.next_token_logits(), logits[:, -1], atol=ATOL, rtol=0)
    s.reset()
    blocks = np.concatenate([s.feed(ids[:, :5].numpy()), s.step(ids[:, 5].numpy())[:, None],
                             s.feed(ids[:, 6:].numpy())], axis=1)
    np.testing.assert_allclose(blocks, whole, atol=ATOL, rtol=0)
    assert s.position == ids.shape[1]


def test_stream_rejects_bidirectional():
    with pytest.raises(InputError, match="causal"):
        Stream(_model(True))


# --------------------------------------------------------------------------- API
def test_api_shapes_and_rc_average(tiny_model_dir, tiny_causal_model_dir):
    for d in (tiny_model_dir, tiny_causal_model_dir):
        m = mambadna.load(d, device="cpu")
        D = m.d_model
        seqs = ["ACGTACGGTCAGTTTACGAN", "GGGCATTACGATCGATCGAT", "ACGTTTAGC"]
        assert m.embed(seqs[0]).shape == (D,)
        assert m.embed(seqs[0], pool=None).shape == (20, D)
        assert m.embed(seqs, pool="center", center_width=4).shape == (3, D)
        per_tok = m.embed(seqs, pool=None)
        assert isinstance(per_tok, list) and [p.shape for p in per_tok] == [(20, D), (20, D), (9, D)]
        assert m.embed(seqs[:2], pool="none").shape == (2, 20, D)
        ids = encode(seqs[1]).astype(np.int64)
        np.testing.assert_allclose(m.embed(ids), m.embed(seqs[1]), atol=1e-6)
        assert m.embed(np.stack([ids, ids])).shape == (2, D)
        # RC-average is invariant to taking the reverse complement
        rc = reverse_complement(ids)
        for pool in ("mean", "max"):
            a = m.embed(ids, pool=pool, rc_average=True)
            b = m.embed(rc, pool=pool, rc_average=True)
            np.testing.assert_allclose(a, b, atol=ATOL, rtol=0)
        # the per-token average is strand-aligned: the RC's first base is the forward's last
        np.testing.assert_allclose(m.embed(ids, pool="first", rc_average=True),
                                   m.embed(rc, pool="last", rc_average=True, chunk_size=7), atol=ATOL, rtol=0)
        a = m.embed(ids, pool=None, rc_average=True)
        b = m.embed(rc, pool=None, rc_average=True, chunk_size=6)
        np.testing.assert_allclose(a, b[::-1], atol=ATOL, rtol=0)
        assert not np.allclose(a, m.embed(ids, pool=None))
        X, index = m.embed(seqs, return_index=True)
        assert list(index.columns) == ["name", "contig", "start", "end", "strand", "allele"]
        assert len(index) == 3 and index["end"].tolist() == [20, 20, 9]


def test_api_masked_log_probs(tiny_model_dir):
    m = mambadna.load(tiny_model_dir, device="cpu")
    lp = m.masked_log_probs(["ACGTACGTAC", "TTTTGGGGCC"], positions=[4, 0])
    assert lp.shape == (2, m.config.vocab_size)
    np.testing.assert_allclose(np.exp(lp).sum(1), 1.0, rtol=1e-5)
    full = m.logits("ACGTACGTAC")
    assert full.shape == (10, m.config.vocab_size)


def test_api_genome_bam_vcf_sources(tiny_model_dir, shared_data):
    m = mambadna.load(tiny_model_dir, device="cpu")
    ref = shared_data / "alignments" / "ex1" / "ex1.fa"
    g = mambadna.Genome(ref)
    X, idx = m.embed(g, intervals=[("chr1", 10, 60, "+"), ("chr2", 100, 130, "-")], return_index=True)
    assert X.shape == (2, m.d_model) and idx["strand"].tolist() == ["+", "-"]
    fwd = m.embed(g.fetch("chr2", 100, 130, strand="-"))
    np.testing.assert_allclose(X[1], fwd, atol=1e-6)
    R, ridx = m.embed(bam=shared_data / "alignments" / "ex1" / "ex1.bam", region="chr1:100-200",
                      return_index=True)
    assert R.shape[0] == len(ridx) > 0 and set(ridx["contig"]) == {"chr1"}
    vdir = shared_data / "variants_brca1"
    from mambadna.io.vcf import iter_variant_windows

    wins = []
    for w in iter_variant_windows(vdir / "brca1_1kgPhase3_variants.vcf", mambadna.Genome(vdir / "ref_brca1.fa"),
                                  window=32):
        wins.append(w)
        if len(wins) == 3:
            break
    V, vidx = m.embed(wins, return_index=True)
    assert V.shape == (6, m.d_model) and vidx["allele"].tolist() == ["ref", "alt"] * 3


def test_rc_equivariant_whole_ok_chunked_clear_error():
    m = _model(True, rc=True)
    ids = _ids(1, 20).numpy()
    out = Embedder(m, pool=None, progress=False).embed(list(ids))[0]
    with torch.no_grad():
        np.testing.assert_allclose(out, m.hidden_states(torch.as_tensor(ids)).numpy()[0], atol=ATOL)
    with pytest.raises(InputError, match="RC-equivariant"):
        Embedder(m, pool=None, chunk_size=8, progress=False).embed(list(ids))


def test_bad_layer_is_input_error(tiny_model_dir):
    m = mambadna.load(tiny_model_dir, device="cpu")
    with pytest.raises(InputError, match="layer"):
        m.embed("ACGT", layer=5)
    with pytest.raises(InputError, match="invalid character"):
        m.embed("ACGTXX")


def test_import_is_light():
    code = "import sys, mambadna; assert 'torch' not in sys.modules and 'pysam' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- CLI
def test_cli_npz_pooled_and_per_token(tiny_model_dir, shared_data, tmp_path, capsys, run_cli):
    # the first 40 records of a real FASTA (keeps the test fast on 2 cores)
    src = (shared_data / "cnnprom_promoters" / "Bacillus_prom.fa").read_text().split(">")[1:41]
    fa = tmp_path / "bacillus40.fa"
    fa.write_text("".join(">" + r for r in src))
    out = tmp_path / "e.npz"
    cap = run_cli(["embed", "--model", str(tiny_model_dir), "--fasta", str(fa), "--out", str(out),
                      "--device", "cpu", "--no-progress"])
    code = cap.code
    assert code == 0, cap.err
    z = np.load(out, allow_pickle=False)
    assert z["embeddings"].shape == (40, 32) and z["embeddings"].dtype == np.float32
    for col in ("name", "contig", "start", "end", "strand", "allele"):
        assert z[col].shape == (40,)
    assert z["name"][0] == "abnA" and z["end"][0] == 81

    bed = tmp_path / "r.bed"
    bed.write_text("chr1\t10\t50\tr1\t0\t+\nchr2\t5\t30\tr2\t0\t-\n")
    out2 = tmp_path / "t.npz"
    cap = run_cli(["embed", "--model", str(tiny_model_dir), "--bed", str(bed), "--reference",
                      str(shared_data / "alignments" / "ex1" / "ex1.fa"), "--out", str(out2), "--pool", "none",
                      "--chunk-size", "16", "--rc-average", "--no-progress"])
    code = cap.code
    assert code == 0, cap.err
    z = np.load(out2, allow_pickle=False)
    assert z["offsets"].tolist() == [0, 40, 65] and z["embeddings"].shape == (65, 32)
    assert z["strand"].tolist() == ["+", "-"] and z["name"].tolist() == ["r1", "r2"]


def test_cli_parquet(tiny_model_dir, shared_data, tmp_path, capsys, run_cli):
    pq = pytest.importorskip("pyarrow.parquet")
    vdir = shared_data / "variants_brca1"
    vcf = tmp_path / "few.vcf"
    lines = (vdir / "brca1_1kgPhase3_variants.vcf").read_text().splitlines()
    head = [l for l in lines if l.startswith("#")]
    body = [l for l in lines if not l.startswith("#")][:4]
    vcf.write_text("\n".join(head + body) + "\n")
    out = tmp_path / "v.parquet"
    cap = run_cli(["embed", "--model", str(tiny_model_dir), "--vcf", str(vcf), "--reference",
                      str(vdir / "ref_brca1.fa"), "--window", "32", "--out", str(out), "--no-progress"])
    code = cap.code
    assert code == 0, cap.err
    t = pq.read_table(out)
    assert t.column_names == ["name", "contig", "start", "end", "strand", "allele", "embedding"]
    assert t.num_rows == 8 and t["allele"].to_pylist() == ["ref", "alt"] * 4
    emb = np.asarray(t["embedding"].combine_chunks().flatten()).reshape(t.num_rows, -1)
    assert emb.shape == (8, 32) and np.isfinite(emb).all()

    out2 = tmp_path / "reads.parquet"
    cap = run_cli(["embed", "--model", str(tiny_model_dir), "--bam",
                      str(shared_data / "alignments" / "ex1" / "ex1.bam"), "--region", "chr2:100-160",
                      "--pool", "none", "--out", str(out2), "--no-progress"])
    code = cap.code
    assert code == 0, cap.err
    t = pq.read_table(out2)
    first = np.asarray(t["embedding"][0].values.flatten()).reshape(-1, 32)
    assert t.num_rows > 0 and first.shape[0] == t["end"][0].as_py() - t["start"][0].as_py()


@pytest.mark.parametrize("case", ["missing_fasta", "bad_ext", "bed_no_ref", "bad_chars", "two_sources",
                                  "bad_model", "bad_layer"])
def test_cli_bad_input(case, tiny_model_dir, shared_data, tmp_path, capsys, run_cli):
    fa = tmp_path / "in.fa"
    fa.write_text(">a\nACGT\n>b\nACXGT\n" if case == "bad_chars" else ">a\nACGTACGT\n")
    out = tmp_path / ("out.txt" if case == "bad_ext" else "out.npz")
    model = str(tiny_model_dir) if case != "bad_model" else str(tmp_path)
    args = ["embed", "--model", model, "--out", str(out), "--no-progress"]
    if case == "missing_fasta":
        args += ["--fasta", str(tmp_path / "nope.fa")]
    elif case == "bed_no_ref":
        bed = tmp_path / "x.bed"
        bed.write_text("chr1\t1\t5\n")
        args += ["--bed", str(bed)]
    elif case == "two_sources":
        args += ["--fasta", str(fa), "--bam", str(shared_data / "alignments" / "ex1" / "ex1.bam")]
    elif case == "bad_layer":
        args += ["--fasta", str(fa), "--layer", "9"]
    else:
        args += ["--fasta", str(fa)]
    cap = run_cli(args)
    code = cap.code
    assert code == 2
    lines = [l for l in cap.err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), cap.err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize("suffix", [".npz", ".parquet"])
def test_cli_non_finite_embeddings_are_an_error_and_nothing_is_written(suffix, tmp_path, run_cli):
    """Finite weights whose product overflows (a final-norm gain of 3e38) give inf embeddings: one error line
    naming the record, exit 2, no output and no shard left over."""
    from mambadna.components.checkpoint import save_model

    m = _model(True)
    with torch.no_grad():
        m.norm_f.weight.fill_(3e38)
    (tmp_path / "m").mkdir()
    save_model(m, tmp_path / "m")
    fa = tmp_path / "in.fa"
    fa.write_text(">a\nACGTACGTACGTAACCGGTT\n>b\nACGTTTGGCA\n")
    out = tmp_path / f"e{suffix}"
    cap = run_cli(["embed", "--model", tmp_path / "m", "--fasta", fa, "--out", out, "--no-progress"])
    lines = [l for l in cap.err.splitlines() if l.strip()]
    assert cap.code == 2 and len(lines) == 1, cap.err
    assert lines[0].startswith(f"error: {out}: ") and "non-finite" in lines[0] and "record 'a'" in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.fa", "m"]


# --------------------------------------------------------------------------- benchmark
def test_bench_embed_smoke(tmp_path):
    code = ("import sys, runpy; sys.argv=['bench_embed.py','--smoke']; "
            "runpy.run_path(sys.argv[0] if False else %r, run_name='__main__'); "
            "assert 'pysam' not in sys.modules, 'benchmark imported pysam'") % str(REPO / "benchmarks" / "bench_embed.py")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "bases/s" in r.stdout and "chunked" in r.stdout
    assert "max |chunked - whole|" in r.stdout
