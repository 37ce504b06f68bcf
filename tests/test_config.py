"""Config loading: input paths relative to the YAML file's folder, overrides to the working directory."""

from pathlib import Path

from medgan.config import load_config
from medgan.pipelines.cyclegan.config import CycleGANConfig
from tests.conftest import ROOT


def test_input_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the repository root
    cfg = load_config(CycleGANConfig, ROOT / "configs/phantom.yaml", ["domain_b.data.folder=mine/mr"])
    assert cfg.domain_a.data.folder == ROOT / "data_samples/phantom/ct"
    assert cfg.domain_a.labels.classmap == ROOT / "data_samples/phantom/classmap.json"
    assert cfg.domain_b.data.folder == tmp_path / "mine/mr"  # an override: the working directory
    assert cfg.train.output_dir == Path("runs/phantom")  # outputs stay relative to the working directory


def test_input_paths_inside_a_list_of_sections_resolve_too(tmp_path, monkeypatch):
    from medgan.pipelines.benchmark.config import BenchmarkConfig

    monkeypatch.chdir(tmp_path)
    cfg = load_config(BenchmarkConfig, ROOT / "configs/benchmarks/chaos.yaml")
    (cross,) = cfg.cross_protocol
    assert cross.folder == (ROOT / "../shared/data/abdomen/mr").resolve()
    assert cross.labels.classmap == (ROOT / "../shared/data/classmaps/totalsegmentator.json").resolve()
