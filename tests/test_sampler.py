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
