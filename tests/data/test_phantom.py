"""The shipped phantom (data_samples/phantom) is what its generator writes, and its held-out
subject is read by no training config."""

import gzip

import pytest

from medgan.data.phantom import write_phantom_dataset
from tests.conftest import ROOT

SHIPPED = ROOT / "data_samples/phantom"


def test_shipped_phantom_is_what_the_generator_writes(tmp_path):
    written = write_phantom_dataset(tmp_path)
    assert {p.relative_to(tmp_path) for p in written} == {p.relative_to(SHIPPED) for p in SHIPPED.rglob("*") if p.is_file()}
    for p in written:
        rel = p.relative_to(tmp_path)
        read = gzip.decompress if p.suffix == ".gz" else bytes
        # NIfTI voxels and header bytes (the gzip wrapper holds a time stamp)
        assert read(p.read_bytes()) == read((SHIPPED / rel).read_bytes()), rel


@pytest.mark.parametrize("config", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_no_config_trains_on_the_held_out_phantom(config):
    assert "heldout" not in config.read_text(encoding="utf-8")
