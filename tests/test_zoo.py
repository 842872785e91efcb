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
                         "epochs": 3, "seed": 4, "data": "imagefolder", "device": "cuda:0"},
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
    assert any(line.startswith("| mine | simclr | at | imagefolder | 4 | cuda:0 | 8/255 | PGD-5 | 3 | 4 | 50.0% | "
                               "25.0% | 40.0% |") for line in md), md
    monkeypatch.setenv("CLROBUST_ZOO", str(tmp_path))
    assert zoo.zoo_dir() == tmp_path and resolve("mine") == ("mine", weights)
    assert load("mine").source == "zoo:mine"
    with pytest.raises(ClrobustError, match="unknown model 'simclr-st'.*mine"):
        resolve("simclr-st")
