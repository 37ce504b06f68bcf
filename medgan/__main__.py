"""``python -m medgan ...`` (and ``torchrun --nproc-per-node N -m medgan translate ...``)."""

from medgan.pipelines.cli import app

app(prog_name="medgan")
