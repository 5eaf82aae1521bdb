"""Window sampler and reads dataset on real genomes: determinism, splits, N filter, workers, errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mambadna.errors import InputError
from mambadna.components.sampler import SamplerConfig, WindowDataset, reads_dataset, split_spans
from mambadna.tokenizer import N, PAD, reverse_complement

ECOLI = "genomes/GCF_000005845.2_ASM584v2_genomic.fna.gz"
FLY = "genomes/D.melanogaster.fa.gz"
L_ECOLI = 4641652


def test_deterministic_and_seeded(shared_data):
    cfg = SamplerConfig(seq_len=256, seed=3, val_fraction=0.1)
    a = WindowDataset(shared_data / ECOLI, cfg, num_samples=50)
    b = WindowDataset(shared_data / ECOLI, cfg, num_samples=50)
    x = a[7]
    assert x.dtype == torch.long and x.shape == (256,)
    assert bool(((x >= 7) & (x <= 11)).all())
    for i in (0, 7, 49):
        assert torch.equal(a[i], b[i])
    assert torch.equal(a[-1], a[49])
    other = WindowDataset(shared_data / ECOLI, SamplerConfig(seq_len=256, seed=4, val_fraction=0.1), num_samples=50)
    assert sum(torch.equal(a[i], other[i]) for i in range(10)) == 0
    assert len({a.locate(i)[1] for i in range(50)}) == 50
    with pytest.raises(IndexError):
        a[50]


def test_val_fraction_holds_out_end_of_single_contig(shared_data):
    cfg = SamplerConfig(seq_len=512, val_fraction=0.1)
    cut = L_ECOLI - round(0.1 * L_ECOLI)
    tr = WindowDataset(shared_data / ECOLI, cfg, num_samples=300)
    va = WindowDataset(shared_data / ECOLI, cfg, split="val", num_samples=100)
    assert all(tr.locate(i)[1] + 512 <= cut for i in range(300))
    assert all(va.locate(i)[1] >= cut for i in range(100))
    assert tr.total_usable == cut - 512 + 1
    # val and train with the same index differ (split id enters the seed)
    assert not torch.equal(tr[0], va[0])


def test_dataloader_workers_match_direct_indexing(shared_data):
    cfg = SamplerConfig(seq_len=128, seed=1, rc_augment=True)
    ds = WindowDataset(shared_data / ECOLI, cfg, num_samples=32)
    dl = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=2, shuffle=False)
    got = torch.cat(list(dl))
    want = torch.stack([ds[i] for i in range(32)])
    assert torch.equal(got, want)
    # resume = start at a sample index
    dl2 = torch.utils.data.DataLoader(ds, batch_size=8, sampler=range(16, 32))
    assert torch.equal(torch.cat(list(dl2)), want[16:])


def test_rc_augment_is_a_deterministic_coin(shared_data):
    base = WindowDataset(shared_data / ECOLI, SamplerConfig(seq_len=64, seed=5), num_samples=40)
    rc = WindowDataset(shared_data / ECOLI, SamplerConfig(seq_len=64, seed=5, rc_augment=True), num_samples=40)
    flips = 0
    for i in range(40):
        c, s, strand, _ = rc.locate(i)
        fwd = torch.from_numpy(rc.genome.fetch_ids(c, s, s + 64).astype(np.int64))
        if strand == "-":
            flips += 1
            assert torch.equal(rc[i], reverse_complement(fwd))
        else:
            assert torch.equal(rc[i], fwd)
    assert 5 < flips < 35
    # validation windows are never flipped
    va = WindowDataset(shared_data / ECOLI, SamplerConfig(seq_len=64, rc_augment=True, val_fraction=0.2),
                       split="val", num_samples=20)
    assert all(va.locate(i)[2] == "+" for i in range(20))
    assert base.locate(0)[2] == "+"


def test_fly_n_runs_are_skipped(shared_data, tmp_path):
    bed = tmp_path / "nrich.bed"
    # 3R has a 5791-bp N run at 44499-50290, Y one of 7500 bp at 1490-8990
    bed.write_text("track name=nrich\n3R\t43000\t52000\nchrY\t0\t10000\n")
    strict = WindowDataset(shared_data / FLY, SamplerConfig(seq_len=1000, max_n_frac=0.1, regions=str(bed)),
                           num_samples=100)
    fr = [float((strict[i] == N).float().mean()) for i in range(100)]
    assert max(fr) <= 0.1
    loose = WindowDataset(shared_data / FLY, SamplerConfig(seq_len=1000, max_n_frac=1.0, regions=str(bed)),
                          num_samples=100)
    fr2 = [float((loose[i] == N).float().mean()) for i in range(100)]
    assert sum(f > 0.1 for f in fr2) > 30
    assert {strict.locate(i)[0] for i in range(100)} <= {"3R", "Y"}


def test_windows_weighted_by_length_across_contigs(shared_data):
    ds = WindowDataset(shared_data / FLY, SamplerConfig(seq_len=1000, max_n_frac=1.0), num_samples=3000)
    lengths = ds.genome.lengths
    counts = {c: 0 for c in lengths}
    for i in range(3000):
        counts[ds.locate(i)[0]] += 1
    tot = sum(L - 999 for L in lengths.values())
    for c, L in lengths.items():
        exp = 3000 * (L - 999) / tot
        assert abs(counts[c] - exp) < 5 * np.sqrt(exp) + 3, (c, counts[c], exp)


def test_val_contigs_and_val_bed(shared_data, tmp_path):
    cfg = SamplerConfig(seq_len=500, val_contigs=("chr4", "Y"))
    tr = WindowDataset(shared_data / FLY, cfg, num_samples=200)
    va = WindowDataset(shared_data / FLY, cfg, split="val", num_samples=200)
    assert {tr.locate(i)[0] for i in range(200)}.isdisjoint({"4", "Y"})
    assert {va.locate(i)[0] for i in range(200)} == {"4", "Y"}
    bed = tmp_path / "val.bed"
    bed.write_text("2L\t100000\t110000\n")
    cfg2 = SamplerConfig(seq_len=500, val_bed=str(bed))
    train, val = split_spans(WindowDataset(shared_data / FLY, cfg2, num_samples=1).genome, cfg2)
    assert val == {"2L": [(100000, 110000)]}
    assert train["2L"] == [(0, 100000), (110000, 235137)]
    va2 = WindowDataset(shared_data / FLY, cfg2, split="val", num_samples=50)
    assert all(100000 <= va2.locate(i)[1] <= 109500 for i in range(50))


def test_errors(shared_data, tmp_path):
    with pytest.raises(InputError) as e:
        WindowDataset(shared_data / "genomes/C.elegans.fa.gz", SamplerConfig(seq_len=300000))
    assert "300000" in str(e.value) and "209241" in str(e.value) and "C.elegans" in str(e.value)
    with pytest.raises(InputError, match="val_contigs.*chrZZ"):
        WindowDataset(shared_data / FLY, SamplerConfig(seq_len=100, val_contigs=("chrZZ",)))
    bed = tmp_path / "r.bed"
    bed.write_text("2L\t0\t1000\nchr9\t0\t1000\n")
    with pytest.raises(InputError) as e:
        WindowDataset(shared_data / FLY, SamplerConfig(seq_len=100, regions=str(bed)))
    assert str(e.value).startswith(str(bed)) and "line 2" in str(e.value) and "chr9" in str(e.value)
    with pytest.raises(InputError, match="empty training split"):
        WindowDataset(shared_data / "alignments/ex1/ex1.fa", SamplerConfig(seq_len=100, val_contigs=("chr1", "chr2")))
    with pytest.raises(InputError, match="no validation split"):
        WindowDataset(shared_data / "alignments/ex1/ex1.fa", SamplerConfig(seq_len=100), split="val")
    with pytest.raises(InputError, match="no such file"):
        WindowDataset(tmp_path / "missing.fa", SamplerConfig(seq_len=100))


def test_reads_dataset_pad_and_crop(shared_data):
    bam = shared_data / "alignments/ex1/ex1.bam"
    ds = reads_dataset(bam, seq_len=40)
    assert len(ds) == 3235
    x = ds[0]
    assert x.shape == (40,) and x.dtype == torch.long
    n_real = int((x != PAD).sum())
    assert 30 <= n_real < 40 and bool((x[n_real:] == PAD).all())
    short = reads_dataset(bam, seq_len=20, seed=1, region="chr2:1-200")
    assert all(bool((short[i] != PAD).all()) for i in range(len(short)))
    assert torch.equal(short[3], reads_dataset(bam, seq_len=20, seed=1, region="chr2:1-200")[3])
    dl = torch.utils.data.DataLoader(short, batch_size=4, num_workers=2)
    assert torch.equal(torch.cat(list(dl)), torch.stack([short[i] for i in range(len(short))]))
    with pytest.raises(InputError, match="no reads"):
        reads_dataset(bam, seq_len=20, min_mapq=255)


# --------------------------------------------------------------------------- several genomes
def test_multi_genome_weights_species_and_per_genome_validation(shared_data, tmp_path):
    from mambadna.components.sampler import MultiGenomeDataset, expand_genomes

    ecoli, fly = shared_data / ECOLI, shared_data / FLY
    cfg = SamplerConfig(seq_len=256, seed=2, val_fraction=0.1, max_n_frac=1.0)
    ds = MultiGenomeDataset([ecoli, fly], cfg, num_samples=2000)
    assert ds.names == ["GCF_000005845.2_ASM584v2_genomic", "D.melanogaster"]
    # by length (usable bases of the training split) by default
    share = ds.parts[0].total_usable / (ds.parts[0].total_usable + ds.parts[1].total_usable)
    got = np.mean([ds.describe(i)["species"] == ds.names[0] for i in range(2000)])
    assert abs(got - share) < 0.04 and ds.weights[0] == pytest.approx(share)
    d = ds.describe(5)
    assert set(d) == {"species", "genome", "contig", "start", "end", "strand", "n_frac"} and d["end"] - d["start"] == 256
    x = ds[5]
    src = ds.parts[ds.names.index(d["species"])].genome
    assert torch.equal(x, torch.from_numpy(src.fetch_ids(d["contig"], d["start"], d["end"]).astype(np.int64)))
    assert torch.equal(ds[5], MultiGenomeDataset([ecoli, fly], cfg, num_samples=2000)[5])  # deterministic
    # validation: each genome holds out the end of each of its contigs
    va = MultiGenomeDataset([ecoli, fly], cfg, split="val", num_samples=300, weights=[1, 1])
    seen = set()
    for i in range(300):
        w = va.describe(i)
        g = va.parts[va.names.index(w["species"])].genome
        L = g.lengths[w["contig"]]
        assert w["start"] >= L - round(0.1 * L), w
        seen.add(w["species"])
    assert seen == set(va.names)
    # equal weights; a validation contig of one genome only; a whole genome held out
    eq = MultiGenomeDataset([ecoli, fly], cfg, num_samples=1000, weights=[1, 1])
    assert 0.4 < np.mean([eq.describe(i)["species"] == eq.names[0] for i in range(1000)]) < 0.6
    vc = SamplerConfig(seq_len=256, val_contigs=("NC_000913.3",), max_n_frac=1.0)
    tr = MultiGenomeDataset([ecoli, fly], vc, num_samples=200)
    assert tr.names == ["D.melanogaster"]
    assert {MultiGenomeDataset([ecoli, fly], vc, split="val", num_samples=50).describe(i)["contig"]
            for i in range(50)} == {"NC_000913.3"}
    with pytest.raises(InputError, match="chrZZ.*none of the 2 genomes"):
        MultiGenomeDataset([ecoli, fly], SamplerConfig(seq_len=256, val_contigs=("chrZZ",)))
    with pytest.raises(InputError, match="weights"):
        MultiGenomeDataset([ecoli, fly], cfg, weights=[1.0])
    lst = tmp_path / "genomes.txt"
    lst.write_text(f"# two genomes\n{ecoli}\n\n{fly}  # the fly\n")
    assert expand_genomes(lst) == [str(ecoli), str(fly)]
    assert expand_genomes([str(ecoli)]) == [str(ecoli)]


def test_pretrain_on_several_genomes_cli(shared_data, tmp_path, run_cli, caplog):
    from pathlib import Path

    import json

    ex = Path(__file__).resolve().parents[1] / "data" / "example_genome.fa"
    out = tmp_path / "multi"
    caplog.set_level("INFO", logger="mambadna")
    code, _, err = run_cli(["pretrain", ex, shared_data / "alignments/ex1/ex1.fa", "--out", out, "--seq-len", 64,
                            "--batch-size", 4, "--max-steps", 2, "--d-model", 16, "--n-layers", 1, "--d-state", 4,
                            "--val-fraction", 0.1, "--eval-every", 2, "--genome-weights", "equal", "--no-progress",
                            "--device", "cpu"])
    assert code == 0, err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["pretrain"]["data"]["genome"] == [str(ex), str(shared_data / "alignments/ex1/ex1.fa")]
    assert cfg["pretrain"]["data"]["genome_weights"] == "equal" and "val_loss" in cfg["val"]
    assert "pretraining on 2 genomes: example_genome (50.0%), ex1 (50.0%)" in caplog.text
