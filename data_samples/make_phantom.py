"""Regenerate the shipped digital phantom: ``python data_samples/make_phantom.py``."""

from pathlib import Path

from medgan.data.phantom import write_phantom_dataset

if __name__ == "__main__":
    for p in write_phantom_dataset(Path(__file__).parent / "phantom"):
        print(p)
