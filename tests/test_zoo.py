"""The zoo: every model of the manifest listed and loadable, the manifest rebuilt from metadata, an empty
zoo refused, $CLROBUST_ZOO honoured."""

from __future__ import annotations

import hashlib
import json

import pytest
from click.testing import CliRunner
from conftest import tiny_network

from clrobust.checkpoints import load, resolve, save_network, zoo
from clrobust.cli import cli, main
from clrobust.errors import ClrobustError


def test_the_zoo_lists_every_model_of_its_manifest():
    entries = zoo.entries()
    assert [e["name"] for e in entries][:2] == ["simclr-st", "simclr-at"] and len(entries) >= 11
    res = CliRunner().invoke(cli, ["zoo"])
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert lines[0].split()[:3] == ["name", "scheme", "scenario"] and len(lines) == 1 + len(entries)
    for e, line in zip(entries, lines[1:]):
        assert line.split()[0] == e["name"] and f"{e['clean_accuracy']:.1%}" in line
    as_json = json.loads(CliRunner().invoke(cli, ["zoo", "--json"]).output)
    assert as_json["models"] == entries
    for e in entries:  # each file is the one the manifest names
        assert hashlib.sha256((zoo.zoo_dir() / e["file"]).read_bytes()).hexdigest() == e["sha256"]


