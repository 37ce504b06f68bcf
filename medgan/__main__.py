"""``python -m medgan ...`` (and ``torchrun --nproc-per-node N -m medgan translate ...``)."""

from medgan.cli import app

app(prog_name="medgan")