def test_an_empty_zoo_is_an_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["zoo", "--dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "is empty" in err and len(err.strip().splitlines()) == 1


def test_rebuilt_manifest_reads_the_checkpoints_metadata(tmp_path, monkeypatch):
    meta = {"training": {"scheme": "simclr", "scenario": "at", "eps_text": "8/255", "train_attack": "PGD-5",
                         "epochs": 3, "seed": 4, "data": "imagefolder", "data_root": "/somewhere/cifar10-jpeg",
                         "device": "cuda:0", "train_seconds": 9000.0, "optimizer_steps": 585,
                         "train_images": 149760, "train_devices": ["cuda x1"]},
            "metrics": {"clean_accuracy": 0.5, "pgd20_8_255_accuracy": 0.25, "tm1_pgd20_4_255_accuracy": 0.4,
                        "eval_samples": 846, "eval_data": "cifar10-mini"}}
    weights = save_network(tmp_path / "mine", tiny_network(0), meta, half=True)
    data = zoo.rebuild_manifest(tmp_path)
    (e,) = data["models"]
    assert e["name"] == "mine" and e["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert (e["scheme"], e["eps"], e["epochs"], e["seed"], e["clean_accuracy"]) == ("simclr", "8/255", 3, 4, 0.5)
    assert json.loads((tmp_path / "manifest.json").read_text()) == data
    md = (tmp_path / "MANIFEST.md").read_text().splitlines()
    assert (e["device"], e["eval_data"], e["storage"], e["width"]) == ("cuda:0", "cifar10-mini", "float16", 4)
    (lo, hi), (rlo, rhi), (tlo, thi) = (_wilson(round(a * 846), 846) for a in (0.5, 0.25, 0.4))
    assert any(line.startswith(f"| mine | simclr | at | cifar10-jpeg/train | 4 | cuda:0 | 8/255 | PGD-5 | 3 | 4 | "
                               f"2.5 h | "
                               f"50.0% [{lo:.1%}, {hi:.1%}] | 25.0% [{rlo:.1%}, {rhi:.1%}] | "
                               f"40.0% [{tlo:.1%}, {thi:.1%}] |") for line in md), md
    assert e["pgd20_8_255_accuracy_ci"] == pytest.approx([rlo, rhi], abs=1e-12)
    # Which images: the training folder by its name (never the machine's path), the evaluation's by count.
    assert e["train_data"] == "image folder cifar10-jpeg/train" and "/somewhere" not in json.dumps(data)
    assert e["eval_images"] == "the first 846 of the cifar10-mini test split"
    assert "trained on: image folder cifar10-jpeg/train. Accuracies on the first 846 of the cifar10-mini" in md[2]
    assert (e["optimizer_steps"], e["train_images"], e["train_devices"]) == (585, 149760, ["cuda x1"])
    # Resumed on another device: the column names both kinds, the record keeps each one's process count.
    mixed = {**meta["training"], "train_devices": ["cpu x1", "cuda x1"], "train_precisions": ["bf16", "fp32"]}
    assert zoo.training_summary(mixed)["device"] == "cpu+cuda"
    assert zoo.training_summary(mixed)["train_precisions"] == ["bf16", "fp32"]
    assert zoo.training_summary({**mixed, "train_devices": ["cuda x1", "cuda x2"]})["device"] == "cuda:0"
    monkeypatch.setenv("CLROBUST_ZOO", str(tmp_path))
    assert zoo.zoo_dir() == tmp_path and resolve("mine") == ("mine", weights)
    assert load("mine").source == "zoo:mine"
    with pytest.raises(ClrobustError, match="unknown model 'simclr-st'.*mine"):
        resolve("simclr-st")


def _wilson(k: int, n: int, z: float = 1.959963984540054):
    """The Wilson score interval in float64, written out (an independent reference)."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5
    return centre - half, centre + half


def test_a_lower_bound_on_the_training_time_says_so():
    e = {"train_seconds": 1836.8}  # a model from before the cost was summed over resumed runs
    assert zoo.duration(e) == ">=31 min"
    assert zoo.duration({**e, "optimizer_steps": 10}) == "31 min"
    assert zoo.duration({"train_seconds": 7200, "optimizer_steps": 10, "untimed_epochs": 2}) == ">=2.0 h"


def test_the_manifest_is_checked_against_an_audit(tmp_path):
    """`clrobust zoo --against REPORT`: each manifest accuracy beside the audit row measuring it, judged by the
    manifest's Wilson interval (equal, inside, outside with overlapping intervals, far outside)."""
    n = 846
    lo, hi = _wilson(round(0.5 * n), n)
    entry = {"name": "m", "file": "m.safetensors", "clean_accuracy": 0.5, "clean_accuracy_ci": [lo, hi],
             "pgd20_8_255_accuracy": 0.2, "pgd20_8_255_accuracy_ci": list(_wilson(round(0.2 * n), n)),
             "tm1_pgd20_4_255_accuracy": 0.3, "tm1_pgd20_4_255_accuracy_ci": list(_wilson(round(0.3 * n), n)),
             "eval_samples": n, "eval_images": "the first 846 of the cifar10-mini test split"}
    rows = [{"model": "m", "attack": "pgd20", "norm": "Linf", "eps": 8 / 255, "clean_accuracy": 0.5,
             "robust_accuracy": 0.26, "n": 200},  # outside [17.5%, 22.8%], intervals overlap
            {"model": "m", "attack": "tm1-pgd20", "norm": "Linf", "eps": 4 / 255, "clean_accuracy": 0.5,
             "robust_accuracy": 0.6, "n": 200},  # far outside
            {"model": "m", "attack": "tm1-pgd20", "norm": "Linf", "eps": 8 / 255, "clean_accuracy": 0.5,
             "robust_accuracy": 0.3, "n": 200},  # another eps: not the manifest's number
            {"model": "other", "attack": "pgd20", "norm": "Linf", "eps": 8 / 255, "clean_accuracy": 0.1,
             "robust_accuracy": 0.0, "n": 200}]
    (tmp_path / "audit").mkdir()
    (tmp_path / "audit" / "report.json").write_text(json.dumps({"rows": rows, "data": {"chosen": "200 images"}}))
    got = zoo.check_against_audits([entry], [zoo.read_audit_report(tmp_path / "audit")])
    assert [(g["number"], g["audit"], g["within"], g["overlap"]) for g in got] == [
        ("clean_accuracy", 0.5, True, True), ("pgd20_8_255_accuracy", 0.26, False, True),
        ("tm1_pgd20_4_255_accuracy", 0.6, False, False)]
    assert got[1]["audit_ci"] == pytest.approx(_wilson(52, 200), abs=1e-12) and got[1]["audit_n"] == 200
    text = zoo.check_table(got).splitlines()
    assert [ln.split()[-1] for ln in text[1:4]] == ["yes", "overlap", "NO"]
    assert text[-1].startswith("1 of 3 audit numbers lie within the manifest's 95% intervals, 2 intervals overlap")
    assert "Audit images: 200 images; manifest images: the first 846" in text[-1]
    assert "No clean accuracy was measured on as many images" in text[-1]  # 200 images against 846
    # On as many images: equal clean counts are said so, and a one-image difference is named.
    same = [dict(r, n=n) for r in rows[:1]] + [dict(rows[0], model="m2", n=n, clean_accuracy=0.5 + 1 / n)]
    entry2 = dict(entry, name="m2", file="m2.safetensors")
    (tmp_path / "audit" / "report.json").write_text(json.dumps({"rows": same, "data": {"chosen": "846 images"}}))
    last = zoo.check_table(zoo.check_against_audits([entry, entry2], [zoo.read_audit_report(tmp_path / "audit")]))
    assert last.splitlines()[-1].endswith("(--sampling first): equal for 1 of 2 models; differs for m2 (+1 image). "
                                          "Attacked numbers also vary with the attack's random starts.")
    (tmp_path / "audit" / "report.json").write_text(json.dumps({"rows": rows, "data": {"chosen": "200 images"}}))
    # Through the command, with the zoo in a folder.
    (tmp_path / "zoo").mkdir()
    (tmp_path / "zoo" / "manifest.json").write_text(json.dumps({"models": [entry]}))
    res = CliRunner().invoke(cli, ["zoo", "--dir", str(tmp_path / "zoo"), "--against", str(tmp_path / "audit")])
    assert res.exit_code == 0 and res.output.splitlines() == text, res.output
    (tmp_path / "bad.json").write_text(json.dumps({"rows": [{"model": "m"}]}))
    with pytest.raises(ClrobustError, match="is no audit report .*give the report.json"):
        zoo.read_audit_report(tmp_path / "bad.json")
